//! The inspector's control commands against the real Redis and RabbitMQ: each command changes
//! the fleet's controls as it says, prints them (`--json` parses), announces the change as an
//! `operator.action` event, never needs the DLQ lock, and refuses bad input clearly.

use futures_util::StreamExt;
use secflow_common::{
    config::DEFAULT_REDIS_URL,
    control::{ControlStore, HoldMode, Level, breaker_key, registry::WorkerRecord},
    now_ms,
};
use secflow_tests::{TestNs, inspector, stdout, wait_for};
use serde_json::Value;
use std::{
    process::Output,
    sync::{Arc, Mutex},
    time::Duration,
};

fn store(ns: &TestNs) -> ControlStore {
    ControlStore::new(DEFAULT_REDIS_URL, &ns.name).unwrap()
}

fn json_of(out: &Output) -> Value {
    serde_json::from_str(stdout(out).trim()).unwrap()
}

/// The stderr of a command that must have failed.
fn failure(out: &Output) -> String {
    assert!(
        !out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stdout)
    );
    String::from_utf8_lossy(&out.stderr).into_owned()
}

async fn redis() -> redis::aio::MultiplexedConnection {
    redis::Client::open(DEFAULT_REDIS_URL)
        .unwrap()
        .get_multiplexed_async_connection()
        .await
        .unwrap()
}

/// Collects the raw `operator.action` events of the namespace.
async fn tap_actions(ns: &TestNs) -> Arc<Mutex<Vec<Value>>> {
    let ch = ns.conn.create_channel().await.unwrap();
    let mut consumer = secflow_common::events::subscribe(&ch, &ns.topology(), "operator.action")
        .await
        .unwrap();
    let seen = Arc::new(Mutex::new(Vec::new()));
    let sink = Arc::clone(&seen);
    tokio::spawn(async move {
        let _ch = ch;
        while let Some(Ok(d)) = consumer.next().await {
            let events: Vec<Value> = serde_json::from_slice(&d.data).unwrap();
            sink.lock().unwrap().extend(events);
        }
    });
    seen
}

