//! Worker settings: flags with environment fallbacks.

use crate::{
    breaker::state::BreakerConfig,
    policies::{PolicyTable, Scope},
};
use secflow_common::{config::BrokerArgs, retry::RetryPolicy};
use std::time::Duration;

/// How a worker runs.
#[derive(clap::Args, Clone, Debug)]
pub struct WorkerConfig {
    /// Broker, Redis and namespace.
    #[command(flatten)]
    pub broker: BrokerArgs,
    /// Self-healing and degradation.
    #[command(flatten)]
    pub fleet: crate::fleet::FleetArgs,
    /// Worker pool: the work queue `{namespace}.work.{pool}` this worker consumes.
    #[arg(long, env = "SECFLOW_POOL", default_value = "default")]
    pub pool: String,
    /// Routing-key patterns (node types) the pool's queue receives; `#` = all.
    #[arg(
        long = "bind",
        env = "SECFLOW_BIND",
        value_delimiter = ',',
        default_value = "#"
    )]
    pub bind: Vec<String>,
    /// Deliveries in flight at once (AMQP prefetch): the worker's concurrency.
    #[arg(long, env = "SECFLOW_PREFETCH", default_value_t = 64)]
    pub prefetch: u16,
    /// Seconds in-flight tasks get to finish after SIGTERM before they are handed back.
    #[arg(
        long = "grace-period",
        env = "SECFLOW_GRACE_PERIOD",
        default_value_t = 30
    )]
    pub grace_secs: u64,
    /// Worker id in headers, events and logs (defaults to host name and pid).
    #[arg(long, env = "SECFLOW_WORKER_ID")]
    pub worker_id: Option<String>,
    /// Default handler timeout in seconds (a task's `timeout_ms` overrides it).
    #[arg(
        long = "task-timeout",
        env = "SECFLOW_TASK_TIMEOUT",
        default_value_t = 600
    )]
    pub task_timeout_secs: u64,
    /// Bytes of stdout/stderr/HTTP body kept per task.
    #[arg(long, env = "SECFLOW_MAX_OUTPUT_BYTES", default_value_t = 1 << 20)]
    pub max_output_bytes: usize,
    /// Retry policy as SCOPE=JSON (repeatable), SCOPE being a node type (`http`), a type and
    /// class (`http/transient`) or a class for every type (`*/resource`), e.g.
    /// `http/transient={"max_attempts":8,"base_delay_ms":2000}`.
    #[arg(long = "retry-policy", value_parser = parse_scoped_policy)]
    pub retry_policies: Vec<(Scope, RetryPolicy)>,
    /// Whether tasks of a type may run twice without harm, TYPE=true|false (repeatable or
    /// comma-separated). While Redis is unreachable, only idempotent tasks run (at least once,
    /// without a claim); the others are deferred until it answers. Default: built-ins and
    /// `http` GET/HEAD are idempotent; `exec`, other `http` methods and other types are not.
    #[arg(
        long = "idempotent",
        env = "SECFLOW_IDEMPOTENT",
        value_delimiter = ',',
        value_parser = crate::idempotency::parse_declaration
    )]
    pub idempotent: Vec<(String, bool)>,
    /// Circuit-breaker settings for every service, as JSON (failure_threshold, window_ms,
    /// open_ms, max_open_ms, half_open_probes, success_threshold, failure_rate_threshold,
    /// minimum_calls).
    #[arg(long = "breaker-default", value_parser = parse_breaker, default_value = "{}")]
    pub breaker_default: BreakerConfig,
    /// Circuit-breaker settings for one service, as SERVICE=JSON (repeatable).
    #[arg(long = "breaker", value_parser = parse_service_breaker)]
    pub breakers: Vec<(String, BreakerConfig)>,
    /// Serve /healthz, /readyz and /metrics on this address (e.g. 0.0.0.0:9464).
    #[arg(long, env = "SECFLOW_METRICS_ADDR")]
    pub metrics_addr: Option<std::net::SocketAddr>,
    /// Token that `PUT /log-filter` on the metrics address requires (`Authorization: Bearer
    /// TOKEN`) to change the log filter at run time; without one the endpoint is off.
    #[arg(long, env = "SECFLOW_ADMIN_TOKEN", hide_env_values = true)]
    pub admin_token: Option<String>,
    /// File holding a log filter (`RUST_LOG` syntax) that SIGHUP applies, e.g. a mounted
    /// ConfigMap; without one SIGHUP applies `RUST_LOG` as the worker started with it.
    #[arg(long, env = "SECFLOW_LOG_FILTER_FILE")]
    pub log_filter_file: Option<std::path::PathBuf>,
    /// Classification rules (YAML), tried before the built-in ones.
    #[arg(long, env = "SECFLOW_RULES")]
    pub rules: Option<String>,
    /// Classifier model (JSON, as `worker classify --train` writes it) used instead of the
    /// built-in one for failures no rule matches.
    #[arg(long, env = "SECFLOW_MODEL")]
    pub model: Option<String>,
    /// Lease a running task holds in Redis (renewed every third of it), ms.
    #[arg(long, env = "SECFLOW_LEASE_MS", default_value_t = 30_000)]
    pub lease_ms: u64,
    /// How long a completed task's done marker is kept, seconds.
    #[arg(long, env = "SECFLOW_DONE_TTL", default_value_t = 7 * 24 * 3600)]
    pub done_ttl_secs: u64,
    /// Deferrals (open breaker, busy lease) before a task is dead-lettered.
    #[arg(long, env = "SECFLOW_MAX_DEFERS", default_value_t = 200)]
    pub max_defers: u64,
    /// Transient failures with one fingerprint, fleet-wide within the window, that escalate
    /// it to persistent.
    #[arg(long, env = "SECFLOW_ESCALATE_AFTER", default_value_t = 50)]
    pub escalate_after: u64,
    /// Window for counting a fingerprint's failures, seconds.
    #[arg(long, env = "SECFLOW_ESCALATE_WINDOW", default_value_t = 60)]
    pub escalate_window_secs: u64,
    /// Programs `exec` tasks may run: names (resolved on PATH at start) or absolute paths,
    /// comma-separated. Empty: no `exec` task runs here. `*`: any program (unsafe).
    #[arg(long, env = "SECFLOW_EXEC_ALLOW", value_delimiter = ',')]
    pub exec_allow: Vec<String>,
    /// Directory under which each `exec` task gets its own working directory (removed after).
    #[arg(long, env = "SECFLOW_EXEC_WORKDIR")]
    pub exec_workdir: Option<std::path::PathBuf>,
    /// Address-space limit of `exec` programs, MiB (none by default).
    #[arg(long, env = "SECFLOW_EXEC_MEMORY_MB")]
    pub exec_memory_mb: Option<u64>,
    /// The binary started as the shim between the worker and each `exec` program (default:
    /// this worker's own binary).
    #[arg(long, env = "SECFLOW_EXEC_SHIM")]
    pub exec_shim: Option<std::path::PathBuf>,
    /// How long the outcome of an `exec` program is kept in Redis for a redelivery of the same
    /// attempt (its worker died before recording the task's end), seconds.
    #[arg(long, env = "SECFLOW_EXEC_SPOOL_TTL_SECS", default_value_t = 900)]
    pub exec_spool_ttl_secs: u64,
    /// Largest recorded outcome of an `exec` program (output included), bytes; a larger one is
    /// not recorded (a redelivery then runs the program again).
    #[arg(long, env = "SECFLOW_EXEC_SPOOL_MAX_BYTES", default_value_t = 4 << 20)]
    pub exec_spool_max_bytes: usize,
    /// Handler version by node type, TYPE=VERSION (repeatable): checkpoints written by another
    /// version are ignored.
    #[arg(long = "handler-version", value_parser = parse_handler_version)]
    pub handler_versions: Vec<(String, String)>,
    /// Extra redaction pattern (regex, repeatable): matches are masked in logs, DLQ headers
    /// and events, on top of the built-in credential patterns.
    #[arg(long = "redact-pattern", env = "SECFLOW_REDACT_PATTERN")]
    pub redact_patterns: Vec<String>,
    /// Tool definitions (YAML) added to the built-in ones; a tool of the same name replaces
    /// the built-in definition.
    #[arg(long, env = "SECFLOW_TOOLS")]
    pub tools: Option<std::path::PathBuf>,
    /// Directory `res://NAME:TAG` settings resolve in (`DIR/NAME/TAG`).
    #[arg(long, env = "SECFLOW_RESOURCES")]
    pub resources: Option<std::path::PathBuf>,
    /// CVE service `enrich.cve` asks (`GET URL/CVE-ID?sources=...`); without it, and while it
    /// fails, records come from the Redis cache of earlier answers.
    #[arg(long, env = "SECFLOW_CVE_SOURCE")]
    pub cve_source: Option<String>,
    /// Fleet fallback chains (YAML, service → list of alternatives as a recipe node's
    /// `fallback:` writes them), for tasks whose node declares no chain of its own.
    #[arg(long = "fallbacks", env = "SECFLOW_FALLBACKS")]
    pub fallbacks: Option<std::path::PathBuf>,
    /// Fleet hooks (YAML, a top-level `hooks:` like a recipe's): webhooks and programs told
    /// about every completed task and every run's end. Needs a hook secret.
    #[arg(long = "hooks", env = "SECFLOW_HOOKS")]
    pub hooks: Option<std::path::PathBuf>,
    /// Secret that signs webhook requests (`X-SecFlow-Signature`), at least 16 bytes. A worker
    /// without one delivers no hooks.
    #[arg(long, env = "SECFLOW_HOOK_SECRET", hide_env_values = true)]
    pub hook_secret: Option<String>,
    /// File holding the hook secret (e.g. a mounted Secret); surrounding whitespace is ignored.
    #[arg(long, env = "SECFLOW_HOOK_SECRET_FILE")]
    pub hook_secret_file: Option<std::path::PathBuf>,
    /// Fault injection as JSON, e.g. {"fail":{"transient":0.05},"latency_ms":[0,100],
    /// "crash":0.001,"hang":0.001,"types":["builtin.echo"]}. Off unless given.
    #[arg(long, env = "SECFLOW_CHAOS", value_parser = crate::chaos::ChaosConfig::parse)]
    pub chaos: Option<crate::chaos::ChaosConfig>,
}

