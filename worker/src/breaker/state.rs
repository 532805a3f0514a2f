//! Circuit-breaker state and its one transition function: pure, no clock, no I/O.
//!
//! The same function drives the fleet-wide breaker (state in Redis, swapped by an atomic
//! compare-and-set script) and the local fallback (state in memory), so both behave alike.

use serde::{Deserialize, Serialize};

pub use super::config::BreakerConfig;

/// Where a breaker is.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Mode {
    /// Calls go through; failures are counted.
    #[default]
    Closed,
    /// Calls are refused until `opened_at_ms + open_ms`.
    Open,
    /// A few probe calls go through to test the service.
    HalfOpen,
}

/// A breaker's whole state, stored as JSON.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct BreakerState {
    /// Current mode.
    pub mode: Mode,
    /// Times of recent failures (closed), oldest first, at most `failure_threshold`.
    #[serde(default)]
    pub failures: Vec<u64>,
    /// When it last opened.
    #[serde(default)]
    pub opened_at_ms: u64,
    /// How long this opening lasts.
    #[serde(default)]
    pub open_ms: u64,
    /// Probes admitted and not yet reported (half-open).
    #[serde(default)]
    pub probes: u32,
    /// Successful probes so far (half-open).
    #[serde(default)]
    pub successes: u32,
}

/// What happened.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Input {
    /// A task wants to call the service.
    Admit,
    /// A call (or probe) succeeded.
    Success,
    /// A call (or probe) failed in a way that says the service is unwell.
    Failure,
}

/// The answer to [`Input::Admit`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Verdict {
    /// Call it.
    Allow,
    /// Call it as a probe of a half-open breaker.
    Probe,
    /// Do not call it before `until_ms`.
    Reject { until_ms: u64 },
    /// A success or failure was recorded.
    Recorded,
}

/// Applies `input` at `now_ms`: the new state (equal to the old one when nothing changed) and
/// the verdict.
pub fn transition(
    s: &BreakerState,
    input: Input,
    now_ms: u64,
    cfg: &BreakerConfig,
) -> (BreakerState, Verdict) {
    let mut n = s.clone();
    let reopen_at = s.opened_at_ms.saturating_add(s.open_ms);
    match (s.mode, input) {
        (Mode::Closed, Input::Admit) => (n, Verdict::Allow),
        (Mode::Closed, Input::Success) => (n, Verdict::Recorded),
        (Mode::Closed, Input::Failure) => {
            n.failures
                .retain(|&t| now_ms.saturating_sub(t) < cfg.window_ms);
            n.failures.push(now_ms);
            // Below the threshold the list stays shorter than it, so the state stays small.
            if n.failures.len() >= cfg.failure_threshold as usize {
                n = open(now_ms, cfg.open_ms);
            }
            (n, Verdict::Recorded)
        }
        (Mode::Open, Input::Admit) if now_ms < reopen_at => (
            n,
            Verdict::Reject {
                until_ms: reopen_at,
            },
        ),
        (Mode::Open, Input::Admit) => {
            n.mode = Mode::HalfOpen;
            n.probes = 1;
            n.successes = 0;
            // From now on `opened_at_ms` is when the latest probe was let through.
            n.opened_at_ms = now_ms;
            (n, Verdict::Probe)
        }
        // Late reports from calls admitted before it opened change nothing.
        (Mode::Open, Input::Success | Input::Failure) => (n, Verdict::Recorded),
        (Mode::HalfOpen, Input::Admit) if s.probes < cfg.half_open_probes => {
            n.probes += 1;
            n.opened_at_ms = now_ms;
            (n, Verdict::Probe)
        }
        // All probe permits are out; wait about one more open period for their outcome.
        // A probe that never reported (its worker died, or reported to a local breaker while
        // Redis was away) must not hold the breaker half-open for ever: after `max_open_ms` its
        // permit is given to a new probe.
        (Mode::HalfOpen, Input::Admit)
            if now_ms >= s.opened_at_ms.saturating_add(cfg.max_open_ms) =>
        {
            n.opened_at_ms = now_ms;
            (n, Verdict::Probe)
        }
        (Mode::HalfOpen, Input::Admit) => (
            n,
            Verdict::Reject {
                until_ms: now_ms + s.open_ms.min(cfg.open_ms).max(1),
            },
        ),
        (Mode::HalfOpen, Input::Success) => {
            n.successes += 1;
            n.probes = n.probes.saturating_sub(1);
            if n.successes >= cfg.success_threshold {
                n = BreakerState::default();
            }
            (n, Verdict::Recorded)
        }
        (Mode::HalfOpen, Input::Failure) => {
            let longer = s
                .open_ms
                .saturating_mul(2)
                .clamp(cfg.open_ms, cfg.max_open_ms);
            (open(now_ms, longer), Verdict::Recorded)
        }
    }
}

