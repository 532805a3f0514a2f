//! The worker's Redis: breaker state, idempotency markers and leases, failure fingerprints.
//!
//! Every change is one atomic Lua script or one plain command. Keys carry a hash tag
//! (`sf:{ns:...}`) so each script touches one slot and also runs on Redis Cluster. When Redis
//! is unreachable, the store says so once, reports itself degraded (callers fall back to local
//! state and keep working) and probes Redis in the background until it answers again. A key
//! holding a value of the wrong type or format is corrupted state: reported (log, metric) and
//! returned as [`StateCorrupted`] for that key's caller alone, never a reason to degrade.

mod batch;
mod fault;
mod lease;
mod liveness;
mod records;
mod values;

pub use fault::{Fault, StateCorrupted, StoreError, classify};
pub use lease::{Lease, Refused};
pub use liveness::{Holder, LIVE_TTL, holder};
pub use values::{MAX_CLOCK_SKEW_MS, TaskValue, parse_task_value};

use crate::stats::WorkerStats;
use deadpool_redis::{
    Connection, Pool,
    redis::{Script, aio::MultiplexedConnection},
};
use std::{
    sync::{
        Arc,
        atomic::{AtomicU64, Ordering},
    },
    time::Duration,
};

/// Longest a Redis call may take before the store counts Redis as unreachable.
const OP_TIMEOUT: Duration = Duration::from_millis(500);
/// How often a degraded store checks whether Redis is back.
const PROBE_EVERY: Duration = Duration::from_secs(1);
/// Most done markers of tasks completed without Redis kept for writing when it is back; past
/// that the oldest are dropped (counted), and their redelivered copies, if any, run again.
const MAX_PENDING_DONE: usize = 100_000;
/// Most done markers written in one pipelined round trip when Redis is back.
const DONE_FLUSH_CHUNK: usize = 1_000;

/// Outcome of claiming a task before running it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Claim {
    /// Already completed: ack without running.
    Done,
    /// Another attempt holds the lease for this long, ms, with this value (`lease:<owner>`):
    /// do not run it concurrently (unless its worker is dead).
    Leased { left_ms: u64, value: String },
    /// An attempt completed the task and is reporting it, or stopped while doing so:
    /// `"{since_ms}:{owner}"`.
    Completing(String),
    /// This attempt holds the lease.
    Claimed,
    /// This attempt took the lease over from an attempt whose worker died holding it: evidence
    /// that the task may have killed that worker.
    TakenOver,
}

/// Redis access for one namespace.
pub struct Store {
    pool: Pool,
    /// One multiplexed connection taken from the pool and shared: every call pipelines on it
    /// (no checkout, no health-check PING per call). Dropped on error; the next call takes a
    /// fresh one.
    shared: tokio::sync::Mutex<Option<MultiplexedConnection>>,
    ns: String,
    /// Shared with the worker's stats, where metrics and readiness read it.
    stats: Arc<WorkerStats>,
    scripts: Scripts,
    /// This process's liveness id (see [`liveness`]).
    live_id: String,
    /// Until when (ms since the epoch) this process's liveness key is known to be there.
    alive_until_ms: AtomicU64,
    /// Done markers of tasks completed while Redis was unreachable (key, value, ttl ms),
    /// written when it answers again, before idempotency resumes.
    pending_done: std::sync::Mutex<std::collections::VecDeque<(String, String, u64)>>,
    /// The writer of plain commands (see [`batch`]), started by the first one.
    batch: std::sync::OnceLock<batch::Queue>,
}

struct Scripts {
    cas: Script,
    claim: Script,
    renew: Script,
    release: Script,
    bump: Script,
    take_over: Script,
}

