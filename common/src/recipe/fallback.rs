//! Fallback chains: the alternatives a node may be served by when its own handler fails (or
//! its service's breaker is open), in order of preference, each with the quality it gives.
//!
//! ```yaml
//! - id: cves
//!   type: http
//!   config: { url: "http://cve-primary/feed" }
//!   fallback_on: [transient, resource]
//!   fallback:
//!     - { type: http, config: { url: "http://cve-mirror/feed" }, timeout: 5s, quality: high }
//!     - { type: builtin.static, config: { body: "[]" }, quality: minimal }
//! ```
//!
//! A recipe writes [`AlternativeSpec`]s (timeouts as `5s`); the task envelope carries
//! [`Alternative`]s (milliseconds, parameters filled in). A worker's `--fallbacks FILE` maps a
//! service to a chain for nodes that declare none ([`parse_fleet`]).

use super::{Catalog, template};
use crate::{ErrorClass, control::Level, duration, nodes};
use serde::{Deserialize, Serialize};
use serde_json::Value;
use std::collections::BTreeMap;

/// Longest timeout of an alternative: the node timeout cap.
const MAX_TIMEOUT_MS: u64 = 25 * 60 * 1000;
/// Most alternatives one chain may have.
pub const MAX_ALTERNATIVES: usize = 8;

/// The classes that let a failure fall through when a node does not say (`fallback_on`).
pub const DEFAULT_FALLBACK_ON: [ErrorClass; 4] = [
    ErrorClass::Transient,
    ErrorClass::Resource,
    ErrorClass::Unknown,
    ErrorClass::Permanent,
];

/// Classes a chain never falls through on: the task itself is wrong, forged, or stopped.
pub const NEVER_FALL_THROUGH: [ErrorClass; 3] = [
    ErrorClass::Security,
    ErrorClass::Validation,
    ErrorClass::Cancelled,
];

/// One alternative as a recipe or a `--fallbacks` file writes it.
#[derive(Clone, Debug, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AlternativeSpec {
    /// Node type of the alternative.
    #[serde(rename = "type")]
    pub node_type: String,
    /// Its config; may reference `${params.NAME}` and `${inputs.NAME}` like the node's.
    #[serde(default = "empty_object")]
    pub config: Value,
    /// Its handler timeout (`5s`); default: its type's.
    #[serde(default)]
    pub timeout: Option<String>,
    /// Its circuit-breaker key (default: its type).
    #[serde(default)]
    pub service: Option<String>,
    /// The quality of what it serves (default `low`).
    #[serde(default = "low")]
    pub quality: Level,
}

/// One alternative as a task carries it.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Alternative {
    /// Node type of the alternative.
    #[serde(rename = "type")]
    pub node_type: String,
    /// Its config (parameters filled in; inputs filled in when the task is published).
    #[serde(default = "empty_object")]
    pub config: Value,
    /// Its handler timeout, ms.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub timeout_ms: Option<u64>,
    /// Its circuit-breaker key (default: its type).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub service: Option<String>,
    /// The quality of what it serves.
    #[serde(default = "low")]
    pub quality: Level,
}

impl Alternative {
    /// The circuit-breaker key: its `service`, else its type.
    pub fn service(&self) -> &str {
        self.service.as_deref().unwrap_or(&self.node_type)
    }
}

/// Which alternative served a node: its place in the chain (1 = the first alternative) and
/// its type.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ServedBy {
    /// 1-based position in the chain (the primary is not an alternative).
    pub index: usize,
    /// Node type of the alternative.
    #[serde(rename = "type")]
    pub node_type: String,
}

fn empty_object() -> Value {
    Value::Object(serde_json::Map::new())
}

fn low() -> Level {
    Level::Low
}

impl AlternativeSpec {
    /// The alternative a task carries, `value_of` filling in parameters. Call after
    /// [`check_chain`] found it valid (a timeout that does not parse is dropped).
    pub fn resolve(&self, value_of: &dyn Fn(&str) -> Option<Value>) -> Alternative {
        Alternative {
            node_type: self.node_type.clone(),
            config: template::substitute_params(&self.config, value_of),
            timeout_ms: self
                .timeout
                .as_deref()
                .and_then(|t| duration::parse_ms(t).ok()),
            service: self.service.clone(),
            quality: self.quality,
        }
    }
}

