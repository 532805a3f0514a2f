//! Fallback chains in the worker: when a task's own handler fails with a class its chain
//! allows (or its service's breaker is open), its alternatives run at once, in order, in the
//! same attempt: no retry of the primary, each alternative behind its own breaker and under
//! its own timeout. The first success serves the task; if none does, the task ends as it
//! would have without a chain, with the primary's error.
//!
//! [`run_chain`] drives a chain over any [`StepRunner`] (the worker's runs a handler under its
//! lease, cancellation and shutdown; a benchmark's calls the handlers directly).

use crate::breaker::{Breakers, state::Verdict};
use secflow_common::{
    ErrorClass, TaskEnvelope, TaskError,
    control::Level,
    now_ms,
    recipe::{Alternative, ServedBy, fallback::falls_through},
    tools::{ToolSet, config_at},
};
use serde_json::Value;
use std::future::Future;

/// Runs one step of a chain: the handler of `task`'s type on its config. `None` when the
/// worker stopped it (grace period over, connection lost).
pub trait StepRunner {
    /// Runs `task`'s handler.
    fn run(
        &self,
        task: &TaskEnvelope,
    ) -> impl Future<Output = Option<Result<Value, TaskError>>> + Send;
}

/// How a chain ended.
#[derive(Debug)]
pub enum ChainEnd {
    /// The worker stopped it before anything served.
    Stopped,
    /// Served: by the task's own handler (`served_by` absent, quality `full`) or an alternative.
    Served {
        /// The output.
        output: Value,
        /// The alternative that served, if one did.
        served_by: Option<ServedBy>,
        /// Quality of what served.
        quality: Level,
    },
    /// Nothing served: the primary's error (or a cancellation, which stops the chain).
    Failed(TaskError),
    /// The primary's breaker was open and no alternative served.
    PrimaryOpen,
}

/// The chain a task runs: its own alternatives, else the fleet's for its service.
pub fn chain_of<'a>(
    task: &'a TaskEnvelope,
    fleet: &'a secflow_common::recipe::FleetChains,
) -> &'a [Alternative] {
    if task.fallback.is_empty() {
        fleet.get(task.service()).map_or(&[], Vec::as_slice)
    } else {
        &task.fallback
    }
}

/// The task an alternative runs as: the primary's identity and inputs with the alternative's
/// type, config (its tool's overrides at `level` applied), timeout and service, and no chain of
/// its own. A `cache.last` alternative gets the cache key of `task` (the node as written).
pub fn alternative_task(
    task: &TaskEnvelope,
    alt: &Alternative,
    level: Level,
    tools: &ToolSet,
) -> TaskEnvelope {
    let mut step = task.clone();
    step.node_type.clone_from(&alt.node_type);
    let empty = secflow_common::control::LevelOverrides::new();
    step.config = config_at(&alt.config, level, tools.get(&alt.node_type), &empty).0;
    step.timeout_ms = alt.timeout_ms;
    step.service = Some(alt.service().to_string());
    if alt.node_type == secflow_common::nodes::CACHE_LAST {
        // The node's last output for the same type, config (as written) and inputs.
        step.config = serde_json::json!({ "key": task.cache_key() });
    }
    step.fallback = Vec::new();
    step.degrade = empty;
    step
}

/// Whether an outcome says the service is unwell (counts against its breaker).
fn healthy(outcome: &Result<Value, TaskError>) -> bool {
    !matches!(outcome, Err(e) if matches!(e.class, ErrorClass::Transient | ErrorClass::Resource))
}

