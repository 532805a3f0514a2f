//! Test harness for SecFlow integration tests against the real RabbitMQ (and later Redis):
//! a unique namespace per test with cleanup on drop, an event tap, DLQ readers, in-process and
//! child-process workers, and waiting for conditions with a deadline instead of sleeping.

use futures_util::StreamExt;
use lapin::{
    BasicProperties, Channel, Connection,
    message::Delivery,
    options::{BasicAckOptions, BasicConsumeOptions},
    types::FieldTable,
};
use secflow_common::{Topology, config::BrokerArgs, events::TaskEvent, topology::Namespace};
use secflow_worker::WorkerConfig;
use std::{
    path::PathBuf,
    process::{Child, Command, Stdio},
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};
use tokio_util::sync::CancellationToken;

pub use secflow_common::headers;

pub mod bench;
pub mod hooks;
mod rabbit;
mod redis_helpers;

pub use rabbit::{PrivateCluster, PrivateRabbit};

pub use redis_helpers::{PrivateRedis, delete_redis_keys, redis_done_markers, redis_keys};

/// The signing key every test process shares (`ID:SECRET`).
pub const TEST_SIGNING_KEY: &str = "test:secflow-test-signing-key-0123456789";

/// A workspace binary as a command, with the test signing key and `sh` allowed for `exec`.
/// The process is SIGKILLed if the thread that spawned it ends (the test's thread, when the
/// test ends, however it ends): a test that fails half-way leaves no worker behind.
pub fn command(name: &str) -> Command {
    use std::os::unix::process::CommandExt;
    let mut cmd = Command::new(bin(name));
    cmd.env("SECFLOW_SIGNING_KEY", TEST_SIGNING_KEY)
        .env("SECFLOW_EXEC_ALLOW", "sh");
    // SAFETY: prctl is async-signal-safe and touches nothing of the parent's.
    unsafe {
        cmd.pre_exec(|| {
            nix::sys::prctl::set_pdeathsig(nix::sys::signal::Signal::SIGKILL)
                .map_err(std::io::Error::from)
        });
    }
    cmd
}

/// Runs `dlq-inspector` on `ns`'s DLQ with `args`; its output.
pub fn inspector(ns: &TestNs, args: &[&str]) -> std::process::Output {
    command("dlq-inspector")
        .env("AMQP_URL", &ns.amqp_url)
        .args(["--namespace", &ns.name])
        .args(args)
        .output()
        .expect("run the dlq-inspector binary")
}

