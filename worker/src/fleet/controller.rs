//! The fleet's controller: one worker of the namespace at a time (a Redis lease renewed every
//! tick) reads the registry and the queues once a second, and
//! - moves the degradation level from the signals, with hysteresis ([`super::signals`]), when
//!   it is automatic (`degradation.changed` event with the reason);
//! - reports a queue that would take longer than `--backlog-secs` to drain at the measured rate
//!   (`queue.backlog`, then `queue.backlog_cleared`; gauges per queue);
//! - reports a worker silent for three beats (`worker.unresponsive`), checks that its leases are
//!   free for others to take (its liveness key lapsed), and forgets it after an hour.

use super::{
    Fleet,
    age::Arrivals,
    announce::DlqHead,
    signals::{History, Hysteresis, Signals, Tick, drain_secs, next_level},
};
use secflow_common::{
    control::{LevelSetting, registry::WorkerRecord},
    now_ms,
};
use serde_json::json;
use std::{
    collections::{BTreeMap, BTreeSet, HashMap},
    sync::Arc,
    time::Duration,
};
use tokio_util::sync::CancellationToken;

/// How often the controller looks.
const TICK: Duration = Duration::from_secs(1);
/// How long the lead lasts without renewal: a dead leader is replaced within this.
const LEAD_MS: u64 = 3_000;
/// Records silent for longer than this are removed from the registry.
const FORGET_MS: u64 = 3_600_000;
/// History needed before a queue's drain time is trusted.
const MIN_HISTORY_MS: u64 = 2_000;
/// How often the DLQ's first message is looked at for its age (each look raises its delivery
/// count by one, against a bound of a million: a look every 10 s takes over 100 days).
const DLQ_AGE_EVERY_MS: u64 = 10_000;

#[derive(Default)]
struct State {
    leading: bool,
    /// Counters of each worker (by liveness id) at the previous tick: done, failed, settled.
    prev: HashMap<String, (u64, u64, u64)>,
    /// The arrivals ledger of each pool's queue (the age of its oldest message).
    arrivals: BTreeMap<String, Arrivals>,
    /// When the DLQ's first message was last looked at, ms.
    dlq_looked_ms: u64,
    /// When that message was dead-lettered (`None`: the DLQ was empty or it had no time).
    dlq_head_ms: Option<u64>,
    history: BTreeMap<String, History>,
    backlogged: BTreeSet<String>,
    reported: BTreeSet<String>,
    hysteresis: Hysteresis,
}

pub(super) fn spawn(fleet: Arc<Fleet>, stop: CancellationToken) {
    tokio::spawn(async move {
        let mut state = State::default();
        loop {
            tokio::select! {
                () = tick(&fleet, &mut state) => {}
                () = stop.cancelled() => break,
            }
            tokio::select! {
                () = tokio::time::sleep(TICK) => {}
                () = stop.cancelled() => break,
            }
        }
        if state.leading
            && let Some(store) = fleet.controls.store()
        {
            let _ = tokio::time::timeout(TICK, store.resign(fleet.store.live_id())).await;
        }
    });
}