impl Store {
    /// A store for namespace `ns` on `url`. Does not connect yet.
    pub fn new(url: &str, ns: &str, stats: Arc<WorkerStats>) -> Result<Arc<Self>, String> {
        let pool = secflow_common::redis_pool::pool(url, OP_TIMEOUT)?;
        Ok(Arc::new(Self {
            pool,
            shared: tokio::sync::Mutex::new(None),
            ns: ns.to_string(),
            stats,
            scripts: Scripts {
                cas: Script::new(include_str!("lua/cas.lua")),
                claim: Script::new(include_str!("lua/claim.lua")),
                renew: Script::new(include_str!("lua/renew.lua")),
                release: Script::new(include_str!("lua/release.lua")),
                bump: Script::new(include_str!("lua/bump.lua")),
                take_over: Script::new(include_str!("lua/take_over.lua")),
            },
            live_id: uuid::Uuid::new_v4().simple().to_string(),
            alive_until_ms: AtomicU64::new(0),
            pending_done: std::sync::Mutex::new(std::collections::VecDeque::new()),
            batch: std::sync::OnceLock::new(),
        }))
    }

    /// Whether Redis is currently unreachable.
    pub fn is_degraded(&self) -> bool {
        self.stats.redis_degraded.load(Ordering::Relaxed)
    }

    /// Checks Redis once; on failure the store degrades.
    pub async fn check(self: &Arc<Self>) -> bool {
        let ok = self.ping().await;
        if !ok {
            self.degrade("ping failed");
        }
        ok
    }

    async fn ping(&self) -> bool {
        let attempt = async {
            let mut conn = self.pool.get().await.ok()?;
            deadpool_redis::redis::cmd("PING")
                .query_async::<String>(&mut conn)
                .await
                .ok()
        };
        matches!(tokio::time::timeout(OP_TIMEOUT, attempt).await, Ok(Some(_)))
    }

    /// Marks Redis unreachable (logging it once) and starts probing for its return.
    fn degrade(self: &Arc<Self>, why: &str) {
        if let Ok(mut shared) = self.shared.try_lock() {
            *shared = None;
        }
        if self.stats.redis_degraded.swap(true, Ordering::SeqCst) {
            return;
        }
        metrics::gauge!("secflow_redis_degraded").set(1.0);
        tracing::warn!(
            error = why,
            "Redis unreachable: using local circuit breakers; tasks of idempotent types run without idempotency checks, the others are deferred"
        );
        let store = Arc::clone(self);
        tokio::spawn(async move {
            loop {
                tokio::time::sleep(PROBE_EVERY).await;
                if store.ping().await {
                    // The shared connection died with the outage: start on a fresh one.
                    *store.shared.lock().await = None;
                    // Tasks completed meanwhile get their done markers before idempotency
                    // checks resume; if Redis fails again during that, keep probing.
                    if !store.flush_pending_done().await {
                        continue;
                    }
                    store.stats.redis_degraded.store(false, Ordering::SeqCst);
                    metrics::gauge!("secflow_redis_degraded").set(0.0);
                    tracing::info!("Redis is back: shared breaker state and idempotency resume");
                    return;
                }
            }
        });
    }

    /// Runs a script on `keys` (the first names the state for reports).
    async fn run<T: deadpool_redis::redis::FromRedisValue>(
        self: &Arc<Self>,
        script: &Script,
        keys: &[&str],
        args: &[&str],
    ) -> Result<T, StoreError> {
        let mut invocation = script.prepare_invoke();
        for k in keys {
            invocation.key(*k);
        }
        for a in args {
            invocation.arg(*a);
        }
        let key = keys.first().copied().unwrap_or_default();
        // Boxed: the client's script call is a future of several kilobytes, which every
        // caller's state (a task's whole pipeline) would otherwise hold inline and copy at
        // each move, on every delivery, though scripts run only on conflicts and renewals.
        Box::pin(self.guarded(key, |mut conn| async move {
            invocation.invoke_async::<T>(&mut conn).await
        }))
        .await
    }

    /// Runs one plain command on `key`, in a pipeline with the other tasks' commands of the
    /// moment (see [`batch`]). Refused at once while Redis is known to be unreachable.
    async fn command<T: deadpool_redis::redis::FromRedisValue>(
        self: &Arc<Self>,
        key: &str,
        cmd: deadpool_redis::redis::Cmd,
    ) -> Result<T, StoreError> {
        if self.is_degraded() {
            return Err(StoreError::Degraded);
        }
        let queue = self.batch.get_or_init(|| batch::start(self));
        let refused = match batch::send(queue, cmd).await {
            Ok(value) => match T::from_redis_value(value) {
                Ok(value) => return Ok(value),
                Err(e) => e.to_string(),
            },
            Err(batch::Failure::BadValue(e)) => e,
            Err(batch::Failure::Store(e)) => return Err(e),
        };
        Err(self
            .corrupted(key, format!("Redis refused it: {refused}"))
            .into())
    }

