//! JSON lines, one per event: `{"timestamp", "level", the event's fields, "target", "span":
//! {the current span's fields, "name"}}`, the shape of `tracing_subscriber`'s JSON format
//! (flattened event, current span only).
//!
//! A span's fields are kept as values and written only when a line is: most spans (one per
//! task) end without a line at `info`, and the fmt layer's JSON format serialises every span's
//! fields at creation, and parses and re-serialises them for each field recorded later.

use serde::ser::{SerializeMap, Serializer as _};
use std::{fmt, io::Write};
use tracing::{
    Event, Subscriber,
    field::{Field, Visit},
    span,
};
use tracing_subscriber::{fmt::time::FormatTime as _, layer::Context, registry::LookupSpan};

use super::context::{self, FieldValue as Value, Fields};

/// A field's name as written: `r#type` is `type`.
fn name(field: &Field) -> &'static str {
    let name = field.name();
    name.strip_prefix("r#").unwrap_or(name)
}

/// A span's fields, in the order they were first recorded; a field recorded again keeps its
/// place and takes the new value.
#[derive(Debug, Default)]
struct SpanFields(Fields);

impl SpanFields {
    fn set(&mut self, field: &Field, value: Value) {
        self.0.set(name(field), value);
    }
}

impl Visit for SpanFields {
    fn record_f64(&mut self, field: &Field, value: f64) {
        self.set(field, Value::F64(value));
    }

    fn record_i64(&mut self, field: &Field, value: i64) {
        self.set(field, Value::I64(value));
    }

    fn record_u64(&mut self, field: &Field, value: u64) {
        self.set(field, Value::U64(value));
    }

    fn record_bool(&mut self, field: &Field, value: bool) {
        self.set(field, Value::Bool(value));
    }

    fn record_str(&mut self, field: &Field, value: &str) {
        self.set(field, Value::Str(value.to_owned()));
    }

    fn record_debug(&mut self, field: &Field, value: &dyn fmt::Debug) {
        self.set(field, Value::Str(format!("{value:?}")));
    }
}

/// Writes an event's fields into a JSON map as they are visited.
struct EventFields<'a, M: SerializeMap> {
    map: &'a mut M,
    result: Result<(), M::Error>,
}

impl<M: SerializeMap> EventFields<'_, M> {
    fn entry<V: serde::Serialize + ?Sized>(&mut self, field: &Field, value: &V) {
        if self.result.is_ok() {
            self.result = self.map.serialize_entry(name(field), value);
        }
    }
}

impl<M: SerializeMap> Visit for EventFields<'_, M> {
    fn record_f64(&mut self, field: &Field, value: f64) {
        self.entry(field, &value);
    }

    fn record_i64(&mut self, field: &Field, value: i64) {
        self.entry(field, &value);
    }

    fn record_u64(&mut self, field: &Field, value: u64) {
        self.entry(field, &value);
    }

    fn record_bool(&mut self, field: &Field, value: bool) {
        self.entry(field, &value);
    }

    fn record_str(&mut self, field: &Field, value: &str) {
        self.entry(field, value);
    }

    fn record_debug(&mut self, field: &Field, value: &dyn fmt::Debug) {
        self.entry(field, &format_args!("{value:?}"));
    }
}

/// The current span of a line: its fields, then its name.
struct SpanEntry<'a> {
    fields: &'a [(&'static str, Value)],
    name: &'static str,
}

impl serde::Serialize for SpanEntry<'_> {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        let mut map = s.serialize_map(None)?;
        for (name, value) in self.fields {
            map.serialize_entry(name, value)?;
        }
        map.serialize_entry("name", self.name)?;
        map.end()
    }
}

/// The layer writing JSON lines to the writers `make` makes (one `write_all` per line).
pub(super) struct JsonLines<W> {
    make: W,
}

impl<W> JsonLines<W> {
    pub(super) fn new(make: W) -> Self {
        Self { make }
    }
}

/// Formats `event`, in `span` (a `tracing` span's or the work context's fields and name), as
/// one JSON line.
fn line(event: &Event<'_>, span: Option<SpanEntry<'_>>) -> Vec<u8> {
    let mut timestamp = String::new();
    let _ = tracing_subscriber::fmt::time::SystemTime.format_time(
        &mut tracing_subscriber::fmt::format::Writer::new(&mut timestamp),
    );
    let meta = event.metadata();
    let mut out = Vec::with_capacity(512);
    let mut ser = serde_json::Serializer::new(&mut out);
    let written = (|| {
        let mut map = ser.serialize_map(None)?;
        map.serialize_entry("timestamp", &timestamp)?;
        map.serialize_entry("level", meta.level().as_str())?;
        let mut fields = EventFields {
            map: &mut map,
            result: Ok(()),
        };
        event.record(&mut fields);
        fields.result?;
        map.serialize_entry("target", meta.target())?;
        if let Some(entry) = &span {
            map.serialize_entry("span", entry)?;
        }
        map.end()
    })();
    if written.is_err() {
        out.clear();
    }
    out.push(b'\n');
    out
}

