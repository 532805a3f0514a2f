//! The DLQ commands: list, show, requeue (paced or not), purge, export, stats, all on a
//! [`Session`] that holds the DLQ.

use crate::{
    InspectorError, Session,
    actions::{self, RequeueOptions, RequeueReport},
    cli::{Command, Pace},
    filter::Selection,
    pace,
    report::{self, Secrets},
};
use secflow_common::{config::BrokerArgs, now_ms};

/// Runs one DLQ command on the held DLQ. Control commands are not DLQ commands: they are
/// refused here.
pub async fn execute(
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
        Command::Show {
            task_id,
            json,
            unredacted,
        } => {
            let secrets = unredacted_warned(unredacted);
            let i = Selection {
                ids: vec![task_id],
                ..Selection::default()
            }
            .apply(&session.records, &queue, now)?[0];
            let view = report::full(session, i, secrets);
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
            pace,
            max_wait,
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
            let how = RequeueHow {
                options: RequeueOptions {
                    reset_retries,
                    rate,
                },
                pace,
                max_wait: std::time::Duration::from_millis(max_wait),
            };
            let report = requeue_selected(session, &selected, how, broker).await?;
            for (i, reason) in &report.failed {
                eprintln!(
                    "not requeued: {}: {reason}",
                    session.records[*i].task_id.as_deref().unwrap_or("-")
                );
            }
            for (i, reason) in &report.held {
                eprintln!(
                    "still held, left in the DLQ: {}: {reason}",
                    session.records[*i].task_id.as_deref().unwrap_or("-")
                );
            }
            println!(
                "requeued {} of {} selected; {} left in {queue}",
                report.requeued,
                selected.len(),
                session.records.len() - report.requeued
            );
            if !report.held.is_empty() {
                return Err(InspectorError::Usage(format!(
                    "{} tasks were still held by their breaker or a pause after --max-wait and stay in the DLQ; requeue them once their service recovers",
                    report.held.len()
                )));
            }
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
            unredacted,
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
                actions::export(session, &selected, path, unredacted_warned(unredacted))?;
            }
            let removed = purge_selected(session, &selected, broker).await?;
            println!(
                "purged {removed} tasks from {queue}{}",
                export
                    .map(|p| format!(" (exported to {p})"))
                    .unwrap_or_default()
            );
        }
        Command::Export {
            out,
            filters,
            unredacted,
        } => {
            let secrets = unredacted_warned(unredacted);
            let selected = Selection {
                filters,
                ..Selection::default()
            }
            .apply(&session.records, &queue, now)?;
            actions::export(session, &selected, &out, secrets)?;
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
        _ => {
            return Err(InspectorError::Usage(
                "not a DLQ command: run it without opening the DLQ".into(),
            ));
        }
    }
    Ok(())
}

/// How a requeue goes: retry budget and rate, paced by the breakers or not.
#[derive(Clone, Copy, Debug)]
pub struct RequeueHow {
    /// Retry budget and rate.
    pub options: RequeueOptions,
    /// Whether the breakers and pauses hold tasks back.
    pub pace: Pace,
    /// With [`Pace::Auto`]: how long to wait for held tasks.
    pub max_wait: std::time::Duration,
}

/// Requeues `selected` messages of the held DLQ as `requeue` does (signed bookkeeping, each
/// acked only once its copy is confirmed), paced or not: what the CLI and the console both run.
pub async fn requeue_selected(
    session: &mut Session,
    selected: &[usize],
    how: RequeueHow,
    broker: &BrokerArgs,
) -> Result<RequeueReport, InspectorError> {
    // Requeue copies carry bookkeeping headers signed like a worker's.
    let keyring = broker.keyring().map_err(|e| {
        InspectorError::Usage(format!(
            "requeue signs each copy's retry count and history with the fleet's key: {e}"
        ))
    })?;
    match how.pace {
        Pace::None => actions::requeue(session, selected, how.options, keyring.as_ref()).await,
        Pace::Auto => {
            let fleet = crate::fleet::Fleet::open(broker)?;
            let pacing = pace::PaceOptions {
                requeue: how.options,
                max_wait: how.max_wait,
            };
            pace::requeue(session, selected, pacing, keyring.as_ref(), &fleet).await
        }
    }
}

/// What `--unredacted` asks for, its warning already on stderr.
fn unredacted_warned(unredacted: bool) -> Secrets {
    let secrets = Secrets::from_flag(unredacted);
    if let Some(warning) = secrets.warning() {
        eprintln!("{warning}");
    }
    secrets
}

/// Removes `selected` messages from the held DLQ for good, as `purge --yes` does, and records
/// each in the audit trail (`task.purged`, by [`Session::by`]): what the CLI and the console
/// both run.
pub async fn purge_selected(
    session: &mut Session,
    selected: &[usize],
    broker: &BrokerArgs,
) -> Result<usize, InspectorError> {
    let removed = actions::purge(session, selected).await?;
    record_in_trail(session, broker, "task.purged", selected).await;
    Ok(removed)
}

/// Announces what was done to the tasks at `indices` (one `kind` event each, for the audit
/// trail). A failure is reported; what was done stands.
async fn record_in_trail(session: &Session, broker: &BrokerArgs, kind: &str, indices: &[usize]) {
    if indices.is_empty() {
        return;
    }
    let events: Vec<serde_json::Value> = indices
        .iter()
        .map(|&i| {
            let headers = session.messages[i].properties.headers().as_ref();
            crate::announce::task_event(kind, &session.records[i], headers, &session.by)
        })
        .collect();
    if let Err(e) = crate::announce::announce_tasks(broker, kind, &events).await {
        eprintln!("warning: the audit trail did not get the {kind} events: {e}");
    }
}
