//! Unit tests of recipe validation: every problem named with its node and field.

use super::*;
use crate::recipe::parse;

fn check(yaml: &str) -> Vec<String> {
    let recipe = parse("r.yaml", yaml).unwrap();
    validate("r.yaml", &recipe, &BTreeMap::new())
        .iter()
        .map(ToString::to_string)
        .collect()
}

const HEAD: &str = "version: 1\nname: t\nparameters:\n  target: {default: 'http://127.0.0.1:8080'}\n  delay: {}\nnodes:\n";

#[test]
fn a_diamond_is_valid() {
    let yaml = format!(
        "{HEAD}  - {{id: a, type: http, config: {{url: '${{params.target}}'}}, outputs: [body]}}\n  - {{id: b, type: builtin.echo, inputs: {{x: a.body}}, outputs: [out]}}\n  - {{id: c, type: builtin.echo, inputs: {{x: a.body}}, outputs: [out]}}\n  - {{id: d, type: builtin.echo, inputs: {{l: b.out, r: c.out}}, config: {{text: '${{inputs.l}} ${{inputs.r}}'}}}}\n"
    );
    assert_eq!(check(&yaml), Vec::<String>::new());
}

#[test]
fn names_the_cycle() {
    let yaml = format!(
        "{HEAD}  - {{id: a, type: builtin.echo, inputs: {{x: c.o}}, outputs: [o]}}\n  - {{id: b, type: builtin.echo, inputs: {{x: a.o}}, outputs: [o]}}\n  - {{id: c, type: builtin.echo, inputs: {{x: b.o}}, outputs: [o]}}\n"
    );
    let errors = check(&yaml);
    assert_eq!(errors.len(), 1, "{errors:?}");
    assert!(
        errors[0].contains("forms a cycle") && errors[0].matches('→').count() == 3,
        "{}",
        errors[0]
    );
}

#[test]
fn every_problem_is_named_with_node_and_field() {
    let yaml = format!(
        "{HEAD}  - {{id: a, type: scan.magic}}\n  - {{id: a, type: builtin.echo}}\n  - {{id: b, type: builtin.echo, inputs: {{x: z.out, y: a.nothing}}, config: {{t: '${{inputs.w}} ${{params.nope}} ${{env.X}}'}}}}\n  - {{id: c, type: builtin.sleep, config: {{ms: '${{params.delay}}'}}}}\n  - {{id: d, type: exec, config: {{argv: []}}, timeout: 2h, when: always}}\n"
    );
    let errors = check(&yaml).join("\n");
    for expected in [
        "node `a`: type: unknown node type `scan.magic`",
        "node `a`: id: is used by more than one node",
        "node `b`: inputs.x: `z.out`: there is no node `z`",
        "node `b`: inputs.y: `a.nothing`: node `a` declares no output `nothing`",
        "node `b`: config.t: `${inputs.w}`: the node declares no input `w`",
        "node `b`: config.t: `${params.nope}`: the recipe declares no parameter `nope`",
        "node `b`: config.t: `${env.X}` is not a reference",
        "node `c`: config.ms: `${params.delay}` has no value",
        "node `d`: config: exec: invalid config: argv must name a program",
        "node `d`: timeout: `2h` must be between 1 ms and 25 m",
        "node `d`: when: `always` runs a node after its upstreams end",
    ] {
        assert!(
            errors.contains(expected),
            "missing `{expected}` in:\n{errors}"
        );
    }
}

#[test]
fn parameters_fill_in_before_configs_are_checked() {
    let recipe = parse(
        "r.yaml",
        &format!("{HEAD}  - {{id: s, type: builtin.sleep, config: {{ms: '${{params.delay}}'}}}}\n"),
    )
    .unwrap();
    let mut params = BTreeMap::new();
    params.insert("delay".to_string(), Value::from(25));
    assert!(validate("r.yaml", &recipe, &params).is_empty());
    params.insert("delay".to_string(), Value::from("soon"));
    let errors = validate("r.yaml", &recipe, &params);
    assert!(
        errors[0]
            .to_string()
            .contains("node `s`: config: builtin.sleep: invalid config"),
        "{errors:?}"
    );
}

