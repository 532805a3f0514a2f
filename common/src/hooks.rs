//! Hooks: where the fleet reports completions, per recipe (`hooks:` in the recipe) or per fleet
//! (the worker's `--hooks FILE`, the same shape). Parsed and checked here, for the producer
//! (which refuses a recipe with bad hooks) and the worker (which refuses to start with a bad
//! hooks file); delivered by the worker's hook dispatcher.
//!
//! ```yaml
//! hooks:
//!   on_node_complete:
//!     - url: "http://127.0.0.1:9000/secflow"   # POST, JSON body = the event
//!       timeout: 10s                           # per attempt
//!       max_attempts: 8
//!   on_workflow_complete:
//!     - exec: ["notify", "--channel", "secops"] # the event JSON on stdin
//! ```

use hmac::{KeyInit, Mac};
use serde::{Deserialize, Serialize};
use std::{fmt, time::Duration};

/// Default time one attempt may take.
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(10);
/// Shortest attempt timeout a hook may set.
pub const MIN_TIMEOUT: Duration = Duration::from_millis(100);
/// Longest attempt timeout a hook may set.
pub const MAX_TIMEOUT: Duration = Duration::from_secs(60);
/// Default attempts per delivery.
pub const DEFAULT_MAX_ATTEMPTS: u32 = 8;
/// Most attempts per delivery: with the 60 s caps on timeout and backoff, a delivery ends
/// within about 14 minutes, well inside the broker's 30 min `consumer_timeout`.
pub const MAX_ATTEMPTS: u32 = 10;
/// Most hooks in one list.
pub const MAX_HOOKS_PER_LIST: usize = 16;
/// Shortest hook secret, bytes.
pub const MIN_SECRET_LEN: usize = 16;
/// Event kinds (routing keys) the hooks queue receives.
pub const ROUTING_KEYS: [&str; 3] = ["node.completed", "workflow.completed", "workflow.failed"];

/// The hooks of a recipe or a fleet, as written.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HooksSpec {
    /// Fired for each `node.completed` event.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub on_node_complete: Vec<HookSpec>,
    /// Fired for each run end: `workflow.completed` and `workflow.failed` events.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub on_workflow_complete: Vec<HookSpec>,
}

/// One hook as written: a webhook (`url`) or a program (`exec`), never both.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HookSpec {
    /// HTTP(S) URL the event is POSTed to.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub url: Option<String>,
    /// Program and arguments run with the event JSON on stdin.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub exec: Option<Vec<String>>,
    /// Time one attempt may take (`10s`, `500ms`); default 10 s, at most 60 s.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub timeout: Option<String>,
    /// Attempts per delivery; default 8, at most 10.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_attempts: Option<u32>,
}

/// What a hook fires on.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum HookOn {
    /// `node.completed`.
    NodeComplete,
    /// `workflow.completed` and `workflow.failed`.
    WorkflowComplete,
}

impl HookOn {
    /// The list's name in YAML (`on_node_complete`).
    pub fn name(self) -> &'static str {
        match self {
            Self::NodeComplete => "on_node_complete",
            Self::WorkflowComplete => "on_workflow_complete",
        }
    }

    /// The list an event of `kind` fires, if any.
    pub fn for_event(kind: &str) -> Option<Self> {
        match kind {
            "node.completed" => Some(Self::NodeComplete),
            "workflow.completed" | "workflow.failed" => Some(Self::WorkflowComplete),
            _ => None,
        }
    }
}

/// Where a hook delivers.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum HookTarget {
    /// POST to this URL.
    Http {
        /// The URL.
        url: String,
    },
    /// Run this argv under the pool's exec allowlist.
    Exec {
        /// Program and arguments.
        argv: Vec<String>,
    },
}

impl HookTarget {
    /// `http` or `exec` (the `hook_kind` metric label).
    pub fn kind(&self) -> &'static str {
        match self {
            Self::Http { .. } => "http",
            Self::Exec { .. } => "exec",
        }
    }
}