    /// Runs `call` on the shared connection under the store's timeout. Refused at once while
    /// Redis is known to be unreachable. A connection failure or timeout degrades the store;
    /// an answer refusing `key`'s value (wrong type, script error on it) is corrupted state.
    async fn guarded<T, F, Fut>(self: &Arc<Self>, key: &str, call: F) -> Result<T, StoreError>
    where
        F: FnOnce(MultiplexedConnection) -> Fut,
        Fut: std::future::Future<Output = deadpool_redis::redis::RedisResult<T>>,
    {
        if self.is_degraded() {
            return Err(StoreError::Degraded);
        }
        let failure = match self.attempt(call).await {
            Ok(Ok(value)) => return Ok(value),
            Ok(Err(e)) if classify(&e) == Fault::BadValue => {
                return Err(self.corrupted(key, format!("Redis refused it: {e}")).into());
            }
            Ok(Err(e)) => e.to_string(),
            Err(why) => why,
        };
        self.degrade(&failure);
        Err(StoreError::Unreachable(failure))
    }

    /// Runs `call` on the shared connection under the store's timeout: Redis's answer (a value
    /// or its error), or why there was none (no connection, no answer in time).
    async fn attempt<T, F, Fut>(
        &self,
        call: F,
    ) -> Result<deadpool_redis::redis::RedisResult<T>, String>
    where
        F: FnOnce(MultiplexedConnection) -> Fut,
        Fut: std::future::Future<Output = deadpool_redis::redis::RedisResult<T>>,
    {
        let attempt = async { Ok(call(self.connection().await?).await) };
        tokio::time::timeout(OP_TIMEOUT, attempt)
            .await
            .unwrap_or_else(|_| Err(format!("no answer within {} ms", OP_TIMEOUT.as_millis())))
    }

    /// Reports that `key` holds unusable state (`detail`): logged with the key and counted in
    /// `secflow_state_corrupted_total{kind}`. Only its caller's task or service is affected.
    pub fn corrupted(&self, key: &str, detail: String) -> StateCorrupted {
        // Keys are `sf:{ns:KIND:ID}...`: the kind labels the metric.
        let kind = key
            .strip_prefix(&format!("sf:{{{}:", self.ns))
            .and_then(|rest| rest.split(':').next())
            .unwrap_or("other")
            .to_string();
        metrics::counter!("secflow_state_corrupted_total", "kind" => kind.clone()).increment(1);
        WorkerStats::bump(&self.stats.state_corrupted);
        tracing::warn!(
            key,
            kind,
            detail,
            "corrupted state in Redis: only this key's task or service is affected"
        );
        StateCorrupted {
            key: key.to_string(),
            detail,
        }
    }

    /// The shared connection, taken from the pool when there is none yet.
    async fn connection(&self) -> Result<MultiplexedConnection, String> {
        let mut shared = self.shared.lock().await;
        if let Some(conn) = shared.as_ref() {
            return Ok(conn.clone());
        }
        // Boxed: taking a connection from the pool may open one, a future of several
        // kilobytes that every Redis call's state (and so every task's) would otherwise hold
        // inline and copy at each move, though it runs only when there is none yet.
        let conn = Connection::take(Box::pin(self.pool.get()).await.map_err(|e| e.to_string())?);
        *shared = Some(conn.clone());
        Ok(conn)
    }

    /// `SET key value PX ttl_ms`: one plain command, replacing whatever the key held.
    async fn set_px(
        self: &Arc<Self>,
        key: String,
        value: &str,
        ttl_ms: u64,
    ) -> Result<(), StoreError> {
        self.command::<()>(&key, set_command(&key, value, false, ttl_ms))
            .await
    }

