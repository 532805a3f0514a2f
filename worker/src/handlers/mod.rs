//! Task handlers by node type, and the context they run in.

mod builtin;
mod enrich;
mod exec;
mod http;
mod tool;

pub use enrich::CveSource;
pub use exec::{Ended, ExecPolicy, Program, Spool, Workdir, run_in, shim};
pub(crate) use http::parse_retry_after;
pub use tool::default_policy as tool_policy;

use crate::{checkpoint::Checkpoint, classify::Classifier};
use secflow_common::{
    TaskEnvelope, TaskError,
    tools::{Resources, ToolSet},
};
use serde::de::DeserializeOwned;
use serde_json::Value;
use std::{collections::BTreeMap, time::Duration};

/// Every node type this worker can run.
pub use secflow_common::nodes::KNOWN_TYPES;

/// What a handler gets besides its config.
pub struct TaskContext<'a> {
    /// The task.
    pub task: &'a TaskEnvelope,
    /// Classified failures before this attempt (`x-retry-count`).
    pub retry_count: u64,
    /// Times the task was requeued from the DLQ (`x-requeue-count`).
    pub requeue_count: u64,
    /// Time the handler may take; `exec` kills its process group past it.
    pub timeout: Duration,
    /// Where a long task saves its progress.
    pub checkpoint: Checkpoint,
}

/// The handler table with what handlers share (an HTTP client, output limits).
pub struct Handlers {
    http: reqwest::Client,
    max_output_bytes: usize,
    classifier: Classifier,
    exec: ExecPolicy,
    versions: BTreeMap<String, String>,
    tools: ToolSet,
    resources: Resources,
    cve: Option<CveSource>,
    fallbacks: secflow_common::recipe::FleetChains,
}

/// What tool nodes and `enrich.cve` need besides the generic handlers.
#[derive(Default)]
pub struct Tooling {
    /// Tool definitions by node type (built-ins merged with `--tools`).
    pub tools: ToolSet,
    /// Where `res://` settings resolve (`--resources`).
    pub resources: Resources,
    /// The CVE source and its cache, for `enrich.cve`.
    pub cve: Option<CveSource>,
    /// The fleet's fallback chains by service (`--fallbacks`).
    pub fallbacks: secflow_common::recipe::FleetChains,
}

/// Version of the built-in handlers' checkpoint format.
const BUILTIN_VERSION: &str = concat!("builtin-", env!("CARGO_PKG_VERSION"));

impl Handlers {
    /// Builds the handlers; `max_output_bytes` bounds captured stdout/stderr and HTTP bodies,
    /// `classifier` turns exit codes, stderr and HTTP statuses into error classes.
    /// `exec` runs what `exec` allows; `versions` overrides handler versions by node type
    /// (a changed version makes old checkpoints of that type void).
    pub fn new(
        max_output_bytes: usize,
        classifier: Classifier,
        exec: ExecPolicy,
        versions: BTreeMap<String, String>,
        tooling: Tooling,
    ) -> Result<Self, String> {
        // reqwest is built without a default TLS provider; a second install is a no-op error.
        let _ = rustls::crypto::ring::default_provider().install_default();
        let http = reqwest::Client::builder()
            .user_agent(concat!("secflow-worker/", env!("CARGO_PKG_VERSION")))
            .redirect(reqwest::redirect::Policy::limited(5))
            .build()
            .map_err(|e| format!("cannot build the HTTP client: {e}"))?;
        Ok(Self {
            http,
            max_output_bytes,
            classifier,
            exec,
            versions,
            tools: tooling.tools,
            resources: tooling.resources,
            cve: tooling.cve,
            fallbacks: tooling.fallbacks,
        })
    }

    /// The fleet's fallback chains by service (`--fallbacks`).
    pub fn fleet_chains(&self) -> &secflow_common::recipe::FleetChains {
        &self.fallbacks
    }

    /// The tool definitions this worker runs.
    pub fn tools(&self) -> &ToolSet {
        &self.tools
    }

