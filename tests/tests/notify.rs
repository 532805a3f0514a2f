//! Notifications against the real RabbitMQ and Redis: `dlq-inspector notify` follows the audit
//! trail and a local webhook receiver gets one message per failure fingerprint within the dedup
//! window (JSON and Slack-compatible), a refused delivery is retried, and a restarted notifier
//! goes on from where it stopped.

use secflow_common::TaskEnvelope;
use secflow_tests::{TestNs, command, publish, wait_for};
use serde_json::{Value, json};
use std::{
    process::{Child, Stdio},
    sync::{Arc, Mutex},
    time::Duration,
};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// A webhook receiver on loopback: records (path, body) of each request it accepts, and
/// answers 503 to the first `refuse` requests.
#[derive(Clone, Default)]
struct Hooks {
    got: Arc<Mutex<Vec<(String, Value)>>>,
    refused: Arc<Mutex<u32>>,
}

impl Hooks {
    async fn start(refuse: u32) -> (Self, u16) {
        let hooks = Self::default();
        *hooks.refused.lock().unwrap() = refuse;
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let me = hooks.clone();
        tokio::spawn(async move {
            while let Ok((mut s, _)) = listener.accept().await {
                let me = me.clone();
                tokio::spawn(async move {
                    let mut buf = Vec::new();
                    let mut chunk = [0u8; 8192];
                    // Headers, then as many body bytes as Content-Length says.
                    let (head, body) = loop {
                        let n = s.read(&mut chunk).await.unwrap_or(0);
                        if n == 0 {
                            return;
                        }
                        buf.extend_from_slice(&chunk[..n]);
                        if let Some(at) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
                            let head = String::from_utf8_lossy(&buf[..at]).to_string();
                            let len: usize = head
                                .lines()
                                .find_map(|l| {
                                    let (k, v) = l.split_once(':')?;
                                    k.eq_ignore_ascii_case("content-length")
                                        .then(|| v.trim().parse().ok())?
                                })
                                .unwrap_or(0);
                            while buf.len() < at + 4 + len {
                                let n = s.read(&mut chunk).await.unwrap_or(0);
                                if n == 0 {
                                    return;
                                }
                                buf.extend_from_slice(&chunk[..n]);
                            }
                            break (head, buf[at + 4..at + 4 + len].to_vec());
                        }
                    };
                    let path = head.split_whitespace().nth(1).unwrap_or("").to_string();
                    let refuse = {
                        let mut left = me.refused.lock().unwrap();
                        let refuse = *left > 0;
                        *left = left.saturating_sub(1);
                        refuse
                    };
                    let status = if refuse {
                        "503 Service Unavailable"
                    } else {
                        let body = serde_json::from_slice(&body).unwrap_or(Value::Null);
                        me.got.lock().unwrap().push((path, body));
                        "200 OK"
                    };
                    let _ = s
                        .write_all(
                            format!("HTTP/1.1 {status}\r\nContent-Length: 0\r\nConnection: close\r\n\r\n")
                                .as_bytes(),
                        )
                        .await;
                });
            }
        });
        (hooks, port)
    }

    fn at(&self, path: &str) -> Vec<Value> {
        self.got
            .lock()
            .unwrap()
            .iter()
            .filter(|(p, _)| p == path)
            .map(|(_, b)| b.clone())
            .collect()
    }
}

fn notifier(ns: &TestNs, port: u16, from: &str) -> Child {
    command("dlq-inspector")
        .env("AMQP_URL", &ns.amqp_url)
        .args(["--namespace", &ns.name, "notify"])
        .args(["--webhook", &format!("http://127.0.0.1:{port}/hook")])
        .args(["--slack", &format!("http://127.0.0.1:{port}/slack")])
        .args(["--from", from, "--dedup-window", "10m"])
        .stdout(Stdio::null())
        .spawn()
        .unwrap()
}