/// Proves: `breaker open|disable|close|enable` write and lift holds (close also resets the
/// stored state), `breakers` lists stored and held breakers, each change is announced with its
/// action, target, reason and author, the DLQ lock is never needed, and mistakes are errors.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn breaker_commands_hold_reset_list_and_announce() {
    let ns = TestNs::new().await;
    let actions = tap_actions(&ns).await;
    // Another inspector holds the DLQ: control commands must not care.
    let lock_ch = ns.conn.create_channel().await.unwrap();
    ns.topology().lock_dlq(&lock_ch).await.unwrap();
    assert!(
        failure(&inspector(&ns, &["stats", "--lock-wait", "0"])).contains("another dlq-inspector")
    );

    let before = now_ms();
    let opened = json_of(&inspector(
        &ns,
        &[
            "breaker", "open", "svc-a", "--for", "10m", "--reason", "upgrade", "--by", "alice",
            "--json",
        ],
    ));
    assert_eq!(opened["state"]["mode"], "open");
    assert_eq!(opened["event_published"], true);
    let controls = store(&ns).read().await.unwrap();
    let hold = &controls.breakers["svc-a"];
    assert_eq!(
        (hold.mode, hold.by.as_str(), hold.reason.as_str()),
        (HoldMode::Open, "alice", "upgrade")
    );
    let until = hold.until_ms.unwrap();
    assert!(
        until >= before + 600_000 && until <= now_ms() + 600_000,
        "{until}"
    );
    stdout(&inspector(
        &ns,
        &["breaker", "disable", "svc-b", "--by", "bob"],
    ));
    let mut conn = redis().await;
    let opened_at = now_ms();
    let record = format!(
        r#"4|{{"mode":"open","failures":[1,2,3],"opened_at_ms":{opened_at},"open_ms":60000,"probes":0,"successes":0,"future_field":1}}"#
    );
    redis::cmd("SET")
        .arg(breaker_key(&ns.name, "svc-c"))
        .arg(&record)
        .query_async::<()>(&mut conn)
        .await
        .unwrap();

    let listed = json_of(&inspector(&ns, &["breakers", "--json"]));
    let rows: Vec<(String, String)> = listed["breakers"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| {
            (
                r["service"].as_str().unwrap().into(),
                r["state"].as_str().unwrap().into(),
            )
        })
        .collect();
    let want = [
        ("svc-a", "held_open"),
        ("svc-b", "disabled"),
        ("svc-c", "open"),
    ];
    assert_eq!(rows, want.map(|(a, b)| (a.to_string(), b.to_string())));
    let c = &listed["breakers"][2];
    assert_eq!(
        (c["failures"].as_u64(), c["open_until_ms"].as_u64()),
        (Some(3), Some(opened_at + 60_000))
    );
    let text = stdout(&inspector(&ns, &["breakers"]));
    assert!(
        text.contains("by alice") && text.contains("until enabled"),
        "{text}"
    );

    stdout(&inspector(
        &ns,
        &[
            "breaker", "close", "svc-c", "--reason", "fixed", "--by", "carol",
        ],
    ));
    let left: Option<String> = redis::cmd("GET")
        .arg(breaker_key(&ns.name, "svc-c"))
        .query_async(&mut conn)
        .await
        .unwrap();
    assert_eq!(left, None, "close resets the stored state");
    stdout(&inspector(
        &ns,
        &["breaker", "close", "svc-a", "--by", "carol"],
    ));
    stdout(&inspector(
        &ns,
        &["breaker", "enable", "svc-b", "--by", "bob"],
    ));
    assert!(
        store(&ns).read().await.unwrap().breakers.is_empty(),
        "every hold lifted"
    );
    let listed = json_of(&inspector(&ns, &["breakers", "--json"]));
    assert_eq!(listed["breakers"].as_array().unwrap().len(), 0);

    wait_for(
        "five operator.action events",
        Duration::from_secs(10),
        || async { actions.lock().unwrap().len() >= 5 },
    )
    .await;
    let seen: Vec<(String, String, String)> = actions
        .lock()
        .unwrap()
        .iter()
        .map(|e| {
            let s = |k: &str| e[k].as_str().unwrap_or_default().to_string();
            (s("action"), s("target"), s("by"))
        })
        .collect();
    let want = [
        ("breaker.open", "svc-a", "alice"),
        ("breaker.disable", "svc-b", "bob"),
        ("breaker.close", "svc-c", "carol"),
        ("breaker.close", "svc-a", "carol"),
        ("breaker.enable", "svc-b", "bob"),
    ];
    assert_eq!(seen, want.map(|(a, t, b)| (a.into(), t.into(), b.into())));
    let first = actions.lock().unwrap()[0].clone();
    assert_eq!(
        (first["kind"].as_str(), first["reason"].as_str()),
        (Some("operator.action"), Some("upgrade"))
    );
    assert!(first["at_ms"].as_u64().unwrap() >= before);

    assert!(
        failure(&inspector(
            &ns,
            &["breaker", "open", "svc-a", "--for", "5x"]
        ))
        .contains("unknown unit")
    );
    assert!(
        failure(&inspector(
            &ns,
            &["breaker", "open", "svc-a", "--for", "0s"]
        ))
        .contains("positive")
    );
    assert!(failure(&inspector(&ns, &["breaker", "open"])).contains("<SERVICE>"));
    assert!(
        failure(&inspector(&ns, &["breaker", "shut", "svc-a"])).contains("invalid value 'shut'")
    );
    assert!(failure(&inspector(&ns, &["breaker", "open", "a b"])).contains("not a service name"));
    assert!(
        failure(&inspector(
            &ns,
            &["breaker", "close", "svc-a", "--for", "1m"]
        ))
        .contains("--for applies")
    );
    let no_redis = inspector(&ns, &["--redis-url", "redis://127.0.0.1:1/", "breakers"]);
    assert!(failure(&no_redis).contains("Redis at redis://127.0.0.1:1/"));
    assert!(
        store(&ns).read().await.unwrap().breakers.is_empty(),
        "no mistake changed anything"
    );
}

