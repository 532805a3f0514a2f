//! Hostile input against a real worker: forged and unsigned tasks, oversized messages, `exec`
//! outside its allowlist or trying to escape its sandbox, and secrets in error texts.

use lapin::BasicProperties;
use secflow_common::{TaskEnvelope, headers as h, signing::Keyring};
use secflow_producer::publish_tasks;
use secflow_tests::{TestNs, command, publish, request};
use serde_json::{Value, json};
use std::{collections::HashMap, process::Stdio, time::Duration};

fn props_for(task: &TaskEnvelope) -> BasicProperties {
    secflow_common::amqp::json_properties(&task.task_id.to_string(), Default::default())
}

/// Publishes `sent` to `exec` with the signature `keyring` makes for `signed` (the same task,
/// unless the test swaps the body in transit).
async fn signed_by(ns: &TestNs, keyring: &Keyring, signed: &TaskEnvelope, sent: &TaskEnvelope) {
    let mut headers = lapin::types::FieldTable::default();
    keyring.sign(&mut headers, &signed.task_id.to_string(), &signed.to_body());
    ns.publish_unsigned(
        "exec",
        &sent.to_body(),
        props_for(signed).with_headers(headers),
    )
    .await;
}

/// DLQ messages by task id: (reason, class, code, message).
async fn dead_letters(ns: &TestNs, n: usize) -> HashMap<String, (String, String, String, String)> {
    ns.take_dlq(n, Duration::from_secs(20))
        .await
        .into_iter()
        .map(|d| {
            let hd = d.properties.headers().as_ref();
            let get = |k| h::get_str(hd, k).unwrap_or_default().to_string();
            let id = d
                .properties
                .message_id()
                .as_ref()
                .map(|m| m.to_string())
                .unwrap_or_default();
            (
                id,
                (
                    get(h::DEAD_LETTER_REASON),
                    get(h::ERROR_CLASS),
                    get(h::ERROR_CODE),
                    get(h::ERROR_MESSAGE),
                ),
            )
        })
        .collect()
}

/// Proves: unsigned, forged (wrong key, tampered body, unknown key id) and oversized messages
/// are dead-lettered as `security` / `too_large` without running (the side-effect file stays
/// empty), while a properly signed task completes and a key rotation keeps old tasks valid.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn forged_unsigned_and_oversized_tasks_never_run() {
    let ns = TestNs::new().await;
    let effects = std::env::temp_dir().join(format!("{}-effects", ns.name));
    let _ = std::fs::remove_file(&effects);
    let probe = |tag: &str| {
        TaskEnvelope::new(
            "exec",
            json!({"argv": ["sh", "-c", format!("echo {tag} >> {}", effects.display())]}),
        )
    };
    let mut cfg = ns.worker_config();
    cfg.broker.max_message_bytes = 64 * 1024;
    // Rotation: the worker signs with `new` and still accepts `test`.
    cfg.broker.signing = secflow_common::signing::SigningArgs::with_key(&format!(
        "new:rotated-secret-0123456789,{}",
        secflow_tests::TEST_SIGNING_KEY
    ));
    let tap = ns.tap_events().await;
    let worker = ns.spawn_worker(cfg);

    let unsigned = probe("unsigned");
    ns.publish_unsigned("exec", &unsigned.to_body(), props_for(&unsigned))
        .await;
    let wrong_key = probe("wrong-key");
    let attacker = Keyring::parse("test:an-attackers-guess-at-the-key").unwrap();
    signed_by(&ns, &attacker, &wrong_key, &wrong_key).await;
    // A signed task whose body was swapped for another command in transit.
    let tampered = probe("original");
    let mut evil = tampered.clone();
    evil.config = json!({"argv": ["sh", "-c", format!("echo tampered >> {}", effects.display())]});
    signed_by(&ns, &secflow_tests::test_keyring(), &tampered, &evil).await;
    let unknown_key = probe("unknown-key");
    let retired = Keyring::parse("old:retired-secret-0123456789").unwrap();
    signed_by(&ns, &retired, &unknown_key, &unknown_key).await;
    let mut big = TaskEnvelope::new("builtin.echo", json!({"blob": "x".repeat(100 * 1024)}));
    big.node_id = "big".into();
    ns.publish_raw("builtin.echo", &big.to_body(), props_for(&big))
        .await;
    let good = publish(&ns, &[probe("good")]).await[0];

    let dead = dead_letters(&ns, 5).await;
    tap.wait_until("the signed task completed", Duration::from_secs(20), |ev| {
        ev.iter()
            .any(|e| e.task_id == Some(good) && e.kind == "node.completed")
    })
    .await;
    worker.stop().await;
    let expect = [
        (&unsigned, "security", "unsigned"),
        (&wrong_key, "security", "bad_signature"),
        (&tampered, "security", "bad_signature"),
        (&unknown_key, "security", "unknown_signing_key"),
        (&big, "malformed", "too_large"),
    ];
    for (task, reason, code) in expect {
        let (r, class, c, message) = &dead[&task.task_id.to_string()];
        assert_eq!((r.as_str(), c.as_str()), (reason, code), "{message}");
        if reason == "security" {
            assert_eq!(class, "security");
        } else {
            assert!(message.contains("65536-byte limit"), "{message}");
        }
    }
    assert_eq!(
        std::fs::read_to_string(&effects).unwrap(),
        "good\n",
        "only the signed task ran"
    );
    let _ = std::fs::remove_file(&effects);
}

