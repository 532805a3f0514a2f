//! What the console tests share: the console served in-process on a free loopback port (the
//! same `serve` as `dlq-inspector serve`), a small HTTP/1.1 client with a deadline, and dead
//! letters made by a real worker.

#![allow(dead_code)]

use secflow_dlq_inspector::console::{self, Tokens};
use secflow_producer::follow_run::Subscription;
use secflow_tests::{TestNs, publish, wait_for};
use serde_json::{Value, json};
use std::{
    sync::{Arc, Mutex},
    time::Duration,
};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// The operator's token.
pub const OPERATOR: &str = "operator-token-for-console-tests";
/// The read-only token.
pub const READ: &str = "read-only-token-for-console-tests";

/// A console serving a test namespace; stopped on drop.
pub struct Console {
    /// Its port on 127.0.0.1.
    pub port: u16,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
}

impl Console {
    /// Serves `ns` with the test tokens, and waits until it follows the events exchange.
    pub async fn start(ns: &TestNs) -> Self {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let (tx, rx) = tokio::sync::oneshot::channel::<()>();
        let tokens = Tokens::fixed(Some(OPERATOR), Some(READ));
        let broker = ns.broker();
        tokio::spawn(async move {
            let shutdown = async {
                let _ = rx.await;
            };
            console::serve(broker, tokens, Duration::from_secs(30), listener, shutdown)
                .await
                .expect("the console serves");
        });
        let console = Self {
            port,
            stop: Some(tx),
        };
        wait_for(
            "the console follows events",
            Duration::from_secs(30),
            || async {
                let r = console.get("/api/session", Some(OPERATOR)).await;
                r.status == 200 && r.json()["live"] == true
            },
        )
        .await;
        console
    }

    /// `GET path`, with `bearer` as token if given.
    pub async fn get(&self, path: &str, bearer: Option<&str>) -> Reply {
        let auth = bearer.map(|t| format!("Bearer {t}"));
        let headers: Vec<(&str, &str)> = auth
            .as_deref()
            .map(|a| vec![("Authorization", a)])
            .unwrap_or_default();
        call(self.port, "GET", path, &headers, None).await
    }

    /// `POST path` with a JSON body and a bearer token.
    pub async fn post(&self, path: &str, bearer: &str, body: &Value) -> Reply {
        let auth = format!("Bearer {bearer}");
        let headers = [
            ("Authorization", auth.as_str()),
            ("Content-Type", "application/json"),
        ];
        call(self.port, "POST", path, &headers, Some(&body.to_string())).await
    }
}

impl Drop for Console {
    fn drop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
    }
}

/// An HTTP answer.
#[derive(Debug)]
pub struct Reply {
    /// Status code.
    pub status: u16,
    /// Headers, names in lower case.
    pub headers: Vec<(String, String)>,
    /// Body.
    pub body: String,
}

impl Reply {
    /// The body as JSON.
    pub fn json(&self) -> Value {
        serde_json::from_str(&self.body)
            .unwrap_or_else(|e| panic!("not JSON ({e}): {} {}", self.status, self.body))
    }

    /// The first header `name` (lower case).
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.as_str())
    }
}

/// One HTTP/1.1 request on a fresh connection (closed after), within 60 s.
pub async fn call(
    port: u16,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: Option<&str>,
) -> Reply {
    let exchange = async {
        let mut stream = tokio::net::TcpStream::connect(("127.0.0.1", port))
            .await
            .unwrap();
        let mut request =
            format!("{method} {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n");
        for (k, v) in headers {
            request.push_str(&format!("{k}: {v}\r\n"));
        }
        let body = body.unwrap_or_default();
        request.push_str(&format!("Content-Length: {}\r\n\r\n{body}", body.len()));
        stream.write_all(request.as_bytes()).await.unwrap();
        let mut raw = Vec::new();
        stream.read_to_end(&mut raw).await.unwrap();
        String::from_utf8_lossy(&raw).into_owned()
    };
    let raw = tokio::time::timeout(Duration::from_secs(60), exchange)
        .await
        .unwrap_or_else(|_| panic!("{method} {path}: no answer within 60 s"));
    let (head, body) = raw.split_once("\r\n\r\n").unwrap_or((&raw, ""));
    let mut lines = head.lines();
    let status = lines
        .next()
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| panic!("not an HTTP answer: {raw}"));
    let headers = lines
        .filter_map(|l| l.split_once(':'))
        .map(|(k, v)| (k.trim().to_ascii_lowercase(), v.trim().to_string()))
        .collect();
    Reply {
        status,
        headers,
        body: body.to_string(),
    }
}

/// The secret each dead letter's config carries (the API must never show it).
pub const SECRET: &str = "s3cr3t-console-api-key-0123";

/// `n` tasks that fail for good, their inputs holding [`SECRET`], dead-lettered by a real
/// worker (stopped once it has reported every dead letter); their ids.
pub async fn dead_letter(ns: &TestNs, n: usize) -> Vec<uuid::Uuid> {
    let tap = ns.tap_events().await;
    let worker = ns.spawn_worker(ns.worker_config());
    let config = json!({"class": "permanent", "message": "out of scope"});
    let tasks: Vec<_> = std::iter::repeat_with(|| {
        let mut task = secflow_common::TaskEnvelope::new("builtin.fail", config.clone());
        task.inputs
            .insert("target".into(), json!({"api_key": SECRET}));
        task
    })
    .take(n)
    .collect();
    let ids = publish(ns, &tasks).await;
    tap.wait_until(
        "every task dead-lettered",
        Duration::from_secs(60),
        |events| {
            events
                .iter()
                .filter(|e| e.kind == "node.dead_lettered")
                .count()
                >= n
        },
    )
    .await;
    worker.stop().await;
    ids
}

/// Collects the `operator.action` events of `ns` as published (with `by` and `via`).
pub async fn tap_actions(ns: &TestNs) -> Arc<Mutex<Vec<Value>>> {
    tap(ns, "operator.action").await
}

/// Collects the events of `ns` matching `pattern` as published (unknown fields kept), through
/// the same subscription the producer follows events with.
pub async fn tap(ns: &TestNs, pattern: &str) -> Arc<Mutex<Vec<Value>>> {
    let mut sub = Subscription::open(&ns.broker(), pattern, Duration::from_secs(10))
        .await
        .unwrap();
    let seen = Arc::new(Mutex::new(Vec::new()));
    let sink = Arc::clone(&seen);
    tokio::spawn(async move {
        while let Some(Ok(delivery)) = sub.next().await {
            let raw = secflow_common::events::decode_raw(&delivery.data).unwrap();
            let mut sink = sink.lock().unwrap();
            sink.extend(
                raw.iter()
                    .map(|r| serde_json::from_str(r.json.get()).unwrap()),
            );
        }
    });
    seen
}
