//! Log set-up shared by the binaries: `RUST_LOG` filters, logs go to stderr (stdout carries
//! command output), as JSON lines for collectors or as text for people. Every line passes
//! through the process's redactor ([`crate::redact`]) on its way out.

use std::{io::Write, sync::OnceLock};

type Reload = Box<dyn Fn(&str) -> Result<(), String> + Send + Sync>;

/// Replaces the running filter (set by [`init`]).
static RELOAD: OnceLock<Reload> = OnceLock::new();
/// The filter's directives as last set.
static CURRENT: std::sync::Mutex<String> = std::sync::Mutex::new(String::new());

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
/// `RUST_LOG` is unset. The filter can be replaced later with [`set_filter`].
pub fn init(json: bool, default_filter: &str) {
    let directives = std::env::var("RUST_LOG")
        .ok()
        .filter(|d| tracing_subscriber::EnvFilter::try_new(d).is_ok())
        .unwrap_or_else(|| default_filter.to_string());
    let filter = tracing_subscriber::EnvFilter::new(&directives);
    *CURRENT
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner) = directives;
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(|| RedactingStderr);
    if json {
        let builder = builder
            .json()
            .flatten_event(true)
            // A task's line carries its span: `"span": {"trace_id", "span_id", "task_id",
            // "run_id", "node", "type", "worker", "attempt"}`.
            .with_current_span(true)
            .with_span_list(false)
            .with_filter_reloading();
        let handle = builder.reload_handle();
        let _ = RELOAD.set(Box::new(move |d: &str| replace(d, |f| handle.reload(f))));
        builder.init();
    } else {
        let builder = builder.with_filter_reloading();
        let handle = builder.reload_handle();
        let _ = RELOAD.set(Box::new(move |d: &str| replace(d, |f| handle.reload(f))));
        builder.init();
    }
}

/// Parses `directives` and hands the filter to `reload`.
fn replace(
    directives: &str,
    reload: impl FnOnce(tracing_subscriber::EnvFilter) -> Result<(), tracing_subscriber::reload::Error>,
) -> Result<(), String> {
    let filter = tracing_subscriber::EnvFilter::try_new(directives)
        .map_err(|e| format!("log filter `{directives}`: {e}"))?;
    reload(filter).map_err(|e| format!("log filter could not be replaced: {e}"))
}

/// Replaces the log filter of the running process (`RUST_LOG` syntax, e.g.
/// `info,secflow_worker=debug`). An invalid filter is refused and the old one stays.
pub fn set_filter(directives: &str) -> Result<(), String> {
    let reload = RELOAD
        .get()
        .ok_or("logging was not set up with a replaceable filter")?;
    reload(directives.trim())?;
    *CURRENT
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner) = directives.trim().to_string();
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