fn parse_handler_version(s: &str) -> Result<(String, String), String> {
    let (t, v) = s.split_once('=').ok_or("expected TYPE=VERSION")?;
    if t.is_empty() || v.is_empty() {
        return Err("expected TYPE=VERSION".into());
    }
    Ok((t.to_string(), v.to_string()))
}

fn parse_breaker(s: &str) -> Result<BreakerConfig, String> {
    let cfg: BreakerConfig =
        serde_json::from_str(s).map_err(|e| format!("breaker settings: {e}"))?;
    cfg.validate()?;
    Ok(cfg)
}

fn parse_service_breaker(s: &str) -> Result<(String, BreakerConfig), String> {
    let (service, json) = s.split_once('=').ok_or("expected SERVICE=JSON")?;
    Ok((service.to_string(), parse_breaker(json)?))
}

/// Longest handler timeout: below RabbitMQ's default 30 min `consumer_timeout`, so the broker
/// never closes the channel under a task that is still within its limit.
pub const MAX_TASK_TIMEOUT: Duration = Duration::from_secs(25 * 60);

fn parse_scoped_policy(s: &str) -> Result<(Scope, RetryPolicy), String> {
    let (scope, json) = s.split_once('=').ok_or("expected SCOPE=JSON")?;
    let scope = Scope::parse(scope)?;
    let policy: RetryPolicy =
        serde_json::from_str(json).map_err(|e| format!("retry policy for `{s}`: {e}"))?;
    policy.validate()?;
    Ok((scope, policy))
}

