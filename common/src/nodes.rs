//! The node types the fleet runs and the shape of each one's config, shared by the worker
//! (which runs them) and the producer (which validates recipes before publishing anything).

use crate::task_error::ErrorClass;
use serde::{Deserialize, de::DeserializeOwned};
use serde_json::Value;
use std::collections::BTreeMap;

mod kinds;

pub use kinds::{OutputKind, argv_index, needs_text, output_kind, textified};

/// Every node type a worker can run.
pub const KNOWN_TYPES: &[&str] = &[
    "builtin.noop",
    "builtin.echo",
    "builtin.static",
    "cache.last",
    "builtin.sleep",
    "builtin.fail",
    "builtin.crash",
    "builtin.hang",
    "builtin.block",
    "builtin.batch",
    "exec",
    "http",
    "enrich.cve",
];

/// `cache.last`, a fallback alternative: the last output its node produced for the same type,
/// config and inputs, from the output cache. Recipes give it no config; the worker fills `key`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CacheLastConfig {
    /// The cache key of the node as written (set by the worker).
    #[serde(default)]
    pub key: Option<String>,
}

/// The node type of the cache alternative.
pub const CACHE_LAST: &str = "cache.last";

/// `enrich.cve`: CVE records for the CVE ids its `findings` input mentions.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EnrichConfig {
    /// Databases the CVE source is asked to consult (`nvd`, `osv`, `exploitdb`, ...).
    #[serde(default = "default_sources")]
    pub sources: Vec<String>,
}

fn default_sources() -> Vec<String> {
    vec!["nvd".into()]
}

/// `builtin.sleep`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SleepConfig {
    /// Milliseconds to sleep.
    pub ms: u64,
}

/// `builtin.batch`: processes `items` items one after the other, checkpointing its progress
/// so a crash resumes where it stopped.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BatchConfig {
    /// Items to process (1 to 1,000,000).
    pub items: u64,
    /// Milliseconds each item takes.
    #[serde(default)]
    pub item_ms: u64,
    /// Save progress after every this many items (at least 1).
    #[serde(default = "one")]
    pub checkpoint_every: u64,
    /// Fault injection: abort the worker process once this many items are checkpointed, unless
    /// the attempt resumed at or past that point (so the resumed attempt completes).
    #[serde(default)]
    pub crash_after: Option<u64>,
}

fn one() -> u64 {
    1
}

impl BatchConfig {
    fn check(&self) -> Result<(), String> {
        if !(1..=1_000_000).contains(&self.items) {
            return Err("builtin.batch: invalid config: items must be 1 to 1000000".into());
        }
        if self.checkpoint_every == 0 {
            return Err(
                "builtin.batch: invalid config: checkpoint_every must be at least 1".into(),
            );
        }
        Ok(())
    }
}

/// `builtin.fail`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FailConfig {
    /// Fail the first `times` attempts, then succeed; absent = fail every time.
    pub times: Option<u64>,
    /// Class of the injected failure.
    #[serde(default = "transient")]
    pub class: ErrorClass,
    /// Code of the injected failure.
    #[serde(default = "injected")]
    pub code: String,
    /// Message of the injected failure.
    #[serde(default)]
    pub message: Option<String>,
    /// Retry-After to report, ms.
    #[serde(default)]
    pub retry_after_ms: Option<u64>,
}

fn transient() -> ErrorClass {
    ErrorClass::Transient
}

fn injected() -> String {
    "injected".into()
}

/// `exec`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ExecConfig {
    /// Program and arguments (no shell).
    pub argv: Vec<String>,
    /// Extra environment; the worker's own environment is not passed on (only PATH).
    #[serde(default)]
    pub env: BTreeMap<String, String>,
    /// Working directory.
    #[serde(default)]
    pub cwd: Option<String>,
}

/// `http`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HttpConfig {
    /// URL.
    pub url: String,
    /// GET, POST, HEAD, PUT or DELETE.
    #[serde(default = "get")]
    pub method: String,
    /// Request headers.
    #[serde(default)]
    pub headers: BTreeMap<String, String>,
    /// Raw request body.
    #[serde(default)]
    pub body: Option<String>,
    /// JSON request body (sets the content type).
    #[serde(default)]
    pub json: Option<Value>,
}

fn get() -> String {
    "GET".into()
}

/// Parses a node's config, the error naming the type and the field that is wrong.
pub fn parse_config<T: DeserializeOwned>(node_type: &str, config: &Value) -> Result<T, String> {
    T::deserialize(config).map_err(|e| format!("{node_type}: invalid config: {e}"))
}

/// Checks `config` against the shape `node_type` expects.
pub fn check_config(node_type: &str, config: &Value) -> Result<(), String> {
    match node_type {
        "builtin.sleep" | "builtin.block" => {
            parse_config::<SleepConfig>(node_type, config).map(drop)
        }
        "builtin.fail" => parse_config::<FailConfig>(node_type, config).map(drop),
        "cache.last" => parse_config::<CacheLastConfig>(node_type, config).map(drop),
        "enrich.cve" => {
            let cfg: EnrichConfig = parse_config(node_type, config)?;
            match cfg.sources.iter().find(|s| {
                s.is_empty()
                    || !s
                        .bytes()
                        .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
            }) {
                Some(bad) => Err(format!(
                    "enrich.cve: invalid config: source `{bad}` must be a word such as nvd, osv or exploitdb"
                )),
                None => Ok(()),
            }
        }
        "builtin.batch" => parse_config::<BatchConfig>(node_type, config)?.check(),
        "exec" => {
            let cfg: ExecConfig = parse_config(node_type, config)?;
            if cfg.argv.is_empty() {
                Err("exec: invalid config: argv must name a program".into())
            } else {
                Ok(())
            }
        }
        "http" => {
            let cfg: HttpConfig = parse_config(node_type, config)?;
            match cfg.method.to_ascii_uppercase().as_str() {
                "GET" | "POST" | "HEAD" | "PUT" | "DELETE" => Ok(()),
                other => Err(format!(
                    "http: invalid config: unsupported method `{other}`"
                )),
            }
        }
        t if KNOWN_TYPES.contains(&t) => Ok(()),
        other => Err(format!(
            "unknown node type `{other}` (known: {})",
            KNOWN_TYPES.join(", ")
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn configs_are_checked_per_type() {
        assert!(check_config("exec", &json!({"argv": ["nmap", "-sV"]})).is_ok());
        assert!(
            check_config("exec", &json!({"argv": []}))
                .unwrap_err()
                .contains("argv")
        );
        assert!(
            check_config("http", &json!({"url": "http://x", "verb": "GET"}))
                .unwrap_err()
                .contains("verb")
        );
        assert!(
            check_config("builtin.sleep", &json!({}))
                .unwrap_err()
                .contains("ms")
        );
        assert!(
            check_config("scan.magic", &json!({}))
                .unwrap_err()
                .contains("unknown node type")
        );
        assert!(check_config("builtin.echo", &json!({"anything": 1})).is_ok());
    }
}