/// Proves: a worker refuses to start without a signing key unless signing is disabled
/// explicitly; a producer refuses to publish without one; `--insecure-no-signing` runs
/// unsigned tasks.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn signing_is_required_unless_disabled_explicitly() {
    let ns = TestNs::new().await;
    let out = command("worker")
        .env_remove("SECFLOW_SIGNING_KEY")
        .args(["--namespace", &ns.name])
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("no task signing key") && err.contains("--insecure-no-signing"),
        "{err}"
    );
    let out = command("producer")
        .env_remove("SECFLOW_SIGNING_KEY")
        .args(["--namespace", &ns.name, "publish", "--type", "builtin.echo"])
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("no task signing key"));

    let mut cfg = ns.worker_config();
    cfg.broker.signing = secflow_common::signing::SigningArgs {
        insecure_no_signing: true,
        ..Default::default()
    };
    let tap = ns.tap_events().await;
    let worker = ns.spawn_worker(cfg);
    let task = TaskEnvelope::new("builtin.echo", json!({"n": 1}));
    ns.publish_unsigned("builtin.echo", &task.to_body(), props_for(&task))
        .await;
    tap.wait_until("the unsigned task ran", Duration::from_secs(20), |ev| {
        ev.iter()
            .any(|e| e.task_id == Some(task.task_id) && e.kind == "node.completed")
    })
    .await;
    worker.stop().await;
}

