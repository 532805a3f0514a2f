//! `dlq-inspector`: review, requeue, export and purge dead-lettered tasks, and steer the fleet's
//! controls (breakers, paused types, the degradation level, the worker registry), or serve the
//! web console.

use clap::Parser;
use secflow_dlq_inspector::{
    Session,
    cli::{Cli, Command},
    console, controls, dlq_cmd, trail,
};
use std::time::Duration;

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    secflow_common::logging::init(false, "warn");
    let _flush =
        secflow_common::trace::install("secflow-dlq-inspector", env!("CARGO_PKG_VERSION"))?;
    match cli.command {
        Command::Audit {
            filter,
            limit,
            json,
        } => return Ok(trail::audit(&cli.broker, &filter.into(), limit, json).await?),
        Command::Analytics { window, top, json } => {
            return Ok(trail::analytics(&cli.broker, window, top, json).await?);
        }
        Command::Notify(args) => {
            let stop = tokio_util::sync::CancellationToken::new();
            let on_signal = stop.clone();
            let mut term =
                tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
            tokio::spawn(async move {
                tokio::select! {
                    _ = term.recv() => {}
                    _ = tokio::signal::ctrl_c() => {}
                }
                on_signal.cancel();
            });
            return Ok(secflow_dlq_inspector::notify::run(&cli.broker, args, stop).await?);
        }
        Command::Serve(args) => {
            // The console holds the DLQ only for the moment of each read or action.
            let lock_wait = Duration::from_secs(cli.lock_wait);
            return Ok(console::run(&cli.broker, &args, lock_wait).await?);
        }
        _ => {}
    }
    if !cli.command.uses_dlq() {
        // Control commands need Redis (and a short-lived connection for their event), never
        // the DLQ or its lock.
        return Ok(controls::run(&cli.broker, cli.command).await?);
    }
    let mut session = Session::open(&cli.broker, Duration::from_secs(cli.lock_wait)).await?;
    let outcome = dlq_cmd::execute(&mut session, cli.command, &cli.broker).await;
    // Whatever happened, hand every message not acted on back to the DLQ, in place.
    session.release().await?;
    outcome.map_err(Into::into)
}
