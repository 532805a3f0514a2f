//! Log set-up shared by the binaries: `RUST_LOG` filters, logs go to stderr (stdout carries
//! command output), as JSON lines for collectors or as text for people. Every line passes
//! through the process's redactor ([`crate::redact`]) on its way out.

use std::io::Write;

/// Stderr with secrets masked. The fmt layer writes each event with one call, so each call
/// holds whole lines.
struct RedactingStderr;

impl Write for RedactingStderr {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        let text = String::from_utf8_lossy(buf);
        std::io::stderr().write_all(crate::redact::redact(&text).as_bytes())?;
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        std::io::stderr().flush()
    }
}

/// Installs the global subscriber. `json` picks JSON lines; `default_filter` applies when
/// `RUST_LOG` is unset.
pub fn init(json: bool, default_filter: &str) {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(default_filter));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(|| RedactingStderr);
    if json {
        builder
            .json()
            .flatten_event(true)
            // A task's line carries its span: `"span": {"task_id", "run_id", "node", "type",
            // "worker", "attempt"}`.
            .with_current_span(true)
            .with_span_list(false)
            .init();
    } else {
        builder.init();
    }
}
