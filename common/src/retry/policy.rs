//! A retry policy: strategy, attempt budget, delays and jitter, validated on construction.

use super::backoff::{Jitter, Strategy, base_delay, jittered};
use serde::{Deserialize, Serialize};
use std::time::Duration;

/// Longest delay any policy may ask for; longer waits belong to a scheduler, not a queue.
pub const MAX_DELAY_MS: u64 = 6 * 60 * 60 * 1000;

/// When and how often a failed task is retried.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RetryPolicy {
    /// Growth of the delay.
    pub strategy: Strategy,
    /// Total attempts including the first; 1 means never retry.
    pub max_attempts: u32,
    /// Delay before the first retry, in milliseconds.
    pub base_delay_ms: u64,
    /// Cap on any single delay, in milliseconds.
    pub max_delay_ms: u64,
    /// Growth factor of the exponential strategy.
    pub multiplier: f64,
    /// Randomisation of the delay.
    pub jitter: Jitter,
}

impl Default for RetryPolicy {
    fn default() -> Self {
        Self {
            strategy: Strategy::Exponential,
            max_attempts: 5,
            base_delay_ms: 1_000,
            max_delay_ms: 5 * 60 * 1000,
            multiplier: 2.0,
            jitter: Jitter::Full,
        }
    }
}

impl RetryPolicy {
    /// Checks the policy, naming the field that is wrong.
    pub fn validate(&self) -> Result<(), String> {
        if self.max_attempts == 0 {
            return Err("retry.max_attempts must be at least 1 (1 = no retries)".into());
        }
        if self.max_attempts > 100 {
            return Err(format!(
                "retry.max_attempts {} is above the limit of 100",
                self.max_attempts
            ));
        }
        if self.max_delay_ms > MAX_DELAY_MS {
            return Err(format!(
                "retry.max_delay_ms {} is above the limit of {MAX_DELAY_MS} (6 h)",
                self.max_delay_ms
            ));
        }
        if self.base_delay_ms > self.max_delay_ms {
            return Err(format!(
                "retry.base_delay_ms {} is greater than retry.max_delay_ms {}",
                self.base_delay_ms, self.max_delay_ms
            ));
        }
        if !(self.multiplier.is_finite() && (1.0..=10.0).contains(&self.multiplier)) {
            return Err(format!(
                "retry.multiplier {} must be between 1 and 10",
                self.multiplier
            ));
        }
        Ok(())
    }

    /// Whether a task that has been retried `retries` times may be retried again.
    pub fn allows_retry(&self, retries: u32) -> bool {
        self.strategy != Strategy::None && retries.saturating_add(1) < self.max_attempts
    }

    /// Delay before retry number `retry` (1-based), with `unit` a uniform draw in `[0, 1)`.
    pub fn delay(&self, retry: u32, unit: f64) -> Duration {
        let base = base_delay(
            self.strategy,
            Duration::from_millis(self.base_delay_ms),
            Duration::from_millis(self.max_delay_ms),
            self.multiplier,
            retry,
        );
        jittered(base, self.jitter, unit)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn default_policy_is_valid_and_retries_four_times() {
        let p = RetryPolicy::default();
        assert_eq!(p.validate(), Ok(()));
        assert!(p.allows_retry(3));
        assert!(!p.allows_retry(4));
    }

    #[test]
    fn validation_names_the_field() {
        let bad = RetryPolicy {
            base_delay_ms: 10,
            max_delay_ms: 5,
            ..RetryPolicy::default()
        };
        assert!(bad.validate().unwrap_err().contains("base_delay_ms"));
        let bad = RetryPolicy {
            max_attempts: 0,
            ..RetryPolicy::default()
        };
        assert!(bad.validate().unwrap_err().contains("max_attempts"));
        let bad = RetryPolicy {
            multiplier: f64::NAN,
            ..RetryPolicy::default()
        };
        assert!(bad.validate().unwrap_err().contains("multiplier"));
    }

    #[test]
    fn none_strategy_never_retries() {
        let p = RetryPolicy {
            strategy: Strategy::None,
            ..RetryPolicy::default()
        };
        assert!(!p.allows_retry(0));
    }

    #[test]
    fn policy_parses_from_partial_json() {
        let p: RetryPolicy =
            serde_json::from_str(r#"{"strategy":"fixed","base_delay_ms":200}"#).unwrap();
        assert_eq!(p.strategy, Strategy::Fixed);
        assert_eq!(p.max_attempts, 5);
        assert!(serde_json::from_str::<RetryPolicy>(r#"{"retries":3}"#).is_err());
    }
}
