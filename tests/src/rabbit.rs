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
}

impl PrivateRabbit {
    /// Starts a node and waits until it accepts AMQP connections.
    pub fn start() -> Self {
        let port = crate::free_port();
        let dist_port = crate::free_port();
        let id = &uuid::Uuid::new_v4().simple().to_string()[..10];
        let dir = std::env::temp_dir().join(format!("secflow-rabbit-{id}"));
        std::fs::create_dir_all(dir.join("log")).unwrap();
        std::fs::create_dir_all(dir.join("mnesia")).unwrap();
        std::fs::write(
            dir.join("rabbitmq.conf"),
            // The broker refuses messages over the fleet's default --max-message-bytes, as
            // deploy/rabbitmq.conf makes it do in production.
            format!(
                "listeners.tcp.1 = 127.0.0.1:{port}\nloopback_users = none\nmax_message_size = {}\n",
                secflow_common::config::DEFAULT_MAX_MESSAGE_BYTES
            ),
        )
        .unwrap();
        std::fs::write(dir.join("enabled_plugins"), "[].\n").unwrap();
        // As root, rabbitmq-server drops to the `rabbitmq` user, which must own the directory.
        let _ = Command::new("chown")
            .args(["-R", "rabbitmq:rabbitmq"])
            .arg(&dir)
            .status();
        let rabbit = Self {
            port,
            node: format!("sf-{id}@localhost"),
            dist_port,
            dir,
        };
        rabbit.boot();
        rabbit
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
        let mut cmd = Command::new("rabbitmq-server");
        self.env(&mut cmd);
        let status = cmd
            .arg("-detached")
            .status()
            .expect("rabbitmq-server must be installed (bash scripts/services.sh installs it)");
        assert!(status.success(), "rabbitmq-server -detached failed");
        self.wait_accepting(Duration::from_secs(60));
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
        let wanted = format!("RABBITMQ_NODENAME={}", self.node);
        std::fs::read_dir("/proc")
            .unwrap()
            .filter_map(|e| e.ok()?.file_name().to_str()?.parse::<i32>().ok())
            .find(|pid| {
                let comm = std::fs::read_to_string(format!("/proc/{pid}/comm")).unwrap_or_default();
                comm.trim() == "beam.smp"
                    && std::fs::read(format!("/proc/{pid}/environ"))
                        .map(|env| env.split(|b| *b == 0).any(|kv| kv == wanted.as_bytes()))
                        .unwrap_or(false)
            })
            .unwrap_or_else(|| panic!("no beam.smp process for node {}", self.node))
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
        self.stop();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}
