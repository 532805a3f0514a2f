//! `worker`: parses flags, sets up logging, runs until SIGTERM/SIGINT.

use clap::{Parser, Subcommand};
use secflow_worker::{WorkerConfig, classify::cli::ClassifyArgs};

/// SecFlow worker: consumes tasks from a pool's work queue and runs them.
#[derive(Parser)]
#[command(name = "worker", version, args_conflicts_with_subcommands = true)]
struct Cli {
    #[command(subcommand)]
    command: Option<Command>,
    #[command(flatten)]
    config: WorkerConfig,
    /// Log format: json (default, for collectors) or text.
    #[arg(long, env = "SECFLOW_LOG_FORMAT", default_value = "json")]
    log_format: String,
    /// Threads of the worker's own runtime (deliveries, claims, settlements, events, HTTP
    /// endpoints). One is the least CPU per task; more let one process spend more than a core
    /// on that work. Handlers run on a runtime of their own with a thread per core.
    #[arg(long, env = "SECFLOW_RUNTIME_THREADS", default_value_t = 1,
          value_parser = clap::value_parser!(u16).range(1..=1024))]
    runtime_threads: u16,
}

#[derive(Subcommand)]
enum Command {
    /// Classify an error message (and exit code / signal / HTTP status / io kind) as the
    /// worker would, or train its model (`--train`).
    Classify(ClassifyArgs),
}

fn main() -> anyhow::Result<()> {
    // Before anything else (no runtime, no threads): the shim between the worker and one exec
    // program (see `handlers::shim`).
    if std::env::args_os()
        .nth(1)
        .is_some_and(|a| a == secflow_worker::handlers::shim::ARG)
    {
        secflow_worker::handlers::shim::main();
    }
    let cli = Cli::parse();
    // The worker's own work (deliveries, claims, settlements, events, heartbeats, its HTTP
    // endpoints) is I/O: on one thread its many small tasks wake each other without crossing
    // threads or stealing work, about a third less CPU per task than a thread per core
    // (transport benchmark). Handlers that do real work run on a runtime of their own
    // (`fleet::watchdog::handlers`), with a thread per core.
    let runtime = match cli.runtime_threads {
        1 => tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()?,
        n => tokio::runtime::Builder::new_multi_thread()
            .worker_threads(usize::from(n))
            .enable_all()
            .build()?,
    };
    runtime.block_on(run(cli))
}

async fn run(mut cli: Cli) -> anyhow::Result<()> {
    if cli.config.exec_shim.is_none() {
        // This very binary, even if the file was replaced or removed since it started.
        cli.config.exec_shim = Some("/proc/self/exe".into());
    }
    if let Some(Command::Classify(args)) = cli.command {
        return secflow_worker::classify::cli::run(args);
    }
    secflow_common::logging::init(cli.log_format != "text", "info");
    let _flush = secflow_common::trace::install("secflow-worker", env!("CARGO_PKG_VERSION"))?;
    // Installed before anything else, so a SIGTERM during start-up is a graceful stop too.
    let shutdown = shutdown_signal()?;
    reload_on_hangup(cli.config.log_filter_file.clone())?;
    if cli.config.metrics_addr.is_some() {
        secflow_worker::observe::install_prometheus().map_err(anyhow::Error::msg)?;
    }
    secflow_worker::run(cli.config, shutdown).await?;
    Ok(())
}

/// On every SIGHUP, replaces the log filter with the content of `file` (or `RUST_LOG` as the
/// process started with it); an unreadable file or invalid filter keeps the old one.
fn reload_on_hangup(file: Option<std::path::PathBuf>) -> std::io::Result<()> {
    use tokio::signal::unix::{SignalKind, signal};
    let mut hangup = signal(SignalKind::hangup())?;
    let started_with = std::env::var("RUST_LOG").unwrap_or_else(|_| "info".into());
    tokio::spawn(async move {
        while hangup.recv().await.is_some() {
            let wanted = match &file {
                Some(path) => match std::fs::read_to_string(path) {
                    Ok(text) => text,
                    Err(e) => {
                        tracing::error!(file = %path.display(), error = %e, "SIGHUP: cannot read the log filter file; the filter is unchanged");
                        continue;
                    }
                },
                None => started_with.clone(),
            };
            match secflow_common::logging::set_filter(&wanted) {
                Ok(()) => tracing::warn!(filter = wanted.trim(), "SIGHUP: log filter replaced"),
                Err(e) => tracing::error!(error = %e, "SIGHUP: the log filter is unchanged"),
            }
        }
    });
    Ok(())
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