/// Proves the `exec` sandbox: allowed programs run with a scrubbed environment in a private
/// working directory that is removed afterwards; programs outside the allowlist and loader
/// variables are security failures; the memory limit holds; a missing allowed program is a
/// validation failure.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn exec_runs_only_allowed_programs_in_a_scrubbed_sandbox() {
    let ns = TestNs::new().await;
    let root = std::env::temp_dir().join(format!("{}-workdirs", ns.name));
    let tap = ns.tap_events().await;
    let mut worker = command("worker")
        .env("WORKER_ONLY_SECRET", "must-not-leak")
        .args(["--namespace", &ns.name, "--log-format", "text"])
        .args(["--exec-allow", "sh,python3,/no/such/scanner"])
        .args([
            "--exec-workdir",
            root.to_str().unwrap(),
            "--exec-memory-mb",
            "256",
        ])
        .stdout(Stdio::null())
        .spawn()
        .unwrap();
    let broker = ns.broker();
    let broker = &broker;
    let run = |argv: Value| async move {
        publish_tasks(broker, &request("exec", json!({ "argv": argv }), 1))
            .await
            .unwrap()[0]
    };
    let env = run(json!(["sh", "-c", "env; pwd; touch left-behind"])).await;
    let missing = run(json!(["/no/such/scanner", "-t", "x"])).await;
    let not_allowed = run(json!(["cat", "/etc/hostname"])).await;
    // One attempt: an out-of-memory failure is a `resource` one, retried only after long waits.
    let mut alloc = request(
        "exec",
        json!({"argv": ["python3", "-c", "b = bytearray(1024 * 1024 * 1024)"]}),
        1,
    );
    alloc.retry = Some(serde_json::from_value(json!({"max_attempts": 1})).unwrap());
    let big_alloc = publish_tasks(broker, &alloc).await.unwrap()[0];
    let preload = publish_tasks(
        &ns.broker(),
        &request(
            "exec",
            json!({"argv": ["sh", "-c", "true"], "env": {"LD_PRELOAD": "/tmp/evil.so"}}),
            1,
        ),
    )
    .await
    .unwrap()[0];
    let ids = [env, missing, not_allowed, big_alloc, preload];
    tap.wait_until("every exec task ended", Duration::from_secs(30), |ev| {
        ids.iter().all(|id| {
            ev.iter().any(|e| {
                e.task_id == Some(*id)
                    && (e.kind == "node.completed" || e.kind == "node.dead_lettered")
            })
        })
    })
    .await;
    secflow_tests::stop_gracefully(&mut worker).await;
    let events = tap.snapshot();
    let end = |id| {
        events
            .iter()
            .find(|e| {
                e.task_id == Some(id)
                    && (e.kind == "node.completed" || e.kind == "node.dead_lettered")
            })
            .unwrap()
            .clone()
    };
    let out = end(env).output.unwrap();
    let stdout = out["stdout"].as_str().unwrap();
    for leaked in [
        "WORKER_ONLY_SECRET",
        "SECFLOW_",
        "AMQP_URL",
        "must-not-leak",
    ] {
        assert!(
            !stdout.contains(leaked),
            "{leaked} reached the program:\n{stdout}"
        );
    }
    let cwd = stdout.lines().last().unwrap();
    assert!(cwd.starts_with(root.to_str().unwrap()), "ran in {cwd}");
    assert!(stdout.contains(&format!("HOME={cwd}")), "{stdout}");
    assert!(
        !std::path::Path::new(cwd).exists(),
        "the task's working directory {cwd} was removed"
    );
    let code = |id| {
        let e = end(id);
        let err = e.error.unwrap();
        (e.kind, err.class, err.code)
    };
    let dead = |class: &str, c: &str| {
        (
            "node.dead_lettered".to_string(),
            class.to_string(),
            c.to_string(),
        )
    };
    assert_eq!(code(missing), dead("validation", "executable_not_found"));
    assert_eq!(code(not_allowed), dead("security", "exec_not_allowed"));
    assert_eq!(code(preload), dead("security", "exec_env_forbidden"));
    assert_eq!(
        code(big_alloc),
        dead("resource", "out_of_memory"),
        "a 1 GiB allocation under a 256 MiB limit fails, classified as out of memory"
    );
    let _ = std::fs::remove_dir_all(&root);
}

