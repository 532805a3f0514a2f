//! A breaker's settings: thresholds (a count of failures, a failure rate, or both), window and
//! open times, under this crate's names or the published ones.

use serde::{Deserialize, Serialize};

/// Breaker settings for one service. Besides these names, the published ones are accepted:
/// `timeout` (seconds the breaker stays open, = `open_ms`) and `half_open_max_calls`
/// (= `half_open_probes`); giving both names of one setting is an error.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(try_from = "Written")]
pub struct BreakerConfig {
    /// Failures within `window_ms` that open the breaker; 0 (only with a
    /// `failure_rate_threshold`) for no count threshold.
    pub failure_threshold: u32,
    /// Percentage of failed calls within `window_ms` (1–100) that opens the breaker once
    /// `minimum_calls` calls are counted; `None` for no rate threshold. With it, successes in
    /// the closed breaker are counted too.
    pub failure_rate_threshold: Option<u32>,
    /// Calls within `window_ms` below which the failure rate never opens the breaker.
    pub minimum_calls: u32,
    /// Sliding window for counting failures (and calls, with a rate threshold), ms.
    pub window_ms: u64,
    /// How long the breaker stays open before it lets probes through, ms.
    pub open_ms: u64,
    /// Cap on the open time, which doubles each time a probe fails, ms.
    pub max_open_ms: u64,
    /// Probes allowed at once while half-open.
    pub half_open_probes: u32,
    /// Successful probes that close the breaker.
    pub success_threshold: u32,
}

impl Default for BreakerConfig {
    fn default() -> Self {
        Self {
            failure_threshold: 5,
            failure_rate_threshold: None,
            minimum_calls: DEFAULT_MINIMUM_CALLS,
            window_ms: 30_000,
            open_ms: 10_000,
            max_open_ms: 5 * 60_000,
            half_open_probes: 1,
            success_threshold: 2,
        }
    }
}

/// Calls a failure rate needs by default before it can open the breaker.
pub const DEFAULT_MINIMUM_CALLS: u32 = 20;

/// Largest accepted `minimum_calls`.
pub const MAX_MINIMUM_CALLS: u32 = 1_000_000;

/// Breaker settings as written, under either name of each setting.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Written {
    failure_threshold: Option<u32>,
    failure_rate_threshold: Option<u32>,
    minimum_calls: Option<u32>,
    window_ms: Option<u64>,
    open_ms: Option<u64>,
    timeout: Option<f64>,
    max_open_ms: Option<u64>,
    half_open_probes: Option<u32>,
    half_open_max_calls: Option<u32>,
    success_threshold: Option<u32>,
}

impl TryFrom<Written> for BreakerConfig {
    type Error = String;

    fn try_from(w: Written) -> Result<Self, String> {
        let d = Self::default();
        let both = |a: &str, b: &str| {
            format!("breaker: give `{a}` or `{b}`, not both (they are the same setting)")
        };
        let timeout_ms = w
            .timeout
            .map(|s| {
                if s.is_finite() && s > 0.0 && s <= 86_400.0 {
                    Ok((s * 1000.0).round() as u64)
                } else {
                    Err(format!(
                        "breaker timeout {s} must be between 0 and 86400 seconds"
                    ))
                }
            })
            .transpose()?;
        let open_ms = match (w.open_ms, timeout_ms) {
            (Some(_), Some(_)) => return Err(both("open_ms", "timeout")),
            (a, b) => a.or(b).unwrap_or(d.open_ms),
        };
        let half_open_probes = match (w.half_open_probes, w.half_open_max_calls) {
            (Some(_), Some(_)) => return Err(both("half_open_probes", "half_open_max_calls")),
            (a, b) => a.or(b).unwrap_or(d.half_open_probes),
        };
        if w.minimum_calls.is_some() && w.failure_rate_threshold.is_none() {
            return Err("breaker minimum_calls only applies to a failure rate: set failure_rate_threshold (percent of failed calls, 1-100) too, or remove minimum_calls".into());
        }
        // A rate threshold given alone is the only one; a count threshold given with it stays.
        let failure_threshold = match (w.failure_threshold, w.failure_rate_threshold) {
            (Some(n), _) => n,
            (None, Some(_)) => 0,
            (None, None) => d.failure_threshold,
        };
        Ok(Self {
            failure_threshold,
            failure_rate_threshold: w.failure_rate_threshold,
            minimum_calls: w.minimum_calls.unwrap_or(d.minimum_calls),
            window_ms: w.window_ms.unwrap_or(d.window_ms),
            open_ms,
            // A long published timeout raises the cap with it rather than failing validation.
            max_open_ms: w.max_open_ms.unwrap_or(d.max_open_ms.max(open_ms)),
            half_open_probes,
            success_threshold: w.success_threshold.unwrap_or(d.success_threshold),
        })
    }
}