#[test]
fn bad_hooks_are_named_with_their_field() {
    let yaml = format!(
        "{HEAD}  - {{id: a, type: builtin.noop}}\nhooks:\n  on_node_complete:\n    - {{url: 'file:///etc/passwd'}}\n  on_workflow_complete:\n    - {{exec: [notify], timeout: 5m}}\n"
    );
    let errors = check(&yaml).join("\n");
    assert!(
        errors.contains("r.yaml: hooks.on_node_complete[0].url: `file:///etc/passwd` must be an http:// or https:// URL"),
        "{errors}"
    );
    assert!(
        errors.contains("r.yaml: hooks.on_workflow_complete[0].timeout: `5m` must be between"),
        "{errors}"
    );
    let e = parse(
        "r.yaml",
        &format!("{HEAD}  - {{id: a, type: builtin.noop}}\nhooks:\n  on_node_complete:\n    - {{url: 'http://x', secret: s}}\n"),
    )
    .unwrap_err()
    .to_string();
    assert!(
        e.contains("hooks.on_node_complete[0]") && e.contains("unknown field `secret`"),
        "{e}"
    );
}

#[test]
fn bad_yaml_is_an_error_with_its_position() {
    let e = parse("r.yaml", "version: 1\nnodes: [ {id: a\n").unwrap_err();
    assert!(
        e.to_string().starts_with("r.yaml: not a valid recipe:"),
        "{e}"
    );
}

#[test]
fn the_published_schema_validates_and_other_major_versions_are_refused() {
    let published = "version: \"1.0\"\nname: \"OWASP Top 10 Scan\"\ndescription: \"d\"\nnodes:\n  - { id: discovery, type: discovery.ferox, config: { wordlist: \"res://wordlists/dirb:latest\", threads: 50 }, outputs: [urls] }\n  - { id: scan, type: scan.nuclei, inputs: [urls], config: { templates: \"res://templates/owasp-top10:latest\", rate_limit: 150 }, outputs: [findings] }\n  - { id: enrich, type: enrich.cve, inputs: [findings], config: { sources: [nvd, osv, exploitdb] }, outputs: [enriched_findings] }\n";
    assert_eq!(check(published), Vec::<String>::new());
    let errors = check(&published.replace("\"1.0\"", "\"2.0\""));
    assert_eq!(
        errors,
        vec!["r.yaml: version: unsupported recipe version 2.0 (this build reads 1.x)"]
    );
    let errors = check(&published.replace("threads: 50", "threads: 5000"));
    assert!(
        errors.len() == 1 && errors[0].starts_with("r.yaml: node `discovery`: config:"),
        "{errors:?}"
    );
    let errors = check(&published.replace("inputs: [urls]", "inputs: [hosts]"));
    assert!(
        errors
            .iter()
            .any(|e| e.contains("Unresolved input 'hosts' in node scan")),
        "{errors:?}"
    );
}

#[test]
fn a_missing_resource_is_named_when_the_resource_directory_is_known() {
    let dir =
        std::path::PathBuf::from(concat!(env!("CARGO_MANIFEST_DIR"), "/../recipes/resources"));
    let catalog = Catalog {
        tools: crate::tools::ToolSet::builtin().unwrap(),
        resources: crate::tools::Resources::new(Some(dir)),
    };
    let yaml = "version: \"1.0\"\nname: r\nnodes:\n  - { id: d, type: discovery.ferox, config: { wordlist: \"res://wordlists/dirb:latest\" } }\n  - { id: e, type: discovery.ferox, config: { wordlist: \"res://wordlists/nope:latest\" } }\n";
    let recipe = parse("r.yaml", yaml).unwrap();
    let errors: Vec<String> = validate_with("r.yaml", &recipe, &BTreeMap::new(), &catalog)
        .iter()
        .map(ToString::to_string)
        .collect();
    assert_eq!(errors.len(), 1, "{errors:?}");
    assert!(
        errors[0].starts_with("r.yaml: node `e`: config.wordlist:")
            && errors[0].contains("res://wordlists/nope:latest"),
        "{errors:?}"
    );
}

#[test]
fn fallback_chains_and_level_overrides_are_checked_per_node_and_field() {
    let yaml = format!(
        "{HEAD}  - id: a\n    type: http\n    config: {{url: '${{params.target}}'}}\n    fallback_on: [transient, security]\n    fallback:\n      - {{type: http, config: {{url: '${{params.target}}/m'}}, timeout: 5s, quality: high}}\n      - {{type: scan.magic}}\n      - {{type: builtin.static, timeout: 1h}}\n    degrade: {{medium: {{threads: x-1}}}}\n    essential: true\n"
    );
    let errors = check(&yaml);
    let has = |what: &str| errors.iter().any(|e| e.contains(what));
    assert!(
        has("node `a`: fallback_on: `security` cannot allow a fallback"),
        "{errors:?}"
    );
    assert!(
        has("node `a`: fallback[1].type: unknown node type `scan.magic`"),
        "{errors:?}"
    );
    assert!(has("node `a`: fallback[2].timeout"), "{errors:?}");
    assert!(
        has("node `a`: degrade: level medium, `threads`"),
        "{errors:?}"
    );
    assert_eq!(errors.len(), 4, "{errors:?}");
}
