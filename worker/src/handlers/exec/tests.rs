//! Unit tests of the `exec` handler: output, classification, timeouts, process groups.

use super::*;

const T: Duration = Duration::from_secs(10);

async fn run_default(config: &Value, timeout: Duration, max: usize) -> Result<Value, TaskError> {
    run_with_inputs(config, &Map::new(), timeout, max).await
}

async fn run_with_inputs(
    config: &Value,
    inputs: &Map<String, Value>,
    timeout: Duration,
    max_output: usize,
) -> Result<Value, TaskError> {
    let limits = Limits {
        timeout,
        max_output,
    };
    let classifier = Classifier::defaults();
    let attempt = Attempt {
        task_id: "t",
        retry: 0,
        requeue: 0,
        success_exit_codes: &[0],
    };
    run(
        &ExecPolicy::any(),
        attempt,
        config,
        inputs,
        limits,
        &classifier,
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

/// Proves: `${inputs.NAME:file}` arguments get the path of a file in the task's working
/// directory holding the input one item a line (objects as JSON), written once per input; the
/// file goes with the directory; a missing input is a validation error.
#[tokio::test]
async fn file_arguments_get_a_file_of_the_input() {
    let inputs = json!({"urls": ["http://a/1", "http://a/2", {"u": 3}], "body": "one line"});
    let inputs = inputs.as_object().unwrap().clone();
    let script = r#"cat "$1"; echo "--"; cat "$2"; echo "--$3--"; echo "$1""#;
    let config = json!({"argv": ["sh", "-c", script, "_", "${inputs.urls:file}", "${inputs.body:file}", "x=${inputs.urls:file}"]});
    let out = run_with_inputs(&config, &inputs, T, 4096).await.unwrap();
    let stdout = out["stdout"].as_str().unwrap();
    let (shown, path) = stdout.trim_end().rsplit_once('\n').unwrap();
    assert!(
        path.starts_with('/') && path.ends_with("/input-urls.txt"),
        "{stdout}"
    );
    assert_eq!(
        shown,
        format!("http://a/1\nhttp://a/2\n{{\"u\":3}}\n--\none line\n--x={path}--")
    );
    assert!(
        !std::path::Path::new(path).exists(),
        "the file went with its directory"
    );
    let err = run_with_inputs(
        &json!({"argv": ["cat", "${inputs.nope:file}"]}),
        &inputs,
        T,
        4096,
    )
    .await
    .unwrap_err();
    assert_eq!(
        (err.class, err.code.as_str()),
        (ErrorClass::Validation, "missing_input")
    );
    assert!(
        err.message.contains("config.argv[1]") && err.message.contains("`nope`"),
        "{}",
        err.message
    );
}

/// Proves: the task's environment reaches the program and not the shim between it and the
/// worker (the shim holds the Redis credentials; a task's `LOCALDOMAIN` or `RES_OPTIONS` must
/// not steer its resolver): the program's parent, the shim, has an empty environment.
#[tokio::test]
async fn the_tasks_environment_reaches_the_program_only() {
    let out = run_default(
        &json!({"argv": ["sh", "-c", "tr '\\0' '\\n' < /proc/$PPID/environ; echo \"--- $MARK\""], "env": {"MARK": "set", "LOCALDOMAIN": "evil.test"}}),
        T,
        4096,
    )
    .await
    .unwrap();
    assert_eq!(out["stdout"], "--- set\n", "{out}");
}
