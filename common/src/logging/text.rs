//! The text format for people: `tracing_subscriber`'s own, with the work's context (see
//! [`super::context`]) at the end of each line logged in one.

use tracing::{Event, Subscriber};
use tracing_subscriber::{
    fmt::{FmtContext, FormatEvent, FormatFields, format},
    registry::LookupSpan,
};

/// The default text format, plus the work's context.
#[derive(Default)]
pub(super) struct WithContext(format::Format);

impl<S, N> FormatEvent<S, N> for WithContext
where
    S: Subscriber + for<'a> LookupSpan<'a>,
    N: for<'a> FormatFields<'a> + 'static,
{
    fn format_event(
        &self,
        ctx: &FmtContext<'_, S, N>,
        mut writer: format::Writer<'_>,
        event: &Event<'_>,
    ) -> std::fmt::Result {
        let Some(context) = super::context::describe() else {
            return self.0.format_event(ctx, writer, event);
        };
        let mut line = String::with_capacity(256);
        self.0
            .format_event(ctx, format::Writer::new(&mut line), event)?;
        let line = line.strip_suffix('\n').unwrap_or(&line);
        writeln!(writer, "{line} {context}")
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::{Arc, Mutex};
    use tracing_subscriber::layer::SubscriberExt as _;

    #[derive(Clone, Default)]
    struct Sink(Arc<Mutex<Vec<u8>>>);

    impl std::io::Write for Sink {
        fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
            self.0.lock().unwrap().extend_from_slice(buf);
            Ok(buf.len())
        }

        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    #[tokio::test]
    async fn a_text_line_ends_with_the_work_context() {
        let sink = Sink::default();
        let out = sink.clone();
        let subscriber = tracing_subscriber::registry().with(
            tracing_subscriber::fmt::layer()
                .event_format(WithContext::default())
                .with_writer(move || out.clone()),
        );
        let _default = tracing::subscriber::set_default(subscriber);
        tracing::info!("before");
        let cx = super::super::context::Context::new("delivery").with("task_id", "t-1");
        super::super::context::scope(cx, async {
            tracing::warn!(retry = 2, "retry scheduled");
        })
        .await;
        let text = String::from_utf8(sink.0.lock().unwrap().clone()).unwrap();
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(lines.len(), 2, "{text}");
        assert!(lines[0].ends_with("before"), "{}", lines[0]);
        assert!(
            lines[1].contains("WARN") && lines[1].contains("retry scheduled retry=2"),
            "{}",
            lines[1]
        );
        assert!(lines[1].ends_with(" delivery{task_id=t-1}"), "{}", lines[1]);
    }
}