async fn tick(fleet: &Fleet, state: &mut State) {
    let Some(store) = fleet.controls.store() else {
        return;
    };
    let me = fleet.store.live_id();
    let leads = tokio::time::timeout(TICK, store.lead(me, LEAD_MS)).await;
    let leading = matches!(leads, Ok(Ok(true)));
    // The queue gauges below are this worker's only while it leads: the alert rules keep them
    // from the leader alone, so a former leader's last values never count.
    metrics::gauge!("secflow_fleet_controller_leading").set(f64::from(u8::from(leading)));
    if !leading {
        if state.leading {
            tracing::info!("no longer the fleet controller");
        }
        *state = State::default();
        return;
    }
    if !state.leading {
        tracing::info!("leading the fleet controller for this namespace");
        state.leading = true;
        state.hysteresis.last_change_ms = fleet.controls.snapshot().level.at_ms;
    }
    if let Ok(Ok(healing)) = tokio::time::timeout(TICK, store.healing()).await
        && let Some(rate) = healing.recovery_rate()
    {
        metrics::gauge!("secflow_healing_recovery_ratio").set(rate);
    }
    let records = match tokio::time::timeout(TICK, store.workers()).await {
        Ok(Ok((records, _))) => records,
        _ => return,
    };
    let now = now_ms();
    let th = fleet.args.thresholds();
    let settled = count_ticks(state, &records, now, th.window_ms);
    watch_workers(fleet, state, &records, now).await;
    let backlogged = watch_queues(fleet, state, &records, &settled, now, th.backlog_secs).await;
    let signals = signals(state, &records, backlogged, th.min_outcomes, now);
    if let Some(rate) = signals.error_rate {
        metrics::gauge!("secflow_fleet_error_ratio").set(rate);
    }
    let setting = fleet.controls.snapshot().level.clone();
    if !setting.auto {
        // An operator holds the level: the signals wait, and start from now when released.
        state.hysteresis.last_change_ms = now;
        return;
    }
    let Some((level, reason)) =
        next_level(setting.level, &signals, &th, &mut state.hysteresis, now)
    else {
        return;
    };
    let next = LevelSetting {
        level,
        auto: true,
        reason: reason.clone(),
        by: "auto".into(),
        at_ms: now,
    };
    if let Ok(Ok(true)) = tokio::time::timeout(TICK, store.set_level_auto(&next)).await {
        tracing::warn!(from = %setting.level, to = %level, reason, "degradation level changed by the fleet's signals");
        let detail = json!({
            "from": setting.level, "to": level, "reason": reason, "auto": true,
            "error_rate": signals.error_rate, "backlogged": signals.backlogged.iter().map(|(q, _)| q).collect::<Vec<_>>(),
            "open_breakers": signals.open_breakers, "memory": signals.memory,
        });
        let _ = fleet.announcer.event("degradation.changed", detail).await;
        fleet.controls.refresh().await;
    }
}

/// Adds this tick's completed and failed tasks per pool to the history.
/// Returns the deliveries each pool's workers settled since the last tick.
fn count_ticks(
    state: &mut State,
    records: &[WorkerRecord],
    now: u64,
    window_ms: u64,
) -> BTreeMap<String, u64> {
    let zero = Tick {
        at_ms: now,
        done: 0,
        failed: 0,
    };
    // A pool whose workers are all gone still has a queue: nothing drains it now.
    let mut ticks: BTreeMap<String, Tick> = state
        .history
        .keys()
        .map(|pool| (pool.clone(), zero))
        .collect();
    let mut settled_now: BTreeMap<String, u64> = BTreeMap::new();
    for r in records {
        // First sight: a baseline, not a burst of everything it ever did; but a worker that
        // started within the window did all it counts within the window, so its outcomes all
        // count (else a burst it settled before its first heartbeat was seen would be lost).
        // Its settled count stays a baseline: the drain rate is measured between two sightings.
        let young = now.saturating_sub(r.started_ms) <= window_ms;
        let (done, failed, settled) = state.prev.get(&r.live).copied().unwrap_or(if young {
            (0, 0, r.settled)
        } else {
            (r.done, r.failed, r.settled)
        });
        let tick = ticks.entry(r.pool.clone()).or_insert(zero);
        tick.done += r.done.saturating_sub(done);
        tick.failed += r.failed.saturating_sub(failed);
        *settled_now.entry(r.pool.clone()).or_default() += r.settled.saturating_sub(settled);
        state
            .prev
            .insert(r.live.clone(), (r.done, r.failed, r.settled));
    }
    for (pool, tick) in ticks {
        state.history.entry(pool).or_default().push(tick, window_ms);
    }
    settled_now
}

