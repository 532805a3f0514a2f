//! `dlq-inspector`: review, requeue, export and purge dead-lettered tasks, and steer the fleet's
//! controls (breakers, paused types, the degradation level, the worker registry), or serve the
//! web console.

use clap::Parser;
use secflow_dlq_inspector::{
    Session,
    cli::{Cli, Command},
    console, controls, dlq_cmd,
};
use std::time::Duration;

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    secflow_common::logging::init(false, "warn");
    if let Command::Serve(args) = &cli.command {
        // The console holds the DLQ only for the moment of each read or action.
        let lock_wait = Duration::from_secs(cli.lock_wait);
        return Ok(console::run(&cli.broker, args, lock_wait).await?);
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
