//! `producer validate` on the example recipes and on broken ones: every error names the file,
//! the node and the field, and the exit code says it failed.

use secflow_tests::command;
use std::process::Output;

fn validate(path: &str, params: &[&str]) -> Output {
    let mut cmd = command("producer");
    cmd.args(["validate", path]);
    for p in params {
        cmd.args(["--param", p]);
    }
    cmd.output().unwrap()
}

fn broken(name: &str, yaml: &str) -> (bool, String) {
    let path = std::env::temp_dir().join(format!("secflow-{}-{name}.yaml", std::process::id()));
    std::fs::write(&path, yaml).unwrap();
    let out = validate(path.to_str().unwrap(), &[]);
    let _ = std::fs::remove_file(&path);
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stderr).replace(path.to_str().unwrap(), "FILE"),
    )
}

/// Proves: every example recipe in `recipes/` is valid, and parameters can be overridden.
#[test]
fn example_recipes_are_valid() {
    let dir = concat!(env!("CARGO_MANIFEST_DIR"), "/../recipes");
    let mut checked = 0;
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if path.extension().is_none_or(|e| e != "yaml") {
            continue;
        }
        let out = validate(path.to_str().unwrap(), &[]);
        assert!(
            out.status.success(),
            "{}: {}",
            path.display(),
            String::from_utf8_lossy(&out.stderr)
        );
        checked += 1;
    }
    assert!(checked >= 1);
    let out = validate(
        &format!("{dir}/web-discovery.yaml"),
        &["target=http://10.0.0.5:8080"],
    );
    assert!(out.status.success());
    let out = validate(&format!("{dir}/web-discovery.yaml"), &["colour=blue"]);
    assert!(
        String::from_utf8_lossy(&out.stderr)
            .contains("parameters: `colour` was given but the recipe declares no such parameter")
    );
}

/// Proves: a cycle, a missing input, an unknown type and bad YAML each give a precise error.
#[test]
fn broken_recipes_get_precise_errors() {
    let head = "version: 1\nname: t\nnodes:\n";
    let cases = [
        (
            "cycle",
            format!(
                "{head}  - {{id: a, type: builtin.echo, inputs: {{x: b.o}}, outputs: [o]}}\n  - {{id: b, type: builtin.echo, inputs: {{x: a.o}}, outputs: [o]}}\n"
            ),
            "FILE: node `a`: inputs: forms a cycle: a → b → a",
        ),
        (
            "missing-input",
            format!(
                "{head}  - {{id: scan, type: builtin.echo, inputs: {{hosts: discover.hosts}}}}\n"
            ),
            "FILE: node `scan`: inputs.hosts: `discover.hosts`: there is no node `discover`",
        ),
        (
            "unknown-output",
            format!(
                "{head}  - {{id: d, type: builtin.echo, outputs: [ports]}}\n  - {{id: s, type: builtin.echo, inputs: {{h: d.hosts}}}}\n"
            ),
            "FILE: node `s`: inputs.h: `d.hosts`: node `d` declares no output `hosts` (it declares: ports)",
        ),
        (
            "unknown-type",
            format!("{head}  - {{id: a, type: scan.nucleii}}\n"),
            "FILE: node `a`: type: unknown node type `scan.nucleii`",
        ),
        (
            "bad-config",
            format!("{head}  - {{id: a, type: http, config: {{uri: 'http://x'}}}}\n"),
            "FILE: node `a`: config: http: invalid config: unknown field `uri`",
        ),
        (
            "bad-yaml",
            "version: 1\nname: t\nnodes: [ {id: a\n".to_string(),
            "FILE: not a valid recipe:",
        ),
        (
            "too-many-nodes",
            format!(
                "{head}{}",
                (0..20_001)
                    .map(|i| format!("  - {{id: n{i}, type: builtin.noop}}\n"))
                    .collect::<String>()
            ),
            "FILE: nodes: the recipe has 20001 nodes, over the limit of 20000",
        ),
        (
            "too-large",
            format!(
                "{head}# {}\n  - {{id: a, type: builtin.noop}}\n",
                "x".repeat(5 << 20)
            ),
            "over the 4194304-byte limit",
        ),
        (
            "unknown-key",
            format!("{head}  - {{id: a, type: builtin.echo, retires: 3}}\n"),
            "unknown field `retires`",
        ),
    ];
    for (name, yaml, expected) in cases {
        let (ok, stderr) = broken(name, &yaml);
        assert!(!ok, "{name} must fail");
        assert!(
            stderr.contains(expected),
            "{name}: expected `{expected}` in:\n{stderr}"
        );
        assert!(stderr.contains("nothing was published"), "{name}: {stderr}");
    }
}
