//! `worker`: parses flags, sets up logging, runs until SIGTERM/SIGINT.

use clap::Parser;
use secflow_worker::WorkerConfig;

/// SecFlow worker: consumes tasks from a pool's work queue and runs them.
#[derive(Parser)]
#[command(name = "worker", version)]
struct Cli {
    #[command(flatten)]
    config: WorkerConfig,
    /// Log format: json (default, for collectors) or text.
    #[arg(long, env = "SECFLOW_LOG_FORMAT", default_value = "json")]
    log_format: String,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    init_logging(&cli.log_format);
    // Installed before anything else, so a SIGTERM during start-up is a graceful stop too.
    let shutdown = shutdown_signal()?;
    secflow_worker::run(cli.config, shutdown).await?;
    Ok(())
}

fn init_logging(format: &str) {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    if format == "text" {
        builder.init();
    } else {
        builder
            .json()
            .flatten_event(true)
            .with_current_span(false)
            .init();
    }
}

/// A future that resolves on the first SIGTERM or SIGINT; the handlers are installed now.
fn shutdown_signal() -> std::io::Result<impl std::future::Future<Output = ()>> {
    use tokio::signal::unix::{SignalKind, signal};
    let mut term = signal(SignalKind::terminate())?;
    let mut int = signal(SignalKind::interrupt())?;
    Ok(async move {
        tokio::select! {
            _ = term.recv() => {}
            _ = int.recv() => {}
        }
        tracing::info!("shutdown signal received");
    })
}
