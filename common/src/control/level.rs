//! Degradation levels: how much of its work the fleet does while parts of it are failing, and
//! how a level changes a task's parameters (pure functions, no I/O).

use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};
use std::{collections::BTreeMap, fmt, str::FromStr};

/// A fleet-wide degradation level, from everything (`full`) to essential work only (`minimal`).
#[derive(
    Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize,
)]
#[serde(rename_all = "lowercase")]
pub enum Level {
    /// Every node, every parameter as written.
    #[default]
    Full,
    /// Most features, lighter parameters.
    High,
    /// Core features.
    Medium,
    /// Basic features: optional nodes are skipped.
    Low,
    /// Only nodes marked `essential` run.
    Minimal,
}

impl Level {
    /// Every level, from `full` down.
    pub const ALL: [Level; 5] = [
        Level::Full,
        Level::High,
        Level::Medium,
        Level::Low,
        Level::Minimal,
    ];

    /// The level's name as recipes and commands write it.
    pub fn as_str(self) -> &'static str {
        match self {
            Level::Full => "full",
            Level::High => "high",
            Level::Medium => "medium",
            Level::Low => "low",
            Level::Minimal => "minimal",
        }
    }

    /// The next level down (`minimal` stays).
    pub fn lower(self) -> Level {
        let i = self as usize;
        Level::ALL[(i + 1).min(Level::ALL.len() - 1)]
    }

    /// The next level up (`full` stays).
    pub fn higher(self) -> Level {
        Level::ALL[(self as usize).saturating_sub(1)]
    }

    /// Whether a node runs at this level: optional nodes are skipped at `low` and below, every
    /// node not marked essential at `minimal`. `None` when it runs, else why it does not.
    pub fn skips(self, optional: bool, essential: bool) -> Option<String> {
        if essential {
            return None;
        }
        if self == Level::Minimal {
            return Some("only essential nodes run at degradation level minimal".into());
        }
        (optional && self >= Level::Low).then(|| {
            format!(
                "optional nodes are skipped at degradation level {}",
                self.as_str()
            )
        })
    }
}

impl fmt::Display for Level {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for Level {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        Level::ALL
            .into_iter()
            .find(|l| l.as_str() == s)
            .ok_or_else(|| {
                format!(
                    "unknown degradation level `{s}`: expected full, high, medium, low or minimal"
                )
            })
    }
}

/// Per-level parameter overrides, as recipes and tool definitions write them:
/// `{high: {rate_limit: 100}, medium: {rate_limit: 50, threads: "x0.5"}}`. A level without
/// its own entry uses the nearest level above it that has one (`low` falls back to `medium`).
pub type LevelOverrides = BTreeMap<Level, Map<String, Value>>;

/// Checks overrides: objects only, no entry for `full` (it is the config as written), and a
/// string starting with `x` must be a factor (`x0.5`). The first problem, for an error message.
pub fn check_overrides(overrides: &LevelOverrides) -> Result<(), String> {
    if overrides.contains_key(&Level::Full) {
        return Err("`full` takes no overrides: it runs the config as written".into());
    }
    for (level, patch) in overrides {
        for (key, value) in patch {
            if let Some(s) = value.as_str()
                && let Some(factor) = s.strip_prefix('x')
                && factor
                    .parse::<f64>()
                    .map_or(true, |f| !(f > 0.0 && f.is_finite()))
            {
                return Err(format!(
                    "level {level}, `{key}`: `{s}` is not a factor (write x0.5 to halve)"
                ));
            }
        }
    }
    Ok(())
}

/// The override that applies at `level`: its own, else the nearest above it; none at `full`.
pub fn overrides_at(overrides: &LevelOverrides, level: Level) -> Option<&Map<String, Value>> {
    if level == Level::Full {
        return None;
    }
    overrides
        .range(Level::High..=level)
        .next_back()
        .map(|(_, patch)| patch)
}

