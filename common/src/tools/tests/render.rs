//! Rendering invocations: files, stdin, args, csv, resources, defaults and bad configs.

use super::{TempDir, tool};
use crate::tools::{Invocation, RenderContext, RenderError, RenderProblem, Resources, ToolSet};
use serde_json::{Map, Value, json};
use std::path::{Path, PathBuf};

/// A resource directory with a wordlist and a template directory.
pub(super) fn resources(dir: &Path) -> Resources {
    std::fs::create_dir_all(dir.join("wordlists/common")).unwrap();
    std::fs::write(
        dir.join("wordlists/common/latest"),
        "admin\nrobots.txt\nbackup\n",
    )
    .unwrap();
    std::fs::create_dir_all(dir.join("nuclei/templates/latest")).unwrap();
    Resources::new(Some(dir.to_path_buf()))
}

fn inputs(v: Value) -> Map<String, Value> {
    v.as_object().unwrap().clone()
}

fn render(
    name: &str,
    config: Value,
    input: Value,
    res: &Resources,
) -> Result<Invocation, RenderError> {
    let ctx = RenderContext {
        workdir: PathBuf::from("/work/t1"),
        resources: res,
    };
    tool(name).render(&config, &inputs(input), &ctx)
}

fn problem(r: Result<Invocation, RenderError>) -> RenderProblem {
    r.expect_err("the render must fail").problem
}

#[test]
fn nuclei_gets_a_url_file_defaults_and_a_resolved_resource() {
    let dir = TempDir::new("render-nuclei");
    let res = resources(&dir.0);
    let config =
        json!({"templates": "res://nuclei/templates:latest", "severity": ["high", "critical"]});
    let urls = json!({"urls": ["http://a/", {"url": "http://b/"}, {"matched-at": "http://c/x"}, "http://a/"],
                      "unrelated": 1});
    let inv = render("scan.nuclei", config, urls, &res).unwrap();
    assert_eq!(inv.program, "nuclei");
    let templates = dir.0.join("nuclei/templates/latest").display().to_string();
    assert_eq!(
        inv.argv,
        [
            "-jsonl",
            "-silent",
            "-no-color",
            "-disable-update-check",
            "-omit-raw",
            "-list",
            "/work/t1/input-urls.txt",
            "-templates",
            &templates,
            "-rate-limit",
            "150",
            "-concurrency",
            "25",
            "-timeout",
            "10",
            "-severity",
            "high,critical",
        ]
    );
    assert_eq!(
        inv.files,
        vec![(
            PathBuf::from("/work/t1/input-urls.txt"),
            b"http://a/\nhttp://b/\nhttp://c/x\n".to_vec()
        )]
    );
    assert_eq!((inv.stdin, inv.output_file), (None, None));
}

#[test]
fn ferox_reads_stdin_writes_an_output_file_and_takes_one_target_source() {
    let dir = TempDir::new("render-ferox");
    let res = resources(&dir.0);
    let inv = render(
        "discovery.ferox",
        json!({"threads": 5}),
        json!({"urls": "http://a/\n\n http://b/ \n"}),
        &res,
    )
    .unwrap();
    assert_eq!(inv.stdin.as_deref(), Some(&b"http://a/\nhttp://b/\n"[..]));
    assert_eq!(
        inv.output_file,
        Some(PathBuf::from("/work/t1/output.jsonl"))
    );
    assert_eq!(
        &inv.argv[..3],
        ["--json", "--output", "/work/t1/output.jsonl"]
    );
    assert!(inv.argv.ends_with(&["--stdin".to_string()]));
    assert!(inv.argv.windows(2).any(|w| w == ["--threads", "5"]));
    assert!(
        !inv.argv.contains(&"--insecure".to_string()),
        "false booleans add nothing"
    );

    let inv = render(
        "discovery.ferox",
        json!({"url": "http://a/", "insecure": true, "status_codes": [200, 301]}),
        json!({}),
        &res,
    )
    .unwrap();
    assert!(
        inv.argv.ends_with(
            &[
                "--url",
                "http://a/",
                "--status-codes",
                "200,301",
                "--insecure"
            ]
            .map(String::from)
        )
    );
    assert_eq!(inv.stdin, None);

    let both = problem(render(
        "discovery.ferox",
        json!({"url": "http://a/"}),
        json!({"urls": ["http://b/"]}),
        &res,
    ));
    assert_eq!(
        both.to_string(),
        "takes only one of config.url, inputs.urls, but config.url and inputs.urls are set"
    );
    let neither = problem(render(
        "discovery.ferox",
        json!({}),
        json!({"urls": null}),
        &res,
    ));
    assert_eq!(
        neither.to_string(),
        "needs at least one of config.url, inputs.urls"
    );
}

#[test]
fn nmap_expands_hosts_and_targets_into_arguments() {
    let res = Resources::new(None);
    let inv = render(
        "scan.nmap",
        json!({"targets": ["10.0.0.0/30", "db.example"], "ports": "22,80"}),
        json!({"hosts": [{"host": "web.example"}, {"ip": "10.0.0.9"}]}),
        &res,
    )
    .unwrap();
    assert_eq!(
        inv.argv,
        [
            "-sT",
            "-p",
            "22,80",
            "-T3",
            "-oN",
            "-",
            "-n",
            "10.0.0.0/30",
            "db.example",
            "web.example",
            "10.0.0.9"
        ]
    );
    assert!(inv.files.is_empty());
    let options = problem(render(
        "scan.nmap",
        json!({"targets": ["-iL/etc/passwd"]}),
        json!({}),
        &res,
    ));
    assert_eq!(
        options,
        RenderProblem::Unsafe {
            what: "config.targets".into(),
            value: "-iL/etc/passwd".into()
        }
    );
    let injected = problem(render(
        "scan.nmap",
        json!({}),
        json!({"hosts": ["--script=evil"]}),
        &res,
    ));
    assert!(
        matches!(injected, RenderProblem::Unsafe { ref value, .. } if value == "--script=evil")
    );
    let none = problem(render("scan.nmap", json!({}), json!({"hosts": []}), &res));
    assert!(
        none.to_string()
            .contains("needs at least one of config.targets, inputs.hosts")
    );
}

