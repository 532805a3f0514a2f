//! Error classes and the typed error every handler returns.
//!
//! The class decides recovery (see `docs/ARCHITECTURE.md`, "Error classes"); the code is a
//! short stable identifier for dashboards and the DLQ; the message is for the human reading it.

use serde::{Deserialize, Serialize};
use std::{fmt, str::FromStr, time::Duration};

/// Recovery class of a failure.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ErrorClass {
    /// Retry with backoff (network blips, timeouts, rate limits).
    Transient,
    /// Wait longer, then retry (disk full, out of memory, quota).
    Resource,
    /// Fail fast, never retry: the input or config is wrong.
    Validation,
    /// Dead-letter and alert: retrying cannot help.
    Permanent,
    /// Dead-letter with a critical alert, never retried (forged task, auth abuse).
    Security,
    /// The user aborted the task: clean up, no retry.
    Cancelled,
    /// Not recognised: retry once, then dead-letter.
    Unknown,
}

impl ErrorClass {
    /// Every class, in the order `docs/ARCHITECTURE.md` lists them.
    pub const ALL: [ErrorClass; 7] = [
        Self::Transient,
        Self::Resource,
        Self::Validation,
        Self::Permanent,
        Self::Security,
        Self::Cancelled,
        Self::Unknown,
    ];

    /// Lowercase name used in headers, events and logs.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Transient => "transient",
            Self::Resource => "resource",
            Self::Validation => "validation",
            Self::Permanent => "permanent",
            Self::Security => "security",
            Self::Cancelled => "cancelled",
            Self::Unknown => "unknown",
        }
    }
}

impl fmt::Display for ErrorClass {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for ErrorClass {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Self::ALL
            .into_iter()
            .find(|c| c.as_str() == s)
            .ok_or_else(|| {
                format!(
                    "unknown error class `{s}` (expected one of: transient, resource, validation, \
                     permanent, security, cancelled, unknown)"
                )
            })
    }
}

/// A classified task failure.
#[derive(Clone, Debug, PartialEq, thiserror::Error)]
#[error("{class}/{code}: {message}")]
pub struct TaskError {
    /// Recovery class.
    pub class: ErrorClass,
    /// Short stable code, such as `timeout` or `http_503`.
    pub code: String,
    /// Human-readable detail.
    pub message: String,
    /// A delay the failing service asked for (HTTP Retry-After), honoured over the backoff.
    pub retry_after: Option<Duration>,
}

impl TaskError {
    /// A failure of `class` with a code and message.
    pub fn new(class: ErrorClass, code: impl Into<String>, message: impl Into<String>) -> Self {
        Self {
            class,
            code: code.into(),
            message: message.into(),
            retry_after: None,
        }
    }

    /// Same error, asking to wait at least `delay` before the retry.
    pub fn with_retry_after(mut self, delay: Duration) -> Self {
        self.retry_after = Some(delay);
        self
    }

    /// A `validation` failure: the task's input or config is wrong.
    pub fn validation(code: impl Into<String>, message: impl Into<String>) -> Self {
        Self::new(ErrorClass::Validation, code, message)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn class_names_round_trip() {
        for class in ErrorClass::ALL {
            assert_eq!(class.as_str().parse::<ErrorClass>(), Ok(class));
        }
        assert!("fatal".parse::<ErrorClass>().unwrap_err().contains("fatal"));
    }
}
