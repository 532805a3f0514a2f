//! The task envelope: the JSON body of every task message, and its checks.

use crate::{
    ErrorClass,
    control::{Level, LevelOverrides},
    recipe::Alternative,
    retry::RetryPolicy,
};
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};
use uuid::Uuid;

/// The envelope schema this build writes and reads.
pub const SCHEMA_VERSION: u32 = 1;
/// Content type of task bodies.
pub const CONTENT_TYPE: &str = "application/json";
/// Longest node type, so it always fits a routing key.
const MAX_TYPE_LEN: usize = 128;

/// One unit of work: a node of a run (or an ad-hoc task), with its config and inputs.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct TaskEnvelope {
    /// Envelope schema version.
    pub schema: u32,
    /// Unique task id; also the AMQP message id and the idempotency key.
    pub task_id: Uuid,
    /// The workflow run this task belongs to, if any.
    #[serde(default)]
    pub run_id: Option<Uuid>,
    /// The node of the run (ad-hoc tasks use their type).
    pub node_id: String,
    /// Node type, also the routing key: `builtin.echo`, `exec`, `http`, ...
    #[serde(rename = "type")]
    pub node_type: String,
    /// Handler configuration.
    #[serde(default = "empty_object")]
    pub config: Value,
    /// Upstream outputs by input name.
    #[serde(default)]
    pub inputs: Map<String, Value>,
    /// Retry policy overriding the worker's default for this type.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub retry: Option<RetryPolicy>,
    /// Circuit-breaker key of the service the task calls (defaults to its type).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub service: Option<String>,
    /// Workflow nodes: whether a cached output of the same (type, config, inputs) may stand in
    /// for running it.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub cache: bool,
    /// Handler timeout in milliseconds, overriding the worker's default.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub timeout_ms: Option<u64>,
    /// Creation time, milliseconds since the epoch.
    pub created_at_ms: u64,
    /// Alternatives that may serve the task, in order, when its handler fails with a class
    /// `fallback_on` allows or its service's breaker is open.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub fallback: Vec<Alternative>,
    /// Failure classes that let the chain fall through; empty: the default ones.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub fallback_on: Vec<ErrorClass>,
    /// Config overrides by degradation level.
    #[serde(default, skip_serializing_if = "LevelOverrides::is_empty")]
    pub degrade: LevelOverrides,
    /// Workflow nodes: a failure makes the run partial instead of failing it; skipped at
    /// degradation level `low` and below.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub optional: bool,
    /// Workflow nodes: runs at every degradation level.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub essential: bool,
}

fn empty_object() -> Value {
    Value::Object(Map::new())
}

/// Why a message body is not a usable task.
#[derive(Debug, thiserror::Error, PartialEq)]
pub enum EnvelopeError {
    /// The body does not parse as JSON at all.
    #[error("body is not JSON: {0}")]
    NotJson(String),
    /// The body is JSON but not a task envelope.
    #[error("body is not a valid task envelope: {0}")]
    Schema(String),
}

impl EnvelopeError {
    /// Stable code for DLQ headers and metrics.
    pub fn code(&self) -> &'static str {
        match self {
            Self::NotJson(_) => "malformed_body",
            Self::Schema(_) => "invalid_envelope",
        }
    }
}

impl TaskEnvelope {
    /// The circuit-breaker key: the task's `service`, else its type.
    pub fn service(&self) -> &str {
        self.service.as_deref().unwrap_or(&self.node_type)
    }

    /// A new ad-hoc task of `node_type` with `config`, its node id being its type.
    pub fn new(node_type: impl Into<String>, config: Value) -> Self {
        let node_type = node_type.into();
        Self {
            schema: SCHEMA_VERSION,
            task_id: Uuid::now_v7(),
            run_id: None,
            node_id: node_type.clone(),
            node_type,
            config,
            inputs: Map::new(),
            retry: None,
            service: None,
            cache: false,
            timeout_ms: None,
            created_at_ms: crate::now_ms(),
            fallback: Vec::new(),
            fallback_on: Vec::new(),
            degrade: LevelOverrides::new(),
            optional: false,
            essential: false,
        }
    }

    /// Whether a workflow node skips its handler at `level`, and why (`None`: it runs).
    /// Ad-hoc tasks always run.
    pub fn skipped_at(&self, level: Level) -> Option<String> {
        self.run_id?;
        level.skips(self.optional, self.essential)
    }

    /// Serialises the envelope to its message body.
    pub fn to_body(&self) -> Vec<u8> {
        // Serialising a struct of strings, numbers and `Value`s cannot fail.
        serde_json::to_vec(self).unwrap_or_default()
    }

    /// Parses and checks a message body. `message_id` is the AMQP message id, which must equal
    /// the task id when present (a mismatch means the message was tampered with or mis-built).
    pub fn decode(body: &[u8], message_id: Option<&str>) -> Result<Self, EnvelopeError> {
        let env: Self = serde_json::from_slice(body).map_err(|e| {
            if e.is_data() {
                EnvelopeError::Schema(e.to_string())
            } else {
                EnvelopeError::NotJson(e.to_string())
            }
        })?;
        env.check().map_err(EnvelopeError::Schema)?;
        if let Some(id) = message_id
            && id != env.task_id.to_string()
        {
            return Err(EnvelopeError::Schema(format!(
                "message id `{id}` does not match task_id `{}`",
                env.task_id
            )));
        }
        Ok(env)
    }