    /// The error of a handler of `node_type` stopped at its timeout. A tool node's timeout ends
    /// the node (the published error table: kill, log, continue the run), whichever deadline
    /// fired first, the tool's own or the worker's; any other type's is transient.
    pub fn timed_out(&self, node_type: &str, timeout: Duration) -> TaskError {
        if self.tools.get(node_type).is_some() {
            return tool::timed_out(node_type, timeout);
        }
        TaskError::new(
            secflow_common::ErrorClass::Transient,
            "timeout",
            format!(
                "{node_type} did not finish within {} ms",
                timeout.as_millis()
            ),
        )
    }

    /// The timeout a node of `node_type` gets when its task names none: its tool's.
    pub fn default_timeout(&self, node_type: &str) -> Option<Duration> {
        self.tools
            .get(node_type)
            .and_then(|t| t.timeout_ms())
            .map(Duration::from_millis)
    }

    /// Whether `node_type`'s handler runs on the delivery's own task rather than on the
    /// handlers' runtime: built-in handlers that only wait or return at once, so they can never
    /// block a thread (a spawn on the other runtime and the wake-up back cost about 10 µs of CPU
    /// per task, a fifth of a light task's). Programs, tools, HTTP calls, enrichment, batches
    /// and `builtin.block` keep the runtime of their own.
    pub fn runs_inline(node_type: &str) -> bool {
        matches!(
            node_type,
            "builtin.noop"
                | "builtin.echo"
                | "builtin.static"
                | "builtin.sleep"
                | "builtin.fail"
                | "builtin.hang"
                | "builtin.crash"
                | "cache.last"
        )
    }

    /// Whether `node_type`'s handler saves checkpoints (only those have one to clear when the
    /// task completes).
    pub fn keeps_checkpoints(node_type: &str) -> bool {
        node_type == "builtin.batch"
    }

    /// The version of `node_type`'s handler, recorded with its checkpoints.
    pub fn version(&self, node_type: &str) -> String {
        self.versions
            .get(node_type)
            .cloned()
            .unwrap_or_else(|| BUILTIN_VERSION.to_string())
    }

    /// `cache.last`: the output cached under the config's key, or a `permanent`/`cache_miss`
    /// failure (the chain goes on to its next alternative).
    async fn last_output(&self, config: &Value) -> Result<Value, TaskError> {
        let cfg: secflow_common::nodes::CacheLastConfig =
            secflow_common::nodes::parse_config("cache.last", config).map_err(|e| {
                TaskError::new(secflow_common::ErrorClass::Validation, "bad_config", e)
            })?;
        let (Some(key), Some(cve)) = (cfg.key, &self.cve) else {
            return Err(TaskError::new(
                secflow_common::ErrorClass::Permanent,
                "cache_miss",
                "cache.last: no cache key (it serves only as a fallback alternative) or no cache here",
            ));
        };
        match cve.cache.cached(&key).await {
            Ok(Some(output)) => Ok(output),
            Ok(None) => Err(TaskError::new(
                secflow_common::ErrorClass::Permanent,
                "cache_miss",
                "cache.last: this node has no earlier output for the same config and inputs (kept 24 h)",
            )),
            Err(e) => Err(TaskError::new(
                secflow_common::ErrorClass::Transient,
                "cache_unreachable",
                format!("cache.last: the output cache did not answer: {e}"),
            )),
        }
    }

    /// Whether `node_type` has a handler here.
    pub fn knows(&self, node_type: &str) -> bool {
        KNOWN_TYPES.contains(&node_type) || self.tools.get(node_type).is_some()
    }