/// Applies `patch` to `config`: a value replaces the key's value; a factor (`"x0.5"`) scales
/// the key's current number (rounded, at least 1 for integers). Returns the keys it changed.
pub fn apply(config: &mut Map<String, Value>, patch: &Map<String, Value>) -> Vec<String> {
    let mut changed = Vec::new();
    for (key, value) in patch {
        let factor = value
            .as_str()
            .and_then(|s| s.strip_prefix('x'))
            .and_then(|f| f.parse::<f64>().ok());
        let next = match (factor, config.get(key)) {
            (Some(f), Some(Value::Number(n))) if n.is_i64() || n.is_u64() => {
                let scaled = (n.as_f64().unwrap_or(0.0) * f).round().max(1.0);
                Value::from(scaled as i64)
            }
            (Some(f), Some(Value::Number(n))) => {
                serde_json::Number::from_f64(n.as_f64().unwrap_or(0.0) * f)
                    .map_or(Value::Null, Value::Number)
            }
            // A factor for a key the config does not set changes nothing.
            (Some(_), _) => continue,
            (None, _) => value.clone(),
        };
        if config.get(key) != Some(&next) {
            config.insert(key.clone(), next);
            changed.push(key.clone());
        }
    }
    changed
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn overrides(v: Value) -> LevelOverrides {
        serde_json::from_value(v).unwrap()
    }

    #[test]
    fn a_level_without_an_entry_uses_the_nearest_above() {
        let o = overrides(json!({"high": {"rate_limit": 100}, "medium": {"rate_limit": 50}}));
        assert_eq!(overrides_at(&o, Level::Full), None);
        assert_eq!(overrides_at(&o, Level::High).unwrap()["rate_limit"], 100);
        assert_eq!(overrides_at(&o, Level::Low).unwrap()["rate_limit"], 50);
        assert_eq!(overrides_at(&o, Level::Minimal).unwrap()["rate_limit"], 50);
        let only_low = overrides(json!({"low": {"x": 1}}));
        assert_eq!(overrides_at(&only_low, Level::Medium), None);
    }

    #[test]
    fn values_replace_and_factors_scale() {
        let mut config = json!({"rate_limit": 150, "threads": 25, "ratio": 1.0})
            .as_object()
            .unwrap()
            .clone();
        let patch = json!({"rate_limit": 50, "threads": "x0.5", "ratio": "x0.5", "absent": "x2"});
        let changed = apply(&mut config, patch.as_object().unwrap());
        assert_eq!(changed, ["rate_limit", "ratio", "threads"]);
        assert_eq!(config["rate_limit"], 50);
        assert_eq!(config["threads"], 13);
        assert_eq!(config["ratio"], 0.5);
        assert!(!config.contains_key("absent"));
        let mut one = json!({"threads": 1}).as_object().unwrap().clone();
        apply(&mut one, json!({"threads": "x0.1"}).as_object().unwrap());
        assert_eq!(one["threads"], 1, "an integer never scales below 1");
    }

    #[test]
    fn bad_overrides_are_named() {
        let full = overrides(json!({"full": {"a": 1}}));
        assert!(check_overrides(&full).unwrap_err().contains("full"));
        let bad = overrides(json!({"low": {"threads": "xhalf"}}));
        assert!(check_overrides(&bad).unwrap_err().contains("threads"));
        assert!(check_overrides(&overrides(json!({"low": {"t": "x0.5", "s": "text"}}))).is_ok());
    }

    #[test]
    fn skipping_follows_the_level() {
        assert_eq!(Level::Medium.skips(true, false), None);
        assert!(Level::Low.skips(true, false).is_some());
        assert_eq!(Level::Low.skips(false, false), None);
        assert!(Level::Minimal.skips(false, false).is_some());
        assert_eq!(Level::Minimal.skips(true, true), None);
        assert_eq!(Level::Full.lower(), Level::High);
        assert_eq!(Level::Minimal.lower(), Level::Minimal);
        assert_eq!(Level::Full.higher(), Level::Full);
        assert_eq!("low".parse::<Level>(), Ok(Level::Low));
        assert!("lo".parse::<Level>().unwrap_err().contains("full, high"));
    }
}
