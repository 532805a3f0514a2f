//! `worker`: parses flags, sets up logging, runs until SIGTERM/SIGINT.

use clap::{Args, Parser, Subcommand};
use secflow_worker::{
    WorkerConfig,
    classify::{Classifier, Failure, classify_json_line},
};
use std::io::{BufRead, Write};

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
}

#[derive(Subcommand)]
enum Command {
    /// Classify an error message (and exit code / HTTP status) as the worker would.
    Classify(ClassifyArgs),
}

#[derive(Args)]
struct ClassifyArgs {
    /// Process exit code that came with the message.
    #[arg(long)]
    exit_code: Option<i32>,
    /// HTTP status that came with the message.
    #[arg(long)]
    http_status: Option<u16>,
    /// Rules file tried before the built-in rules.
    #[arg(long, env = "SECFLOW_RULES")]
    rules: Option<String>,
    /// Read one JSON object per line from stdin ({"message", "exit_code"?, "http_status"?}).
    #[arg(long)]
    stdin: bool,
    /// Print JSON.
    #[arg(long)]
    json: bool,
    /// The message.
    text: Vec<String>,
}

fn classify(args: ClassifyArgs) -> anyhow::Result<()> {
    let classifier = match &args.rules {
        Some(path) => Classifier::with_file(path).map_err(anyhow::Error::msg)?,
        None => Classifier::defaults(),
    };
    let mut out = std::io::BufWriter::new(std::io::stdout().lock());
    if args.stdin {
        for line in std::io::stdin().lock().lines() {
            let line = line?;
            if !line.trim().is_empty() {
                writeln!(out, "{}", classify_json_line(&classifier, &line))?;
            }
        }
        return Ok(out.flush()?);
    }
    let failure = Failure {
        message: args.text.join(" "),
        exit_code: args.exit_code,
        http_status: args.http_status,
        ..Failure::default()
    };
    let c = classifier.classify(&failure);
    if args.json {
        writeln!(out, "{}", serde_json::to_string(&c)?)?;
    } else {
        writeln!(out, "{} (code {}, rule {})", c.class, c.code, c.rule)?;
    }
    Ok(out.flush()?)
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    if let Some(Command::Classify(args)) = cli.command {
        return classify(args);
    }
    secflow_common::logging::init(cli.log_format != "text", "info");
    // Installed before anything else, so a SIGTERM during start-up is a graceful stop too.
    let shutdown = shutdown_signal()?;
    if cli.config.metrics_addr.is_some() {
        secflow_worker::observe::install_prometheus().map_err(anyhow::Error::msg)?;
    }
    secflow_worker::run(cli.config, shutdown).await?;
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
