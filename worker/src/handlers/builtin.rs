//! Builtin handlers for demos, benchmarks and fault injection.

use super::parse_config;
use crate::checkpoint::Checkpoint;
use secflow_common::{
    TaskEnvelope, TaskError,
    nodes::{BatchConfig, FailConfig, SleepConfig},
};
use serde_json::{Value, json};
use std::time::Duration;

/// Returns its config (and inputs, when there are any).
pub fn echo(task: &TaskEnvelope) -> Value {
    if task.inputs.is_empty() {
        json!({ "echo": task.config })
    } else {
        json!({ "echo": task.config, "inputs": task.inputs })
    }
}

/// Sleeps `config.ms` milliseconds.
pub async fn sleep(config: &Value) -> Result<Value, TaskError> {
    let cfg: SleepConfig = parse_config("builtin.sleep", config)?;
    tokio::time::sleep(Duration::from_millis(cfg.ms)).await;
    Ok(json!({ "slept_ms": cfg.ms }))
}

/// Blocks its thread for `config.ms` milliseconds without yielding, as a handler stuck in
/// blocking code would: what the worker's watchdog is for.
pub fn block(config: &Value) -> Result<Value, TaskError> {
    let cfg: SleepConfig = parse_config("builtin.block", config)?;
    std::thread::sleep(Duration::from_millis(cfg.ms));
    Ok(json!({ "blocked_ms": cfg.ms }))
}

/// Fails with the configured class on the first `times` attempts (or always).
pub fn fail(config: &Value, retry_count: u64) -> Result<Value, TaskError> {
    let cfg: FailConfig = parse_config("builtin.fail", config)?;
    if cfg.times.is_some_and(|t| retry_count >= t) {
        return Ok(json!({ "attempts": retry_count + 1 }));
    }
    let message = cfg.message.unwrap_or_else(|| {
        format!(
            "injected {} failure on attempt {}",
            cfg.class,
            retry_count + 1
        )
    });
    let err = TaskError::new(cfg.class, cfg.code, message);
    Err(match cfg.retry_after_ms {
        Some(ms) => err.with_retry_after(Duration::from_millis(ms)),
        None => err,
    })
}

/// Aborts the whole worker process, as a segfaulting native tool would.
pub fn crash() -> ! {
    tracing::error!("builtin.crash: aborting the worker process on purpose");
    std::process::abort()
}

/// Never finishes; the task timeout ends it.
pub async fn hang() -> Result<Value, TaskError> {
    std::future::pending::<()>().await;
    Ok(Value::Null)
}

/// Processes `config.items` items of `config.item_ms` each, checkpointing progress every
/// `checkpoint_every` items; a redelivered task resumes from its last checkpoint. The output's
/// `sum` (of the item indices) is the same whether or not the task was interrupted.
pub async fn batch(config: &Value, checkpoint: &Checkpoint) -> Result<Value, TaskError> {
    let cfg: BatchConfig = parse_config("builtin.batch", config)?;
    secflow_common::nodes::check_config("builtin.batch", config)
        .map_err(|e| TaskError::validation("invalid_config", e))?;
    let saved = checkpoint.load().await;
    let start = saved
        .as_ref()
        .and_then(|p| p["next"].as_u64())
        .unwrap_or(0)
        .min(cfg.items);
    let mut sum = saved
        .as_ref()
        .and_then(|p| p["sum"].as_u64())
        .filter(|_| start > 0)
        .unwrap_or(0);
    if start > 0 {
        tracing::info!(
            resumed_from = start,
            items = cfg.items,
            "batch resumes from its checkpoint"
        );
    }
    for i in start..cfg.items {
        if cfg.item_ms > 0 {
            tokio::time::sleep(Duration::from_millis(cfg.item_ms)).await;
        }
        sum += i;
        let done = i + 1;
        if done % cfg.checkpoint_every == 0 || done == cfg.items {
            checkpoint.save(&json!({ "next": done, "sum": sum })).await;
        }
        if cfg.crash_after == Some(done) && start < done {
            tracing::error!(
                items_done = done,
                "builtin.batch: injected crash after a checkpoint"
            );
            std::process::abort();
        }
    }
    Ok(json!({
        "items": cfg.items,
        "sum": sum,
        "resumed_from": start,
        "processed": cfg.items - start,
        "handler_version": checkpoint.version(),
    }))
}

#[cfg(test)]
mod tests {
    use super::*;
    use secflow_common::ErrorClass;

    #[test]
    fn fail_n_times_then_succeed() {
        let cfg = json!({"times": 2, "class": "resource"});
        assert_eq!(fail(&cfg, 0).unwrap_err().class, ErrorClass::Resource);
        assert!(fail(&cfg, 1).is_err());
        assert_eq!(fail(&cfg, 2).unwrap(), json!({"attempts": 3}));
        assert!(fail(&json!({}), 99).is_err(), "no `times` fails forever");
    }

    #[test]
    fn bad_config_names_the_field() {
        let err = fail(&json!({"class": "fatal"}), 0).unwrap_err();
        assert_eq!(err.class, ErrorClass::Validation);
        assert!(
            err.message.contains("builtin.fail") && err.message.contains("fatal"),
            "{}",
            err.message
        );
    }
}
