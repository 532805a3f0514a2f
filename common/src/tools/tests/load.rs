//! Load-time checks: a bad definition is refused with the file, the tool and the field named.

use super::builtin;
use crate::tools::{ToolError, ToolSet};

/// A minimal valid tool, `EXTRA` replaced by more keys of the definition.
const BASE: &str = r#"
tools:
  scan.demo:
    program: demo
    argv: ["-x", "${config.level}"]
    config:
      level: { type: integer, default: 1, min: 0, max: 5 }
      tags: { type: list, optional_args: ["-t", "${value|csv}"] }
    inputs:
      urls: { as: file }
    EXTRA
    output:
      format: jsonl
      finding: { id: "{id}", title: "{name}", target: "{url}" }
"#;

/// Extra keys, replacements, and the text the error must contain.
type Case<'a> = (&'a str, Vec<(&'a str, &'a str)>, &'a str);

fn load(extra: &str, replace: &[(&str, &str)]) -> Result<ToolSet, ToolError> {
    let mut text = BASE.replace("EXTRA", extra);
    for (from, to) in replace {
        assert!(text.contains(from), "{from}");
        text = text.replacen(from, to, 1);
    }
    ToolSet::from_yaml("demo.yaml", &text)
}

fn refused(extra: &str, replace: &[(&str, &str)]) -> String {
    let e = load(extra, replace).expect_err("the definition must be refused");
    let text = e.to_string();
    assert!(text.starts_with("demo.yaml: "), "{text}");
    text
}

#[test]
fn the_base_definition_loads() {
    let set = load("", &[("-x\"", "-x\", \"${inputs.urls}\"")]).unwrap();
    assert_eq!(set.names(), vec!["scan.demo"]);
}