/// A checked hook, ready to deliver.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Hook {
    /// Stable id: `fleet:on_node_complete:0`, `run:RUN_ID:on_workflow_complete:1`.
    pub id: String,
    /// What it fires on.
    pub on: HookOn,
    /// Where it delivers.
    pub target: HookTarget,
    /// Time one attempt may take.
    pub timeout: Duration,
    /// Attempts per delivery.
    pub max_attempts: u32,
}

/// One problem in a hooks section, with the field it is in (`hooks.on_node_complete[0].url`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct HookProblem {
    /// Field path.
    pub field: String,
    /// What is wrong.
    pub message: String,
}

impl fmt::Display for HookProblem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.field, self.message)
    }
}

impl HooksSpec {
    /// Whether no hook is configured.
    pub fn is_empty(&self) -> bool {
        self.on_node_complete.is_empty() && self.on_workflow_complete.is_empty()
    }

    fn lists(&self) -> [(HookOn, &[HookSpec]); 2] {
        [
            (HookOn::NodeComplete, &self.on_node_complete),
            (HookOn::WorkflowComplete, &self.on_workflow_complete),
        ]
    }

    /// Every problem, each naming its field; empty when valid.
    pub fn problems(&self) -> Vec<HookProblem> {
        match self.resolve("check") {
            Ok(_) => Vec::new(),
            Err(problems) => problems,
        }
    }

    /// The checked hooks, their ids starting with `prefix` (`fleet`, `run:RUN_ID`), or every
    /// problem found.
    pub fn resolve(&self, prefix: &str) -> Result<Vec<Hook>, Vec<HookProblem>> {
        let mut hooks = Vec::new();
        let mut problems = Vec::new();
        for (on, list) in self.lists() {
            if list.len() > MAX_HOOKS_PER_LIST {
                problems.push(HookProblem {
                    field: format!("hooks.{}", on.name()),
                    message: format!(
                        "{} hooks, at most {MAX_HOOKS_PER_LIST} are allowed",
                        list.len()
                    ),
                });
            }
            for (i, spec) in list.iter().enumerate() {
                let field = format!("hooks.{}[{i}]", on.name());
                match spec.check(&field) {
                    Ok((target, timeout, max_attempts)) => hooks.push(Hook {
                        id: format!("{prefix}:{}:{i}", on.name()),
                        on,
                        target,
                        timeout,
                        max_attempts,
                    }),
                    Err(mut found) => problems.append(&mut found),
                }
            }
        }
        if problems.is_empty() {
            Ok(hooks)
        } else {
            Err(problems)
        }
    }
}

impl HookSpec {
    /// The hook's target, attempt timeout and attempts, or its problems (named under `field`).
    fn check(&self, field: &str) -> Result<(HookTarget, Duration, u32), Vec<HookProblem>> {
        let mut problems = Vec::new();
        let mut problem = |sub: &str, message: String| {
            problems.push(HookProblem {
                field: if sub.is_empty() {
                    field.to_string()
                } else {
                    format!("{field}.{sub}")
                },
                message,
            });
        };
        let target = match (&self.url, &self.exec) {
            (Some(_), Some(_)) => {
                problem("", "has both `url` and `exec`: give one".into());
                None
            }
            (None, None) => {
                problem(
                    "",
                    "needs `url` (a webhook) or `exec` (a program to run)".into(),
                );
                None
            }
            (Some(url), None) => match check_url(url) {
                Ok(()) => Some(HookTarget::Http { url: url.clone() }),
                Err(e) => {
                    problem("url", e);
                    None
                }
            },
            (None, Some(argv)) => match check_argv(argv) {
                Ok(()) => Some(HookTarget::Exec { argv: argv.clone() }),
                Err(e) => {
                    problem("exec", e);
                    None
                }
            },
        };
        let timeout = match self.timeout.as_deref().map(crate::duration::parse_ms) {
            None => DEFAULT_TIMEOUT,
            Some(Ok(ms)) => {
                let t = Duration::from_millis(ms);
                if !(MIN_TIMEOUT..=MAX_TIMEOUT).contains(&t) {
                    problem(
                        "timeout",
                        format!(
                            "`{}` must be between {} ms and {} s",
                            self.timeout.as_deref().unwrap_or_default(),
                            MIN_TIMEOUT.as_millis(),
                            MAX_TIMEOUT.as_secs()
                        ),
                    );
                }
                t
            }
            Some(Err(e)) => {
                problem("timeout", e);
                DEFAULT_TIMEOUT
            }
        };
        let attempts = self.max_attempts.unwrap_or(DEFAULT_MAX_ATTEMPTS);
        if !(1..=MAX_ATTEMPTS).contains(&attempts) {
            problem(
                "max_attempts",
                format!("{attempts} must be between 1 and {MAX_ATTEMPTS}"),
            );
        }
        match target {
            Some(target) if problems.is_empty() => Ok((target, timeout, attempts)),
            _ => Err(problems),
        }
    }
}

