//! A run's keys in the real Redis all expire with the run: its specs, state, outputs, records,
//! compensations and hooks get the run's TTL when it is stored and again on every change, so
//! nothing of a finished run stays for ever.

use redis::aio::MultiplexedConnection;
use secflow_common::runs::{RUN_TTL_SECS, Rewind, RunStore};
use secflow_producer::recipes::submit;
use secflow_tests::{TestNs, recipe_file};
use std::{
    collections::{BTreeMap, BTreeSet},
    time::Duration,
};

/// A recipe whose first node has a compensation and whose run has hooks; `scan` fails when
/// `fail`, which makes the compensation run.
fn recipe(fail: bool) -> String {
    format!(
        r#"
version: 1
name: retained
nodes:
  - {{ id: provision, type: builtin.echo, config: {{ sandbox: "sb-1" }}, outputs: [echo], compensate: teardown }}
  - {{ id: scan, type: builtin.fail, inputs: {{ sb: provision.echo }}, config: {{ class: permanent {} }} }}
  - {{ id: teardown, type: builtin.echo, inputs: {{ sb: provision.echo }}, config: {{ undo: "${{inputs.sb}}" }} }}
hooks:
  on_workflow_complete:
    - url: "http://127.0.0.1:9/never"
"#,
        if fail { "" } else { ", times: 0" }
    )
}

async fn connection() -> MultiplexedConnection {
    redis::Client::open(secflow_common::config::DEFAULT_REDIS_URL)
        .unwrap()
        .get_multiplexed_async_connection()
        .await
        .unwrap()
}

/// Every key matching the run's pattern (SCAN) with its PTTL in ms.
async fn run_ttls(
    conn: &mut MultiplexedConnection,
    runs: &RunStore,
    run: &str,
) -> BTreeMap<String, i64> {
    let mut keys = BTreeSet::new();
    let mut cursor: u64 = 0;
    loop {
        let (next, batch): (u64, Vec<String>) = redis::cmd("SCAN")
            .arg(cursor)
            .arg("MATCH")
            .arg(runs.keys_pattern(run))
            .arg("COUNT")
            .arg(1000)
            .query_async(conn)
            .await
            .unwrap();
        keys.extend(batch);
        if next == 0 {
            break;
        }
        cursor = next;
    }
    let mut ttls = BTreeMap::new();
    for key in keys {
        let ttl: i64 = redis::cmd("PTTL")
            .arg(&key)
            .query_async(conn)
            .await
            .unwrap();
        ttls.insert(key, ttl);
    }
    ttls
}

/// The part after the run's hash tag: `outputs`, `nodes`, ...
fn parts(ttls: &BTreeMap<String, i64>) -> BTreeSet<String> {
    ttls.keys()
        .filter_map(|k| k.rsplit_once(':').map(|(_, p)| p.to_string()))
        .collect()
}

fn assert_all_expire(ttls: &BTreeMap<String, i64>, at_least_ms: i64) {
    let max = RUN_TTL_SECS * 1000;
    for (key, ttl) in ttls {
        assert!(
            *ttl > at_least_ms && *ttl <= max,
            "{key} has PTTL {ttl} ms: every key of a run must expire within the run's TTL ({max} ms) and have more than {at_least_ms} ms left"
        );
    }
}

/// Sets every key of the run to expire in `ms` (to see a change give them the full TTL again).
async fn shorten(conn: &mut MultiplexedConnection, ttls: &BTreeMap<String, i64>, ms: i64) {
    for key in ttls.keys() {
        redis::cmd("PEXPIRE")
            .arg(key)
            .arg(ms)
            .query_async::<()>(conn)
            .await
            .unwrap();
    }
}

/// Proves: once a run has succeeded, every key of it (outputs and the publish bookkeeping
/// included, written only as nodes end) expires within the run's TTL; cancelling a run gives
/// every key the full TTL again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_key_of_a_finished_run_expires() {
    let ns = TestNs::new().await;
    let worker = ns.spawn_worker(ns.worker_config());
    let wait = Some(Duration::from_secs(30));
    let path = recipe_file(&ns, "ok", &recipe(false));
    let run = submit(&ns.broker(), &path, &BTreeMap::new(), wait, false)
        .await
        .unwrap();
    assert_eq!(run.status.as_deref(), Some("succeeded"));
    worker.stop().await;
    let runs = RunStore::new(&ns.broker().redis_url, &ns.name).unwrap();
    let mut conn = connection().await;
    let id = run.run_id.to_string();
    let ttls = run_ttls(&mut conn, &runs, &id).await;
    // `unpublished` is gone once every dependent's publish was confirmed.
    let expected: BTreeSet<String> = [
        "links",
        "state",
        "waiting",
        "outputs",
        "compensations",
        "nodes",
        "hooks",
    ]
    .map(String::from)
    .into();
    assert!(
        parts(&ttls).is_superset(&expected),
        "the run has all its keys: {ttls:?}"
    );
    assert_all_expire(&ttls, 0);

    // A change made from outside (cancel) keeps the whole run alive too. A succeeded run
    // cannot be cancelled, so cancel a fresh one before any worker takes it.
    let pending = submit(&ns.broker(), &path, &BTreeMap::new(), None, false)
        .await
        .unwrap();
    let pending_id = pending.run_id.to_string();
    let before = run_ttls(&mut conn, &runs, &pending_id).await;
    assert!(parts(&before).contains("nodes"), "{before:?}");
    shorten(&mut conn, &before, 60_000).await;
    assert!(runs.cancel(&pending_id).await.unwrap());
    assert_all_expire(&run_ttls(&mut conn, &runs, &pending_id).await, 60_000);
    let _ = std::fs::remove_file(path);
}

/// Proves: a failed run whose compensation ran keeps no key for ever (the compensation's end
/// goes through its own branch of the script), and rewinding its failed node gives every key
/// the full TTL again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_compensated_run_and_its_rewind_expire() {
    let ns = TestNs::new().await;
    let worker = ns.spawn_worker(ns.worker_config());
    let path = recipe_file(&ns, "failed", &recipe(true));
    let run = submit(
        &ns.broker(),
        &path,
        &BTreeMap::new(),
        Some(Duration::from_secs(30)),
        false,
    )
    .await
    .unwrap();
    assert_eq!(run.status.as_deref(), Some("failed"));
    worker.stop().await;
    let runs = RunStore::new(&ns.broker().redis_url, &ns.name).unwrap();
    let id = run.run_id.to_string();
    assert_eq!(
        runs.status(&id).await.unwrap().nodes["teardown"],
        "succeeded"
    );
    let mut conn = connection().await;
    let ttls = run_ttls(&mut conn, &runs, &id).await;
    assert!(parts(&ttls).contains("outputs"), "{ttls:?}");
    assert_all_expire(&ttls, 0);

    shorten(&mut conn, &ttls, 60_000).await;
    assert_eq!(runs.rewind(&id, "scan").await.unwrap(), Rewind::Rewound);
    let after = run_ttls(&mut conn, &runs, &id).await;
    assert_eq!(after.len(), ttls.len(), "{after:?}");
    assert_all_expire(&after, 60_000);
    let _ = std::fs::remove_file(path);
}