/// The standard output of a command that must have succeeded (its stderr in the failure).
pub fn stdout(out: &std::process::Output) -> String {
    assert!(
        out.status.success(),
        "command failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout.clone()).unwrap()
}

/// The JSON lines a command that must have succeeded printed.
pub fn json_lines(out: &std::process::Output) -> Vec<serde_json::Value> {
    stdout(out)
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect()
}

/// Loopback broker settings for namespace `ns`, signing with the test key.
pub fn signed_broker(ns: &str) -> BrokerArgs {
    BrokerArgs {
        signing: secflow_common::signing::SigningArgs::with_key(TEST_SIGNING_KEY),
        ..BrokerArgs::local(ns)
    }
}

/// The test signing keys.
pub fn test_keyring() -> secflow_common::signing::Keyring {
    secflow_common::signing::Keyring::parse(TEST_SIGNING_KEY).unwrap()
}

/// An isolated namespace on the local broker; everything in it is deleted on drop.
pub struct TestNs {
    /// Namespace name (`t-` + random).
    pub name: String,
    /// Delivery limit its work queues use.
    pub delivery_limit: u32,
    /// The broker it lives on.
    pub amqp_url: String,
    /// A connection for the test's own use.
    pub conn: Connection,
    /// A channel on it.
    pub ch: Channel,
}

impl TestNs {
    /// A fresh namespace with the default delivery limit, core topology and default pool declared.
    pub async fn new() -> Self {
        Self::with_delivery_limit(5).await
    }

    /// A fresh namespace whose work queues allow `delivery_limit` deliveries.
    pub async fn with_delivery_limit(delivery_limit: u32) -> Self {
        Self::on_broker(secflow_common::config::DEFAULT_AMQP_URL, delivery_limit).await
    }

    /// A fresh namespace on the broker at `amqp_url` (e.g. a [`PrivateRabbit`]).
    pub async fn on_broker(amqp_url: &str, delivery_limit: u32) -> Self {
        let name = format!("t-{}", &uuid::Uuid::new_v4().simple().to_string()[..12]);
        let conn = secflow_common::amqp::connect(amqp_url, "secflow-test", Duration::from_secs(30))
            .await
            .expect("RabbitMQ must run on 127.0.0.1:5672 (bash .ci/run starts it)");
        let ch = conn.create_channel().await.unwrap();
        let ns = Self {
            name,
            delivery_limit,
            amqp_url: amqp_url.to_string(),
            conn,
            ch,
        };
        ns.topology()
            .declare_pool(&ns.ch, "default", &["#".to_string()])
            .await
            .unwrap();
        ns
    }

    /// Broker settings pointing at this namespace.
    pub fn broker(&self) -> BrokerArgs {
        BrokerArgs {
            delivery_limit: self.delivery_limit,
            amqp_url: self.amqp_url.clone(),
            ..signed_broker(&self.name)
        }
    }

    /// The namespace's topology.
    pub fn topology(&self) -> Topology {
        Topology::new(Namespace::new(&self.name).unwrap(), self.delivery_limit)
    }

    /// Worker settings for this namespace.
    pub fn worker_config(&self) -> WorkerConfig {
        WorkerConfig {
            broker: self.broker(),
            exec_allow: vec!["sh".into()],
            ..WorkerConfig::local(&self.name)
        }
    }

    /// Messages ready in `queue` (not counting unacked ones).
    pub async fn ready(&self, queue: &str) -> u32 {
        self.passive(queue).await.message_count()
    }

    /// Consumers subscribed to `queue`.
    pub async fn consumers(&self, queue: &str) -> u32 {
        self.passive(queue).await.consumer_count()
    }

    async fn passive(&self, queue: &str) -> lapin::Queue {
        secflow_common::amqp::passive_declare(&self.conn, queue)
            .await
            .unwrap()
    }

    /// Publishes a raw body to the tasks exchange under `routing_key` (for malformed input),
    /// signed with the test key like a producer's bug would be.
    pub async fn publish_raw(&self, routing_key: &str, body: &[u8], props: BasicProperties) {
        let mut headers = props.headers().clone().unwrap_or_default();
        let id = props
            .message_id()
            .as_ref()
            .map(|m| m.to_string())
            .unwrap_or_default();
        test_keyring().sign(&mut headers, &id, body);
        self.publish_unsigned(routing_key, body, props.with_headers(headers))
            .await;
    }

    /// Publishes a raw body with exactly the given properties (no signature added).
    pub async fn publish_unsigned(&self, routing_key: &str, body: &[u8], props: BasicProperties) {
        let publisher = secflow_common::amqp::Publisher::new(&self.conn)
            .await
            .unwrap();
        publisher
            .publish(
                &self.topology().tasks_exchange(),
                routing_key,
                body,
                props,
                true,
            )
            .await
            .unwrap();
    }

    /// Starts collecting every event of the namespace.
    pub async fn tap_events(&self) -> EventTap {
        let ch = self.conn.create_channel().await.unwrap();
        let mut consumer = secflow_common::events::subscribe(&ch, &self.topology(), "#")
            .await
            .unwrap();
        let events = Arc::new(Mutex::new(Vec::new()));
        let sink = Arc::clone(&events);
        tokio::spawn(async move {
            let _ch = ch;
            while let Some(Ok(d)) = consumer.next().await {
                let events =
                    secflow_common::events::decode(&d.data).expect("events are TaskEvent JSON");
                sink.lock().unwrap().extend(events);
            }
        });
        EventTap { events }
    }

    /// Consumes (and acks) `n` messages from the DLQ, failing after `timeout`.
    pub async fn take_dlq(&self, n: usize, timeout: Duration) -> Vec<Delivery> {
        self.take(&self.topology().dlq(), n, timeout).await
    }

    /// Consumes (and acks) `n` messages from `queue`, failing after `timeout`.
    pub async fn take(&self, queue: &str, n: usize, timeout: Duration) -> Vec<Delivery> {
        let ch = self.conn.create_channel().await.unwrap();
        let mut consumer = ch
            .basic_consume(
                queue.into(),
                "test-reader".into(),
                BasicConsumeOptions::default(),
                FieldTable::default(),
            )
            .await
            .unwrap();
        let mut out = Vec::new();
        let deadline = Instant::now() + timeout;
        while out.len() < n {
            let left = deadline.saturating_duration_since(Instant::now());
            let d = tokio::time::timeout(left, consumer.next())
                .await
                .unwrap_or_else(|_| {
                    panic!(
                        "only {} of {n} messages reached {queue} in {timeout:?}",
                        out.len()
                    )
                })
                .unwrap()
                .unwrap();
            d.acker.ack(BasicAckOptions::default()).await.unwrap();
            out.push(d);
        }
        let _ = ch.close(200, "".into()).await;
        out
    }

    /// Starts a worker inside this test process.
    pub fn spawn_worker(&self, cfg: WorkerConfig) -> InProcessWorker {
        let stop = CancellationToken::new();
        let token = stop.clone();
        let handle =
            tokio::spawn(async move { secflow_worker::run(cfg, token.cancelled_owned()).await });
        InProcessWorker {
            stop,
            handle: Some(handle),
        }
    }

    /// Starts the `worker` binary as a child process on this namespace.
    pub fn spawn_worker_process(&self, extra: &[&str]) -> Child {
        command("worker")
            .env("AMQP_URL", &self.amqp_url)
            .args([
                "--namespace",
                &self.name,
                "--delivery-limit",
                &self.delivery_limit.to_string(),
                "--log-format",
                "text",
            ])
            .args(extra)
            .stdout(Stdio::null())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("spawn the worker binary")
    }
}

impl Drop for TestNs {
    fn drop(&mut self) {
        let name = self.name.clone();
        let limit = self.delivery_limit;
        let url = self.amqp_url.clone();
        // A worker process the test left running would declare the namespace's queues again
        // as the cleanup deletes them (its consumer cancelled, it reconnects and declares).
        kill_children_on(&name);
        // Runs on its own thread and runtime: Drop cannot await, and the test's runtime may be
        // shutting down.
        let _ = std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .unwrap();
            // Bounded: a stalled broker must not hold the test (and the whole run) for ever.
            rt.block_on(async {
                let cleanup = async {
                    if let Ok(conn) = secflow_common::amqp::connect(
                        &url,
                        "secflow-test-cleanup",
                        Duration::from_secs(5),
                    )
                    .await
                    {
                        if let Ok(ch) = conn.create_channel().await {
                            let topo = Topology::new(Namespace::new(&name).unwrap(), limit);
                            let _ = topo.delete_all(&ch, &["default", "other"]).await;
                            // Something that was still declaring as they went (a worker task
                            // in its last steps) may have put some back: once more.
                            let exists = |q: String| {
                                let conn = &conn;
                                async move { secflow_common::amqp::passive_declare(conn, &q).await.is_ok() }
                            };
                            if exists(topo.dlq()).await || exists(topo.work_queue("default")).await
                            {
                                eprintln!("namespace {name}: queues came back after the cleanup; deleting again");
                                if let Ok(ch) = conn.create_channel().await {
                                    let _ = topo.delete_all(&ch, &["default", "other"]).await;
                                }
                            }
                        }
                        let _ = conn.close(200, "".into()).await;
                    }
                    let _ =
                        delete_redis_keys(secflow_common::config::DEFAULT_REDIS_URL, &name).await;
                };
                if tokio::time::timeout(Duration::from_secs(20), cleanup)
                    .await
                    .is_err()
                {
                    eprintln!(
                        "cleanup of namespace {name} gave up after 20 s (broker or Redis stalled)"
                    );
                }
            });
        })
        .join();
    }
}

