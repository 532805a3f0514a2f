//! A span of SecFlow's own: started under a parent read from headers (or as a new trace), given
//! attributes as what it covers becomes known, ended once with its outcome.

use super::{TraceContext, export::tracer};
use opentelemetry::{
    KeyValue,
    trace::{Span as _, SpanKind, Status, TraceContextExt as _, Tracer as _},
};

/// What a span stands for, as OpenTelemetry sees it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    /// Publishing work (a run's submission, an ad-hoc task, a requeue).
    Producer,
    /// Running a delivery (a node attempt).
    Consumer,
    /// Work inside a process.
    Internal,
}

/// One span; it ends when [`TraceSpan::end`] is called or when it is dropped.
pub struct TraceSpan {
    /// The recorded span; `None` when nothing exports spans (only its ids are needed then).
    span: Option<opentelemetry_sdk::trace::Span>,
    context: Option<TraceContext>,
}

impl std::fmt::Debug for TraceSpan {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match &self.context {
            Some(cx) => write!(f, "TraceSpan({})", cx.traceparent()),
            None => write!(f, "TraceSpan(invalid)"),
        }
    }
}

impl TraceSpan {
    /// Starts a span like [`TraceSpan::start`], calling `describe` for its name and attributes
    /// only when spans are exported (an unrecorded span drops them): for spans started once per
    /// task, where building them would cost allocations for nothing.
    pub fn start_with<N: Into<std::borrow::Cow<'static, str>>>(
        kind: Kind,
        parent: Option<&TraceContext>,
        describe: impl FnOnce() -> (N, Vec<KeyValue>),
    ) -> Self {
        if !super::export::exporting() {
            return Self {
                span: None,
                context: Some(unrecorded(parent)),
            };
        }
        let (name, attributes) = describe();
        Self::start(name, kind, parent, attributes)
    }

    /// Starts a span named `name` under `parent` (a new trace when `None`).
    pub fn start(
        name: impl Into<std::borrow::Cow<'static, str>>,
        kind: Kind,
        parent: Option<&TraceContext>,
        attributes: Vec<KeyValue>,
    ) -> Self {
        if !super::export::exporting() {
            return Self {
                span: None,
                context: Some(unrecorded(parent)),
            };
        }
        let kind = match kind {
            Kind::Producer => SpanKind::Producer,
            Kind::Consumer => SpanKind::Consumer,
            Kind::Internal => SpanKind::Internal,
        };
        let tracer = tracer();
        let builder = tracer
            .span_builder(name)
            .with_kind(kind)
            .with_attributes(attributes);
        let parent_cx = match parent {
            Some(p) => opentelemetry::Context::new().with_remote_span_context(p.as_remote()),
            None => opentelemetry::Context::new(),
        };
        let span = builder.start_with_context(tracer, &parent_cx);
        let context = TraceContext::of(span.span_context());
        Self {
            span: Some(span),
            context,
        }
    }

    /// Whether the span is recorded (exported): attributes of one that is not are dropped, so
    /// callers may skip building them.
    pub fn recording(&self) -> bool {
        self.span.is_some()
    }

    /// Where this span sits: the parent context for the work it publishes.
    pub fn context(&self) -> Option<&TraceContext> {
        self.context.as_ref()
    }

    /// The trace id, 32 hex digits.
    pub fn trace_id(&self) -> String {
        self.context
            .as_ref()
            .map(|c| c.trace_id.to_string())
            .unwrap_or_default()
    }

    /// This span's id, 16 hex digits.
    pub fn span_id(&self) -> String {
        self.context
            .as_ref()
            .map(|c| c.span_id.to_string())
            .unwrap_or_default()
    }

    /// Sets an attribute.
    pub fn set(&mut self, key: &'static str, value: impl Into<opentelemetry::Value>) {
        if let Some(span) = &mut self.span {
            span.set_attribute(KeyValue::new(key, value));
        }
    }

    /// Ends the span: `outcome` names how the work ended; `error` (class, code, message) marks
    /// it failed.
    pub fn end(self, outcome: &str, error: Option<(&str, &str, &str)>) {
        let Some(mut span) = self.span else {
            return;
        };
        span.set_attribute(KeyValue::new("secflow.outcome", outcome.to_string()));
        match error {
            Some((class, code, message)) => {
                span.set_attribute(KeyValue::new("error.type", class.to_string()));
                span.set_attribute(KeyValue::new("secflow.error.code", code.to_string()));
                span.set_status(Status::error(
                    crate::redact::redact(message)
                        .chars()
                        .take(512)
                        .collect::<String>(),
                ));
            }
            None => span.set_status(Status::Ok),
        }
        span.end();
    }
}

/// The context of a span nothing records: the parent's trace (or a new one), a new span id,
/// the parent's sampling decision and trace state (a new trace is sampled), as the SDK's
/// default sampler would decide, so what it publishes carries the same `traceparent` a
/// recording process would send and a downstream process that exports records it alike.
fn unrecorded(parent: Option<&TraceContext>) -> TraceContext {
    use opentelemetry::trace::{SpanId, TraceId};
    use rand::RngExt as _;
    let mut rng = rand::rng();
    let span_id = SpanId::from(rng.random_range(1..=u64::MAX));
    match parent {
        Some(p) => TraceContext {
            trace_id: p.trace_id,
            span_id,
            sampled: p.sampled,
            state: p.state.clone(),
        },
        None => TraceContext {
            trace_id: TraceId::from(rng.random_range(1..=u128::MAX)),
            span_id,
            sampled: true,
            state: None,
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_child_keeps_its_parents_trace_and_gets_its_own_id() {
        let root = TraceSpan::start("root", Kind::Producer, None, vec![]);
        let parent = root.context().cloned().unwrap();
        let child = TraceSpan::start("child", Kind::Consumer, Some(&parent), vec![]);
        assert_eq!(child.trace_id(), root.trace_id());
        assert_ne!(child.span_id(), root.span_id());
        assert_eq!(child.trace_id().len(), 32);
        assert_eq!(child.span_id().len(), 16);
        child.end("completed", None);
        root.end("published", None);
    }

    #[test]
    fn new_traces_differ() {
        let a = TraceSpan::start("a", Kind::Producer, None, vec![]);
        let b = TraceSpan::start("b", Kind::Producer, None, vec![]);
        assert_ne!(a.trace_id(), b.trace_id());
    }

    #[test]
    fn without_an_exporter_a_span_keeps_its_parents_trace_sampling_and_state() {
        let parent = TraceContext::parse(
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-00",
            Some("vendor=abc"),
        )
        .unwrap();
        let mut child = TraceSpan::start("child", Kind::Consumer, Some(&parent), vec![]);
        assert!(!child.recording(), "nothing exports: nothing is recorded");
        child.set("ignored", "x");
        let cx = child.context().cloned().unwrap();
        assert_eq!(cx.trace_id, parent.trace_id);
        assert_ne!(cx.span_id, parent.span_id);
        assert!(!cx.sampled, "the parent's decision is kept");
        assert_eq!(cx.state.as_deref(), Some("vendor=abc"));
        assert!(cx.traceparent().ends_with("-00"));
        child.end("completed", None);
        let root = TraceSpan::start("root", Kind::Producer, None, vec![]);
        assert!(root.context().is_some_and(|c| c.sampled));
    }
}