impl WorkerConfig {
    /// Defaults for `namespace` on the loopback services (tests and the demo).
    pub fn local(namespace: &str) -> Self {
        Self {
            broker: BrokerArgs::local(namespace),
            fleet: crate::fleet::FleetArgs::default(),
            pool: "default".into(),
            bind: vec!["#".into()],
            prefetch: 64,
            grace_secs: 30,
            worker_id: None,
            task_timeout_secs: 600,
            max_output_bytes: 1 << 20,
            retry_policies: Vec::new(),
            idempotent: Vec::new(),
            breaker_default: BreakerConfig::default(),
            breakers: Vec::new(),
            metrics_addr: None,
            admin_token: None,
            log_filter_file: None,
            rules: None,
            model: None,
            lease_ms: 30_000,
            done_ttl_secs: 7 * 24 * 3600,
            max_defers: 200,
            escalate_after: 50,
            escalate_window_secs: 60,
            exec_allow: Vec::new(),
            exec_workdir: None,
            exec_memory_mb: None,
            exec_shim: None,
            exec_spool_ttl_secs: 900,
            exec_spool_max_bytes: 4 << 20,
            handler_versions: Vec::new(),
            redact_patterns: Vec::new(),
            chaos: None,
            tools: None,
            resources: None,
            cve_source: None,
            fallbacks: None,
            hooks: None,
            hook_secret: None,
            hook_secret_file: None,
        }
    }

