//! A RabbitMQ node of the test's own (own node name, ports and data directory), so a test can
//! restart the broker without disturbing the shared one or the tests running beside it.

use std::{
    path::PathBuf,
    process::{Command, Stdio},
    time::{Duration, Instant},
};

/// A private RabbitMQ node; stopped and its data removed on drop.
pub struct PrivateRabbit {
    /// AMQP port on 127.0.0.1.
    pub port: u16,
    node: String,
    dist_port: u16,
    dir: PathBuf,
    /// Set once the node is known to be down for good (killed, or stopped by its cluster's
    /// drop), so dropping it does not ask it to stop again.
    gone: std::sync::atomic::AtomicBool,
}

impl PrivateRabbit {
    /// Starts a node and waits until it accepts AMQP connections.
    pub fn start() -> Self {
        let rabbit = Self::create();
        rabbit.boot();
        rabbit
    }

    /// A node's name, ports, data directory and settings, not started yet.
    fn create() -> Self {
        let port = crate::free_port();
        let dist_port = crate::free_port();
        let id = &uuid::Uuid::new_v4().simple().to_string()[..10];
        let dir = std::env::temp_dir().join(format!("secflow-rabbit-{id}"));
        std::fs::create_dir_all(dir.join("log")).unwrap();
        std::fs::create_dir_all(dir.join("mnesia")).unwrap();
        std::fs::write(
            dir.join("rabbitmq.conf"),
            // The broker refuses messages over the fleet's default --max-message-bytes and
            // requeues deliveries unacked for 30 min, as deploy/rabbitmq.conf makes it do in
            // production.
            format!(
                "listeners.tcp.1 = 127.0.0.1:{port}\nloopback_users = none\nmax_message_size = {}\nconsumer_timeout = 1800000\n",
                secflow_common::config::DEFAULT_MAX_MESSAGE_BYTES
            ),
        )
        .unwrap();
        std::fs::write(dir.join("enabled_plugins"), "[].\n").unwrap();
        // As root, rabbitmq-server drops to the `rabbitmq` user, which must own the directory.
        // Every node it starts shares that user's Erlang cookie, so they can form a cluster.
        let _ = Command::new("chown")
            .args(["-R", "rabbitmq:rabbitmq"])
            .arg(&dir)
            .status();
        Self {
            port,
            node: format!("sf-{id}@localhost"),
            dist_port,
            dir,
            gone: std::sync::atomic::AtomicBool::new(false),
        }
    }

    /// Its AMQP URL.
    pub fn url(&self) -> String {
        format!("amqp://guest:guest@127.0.0.1:{}/%2f", self.port)
    }

    fn env(&self, cmd: &mut Command) {
        let d = |p: &str| self.dir.join(p);
        cmd.env("RABBITMQ_NODENAME", &self.node)
            .env("RABBITMQ_DIST_PORT", self.dist_port.to_string())
            .env("RABBITMQ_MNESIA_BASE", d("mnesia"))
            .env("RABBITMQ_LOG_BASE", d("log"))
            .env("RABBITMQ_PID_FILE", d("pid"))
            .env("RABBITMQ_CONFIG_FILE", d("rabbitmq.conf"))
            .env("RABBITMQ_ENABLED_PLUGINS_FILE", d("enabled_plugins"))
            .stdout(Stdio::null())
            .stderr(Stdio::null());
    }

    fn ctl(&self, args: &[&str]) -> bool {
        let mut cmd = Command::new("rabbitmqctl");
        self.env(&mut cmd);
        cmd.args(["-n", &self.node, "-q"])
            .args(args)
            .status()
            .is_ok_and(|s| s.success())
    }

    fn boot(&self) {
        self.launch();
        self.wait_accepting(Duration::from_secs(60));
    }

    /// Starts the node's VM in the background without waiting for it.
    fn launch(&self) {
        let mut cmd = Command::new("rabbitmq-server");
        self.env(&mut cmd);
        let status = cmd
            .arg("-detached")
            .status()
            .expect("rabbitmq-server must be installed (bash scripts/services.sh installs it)");
        assert!(status.success(), "rabbitmq-server -detached failed");
    }