    /// Checks the fields serde cannot: version, type syntax, config shape, retry policy.
    pub fn check(&self) -> Result<(), String> {
        if self.schema != SCHEMA_VERSION {
            return Err(format!(
                "unsupported schema version {} (this worker reads {SCHEMA_VERSION})",
                self.schema
            ));
        }
        check_node_type(&self.node_type)?;
        if self.node_id.is_empty() || self.node_id.len() > 200 {
            return Err("node_id must be 1 to 200 characters".into());
        }
        if !self.config.is_object() {
            return Err("config must be a JSON object".into());
        }
        if let Some(service) = &self.service
            && (service.is_empty() || service.len() > 128 || service.contains(['{', '}']))
        {
            return Err("service must be 1 to 128 characters without braces".into());
        }
        if let Some(policy) = &self.retry {
            policy.validate()?;
        }
        for (i, alt) in self.fallback.iter().enumerate() {
            check_node_type(&alt.node_type).map_err(|e| format!("fallback[{i}]: {e}"))?;
            if !alt.config.is_object() {
                return Err(format!("fallback[{i}]: config must be a JSON object"));
            }
        }
        crate::control::level::check_overrides(&self.degrade)
            .map_err(|e| format!("degrade: {e}"))?;
        Ok(())
    }
}

impl TaskEnvelope {
    /// SHA-256 (hex) of what determines the node's result: type, config and inputs.
    pub fn cache_key(&self) -> String {
        use sha2::{Digest, Sha256};
        let mut hasher = Sha256::new();
        hasher.update(self.node_type.as_bytes());
        hasher.update([0]);
        hasher.update(self.config.to_string().as_bytes());
        hasher.update([0]);
        hasher.update(
            serde_json::Value::Object(self.inputs.clone())
                .to_string()
                .as_bytes(),
        );
        hex::encode(hasher.finalize())
    }
}

/// A node type is dot-separated lowercase words (`scan.nuclei`), usable as a routing key.
pub fn check_node_type(node_type: &str) -> Result<(), String> {
    let word_ok = |w: &str| {
        !w.is_empty()
            && w.bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_' || b == b'-')
    };
    if node_type.len() > MAX_TYPE_LEN || !node_type.split('.').all(word_ok) {
        return Err(format!(
            "type `{}` is not a valid node type (dot-separated lowercase words, at most {MAX_TYPE_LEN} characters)",
            node_type.chars().take(MAX_TYPE_LEN).collect::<String>()
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn round_trips_and_checks_message_id() {
        let env = TaskEnvelope::new("builtin.echo", json!({"message": "hi"}));
        let body = env.to_body();
        let id = env.task_id.to_string();
        assert_eq!(TaskEnvelope::decode(&body, Some(&id)), Ok(env));
        let err = TaskEnvelope::decode(&body, Some("other")).unwrap_err();
        assert!(err.to_string().contains("does not match"));
    }

    #[test]
    fn not_json_and_schema_errors_are_told_apart() {
        assert_eq!(
            TaskEnvelope::decode(b"{oops", None).unwrap_err().code(),
            "malformed_body"
        );
        assert_eq!(
            TaskEnvelope::decode(b"\xff\xfe", None).unwrap_err().code(),
            "malformed_body"
        );
        let err = TaskEnvelope::decode(br#"{"schema":1}"#, None).unwrap_err();
        assert_eq!(err.code(), "invalid_envelope");
        assert!(err.to_string().contains("task_id"), "{err}");
    }

    #[test]
    fn an_envelope_without_degradation_fields_is_byte_identical() {
        let body = br#"{"schema":1,"task_id":"0190a6f3-7c2e-7000-8000-000000000001","run_id":null,"node_id":"n","type":"builtin.echo","config":{},"inputs":{},"created_at_ms":5}"#;
        let env = TaskEnvelope::decode(body, None).unwrap();
        assert_eq!(env.to_body(), body.to_vec());
        let mut chained = env.clone();
        chained.fallback.push(Alternative {
            node_type: "builtin.static".into(),
            config: json!({"x": 1}),
            timeout_ms: None,
            service: None,
            quality: Level::Low,
        });
        chained.essential = true;
        let back = TaskEnvelope::decode(&chained.to_body(), None).unwrap();
        assert_eq!(back, chained);
        chained.fallback[0].node_type = "Bad Type".into();
        assert!(chained.check().unwrap_err().contains("fallback[0]"));
    }

    #[test]
    fn only_workflow_nodes_are_skipped() {
        let mut env = TaskEnvelope::new("builtin.echo", json!({}));
        assert_eq!(env.skipped_at(Level::Minimal), None, "ad-hoc tasks run");
        env.run_id = Some(Uuid::nil());
        assert!(env.skipped_at(Level::Minimal).is_some());
        env.essential = true;
        assert_eq!(env.skipped_at(Level::Minimal), None);
    }

    #[test]
    fn rejects_bad_types_versions_and_config() {
        let mut env = TaskEnvelope::new("Scan Nuclei", json!({}));
        assert!(env.check().unwrap_err().contains("Scan Nuclei"));
        env.node_type = "scan.nuclei".into();
        env.schema = 9;
        assert!(env.check().unwrap_err().contains("version 9"));
        env.schema = SCHEMA_VERSION;
        env.config = json!([1]);
        assert!(env.check().unwrap_err().contains("config"));
    }
}