impl<S, W> tracing_subscriber::Layer<S> for JsonLines<W>
where
    S: Subscriber + for<'a> LookupSpan<'a>,
    W: for<'w> tracing_subscriber::fmt::MakeWriter<'w> + 'static,
{
    fn on_new_span(&self, attrs: &span::Attributes<'_>, id: &span::Id, ctx: Context<'_, S>) {
        if let Some(span) = ctx.span(id) {
            let mut fields = SpanFields::default();
            attrs.record(&mut fields);
            span.extensions_mut().insert(fields);
        }
    }

    fn on_record(&self, id: &span::Id, values: &span::Record<'_>, ctx: Context<'_, S>) {
        if let Some(span) = ctx.span(id) {
            let mut extensions = span.extensions_mut();
            if let Some(fields) = extensions.get_mut::<SpanFields>() {
                values.record(fields);
            }
        }
    }

    fn on_event(&self, event: &Event<'_>, ctx: Context<'_, S>) {
        let span = event
            .parent()
            .and_then(|id| ctx.span(id))
            .or_else(|| ctx.lookup_current());
        let line = match &span {
            Some(span) => {
                let extensions = span.extensions();
                let fields = extensions.get::<SpanFields>().map(|f| f.0.0.as_slice());
                let entry = SpanEntry {
                    fields: fields.unwrap_or_default(),
                    name: span.metadata().name(),
                };
                line(event, Some(entry))
            }
            // No span: the work's context, if the line is logged in one.
            None => context::with_current(|cx| {
                let entry = SpanEntry {
                    fields: &cx.fields.0,
                    name: cx.name,
                };
                line(event, Some(entry))
            })
            .unwrap_or_else(|| line(event, None)),
        };
        if line.len() > 1 {
            let _ = self.make.make_writer().write_all(&line);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::{Arc, Mutex};
    use tracing_subscriber::layer::SubscriberExt as _;

    /// Collects what the layer writes.
    #[derive(Clone, Default)]
    struct Sink(Arc<Mutex<Vec<u8>>>);

    impl Write for Sink {
        fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
            self.0.lock().unwrap().extend_from_slice(buf);
            Ok(buf.len())
        }

        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    fn lines(sink: &Sink) -> Vec<serde_json::Value> {
        let text = String::from_utf8(sink.0.lock().unwrap().clone()).unwrap();
        text.lines()
            .map(|l| serde_json::from_str(l).unwrap())
            .collect()
    }

    #[test]
    fn a_line_carries_its_fields_and_its_spans_including_fields_recorded_later() {
        let sink = Sink::default();
        let out = sink.clone();
        let subscriber = tracing_subscriber::registry().with(JsonLines::new(move || out.clone()));
        tracing::subscriber::with_default(subscriber, || {
            tracing::info!(n = 3, "outside");
            let span = tracing::info_span!(
                "task",
                task_id = %"t-1",
                r#type = "builtin.fail",
                attempt = 2u64,
                class = tracing::field::Empty,
            );
            let _in = span.enter();
            span.record("class", "transient");
            tracing::warn!(error = %"boom \"quoted\"", retry = 2, ok = true, "retry scheduled");
        });
        let lines = lines(&sink);
        assert_eq!(lines.len(), 2);
        assert_eq!(lines[0]["message"], "outside");
        assert_eq!(lines[0]["n"], 3);
        assert_eq!(lines[0]["level"], "INFO");
        assert!(lines[0].get("span").is_none());
        let l = &lines[1];
        assert_eq!(l["level"], "WARN");
        assert_eq!(l["message"], "retry scheduled");
        assert_eq!(l["error"], "boom \"quoted\"");
        assert_eq!(
            (l["retry"].clone(), l["ok"].clone()),
            (2.into(), true.into())
        );
        assert!(
            l["target"]
                .as_str()
                .is_some_and(|t| t.starts_with("secflow_common"))
        );
        assert!(l["timestamp"].as_str().is_some_and(|t| t.ends_with('Z')));
        assert_eq!(
            l["span"],
            serde_json::json!({
                "task_id": "t-1", "type": "builtin.fail", "attempt": 2,
                "class": "transient", "name": "task",
            })
        );
    }

    #[tokio::test]
    async fn a_line_in_a_work_context_carries_it_unless_a_span_is_current() {
        let sink = Sink::default();
        let out = sink.clone();
        let subscriber = tracing_subscriber::registry().with(JsonLines::new(move || out.clone()));
        let _default = tracing::subscriber::set_default(subscriber);
        let cx = context::Context::new("delivery")
            .with("trace_id", "4bf92f3577b34da6a3ce929d0e0e4736")
            .with("attempt", 1u64);
        context::scope(cx, async {
            context::record("task_id", "t-9");
            tokio::task::yield_now().await;
            tracing::warn!("in the delivery");
            let span = tracing::info_span!("hook", url = "http://x");
            span.in_scope(|| tracing::info!("in a span of its own"));
        })
        .await;
        tracing::info!("after it");
        let lines = lines(&sink);
        assert_eq!(lines.len(), 3);
        assert_eq!(
            lines[0]["span"],
            serde_json::json!({
                "trace_id": "4bf92f3577b34da6a3ce929d0e0e4736", "attempt": 1,
                "task_id": "t-9", "name": "delivery",
            })
        );
        assert_eq!(lines[1]["span"]["name"], "hook");
        assert!(lines[2].get("span").is_none());
    }
}