impl BreakerConfig {
    /// Whether the breaker counts every call (successes too) while closed: only with a failure
    /// rate threshold. Without one, a success in a closed breaker changes nothing.
    pub fn counts_calls(&self) -> bool {
        self.failure_rate_threshold.is_some()
    }

    /// Checks the settings, naming the field that is wrong.
    pub fn validate(&self) -> Result<(), String> {
        if self.half_open_probes == 0 || self.success_threshold == 0 {
            return Err("breaker half_open_probes and success_threshold must be at least 1".into());
        }
        if self.failure_threshold == 0 && self.failure_rate_threshold.is_none() {
            return Err("breaker failure_threshold must be at least 1 (0, no count threshold, only with a failure_rate_threshold)".into());
        }
        if let Some(pct) = self.failure_rate_threshold {
            if !(1..=100).contains(&pct) {
                return Err(format!(
                    "breaker failure_rate_threshold {pct} must be a percentage between 1 and 100"
                ));
            }
            if !(1..=MAX_MINIMUM_CALLS).contains(&self.minimum_calls) {
                return Err(format!(
                    "breaker minimum_calls {} must be between 1 and {MAX_MINIMUM_CALLS}",
                    self.minimum_calls
                ));
            }
        }
        if self.open_ms == 0 || self.open_ms > self.max_open_ms {
            return Err(format!(
                "breaker open_ms {} must be between 1 and max_open_ms {}",
                self.open_ms, self.max_open_ms
            ));
        }
        if self.window_ms == 0 || self.failure_threshold > 1_000 {
            return Err(
                "breaker window_ms must be at least 1 and failure_threshold at most 1000".into(),
            );
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(json: &str) -> Result<BreakerConfig, String> {
        let cfg: BreakerConfig = serde_json::from_str(json).map_err(|e| e.to_string())?;
        cfg.validate()?;
        Ok(cfg)
    }

    #[test]
    fn a_rate_threshold_alone_is_the_only_threshold() {
        let cfg = parse(r#"{"failure_rate_threshold":40,"minimum_calls":10}"#).unwrap();
        assert_eq!(
            (
                cfg.failure_threshold,
                cfg.failure_rate_threshold,
                cfg.minimum_calls
            ),
            (0, Some(40), 10)
        );
        assert!(cfg.counts_calls());
        let cfg = parse(r#"{"failure_rate_threshold":40}"#).unwrap();
        assert_eq!(cfg.minimum_calls, DEFAULT_MINIMUM_CALLS);
    }

    #[test]
    fn both_thresholds_may_be_set() {
        let cfg =
            parse(r#"{"failure_threshold":7,"failure_rate_threshold":50,"timeout":2}"#).unwrap();
        assert_eq!(
            (
                cfg.failure_threshold,
                cfg.failure_rate_threshold,
                cfg.open_ms
            ),
            (7, Some(50), 2_000)
        );
    }

    #[test]
    fn the_count_threshold_alone_counts_no_calls() {
        let cfg = parse(r#"{"failure_threshold":3}"#).unwrap();
        assert_eq!(
            (cfg.failure_threshold, cfg.failure_rate_threshold),
            (3, None)
        );
        assert!(!cfg.counts_calls());
        assert!(!BreakerConfig::default().counts_calls());
    }

    #[test]
    fn wrong_rate_settings_are_refused_with_what_to_do() {
        for (json, expected) in [
            (r#"{"failure_rate_threshold":0}"#, "between 1 and 100"),
            (r#"{"failure_rate_threshold":101}"#, "between 1 and 100"),
            (r#"{"failure_rate_threshold":-5}"#, "invalid value"),
            (r#"{"failure_rate_threshold":40.5}"#, "invalid type"),
            (
                r#"{"failure_rate_threshold":40,"minimum_calls":0}"#,
                "minimum_calls 0 must be between 1",
            ),
            (
                r#"{"failure_rate_threshold":40,"minimum_calls":2000000}"#,
                "must be between 1 and 1000000",
            ),
            (r#"{"minimum_calls":10}"#, "set failure_rate_threshold"),
            (
                r#"{"failure_threshold":0}"#,
                "only with a failure_rate_threshold",
            ),
            (r#"{"failure_rate":40}"#, "unknown field"),
        ] {
            let err = parse(json).unwrap_err();
            assert!(err.contains(expected), "{json}: {err}");
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

    #[test]
    fn config_is_validated() {
        assert!(BreakerConfig::default().validate().is_ok());
        assert!(
            BreakerConfig {
                open_ms: 0,
                ..BreakerConfig::default()
            }
            .validate()
            .is_err()
        );
        assert!(
            BreakerConfig {
                failure_threshold: 0,
                ..BreakerConfig::default()
            }
            .validate()
            .unwrap_err()
            .contains("failure_threshold")
        );
    }
}
