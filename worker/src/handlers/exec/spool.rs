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
    /// The spool of namespace `ns` on `url`, records kept `ttl`. Does not connect yet.
    pub fn new(url: &str, ns: &str, ttl: Duration) -> Result<Self, String> {
        Ok(Self {
            url: url.to_string(),
            ns: ns.to_string(),
            ttl_ms: u64::try_from(ttl.as_millis()).unwrap_or(u64::MAX).max(1),
            pool: secflow_common::redis_pool::pool(url, DEADLINE)?,
        })
    }

    /// The key of `attempt`'s run of the program named by `parts`.
    pub fn key(&self, attempt: Attempt<'_>, parts: &[&[u8]]) -> String {
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
        }
    }

    /// The outcome recorded under `key` by an earlier delivery of the same attempt. Redis not
    /// answering is a transient failure (whether the program ran is unknown, so it does not run
    /// now); a value that does not parse is corrupted state.
    pub async fn recorded(&self, key: &str) -> Result<Option<Record>, TaskError> {
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
            Ok(Err(e)) => return Err(unreachable(&e)),
            Err(_) => return Err(unreachable("timed out")),
        };
        raw.map(|raw| {
            serde_json::from_str(&raw).map_err(|e| {
                TaskError::new(
                    ErrorClass::Permanent,
                    "state_corrupted",
                    format!("exec: the recorded outcome under `{key}` does not parse: {e}"),
                )
            })
        })
        .transpose()
    }
}

fn unreachable(e: &str) -> TaskError {
    TaskError::new(
        ErrorClass::Transient,
        "spool_unreachable",
        format!("exec: cannot look up whether an earlier delivery already ran the program: {e}"),
    )
}
