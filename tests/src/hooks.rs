//! For hook tests and benchmarks: a webhook receiver (an in-process HTTP server on loopback
//! that records every request and answers as the test says: a status, or never), signature
//! checks, in-process workers whose counters the test reads, and a measured drain of no-op
//! tasks with or without fleet hooks.

use crate::{InProcessWorker, TestNs, request, wait_for};
use axum::{Router, body::Bytes, extract::State, http::HeaderMap, http::StatusCode};
use hmac::{KeyInit, Mac};
use secflow_worker::{WorkerConfig, WorkerStats};
use std::{
    collections::HashMap,
    sync::{Arc, Mutex, atomic::Ordering},
    time::{Duration, Instant},
};
use tokio_util::sync::CancellationToken;

/// The hook secret test workers sign with.
pub const HOOK_SECRET: &str = "test-hook-secret-0123456789";

/// How the receiver answers one request.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Answer {
    /// This status.
    Status(u16),
    /// Never (the request hangs until the sender gives up or dies).
    Hang,
}

/// One request as received.
#[derive(Clone, Debug)]
pub struct Received {
    /// Headers, names in lowercase.
    pub headers: HashMap<String, String>,
    /// The body.
    pub body: Vec<u8>,
    /// The answer it was given.
    pub answer: Answer,
}

impl Received {
    /// A header's value (`name` in lowercase), or "".
    pub fn header(&self, name: &str) -> &str {
        self.headers.get(name).map_or("", String::as_str)
    }

    /// Whether it was answered with a 2xx.
    pub fn ok(&self) -> bool {
        matches!(self.answer, Answer::Status(200..=299))
    }
}

type Decide = dyn Fn(usize) -> Answer + Send + Sync;

#[derive(Clone)]
struct Shared {
    requests: Arc<Mutex<Vec<Received>>>,
    decide: Arc<Decide>,
}

/// The receiver; stops when dropped.
pub struct HookReceiver {
    /// Its port on 127.0.0.1.
    pub port: u16,
    requests: Arc<Mutex<Vec<Received>>>,
    server: tokio::task::JoinHandle<()>,
}

impl HookReceiver {
    /// Starts a receiver answering request number `n` (from 0, in arrival order) with
    /// `decide(n)`.
    pub async fn start(decide: impl Fn(usize) -> Answer + Send + Sync + 'static) -> Self {
        let shared = Shared {
            requests: Arc::default(),
            decide: Arc::new(decide),
        };
        let requests = Arc::clone(&shared.requests);
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let app = Router::new().fallback(receive).with_state(shared);
        let server = tokio::spawn(async move {
            let _ = axum::serve(listener, app).await;
        });
        Self {
            port,
            requests,
            server,
        }
    }

    /// The URL hooks post to.
    pub fn url(&self) -> String {
        format!("http://127.0.0.1:{}/secflow", self.port)
    }

    /// Every request so far, in arrival order.
    pub fn requests(&self) -> Vec<Received> {
        self.requests.lock().unwrap().clone()
    }

    /// Requests answered with a 2xx so far.
    pub fn delivered(&self) -> Vec<Received> {
        self.requests().into_iter().filter(Received::ok).collect()
    }
}

impl Drop for HookReceiver {
    fn drop(&mut self) {
        self.server.abort();
    }
}

async fn receive(State(shared): State<Shared>, headers: HeaderMap, body: Bytes) -> StatusCode {
    let headers = headers
        .iter()
        .map(|(k, v)| {
            let value = String::from_utf8_lossy(v.as_bytes()).into_owned();
            (k.as_str().to_ascii_lowercase(), value)
        })
        .collect();
    let answer = {
        let mut requests = shared.requests.lock().unwrap();
        let answer = (shared.decide)(requests.len());
        requests.push(Received {
            headers,
            body: body.to_vec(),
            answer,
        });
        answer
    };
    match answer {
        Answer::Status(code) => StatusCode::from_u16(code).unwrap(),
        Answer::Hang => std::future::pending().await,
    }
}

