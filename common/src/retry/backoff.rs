//! Backoff schedules: pure functions of the retry number and a random draw, no clock, no I/O.

use serde::{Deserialize, Serialize};
use std::time::Duration;

/// How the base delay grows with each retry.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Strategy {
    /// `base * multiplier^(n-1)`, capped.
    Exponential,
    /// `base * n`, capped.
    Linear,
    /// Always `base`.
    Fixed,
    /// Retry at once (still through the broker, never in-process).
    Immediate,
    /// Never retry.
    None,
}

/// How randomness spreads retries so a fleet does not retry in lockstep.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Jitter {
    /// The computed delay exactly.
    None,
    /// Uniform in `[0, delay]` (AWS "full jitter").
    Full,
    /// Uniform in `[delay/2, delay]` (AWS "equal jitter").
    Equal,
}

/// The un-jittered delay before retry number `retry` (1-based), capped at `max`.
pub fn base_delay(
    strategy: Strategy,
    base: Duration,
    max: Duration,
    multiplier: f64,
    retry: u32,
) -> Duration {
    let n = retry.max(1);
    let raw = match strategy {
        Strategy::Exponential => {
            let exp = i32::try_from(n - 1).unwrap_or(i32::MAX);
            base.as_secs_f64() * multiplier.powi(exp)
        }
        Strategy::Linear => base.as_secs_f64() * f64::from(n),
        Strategy::Fixed => base.as_secs_f64(),
        Strategy::Immediate | Strategy::None => 0.0,
    };
    // `raw` may be inf or huge after many doublings: compare before converting.
    if !raw.is_finite() || raw >= max.as_secs_f64() {
        max
    } else {
        Duration::from_secs_f64(raw.max(0.0))
    }
}

/// Applies `jitter` to `delay` with `unit` drawn uniformly from `[0, 1)` (clamped; NaN is 0).
pub fn jittered(delay: Duration, jitter: Jitter, unit: f64) -> Duration {
    // `Duration::mul_f64` panics on NaN: a draw is never trusted blindly.
    let unit = if unit.is_nan() {
        0.0
    } else {
        unit.clamp(0.0, 1.0)
    };
    match jitter {
        Jitter::None => delay,
        Jitter::Full => delay.mul_f64(unit),
        Jitter::Equal => delay / 2 + (delay / 2).mul_f64(unit),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const S: fn(u64) -> Duration = Duration::from_millis;

    #[test]
    fn exponential_doubles_then_caps() {
        let d = |n| base_delay(Strategy::Exponential, S(100), S(1000), 2.0, n);
        assert_eq!(
            [d(1), d(2), d(3), d(4), d(5)],
            [S(100), S(200), S(400), S(800), S(1000)]
        );
        assert_eq!(
            d(10_000),
            S(1000),
            "huge exponents cap instead of overflowing"
        );
    }

    #[test]
    fn linear_fixed_immediate() {
        assert_eq!(base_delay(Strategy::Linear, S(100), S(250), 2.0, 2), S(200));
        assert_eq!(base_delay(Strategy::Linear, S(100), S(250), 2.0, 3), S(250));
        assert_eq!(base_delay(Strategy::Fixed, S(70), S(250), 2.0, 9), S(70));
        assert_eq!(base_delay(Strategy::Immediate, S(70), S(250), 2.0, 9), S(0));
    }

    #[test]
    fn jitter_stays_within_its_bounds() {
        let d = S(1000);
        for i in 0..=100 {
            let u = f64::from(i) / 100.0;
            let full = jittered(d, Jitter::Full, u);
            let equal = jittered(d, Jitter::Equal, u);
            assert!(full <= d);
            assert!(equal >= d / 2 && equal <= d, "{equal:?}");
        }
        assert_eq!(jittered(d, Jitter::None, 0.3), d);
        assert_eq!(
            jittered(d, Jitter::Full, 7.0),
            d,
            "out-of-range draws are clamped"
        );
    }
}
