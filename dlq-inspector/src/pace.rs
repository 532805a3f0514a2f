//! `requeue --pace auto`: a requeue that watches the breakers. Before a task's copy is
//! published, its service's breaker (the envelope's `service`, else its type), the operator's
//! holds and the paused types are consulted ([`crate::gate`], from Redis every 250 ms). A task
//! that may not go yet stays unacked in the DLQ while the tasks of other services go on; held
//! tasks are released in their DLQ order as their breaker closes, at most `--rate` per second.
//! After `--max-wait`, tasks still held stay in the DLQ and are reported. Killed at any point,
//! the broker returns every unacked message to the DLQ: nothing is lost.

use crate::{
    InspectorError, Session,
    actions::{RequeueOptions, RequeueReport, WINDOW, copy_of, publish_copy},
    fleet::{BreakerRead, Fleet},
    gate::{Gate, decide},
};
use futures_util::{StreamExt, stream::FuturesUnordered};
use secflow_common::{TaskEnvelope, amqp, control::Controls, now_ms, signing::Keyring};
use std::{
    collections::{BTreeMap, HashMap},
    time::{Duration, Instant},
};

/// How often the controls and breaker states are read again.
pub const POLL: Duration = Duration::from_millis(250);
/// At most one task per this interval goes to a breaker that needs a probe.
pub const PROBE_EVERY: Duration = Duration::from_secs(1);
/// How often progress is printed.
const PROGRESS_EVERY: Duration = Duration::from_secs(1);
/// Longest wait that stays safely within the broker's `consumer_timeout` (30 min by default),
/// past which it closes the session's channel and takes back every message it holds.
const SAFE_WAIT: Duration = Duration::from_secs(25 * 60);

/// How to pace.
#[derive(Clone, Copy, Debug)]
pub struct PaceOptions {
    /// Retry budget and rate, as for a plain requeue.
    pub requeue: RequeueOptions,
    /// How long to wait for held tasks.
    pub max_wait: Duration,
}

/// One selected task.
struct Item {
    /// Its message in the session.
    i: usize,
    service: String,
    task_type: String,
    released: bool,
}

/// What the gates said at the last read.
struct Gates {
    controls: Controls,
    stored: BTreeMap<String, BreakerRead>,
    read_at_ms: u64,
    verdicts: HashMap<(String, String), Gate>,
    /// Set while Redis does not answer: every task waits.
    blind: Option<String>,
}

impl Gates {
    fn verdict(&mut self, service: &str, task_type: &str) -> &Gate {
        let key = (service.to_string(), task_type.to_string());
        let (controls, stored, at) = (&self.controls, &self.stored, self.read_at_ms);
        let blind = &self.blind;
        self.verdicts.entry(key).or_insert_with(|| match blind {
            Some(why) => Gate::Wait(why.clone()),
            None => decide(controls, stored.get(service), service, task_type, at),
        })
    }
}