/// Kills (SIGKILL) every live child process of this test process whose command line names
/// namespace `ns`: a worker or inspector the test did not stop before its namespace ends.
fn kill_children_on(ns: &str) {
    let me = std::process::id().to_string();
    let Ok(entries) = std::fs::read_dir("/proc") else {
        return;
    };
    for entry in entries.flatten() {
        let Some(pid) = entry
            .file_name()
            .to_str()
            .and_then(|p| p.parse::<i32>().ok())
        else {
            continue;
        };
        let Ok(stat) = std::fs::read_to_string(entry.path().join("stat")) else {
            continue;
        };
        // Fields after the command name (which may hold spaces), in parentheses: state, ppid.
        let Some(rest) = stat.rsplit_once(')').map(|(_, rest)| rest) else {
            continue;
        };
        if rest.split_whitespace().nth(1) != Some(me.as_str()) {
            continue;
        }
        let Ok(cmdline) = std::fs::read(entry.path().join("cmdline")) else {
            continue;
        };
        let names_ns = cmdline.split(|b| *b == 0).any(|arg| arg == ns.as_bytes());
        if names_ns {
            eprintln!("namespace {ns}: killing child {pid} the test left running");
            let _ = nix::sys::signal::kill(
                nix::unistd::Pid::from_raw(pid),
                nix::sys::signal::Signal::SIGKILL,
            );
        }
    }
}

