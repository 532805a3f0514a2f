//! How urgent a failure is, from its class and what became of it: what alerts and notifications
//! are sorted by.
//!
//! | what happened                                   | severity  |
//! |-------------------------------------------------|-----------|
//! | a security rejection (any stage)                | critical  |
//! | dead-lettered: permanent, retries used up, crash loop, escalated, corrupted state | high |
//! | dead-lettered: validation, malformed, deferred too long | medium |
//! | a retry of an `unknown` failure                 | medium    |
//! | a retry of a transient or resource failure, a cancellation | low |

use serde::{Deserialize, Serialize};

/// Severity of a failure, most urgent first.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Severity {
    Critical,
    High,
    Medium,
    Low,
}

impl Severity {
    /// Its name in events, metrics and filters.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Critical => "critical",
            Self::High => "high",
            Self::Medium => "medium",
            Self::Low => "low",
        }
    }

    /// Every severity, most urgent first.
    pub const ALL: [Self; 4] = [Self::Critical, Self::High, Self::Medium, Self::Low];

    /// The severity of a failure of `class` (as events write it) that ended as `outcome`:
    /// `dead_lettered` (with `reason`), `retried`, `cancelled`, `failed` (a node that failed
    /// its run without a dead letter).
    pub fn of_failure(class: &str, outcome: &str, reason: Option<&str>) -> Self {
        if class == "security" || reason == Some("security") {
            return Self::Critical;
        }
        match outcome {
            "dead_lettered" | "failed" => match reason.unwrap_or(class) {
                "validation" | "malformed" | "deferred_too_long" => Self::Medium,
                _ => Self::High,
            },
            "retried" if class == "unknown" => Self::Medium,
            _ => Self::Low,
        }
    }
}

impl std::fmt::Display for Severity {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

impl std::str::FromStr for Severity {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Self::ALL
            .into_iter()
            .find(|v| v.as_str() == s)
            .ok_or_else(|| format!("unknown severity `{s}`: critical, high, medium or low"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn security_is_critical_wherever_it_shows() {
        assert_eq!(
            Severity::of_failure("security", "retried", None),
            Severity::Critical
        );
        assert_eq!(
            Severity::of_failure("permanent", "dead_lettered", Some("security")),
            Severity::Critical
        );
    }

    #[test]
    fn dead_letters_outrank_retries() {
        let dead = Severity::of_failure("transient", "dead_lettered", Some("exhausted"));
        let retry = Severity::of_failure("transient", "retried", None);
        assert_eq!(dead, Severity::High);
        assert_eq!(retry, Severity::Low);
        assert!(dead < retry);
        assert_eq!(
            Severity::of_failure("validation", "dead_lettered", Some("validation")),
            Severity::Medium
        );
        assert_eq!(
            Severity::of_failure("unknown", "retried", None),
            Severity::Medium
        );
    }

    #[test]
    fn names_round_trip() {
        for s in Severity::ALL {
            assert_eq!(s.as_str().parse::<Severity>(), Ok(s));
        }
        assert!("urgent".parse::<Severity>().is_err());
    }
}