/// Whether a failure of `class` lets the chain fall through under `on` (empty: the default
/// classes). Security, validation and cancelled failures never do.
pub fn falls_through(class: ErrorClass, on: &[ErrorClass]) -> bool {
    if NEVER_FALL_THROUGH.contains(&class) {
        return false;
    }
    if on.is_empty() {
        DEFAULT_FALLBACK_ON.contains(&class)
    } else {
        on.contains(&class)
    }
}

/// Problems of a `fallback_on` list, as messages.
pub fn check_fallback_on(on: &[ErrorClass]) -> Vec<String> {
    on.iter()
        .filter(|c| NEVER_FALL_THROUGH.contains(c))
        .map(|c| {
            format!(
                "`{c}` cannot allow a fallback: a {c} failure means the task itself must not run again (allowed: transient, resource, unknown, permanent)"
            )
        })
        .collect()
}

/// Problems of a chain as `(field, message)`, fields under `prefix` (`fallback`): at most
/// [`MAX_ALTERNATIVES`] alternatives, each of a known type with a config of its shape (once
/// `value_of` filled in parameters), a timeout between 1 ms and 25 m and a valid service.
/// Alternatives referring to inputs have those checked against `node_inputs`.
pub fn check_chain(
    prefix: &str,
    chain: &[AlternativeSpec],
    node_inputs: &[&str],
    value_of: &dyn Fn(&str) -> Option<Value>,
    catalog: &Catalog,
) -> Vec<(String, String)> {
    let mut problems = Vec::new();
    if chain.len() > MAX_ALTERNATIVES {
        problems.push((
            prefix.to_string(),
            format!("{} alternatives, at most {MAX_ALTERNATIVES}", chain.len()),
        ));
    }
    for (i, alt) in chain.iter().enumerate() {
        let field = |f: &str| format!("{prefix}[{i}].{f}");
        if !catalog.knows(&alt.node_type) {
            problems.push((
                field("type"),
                format!(
                    "unknown node type `{}` (known: {})",
                    alt.node_type,
                    catalog.known()
                ),
            ));
            continue;
        }
        if !alt.config.is_object() {
            problems.push((field("config"), "must be a mapping".into()));
            continue;
        }
        let refs = template::references(&alt.config);
        for (path, name) in &refs.params {
            if value_of(name).is_none() {
                problems.push((
                    format!("{prefix}[{i}].{path}"),
                    format!("`${{params.{name}}}` has no value: declare the parameter, give it a default or pass --param {name}=VALUE"),
                ));
            }
        }
        for (path, name) in &refs.inputs {
            if !node_inputs.contains(&name.as_str()) {
                problems.push((
                    format!("{prefix}[{i}].{path}"),
                    format!("`${{inputs.{name}}}`: the node declares no input `{name}`"),
                ));
            }
        }
        let resolved = nodes::textified(
            &alt.node_type,
            template::substitute_params(&alt.config, value_of),
        );
        if let Some(def) = catalog.tools.get(&alt.node_type) {
            for message in def.check_config(&resolved) {
                problems.push((field("config"), message));
            }
        } else if refs.inputs.is_empty()
            && template::references(&resolved).params.is_empty()
            && let Err(e) = nodes::check_config(&alt.node_type, &resolved)
        {
            problems.push((field("config"), e));
        }
        if let Some(timeout) = &alt.timeout {
            match duration::parse_ms(timeout) {
                Ok(ms) if ms == 0 || ms > MAX_TIMEOUT_MS => problems.push((
                    field("timeout"),
                    format!("`{timeout}` must be between 1 ms and 25 m"),
                )),
                Ok(_) => {}
                Err(e) => problems.push((field("timeout"), e)),
            }
        }
        if let Some(service) = &alt.service
            && (service.is_empty() || service.len() > 128 || service.contains(['{', '}']))
        {
            problems.push((
                field("service"),
                "must be 1 to 128 characters without braces".into(),
            ));
        }
        if alt.quality == Level::Full {
            problems.push((
                field("quality"),
                "an alternative cannot serve `full` quality: only the node itself does (use high, medium, low or minimal)".into(),
            ));
        }
    }
    problems
}