fn failing(code: &str, message: &str) -> TaskEnvelope {
    TaskEnvelope::new(
        "builtin.fail",
        json!({"class": "permanent", "code": code, "message": message}),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_message_per_fingerprint_within_the_dedup_window_and_retried_when_refused() {
    let ns = TestNs::new().await;
    // The first delivery is refused: it must be retried, not lost.
    let (hooks, port) = Hooks::start(1).await;
    let tap = ns.tap_events().await;
    let worker = ns.spawn_worker(ns.worker_config());
    // Five dead letters of one failure (ids and timings differ, the fingerprint does not),
    // two of another, and a security rejection.
    let mut tasks: Vec<TaskEnvelope> = (0..5)
        .map(|i| {
            failing(
                "gone",
                &format!("host 10.0.0.{i} answered 410 after {i}3 ms"),
            )
        })
        .collect();
    tasks.extend((0..2).map(|_| failing("forbidden", "token lacks scope repo:read")));
    tasks.push(TaskEnvelope::new(
        "builtin.fail",
        json!({"class": "security", "code": "scope_violation", "message": "target 8.8.8.8 outside scope"}),
    ));
    publish(&ns, &tasks).await;
    tap.wait_until("8 dead letters", Duration::from_secs(30), |ev| {
        ev.iter().filter(|e| e.kind == "node.dead_lettered").count() == 8
    })
    .await;
    // Started afterwards, from the first event kept: nothing depended on it being up.
    let mut notify = notifier(&ns, port, "first");
    wait_for(
        "three alerts on each destination",
        Duration::from_secs(30),
        || async { hooks.at("/hook").len() >= 3 && hooks.at("/slack").len() >= 3 },
    )
    .await;
    // Give any extra (wrong) alert the time to arrive: the trail was read to its end long ago.
    wait_for(
        "the notifier's position saved",
        Duration::from_secs(10),
        || async { redis_offset(&ns).await.is_some() },
    )
    .await;
    let json_alerts = hooks.at("/hook");
    assert_eq!(json_alerts.len(), 3, "{json_alerts:#?}");
    let mut kinds: Vec<(&str, &str)> = json_alerts
        .iter()
        .map(|a| (a["kind"].as_str().unwrap(), a["severity"].as_str().unwrap()))
        .collect();
    kinds.sort();
    assert_eq!(
        kinds,
        [
            ("dead_letter", "high"),
            ("dead_letter", "high"),
            ("security", "critical")
        ]
    );
    assert!(
        json_alerts
            .iter()
            .all(|a| a["namespace"] == ns.name.as_str())
    );
    let slack = hooks.at("/slack");
    assert_eq!(slack.len(), 3);
    assert!(
        slack.iter().any(|m| m["text"]
            .as_str()
            .unwrap()
            .starts_with("*[CRITICAL] security*")),
        "{slack:#?}"
    );
    // A restarted notifier goes on from its saved position: nothing is sent again.
    stop(&mut notify).await;
    let mut again = notifier(&ns, port, "first");
    publish(&ns, &[failing("teapot", "the scanner answered 418")]).await;
    wait_for(
        "the new failure's alert",
        Duration::from_secs(30),
        || async { hooks.at("/hook").len() == 4 },
    )
    .await;
    let last = hooks.at("/hook").pop().unwrap();
    assert_eq!(last["event"]["error"]["code"], "teapot");
    stop(&mut again).await;
    worker.stop().await;
    assert_eq!(hooks.at("/hook").len(), 4, "nothing was notified twice");
}

async fn redis_offset(ns: &TestNs) -> Option<u64> {
    use redis::AsyncCommands;
    let client = redis::Client::open(secflow_common::config::DEFAULT_REDIS_URL).ok()?;
    let mut conn = client.get_multiplexed_async_connection().await.ok()?;
    conn.hget(format!("sf:{{{}:notify}}", ns.name), "offset")
        .await
        .ok()?
}

async fn stop(child: &mut Child) {
    secflow_tests::stop_gracefully(child).await;
}
