//! What the console learns from the events it follows and the run store does not keep: each
//! node's attempts, whether it is running, its last duration, worker and error, and the fleet's
//! completions and failures per 10 s for the sparklines. Pure: events in, views out.

use secflow_common::events::TaskEvent;
use serde::Serialize;
use std::collections::{BTreeMap, HashMap, VecDeque};

/// Runs whose nodes are remembered (the oldest is forgotten first).
const MAX_RUNS: usize = 2_000;
/// Width of one throughput bucket, ms.
pub const BUCKET_MS: u64 = 10_000;
/// Buckets kept (10 minutes).
const BUCKETS: usize = 60;

/// One node of a run, as its events told it.
#[derive(Clone, Debug, Default, PartialEq, Serialize)]
pub struct NodeSeen {
    /// Attempts started (`node.started`).
    pub attempts: u32,
    /// Started and not ended yet.
    pub running: bool,
    /// When its last attempt started, ms since the epoch.
    pub started_ms: Option<u64>,
    /// How long its completion took, s.
    pub duration_s: Option<f64>,
    /// The worker of its last event.
    pub worker: Option<String>,
    /// Its last failure (`class/code: message`, redacted by the worker).
    pub error: Option<String>,
}

/// Completions and failures in one bucket.
#[derive(Clone, Copy, Debug, Default, PartialEq, Serialize)]
pub struct Bucket {
    /// Start of the bucket, ms since the epoch.
    pub at_ms: u64,
    /// `node.completed` events.
    pub done: u64,
    /// `node.retrying` and `node.dead_lettered` events.
    pub failed: u64,
}

/// Everything learnt so far.
#[derive(Debug, Default)]
pub struct Tracker {
    runs: HashMap<String, BTreeMap<String, NodeSeen>>,
    order: VecDeque<String>,
    buckets: VecDeque<Bucket>,
}

impl Tracker {
    /// Takes one event into account.
    pub fn record(&mut self, e: &TaskEvent) {
        self.count(e);
        let (Some(run), Some(node)) = (e.run_id, e.node_id.as_deref()) else {
            return;
        };
        let run = run.to_string();
        if !self.runs.contains_key(&run) {
            if self.order.len() >= MAX_RUNS
                && let Some(old) = self.order.pop_front()
            {
                self.runs.remove(&old);
            }
            self.order.push_back(run.clone());
        }
        let seen = self
            .runs
            .entry(run)
            .or_default()
            .entry(node.to_string())
            .or_default();
        seen.worker = Some(e.worker.clone()).filter(|w| !w.is_empty());
        match e.kind.as_str() {
            "node.started" => {
                seen.attempts += 1;
                seen.running = true;
                seen.started_ms = Some(e.at_ms);
            }
            "node.completed" => {
                seen.running = false;
                seen.duration_s = e.duration;
                seen.attempts = seen.attempts.max(1);
            }
            "node.retrying" | "node.dead_lettered" | "node.cancelled" | "node.deferred" => {
                seen.running = false;
                if let Some(err) = &e.error {
                    seen.error = Some(format!("{}/{}: {}", err.class, err.code, err.message));
                }
            }
            _ => {}
        }
    }

    fn count(&mut self, e: &TaskEvent) {
        let (done, failed) = match e.kind.as_str() {
            "node.completed" => (1, 0),
            "node.retrying" | "node.dead_lettered" => (0, 1),
            _ => return,
        };
        let at = e.at_ms - e.at_ms % BUCKET_MS;
        if let Some(b) = self.buckets.iter_mut().rev().find(|b| b.at_ms == at) {
            b.done += done;
            b.failed += failed;
        } else if self.buckets.back().is_none_or(|b| b.at_ms < at) {
            self.buckets.push_back(Bucket {
                at_ms: at,
                done,
                failed,
            });
            while self.buckets.len() > BUCKETS {
                self.buckets.pop_front();
            }
        }
        // Else older than the oldest bucket kept: too late to count.
    }

    /// What the events said about `run`'s nodes.
    pub fn nodes(&self, run: &str) -> BTreeMap<String, NodeSeen> {
        self.runs.get(run).cloned().unwrap_or_default()
    }

    /// The last ten minutes of buckets up to `now_ms`, empty ones included, oldest first.
    pub fn rates(&self, now_ms: u64) -> Vec<Bucket> {
        let last = now_ms - now_ms % BUCKET_MS;
        (0..BUCKETS as u64)
            .rev()
            .map(|k| last.saturating_sub(k * BUCKET_MS))
            .map(|at| {
                self.buckets
                    .iter()
                    .find(|b| b.at_ms == at)
                    .copied()
                    .unwrap_or(Bucket {
                        at_ms: at,
                        ..Bucket::default()
                    })
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn event(kind: &str, run: uuid::Uuid, node: &str, at_ms: u64) -> TaskEvent {
        let mut e = TaskEvent::new(kind, "w1").about(None, Some(run));
        e.node_id = Some(node.into());
        e.at_ms = at_ms;
        e
    }

    #[test]
    fn attempts_running_and_durations_follow_the_events() {
        let run = uuid::Uuid::new_v4();
        let mut t = Tracker::default();
        t.record(&event("node.started", run, "a", 1_000));
        assert!(t.nodes(&run.to_string())["a"].running);
        t.record(&event("node.retrying", run, "a", 2_000));
        t.record(&event("node.started", run, "a", 3_000));
        let mut done = event("node.completed", run, "a", 4_000);
        done.duration = Some(0.5);
        t.record(&done);
        let a = &t.nodes(&run.to_string())["a"];
        assert_eq!((a.attempts, a.running, a.duration_s), (2, false, Some(0.5)));
        assert_eq!(a.worker.as_deref(), Some("w1"));
        let rates = t.rates(4_000);
        assert_eq!(rates.len(), BUCKETS);
        assert_eq!((rates[BUCKETS - 1].done, rates[BUCKETS - 1].failed), (1, 1));
    }
}
