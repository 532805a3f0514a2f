//! Per-level parameters: a tool definition's `degrade:` overrides of its settings, checked when
//! the definition is loaded, and the config a task runs with at a degradation level (the
//! tool's overrides first, then the node's own, which win).

use super::{ToolDef, def::DefProblem};
use crate::control::{
    Level, LevelOverrides,
    level::{apply, check_overrides, overrides_at},
};
use serde_json::{Map, Value};

/// Checks a definition's overrides: the level rules, only declared settings, replacement
/// values valid for their setting, factors on numeric settings only.
pub(super) fn check(def: &ToolDef) -> Result<(), DefProblem> {
    let overrides = &def.spec.degrade;
    check_overrides(overrides).map_err(|e| ("degrade".to_string(), e))?;
    for (level, patch) in overrides {
        for (key, value) in patch {
            let field = format!("degrade.{level}.{key}");
            let Some(setting) = def.config.iter().find(|c| &c.name == key) else {
                return Err((
                    field,
                    format!(
                        "`{key}` is not a setting of this tool (its settings: {})",
                        def.config_names().join(", ")
                    ),
                ));
            };
            if is_factor(value) {
                if !matches!(
                    setting.spec.kind,
                    super::ConfigType::Integer | super::ConfigType::Number
                ) {
                    return Err((
                        field,
                        "a factor applies to integer and number settings only".into(),
                    ));
                }
            } else {
                super::config::check_value(setting, value, true).map_err(|e| (field, e))?;
            }
        }
    }
    Ok(())
}

fn is_factor(value: &Value) -> bool {
    value.as_str().is_some_and(|s| s.starts_with('x'))
}

impl ToolDef {
    /// Its settings' overrides by degradation level.
    pub fn degrade(&self) -> &LevelOverrides {
        &self.spec.degrade
    }
}

/// `config` as it runs at `level`: the tool's overrides (when the task's type is a tool), then
/// the node's. A factor for a tool setting the config leaves at its default scales the
/// default. Returns the new config and the keys that changed; at `full`, or with nothing to
/// apply, the config unchanged.
pub fn config_at(
    config: &Value,
    level: Level,
    tool: Option<&ToolDef>,
    node: &LevelOverrides,
) -> (Value, Vec<String>) {
    let Some(object) = config.as_object() else {
        return (config.clone(), Vec::new());
    };
    let patches: Vec<&Map<String, Value>> = tool
        .and_then(|t| overrides_at(t.degrade(), level))
        .into_iter()
        .chain(overrides_at(node, level))
        .collect();
    if patches.is_empty() {
        return (config.clone(), Vec::new());
    }
    let mut out = object.clone();
    let mut changed: Vec<String> = Vec::new();
    for patch in patches {
        if let Some(def) = tool {
            for (key, value) in patch {
                if is_factor(value)
                    && !out.contains_key(key)
                    && let Some(default) = def
                        .config
                        .iter()
                        .find(|c| &c.name == key)
                        .and_then(|c| c.spec.default.clone())
                {
                    out.insert(key.clone(), default);
                }
            }
        }
        for key in apply(&mut out, patch) {
            if !changed.contains(&key) {
                changed.push(key);
            }
        }
    }
    (Value::Object(out), changed)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::tools::ToolSet;
    use serde_json::json;

    fn overrides(v: Value) -> LevelOverrides {
        serde_json::from_value(v).unwrap()
    }

    #[test]
    fn nuclei_slows_down_level_by_level_and_the_node_wins() {
        let tools = ToolSet::builtin().unwrap();
        let nuclei = tools.get("scan.nuclei");
        let config = json!({"templates": "res://nuclei/t:1"});
        let none = LevelOverrides::new();
        let (full, changed) = config_at(&config, Level::Full, nuclei, &none);
        assert_eq!((full, changed.len()), (config.clone(), 0));
        let (high, _) = config_at(&config, Level::High, nuclei, &none);
        assert_eq!(high["rate_limit"], 100);
        let (medium, changed) = config_at(&config, Level::Medium, nuclei, &none);
        assert_eq!(
            (medium["rate_limit"].clone(), medium["concurrency"].clone()),
            (json!(50), json!(13))
        );
        assert_eq!(changed, ["concurrency", "rate_limit"]);
        let node = overrides(json!({"medium": {"rate_limit": 20}}));
        let (mine, _) = config_at(&config, Level::Low, nuclei, &node);
        assert_eq!(mine["rate_limit"], 20, "the node's override wins");
        let (echo, changed) = config_at(
            &json!({"n": 4}),
            Level::Minimal,
            None,
            &overrides(json!({"low": {"n": "x0.5"}})),
        );
        assert_eq!(
            (echo["n"].clone(), changed),
            (json!(2), vec!["n".to_string()])
        );
    }

    #[test]
    fn a_tool_override_must_fit_its_setting() {
        let text = |degrade: &str| {
            format!(
                "tools:\n  t.x:\n    program: x\n    argv: [\"${{config.n}}\"]\n    config:\n      n: {{ type: integer, default: 4, min: 1, max: 10 }}\n      s: {{ type: string, default: a }}\n    degrade: {degrade}\n    output: {{ format: lines, datasets: {{ lines: \"{{line}}\" }} }}\n"
            )
        };
        let load = |d: &str| ToolSet::from_yaml("t.yaml", &text(d));
        load("{ medium: { n: 2 } }").unwrap();
        let err = |d: &str| load(d).unwrap_err().to_string();
        assert!(err("{ medium: { n: 20 } }").contains("degrade.medium.n"));
        assert!(err("{ medium: { zz: 1 } }").contains("not a setting"));
        assert!(err("{ medium: { s: x0.5 } }").contains("integer and number"));
        assert!(err("{ full: { n: 1 } }").contains("full"));
    }
}
