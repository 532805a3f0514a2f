//! What the fleet's own signals say about its health, and the level they call for, with
//! hysteresis (pure functions; time is passed in). Going down takes pressure, one level per
//! step; coming back up takes calm — every signal well below its threshold — held for the whole
//! recovery period, one level per period. The band between "pressure" and "calm" (an error rate
//! between half the threshold and the threshold) changes nothing, so the level does not flap.

use secflow_common::control::Level;
use std::collections::VecDeque;

/// The thresholds and periods the controller works with.
#[derive(Clone, Debug)]
pub struct Thresholds {
    /// Failed share of settled tasks over the window that counts as pressure (0.10 = 10 %).
    pub error_rate: f64,
    /// Fewer settled tasks than this in the window say nothing about the error rate.
    pub min_outcomes: u64,
    /// Window of the error rate and of the processing rate, ms.
    pub window_ms: u64,
    /// Shortest time between two steps down, ms.
    pub step_ms: u64,
    /// Calm needed before each step up, ms.
    pub recover_ms: u64,
    /// A queue whose depth would take longer than this to drain at the measured rate is
    /// backlogged, seconds.
    pub backlog_secs: f64,
}

/// Settled tasks of a pool during one tick.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct Tick {
    /// When, ms.
    pub at_ms: u64,
    /// Completed.
    pub done: u64,
    /// Failed (retried or dead-lettered).
    pub failed: u64,
}

/// Recent ticks of one pool, at most a window's worth.
#[derive(Clone, Debug, Default)]
pub struct History {
    ticks: VecDeque<Tick>,
}

impl History {
    /// Adds a tick and forgets those older than `window_ms`.
    pub fn push(&mut self, tick: Tick, window_ms: u64) {
        self.ticks.push_back(tick);
        while self
            .ticks
            .front()
            .is_some_and(|t| tick.at_ms.saturating_sub(t.at_ms) > window_ms)
        {
            self.ticks.pop_front();
        }
    }

    /// Completed and failed over the window.
    pub fn totals(&self) -> (u64, u64) {
        self.ticks
            .iter()
            .fold((0, 0), |(d, f), t| (d + t.done, f + t.failed))
    }

    /// How long the history covers, ms.
    pub fn span_ms(&self) -> u64 {
        match (self.ticks.front(), self.ticks.back()) {
            (Some(a), Some(b)) => b.at_ms - a.at_ms,
            _ => 0,
        }
    }

    /// Tasks settled per second over the window (`None` before a second of history).
    pub fn rate_per_sec(&self) -> Option<f64> {
        let span = self.span_ms();
        (span >= 1_000).then(|| {
            let (d, f) = self.totals();
            (d + f) as f64 * 1_000.0 / span as f64
        })
    }
}

/// How long `depth` messages take to drain at `rate` per second (infinite if nothing moves).
pub fn drain_secs(depth: u64, rate: Option<f64>) -> f64 {
    match (depth, rate) {
        (0, _) => 0.0,
        (_, Some(r)) if r > 0.0 => depth as f64 / r,
        _ => f64::INFINITY,
    }
}

/// What the signals say right now.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Signals {
    /// Failed share over the window, when enough tasks settled to tell.
    pub error_rate: Option<f64>,
    /// Backlogged queues with their drain time, seconds.
    pub backlogged: Vec<(String, f64)>,
    /// Services whose breaker a worker saw open.
    pub open_breakers: Vec<String>,
    /// Workers near their memory limit.
    pub memory: Vec<String>,
}

impl Signals {
    /// The level the signals call for, and why.
    pub fn target(&self, th: &Thresholds) -> (Level, Vec<String>) {
        let mut severity = 0usize;
        let mut reasons = Vec::new();
        if let Some(rate) = self.error_rate.filter(|r| *r >= th.error_rate) {
            // A failure rate three times the threshold (or half of everything) weighs double.
            severity += if rate >= (3.0 * th.error_rate).min(0.5) {
                2
            } else {
                1
            };
            reasons.push(format!("error rate {:.0} % over the window", rate * 100.0));
        }
        if let Some((queue, secs)) = self.backlogged.first() {
            severity += 1;
            reasons.push(if secs.is_finite() {
                format!("backlog on {queue} (drains in {secs:.0} s)")
            } else {
                format!("backlog on {queue} (nothing is draining it)")
            });
        }
        if !self.open_breakers.is_empty() {
            severity += 1;
            reasons.push(format!("breakers open: {}", self.open_breakers.join(", ")));
        }
        if !self.memory.is_empty() {
            severity += 1;
            reasons.push(format!("memory pressure on {}", self.memory.join(", ")));
        }
        (Level::ALL[severity.min(Level::ALL.len() - 1)], reasons)
    }

    /// Whether every signal is well clear of its threshold.
    pub fn calm(&self, th: &Thresholds) -> bool {
        self.error_rate.is_none_or(|r| r < th.error_rate / 2.0)
            && self.backlogged.is_empty()
            && self.open_breakers.is_empty()
            && self.memory.is_empty()
    }
}