async fn watch_workers(fleet: &Fleet, state: &mut State, records: &[WorkerRecord], now: u64) {
    for r in records {
        if !r.unresponsive(now) {
            state.reported.remove(&r.live);
            continue;
        }
        let silent_ms = now.saturating_sub(r.last_beat_ms);
        if silent_ms > FORGET_MS {
            if let Some(store) = fleet.controls.store() {
                let _ = tokio::time::timeout(TICK, store.forget_worker(&r.live)).await;
            }
            state.reported.remove(&r.live);
            continue;
        }
        if state.reported.contains(&r.live) {
            continue;
        }
        // Its leases are free for others once its liveness key has lapsed.
        let freed = match tokio::time::timeout(TICK, fleet.store.alive_for(&r.live)).await {
            Ok(Ok(None)) => true,
            Ok(Ok(Some(_))) => false,
            _ => continue,
        };
        if !freed {
            continue;
        }
        state.reported.insert(r.live.clone());
        let detail = json!({
            "worker": r.id, "live": r.live, "pool": r.pool, "host": r.host, "pid": r.pid,
            "silent_ms": silent_ms, "in_flight": r.in_flight,
        });
        let _ = fleet.announcer.event("worker.unresponsive", detail).await;
        let detected = format!(
            "worker {} ({}, pid {}) silent for {} ms ({} tasks in flight)",
            r.id, r.host, r.pid, silent_ms, r.in_flight
        );
        fleet
            .healed(
                "release_leases",
                &detected,
                "its liveness lapsed: its leases are free, its tasks run on other workers as the broker redelivers them",
                true,
            )
            .await;
    }
}

/// Reads each pool's queue (and the DLQ), reports backlogs; the backlogged queues.
/// `settled`: deliveries each pool's workers settled since the last tick, at `now`.
async fn watch_queues(
    fleet: &Fleet,
    state: &mut State,
    records: &[WorkerRecord],
    settled: &BTreeMap<String, u64>,
    now: u64,
    backlog_secs: f64,
) -> Vec<(String, f64)> {
    let mut pools: BTreeSet<String> = records.iter().map(|r| r.pool.clone()).collect();
    pools.extend(state.history.keys().cloned());
    let mut backlogged = Vec::new();
    for pool in &pools {
        let queue = fleet.topology.work_queue(pool);
        let Some(depth) = fleet.announcer.depth(&queue).await else {
            continue;
        };
        let history = state.history.get(pool.as_str());
        let rate = history.and_then(History::rate_per_sec);
        let drain = drain_secs(depth.ready, rate);
        metrics::gauge!("secflow_queue_depth", "queue" => queue.clone()).set(depth.ready as f64);
        metrics::gauge!("secflow_queue_consumers", "queue" => queue.clone())
            .set(depth.consumers as f64);
        metrics::gauge!("secflow_queue_drain_seconds", "queue" => queue.clone()).set(drain);
        // A silent worker's deliveries are back in the queue (its connection is gone) or
        // still held (it hangs); counting them twice would make the age come out younger.
        let in_flight = records
            .iter()
            .filter(|r| r.pool == *pool && !r.unresponsive(now))
            .map(|r| r.in_flight)
            .sum();
        let settled = settled.get(pool.as_str()).copied().unwrap_or(0);
        let age = state.arrivals.entry(pool.clone()).or_default().observe(
            now,
            depth.ready,
            in_flight,
            settled,
        );
        metrics::gauge!("secflow_queue_oldest_message_age_seconds", "queue" => queue.clone())
            .set(age.ms as f64 / 1000.0);
        if history.is_none_or(|h| h.span_ms() < MIN_HISTORY_MS) {
            continue;
        }
        let is_backlogged = drain > backlog_secs;
        metrics::gauge!("secflow_queue_backlogged", "queue" => queue.clone())
            .set(f64::from(u8::from(is_backlogged)));
        if is_backlogged {
            backlogged.push((queue.clone(), drain));
        }
        let was = state.backlogged.contains(&queue);
        if is_backlogged != was {
            let kind = if is_backlogged {
                "queue.backlog"
            } else {
                "queue.backlog_cleared"
            };
            tracing::warn!(queue, depth = depth.ready, rate, drain_secs = drain, kind);
            let detail = json!({
                "queue": queue, "depth": depth.ready, "consumers": depth.consumers,
                "rate_per_sec": rate, "drain_secs": drain.is_finite().then_some(drain),
                "threshold_secs": backlog_secs,
            });
            let _ = fleet.announcer.event(kind, detail).await;
            if is_backlogged {
                state.backlogged.insert(queue);
            } else {
                state.backlogged.remove(&queue);
            }
        }
    }
    if let Some(depth) = fleet.announcer.depth(&fleet.topology.dlq()).await {
        metrics::gauge!("secflow_queue_depth", "queue" => fleet.topology.dlq())
            .set(depth.ready as f64);
    }
    dlq_age(fleet, state, now).await;
    backlogged
}