#[test]
fn every_error_names_the_file_tool_and_field() {
    let urls = ("-x\"", "-x\", \"${inputs.urls}\"");
    let cases: Vec<Case> = vec![
        (
            "",
            vec![urls, ("program: demo", "program: \" \"")],
            "tool `scan.demo`: program: must name a program",
        ),
        (
            "",
            vec![urls, ("program: demo", "program: bin/demo")],
            "program: `bin/demo` must be a bare name or an absolute path",
        ),
        (
            "",
            vec![urls, ("${config.level}", "${config.nope}")],
            "argv[2]: ${config.nope} is not a declared setting",
        ),
        (
            "",
            vec![("-x\"", "-x\", \"${inputs.other}\"")],
            "argv[1]: ${inputs.other} is not a declared input",
        ),
        (
            "",
            vec![urls, ("${config.level}", "${config.tags}")],
            "argv[2]: config.tags is optional and has no default",
        ),
        (
            "",
            vec![
                urls,
                ("type: list,", "type: list, required: true,"),
                ("${config.level}", "${config.tags}"),
            ],
            "config.tags is a list: add a filter",
        ),
        (
            "",
            vec![urls, ("${config.level}", "x${config.level|args}")],
            "`|args` makes several arguments",
        ),
        (
            "",
            vec![urls, ("${config.level}", "${params.level}")],
            "argv[2]: unknown reference `${params.level}`",
        ),
        (
            "",
            vec![urls, ("${config.level}", "${value}")],
            "argv[2]: ${value} belongs in optional_args",
        ),
        ("", vec![], "inputs.urls: is never passed to the program"),
        (
            "",
            vec![
                ("{ as: file }", "{ as: stdin }"),
                ("-x\"", "-x\", \"${inputs.urls}\""),
            ],
            "inputs.urls is passed on stdin",
        ),
        (
            "",
            vec![
                ("{ as: file }", "{ as: args }"),
                ("-x\"", "-x=${inputs.urls}\""),
            ],
            "inputs.urls is passed as args: it must be a whole argument",
        ),
        (
            "",
            vec![urls, ("{ as: file }", "{ as: file, required: false }")],
            "inputs.urls is optional",
        ),
        (
            "",
            vec![urls, ("default: 1,", "default: 9,")],
            "config.level: default: 9 is above the maximum of 5",
        ),
        (
            "",
            vec![urls, ("min: 0, max: 5", "min: 5, max: 0")],
            "config.level: min 5 is greater than max 0",
        ),
        (
            "",
            vec![urls, ("type: integer", "type: integr")],
            "not a valid tools file",
        ),
        (
            "",
            vec![urls, ("program: demo", "program: demo\n    colour: blue")],
            "unknown field `colour`",
        ),
        (
            "timeout: soon",
            vec![urls],
            "timeout: `soon` is not a duration",
        ),
        (
            "retry: { max_attempts: 0 }",
            vec![urls],
            "retry: retry.max_attempts must be at least 1",
        ),
        (
            "success_exit_codes: []",
            vec![urls],
            "success_exit_codes: must list at least one code",
        ),
        (
            "require_any: [config.nope]",
            vec![urls],
            "require_any: `config.nope` is not a declared",
        ),
        (
            "",
            vec![urls, ("format: jsonl", "format: regex")],
            "output.patterns: the regex format needs at least one pattern",
        ),
        (
            "",
            vec![
                urls,
                (
                    "format: jsonl",
                    "format: regex\n      patterns: [{ regex: '(' }]",
                ),
            ],
            "output.patterns[0]: does not compile",
        ),
        (
            "",
            vec![
                urls,
                ("format: jsonl", "format: jsonl\n      records: results"),
            ],
            "output.records: applies to the json format only",
        ),
        (
            "",
            vec![
                urls,
                ("format: jsonl", "format: lines\n      where: { a: 1 }"),
            ],
            "output.where: applies to the json and jsonl formats only",
        ),
        (
            "",
            vec![urls, ("title: \"{name}\"", "title: \"{name\"")],
            "output.finding.title: `{name` is not closed",
        ),
        (
            "",
            vec![
                urls,
                (
                    "format: jsonl",
                    "format: jsonl\n      datasets: { records: \"{a}\" }",
                ),
            ],
            "output.datasets.records: `records` is not a dataset name",
        ),
        (
            "",
            vec![
                urls,
                (
                    "format: jsonl",
                    "format: jsonl\n      severity_map: { x: urgent }",
                ),
            ],
            "output.severity_map: `x` maps to `urgent`",
        ),
        (
            "",
            vec![urls, ("format: jsonl", "format: jsonl\n      from: file")],
            "argv: output.from is file, but argv never passes ${output_file}",
        ),
        (
            "",
            vec![urls, ("-x\"", "-x\", \"${output_file}\"")],
            "${output_file} needs `output.from: file`",
        ),
        (
            "",
            vec![urls, ("scan.demo:", "Scan.Demo:")],
            "tool `Scan.Demo`: name: type `Scan.Demo` is not a valid node type",
        ),
        (
            "",
            vec![urls, ("scan.demo:", "exec:")],
            "name: `exec` is a built-in node type",
        ),
        (
            "",
            vec![
                urls,
                (
                    "      finding: { id: \"{id}\", title: \"{name}\", target: \"{url}\" }\n",
                    "",
                ),
            ],
            "output.finding: the output makes neither findings nor datasets",
        ),
    ];
    for (extra, replace, expected) in cases {
        let text = refused(extra, &replace);
        assert!(text.contains(expected), "expected `{expected}` in `{text}`");
        if !text.contains("not a valid tools file") {
            assert!(text.contains("tool `"), "{text}");
        }
    }
}

#[test]
fn merge_replaces_definitions_of_the_same_name() {
    let mut set = builtin();
    let mine = r#"
tools:
  scan.nuclei:
    description: "A local nuclei wrapper."
    program: /opt/nuclei/bin/nuclei
    argv: ["-jsonl", "-list", "${inputs.urls}"]
    inputs:
      urls: { as: file }
    output:
      format: jsonl
      datasets: { urls: "{matched-at}" }
"#;
    set.merge(ToolSet::from_yaml("local.yaml", mine).unwrap());
    assert_eq!(set.names().len(), 7);
    assert_eq!(
        set.get("scan.nuclei").unwrap().program(),
        "/opt/nuclei/bin/nuclei"
    );
    assert_eq!(
        set.get("scan.nuclei").unwrap().description(),
        "A local nuclei wrapper."
    );
    assert!(set.get("scan.nmap").is_some());
}

#[test]
fn files_are_loaded_from_disk_with_their_path_in_errors() {
    let dir = super::TempDir::new("load");
    let path = dir.0.join("tools.yaml");
    std::fs::write(&path, "tools: {}\n").unwrap();
    assert!(ToolSet::load(&path).unwrap().names().is_empty());
    std::fs::write(&path, "tools:\n  scan.x: { program: x }\n").unwrap();
    let e = ToolSet::load(&path).unwrap_err().to_string();
    assert!(
        e.starts_with(&path.display().to_string()) && e.contains("output"),
        "{e}"
    );
    let missing = dir.0.join("absent.yaml");
    let e = ToolSet::load(&missing).unwrap_err().to_string();
    assert!(
        e.contains("absent.yaml") && e.contains("cannot read"),
        "{e}"
    );
}
