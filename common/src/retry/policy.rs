//! A retry policy: strategy, attempt budget, delays and jitter, validated on construction.

use super::backoff::{Jitter, Strategy, base_delay, jittered};
use serde::{Deserialize, Serialize};
use std::time::Duration;

/// Longest delay any policy may ask for; longer waits belong to a scheduler, not a queue.
pub const MAX_DELAY_MS: u64 = 6 * 60 * 60 * 1000;

/// When and how often a failed task is retried.
///
/// Written with this crate's names (`base_delay_ms`, `max_delay_ms`, `multiplier`, `jitter:
/// full|equal|none`) or the published ones (`initial_delay` and `max_delay` in seconds,
/// `exponential_base`, `jitter: true|false`); giving both names of one setting is an error.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(try_from = "Written")]
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

/// A retry policy as written, under either name of each setting.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Written {
    strategy: Option<Strategy>,
    max_attempts: Option<u32>,
    base_delay_ms: Option<u64>,
    initial_delay: Option<f64>,
    max_delay_ms: Option<u64>,
    max_delay: Option<f64>,
    multiplier: Option<f64>,
    exponential_base: Option<f64>,
    jitter: Option<WrittenJitter>,
}

/// `jitter: true|false` (published) or `full|equal|none`.
#[derive(Deserialize)]
#[serde(untagged)]
enum WrittenJitter {
    On(bool),
    Kind(Jitter),
}

/// One setting under either of its names: an error when both are given.
fn either<T>(
    ours: Option<T>,
    published: Option<T>,
    names: (&str, &str),
) -> Result<Option<T>, String> {
    match (ours, published) {
        (Some(_), Some(_)) => Err(format!(
            "retry: give `{}` or `{}`, not both (they are the same setting)",
            names.0, names.1
        )),
        (a, b) => Ok(a.or(b)),
    }
}

/// Seconds as written → milliseconds.
fn seconds_to_ms(seconds: Option<f64>, name: &str) -> Result<Option<u64>, String> {
    seconds
        .map(|s| {
            if s.is_finite() && s >= 0.0 && s <= MAX_DELAY_MS as f64 / 1000.0 {
                Ok((s * 1000.0).round() as u64)
            } else {
                Err(format!(
                    "retry.{name} {s} must be between 0 and {} seconds",
                    MAX_DELAY_MS / 1000
                ))
            }
        })
        .transpose()
}

impl TryFrom<Written> for RetryPolicy {
    type Error = String;

    fn try_from(w: Written) -> Result<Self, String> {
        let d = Self::default();
        let base = either(
            w.base_delay_ms,
            seconds_to_ms(w.initial_delay, "initial_delay")?,
            ("base_delay_ms", "initial_delay"),
        )?;
        let max = either(
            w.max_delay_ms,
            seconds_to_ms(w.max_delay, "max_delay")?,
            ("max_delay_ms", "max_delay"),
        )?;
        let multiplier = either(
            w.multiplier,
            w.exponential_base,
            ("multiplier", "exponential_base"),
        )?;
        let jitter = match w.jitter {
            None => d.jitter,
            Some(WrittenJitter::On(true)) => Jitter::Full,
            Some(WrittenJitter::On(false)) => Jitter::None,
            Some(WrittenJitter::Kind(kind)) => kind,
        };
        Ok(Self {
            strategy: w.strategy.unwrap_or(d.strategy),
            max_attempts: w.max_attempts.unwrap_or(d.max_attempts),
            base_delay_ms: base.unwrap_or(d.base_delay_ms),
            max_delay_ms: max.unwrap_or(d.max_delay_ms),
            multiplier: multiplier.unwrap_or(d.multiplier),
            jitter,
        })
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

    #[test]
    fn published_setting_names_mean_the_same_settings() {
        let published: RetryPolicy = yaml_serde::from_str(
            "{max_attempts: 3, initial_delay: 1.5, max_delay: 60, exponential_base: 3, jitter: false}",
        )
        .unwrap();
        let ours: RetryPolicy = yaml_serde::from_str(
            "{max_attempts: 3, base_delay_ms: 1500, max_delay_ms: 60000, multiplier: 3, jitter: none}",
        )
        .unwrap();
        assert_eq!(published, ours);
        let on: RetryPolicy = yaml_serde::from_str("{jitter: true}").unwrap();
        assert_eq!(on.jitter, Jitter::Full);
        let both = yaml_serde::from_str::<RetryPolicy>("{initial_delay: 1, base_delay_ms: 5}")
            .unwrap_err()
            .to_string();
        assert!(both.contains("not both"), "{both}");
        let negative = yaml_serde::from_str::<RetryPolicy>("{max_delay: -1}")
            .unwrap_err()
            .to_string();
        assert!(negative.contains("retry.max_delay"), "{negative}");
        // Stored and published with this crate's names, read back the same.
        let json = serde_json::to_string(&published).unwrap();
        assert_eq!(
            serde_json::from_str::<RetryPolicy>(&json).unwrap(),
            published
        );
    }
}
