//! Whether a paced requeue may release a task now, from the fleet's controls and its service's
//! stored breaker (pure: no clock, no I/O).
//!
//! A held breaker (open or disabled) and a paused type hold a task until lifted. A stored
//! breaker that is open holds it until its open time is over. After that, and while it is
//! half-open, the breaker needs a task to probe the service before it can close, and nothing
//! else may send one: such a service's tasks are released one at a time, spaced out (the
//! workers run the probe and defer the rest without counting a failure).

use crate::breaker_state::{Mode, StoredBreaker};
use secflow_common::control::Controls;

/// What to do with a task now.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Gate {
    /// Release it.
    Pass,
    /// Release at most one task of its service per probe interval.
    Probe(String),
    /// Keep it in the DLQ for now.
    Wait(String),
}

impl Gate {
    /// Why the task is held or trickled (nothing for `Pass`).
    pub fn reason(&self) -> Option<&str> {
        match self {
            Self::Pass => None,
            Self::Probe(r) | Self::Wait(r) => Some(r),
        }
    }
}

/// The gate of a task of `task_type` calling `service` at `now_ms`; `stored` is its service's
/// breaker state (`None`: no state, a closed breaker; `Some(Err)`: a state that does not parse,
/// which the workers replace by a fresh closed one).
pub fn decide(
    controls: &Controls,
    stored: Option<&Result<StoredBreaker, String>>,
    service: &str,
    task_type: &str,
    now_ms: u64,
) -> Gate {
    if let Some(held) = controls.held(service, task_type, now_ms) {
        return Gate::Wait(held.reason);
    }
    let Some(Ok(b)) = stored else {
        return Gate::Pass;
    };
    match b.mode {
        Mode::Closed => Gate::Pass,
        Mode::Open if now_ms < b.open_until_ms() => Gate::Wait(format!(
            "breaker of {service} open for {} s more",
            (b.open_until_ms() - now_ms).div_ceil(1000)
        )),
        Mode::Open => Gate::Probe(format!(
            "breaker of {service} open, its open time over: one task at a time probes it"
        )),
        Mode::HalfOpen => Gate::Probe(format!(
            "breaker of {service} half-open: one task at a time probes it"
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use secflow_common::control::{BreakerHold, HoldMode, Pause};

    fn stored(mode: Mode, opened_at_ms: u64, open_ms: u64) -> Result<StoredBreaker, String> {
        Ok(StoredBreaker {
            mode,
            failures: vec![],
            opened_at_ms,
            open_ms,
            probes: 0,
            successes: 0,
        })
    }

    #[test]
    fn stored_states_hold_probe_or_pass() {
        let c = Controls::default();
        assert_eq!(decide(&c, None, "nvd", "enrich.cve", 5), Gate::Pass);
        let closed = stored(Mode::Closed, 0, 0);
        assert_eq!(decide(&c, Some(&closed), "nvd", "x", 5), Gate::Pass);
        let open = stored(Mode::Open, 1_000, 10_000);
        let g = decide(&c, Some(&open), "nvd", "x", 2_000);
        assert_eq!(g, Gate::Wait("breaker of nvd open for 9 s more".into()));
        assert!(matches!(
            decide(&c, Some(&open), "nvd", "x", 11_000),
            Gate::Probe(_)
        ));
        let half = stored(Mode::HalfOpen, 0, 0);
        assert!(matches!(
            decide(&c, Some(&half), "nvd", "x", 1),
            Gate::Probe(_)
        ));
        let broken: Result<StoredBreaker, String> = Err("garbage".into());
        assert_eq!(decide(&c, Some(&broken), "nvd", "x", 1), Gate::Pass);
    }

    #[test]
    fn holds_and_pauses_come_first() {
        let mut c = Controls::default();
        let hold = |mode, until_ms| BreakerHold {
            mode,
            until_ms,
            reason: "upgrade".into(),
            by: "alice".into(),
            at_ms: 0,
        };
        c.breakers
            .insert("nvd".into(), hold(HoldMode::Open, Some(10_000)));
        let closed = stored(Mode::Closed, 0, 0);
        let g = decide(&c, Some(&closed), "nvd", "enrich.cve", 5_000);
        assert!(
            g.reason().unwrap().contains("held open by alice: upgrade"),
            "{g:?}"
        );
        assert_eq!(
            decide(&c, None, "nvd", "enrich.cve", 10_000),
            Gate::Pass,
            "hold over"
        );
        assert_eq!(decide(&c, None, "other", "enrich.cve", 5_000), Gate::Pass);
        c.breakers
            .insert("nvd".into(), hold(HoldMode::Disabled, None));
        assert!(matches!(
            decide(&c, None, "nvd", "t", 1 << 40),
            Gate::Wait(_)
        ));
        c.paused.insert(
            "scan.nuclei".into(),
            Pause {
                reason: "r".into(),
                by: "bob".into(),
                at_ms: 0,
            },
        );
        let g = decide(&c, None, "scan.nuclei", "scan.nuclei", 1);
        assert!(g.reason().unwrap().contains("paused by bob"), "{g:?}");
    }
}
