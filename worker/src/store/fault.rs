//! Why a Redis call failed: Redis unreachable (the worker degrades) or one key holding state
//! the worker cannot use (only the task or service of that key is affected).

pub use secflow_common::redis_fault::{Fault, classify};

/// Why a store call did not give an answer.
#[derive(Clone, Debug, thiserror::Error)]
pub enum StoreError {
    /// Redis is known to be unreachable; the call was not attempted.
    #[error("Redis is unreachable (working on local state)")]
    Degraded,
    /// Redis did not answer: connection refused, reset or dropped, timeout, no pooled
    /// connection in time, or the server cannot serve (loading, read-only, cluster down).
    #[error("Redis unreachable: {0}")]
    Unreachable(String),
    /// Redis answered, but one key's value is unusable. Never a reason to degrade.
    #[error(transparent)]
    Corrupted(#[from] StateCorrupted),
}

/// One key holds a value of the wrong type or in no format this worker writes.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error(
    "corrupted state in Redis key `{key}`: {detail} (inspect it with `redis-cli GET {key}` / `TYPE {key}`; delete it to let the task run again)"
)]
pub struct StateCorrupted {
    /// The key.
    pub key: String,
    /// What is wrong with it.
    pub detail: String,
}
