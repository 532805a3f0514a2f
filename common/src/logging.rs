//! Log set-up shared by the binaries: `RUST_LOG` filters, logs go to stderr (stdout carries
//! command output), as JSON lines for collectors or as text for people. Every line passes
//! through the process's redactor ([`crate::redact`]) on its way out.

use std::{io::Write, sync::OnceLock};

pub mod context;
mod expected;
mod json;
mod switch;
mod text;

/// Replaces the running filter (set by [`init`]).
static RELOAD: OnceLock<switch::Handle> = OnceLock::new();
/// The filter's directives as last set.
static CURRENT: std::sync::Mutex<String> = std::sync::Mutex::new(String::new());

/// Stderr with secrets masked. Each line is written with one call, so each call holds whole
/// lines.
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
/// `RUST_LOG` is unset. The filter can be replaced later with [`set_filter`].
pub fn init(json: bool, default_filter: &str) {
    use tracing_subscriber::{layer::SubscriberExt as _, util::SubscriberInitExt as _};
    let directives = std::env::var("RUST_LOG")
        .ok()
        .filter(|d| tracing_subscriber::EnvFilter::try_new(d).is_ok())
        .unwrap_or_else(|| default_filter.to_string());
    let (filter, handle) = switch::new(&directives);
    *CURRENT
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner) = directives;
    let _ = RELOAD.set(handle);
    let registry = tracing_subscriber::registry();
    let installed = if json {
        // A task's line carries its context (see [`context`]): `"span": {"trace_id",
        // "span_id", "worker", "attempt", "task_id", "run_id", "node", "type", "class",
        // "code", "name"}`.
        registry
            .with(json::JsonLines::new(|| RedactingStderr))
            .with(filter)
            .with(expected::QuietNotFound)
            .try_init()
    } else {
        registry
            .with(
                tracing_subscriber::fmt::layer()
                    .event_format(text::WithContext::default())
                    .with_writer(|| RedactingStderr),
            )
            .with(filter)
            .with(expected::QuietNotFound)
            .try_init()
    };
    if let Err(e) = installed {
        eprintln!("logging was already set up: {e}");
    }
}

/// Replaces the log filter of the running process (`RUST_LOG` syntax, e.g.
/// `info,secflow_worker=debug`). An invalid filter is refused and the old one stays.
pub fn set_filter(directives: &str) -> Result<(), String> {
    let directives = directives.trim();
    let handle = RELOAD
        .get()
        .ok_or("logging was not set up with a replaceable filter")?;
    let filter = tracing_subscriber::EnvFilter::try_new(directives)
        .map_err(|e| format!("log filter `{directives}`: {e}"))?;
    handle.replace(directives, filter);
    *CURRENT
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner) = directives.to_string();
    Ok(())
}

/// The log filter in force.
pub fn filter() -> String {
    CURRENT
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
        .clone()
}

/// This machine's host name.
pub fn hostname() -> Option<String> {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .ok()
        .map(|h| h.trim().to_string())
        .filter(|h| !h.is_empty())
}