fn open(now_ms: u64, open_ms: u64) -> BreakerState {
    BreakerState {
        mode: Mode::Open,
        opened_at_ms: now_ms,
        open_ms,
        ..BreakerState::default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cfg() -> BreakerConfig {
        BreakerConfig {
            failure_threshold: 3,
            window_ms: 1_000,
            open_ms: 100,
            max_open_ms: 350,
            half_open_probes: 1,
            success_threshold: 2,
        }
    }

    #[test]
    fn published_setting_names_mean_the_same_settings() {
        let published: BreakerConfig = serde_json::from_str(
            r#"{"failure_threshold":3,"success_threshold":2,"timeout":30,"half_open_max_calls":2}"#,
        )
        .unwrap();
        assert_eq!((published.open_ms, published.half_open_probes), (30_000, 2));
        assert_eq!(published.validate(), Ok(()));
        let ours: BreakerConfig =
            serde_json::from_str(r#"{"failure_threshold":3,"open_ms":30000,"half_open_probes":2}"#)
                .unwrap();
        assert_eq!(published, ours);
        let long: BreakerConfig = serde_json::from_str(r#"{"timeout":900}"#).unwrap();
        assert_eq!(long.validate(), Ok(()));
        let both = serde_json::from_str::<BreakerConfig>(r#"{"timeout":1,"open_ms":5}"#)
            .unwrap_err()
            .to_string();
        assert!(both.contains("not both"), "{both}");
        assert!(serde_json::from_str::<BreakerConfig>(r#"{"timeout_s":1}"#).is_err());
    }

    fn run(s: &BreakerState, inputs: &[(Input, u64)]) -> (BreakerState, Verdict) {
        let mut state = s.clone();
        let mut verdict = Verdict::Recorded;
        for &(input, now) in inputs {
            (state, verdict) = transition(&state, input, now, &cfg());
        }
        (state, verdict)
    }

    #[test]
    fn opens_after_threshold_failures_within_the_window() {
        let (s, _) = run(
            &BreakerState::default(),
            &[
                (Input::Failure, 0),
                (Input::Failure, 10),
                (Input::Failure, 20),
            ],
        );
        assert_eq!(s.mode, Mode::Open);
        assert_eq!(
            transition(&s, Input::Admit, 50, &cfg()).1,
            Verdict::Reject { until_ms: 120 }
        );
    }

    #[test]
    fn old_failures_slide_out_of_the_window() {
        let (s, _) = run(
            &BreakerState::default(),
            &[
                (Input::Failure, 0),
                (Input::Failure, 10),
                (Input::Failure, 1_500),
            ],
        );
        assert_eq!(s.mode, Mode::Closed);
        assert_eq!(s.failures, vec![1_500]);
    }

    #[test]
    fn half_open_admits_limited_probes_then_closes_on_successes() {
        let (open, _) = run(
            &BreakerState::default(),
            &[
                (Input::Failure, 0),
                (Input::Failure, 1),
                (Input::Failure, 2),
            ],
        );
        let (s, v) = transition(&open, Input::Admit, 200, &cfg());
        assert_eq!((s.mode, v), (Mode::HalfOpen, Verdict::Probe));
        assert!(
            matches!(
                transition(&s, Input::Admit, 201, &cfg()).1,
                Verdict::Reject { .. }
            ),
            "one probe at a time"
        );
        let (s, _) = run(
            &s,
            &[
                (Input::Success, 210),
                (Input::Admit, 211),
                (Input::Success, 220),
            ],
        );
        assert_eq!(
            s,
            BreakerState::default(),
            "closed again after two successful probes"
        );
    }

    #[test]
    fn failed_probe_reopens_for_longer_up_to_the_cap() {
        let (open, _) = run(
            &BreakerState::default(),
            &[
                (Input::Failure, 0),
                (Input::Failure, 1),
                (Input::Failure, 2),
            ],
        );
        let (s, _) = run(&open, &[(Input::Admit, 200), (Input::Failure, 201)]);
        assert_eq!((s.mode, s.open_ms), (Mode::Open, 200));
        let (s, _) = run(&s, &[(Input::Admit, 500), (Input::Failure, 501)]);
        assert_eq!(s.open_ms, 350, "capped at max_open_ms");
    }

    #[test]
    fn a_lost_probe_does_not_hold_the_breaker_half_open() {
        let (open, _) = run(
            &BreakerState::default(),
            &[
                (Input::Failure, 0),
                (Input::Failure, 1),
                (Input::Failure, 2),
            ],
        );
        let (s, v) = transition(&open, Input::Admit, 200, &cfg());
        assert_eq!(v, Verdict::Probe);
        assert!(matches!(
            transition(&s, Input::Admit, 300, &cfg()).1,
            Verdict::Reject { .. }
        ));
        // The probe never reports; after max_open_ms another one is let through.
        assert_eq!(
            transition(&s, Input::Admit, 200 + 350, &cfg()).1,
            Verdict::Probe
        );
    }

    #[test]
    fn config_is_validated() {
        assert!(BreakerConfig::default().validate().is_ok());
        assert!(
            BreakerConfig {
                open_ms: 0,
                ..cfg()
            }
            .validate()
            .is_err()
        );
        assert!(
            BreakerConfig {
                failure_threshold: 0,
                ..cfg()
            }
            .validate()
            .unwrap_err()
            .contains("failure_threshold")
        );
    }
}