/// Events collected from the namespace's events exchange.
pub struct EventTap {
    events: Arc<Mutex<Vec<TaskEvent>>>,
}

impl EventTap {
    /// A copy of the events so far.
    pub fn snapshot(&self) -> Vec<TaskEvent> {
        self.events.lock().unwrap().clone()
    }

    /// Events of `kind` so far.
    pub fn of_kind(&self, kind: &str) -> Vec<TaskEvent> {
        self.snapshot()
            .into_iter()
            .filter(|e| e.kind == kind)
            .collect()
    }

    /// Waits until `cond` holds for the events, panicking with `what` after `timeout`.
    pub async fn wait_until(
        &self,
        what: &str,
        timeout: Duration,
        cond: impl Fn(&[TaskEvent]) -> bool,
    ) {
        let deadline = Instant::now() + timeout;
        loop {
            if cond(&self.events.lock().unwrap()) {
                return;
            }
            if Instant::now() >= deadline {
                // What was seen, for a failure that says more than its timeout.
                let seen = self.seen();
                panic!("timed out after {timeout:?} waiting for {what}; {seen}");
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// Waits until task `id` has a `node.completed` event, panicking after `timeout`.
    pub async fn wait_completed(&self, id: uuid::Uuid, timeout: Duration) {
        let what = format!("task {id} to complete");
        self.wait_until(&what, timeout, |ev| {
            ev.iter()
                .any(|e| e.kind == "node.completed" && e.task_id == Some(id))
        })
        .await;
    }

    /// The events seen so far, counted by kind, and the last few.
    fn seen(&self) -> String {
        let events = self.snapshot();
        let mut kinds = std::collections::BTreeMap::new();
        for e in &events {
            *kinds.entry(e.kind.clone()).or_insert(0usize) += 1;
        }
        let last: Vec<String> = events
            .iter()
            .rev()
            .take(8)
            .map(|e| {
                format!(
                    "{} task {:?} worker {} error {:?}",
                    e.kind,
                    e.task_id,
                    e.worker,
                    e.error.as_ref().map(|x| format!("{}/{}", x.class, x.code))
                )
            })
            .collect();
        format!("events seen by kind: {kinds:?}; the last ones: {last:?}")
    }
}

/// A worker running in the test process.
pub struct InProcessWorker {
    stop: CancellationToken,
    handle: Option<tokio::task::JoinHandle<Result<(), secflow_worker::WorkerError>>>,
}

impl InProcessWorker {
    /// Signals shutdown and waits for the worker to return.
    pub async fn stop(mut self) {
        self.stop.cancel();
        if let Some(handle) = self.handle.take() {
            handle
                .await
                .expect("worker task panicked")
                .expect("worker returned an error");
        }
    }
}

/// A worker the test did not stop is stopped where it stands: left running on the test's
/// runtime, it would declare its namespace's queues again while the namespace is deleted.
impl Drop for InProcessWorker {
    fn drop(&mut self) {
        self.stop.cancel();
        if let Some(handle) = self.handle.take() {
            handle.abort();
        }
    }
}

/// Waits until `cond` returns true, panicking with `what` after `timeout`.
pub async fn wait_for<F, Fut>(what: &str, timeout: Duration, mut cond: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let deadline = Instant::now() + timeout;
    while !cond().await {
        assert!(
            Instant::now() < deadline,
            "timed out after {timeout:?} waiting for {what}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Waits for `child` to exit, failing after `timeout`.
pub async fn exit_status(child: &mut Child, timeout: Duration) -> std::process::ExitStatus {
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(status) = child.try_wait().unwrap() {
            return status;
        }
        assert!(
            Instant::now() < deadline,
            "the process did not exit within {timeout:?}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// SIGTERMs a worker process and checks it exits 0 within 15 s.
pub async fn stop_gracefully(child: &mut Child) {
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(child.id() as i32),
        nix::sys::signal::Signal::SIGTERM,
    )
    .unwrap();
    let status = exit_status(child, Duration::from_secs(15)).await;
    assert_eq!(
        status.code(),
        Some(0),
        "graceful shutdown exits 0 ({status:?})"
    );
}

/// Path of a workspace binary next to the test executable (`target/<profile>/<name>`).
pub fn bin(name: &str) -> PathBuf {
    let exe = std::env::current_exe().unwrap();
    // Test executables live in target/<profile>/deps, binaries of this crate beside the others.
    let mut dir = exe.parent().unwrap();
    if dir.ends_with("deps") {
        dir = dir.parent().unwrap();
    }
    let path = dir.join(name);
    assert!(
        path.exists(),
        "{} is missing: run `cargo build --workspace --bins` first",
        path.display()
    );
    path
}

/// The value of the metric `name` on the `/metrics` of the process listening on `port`, summed
/// over its label sets (`None`: no answer, or no such line).
pub async fn metric(port: u16, name: &str) -> Option<f64> {
    let (_, body) = http_get(port, "/metrics").await?;
    body.lines()
        .filter(|l| l.split([' ', '{']).next() == Some(name))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .reduce(|a, b| a + b)
}

/// A child process SIGKILLed and reaped when dropped, so a test that fails half-way leaves
/// none behind.
pub struct KillOnDrop(pub Child);

impl KillOnDrop {
    /// SIGKILLs it now and reaps it.
    pub fn kill(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        self.kill();
    }
}

/// A plain HTTP/1.0 GET on loopback: (status, body), or `None` while nothing listens.
pub async fn http_get(port: u16, path: &str) -> Option<(u16, String)> {
    http_request(port, "GET", path, &[], "").await
}

/// Sends an HTTP/1.0 request to 127.0.0.1:`port`; its status and body (`None`: no answer).
pub async fn http_request(
    port: u16,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: &str,
) -> Option<(u16, String)> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let exchange = async {
        let mut stream = tokio::net::TcpStream::connect(("127.0.0.1", port))
            .await
            .ok()?;
        let mut request = format!(
            "{method} {path} HTTP/1.0\r\nHost: 127.0.0.1\r\nContent-Length: {}\r\n",
            body.len()
        );
        for (name, value) in headers {
            request.push_str(&format!("{name}: {value}\r\n"));
        }
        request.push_str("\r\n");
        request.push_str(body);
        stream.write_all(request.as_bytes()).await.ok()?;
        let mut response = String::new();
        stream.read_to_string(&mut response).await.ok()?;
        let status = response.split_whitespace().nth(1)?.parse().ok()?;
        let body = response
            .split_once("\r\n\r\n")
            .map(|(_, b)| b.to_string())
            .unwrap_or_default();
        Some((status, body))
    };
    tokio::time::timeout(Duration::from_secs(10), exchange)
        .await
        .ok()
        .flatten()
}

/// A benchmark size from the environment variable `name`, else `default`.
pub fn env_or(name: &str, default: usize) -> usize {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

/// A free TCP port on loopback.
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// Publishes `tasks` to the namespace's tasks exchange with confirms; their ids in order.
pub async fn publish(ns: &TestNs, tasks: &[secflow_common::TaskEnvelope]) -> Vec<uuid::Uuid> {
    let publisher = secflow_common::amqp::Publisher::for_tasks(
        &ns.conn,
        Some(test_keyring()),
        secflow_common::config::DEFAULT_MAX_MESSAGE_BYTES,
    )
    .await
    .unwrap();
    secflow_producer::publish::publish_envelopes(&publisher, &ns.topology(), tasks)
        .await
        .unwrap()
}

/// An ad-hoc publish request for `count` tasks of `node_type`.
pub fn request(
    node_type: &str,
    config: serde_json::Value,
    count: usize,
) -> secflow_producer::PublishRequest {
    secflow_producer::PublishRequest {
        node_type: node_type.into(),
        config,
        count,
        retry: None,
        timeout_ms: None,
    }
}

/// Writes a recipe for this namespace's test to a temporary file; its path.
pub fn recipe_file(ns: &TestNs, name: &str, yaml: &str) -> String {
    let path = std::env::temp_dir().join(format!("{}-{name}.yaml", ns.name));
    std::fs::write(&path, yaml).unwrap();
    path.to_string_lossy().into_owned()
}

/// Completing attempts by task, from the `node.completed` events in `events` (a repeated report
/// of one completion keeps its attempt, so a task completed twice has two).
pub fn completing_attempts(
    events: &[TaskEvent],
) -> std::collections::HashMap<uuid::Uuid, std::collections::HashSet<String>> {
    let mut by_task: std::collections::HashMap<uuid::Uuid, std::collections::HashSet<String>> =
        std::collections::HashMap::new();
    for e in events.iter().filter(|e| e.kind == "node.completed") {
        if let Some(task) = e.task_id {
            by_task
                .entry(task)
                .or_default()
                .insert(e.attempt.clone().unwrap_or_default());
        }
    }
    by_task
}

/// Waits (up to 30 s) until the worker with metrics on `port` says `/readyz` 200; `what` names
/// it in the failure.
pub async fn wait_ready(what: &str, port: u16) {
    wait_for(
        &format!("{what} to be ready"),
        Duration::from_secs(30),
        || async { http_get(port, "/readyz").await.map(|(s, _)| s) == Some(200) },
    )
    .await;
}

/// Outputs of the `node.completed` events of `run`, by node id.
pub fn completions(
    events: &[TaskEvent],
    run: uuid::Uuid,
) -> std::collections::HashMap<String, Vec<Option<serde_json::Value>>> {
    let mut out: std::collections::HashMap<String, Vec<Option<serde_json::Value>>> =
        std::collections::HashMap::new();
    for e in events
        .iter()
        .filter(|e| e.kind == "node.completed" && e.run_id == Some(run))
    {
        out.entry(e.node_id.clone().unwrap_or_default())
            .or_default()
            .push(e.output.clone());
    }
    out
}
