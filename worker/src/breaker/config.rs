//! A breaker's settings: thresholds, window and open times, under this crate's names or the
//! published ones.

use serde::{Deserialize, Serialize};

/// Breaker settings for one service. Besides these names, the published ones are accepted:
/// `timeout` (seconds the breaker stays open, = `open_ms`) and `half_open_max_calls`
/// (= `half_open_probes`); giving both names of one setting is an error.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(try_from = "Written")]
pub struct BreakerConfig {
    /// Failures within `window_ms` that open the breaker.
    pub failure_threshold: u32,
    /// Sliding window for counting failures, ms.
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
            window_ms: 30_000,
            open_ms: 10_000,
            max_open_ms: 5 * 60_000,
            half_open_probes: 1,
            success_threshold: 2,
        }
    }
}

/// Breaker settings as written, under either name of each setting.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Written {
    failure_threshold: Option<u32>,
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
        Ok(Self {
            failure_threshold: w.failure_threshold.unwrap_or(d.failure_threshold),
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
    /// Checks the settings, naming the field that is wrong.
    pub fn validate(&self) -> Result<(), String> {
        if self.failure_threshold == 0 || self.half_open_probes == 0 || self.success_threshold == 0
        {
            return Err("breaker failure_threshold, half_open_probes and success_threshold must be at least 1".into());
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
