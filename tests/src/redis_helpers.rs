//! Redis for tests: namespace keys, done markers, cleanup, and a private server to stop and
//! restart.

use crate::{free_port, wait_for};
use std::{
    process::{Child, Command, Stdio},
    time::Duration,
};

/// Keys of namespace `ns` in the Redis at `url`.
pub async fn redis_keys(url: &str, ns: &str) -> redis::RedisResult<Vec<String>> {
    scan(url, &format!("sf:{{{ns}:*")).await
}

/// Keys matching `pattern` (by `SCAN`: see [`secflow_common::redis_pool::scan_keys`]).
async fn scan(url: &str, pattern: &str) -> redis::RedisResult<Vec<String>> {
    let failed = |e: String| redis::RedisError::from((redis::ErrorKind::Io, "SCAN failed", e));
    let pool = secflow_common::redis_pool::pool(url, Duration::from_secs(10)).map_err(failed)?;
    secflow_common::redis_pool::scan_keys(&pool, pattern)
        .await
        .map_err(failed)
}

/// Tasks of namespace `ns` with a done marker in the Redis at `url`.
pub async fn redis_done_markers(url: &str, ns: &str) -> redis::RedisResult<usize> {
    let client = redis::Client::open(url)?;
    let mut conn = client.get_multiplexed_async_connection().await?;
    let mut done = 0;
    for key in redis_keys(url, ns).await? {
        let value: Option<String> = redis::cmd("GET")
            .arg(&key)
            .query_async(&mut conn)
            .await
            .unwrap_or(None);
        done += usize::from(value.is_some_and(|v| v.starts_with("done:")));
    }
    Ok(done)
}

/// Deletes every key of namespace `ns` in the Redis at `url` (what a test or a benchmark
/// leaves: markers, leases, runs, breakers).
pub async fn delete_redis_keys(url: &str, ns: &str) -> redis::RedisResult<()> {
    let mut keys = redis_keys(url, ns).await?;
    // Hook delivery markers: `sf:{ns}:hook:…`.
    keys.extend(scan(url, &format!("sf:{{{ns}}}:*")).await?);
    let client = redis::Client::open(url)?;
    let mut conn = client.get_multiplexed_async_connection().await?;
    for chunk in keys.chunks(10_000) {
        redis::cmd("UNLINK")
            .arg(chunk)
            .query_async::<()>(&mut conn)
            .await?;
    }
    Ok(())
}

/// A Redis server of the test's own on a free port, so a test can stop and restart it
/// without disturbing the shared one.
pub struct PrivateRedis {
    /// Its port.
    pub port: u16,
    child: Option<Child>,
    /// With a data directory: an append-only file synced on every write, so a SIGKILL loses
    /// nothing it acknowledged.
    data: Option<std::path::PathBuf>,
}

impl PrivateRedis {
    /// Starts one and waits until it answers.
    pub async fn start() -> Self {
        let mut redis = Self {
            port: free_port(),
            child: None,
            data: None,
        };
        redis.restart().await;
        redis
    }

    /// Starts one that keeps its data across kills (AOF, fsync always).
    pub async fn start_persistent() -> Self {
        let port = free_port();
        let dir = std::env::temp_dir().join(format!("secflow-redis-{port}"));
        std::fs::create_dir_all(&dir).unwrap();
        let mut redis = Self {
            port,
            child: None,
            data: Some(dir),
        };
        redis.restart().await;
        redis
    }

    /// Its URL.
    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}/", self.port)
    }

    /// Kills it (SIGKILL: an outage, not a shutdown).
    pub fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Starts it again on the same port and waits until it answers.
    pub async fn restart(&mut self) {
        let mut cmd = Command::new("redis-server");
        cmd.args([
            "--port",
            &self.port.to_string(),
            "--bind",
            "127.0.0.1",
            "--save",
            "",
        ]);
        match &self.data {
            Some(dir) => cmd
                .args(["--appendonly", "yes", "--appendfsync", "always", "--dir"])
                .arg(dir),
            None => cmd.args(["--appendonly", "no"]),
        };
        let child = cmd
            .stdout(Stdio::null())
            .spawn()
            .expect("redis-server must be installed (bash scripts/services.sh installs it)");
        self.child = Some(child);
        let url = self.url();
        wait_for(
            "the private Redis to answer",
            Duration::from_secs(10),
            || {
                let url = url.clone();
                async move {
                    let Ok(client) = redis::Client::open(url) else {
                        return false;
                    };
                    let Ok(mut conn) = client.get_multiplexed_async_connection().await else {
                        return false;
                    };
                    redis::cmd("PING")
                        .query_async::<String>(&mut conn)
                        .await
                        .is_ok()
                }
            },
        )
        .await;
    }
}

impl Drop for PrivateRedis {
    fn drop(&mut self) {
        self.stop();
        if let Some(dir) = &self.data {
            let _ = std::fs::remove_dir_all(dir);
        }
    }
}