/// Whether `request` carries a valid `X-SecFlow-Signature` for `secret`: `sha256=` + hex
/// HMAC-SHA256 of `"<X-SecFlow-Timestamp>.<body>"`, computed here independently of the worker.
pub fn signature_valid(request: &Received, secret: &str) -> bool {
    let Some(hex_tag) = request
        .header("x-secflow-signature")
        .strip_prefix("sha256=")
    else {
        return false;
    };
    let Ok(tag) = hex::decode(hex_tag) else {
        return false;
    };
    let mut mac = hmac::Hmac::<sha2::Sha256>::new_from_slice(secret.as_bytes()).unwrap();
    mac.update(request.header("x-secflow-timestamp").as_bytes());
    mac.update(b".");
    mac.update(&request.body);
    mac.verify_slice(&tag).is_ok()
}

/// Starts a worker in this process with `cfg`; its counters.
pub fn spawn_counted(cfg: WorkerConfig) -> (InProcessWorker, Arc<WorkerStats>) {
    let stats = Arc::new(WorkerStats::default());
    let stop = CancellationToken::new();
    let (token, counted) = (stop.clone(), Arc::clone(&stats));
    let handle = tokio::spawn(async move {
        secflow_worker::run_with_stats(cfg, counted, token.cancelled_owned()).await
    });
    (
        InProcessWorker {
            stop,
            handle: Some(handle),
        },
        stats,
    )
}

/// A fleet hooks file for `ns` with one `on_node_complete` webhook to `url`; its path.
pub fn webhook_file(ns: &TestNs, url: &str, timeout: &str) -> String {
    let yaml =
        format!("hooks:\n  on_node_complete:\n    - url: \"{url}\"\n      timeout: {timeout}\n");
    crate::recipe_file(ns, "fleet-hooks", &yaml)
}

/// A drain of no-op tasks by one worker.
pub struct Drain {
    /// The namespace it ran in (deleted when dropped).
    pub ns: TestNs,
    /// The worker, still running.
    pub worker: InProcessWorker,
    /// Its counters.
    pub stats: Arc<WorkerStats>,
    /// Tasks drained.
    pub tasks: u64,
    /// From the worker consuming to its last completion.
    pub elapsed: Duration,
}

impl Drain {
    /// Tasks per second.
    pub fn per_sec(&self) -> f64 {
        self.tasks as f64 / self.elapsed.as_secs_f64()
    }
}

/// Publishes `tasks` `builtin.noop` tasks to a fresh namespace, then starts one worker
/// (prefetch 64, grace 1 s) with a fleet webhook to `hook_url` if given, and measures the time
/// from its consuming to its last completion.
pub async fn drain_noop(tasks: u64, hook_url: Option<&str>) -> Drain {
    let ns = TestNs::new().await;
    let count = usize::try_from(tasks).unwrap();
    let ids = secflow_producer::publish_tasks(
        &ns.broker(),
        &request("builtin.noop", serde_json::json!({}), count),
    )
    .await
    .unwrap();
    assert_eq!(ids.len(), count);
    let mut cfg = ns.worker_config();
    cfg.grace_secs = 1;
    if let Some(url) = hook_url {
        cfg.hooks = Some(webhook_file(&ns, url, "10s").into());
        cfg.hook_secret = Some(HOOK_SECRET.into());
    }
    let (worker, stats) = spawn_counted(cfg);
    wait_for("the worker consuming", Duration::from_secs(30), || async {
        stats.consuming.load(Ordering::SeqCst)
    })
    .await;
    let started = Instant::now();
    wait_for("every task completed", Duration::from_secs(120), || async {
        WorkerStats::get(&stats.completed) >= tasks
    })
    .await;
    let elapsed = started.elapsed();
    Drain {
        ns,
        worker,
        stats,
        tasks,
        elapsed,
    }
}