/// Proves: credentials in error texts are masked in the DLQ headers and the events (and the
/// worker's logs), while the rest of the message stays readable.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn secrets_are_redacted_from_dlq_headers_events_and_logs() {
    let ns = TestNs::new().await;
    let tap = ns.tap_events().await;
    let log = std::env::temp_dir().join(format!("{}-worker.log", ns.name));
    let mut worker = command("worker")
        .args(["--namespace", &ns.name, "--log-format", "json"])
        .args(["--redact-pattern", "CORP-[0-9]{6}"])
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(&log).unwrap())
        .spawn()
        .unwrap();
    let message = "GET https://scanner:hunter2pass@api.internal/x failed: Authorization: Bearer \
                   abcdef0123456789 rejected, api_key=AKIAIOSFODNN7EXAMPLE ticket CORP-123456";
    let id = publish_tasks(
        &ns.broker(),
        &request(
            "builtin.fail",
            json!({"class": "permanent", "code": "auth_failed", "message": message}),
            1,
        ),
    )
    .await
    .unwrap()[0];
    let dead = dead_letters(&ns, 1).await;
    let (_, _, code, header) = &dead[&id.to_string()];
    assert_eq!(code, "auth_failed");
    tap.wait_until("the dead-letter event", Duration::from_secs(20), |ev| {
        ev.iter()
            .any(|e| e.task_id == Some(id) && e.kind == "node.dead_lettered")
    })
    .await;
    secflow_tests::stop_gracefully(&mut worker).await;
    let event = tap
        .snapshot()
        .into_iter()
        .find(|e| e.task_id == Some(id) && e.kind == "node.dead_lettered")
        .unwrap();
    let logs = std::fs::read_to_string(&log).unwrap();
    let _ = std::fs::remove_file(&log);
    assert!(logs.contains("auth_failed"), "the failure was logged");
    for (place, text) in [
        ("DLQ header", header.as_str()),
        ("event", event.error.as_ref().unwrap().message.as_str()),
        ("logs", logs.as_str()),
    ] {
        for secret in [
            "hunter2pass",
            "abcdef0123456789",
            "AKIAIOSFODNN7EXAMPLE",
            "CORP-123456",
        ] {
            assert!(
                !text.contains(secret),
                "{secret} leaked into the {place}: {text}"
            );
        }
    }
    assert!(
        header.contains("https://scanner:[REDACTED]@api.internal/x failed"),
        "{header}"
    );
}

/// Proves: each kind of poison message (not JSON, wrong schema, wrong field types, invalid
/// UTF-8, unknown node type) is dead-lettered with its own reason and code, and the worker goes
/// on to complete a good task.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn poison_messages_are_dead_lettered_with_their_reason_and_the_worker_goes_on() {
    let ns = TestNs::new().await;
    let tap = ns.tap_events().await;
    let worker = ns.spawn_worker(ns.worker_config());
    let with_id = |id: &str| {
        BasicProperties::default()
            .with_message_id(id.into())
            .with_delivery_mode(2)
    };
    let mut unknown = TaskEnvelope::new("scan.nonexistent", json!({}));
    unknown.node_id = "x".into();
    let cases: Vec<(String, Vec<u8>, &str, &str, &str)> = vec![
        (
            "p-not-json".into(),
            b"not json {".to_vec(),
            "builtin.echo",
            "malformed",
            "malformed_body",
        ),
        (
            "p-schema".into(),
            br#"{"schema":1,"hello":"world"}"#.to_vec(),
            "builtin.echo",
            "malformed",
            "invalid_envelope",
        ),
        (
            "p-types".into(),
            br#"{"schema":"one","task_id":5,"node_id":[],"type":7,"created_at_ms":"now"}"#.to_vec(),
            "builtin.echo",
            "malformed",
            "invalid_envelope",
        ),
        (
            "p-utf8".into(),
            b"{\"schema\":1,\"node_id\":\"\xff\xfe\"}".to_vec(),
            "builtin.echo",
            "malformed",
            "malformed_body",
        ),
        (
            unknown.task_id.to_string(),
            unknown.to_body(),
            "scan.nonexistent",
            "validation",
            "unknown_type",
        ),
    ];
    for (id, body, key, _, _) in &cases {
        ns.publish_raw(key, body, with_id(id)).await;
    }
    let dead = dead_letters(&ns, cases.len()).await;
    for (id, _, _, reason, code) in &cases {
        let (r, _, c, message) = &dead[id];
        assert_eq!(
            (r.as_str(), c.as_str()),
            (*reason, *code),
            "{id}: {message}"
        );
        assert!(!message.is_empty(), "{id}: the DLQ says why");
    }
    let good = publish(
        &ns,
        &[TaskEnvelope::new(
            "builtin.echo",
            json!({"after": "poison"}),
        )],
    )
    .await[0];
    tap.wait_until(
        "a good task after the poison",
        Duration::from_secs(20),
        |ev| {
            ev.iter()
                .any(|e| e.task_id == Some(good) && e.kind == "node.completed")
        },
    )
    .await;
    worker.stop().await;
}
