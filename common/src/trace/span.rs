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
    span: opentelemetry_sdk::trace::Span,
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
    /// Starts a span named `name` under `parent` (a new trace when `None`).
    pub fn start(
        name: impl Into<std::borrow::Cow<'static, str>>,
        kind: Kind,
        parent: Option<&TraceContext>,
        attributes: Vec<KeyValue>,
    ) -> Self {
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
        Self { span, context }
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
        self.span.set_attribute(KeyValue::new(key, value));
    }

    /// Ends the span: `outcome` names how the work ended; `error` (class, code, message) marks
    /// it failed.
    pub fn end(mut self, outcome: &str, error: Option<(&str, &str, &str)>) {
        self.span
            .set_attribute(KeyValue::new("secflow.outcome", outcome.to_string()));
        match error {
            Some((class, code, message)) => {
                self.span
                    .set_attribute(KeyValue::new("error.type", class.to_string()));
                self.span
                    .set_attribute(KeyValue::new("secflow.error.code", code.to_string()));
                self.span.set_status(Status::error(
                    crate::redact::redact(message)
                        .chars()
                        .take(512)
                        .collect::<String>(),
                ));
            }
            None => self.span.set_status(Status::Ok),
        }
        self.span.end();
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
}
