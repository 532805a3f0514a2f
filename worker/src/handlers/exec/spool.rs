//! The spool: where the [`shim`](super::shim) records how an attempt's program ended, and where
//! a redelivered attempt (its worker died before recording the task's end) finds it instead of
//! running the program again.
//!
//! Only a program that exited with one of its success codes is recorded (a failed one runs again
//! on any later delivery). One key per attempt and program: `sf:{NS:task:ID}:exec:RETRY.REQUEUE:HASH`,
//! where `RETRY` is the task's `x-retry-count` (a retry after a failure runs the program anew; a
//! redelivery of the same attempt does not), `REQUEUE` its `x-requeue-count` (a requeue from the
//! DLQ runs it anew) and `HASH` names the program, arguments, environment, directory and stdin (a
//! fallback chain runs several). Kept for `--exec-spool-ttl-secs`.

use super::shim::{Record, SpoolTo};
use secflow_common::{ErrorClass, TaskError};
use sha2::{Digest, Sha256};
use std::time::Duration;

/// Deadline of the spool lookup.
const DEADLINE: Duration = Duration::from_secs(2);

/// Why a lookup gave no answer.
#[derive(Debug)]
pub enum SpoolError {
    /// Redis did not answer.
    Unreachable(String),
    /// The record does not parse (`permanent`/`state_corrupted`).
    Corrupted(TaskError),
}

/// Which attempt of which task a program runs for.
#[derive(Clone, Copy, Debug)]
pub struct Attempt<'a> {
    /// The task.
    pub task_id: &'a str,
    /// Its classified failures before this attempt (`x-retry-count`).
    pub retry: u64,
    /// Times it was requeued from the DLQ (`x-requeue-count`).
    pub requeue: u64,
    /// The exit codes that mean the program succeeded: only those outcomes are recorded.
    pub success_exit_codes: &'a [i32],
}

/// The namespace's spool on Redis.
pub struct Spool {
    url: String,
    ns: String,
    ttl_ms: u64,
    max_bytes: usize,
    pool: deadpool_redis::Pool,
}

impl std::fmt::Debug for Spool {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Spool")
            .field("ns", &self.ns)
            .field("ttl_ms", &self.ttl_ms)
            .finish_non_exhaustive()
    }
}

impl Spool {
    /// The spool of namespace `ns` on `url`, records kept `ttl` and at most `max_bytes` long
    /// (a larger one is not stored). Does not connect yet.
    pub fn new(url: &str, ns: &str, ttl: Duration, max_bytes: usize) -> Result<Self, String> {
        Ok(Self {
            url: url.to_string(),
            ns: ns.to_string(),
            ttl_ms: u64::try_from(ttl.as_millis()).unwrap_or(u64::MAX).max(1),
            max_bytes,
            pool: secflow_common::redis_pool::pool(url, DEADLINE)?,
        })
    }

    /// The key of `attempt`'s run of the program named by `parts`.
    pub fn key(&self, attempt: Attempt<'_>, parts: &[Vec<u8>]) -> String {
        let mut hash = Sha256::new();
        for part in parts {
            hash.update((part.len() as u64).to_le_bytes());
            hash.update(part);
        }
        let digest = hex::encode(&hash.finalize()[..8]);
        format!(
            "sf:{{{}:task:{}}}:exec:{}.{}:{digest}",
            self.ns, attempt.task_id, attempt.retry, attempt.requeue
        )
    }

    /// Where the shim records the outcome under `key`, if the program exits with one of
    /// `success_exit_codes`.
    pub(super) fn to(&self, key: &str, success_exit_codes: &[i32]) -> SpoolTo {
        SpoolTo {
            url: self.url.clone(),
            key: key.to_string(),
            ttl_ms: self.ttl_ms,
            success_exit_codes: success_exit_codes.to_vec(),
            max_bytes: self.max_bytes,
        }
    }

    /// The outcome recorded under `key` by an earlier delivery of the same attempt.
    pub async fn recorded(&self, key: &str) -> Result<Option<Record>, SpoolError> {
        let lookup = async {
            let mut conn = self.pool.get().await.map_err(|e| e.to_string())?;
            deadpool_redis::redis::cmd("GET")
                .arg(key)
                .query_async::<Option<String>>(&mut conn)
                .await
                .map_err(|e| e.to_string())
        };
        let raw = match tokio::time::timeout(DEADLINE, lookup).await {
            Ok(Ok(raw)) => raw,
            Ok(Err(e)) => return Err(SpoolError::Unreachable(e)),
            Err(_) => return Err(SpoolError::Unreachable("timed out".into())),
        };
        raw.map(|raw| {
            serde_json::from_str(&raw).map_err(|e| {
                SpoolError::Corrupted(TaskError::new(
                    ErrorClass::Permanent,
                    "state_corrupted",
                    format!("exec: the recorded outcome under `{key}` does not parse: {e}"),
                ))
            })
        })
        .transpose()
    }
}