    /// Waits until the node's AMQP port opens (the last step of its boot), failing at
    /// `deadline`.
    fn wait_port(&self, deadline: Instant) {
        while std::net::TcpStream::connect(("127.0.0.1", self.port)).is_err() {
            assert!(
                Instant::now() < deadline,
                "private RabbitMQ {} did not open its AMQP port in time (logs in {})",
                self.node,
                self.dir.join("log").display()
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// Its Erlang node name (`sf-…@localhost`).
    pub fn node(&self) -> &str {
        &self.node
    }

    /// Waits until the node accepts AMQP connections (the port opens a little before).
    fn wait_accepting(&self, timeout: Duration) {
        let deadline = Instant::now() + timeout;
        while !self.ctl(&["await_startup"]) {
            assert!(
                Instant::now() < deadline,
                "private RabbitMQ {} did not start within {timeout:?} (logs in {})",
                self.node,
                self.dir.join("log").display()
            );
            std::thread::sleep(Duration::from_millis(200));
        }
        while std::net::TcpStream::connect(("127.0.0.1", self.port)).is_err() {
            assert!(
                Instant::now() < deadline,
                "AMQP port {} never opened",
                self.port
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// Stops the node completely (every connection drops).
    pub fn stop(&self) {
        self.ctl(&["stop"]);
    }

    /// The node's Erlang VM process (found by its node name in its environment).
    fn beam_pid(&self) -> i32 {
        self.find_beam_pid()
            .unwrap_or_else(|| panic!("no beam.smp process for node {}", self.node))
    }

    /// The node's Erlang VM process, if it runs.
    fn find_beam_pid(&self) -> Option<i32> {
        let wanted = format!("RABBITMQ_NODENAME={}", self.node);
        std::fs::read_dir("/proc")
            .ok()?
            .filter_map(|e| e.ok()?.file_name().to_str()?.parse::<i32>().ok())
            .find(|pid| {
                let comm = std::fs::read_to_string(format!("/proc/{pid}/comm")).unwrap_or_default();
                comm.trim() == "beam.smp"
                    && std::fs::read(format!("/proc/{pid}/environ"))
                        .map(|env| env.split(|b| *b == 0).any(|kv| kv == wanted.as_bytes()))
                        .unwrap_or(false)
            })
    }

    /// Freezes the broker (SIGSTOP): connections stay open, nothing is answered, as with a
    /// broker stuck on a full disk or a stalled host.
    pub fn pause(&self) {
        let pid = nix::unistd::Pid::from_raw(self.beam_pid());
        nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGSTOP).unwrap();
    }

    /// Lets a paused broker go on (SIGCONT).
    pub fn resume(&self) {
        let pid = nix::unistd::Pid::from_raw(self.beam_pid());
        nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGCONT).unwrap();
    }

    /// Kills the node's VM (SIGKILL), as a crashed host or an OOM kill would: its connections
    /// are reset at once and it is not started again.
    pub fn kill(&self) {
        let pid = nix::unistd::Pid::from_raw(self.beam_pid());
        nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGKILL).unwrap();
        self.gone.store(true, std::sync::atomic::Ordering::SeqCst);
    }

    /// Starts it again on the same ports and data; returns when it accepts connections.
    pub fn start_again(&self) {
        self.boot();
    }

    /// Stops the RabbitMQ application but keeps the Erlang node up (`rabbitmqctl stop_app`):
    /// every connection drops, as in a full stop, and [`Self::start_app`] is quicker.
    pub fn stop_app(&self) {
        assert!(self.ctl(&["stop_app"]), "rabbitmqctl stop_app failed");
    }

    /// Starts the application again after [`Self::stop_app`]; returns when it accepts
    /// connections.
    pub fn start_app(&self) {
        assert!(self.ctl(&["start_app"]), "rabbitmqctl start_app failed");
        self.wait_accepting(Duration::from_secs(60));
    }
}

impl Drop for PrivateRabbit {
    fn drop(&mut self) {
        if !self.gone.load(std::sync::atomic::Ordering::SeqCst) {
            self.stop();
        }
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// A private RabbitMQ cluster: nodes of [`PrivateRabbit`]'s kind joined to the first one, as
/// deploy/k8s runs it (quorum queues, declared by the topology, get a replica on every node).
/// Every node is stopped and its data removed on drop, whatever state the test left it in.
pub struct PrivateCluster {
    nodes: Vec<PrivateRabbit>,
}

impl PrivateCluster {
    /// Starts `n` nodes forming one cluster and waits until every one accepts AMQP connections
    /// and the cluster runs all of them.
    ///
    /// The other nodes join the first one as they boot (RabbitMQ's `classic_config` peer
    /// discovery, retried until the first node answers) rather than
    /// through `rabbitmqctl stop_app`, `join_cluster`, `start_app` afterwards: on two busy
    /// cores each of those CLI round trips costs seconds, and the cluster must be up well
    /// within a test's time limit.
    pub fn start(n: usize) -> Self {
        assert!(n >= 1, "a cluster has at least one node");
        let cluster = Self {
            nodes: (0..n).map(|_| PrivateRabbit::create()).collect(),
        };
        let seed = cluster.nodes[0].node.clone();
        for node in &cluster.nodes[1..] {
            let conf = node.dir.join("rabbitmq.conf");
            let mut text = std::fs::read_to_string(&conf).unwrap();
            text.push_str(&format!(
                "cluster_formation.peer_discovery_backend = classic_config\n\
                 cluster_formation.classic_config.nodes.1 = {seed}\n\
                 cluster_formation.discovery_retry_limit = 240\n\
                 cluster_formation.discovery_retry_interval = 500\n"
            ));
            std::fs::write(&conf, text).unwrap();
        }
        // The first node boots alone: a node that joins it while it is still initialising can
        // make its boot fail. The others then boot side by side and join it.
        let deadline = Instant::now() + Duration::from_secs(120);
        cluster.nodes[0].launch();
        cluster.nodes[0].wait_port(deadline);
        for node in &cluster.nodes[1..] {
            node.launch();
        }
        for node in &cluster.nodes[1..] {
            node.wait_port(deadline);
        }
        loop {
            let members = cluster.running_nodes();
            if members.len() == n {
                break;
            }
            assert!(
                Instant::now() < deadline,
                "the cluster should run {n} nodes, runs {members:?}"
            );
            std::thread::sleep(Duration::from_millis(200));
        }
        cluster
    }

    /// Node `i`.
    pub fn node(&self, i: usize) -> &PrivateRabbit {
        &self.nodes[i]
    }

    /// An `AMQP_URL` listing the nodes `order` (indexes) in that order, comma-separated.
    pub fn urls(&self, order: &[usize]) -> String {
        order
            .iter()
            .map(|&i| self.nodes[i].url())
            .collect::<Vec<_>>()
            .join(",")
    }

    /// Names of the running nodes of the cluster, as a node that is up sees them.
    pub fn running_nodes(&self) -> Vec<String> {
        for node in &self.nodes {
            let mut cmd = Command::new("rabbitmqctl");
            node.env(&mut cmd);
            let out = cmd
                .args([
                    "-n",
                    &node.node,
                    "-q",
                    "cluster_status",
                    "--formatter",
                    "json",
                ])
                .stdout(Stdio::piped())
                .output();
            let Ok(out) = out else { continue };
            let Ok(status) = serde_json::from_slice::<serde_json::Value>(&out.stdout) else {
                continue;
            };
            if let Some(running) = status["running_nodes"].as_array() {
                return running
                    .iter()
                    .filter_map(|n| n.as_str().map(String::from))
                    .collect();
            }
        }
        Vec::new()
    }

    /// The cluster's client connections: for each, the index of the node holding it and its
    /// listing (client properties, which include the connection name). Empty when no node
    /// answers.
    pub fn connections(&self) -> Vec<(usize, String)> {
        let Some(live) = self
            .nodes
            .iter()
            .find(|n| std::net::TcpStream::connect(("127.0.0.1", n.port)).is_ok())
        else {
            return Vec::new();
        };
        let mut cmd = Command::new("rabbitmqctl");
        live.env(&mut cmd);
        let Ok(out) = cmd
            .args([
                "-n",
                &live.node,
                "-s",
                "list_connections",
                "port",
                "client_properties",
            ])
            .stdout(Stdio::piped())
            .output()
        else {
            return Vec::new();
        };
        String::from_utf8_lossy(&out.stdout)
            .lines()
            .filter_map(|line| {
                let port: u16 = line.split_whitespace().next()?.parse().ok()?;
                let node = self.nodes.iter().position(|n| n.port == port)?;
                Some((node, line.to_string()))
            })
            .collect()
    }
}

impl Drop for PrivateCluster {
    fn drop(&mut self) {
        // The cluster is thrown away with its data: its nodes are killed (a polite stop takes
        // seconds per node), then each node's own drop removes its directory.
        for node in &self.nodes {
            node.gone.store(true, std::sync::atomic::Ordering::SeqCst);
            if let Some(pid) = node.find_beam_pid() {
                let pid = nix::unistd::Pid::from_raw(pid);
                let _ = nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGKILL);
            }
        }
    }
}
