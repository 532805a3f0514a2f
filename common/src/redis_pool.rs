//! The one way the fleet opens Redis: a deadpool pool whose every wait has a deadline.
//!
//! Getting a connection (waiting for a free one, creating one, checking a recycled one) is
//! bounded by the caller's deadline; each command on a connection is bounded by the client's
//! response timeout (redis-rs: 500 ms by default) and, in the worker's store, by its own
//! deadline around the call. A Redis that does not answer therefore never holds a task for
//! ever: the caller sees an error it classifies as unreachable ([`crate::redis_fault`]).

use deadpool_redis::{Pool, PoolConfig, Runtime};
use std::time::Duration;

/// Connections per pool.
pub const POOL_SIZE: usize = 16;

/// A pool on `url` whose connection waits end after `deadline`. Does not connect yet; a URL
/// that does not parse is an error naming it.
pub fn pool(url: &str, deadline: Duration) -> Result<Pool, String> {
    let mut cfg = deadpool_redis::Config::from_url(url);
    let mut pool_cfg = PoolConfig::new(POOL_SIZE);
    pool_cfg.timeouts.wait = Some(deadline);
    pool_cfg.timeouts.create = Some(deadline);
    pool_cfg.timeouts.recycle = Some(deadline);
    cfg.pool = Some(pool_cfg);
    cfg.create_pool(Some(Runtime::Tokio1))
        .map_err(|e| invalid_url(url, &e))
}

/// The error of a Redis URL that does not parse, naming it (credentials masked).
fn invalid_url(url: &str, e: &dyn std::fmt::Display) -> String {
    format!(
        "invalid REDIS_URL `{}`: {e}",
        crate::config::redact_url(url)
    )
}

/// Sets `key` to `value` for `ttl_ms` on a connection of its own, each step (connect, write,
/// read) bounded by `deadline`: for a short-lived process without a runtime (the worker's exec
/// shim records a program's outcome with it).
pub fn set_once(
    url: &str,
    key: &str,
    value: &str,
    ttl_ms: u64,
    deadline: Duration,
) -> Result<(), String> {
    use deadpool_redis::redis;
    let client = redis::Client::open(url).map_err(|e| invalid_url(url, &e))?;
    let mut conn = client
        .get_connection_with_timeout(deadline)
        .map_err(|e| e.to_string())?;
    conn.set_read_timeout(Some(deadline))
        .and_then(|()| conn.set_write_timeout(Some(deadline)))
        .map_err(|e| e.to_string())?;
    redis::cmd("SET")
        .arg(key)
        .arg(value)
        .arg("PX")
        .arg(ttl_ms)
        .query::<()>(&mut conn)
        .map_err(|e| e.to_string())
}

/// Every key matching `pattern`, by `SCAN` (10,000 at a time; a key may come twice). Never
/// `KEYS`, which blocks Redis for a walk of the whole keyspace, stalling every worker on it.
pub async fn scan_keys(pool: &Pool, pattern: &str) -> Result<Vec<String>, String> {
    let mut conn = pool.get().await.map_err(|e| e.to_string())?;
    let mut keys = Vec::new();
    let mut cursor: u64 = 0;
    loop {
        let (next, batch): (u64, Vec<String>) = deadpool_redis::redis::cmd("SCAN")
            .arg(cursor)
            .arg("MATCH")
            .arg(pattern)
            .arg("COUNT")
            .arg(10_000)
            .query_async(&mut *conn)
            .await
            .map_err(|e| e.to_string())?;
        keys.extend(batch);
        if next == 0 {
            return Ok(keys);
        }
        cursor = next;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_redis_that_is_not_there_fails_within_the_deadline() {
        let absent = pool("redis://127.0.0.1:1/", Duration::from_millis(300)).unwrap();
        let started = std::time::Instant::now();
        assert!(absent.get().await.is_err());
        assert!(started.elapsed() < Duration::from_secs(2));
        assert!(pool("not a url", Duration::from_secs(1)).is_err());
    }
}
