//! Fault injection, switched on per worker by `--chaos` (off by default): failures per class,
//! added latency, crashes (the process aborts mid-task) and hangs (the handler never returns, so
//! the task's timeout fires). It exercises the recovery paths of a real fleet.

use rand::RngExt;
use secflow_common::{ErrorClass, TaskError};
use serde::Deserialize;
use std::{collections::BTreeMap, time::Duration};

/// What to inject, as JSON: `{"fail": {"transient": 0.05}, "latency_ms": [0, 200],
/// "crash": 0.001, "hang": 0.001, "types": ["builtin.echo"]}`. Probabilities are per task.
#[derive(Clone, Debug, Default, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct ChaosConfig {
    /// Probability of an injected failure, by error class.
    #[serde(default)]
    pub fail: BTreeMap<ErrorClass, f64>,
    /// Added latency before the handler, uniform in [min, max] ms.
    #[serde(default)]
    pub latency_ms: Option<(u64, u64)>,
    /// Probability that the worker process aborts while running the task.
    #[serde(default)]
    pub crash: f64,
    /// Probability that the handler hangs until the task's timeout.
    #[serde(default)]
    pub hang: f64,
    /// Node types affected (all when empty).
    #[serde(default)]
    pub types: Vec<String>,
}

/// What happens to one task.
#[derive(Debug, PartialEq)]
pub enum Injection {
    /// Run normally (after the latency, if any).
    None,
    /// Fail with this error instead of running.
    Fail(TaskError),
    /// Abort the process.
    Crash,
    /// Never finish.
    Hang,
}

impl ChaosConfig {
    /// Parses and checks a `--chaos` value.
    pub fn parse(s: &str) -> Result<Self, String> {
        let cfg: Self = serde_json::from_str(s).map_err(|e| format!("--chaos: {e}"))?;
        let probabilities = cfg.fail.values().chain([&cfg.crash, &cfg.hang]).copied();
        for p in probabilities {
            if !(0.0..=1.0).contains(&p) {
                return Err(format!("--chaos: probability {p} is not within 0..1"));
            }
        }
        if cfg.fail.values().sum::<f64>() > 1.0 {
            return Err("--chaos: failure probabilities add up to more than 1".into());
        }
        if let Some((lo, hi)) = cfg.latency_ms
            && lo > hi
        {
            return Err(format!("--chaos: latency_ms [{lo}, {hi}] is not a range"));
        }
        Ok(cfg)
    }

    /// Whether anything is injected at all.
    pub fn enabled(&self) -> bool {
        *self != Self::default()
    }

    /// Draws the fate of a task of `node_type`: latency to add, then what to do.
    pub fn draw(&self, node_type: &str) -> (Duration, Injection) {
        if !self.types.is_empty() && !self.types.iter().any(|t| t == node_type) {
            return (Duration::ZERO, Injection::None);
        }
        let mut rng = rand::rng();
        let latency = self.latency_ms.map_or(Duration::ZERO, |(lo, hi)| {
            Duration::from_millis(rng.random_range(lo..=hi))
        });
        if rng.random::<f64>() < self.crash {
            return (latency, Injection::Crash);
        }
        if rng.random::<f64>() < self.hang {
            return (latency, Injection::Hang);
        }
        let mut roll = rng.random::<f64>();
        for (class, p) in &self.fail {
            if roll < *p {
                let error = TaskError::new(
                    *class,
                    "chaos_injected",
                    format!("chaos: injected {class} failure"),
                );
                return (latency, Injection::Fail(error));
            }
            roll -= p;
        }
        (latency, Injection::None)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_and_rejects_nonsense() {
        let c =
            ChaosConfig::parse(r#"{"fail": {"transient": 0.5}, "latency_ms": [1, 2]}"#).unwrap();
        assert!(c.enabled());
        assert!(!ChaosConfig::default().enabled());
        for bad in [
            r#"{"crash": 2}"#,
            r#"{"fail": {"transient": 0.7, "permanent": 0.7}}"#,
            r#"{"latency_ms": [5, 1]}"#,
            r#"{"fail": {"weird": 0.1}}"#,
            r#"{"crsh": 0.1}"#,
        ] {
            assert!(ChaosConfig::parse(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn draws_follow_the_configured_rates() {
        let c = ChaosConfig::parse(r#"{"fail": {"transient": 0.3, "permanent": 0.2}}"#).unwrap();
        let (mut transient, mut permanent, mut none) = (0, 0, 0);
        for _ in 0..10_000 {
            match c.draw("x").1 {
                Injection::Fail(e) if e.class == ErrorClass::Transient => transient += 1,
                Injection::Fail(e) if e.class == ErrorClass::Permanent => permanent += 1,
                Injection::None => none += 1,
                other => panic!("{other:?}"),
            }
        }
        assert!((2_700..3_300).contains(&transient), "{transient}");
        assert!((1_700..2_300).contains(&permanent), "{permanent}");
        assert!((4_600..5_400).contains(&none), "{none}");
        let only = ChaosConfig::parse(r#"{"crash": 1, "types": ["a"]}"#).unwrap();
        assert_eq!(only.draw("b").1, Injection::None);
        assert_eq!(only.draw("a").1, Injection::Crash);
    }
}