    /// Runs the handler of the task's type.
    pub async fn run(&self, ctx: &TaskContext<'_>) -> Result<Value, TaskError> {
        let config = &ctx.task.config;
        match ctx.task.node_type.as_str() {
            "builtin.noop" => Ok(Value::Null),
            "builtin.echo" => Ok(builtin::echo(ctx.task)),
            "builtin.static" => Ok(config.clone()),
            "cache.last" => self.last_output(config).await,
            "builtin.sleep" => builtin::sleep(config).await,
            "builtin.fail" => builtin::fail(config, ctx.retry_count),
            "builtin.crash" => builtin::crash(),
            "builtin.hang" => builtin::hang().await,
            "builtin.block" => builtin::block(config),
            "builtin.batch" => builtin::batch(config, &ctx.checkpoint).await,
            "exec" => {
                let limits = exec::Limits {
                    timeout: ctx.timeout,
                    max_output: self.max_output_bytes,
                };
                let task_id = ctx.task.task_id.to_string();
                let attempt = exec::Attempt {
                    task_id: &task_id,
                    retry: ctx.retry_count,
                    requeue: ctx.requeue_count,
                    success_exit_codes: &[0],
                };
                exec::run(
                    &self.exec,
                    attempt,
                    config,
                    &ctx.task.inputs,
                    limits,
                    &self.classifier,
                )
                .await
            }
            "http" => {
                http::run(
                    &self.http,
                    config,
                    ctx.timeout,
                    self.max_output_bytes,
                    &self.classifier,
                )
                .await
            }
            "enrich.cve" => match &self.cve {
                Some(source) => enrich::run(&self.http, source, ctx.task, ctx.timeout).await,
                None => Err(TaskError::validation(
                    "unknown_type",
                    "enrich.cve: this worker has no CVE cache configured",
                )),
            },
            other => match self.tools.get(other) {
                Some(def) => {
                    let env = tool::ToolEnv {
                        exec: &self.exec,
                        resources: &self.resources,
                        max_output: self.max_output_bytes,
                        classifier: &self.classifier,
                        retry: (ctx.retry_count, ctx.requeue_count),
                    };
                    tool::run(&env, def, ctx.task, ctx.timeout).await
                }
                None => Err(TaskError::validation(
                    "unknown_type",
                    format!(
                        "no handler for node type `{other}` (known: {}, {})",
                        KNOWN_TYPES.join(", "),
                        self.tools.names().join(", ")
                    ),
                )),
            },
        }
    }
}

impl Handlers {
    /// Runs an exec hook: `argv` through the same path as `exec` tasks (this pool's allowlist,
    /// scrubbed environment, private directory `{label}-…`, process group killed on timeout
    /// and with the worker), `stdin` on its standard input. Exit 0 is success.
    pub async fn run_hook_program(
        &self,
        label: &str,
        argv: &[String],
        stdin: &[u8],
        timeout: Duration,
    ) -> Result<Value, TaskError> {
        let cfg = secflow_common::nodes::ExecConfig {
            argv: argv.to_vec(),
            env: BTreeMap::new(),
            cwd: None,
        };
        let limits = exec::Limits {
            timeout,
            max_output: self.max_output_bytes,
        };
        exec::run_program(
            &self.exec,
            label,
            &cfg,
            Some(stdin),
            limits,
            &self.classifier,
        )
        .await
    }
}

/// Parses a handler's config, naming the type and the field that is wrong.
fn parse_config<T: DeserializeOwned>(node_type: &str, config: &Value) -> Result<T, TaskError> {
    secflow_common::nodes::parse_config(node_type, config)
        .map_err(|e| TaskError::validation("invalid_config", e))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_handlers_that_cannot_block_run_inline() {
        for t in [
            "builtin.noop",
            "builtin.echo",
            "builtin.static",
            "builtin.sleep",
            "builtin.fail",
            "builtin.hang",
            "builtin.crash",
            "cache.last",
        ] {
            assert!(Handlers::runs_inline(t), "{t}");
        }
        // Anything that runs programs, parses their output, calls out or loops over work, and
        // the handler that blocks on purpose, keeps the handlers' runtime; so does any type
        // added later until it is listed.
        for t in [
            "builtin.block",
            "builtin.batch",
            "exec",
            "http",
            "enrich.cve",
            "nmap",
        ] {
            assert!(!Handlers::runs_inline(t), "{t}");
        }
        for t in KNOWN_TYPES {
            if Handlers::runs_inline(t) {
                assert!(t.starts_with("builtin.") || *t == "cache.last", "{t}");
            }
        }
    }
}
