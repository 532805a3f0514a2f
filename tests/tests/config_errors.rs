//! Configuration errors stop the process at once with one clear error (a supervisor then shows
//! a crash loop with the reason); they are never retried.

use secflow_tests::{TestNs, command};
use std::{
    io::Read,
    process::Stdio,
    time::{Duration, Instant},
};

/// Runs the worker with `args` on `ns`; its exit code and stderr, failing if it runs past 10 s.
fn worker_fails(ns: &TestNs, args: &[&str]) -> (i32, String) {
    worker_fails_with(ns, args, &[])
}

/// [`worker_fails`] with environment variables `env` set.
fn worker_fails_with(ns: &TestNs, args: &[&str], env: &[(&str, &str)]) -> (i32, String) {
    let mut child = command("worker")
        .args(["--namespace", &ns.name, "--log-format", "text"])
        .args(args)
        .envs(env.iter().copied())
        .env("RUST_BACKTRACE", "0")
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(10);
    let status = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break status;
        }
        if Instant::now() > deadline {
            child.kill().ok();
            child.wait().ok();
            panic!("the worker was still running after 10 s with {args:?}");
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    let mut stderr = String::new();
    child
        .stderr
        .take()
        .unwrap()
        .read_to_string(&mut stderr)
        .unwrap();
    (status.code().unwrap_or(-1), stderr)
}

#[tokio::test(flavor = "multi_thread")]
async fn a_queue_declared_with_other_arguments_stops_the_worker_naming_queue_and_argument() {
    // The namespace's work queue exists with delivery limit 5.
    let ns = TestNs::new().await;
    let (code, stderr) = worker_fails(&ns, &["--delivery-limit", "7"]);
    assert_ne!(code, 0, "{stderr}");
    let queue = ns.topology().work_queue("default");
    assert!(
        stderr.contains(&queue),
        "the error does not name the queue: {stderr}"
    );
    assert!(
        stderr.contains("x-delivery-limit"),
        "the error does not name the argument: {stderr}"
    );
    assert!(
        !stderr.contains("reconnecting"),
        "a conflict must not be retried: {stderr}"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn bad_credentials_a_bad_scheme_and_a_bad_key_stop_the_worker_at_once() {
    let ns = TestNs::new().await;
    let (code, stderr) = worker_fails(
        &ns,
        &["--amqp-url", "amqp://nobody:wrong@127.0.0.1:5672/%2f"],
    );
    assert_ne!(code, 0);
    assert!(stderr.contains("refused the login"), "{stderr}");
    assert!(!stderr.contains("wrong@"), "the password leaked: {stderr}");

    let (code, stderr) = worker_fails(&ns, &["--amqp-url", "http://127.0.0.1:5672"]);
    assert_ne!(code, 0);
    assert!(stderr.contains("is not an AMQP URL"), "{stderr}");

    let (code, stderr) = worker_fails(&ns, &["--signing-key", "no-colon-here"]);
    assert_ne!(code, 0);
    assert!(stderr.contains("signing key"), "{stderr}");
}

#[tokio::test(flavor = "multi_thread")]
async fn unusable_trace_export_settings_stop_the_worker_naming_the_variable() {
    let ns = TestNs::new().await;
    let endpoint = ("OTEL_EXPORTER_OTLP_ENDPOINT", "http://127.0.0.1:4318");
    for bad in [
        ("OTEL_EXPORTER_OTLP_ENDPOINT", "127.0.0.1:4318"),
        ("OTEL_EXPORTER_OTLP_PROTOCOL", "grpc"),
        ("OTEL_EXPORTER_OTLP_TRACES_COMPRESSION", "gzip"),
        ("OTEL_EXPORTER_OTLP_HEADERS", "authorization"),
        ("OTEL_EXPORTER_OTLP_TIMEOUT", "10s"),
    ] {
        let env = if bad.0 == endpoint.0 {
            vec![bad]
        } else {
            vec![endpoint, bad]
        };
        let (code, stderr) = worker_fails_with(&ns, &[], &env);
        assert_ne!(code, 0, "{bad:?}: {stderr}");
        assert!(stderr.contains(bad.0), "{bad:?} is not named: {stderr}");
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn a_runtime_of_no_threads_stops_the_worker_naming_the_flag() {
    let ns = TestNs::new().await;
    let (code, stderr) = worker_fails(&ns, &["--runtime-threads", "0"]);
    assert_ne!(code, 0, "{stderr}");
    assert!(stderr.contains("--runtime-threads"), "{stderr}");
}
