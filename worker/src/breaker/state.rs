//! Circuit-breaker state and its one transition function: pure, no clock, no I/O.
//!
//! The same function drives the fleet-wide breaker (state in Redis, swapped by an atomic
//! compare-and-set script) and the local fallback (state in memory), so both behave alike.

use serde::{Deserialize, Serialize};

pub use super::config::BreakerConfig;
use super::window::{self, Bucket};

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
    /// Times of recent failures (closed), oldest first, at most `failure_threshold`; none
    /// without a count threshold.
    #[serde(default)]
    pub failures: Vec<u64>,
    /// Calls and failures per time bucket of the window (closed), oldest first; only with a
    /// failure rate threshold, and then at most a few buckets whatever the call rate.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub calls: Vec<Bucket>,
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
        (Mode::Closed, Input::Success | Input::Failure) => {
            let failed = input == Input::Failure;
            let mut reached = false;
            if failed && cfg.failure_threshold > 0 {
                n.failures
                    .retain(|&t| now_ms.saturating_sub(t) < cfg.window_ms);
                n.failures.push(now_ms);
                // Below the threshold the list stays shorter than it, so the state stays small.
                reached = n.failures.len() >= cfg.failure_threshold as usize;
            }
            // Without a rate threshold a success changes nothing: the state stays equal.
            if let Some(pct) = cfg.failure_rate_threshold {
                window::count(&mut n.calls, now_ms, cfg.window_ms, failed);
                reached |= window::rate_reached(&n.calls, pct, cfg.minimum_calls);
            }
            if reached {
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
            failure_rate_threshold: None,
            minimum_calls: 20,
            window_ms: 1_000,
            open_ms: 100,
            max_open_ms: 350,
            half_open_probes: 1,
            success_threshold: 2,
        }
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

    /// 40 % over at least 10 calls in 1 s; no count threshold unless `failure_threshold` is set.
    fn rate(failure_threshold: u32) -> BreakerConfig {
        BreakerConfig {
            failure_threshold,
            failure_rate_threshold: Some(40),
            minimum_calls: 10,
            ..cfg()
        }
    }

    /// Feeds `calls` outcomes 1 ms apart from `start` (true = failed) to a closed breaker.
    fn calls(
        cfg: &BreakerConfig,
        start: u64,
        failed: impl Fn(u64) -> bool,
        n: u64,
    ) -> BreakerState {
        let mut s = BreakerState::default();
        for i in 0..n {
            let input = if failed(i) {
                Input::Failure
            } else {
                Input::Success
            };
            (s, _) = transition(&s, input, start + i, cfg);
        }
        s
    }

    #[test]
    fn a_failure_rate_above_the_threshold_opens_it() {
        let s = calls(&rate(0), 0, |i| i % 2 == 0, 10);
        assert_eq!(s.mode, Mode::Open, "50 % of 10 calls, threshold 40 %");
        assert!(s.calls.is_empty() && s.failures.is_empty());
    }

    #[test]
    fn a_failure_rate_below_the_threshold_keeps_it_closed() {
        let s = calls(&rate(0), 0, |i| i % 10 == 0, 200);
        assert_eq!(s.mode, Mode::Closed, "10 %");
        assert!(
            s.failures.is_empty(),
            "no count threshold: no failure times kept"
        );
        assert_eq!(window::totals(&s.calls), (200, 20));
    }

    #[test]
    fn below_the_minimum_calls_the_rate_never_opens_it() {
        let s = calls(&rate(0), 0, |_| true, 9);
        assert_eq!(s.mode, Mode::Closed, "9 failures of 9 calls, minimum 10");
        let (s, _) = transition(&s, Input::Success, 9, &rate(0));
        assert_eq!(s.mode, Mode::Open, "the tenth call, a success, makes 90 %");
    }

    #[test]
    fn calls_that_left_the_window_do_not_count() {
        // 5 failures early, then 5 successes after the window moved past them: 50 % of 10
        // calls if the failures still counted.
        let mut s = calls(&rate(0), 0, |_| true, 5);
        for t in 1_200..1_205 {
            (s, _) = transition(&s, Input::Success, t, &rate(0));
        }
        assert_eq!(s.mode, Mode::Closed);
        assert_eq!(window::totals(&s.calls), (5, 0));
    }

    #[test]
    fn either_threshold_opens_it() {
        // The count: 3 failures among 100 calls (3 %).
        let s = calls(&rate(3), 0, |i| i >= 97, 100);
        assert_eq!(s.mode, Mode::Open);
        // The rate, the count (3) not reached: 2 failures in the first 5 calls are 40 %.
        let mut strict = rate(3);
        strict.minimum_calls = 5;
        let s = calls(&strict, 0, |i| i < 2, 5);
        assert_eq!(s.mode, Mode::Open);
    }

    #[test]
    fn without_a_rate_threshold_a_success_changes_nothing() {
        let s = calls(&cfg(), 0, |i| i == 0, 1);
        assert_eq!(transition(&s, Input::Success, 5, &cfg()).0, s);
        assert!(s.calls.is_empty());
    }
}
