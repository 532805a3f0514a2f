//! `--filter KEY=VALUE`: which dead-lettered tasks a command acts on.

use crate::record::DeadRecord;
use std::{fmt, str::FromStr};

/// One condition; several filters must all hold.
#[derive(Clone, Debug, PartialEq)]
pub enum Filter {
    /// `type=exec`
    Type(String),
    /// `class=transient`
    Class(String),
    /// `code=timeout`
    Code(String),
    /// `reason=exhausted`
    Reason(String),
    /// `run=<run id>`
    Run(String),
    /// `queue=<origin work queue>`
    Queue(String),
    /// `older=10m`: in the DLQ longer than this (ms).
    OlderThan(u64),
    /// `newer=1h`: in the DLQ for less than this (ms).
    NewerThan(u64),
}

impl FromStr for Filter {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let (key, value) = s
            .split_once('=')
            .ok_or_else(|| format!("filter `{s}` must be KEY=VALUE"))?;
        if value.is_empty() {
            return Err(format!("filter `{s}` has an empty value"));
        }
        let v = value.to_string();
        Ok(match key {
            "type" => Self::Type(v),
            "class" => Self::Class(v),
            "code" => Self::Code(v),
            "reason" => Self::Reason(v),
            "run" => Self::Run(v),
            "queue" => Self::Queue(v),
            "older" => Self::OlderThan(parse_duration_ms(value)?),
            "newer" => Self::NewerThan(parse_duration_ms(value)?),
            other => {
                return Err(format!(
                    "unknown filter key `{other}` (use type, class, code, reason, run, queue, older, newer)"
                ));
            }
        })
    }
}

impl fmt::Display for Filter {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Type(v) => write!(f, "type={v}"),
            Self::Class(v) => write!(f, "class={v}"),
            Self::Code(v) => write!(f, "code={v}"),
            Self::Reason(v) => write!(f, "reason={v}"),
            Self::Run(v) => write!(f, "run={v}"),
            Self::Queue(v) => write!(f, "queue={v}"),
            Self::OlderThan(ms) => write!(f, "older={ms}ms"),
            Self::NewerThan(ms) => write!(f, "newer={ms}ms"),
        }
    }
}

impl Filter {
    /// Whether `record` satisfies this condition at `now_ms`.
    pub fn matches(&self, r: &DeadRecord, now_ms: u64) -> bool {
        let eq = |field: &Option<String>, v: &str| field.as_deref() == Some(v);
        match self {
            Self::Type(v) => eq(&r.node_type, v),
            Self::Class(v) => r.class == *v,
            Self::Code(v) => r.code == *v,
            Self::Reason(v) => r.reason == *v,
            Self::Run(v) => eq(&r.run_id, v),
            Self::Queue(v) => eq(&r.origin_queue, v),
            Self::OlderThan(ms) => r.age_ms(now_ms).is_some_and(|age| age > *ms),
            Self::NewerThan(ms) => r.age_ms(now_ms).is_some_and(|age| age < *ms),
        }
    }
}

/// Whether every filter holds.
pub fn all_match(filters: &[Filter], r: &DeadRecord, now_ms: u64) -> bool {
    filters.iter().all(|f| f.matches(r, now_ms))
}

/// `500ms`, `30s`, `10m`, `2h`, `7d` in milliseconds.
pub use secflow_common::duration::parse_ms as parse_duration_ms;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_filters_and_durations() {
        assert_eq!("type=exec".parse(), Ok(Filter::Type("exec".into())));
        assert_eq!("older=10m".parse(), Ok(Filter::OlderThan(600_000)));
        assert_eq!(parse_duration_ms("1500ms"), Ok(1500));
        assert!(
            "colour=red"
                .parse::<Filter>()
                .unwrap_err()
                .contains("unknown filter key")
        );
        assert!("older=soon".parse::<Filter>().is_err());
        assert!("type=".parse::<Filter>().is_err());
    }

    #[test]
    fn filters_combine_with_and() {
        let r = DeadRecord {
            node_type: Some("exec".into()),
            class: "transient".into(),
            dead_lettered_ms: Some(1_000),
            ..Default::default()
        };
        let f: Vec<Filter> = vec!["type=exec".parse().unwrap(), "older=1s".parse().unwrap()];
        assert!(all_match(&f, &r, 10_000));
        assert!(!all_match(&f, &r, 1_500), "not old enough yet");
        assert!(!all_match(
            &["class=permanent".parse().unwrap()],
            &r,
            10_000
        ));
    }
}

/// Which messages a command acts on.
#[derive(Clone, Debug, Default)]
pub struct Selection {
    /// Task ids.
    pub ids: Vec<String>,
    /// Conditions that must all hold.
    pub filters: Vec<Filter>,
    /// Every message.
    pub all: bool,
}

impl Selection {
    /// The indexes of the records selected, in queue order. Unknown ids and filters that match
    /// nothing are errors, so an operator's typo never looks like success.
    pub fn apply(
        &self,
        records: &[DeadRecord],
        queue: &str,
        now_ms: u64,
    ) -> Result<Vec<usize>, crate::InspectorError> {
        use crate::InspectorError;
        if !self.ids.is_empty() {
            let mut out = Vec::new();
            for id in &self.ids {
                let i = records
                    .iter()
                    .position(|r| r.task_id.as_deref() == Some(id.as_str()))
                    .ok_or_else(|| InspectorError::UnknownId {
                        id: id.clone(),
                        queue: queue.to_string(),
                        count: records.len(),
                    })?;
                out.push(i);
            }
            return Ok(out);
        }
        let out: Vec<usize> = (0..records.len())
            .filter(|&i| self.all || all_match(&self.filters, &records[i], now_ms))
            .collect();
        if out.is_empty() && !self.filters.is_empty() {
            let filters = self
                .filters
                .iter()
                .map(ToString::to_string)
                .collect::<Vec<_>>()
                .join(" and ");
            return Err(InspectorError::NoMatch {
                filters,
                count: records.len(),
            });
        }
        Ok(out)
    }

    /// Checks that exactly one way of selecting was used (for commands that change the DLQ).
    pub fn require_explicit(&self) -> Result<(), crate::InspectorError> {
        let ways = usize::from(!self.ids.is_empty())
            + usize::from(!self.filters.is_empty())
            + usize::from(self.all);
        if ways == 1 {
            Ok(())
        } else {
            Err(crate::InspectorError::Usage("name the tasks: TASK_ID ..., --filter KEY=VALUE ..., or --all (exactly one of them)".into()))
        }
    }
}
