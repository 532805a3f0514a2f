//! How the fleet's controls are shown: the breakers table, the worker registry, the level
//! (pure: the caller passes the time).

use crate::{breaker_state::StoredBreaker, fleet::BreakerRead, report::human_age};
use secflow_common::control::{
    BreakerHold, Controls, HoldMode, LevelSetting, registry::WorkerRecord,
};
use serde::Serialize;
use std::collections::{BTreeMap, BTreeSet};

/// One service's breaker, as `breakers` shows it.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct BreakerRow {
    /// The service.
    pub service: String,
    /// `held_open`, `disabled`, or the stored mode (`closed`, `open`, `half_open`), or
    /// `unreadable`.
    pub state: String,
    /// Failures counted in its window (stored state).
    pub failures: usize,
    /// When it lets tasks through again: a timed hold's end, else the stored open time's end;
    /// none for a hold until closed by hand or a breaker that is not open.
    pub open_until_ms: Option<u64>,
    /// The stored state, as the workers wrote it.
    pub stored: Option<StoredBreaker>,
    /// Why the stored state could not be read.
    pub stored_error: Option<String>,
    /// The operator's hold in force.
    pub hold: Option<BreakerHold>,
}

/// Every service with a stored state or a hold in force at `now_ms`, by name.
pub fn breaker_rows(
    controls: &Controls,
    stored: &BTreeMap<String, BreakerRead>,
    now_ms: u64,
) -> Vec<BreakerRow> {
    let live_hold = |s: &str| {
        controls
            .breakers
            .get(s)
            .filter(|h| h.mode == HoldMode::Disabled || h.until_ms.is_none_or(|u| u > now_ms))
    };
    let services: BTreeSet<&String> = stored
        .keys()
        .chain(controls.breakers.keys().filter(|s| live_hold(s).is_some()))
        .collect();
    services
        .into_iter()
        .map(|service| {
            let hold = live_hold(service).cloned();
            let (state_ok, stored_error) = match stored.get(service) {
                Some(Ok(b)) => (Some(b.clone()), None),
                Some(Err(e)) => (None, Some(e.clone())),
                None => (None, None),
            };
            let state = match (&hold, &state_ok, &stored_error) {
                (Some(h), ..) if h.mode == HoldMode::Open => "held_open".to_string(),
                (Some(_), ..) => "disabled".to_string(),
                (None, Some(b), _) => b.mode.as_str().to_string(),
                (None, None, Some(_)) => "unreadable".to_string(),
                (None, None, None) => "closed".to_string(),
            };
            let open_until_ms = match &hold {
                Some(h) => h.until_ms,
                None => state_ok.as_ref().and_then(StoredBreaker::open_until),
            };
            BreakerRow {
                service: service.clone(),
                state,
                failures: state_ok.as_ref().map_or(0, |b| b.failures.len()),
                open_until_ms,
                stored: state_ok,
                stored_error,
                hold,
            }
        })
        .collect()
}

/// `in 4m10s`, `4m10s ago`.
pub fn relative(at_ms: u64, now_ms: u64) -> String {
    if at_ms > now_ms {
        format!("in {}", human_age(at_ms - now_ms))
    } else {
        format!("{} ago", human_age(now_ms - at_ms))
    }
}

/// The breakers table.
pub fn breakers_text(rows: &[BreakerRow], now_ms: u64) -> String {
    let mut out = format!(
        "{:<28} {:<10} {:>8}  {:<12} {}\n",
        "SERVICE", "STATE", "FAILURES", "OPEN_UNTIL", "HOLD"
    );
    for r in rows {
        let until = match (&r.hold, r.open_until_ms) {
            (_, Some(u)) => relative(u, now_ms),
            (Some(h), None) if h.mode == HoldMode::Open => "until closed".into(),
            (Some(_), None) => "until enabled".into(),
            (None, None) => "-".into(),
        };
        let hold = r.hold.as_ref().map_or_else(
            || r.stored_error.clone().unwrap_or_else(|| "-".into()),
            |h| {
                format!(
                    "by {} {}: {}",
                    h.by,
                    relative(h.at_ms, now_ms),
                    show(&h.reason)
                )
            },
        );
        out.push_str(&format!(
            "{:<28} {:<10} {:>8}  {:<12} {hold}\n",
            r.service, r.state, r.failures, until
        ));
    }
    if rows.is_empty() {
        out.push_str("(no stored breaker state and no hold)\n");
    }
    out
}

/// One worker, as `workers` shows it.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct WorkerRow {
    /// What it wrote.
    #[serde(flatten)]
    pub record: WorkerRecord,
    /// Time since its last beat, ms.
    pub heartbeat_age_ms: u64,
    /// Silent for too many beats: stopped, hung or gone.
    pub unresponsive: bool,
}

/// The registry's records at `now_ms`.
pub fn worker_rows(records: Vec<WorkerRecord>, now_ms: u64) -> Vec<WorkerRow> {
    records
        .into_iter()
        .map(|record| WorkerRow {
            heartbeat_age_ms: now_ms.saturating_sub(record.last_beat_ms),
            unresponsive: record.unresponsive(now_ms),
            record,
        })
        .collect()
}