/// Sets the DLQ's oldest-message age: looked up every [`DLQ_AGE_EVERY_MS`], counted on in
/// between (a look an inspector's lock or a broker outage skips keeps the last reading, and
/// the next look waits its turn rather than opening a connection every tick).
async fn dlq_age(fleet: &Fleet, state: &mut State, now: u64) {
    if now.saturating_sub(state.dlq_looked_ms) >= DLQ_AGE_EVERY_MS {
        state.dlq_looked_ms = now;
        match fleet.announcer.dlq_head().await {
            DlqHead::Empty => state.dlq_head_ms = None,
            DlqHead::At(at) => state.dlq_head_ms = at,
            DlqHead::Unknown => {}
        }
    }
    let age_ms = state.dlq_head_ms.map_or(0, |at| now.saturating_sub(at));
    metrics::gauge!("secflow_queue_oldest_message_age_seconds", "queue" => fleet.topology.dlq())
        .set(age_ms as f64 / 1000.0);
}

fn signals(
    state: &State,
    records: &[WorkerRecord],
    backlogged: Vec<(String, f64)>,
    min_outcomes: u64,
    now: u64,
) -> Signals {
    let (done, failed) = state
        .history
        .values()
        .map(History::totals)
        .fold((0, 0), |(d, f), (hd, hf)| (d + hd, f + hf));
    let settled = done + failed;
    let live: Vec<&WorkerRecord> = records.iter().filter(|r| !r.unresponsive(now)).collect();
    let open: BTreeSet<String> = live
        .iter()
        .flat_map(|r| r.open_breakers.iter().cloned())
        .collect();
    Signals {
        error_rate: (settled >= min_outcomes.max(1)).then(|| failed as f64 / settled as f64),
        backlogged,
        open_breakers: open.into_iter().collect(),
        memory: live
            .iter()
            .filter(|r| {
                r.max_rss_bytes > 0
                    && r.rss_bytes.saturating_mul(10) > r.max_rss_bytes.saturating_mul(9)
            })
            .map(|r| r.id.clone())
            .collect(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn record(live: &str, started_ms: u64, done: u64, failed: u64) -> WorkerRecord {
        WorkerRecord {
            id: live.into(),
            live: live.into(),
            pool: "default".into(),
            version: String::new(),
            host: String::new(),
            pid: 1,
            started_ms,
            last_beat_ms: started_ms,
            beat_ms: 1_000,
            in_flight: 0,
            done,
            failed,
            rss_bytes: 0,
            level: secflow_common::control::Level::default(),
            state: "consuming".into(),
            max_rss_bytes: 0,
            open_breakers: Vec::new(),
            queue_wait_ms: 0,
            queue_wait_at_ms: 0,
            settled: done + failed,
        }
    }

    #[test]
    fn a_young_worker_s_first_outcomes_count_and_an_old_one_s_are_a_baseline() {
        let now = 10_000_000;
        let mut state = State::default();
        // Started 1 s ago, within the 4 s window: its 60 failures happened in the window.
        let young = record("young", now - 1_000, 0, 60);
        // Started an hour ago: what it did before this controller saw it is history.
        let old = record("old", now - 3_600_000, 500, 40);
        count_ticks(&mut state, &[young, old], now, 4_000);
        assert_eq!(state.history["default"].totals(), (0, 60));
        // Seen again with 5 more failures each: only the differences count.
        let young = record("young", now - 1_000, 0, 65);
        let old = record("old", now - 3_600_000, 500, 45);
        count_ticks(&mut state, &[young, old], now + 1_000, 4_000);
        assert_eq!(state.history["default"].totals(), (0, 70));
    }
}
