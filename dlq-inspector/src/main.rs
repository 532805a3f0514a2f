//! `dlq-inspector`: review, requeue, export and purge dead-lettered tasks.

use clap::{Args, Parser, Subcommand};
use secflow_common::{config::BrokerArgs, now_ms};
use secflow_dlq_inspector::{
    InspectorError, Session,
    actions::{self, RequeueOptions},
    filter::{Filter, Selection},
    report,
};
use std::time::Duration;

/// SecFlow DLQ inspector. Holds the DLQ exclusively while it works; a second inspector waits.
#[derive(Parser)]
#[command(name = "dlq-inspector", version)]
struct Cli {
    #[command(flatten)]
    broker: BrokerArgs,
    /// Seconds to wait for another inspector to release the DLQ.
    #[arg(long, global = true, default_value_t = 30)]
    lock_wait: u64,
    #[command(subcommand)]
    command: Command,
}

#[derive(Args, Clone, Debug, Default)]
struct Select {
    /// Task ids.
    ids: Vec<String>,
    /// KEY=VALUE (type, class, code, reason, run, queue, older, newer); repeat to AND them.
    #[arg(long = "filter")]
    filters: Vec<Filter>,
    /// Every dead-lettered task.
    #[arg(long)]
    all: bool,
}

impl From<Select> for Selection {
    fn from(s: Select) -> Self {
        Self {
            ids: s.ids,
            filters: s.filters,
            all: s.all,
        }
    }
}

#[derive(Subcommand)]
enum Command {
    /// One line per dead-lettered task.
    List {
        /// KEY=VALUE (type, class, code, reason, run, queue, older, newer).
        #[arg(long = "filter")]
        filters: Vec<Filter>,
        /// Show at most N.
        #[arg(long)]
        limit: Option<usize>,
        /// JSON lines.
        #[arg(long)]
        json: bool,
    },
    /// Everything about one task: headers, x-death, body, error, timeline.
    Show {
        /// Task id.
        task_id: String,
        /// JSON.
        #[arg(long)]
        json: bool,
    },
    /// Republish tasks to where they came from (confirmed), then remove them from the DLQ.
    Requeue {
        #[command(flatten)]
        select: Select,
        /// Give the tasks a fresh retry budget.
        #[arg(long)]
        reset_retries: bool,
        /// Say what would be requeued, change nothing.
        #[arg(long)]
        dry_run: bool,
        /// At most this many tasks per second (0 = no limit).
        #[arg(long, default_value_t = 0)]
        rate: u32,
    },
    /// Remove tasks from the DLQ for good.
    Purge {
        #[command(flatten)]
        select: Select,
        /// Confirm the removal.
        #[arg(long)]
        yes: bool,
        /// First write them to this file (JSON lines, synced to disk before anything is removed).
        #[arg(long)]
        export: Option<String>,
    },
    /// Write tasks to a file as JSON lines, removing nothing.
    Export {
        /// Output file.
        #[arg(long)]
        out: String,
        /// KEY=VALUE filters.
        #[arg(long = "filter")]
        filters: Vec<Filter>,
    },
    /// Counts by class, type, origin queue and reason, and the oldest age.
    Stats {
        /// JSON.
        #[arg(long)]
        json: bool,
    },
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    secflow_common::logging::init(false, "warn");
    let mut session = Session::open(&cli.broker, Duration::from_secs(cli.lock_wait)).await?;
    let outcome = execute(&mut session, cli.command, &cli.broker).await;
    // Whatever happened, hand every message not acted on back to the DLQ, in place.
    session.release().await?;
    outcome.map_err(Into::into)
}