#[test]
fn csv_lines_args_and_workdir_render_as_declared() {
    let text = r#"
tools:
  scan.kinds:
    program: kinds
    argv: ["--csv", "${inputs.a}", "--lines=${inputs.b}", "${inputs.c}", "--cfg", "${config.l|lines}",
           "--json", "${config.l|json}", "--dir", "${workdir}/x", "${config.n}"]
    config:
      l: { type: list, default: ["x", 2] }
      n: { type: number, default: -1.5 }
    inputs:
      a: { as: csv }
      b: { as: lines }
      c: { as: args, item: "{name}" }
    output:
      format: lines
      datasets: { lines: "{line}" }
"#;
    let set = ToolSet::from_yaml("kinds.yaml", text).unwrap();
    let ctx = RenderContext {
        workdir: PathBuf::from("/w"),
        resources: &Resources::new(None),
    };
    let given = inputs(
        json!({"a": ["1", 2, true, {"target": "t"}], "b": ["p", {"z": 1}],
                              "c": [{"name": "n1"}, {"name": "n2"}]}),
    );
    let inv = set
        .get("scan.kinds")
        .unwrap()
        .render(&json!(null), &given, &ctx)
        .unwrap();
    assert_eq!(
        inv.argv,
        [
            "--csv",
            "1,2,true,t",
            "--lines=p\n{\"z\":1}",
            "n1",
            "n2",
            "--cfg",
            "x\n2",
            "--json",
            "[\"x\",2]",
            "--dir",
            "/w/x",
            "-1.5"
        ]
    );
}

#[test]
fn inputs_must_be_present_non_empty_and_well_shaped() {
    let dir = TempDir::new("render-inputs");
    let res = resources(&dir.0);
    let cfg = json!({"templates": "res://nuclei/templates:latest"});
    let nuclei = |input: Value| problem(render("scan.nuclei", cfg.clone(), input, &res));
    assert_eq!(
        nuclei(json!({})),
        RenderProblem::MissingInput("urls".into())
    );
    assert_eq!(
        nuclei(json!({"urls": null})),
        RenderProblem::MissingInput("urls".into())
    );
    assert_eq!(
        nuclei(json!({"urls": []})),
        RenderProblem::EmptyInput("urls".into())
    );
    assert_eq!(
        nuclei(json!({"urls": ""})),
        RenderProblem::EmptyInput("urls".into())
    );
    let nested = nuclei(json!({"urls": [["a"]]}));
    assert_eq!(
        nested.to_string(),
        "input `urls`: item 0 is a list; items are strings, numbers or objects"
    );
    let newline = nuclei(json!({"urls": ["a\nb"]}));
    assert!(newline.to_string().contains("line break"));
    let e = render("scan.nuclei", cfg.clone(), json!({}), &res).unwrap_err();
    assert_eq!(
        e.to_string(),
        "scan.nuclei: input `urls` is missing (absent or null)"
    );
    let obj = render(
        "scan.nuclei",
        cfg,
        json!({"urls": [{"x": 1}, {"host": "h"}]}),
        &res,
    )
    .unwrap();
    assert_eq!(
        obj.files[0].1, b"h\n",
        "the item template renders objects; empty items are left out"
    );
}

#[test]
fn resources_config_and_references_are_checked() {
    let dir = TempDir::new("render-config");
    let res = resources(&dir.0);
    let urls = json!({"urls": ["http://a/"]});
    let missing = problem(render(
        "scan.nuclei",
        json!({"templates": "res://nuclei/custom:v2"}),
        urls.clone(),
        &res,
    ));
    let RenderProblem::Resource(text) = missing else {
        panic!("{missing:?}")
    };
    assert!(text.contains("res://nuclei/custom:v2"), "{text}");
    assert!(
        text.contains(&dir.0.join("nuclei/custom/v2").display().to_string()),
        "{text}"
    );
    assert!(
        text.contains(&format!("resource directory {}", dir.0.display())),
        "{text}"
    );
    let no_dir = problem(render(
        "scan.nuclei",
        json!({"templates": "res://nuclei/templates:latest"}),
        urls.clone(),
        &Resources::new(None),
    ));
    assert!(
        no_dir
            .to_string()
            .contains("no resource directory is configured")
    );

    let unknown = problem(render(
        "scan.nuclei",
        json!({"templates": "res://nuclei/templates:latest", "colour": "red"}),
        urls.clone(),
        &res,
    ));
    let RenderProblem::Config(problems) = unknown else {
        panic!()
    };
    assert_eq!(problems.len(), 1);
    assert!(
        problems[0].starts_with("config.colour: unknown setting (known: templates, rate_limit"),
        "{problems:?}"
    );
    let unresolved = problem(render(
        "scan.nuclei",
        json!({"templates": "${params.t}"}),
        urls.clone(),
        &res,
    ));
    assert!(
        unresolved
            .to_string()
            .contains("`${params.t}` is an unresolved reference")
    );
    let not_object = problem(render("scan.nuclei", json!("x"), urls, &res));
    assert!(
        not_object
            .to_string()
            .contains("config must be a JSON object, not a string")
    );
}
