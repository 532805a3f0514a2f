//! What the dispatcher keeps in Redis and in memory: delivery markers
//! (`sf:{ns}:hook:HOOK_ID:EVENT_ID`, 7 days), runs' hooks (read from the run store, cached
//! briefly), and one lock per delivery so a process never makes the same delivery twice at
//! once (two copies of an event in flight together).

use deadpool_redis::{Pool, redis::AsyncCommands};
use secflow_common::{hooks::Hook, runs::RunStore, signing::Keyring};
use std::{
    collections::HashMap,
    sync::{Arc, Mutex, MutexGuard, PoisonError},
    time::{Duration, Instant},
};
use uuid::Uuid;

/// How long a delivery marker is kept.
const MARKER_TTL_SECS: u64 = 7 * 24 * 3600;
/// Longest wait for one Redis call.
const REDIS_DEADLINE: Duration = Duration::from_secs(2);
/// How long a run's hooks are kept in memory (they never change after submission).
const RUN_CACHE_TTL: Duration = Duration::from_secs(60);
/// Most runs kept in memory.
const RUN_CACHE_MAX: usize = 4096;

/// A run's hooks as cached.
pub(super) type RunHooks = Arc<Vec<Arc<Hook>>>;

/// Markers, the run hooks cache and the per-delivery locks.
pub(super) struct HookState {
    pool: Pool,
    ns: String,
    runs: Arc<RunStore>,
    keyring: Option<Keyring>,
    cache: Mutex<HashMap<Uuid, (Instant, RunHooks)>>,
    inflight: Mutex<HashMap<String, Arc<tokio::sync::Mutex<()>>>>,
}

fn locked<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    // Both maps only cache: a poisoned lock still holds usable data.
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

impl HookState {
    /// State on the Redis at `url` for namespace `ns`; runs' hooks are taken when sealed with
    /// a key of `keyring` (any, when signing is disabled). Does not connect yet.
    pub(super) fn new(
        url: &str,
        ns: &str,
        runs: Arc<RunStore>,
        keyring: Option<Keyring>,
    ) -> Result<Self, String> {
        Ok(Self {
            pool: secflow_common::redis_pool::pool(url, REDIS_DEADLINE)?,
            ns: ns.to_string(),
            runs,
            keyring,
            cache: Mutex::default(),
            inflight: Mutex::default(),
        })
    }

    /// Whether `hook_id` already delivered `event_id`.
    pub(super) async fn delivered(&self, hook_id: &str, event_id: &str) -> Result<bool, String> {
        let key = secflow_common::hooks::marker_key(&self.ns, hook_id, event_id);
        self.call("checking a hook marker", async move |conn| {
            conn.exists::<_, bool>(key).await
        })
        .await
    }

    /// Records that `hook_id` delivered `event_id`.
    pub(super) async fn mark(&self, hook_id: &str, event_id: &str) -> Result<(), String> {
        let key = secflow_common::hooks::marker_key(&self.ns, hook_id, event_id);
        let value = secflow_common::now_ms().to_string();
        self.call("setting a hook marker", async move |conn| {
            conn.set_ex::<_, _, ()>(key, value, MARKER_TTL_SECS).await
        })
        .await
    }

    /// One Redis call with a connection from the pool, within [`REDIS_DEADLINE`].
    async fn call<T>(
        &self,
        what: &str,
        f: impl AsyncFnOnce(&mut deadpool_redis::Connection) -> deadpool_redis::redis::RedisResult<T>,
    ) -> Result<T, String> {
        let work = async {
            let mut conn = self.pool.get().await.map_err(|e| e.to_string())?;
            f(&mut conn).await.map_err(|e| e.to_string())
        };
        secflow_common::deadline::within(what, REDIS_DEADLINE, work)
            .await
            .map_err(|e| e.to_string())?
            .map_err(|e| format!("Redis, {what}: {e}"))
    }

    /// The hooks `run` was submitted with (none for a run without hooks or unknown here).
    pub(super) async fn run_hooks(&self, run: Uuid) -> Result<RunHooks, String> {
        if let Some((at, hooks)) = locked(&self.cache).get(&run)
            && at.elapsed() < RUN_CACHE_TTL
        {
            return Ok(Arc::clone(hooks));
        }
        let key = run.to_string();
        let spec = secflow_common::deadline::within(
            "reading a run's hooks",
            REDIS_DEADLINE,
            self.runs.hooks(&key),
        )
        .await
        .map_err(|e| e.to_string())?
        .map_err(|e| format!("reading the hooks of run {run}: {e}"))?;
        let resolved = spec.map(|sealed| {
            let spec = sealed.open(&key, self.keyring.as_ref())?;
            spec.resolve(&format!("run:{run}")).map_err(|problems| {
                let problems: Vec<String> = problems.iter().map(ToString::to_string).collect();
                format!("the run's hooks are invalid: {}", problems.join("; "))
            })
        });
        let hooks = match resolved {
            None => Vec::new(),
            Some(Ok(hooks)) => hooks.into_iter().map(Arc::new).collect(),
            Some(Err(e)) => {
                // Sealed and checked at submission: only a damaged or foreign value gets here.
                tracing::error!(alert = "critical", %run, error = %e, "a run's stored hooks are refused; none of them is delivered");
                Vec::new()
            }
        };
        let hooks = Arc::new(hooks);
        let mut cache = locked(&self.cache);
        if cache.len() >= RUN_CACHE_MAX {
            cache.retain(|_, (at, _)| at.elapsed() < RUN_CACHE_TTL);
            if cache.len() >= RUN_CACHE_MAX {
                cache.clear();
            }
        }
        cache.insert(run, (Instant::now(), Arc::clone(&hooks)));
        Ok(hooks)
    }

    /// The lock of delivery `key` (`HOOK_ID:EVENT_ID`); give it back with [`Self::release`].
    pub(super) fn lock_for(&self, key: &str) -> Arc<tokio::sync::Mutex<()>> {
        Arc::clone(locked(&self.inflight).entry(key.to_string()).or_default())
    }

    /// Forgets the lock of `key` unless another delivery of it holds or awaits it.
    pub(super) fn release(&self, key: &str, lock: Arc<tokio::sync::Mutex<()>>) {
        let mut inflight = locked(&self.inflight);
        // Ours and the map's: nobody else is waiting for it.
        if Arc::strong_count(&lock) <= 2 {
            inflight.remove(key);
        }
    }
}