async fn execute(
    session: &mut Session,
    command: Command,
    broker: &BrokerArgs,
) -> Result<(), InspectorError> {
    let now = now_ms();
    let queue = session.topology.dlq();
    match command {
        Command::List {
            filters,
            limit,
            json,
        } => {
            let selected = Selection {
                filters,
                ..Selection::default()
            }
            .apply(&session.records, &queue, now)?;
            let shown = selected.len().min(limit.unwrap_or(usize::MAX));
            let mut out = String::new();
            if !json {
                out.push_str(report::LIST_HEADER);
                out.push('\n');
            }
            for &i in &selected[..shown] {
                let r = &session.records[i];
                let line = if json {
                    serde_json::to_string(r).unwrap_or_default()
                } else {
                    report::list_line(r, now)
                };
                out.push_str(&line);
                out.push('\n');
            }
            print!("{out}");
            if !json {
                eprintln!(
                    "{shown} shown of {} selected, {} in {queue}",
                    selected.len(),
                    session.records.len()
                );
            }
        }
        Command::Show { task_id, json } => {
            let i = Selection {
                ids: vec![task_id],
                ..Selection::default()
            }
            .apply(&session.records, &queue, now)?[0];
            let view = report::full(session, i);
            if json {
                println!("{view}");
            } else {
                println!(
                    "{}",
                    serde_json::to_string_pretty(&view).unwrap_or_default()
                );
            }
        }
        Command::Requeue {
            select,
            reset_retries,
            dry_run,
            rate,
        } => {
            let selection = Selection::from(select);
            selection.require_explicit()?;
            let selected = selection.apply(&session.records, &queue, now)?;
            if dry_run {
                let exchange = session.topology.tasks_exchange();
                for &i in &selected {
                    let r = &session.records[i];
                    println!(
                        "would requeue {} to {exchange}/{}",
                        r.task_id.as_deref().unwrap_or("-"),
                        r.node_type.as_deref().unwrap_or("?"),
                    );
                }
                println!(
                    "{} would be requeued, {} left in {queue} (dry run: nothing changed)",
                    selected.len(),
                    session.records.len() - selected.len()
                );
                return Ok(());
            }
            // Requeue copies carry bookkeeping headers signed like a worker's.
            let keyring = broker.keyring().map_err(|e| {
                InspectorError::Usage(format!(
                    "requeue signs each copy's retry count and history with the fleet's key: {e}"
                ))
            })?;
            let report = actions::requeue(
                session,
                &selected,
                RequeueOptions {
                    reset_retries,
                    rate,
                },
                keyring.as_ref(),
            )
            .await?;
            for (i, reason) in &report.failed {
                eprintln!(
                    "not requeued: {}: {reason}",
                    session.records[*i].task_id.as_deref().unwrap_or("-")
                );
            }
            println!(
                "requeued {} of {} selected; {} left in {queue}",
                report.requeued,
                selected.len(),
                session.records.len() - report.requeued
            );
            if !report.failed.is_empty() {
                return Err(InspectorError::Usage(format!(
                    "{} tasks could not be requeued and stay in the DLQ",
                    report.failed.len()
                )));
            }
        }
        Command::Purge {
            select,
            yes,
            export,
        } => {
            let selection = Selection::from(select);
            selection.require_explicit()?;
            let selected = selection.apply(&session.records, &queue, now)?;
            if !yes {
                return Err(InspectorError::Usage(format!(
                    "purge removes {} tasks for good: add --yes (and --export FILE to keep a copy)",
                    selected.len()
                )));
            }
            if let Some(path) = &export {
                actions::export(session, &selected, path)?;
            }
            let removed = actions::purge(session, &selected).await?;
            println!(
                "purged {removed} tasks from {queue}{}",
                export
                    .map(|p| format!(" (exported to {p})"))
                    .unwrap_or_default()
            );
        }
        Command::Export { out, filters } => {
            let selected = Selection {
                filters,
                ..Selection::default()
            }
            .apply(&session.records, &queue, now)?;
            actions::export(session, &selected, &out)?;
            println!(
                "exported {} tasks to {out}; nothing was removed",
                selected.len()
            );
        }
        Command::Stats { json } => {
            let stats = report::stats(&session.records, now);
            if json {
                println!("{}", serde_json::to_string(&stats).unwrap_or_default());
            } else {
                print!("{}", report::stats_text(&stats));
            }
        }
    }
    Ok(())
}
