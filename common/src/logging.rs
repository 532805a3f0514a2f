//! Log set-up shared by the binaries: `RUST_LOG` filters, logs go to stderr (stdout carries
//! command output), as JSON lines for collectors or as text for people.

/// Installs the global subscriber. `json` picks JSON lines; `default_filter` applies when
/// `RUST_LOG` is unset.
pub fn init(json: bool, default_filter: &str) {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(default_filter));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    if json {
        builder
            .json()
            .flatten_event(true)
            .with_current_span(false)
            .init();
    } else {
        builder.init();
    }
}