/// Proves: `pause`/`resume` add and remove a paused type; `degrade` shows the level, sets a
/// manual one and hands it back to the controller with `auto`; bad types and levels are errors.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pause_resume_and_degrade() {
    let ns = TestNs::new().await;
    let paused = json_of(&inspector(
        &ns,
        &[
            "pause",
            "scan.nuclei",
            "--reason",
            "noisy",
            "--by",
            "dave",
            "--json",
        ],
    ));
    assert_eq!(
        (paused["action"].as_str(), paused["state"]["by"].as_str()),
        (Some("pause"), Some("dave"))
    );
    let p = &store(&ns).read().await.unwrap().paused["scan.nuclei"];
    assert_eq!((p.reason.as_str(), p.by.as_str()), ("noisy", "dave"));
    let out = stdout(&inspector(&ns, &["resume", "scan.nuclei", "--by", "dave"]));
    assert!(out.contains("type scan.nuclei resumed"), "{out}");
    assert!(store(&ns).read().await.unwrap().paused.is_empty());
    assert!(failure(&inspector(&ns, &["pause", "Not A Type"])).contains("not a valid node type"));

    let shown = json_of(&inspector(&ns, &["degrade", "--json"]));
    assert_eq!(
        (shown["level"].as_str(), shown["auto"].as_bool()),
        (Some("full"), Some(true))
    );
    stdout(&inspector(
        &ns,
        &["degrade", "low", "--reason", "incident 42", "--by", "erin"],
    ));
    let level = store(&ns).read().await.unwrap().level;
    assert_eq!(
        (level.level, level.auto, level.by.as_str()),
        (Level::Low, false, "erin")
    );
    let text = stdout(&inspector(&ns, &["degrade"]));
    assert!(
        text.contains("level low (manual) since") && text.contains("erin: incident 42"),
        "{text}"
    );
    let auto = json_of(&inspector(&ns, &["degrade", "auto", "--json"]));
    assert_eq!(
        (
            auto["state"]["level"].as_str(),
            auto["state"]["auto"].as_bool()
        ),
        (Some("low"), Some(true))
    );
    assert!(store(&ns).read().await.unwrap().level.auto);
    let bad = failure(&inspector(&ns, &["degrade", "lowest"]));
    assert!(bad.contains("unknown degradation level `lowest`"), "{bad}");
    assert_eq!(
        store(&ns).read().await.unwrap().level.level,
        Level::Low,
        "unchanged"
    );
}

/// Proves: `workers` lists the records workers write with `ControlStore::beat` and marks one
/// that stopped beating as unresponsive.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn workers_lists_the_registry_and_marks_silent_ones() {
    let ns = TestNs::new().await;
    let now = now_ms();
    let record = |id: &str, last_beat_ms| WorkerRecord {
        id: id.into(),
        live: format!("{id}-live"),
        pool: "default".into(),
        version: "0.1.0".into(),
        host: "node-1".into(),
        pid: 42,
        started_ms: now - 120_000,
        last_beat_ms,
        beat_ms: 1_000,
        in_flight: 3,
        done: 250,
        failed: 4,
        rss_bytes: 96 << 20,
        level: Level::Medium,
        state: "consuming".into(),
        max_rss_bytes: 0,
        open_breakers: Vec::new(),
        queue_wait_ms: 0,
        queue_wait_at_ms: 0,
        settled: 0,
    };
    let s = store(&ns);
    s.beat(&record("w-alive", now)).await.unwrap();
    s.beat(&record("w-silent", now - 60_000)).await.unwrap();
    let listed = json_of(&inspector(&ns, &["workers", "--json"]));
    let workers = listed["workers"].as_array().unwrap();
    assert_eq!(workers.len(), 2);
    let by_id = |id: &str| workers.iter().find(|w| w["id"] == id).unwrap().clone();
    assert_eq!(by_id("w-alive")["unresponsive"], false);
    assert_eq!(by_id("w-silent")["unresponsive"], true);
    assert!(by_id("w-silent")["heartbeat_age_ms"].as_u64().unwrap() >= 60_000);
    assert_eq!(
        (
            by_id("w-alive")["done"].as_u64(),
            by_id("w-alive")["level"].as_str()
        ),
        (Some(250), Some("medium"))
    );
    let text = stdout(&inspector(&ns, &["workers"]));
    assert!(text.contains("UNRESPONSIVE (was consuming)"), "{text}");
    assert!(text.contains("2 workers, 1 unresponsive"), "{text}");
    assert!(text.contains("node-1") && text.contains("96"), "{text}");
}

/// Proves: a worker process stopped with SIGTERM removes its registry record before it exits, so
/// it is never listed (let alone as unresponsive) afterwards.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_worker_stopped_cleanly_leaves_the_registry() {
    let ns = TestNs::new().await;
    let mut worker = ns.spawn_worker_process(&["--worker-id", "leaving"]);
    let listed = || {
        let out = json_of(&inspector(&ns, &["workers", "--json"]));
        out["workers"]
            .as_array()
            .map(|w| w.iter().any(|w| w["id"] == "leaving"))
            .unwrap_or(false)
    };
    secflow_tests::wait_for("the worker registered", Duration::from_secs(20), || async {
        listed()
    })
    .await;
    secflow_tests::stop_gracefully(&mut worker).await;
    assert!(
        !listed(),
        "a cleanly stopped worker is still in the registry"
    );
}