/// The registry table; unresponsive workers say so in the state column.
pub fn workers_text(rows: &[WorkerRow]) -> String {
    let mut out = format!(
        "{:<24} {:<10} {:<16} {:<9} {:<26} {:>6} {:>9} {:>8} {:>7} {:>7}  {}\n",
        "ID",
        "POOL",
        "HOST",
        "VERSION",
        "STATE",
        "BEAT",
        "IN_FLIGHT",
        "DONE",
        "FAILED",
        "RSS_MB",
        "LEVEL"
    );
    for w in rows {
        let r = &w.record;
        let state = if w.unresponsive {
            format!("UNRESPONSIVE (was {})", r.state)
        } else {
            r.state.clone()
        };
        out.push_str(&format!(
            "{:<24} {:<10} {:<16} {:<9} {:<26} {:>6} {:>9} {:>8} {:>7} {:>7}  {}\n",
            r.id,
            r.pool,
            r.host,
            r.version,
            state,
            human_age(w.heartbeat_age_ms),
            r.in_flight,
            r.done,
            r.failed,
            r.rss_bytes / (1 << 20),
            r.level
        ));
    }
    let silent = rows.iter().filter(|w| w.unresponsive).count();
    out.push_str(&format!("{} workers, {silent} unresponsive\n", rows.len()));
    out
}

/// The level line: `level medium (manual) since 5m0s ago, by alice: incident 42`.
pub fn level_text(l: &LevelSetting, now_ms: u64) -> String {
    let since = if l.at_ms == 0 {
        "never set".to_string()
    } else {
        format!("since {}", relative(l.at_ms, now_ms))
    };
    format!(
        "level {} ({}) {since}, by {}: {}\n",
        l.level,
        if l.auto { "auto" } else { "manual" },
        l.by,
        show(&l.reason)
    )
}

/// A reason as shown: `-` when none was given.
pub fn show(reason: &str) -> &str {
    if reason.is_empty() { "-" } else { reason }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::breaker_state::{Mode, parse_record};
    use secflow_common::control::Level;

    fn hold(mode: HoldMode, until_ms: Option<u64>) -> BreakerHold {
        BreakerHold {
            mode,
            until_ms,
            reason: "upgrade".into(),
            by: "alice".into(),
            at_ms: 1_000,
        }
    }

    #[test]
    fn breakers_list_stored_states_and_live_holds() {
        let mut c = Controls::default();
        c.breakers
            .insert("held".into(), hold(HoldMode::Open, Some(90_000)));
        c.breakers
            .insert("off".into(), hold(HoldMode::Disabled, None));
        c.breakers
            .insert("lapsed".into(), hold(HoldMode::Open, Some(2_000)));
        let mut stored = BTreeMap::new();
        stored.insert(
            "api".to_string(),
            parse_record(r#"1|{"mode":"open","failures":[1,2],"opened_at_ms":0,"open_ms":70000}"#),
        );
        stored.insert("junk".to_string(), Err("state is unreadable".to_string()));
        let rows = breaker_rows(&c, &stored, 10_000);
        let names: Vec<_> = rows
            .iter()
            .map(|r| (r.service.as_str(), r.state.as_str()))
            .collect();
        assert_eq!(
            names,
            [
                ("api", "open"),
                ("held", "held_open"),
                ("junk", "unreadable"),
                ("off", "disabled")
            ]
        );
        assert_eq!((rows[0].failures, rows[0].open_until_ms), (2, Some(70_000)));
        assert_eq!(rows[1].open_until_ms, Some(90_000));
        assert_eq!(rows[0].stored.as_ref().unwrap().mode, Mode::Open);
        let text = breakers_text(&rows, 10_000);
        assert!(text.contains("in 1m20s"), "{text}");
        assert!(text.contains("until enabled"), "{text}");
        assert!(text.contains("by alice 9s ago: upgrade"), "{text}");
    }

    #[test]
    fn silent_workers_are_marked() {
        let rec = |id: &str, last_beat_ms| WorkerRecord {
            id: id.into(),
            live: id.into(),
            pool: "default".into(),
            version: "0.1.0".into(),
            host: "h".into(),
            pid: 1,
            started_ms: 0,
            last_beat_ms,
            beat_ms: 1_000,
            in_flight: 2,
            done: 10,
            failed: 1,
            rss_bytes: 64 << 20,
            level: Level::Full,
            state: "consuming".into(),
            max_rss_bytes: 0,
            open_breakers: Vec::new(),
            queue_wait_ms: 0,
            queue_wait_at_ms: 0,
            settled: 0,
        };
        let rows = worker_rows(vec![rec("a", 9_500), rec("b", 1_000)], 10_000);
        assert_eq!((rows[0].unresponsive, rows[1].unresponsive), (false, true));
        assert_eq!(rows[1].heartbeat_age_ms, 9_000);
        let text = workers_text(&rows);
        assert!(text.contains("UNRESPONSIVE (was consuming)"), "{text}");
        assert!(text.contains("2 workers, 1 unresponsive"), "{text}");
        let json = serde_json::to_value(&rows[0]).unwrap();
        assert_eq!(
            (json["id"].as_str(), json["unresponsive"].as_bool()),
            (Some("a"), Some(false))
        );
    }

    #[test]
    fn the_level_says_who_and_since_when() {
        let l = LevelSetting {
            level: Level::Medium,
            auto: false,
            reason: "".into(),
            by: "alice".into(),
            at_ms: 1_000,
        };
        assert_eq!(
            level_text(&l, 301_000),
            "level medium (manual) since 5m0s ago, by alice: -\n"
        );
        assert!(level_text(&LevelSetting::default(), 5).contains("(auto) never set"));
    }
}