    fn key(&self, kind: &str, id: &str, suffix: &str) -> String {
        // Sized at once: a `format!` would grow its buffer a few times, for every key of every
        // task.
        let parts = ["sf:{", &self.ns, ":", kind, ":", id, "}", suffix];
        let mut key = String::with_capacity(parts.iter().map(|p| p.len()).sum());
        parts.iter().for_each(|p| key.push_str(p));
        key
    }

    /// Claims a task for this attempt (`owner`) for `lease_ms`. The common case (nobody holds
    /// it, it never completed) is one plain `SET NX`; only a conflict runs a script, whose
    /// answer (the key's value) is parsed strictly: a value in no known format is corrupted
    /// state, not a lease.
    pub async fn claim(
        self: &Arc<Self>,
        task_id: &str,
        owner: &str,
        lease_ms: u64,
    ) -> Result<Claim, StoreError> {
        let key = self.key("task", task_id, "");
        let value = ["lease:", owner].concat();
        let claimed: Option<String> = self
            .command(&key, set_command(&key, &value, true, lease_ms))
            .await?;
        if claimed.is_some() {
            return Ok(Claim::Claimed);
        }
        let (status, ttl, value): (String, i64, String) = self
            .run(
                &self.scripts.claim,
                &[&key],
                &[&value, &lease_ms.to_string()],
            )
            .await?;
        if status == "claimed" {
            return Ok(Claim::Claimed);
        }
        match parse_task_value(&value, ttl, secflow_common::now_ms()) {
            Ok(TaskValue::Done { .. }) => Ok(Claim::Done),
            Ok(TaskValue::Completing { since_ms, owner }) => {
                Ok(Claim::Completing(format!("{since_ms}:{owner}")))
            }
            Ok(TaskValue::Lease { owner, ttl_ms }) => Ok(Claim::Leased {
                left_ms: ttl_ms,
                value: format!("lease:{owner}"),
            }),
            Err(detail) => Err(self.corrupted(&key, detail).into()),
        }
    }

    /// Extends this attempt's lease; false if it was lost.
    pub async fn renew(
        self: &Arc<Self>,
        task_id: &str,
        owner: &str,
        lease_ms: u64,
    ) -> Result<bool, StoreError> {
        let key = self.key("task", task_id, "");
        let renewed: i64 = self
            .run(
                &self.scripts.renew,
                &[&key],
                &[&format!("lease:{owner}"), &lease_ms.to_string()],
            )
            .await?;
        Ok(renewed == 1)
    }

    /// Marks the task as being reported complete by `owner` (replacing its lease), before the
    /// completion event goes out: one plain `SET`.
    pub async fn completing(
        self: &Arc<Self>,
        task_id: &str,
        owner: &str,
        ttl_ms: u64,
    ) -> Result<(), StoreError> {
        let marker = format!("completing:{}:{owner}", secflow_common::now_ms());
        self.set_px(self.key("task", task_id, ""), &marker, ttl_ms)
            .await
    }

    /// Records that `owner` completed the task but could not report it (its event was not
    /// confirmed): a marker dated at the epoch, so the next copy reports the completion at once
    /// instead of waiting for a report that is not coming.
    pub async fn completing_abandoned(
        self: &Arc<Self>,
        task_id: &str,
        owner: &str,
        ttl_ms: u64,
    ) -> Result<(), StoreError> {
        let marker = format!("completing:0:{owner}");
        self.set_px(self.key("task", task_id, ""), &marker, ttl_ms)
            .await
    }

    /// Marks the task done for `ttl_ms` (replacing this attempt's lease): one plain `SET`.
    pub async fn complete(
        self: &Arc<Self>,
        task_id: &str,
        owner: &str,
        ttl_ms: u64,
    ) -> Result<(), StoreError> {
        self.set_px(
            self.key("task", task_id, ""),
            &format!("done:{owner}"),
            ttl_ms,
        )
        .await
    }