/// Requeues `selected` (indexes into the session, in DLQ order), paced by the breakers.
pub async fn requeue(
    session: &mut Session,
    selected: &[usize],
    opts: PaceOptions,
    keyring: Option<&Keyring>,
    fleet: &Fleet,
) -> Result<RequeueReport, InspectorError> {
    let mut report = RequeueReport::default();
    let mut items = Vec::with_capacity(selected.len());
    for &i in selected {
        match serde_json::from_slice::<TaskEnvelope>(&session.messages[i].data) {
            Ok(t) => items.push(Item {
                i,
                service: t.service().to_string(),
                task_type: t.node_type.clone(),
                released: false,
            }),
            // The plain copy explains why it is not a task.
            Err(_) => {
                if let Err(e) = copy_of(session, i, opts.requeue.reset_retries, keyring) {
                    report.failed.push((i, e));
                }
            }
        }
    }
    let mut services: Vec<String> = items.iter().map(|t| t.service.clone()).collect();
    services.sort();
    services.dedup();
    // Without Redis nothing can be paced: say so before anything moves.
    let mut gates = read_gates(fleet, &services).await?;
    let exchange = session.topology.tasks_exchange();
    let publisher = amqp::Publisher::new(session.connection()).await?;
    let (publisher, exchange) = (&publisher, exchange.as_str());
    let interval = (opts.requeue.rate > 0)
        .then(|| Duration::from_secs_f64(1.0 / f64::from(opts.requeue.rate)));
    let deadline = Instant::now() + opts.max_wait;
    let mut in_flight = FuturesUnordered::new();
    let mut next_slot = Instant::now();
    let mut next_poll = Instant::now() + POLL;
    let mut next_progress = Instant::now() + PROGRESS_EVERY;
    let mut probed: HashMap<String, Instant> = HashMap::new();
    let mut cursor = 0;
    let mut unreleased = items.len();
    let mut redis_down = false;
    let mut warned = opts.max_wait <= SAFE_WAIT;
    loop {
        let now = Instant::now();
        if now >= next_poll {
            match read_gates(fleet, &services).await {
                Ok(g) => {
                    if redis_down {
                        eprintln!("Redis answers again: pacing goes on");
                    }
                    (gates, redis_down) = (g, false);
                }
                Err(e) if !redis_down => {
                    eprintln!("warning: {e}; every task is held until Redis answers");
                    gates.verdicts.clear();
                    gates.blind = Some("Redis does not answer: breakers unknown".into());
                    redis_down = true;
                }
                Err(_) => {}
            }
            cursor = 0;
            next_poll = Instant::now() + POLL;
        }
        let past_deadline = now >= deadline;
        // Release what the gates let through, in DLQ order, within the window and the rate.
        while !past_deadline
            && in_flight.len() < WINDOW
            && interval.is_none_or(|_| Instant::now() >= next_slot)
        {
            let Some(k) = next_releasable(&items, &mut cursor, &mut gates, &mut probed) else {
                break;
            };
            items[k].released = true;
            unreleased -= 1;
            let i = items[k].i;
            if let Some(interval) = interval {
                next_slot = next_slot.max(Instant::now()) + interval;
            }
            match copy_of(session, i, opts.requeue.reset_retries, keyring) {
                Ok(c) => {
                    in_flight.push(async move { (i, publish_copy(publisher, exchange, c).await) })
                }
                Err(e) => report.failed.push((i, e)),
            }
        }
        if in_flight.is_empty() && (unreleased == 0 || past_deadline) {
            break;
        }
        if now >= next_progress {
            if !warned && unreleased > 0 {
                eprintln!(
                    "note: tasks are waiting and --max-wait is over 25 min: the broker's consumer_timeout (30 min by default) may end this session first; its tasks then go back to the DLQ and the command fails: run it again"
                );
                warned = true;
            }
            eprintln!("{}", progress(&items, &mut gates, &report, selected.len()));
            next_progress = now + PROGRESS_EVERY;
        }
        let mut wake = next_poll.min(next_progress);
        if interval.is_some() && next_slot > now {
            wake = wake.min(next_slot);
        }
        if !past_deadline {
            wake = wake.min(deadline);
        }
        tokio::select! {
            Some((i, sent)) = in_flight.next(), if !in_flight.is_empty() => match sent {
                // Acked only once its copy is confirmed: a kill leaves at most a window of
                // duplicates, never a loss.
                Ok(()) => {
                    session.ack(i).await?;
                    report.requeued += 1;
                }
                Err(e) => report.failed.push((i, e)),
            },
            _ = tokio::time::sleep_until(wake.into()) => {}
        }
    }
    for t in items.iter().filter(|t| !t.released) {
        let why = gates
            .verdict(&t.service, &t.task_type)
            .reason()
            .unwrap_or("released too late")
            .to_string();
        report.held.push((t.i, why));
    }
    eprintln!("{}", progress(&items, &mut gates, &report, selected.len()));
    Ok(report)
}

/// The next task from `cursor` that its gate lets go now; the cursor moves past the tasks it
/// skipped (the next read of the gates starts it over).
fn next_releasable(
    items: &[Item],
    cursor: &mut usize,
    gates: &mut Gates,
    probed: &mut HashMap<String, Instant>,
) -> Option<usize> {
    while *cursor < items.len() {
        let k = *cursor;
        *cursor += 1;
        let t = &items[k];
        if t.released {
            continue;
        }
        match gates.verdict(&t.service, &t.task_type) {
            Gate::Pass => return Some(k),
            Gate::Probe(_) => {
                let due = probed
                    .get(&t.service)
                    .is_none_or(|at| at.elapsed() >= PROBE_EVERY);
                if due {
                    probed.insert(t.service.clone(), Instant::now());
                    return Some(k);
                }
            }
            Gate::Wait(_) => {}
        }
    }
    None
}

async fn read_gates(fleet: &Fleet, services: &[String]) -> Result<Gates, InspectorError> {
    let controls = fleet.controls().await?;
    let stored = fleet.breaker_states(services).await?;
    Ok(Gates {
        controls,
        stored,
        read_at_ms: now_ms(),
        verdicts: HashMap::new(),
        blind: None,
    })
}

/// `requeued 612 of 1000, 388 waiting (svc: 388, breaker of svc held open by alice: test), 0 not requeued`.
fn progress(items: &[Item], gates: &mut Gates, report: &RequeueReport, total: usize) -> String {
    let unreleased = items.iter().filter(|t| !t.released).count();
    let mut waiting: BTreeMap<String, (usize, String)> = BTreeMap::new();
    for t in items.iter().filter(|t| !t.released) {
        let why = gates
            .verdict(&t.service, &t.task_type)
            .reason()
            .unwrap_or("due")
            .to_string();
        let entry = waiting.entry(t.service.clone()).or_insert((0, why));
        entry.0 += 1;
    }
    let detail = waiting
        .iter()
        .map(|(s, (n, why))| format!("{s}: {n}, {why}"))
        .collect::<Vec<_>>()
        .join("; ");
    format!(
        "progress: requeued {} of {}, {unreleased} waiting{}, {} not requeued",
        report.requeued,
        total,
        if detail.is_empty() {
            String::new()
        } else {
            format!(" ({detail})")
        },
        report.failed.len()
    )
}
