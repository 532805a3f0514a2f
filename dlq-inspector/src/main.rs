//! `dlq-inspector`: reviews, requeues and purges dead-lettered tasks (not built yet).

use clap::Parser;

/// SecFlow DLQ inspector.
#[derive(Parser)]
#[command(name = "dlq-inspector", version)]
struct Cli {
    #[command(flatten)]
    broker: secflow_common::config::BrokerArgs,
}

fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    anyhow::bail!(
        "dlq-inspector is not built yet; the dead-lettered tasks of `{}` wait in `{}.dlq`",
        cli.broker.namespace,
        cli.broker.namespace
    )
}