/// The controller's memory between ticks.
#[derive(Clone, Debug, Default)]
pub struct Hysteresis {
    /// When the level last changed, ms.
    pub last_change_ms: u64,
    /// Since when the signals have been calm without interruption.
    pub calm_since_ms: Option<u64>,
}

/// The level to move to from `current` at `now_ms`, and why; `None` to stay.
pub fn next_level(
    current: Level,
    signals: &Signals,
    th: &Thresholds,
    h: &mut Hysteresis,
    now_ms: u64,
) -> Option<(Level, String)> {
    let (target, reasons) = signals.target(th);
    if signals.calm(th) {
        let since = *h.calm_since_ms.get_or_insert(now_ms);
        let calm_for = now_ms - since;
        if current > Level::Full
            && calm_for >= th.recover_ms
            && now_ms.saturating_sub(h.last_change_ms) >= th.recover_ms
        {
            h.last_change_ms = now_ms;
            h.calm_since_ms = Some(now_ms);
            let reason = format!("signals calm for {} s", calm_for / 1000);
            return Some((current.higher(), reason));
        }
        return None;
    }
    h.calm_since_ms = None;
    if target > current && now_ms.saturating_sub(h.last_change_ms) >= th.step_ms {
        h.last_change_ms = now_ms;
        return Some((current.lower(), reasons.join("; ")));
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    fn th() -> Thresholds {
        Thresholds {
            error_rate: 0.10,
            min_outcomes: 20,
            window_ms: 60_000,
            step_ms: 10_000,
            recover_ms: 30_000,
            backlog_secs: 300.0,
        }
    }

    fn errors(rate: f64) -> Signals {
        Signals {
            error_rate: Some(rate),
            ..Signals::default()
        }
    }

    #[test]
    fn pressure_steps_down_one_level_per_step() {
        let mut h = Hysteresis::default();
        let spike = errors(0.6);
        assert_eq!(spike.target(&th()).0, Level::Medium);
        let first = next_level(Level::Full, &spike, &th(), &mut h, 100_000).unwrap();
        assert_eq!(first.0, Level::High);
        assert!(first.1.contains("error rate 60 %"), "{}", first.1);
        assert_eq!(
            next_level(Level::High, &spike, &th(), &mut h, 105_000),
            None
        );
        assert_eq!(
            next_level(Level::High, &spike, &th(), &mut h, 110_000)
                .unwrap()
                .0,
            Level::Medium
        );
        assert_eq!(
            next_level(Level::Medium, &spike, &th(), &mut h, 200_000),
            None,
            "at the target"
        );
    }

    #[test]
    fn recovery_takes_calm_for_the_whole_period_and_the_band_changes_nothing() {
        let mut h = Hysteresis {
            last_change_ms: 0,
            calm_since_ms: None,
        };
        let calm = errors(0.01);
        let band = errors(0.07);
        assert_eq!(next_level(Level::High, &calm, &th(), &mut h, 40_000), None);
        assert_eq!(
            next_level(Level::High, &band, &th(), &mut h, 50_000),
            None,
            "the band interrupts calm"
        );
        assert_eq!(next_level(Level::High, &calm, &th(), &mut h, 60_000), None);
        assert_eq!(next_level(Level::High, &calm, &th(), &mut h, 89_999), None);
        let up = next_level(Level::High, &calm, &th(), &mut h, 90_000).unwrap();
        assert_eq!(up.0, Level::Full);
        assert!(up.1.contains("calm for 30 s"));
        assert_eq!(next_level(Level::Full, &calm, &th(), &mut h, 200_000), None);
    }

    #[test]
    fn signals_add_up_and_too_few_outcomes_say_nothing() {
        let s = Signals {
            error_rate: None,
            backlogged: vec![("ns.work.default".into(), f64::INFINITY)],
            open_breakers: vec!["nvd".into()],
            memory: vec!["w1".into()],
        };
        let (level, reasons) = s.target(&th());
        assert_eq!(level, Level::Low);
        assert_eq!(reasons.len(), 3);
        assert!(reasons[0].contains("nothing is draining it"), "{reasons:?}");
        assert!(!s.calm(&th()));
        assert!(Signals::default().calm(&th()));
    }

    #[test]
    fn history_keeps_a_window_and_measures_the_rate() {
        let mut h = History::default();
        for i in 0..=10u64 {
            h.push(
                Tick {
                    at_ms: i * 1_000,
                    done: 9,
                    failed: 1,
                },
                5_000,
            );
        }
        assert_eq!(h.span_ms(), 5_000);
        assert_eq!(h.totals(), (54, 6));
        assert_eq!(h.rate_per_sec(), Some(12.0));
        assert_eq!(drain_secs(120, h.rate_per_sec()), 10.0);
        assert_eq!(drain_secs(0, None), 0.0);
        assert!(drain_secs(5, Some(0.0)).is_infinite());
    }
}
