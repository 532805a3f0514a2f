//! W3C trace context (`traceparent`, `tracestate`) as carried in AMQP headers.
//!
//! A task's trace context is written once, by whoever publishes it (the producer for a run's
//! first nodes and for ad-hoc tasks, the worker that completed an upstream node for the nodes
//! after it), and copied unchanged into every retry, deferral, dead letter and requeue of that
//! task. The task signature covers it ([`crate::signing`]), so a copy cannot be moved into
//! another trace.

use crate::headers as h;
use lapin::types::FieldTable;
use opentelemetry::trace::{SpanContext, SpanId, TraceFlags, TraceId, TraceState};
use std::str::FromStr;

/// Header carrying the W3C `traceparent`.
pub const TRACEPARENT: &str = "traceparent";
/// Header carrying the W3C `tracestate`.
pub const TRACESTATE: &str = "tracestate";
/// Longest `tracestate` kept (the W3C limit is 32 entries; 512 bytes is what propagators must
/// at least pass on).
const MAX_TRACESTATE: usize = 512;

/// Where a span sits: its trace, its own id, whether it is sampled, vendor state.
#[derive(Clone, Debug, PartialEq)]
pub struct TraceContext {
    pub trace_id: TraceId,
    pub span_id: SpanId,
    pub sampled: bool,
    /// The `tracestate` header as received, when valid.
    pub state: Option<String>,
}

impl TraceContext {
    /// Parses a `traceparent` (version 00, or a later version read as 00 would), with an
    /// optional `tracestate`. `None` when it is not a valid parent: wrong shape, all-zero ids.
    pub fn parse(traceparent: &str, tracestate: Option<&str>) -> Option<Self> {
        let mut parts = traceparent.trim().split('-');
        let (version, trace, span, flags) =
            (parts.next()?, parts.next()?, parts.next()?, parts.next()?);
        let rest = parts.next();
        if version.len() != 2 || version == "ff" || !is_lower_hex(version) {
            return None;
        }
        // Version 00 has exactly four fields; later versions may append more.
        if version == "00" && rest.is_some() {
            return None;
        }
        if trace.len() != 32 || span.len() != 16 || flags.len() != 2 {
            return None;
        }
        if ![trace, span, flags].iter().all(|p| is_lower_hex(p)) {
            return None;
        }
        let trace_id = TraceId::from_hex(trace).ok()?;
        let span_id = SpanId::from_hex(span).ok()?;
        if trace_id == TraceId::INVALID || span_id == SpanId::INVALID {
            return None;
        }
        let flags = u8::from_str_radix(flags, 16).ok()?;
        let state = tracestate
            .map(str::trim)
            .filter(|s| !s.is_empty() && s.len() <= MAX_TRACESTATE)
            .filter(|s| TraceState::from_str(s).is_ok())
            .map(str::to_string);
        Some(Self {
            trace_id,
            span_id,
            sampled: flags & 1 == 1,
            state,
        })
    }

    /// The `traceparent` header value.
    pub fn traceparent(&self) -> String {
        format!(
            "00-{}-{}-{:02x}",
            self.trace_id,
            self.span_id,
            u8::from(self.sampled)
        )
    }

    /// Reads the trace context of a message; `None` when it has none or an invalid one.
    pub fn from_headers(headers: Option<&FieldTable>) -> Option<Self> {
        let parent = h::get_str(headers, TRACEPARENT)?;
        Self::parse(parent, h::get_str(headers, TRACESTATE))
    }

    /// Writes the context into `headers` (replacing any there).
    pub fn write(&self, headers: &mut FieldTable) {
        h::set_str(headers, TRACEPARENT, &self.traceparent());
        match &self.state {
            Some(state) => h::set_str(headers, TRACESTATE, state),
            None => h::remove(headers, &[TRACESTATE]),
        }
    }

    /// The context of an OpenTelemetry span.
    pub fn of(span: &SpanContext) -> Option<Self> {
        span.is_valid().then(|| Self {
            trace_id: span.trace_id(),
            span_id: span.span_id(),
            sampled: span.is_sampled(),
            state: Some(span.trace_state().header()).filter(|s| !s.is_empty()),
        })
    }

    /// This context as a remote parent for a new span.
    pub fn as_remote(&self) -> SpanContext {
        let state = self
            .state
            .as_deref()
            .and_then(|s| TraceState::from_str(s).ok())
            .unwrap_or_default();
        let flags = if self.sampled {
            TraceFlags::SAMPLED
        } else {
            TraceFlags::default()
        };
        SpanContext::new(self.trace_id, self.span_id, flags, true, state)
    }
}

fn is_lower_hex(s: &str) -> bool {
    s.bytes()
        .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
}

#[cfg(test)]
mod tests {
    use super::*;

    const GOOD: &str = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";

    #[test]
    fn parses_and_writes_back_the_same_header() {
        let cx = TraceContext::parse(GOOD, Some("vendor=abc")).unwrap();
        assert!(cx.sampled);
        assert_eq!(cx.traceparent(), GOOD);
        assert_eq!(cx.state.as_deref(), Some("vendor=abc"));
        let mut headers = FieldTable::default();
        cx.write(&mut headers);
        assert_eq!(TraceContext::from_headers(Some(&headers)), Some(cx));
    }

    #[test]
    fn refuses_what_is_not_a_valid_parent() {
        for bad in [
            "",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7",
            "00-00000000000000000000000000000000-00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-0000000000000000-01",
            "ff-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
            "00-4BF92F3577B34DA6A3CE929D0E0E4736-00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01-extra",
            "00-4bf92f3577b34da6a3ce929d0e0e473-600f067aa0ba902b7-01",
        ] {
            assert_eq!(TraceContext::parse(bad, None), None, "{bad:?}");
        }
        // A later version may carry more fields; its first four are read.
        assert!(TraceContext::parse(&format!("01{}-more", &GOOD[2..]), None).is_some());
    }

    #[test]
    fn drops_an_invalid_tracestate_but_keeps_the_parent() {
        let cx = TraceContext::parse(GOOD, Some("not a list entry")).unwrap();
        assert_eq!(cx.state, None);
    }

    #[test]
    fn unsampled_flag_round_trips() {
        let cx = TraceContext::parse(&GOOD.replace("-01", "-00"), None).unwrap();
        assert!(!cx.sampled);
        assert!(cx.traceparent().ends_with("-00"));
        assert!(!cx.as_remote().is_sampled());
    }
}