/// Runs `primary` (unless its breaker is open: `primary_open`), then, while what failed may
/// fall through (`fallback_on`, see [`falls_through`]), each alternative in turn. Every step
/// that runs is reported to its own service's breaker (the primary's included); an
/// alternative whose breaker is open is passed over.
pub async fn run_chain(
    primary: &TaskEnvelope,
    primary_open: bool,
    alternatives: &[(TaskEnvelope, Level)],
    breakers: &Breakers,
    runner: &impl StepRunner,
) -> ChainEnd {
    let primary_error = if primary_open {
        None
    } else {
        let Some(outcome) = runner.run(primary).await else {
            return ChainEnd::Stopped;
        };
        breakers
            .record(primary.service(), healthy(&outcome), now_ms())
            .await;
        match outcome {
            Ok(output) => {
                return ChainEnd::Served {
                    output,
                    served_by: None,
                    quality: Level::Full,
                };
            }
            Err(e) if !falls_through(e.class, &primary.fallback_on) => {
                return ChainEnd::Failed(e);
            }
            Err(e) => Some(e),
        }
    };
    for (i, (step, quality)) in alternatives.iter().enumerate() {
        let service = step.service();
        if let Verdict::Reject { .. } = breakers.admit(service, now_ms()).await {
            tracing::info!(task_id = %step.task_id, alternative = i + 1, service, "fallback alternative's breaker is open: passing over it");
            continue;
        }
        let Some(outcome) = runner.run(step).await else {
            return ChainEnd::Stopped;
        };
        breakers.record(service, healthy(&outcome), now_ms()).await;
        match outcome {
            Ok(output) => {
                tracing::info!(task_id = %step.task_id, alternative = i + 1, r#type = %step.node_type, quality = %quality, "served by a fallback alternative");
                return ChainEnd::Served {
                    output,
                    served_by: Some(ServedBy {
                        index: i + 1,
                        node_type: step.node_type.clone(),
                    }),
                    quality: *quality,
                };
            }
            Err(e) if e.class == ErrorClass::Cancelled => return ChainEnd::Failed(e),
            Err(e) => {
                tracing::warn!(task_id = %step.task_id, alternative = i + 1, r#type = %step.node_type, class = %e.class, code = %e.code, error = %e.message, "fallback alternative failed: trying the next");
            }
        }
    }
    match primary_error {
        Some(e) => ChainEnd::Failed(e),
        None => ChainEnd::PrimaryOpen,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn an_alternative_runs_as_its_own_type_behind_its_own_breaker() {
        let mut task = TaskEnvelope::new("http", json!({"url": "http://a"}));
        task.fallback = vec![Alternative {
            node_type: "scan.nuclei".into(),
            config: json!({"templates": "res://t:1"}),
            timeout_ms: Some(500),
            service: None,
            quality: Level::Medium,
        }];
        let tools = ToolSet::builtin().unwrap();
        let step = alternative_task(&task, &task.fallback[0], Level::High, &tools);
        assert_eq!(
            (step.node_type.as_str(), step.service(), step.timeout_ms),
            ("scan.nuclei", "scan.nuclei", Some(500))
        );
        assert_eq!(step.config["rate_limit"], 100, "its tool's overrides apply");
        assert!(step.fallback.is_empty());
        assert_eq!(step.task_id, task.task_id);
    }

    #[test]
    fn a_node_chain_wins_over_the_fleet_chain() {
        let mut fleet = secflow_common::recipe::FleetChains::new();
        let alt = |t: &str| Alternative {
            node_type: t.into(),
            config: json!({}),
            timeout_ms: None,
            service: None,
            quality: Level::Low,
        };
        fleet.insert("http".into(), vec![alt("builtin.static")]);
        let mut task = TaskEnvelope::new("http", json!({}));
        assert_eq!(chain_of(&task, &fleet)[0].node_type, "builtin.static");
        task.fallback = vec![alt("builtin.echo")];
        assert_eq!(chain_of(&task, &fleet)[0].node_type, "builtin.echo");
        task.service = Some("other".into());
        task.fallback.clear();
        assert!(chain_of(&task, &fleet).is_empty());
        assert!(healthy(&Err(TaskError::validation("x", "y"))));
        assert!(!healthy(&Err(TaskError::new(
            ErrorClass::Resource,
            "x",
            "y"
        ))));
    }
}
