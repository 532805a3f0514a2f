//! Distributed tracing: one trace per run (and per ad-hoc task), one span per node attempt,
//! the context carried from publisher to worker in W3C headers ([`context`]), spans exported
//! over OTLP/HTTP when the standard variables ask for it ([`export`]).

pub mod context;
pub mod export;
mod otlp;
mod span;

pub use context::{TRACEPARENT, TRACESTATE, TraceContext};
pub use export::{SpanCounts, TraceConfigError, counts, exporting, init, shutdown};
pub use opentelemetry::KeyValue;
pub use span::{Kind, TraceSpan};

/// Installs the tracer ([`init`]) and returns a guard that exports what is queued when the
/// process ends (at most 2 s).
pub fn install(service: &str, version: &str) -> Result<Flush, TraceConfigError> {
    init(service, version)?;
    Ok(Flush)
}

/// Exports queued spans on drop (see [`install`]).
#[must_use = "spans queued at exit are exported when this guard is dropped"]
pub struct Flush;

impl Drop for Flush {
    fn drop(&mut self) {
        if exporting() {
            shutdown(std::time::Duration::from_secs(2));
        }
    }
}