/// An absolute `http://` or `https://` URL with a host, no spaces or control characters.
fn check_url(url: &str) -> Result<(), String> {
    let lower = url.to_ascii_lowercase();
    let rest = lower
        .strip_prefix("http://")
        .or_else(|| lower.strip_prefix("https://"))
        .ok_or_else(|| format!("`{url}` must be an http:// or https:// URL"))?;
    let host = rest.split(['/', '?', '#']).next().unwrap_or_default();
    let host = host.rsplit('@').next().unwrap_or_default();
    if host.is_empty() || host.starts_with(':') {
        return Err(format!("`{url}` has no host"));
    }
    if url.len() > 2048 || url.chars().any(|c| c.is_whitespace() || c.is_control()) {
        return Err("must be at most 2048 characters without spaces or control characters".into());
    }
    Ok(())
}

/// A program name and its arguments, no NUL bytes.
fn check_argv(argv: &[String]) -> Result<(), String> {
    match argv.first() {
        None => Err("must name a program: [\"program\", \"arg\", ...]".into()),
        Some(p) if p.trim().is_empty() => Err("the program name is empty".into()),
        Some(_) if argv.iter().any(|a| a.contains('\0')) => {
            Err("arguments may not contain NUL bytes".into())
        }
        Some(_) => Ok(()),
    }
}

/// A fleet hooks file: a top-level `hooks:` mapping, like a recipe's.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct HooksFile {
    hooks: HooksSpec,
}

/// Parses and checks a fleet hooks file read from `source`; the error names the file and every
/// problem.
pub fn parse_file(source: &str, text: &str) -> Result<Vec<Hook>, String> {
    let file: HooksFile =
        yaml_serde::from_str(text).map_err(|e| format!("{source}: not a valid hooks file: {e}"))?;
    file.hooks.resolve("fleet").map_err(|problems| {
        problems
            .iter()
            .map(|p| format!("{source}: {p}"))
            .collect::<Vec<_>>()
            .join("\n")
    })
}

/// `X-SecFlow-Signature`: `sha256=` + hex HMAC-SHA256 of `"<timestamp>.<body>"` keyed by the
/// fleet's hook secret.
pub fn signature(secret: &[u8], timestamp: u64, body: &[u8]) -> String {
    let Ok(mut mac) = hmac::Hmac::<sha2::Sha256>::new_from_slice(secret) else {
        // HMAC takes keys of any length; this branch is unreachable in practice.
        return String::new();
    };
    mac.update(timestamp.to_string().as_bytes());
    mac.update(b".");
    mac.update(body);
    format!("sha256={}", hex::encode(mac.finalize().into_bytes()))
}

/// Redis key marking that hook `hook_id` delivered event `event_id`.
pub fn marker_key(ns: &str, hook_id: &str, event_id: &str) -> String {
    format!("sf:{{{ns}}}:hook:{hook_id}:{event_id}")
}

mod sealed;

pub use sealed::SealedHooks;

#[cfg(test)]
mod tests;