/// A fleet's fallback chains (`worker --fallbacks FILE`): service → alternatives, for tasks
/// whose node declares none.
pub type FleetChains = BTreeMap<String, Vec<Alternative>>;

/// Parses and checks a `--fallbacks` file (YAML, service → list of alternatives) against the
/// built-in tools and `catalog`. The error names the service, the alternative and the field.
pub fn parse_fleet(text: &str, catalog: &Catalog) -> Result<FleetChains, String> {
    let specs: BTreeMap<String, Vec<AlternativeSpec>> = yaml_serde::from_str(text)
        .map_err(|e| format!("not a map of service → alternatives: {e}"))?;
    let no_params = |_: &str| None;
    let mut problems = Vec::new();
    for (service, chain) in &specs {
        for (field, message) in check_chain(service, chain, &[], &no_params, catalog) {
            problems.push(format!("{field}: {message}"));
        }
    }
    if !problems.is_empty() {
        return Err(problems.join("; "));
    }
    Ok(specs
        .into_iter()
        .map(|(service, chain)| {
            let resolved = chain.iter().map(|a| a.resolve(&no_params)).collect();
            (service, resolved)
        })
        .collect())
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn spec(v: Value) -> AlternativeSpec {
        serde_json::from_value(v).unwrap()
    }

    #[test]
    fn only_allowed_classes_fall_through() {
        assert!(falls_through(ErrorClass::Transient, &[]));
        assert!(falls_through(ErrorClass::Permanent, &[]));
        assert!(!falls_through(ErrorClass::Security, &[]));
        assert!(!falls_through(ErrorClass::Validation, &[]));
        assert!(!falls_through(ErrorClass::Cancelled, &[]));
        assert!(!falls_through(
            ErrorClass::Permanent,
            &[ErrorClass::Transient]
        ));
        assert!(!falls_through(
            ErrorClass::Security,
            &[ErrorClass::Security]
        ));
        let bad = check_fallback_on(&[ErrorClass::Transient, ErrorClass::Security]);
        assert_eq!(bad.len(), 1);
        assert!(bad[0].contains("`security`"), "{bad:?}");
    }

    #[test]
    fn alternatives_are_checked_like_nodes() {
        let none = |_: &str| None;
        let chain = [
            spec(json!({"type": "http", "config": {"url": "http://x"}, "timeout": "5s"})),
            spec(json!({"type": "scan.magic"})),
            spec(json!({"type": "http", "config": {"verb": "GET"}})),
            spec(json!({"type": "builtin.static", "timeout": "2h", "quality": "full"})),
            spec(json!({"type": "builtin.echo", "config": {"x": "${inputs.nope}"}})),
        ];
        let problems = check_chain("fallback", &chain, &["findings"], &none, Catalog::builtin());
        let fields: Vec<&str> = problems.iter().map(|(f, _)| f.as_str()).collect();
        assert_eq!(
            fields,
            [
                "fallback[1].type",
                "fallback[2].config",
                "fallback[3].timeout",
                "fallback[3].quality",
                "fallback[4].config.x",
            ],
            "{problems:?}"
        );
        assert_eq!(chain[0].quality, Level::Low, "alternatives default to low");
        let alt = chain[0].resolve(&none);
        assert_eq!((alt.timeout_ms, alt.service()), (Some(5000), "http"));
    }

    #[test]
    fn a_fleet_file_maps_services_to_checked_chains() {
        let ok = parse_fleet(
            "cve-api:\n  - { type: builtin.static, config: { cves: [] }, quality: minimal }\n",
            Catalog::builtin(),
        )
        .unwrap();
        assert_eq!(ok["cve-api"][0].quality, Level::Minimal);
        let err = parse_fleet("svc:\n  - { type: nope }\n", Catalog::builtin()).unwrap_err();
        assert!(err.contains("svc[0].type"), "{err}");
        assert!(parse_fleet("[1, 2]", Catalog::builtin()).is_err());
    }
}
