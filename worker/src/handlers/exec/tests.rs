//! Unit tests of the `exec` handler: output, classification, timeouts, process groups.

use super::*;

const T: Duration = Duration::from_secs(10);

async fn run_default(config: &Value, timeout: Duration, max: usize) -> Result<Value, TaskError> {
    run(
        &ExecPolicy::any(),
        "t",
        config,
        timeout,
        max,
        &Classifier::defaults(),
    )
    .await
}

#[tokio::test]
async fn captures_output_and_exit_code() {
    let out = run_default(
        &json!({"argv": ["sh", "-c", "echo hi; echo warn >&2"]}),
        T,
        1024,
    )
    .await
    .unwrap();
    assert_eq!(out["stdout"], "hi\n");
    assert_eq!(out["stderr"], "warn\n");
}

#[tokio::test]
async fn output_is_bounded() {
    let out = run_default(
        &json!({"argv": ["sh", "-c", "head -c 100000 /dev/zero"]}),
        T,
        1000,
    )
    .await
    .unwrap();
    assert_eq!(out["stdout"].as_str().unwrap().len(), 1000);
    assert_eq!(out["stdout_truncated"], true);
}

#[tokio::test]
async fn failures_are_classified() {
    let err = run_default(
        &json!({"argv": ["sh", "-c", "echo 'connect: Connection refused' >&2; exit 7"]}),
        T,
        1024,
    )
    .await
    .unwrap_err();
    assert_eq!(
        (err.class, err.code.as_str()),
        (ErrorClass::Transient, "connection_refused")
    );
    let err = run_default(&json!({"argv": ["/nonexistent/tool"]}), T, 1024)
        .await
        .unwrap_err();
    assert_eq!(err.code, "executable_not_found");
    let err = run_default(&json!({"argv": []}), T, 1024)
        .await
        .unwrap_err();
    assert_eq!(err.class, ErrorClass::Validation);
}

/// Whether `pid` is a live (not zombie) process.
fn alive(pid: &str) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/stat")).is_ok_and(|stat| {
        stat.rsplit(')')
            .next()
            .is_some_and(|rest| !rest.trim_start().starts_with('Z'))
    })
}

#[tokio::test]
async fn timeout_kills_the_process_group() {
    let pidfile = std::env::temp_dir().join(format!("secflow-exec-{}.pid", std::process::id()));
    // A background grandchild that would live 30 s if only the direct child were killed.
    let script = format!("sleep 30 & echo $! > {}; wait", pidfile.display());
    let err = run_default(
        &json!({"argv": ["sh", "-c", script]}),
        Duration::from_millis(500),
        1024,
    )
    .await
    .unwrap_err();
    assert_eq!(err.code, "timeout");
    let pid = std::fs::read_to_string(&pidfile)
        .unwrap()
        .trim()
        .to_string();
    let _ = std::fs::remove_file(&pidfile);
    let deadline = std::time::Instant::now() + Duration::from_secs(5);
    while alive(&pid) {
        assert!(
            std::time::Instant::now() < deadline,
            "grandchild {pid} outlived the timeout"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test]
async fn reports_cpu_time_and_peak_memory_of_the_program() {
    let out = run_default(
        &json!({"argv": ["python3", "-c", "x = bytearray(64 * 1024 * 1024); print(sum(range(2_000_000)))"]}),
        T,
        1024,
    )
    .await
    .unwrap();
    let usage = &out["usage"];
    assert!(usage["cpu_seconds"].as_f64().unwrap() > 0.0, "{usage}");
    assert!(
        usage["max_rss_bytes"].as_u64().unwrap() >= 64 * 1024 * 1024,
        "{usage}"
    );
    assert_eq!(out["exit_code"], 0);
}

/// Proves: a program gets its stdin (an exec hook's event), and one that never reads a large
/// stdin neither hangs nor fails for it.
#[tokio::test]
async fn stdin_is_fed_and_may_be_ignored() {
    let limits = Limits {
        timeout: T,
        max_output: 1 << 20,
    };
    let cfg = |script: &str| ExecConfig {
        argv: vec!["sh".into(), "-c".into(), script.into()],
        env: BTreeMap::new(),
        cwd: None,
    };
    let policy = ExecPolicy::any();
    let classifier = Classifier::defaults();
    let out = run_program(
        &policy,
        "t",
        &cfg("cat"),
        Some(b"{\"kind\":1}"),
        limits,
        &classifier,
    )
    .await
    .unwrap();
    assert_eq!(out["stdout"], "{\"kind\":1}");
    let big = vec![b'x'; 4 << 20];
    let out = run_program(
        &policy,
        "t",
        &cfg("exit 0"),
        Some(&big),
        limits,
        &classifier,
    )
    .await
    .unwrap();
    assert_eq!(out["exit_code"], 0);
}