    /// Checks what clap cannot.
    pub fn validate(&self) -> Result<(), String> {
        self.broker.validate().map_err(|e| e.to_string())?;
        self.fleet.validate()?;
        if self.prefetch == 0 {
            return Err("--prefetch must be at least 1".into());
        }
        if Duration::from_secs(self.task_timeout_secs) > MAX_TASK_TIMEOUT
            || self.task_timeout_secs == 0
        {
            return Err(format!(
                "--task-timeout must be between 1 and {} seconds",
                MAX_TASK_TIMEOUT.as_secs()
            ));
        }
        if self
            .worker_id
            .as_ref()
            .is_some_and(|id| id.is_empty() || id.len() > 128)
        {
            return Err("--worker-id must be 1 to 128 characters".into());
        }
        if self.lease_ms < 300 {
            return Err("--lease-ms must be at least 300".into());
        }
        if self.escalate_after == 0 || self.escalate_window_secs == 0 {
            return Err("--escalate-after and --escalate-window-secs must be at least 1".into());
        }
        if self.bind.is_empty() {
            return Err("--bind needs at least one routing-key pattern".into());
        }
        Ok(())
    }

    /// The worker id, from the flag or host name and pid.
    pub fn worker_id(&self) -> String {
        self.worker_id.clone().unwrap_or_else(|| {
            let host = secflow_common::logging::hostname().unwrap_or_else(|| "worker".into());
            format!("{host}-{}", std::process::id())
        })
    }

    /// Retry policies: the built-in defaults under the configured ones.
    pub fn policies(&self) -> PolicyTable {
        self.policies_with(&secflow_common::tools::ToolSet::default())
    }

    /// Retry policies with each tool's own (its definition's, else the error table's 3
    /// retries) between the built-in defaults and the configured ones.
    pub fn policies_with(&self, tools: &secflow_common::tools::ToolSet) -> PolicyTable {
        let mut table = PolicyTable::with_defaults();
        for name in tools.names() {
            let policy = tools
                .get(name)
                .and_then(|t| t.retry().cloned())
                .unwrap_or_else(crate::handlers::tool_policy);
            table.set(Scope::Type(name.to_string()), policy);
        }
        for (scope, policy) in &self.retry_policies {
            table.set(scope.clone(), policy.clone());
        }
        table
    }

    /// The fleet's fallback chains (`--fallbacks`), checked against `tools`; none without the
    /// flag.
    pub fn fleet_chains(
        &self,
        tools: &secflow_common::tools::ToolSet,
    ) -> Result<secflow_common::recipe::FleetChains, String> {
        let Some(path) = &self.fallbacks else {
            return Ok(Default::default());
        };
        let text = std::fs::read_to_string(path)
            .map_err(|e| format!("--fallbacks {}: cannot read it: {e}", path.display()))?;
        let catalog = secflow_common::recipe::Catalog {
            tools: tools.clone(),
            resources: secflow_common::tools::Resources::new(None),
        };
        secflow_common::recipe::fallback::parse_fleet(&text, &catalog)
            .map_err(|e| format!("--fallbacks {}: {e}", path.display()))
    }

    /// The tool definitions: the built-in ones with `--tools` over them.
    pub fn tool_set(&self) -> Result<secflow_common::tools::ToolSet, String> {
        let mut tools = secflow_common::tools::ToolSet::builtin().map_err(|e| e.to_string())?;
        if let Some(path) = &self.tools {
            tools.merge(
                secflow_common::tools::ToolSet::load(path).map_err(|e| format!("--tools: {e}"))?,
            );
        }
        Ok(tools)
    }
}