    /// Records that `task_id` completed without a lease (Redis was unreachable when it was
    /// claimed) by `worker`: its done marker is written now if Redis answers, else kept and
    /// written when Redis is back, so a later copy of the task is taken for a duplicate. Never
    /// replaces what the key holds (another attempt's lease or marker).
    pub async fn complete_unleased(self: &Arc<Self>, task_id: &str, worker: &str, ttl_ms: u64) {
        let key = self.key("task", task_id, "");
        let value = format!("done:{worker}/{}", uuid::Uuid::new_v4().simple());
        if !self.is_degraded() {
            let set = set_command(&key, &value, true, ttl_ms);
            match self.command::<Option<String>>(&key, set).await {
                Ok(_) | Err(StoreError::Corrupted(_)) => return,
                Err(StoreError::Degraded | StoreError::Unreachable(_)) => {}
            }
        }
        let mut pending = self.pending();
        if pending.len() >= MAX_PENDING_DONE {
            pending.pop_front();
            WorkerStats::bump(&self.stats.done_markers_dropped);
            metrics::counter!("secflow_done_markers_dropped_total").increment(1);
        }
        pending.push_back((key, value, ttl_ms));
    }

    /// The done markers waiting for Redis.
    fn pending(
        &self,
    ) -> std::sync::MutexGuard<'_, std::collections::VecDeque<(String, String, u64)>> {
        self.pending_done
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Writes the kept done markers (`SET NX PX`, pipelined in chunks); false if Redis failed
    /// meanwhile (what is not written stays kept).
    async fn flush_pending_done(&self) -> bool {
        loop {
            let chunk: Vec<(String, String, u64)> = {
                let mut pending = self.pending();
                let n = pending.len().min(DONE_FLUSH_CHUNK);
                pending.drain(..n).collect()
            };
            if chunk.is_empty() {
                return true;
            }
            let mut pipe = deadpool_redis::redis::pipe();
            for (key, value, ttl_ms) in &chunk {
                pipe.cmd("SET")
                    .arg(key)
                    .arg(value)
                    .arg("NX")
                    .arg("PX")
                    .arg(*ttl_ms)
                    .ignore();
            }
            let attempt = async {
                let mut conn = self.pool.get().await.ok()?;
                pipe.query_async::<()>(&mut conn).await.ok()
            };
            if !matches!(
                tokio::time::timeout(OP_TIMEOUT, attempt).await,
                Ok(Some(()))
            ) {
                let mut pending = self.pending();
                for entry in chunk.into_iter().rev() {
                    pending.push_front(entry);
                }
                return false;
            }
            tracing::debug!(
                markers = chunk.len(),
                "wrote done markers of tasks completed without Redis"
            );
        }
    }

    /// Drops this attempt's lease (the task was retried, deferred or dead-lettered).
    pub async fn release(self: &Arc<Self>, task_id: &str, owner: &str) -> Result<(), StoreError> {
        let key = self.key("task", task_id, "");
        let _: i64 = self
            .run(&self.scripts.release, &[&key], &[&format!("lease:{owner}")])
            .await?;
        Ok(())
    }
}

/// `SET key value [NX] PX ttl_ms`, its buffers sized at once (the command is built for every
/// claim and marker of every task).
fn set_command(key: &str, value: &str, nx: bool, ttl_ms: u64) -> deadpool_redis::redis::Cmd {
    let mut set = deadpool_redis::redis::Cmd::with_capacity(6, key.len() + value.len() + 32);
    set.arg("SET").arg(key).arg(value);
    if nx {
        set.arg("NX");
    }
    set.arg("PX").arg(ttl_ms);
    set
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every delivery awaits these calls, so each parent future (up to the task's whole
    /// pipeline) holds their state inline and copies it at each move: a connection being opened
    /// or a script being run (rare paths) must stay behind a box, not in every task's state.
    #[test]
    fn per_task_calls_are_small_futures() {
        let store = Store::new("redis://127.0.0.1:1/", "ns", Arc::default()).unwrap();
        let sizes = [
            (
                "claim",
                std::mem::size_of_val(&store.claim("t", "o", 1_000)),
            ),
            (
                "renew",
                std::mem::size_of_val(&store.renew("t", "o", 1_000)),
            ),
            ("release", std::mem::size_of_val(&store.release("t", "o"))),
            (
                "completing",
                std::mem::size_of_val(&store.completing("t", "o", 1_000)),
            ),
        ];
        for (call, size) in sizes {
            eprintln!("{call}: {size} bytes");
            assert!(size < 2_048, "Store::{call} is a {size}-byte future");
        }
    }
}
