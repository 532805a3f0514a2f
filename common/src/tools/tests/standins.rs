//! The stand-in programs of `tests/standins/` run with the command lines `render` produces;
//! their output parses with the same definitions (and their garbage falls back).

use super::render::resources;
use super::{TempDir, dataset, tool};
use crate::tools::{Invocation, Parsed, RenderContext, Resources, Severity};
use serde_json::{Value, json};
use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

/// How long a stand-in (or nmap on loopback) may run.
const DEADLINE: Duration = Duration::from_secs(60);

fn standins() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../tests/standins")
}

/// Writes the invocation's files, runs it (the program looked up in `bin_dir`, else on PATH)
/// with `env`, and returns its exit code, stdout and output file.
fn run(
    inv: &Invocation,
    bin_dir: Option<&Path>,
    env: &[(&str, &str)],
) -> (i32, Vec<u8>, Option<Vec<u8>>) {
    for (path, content) in &inv.files {
        std::fs::write(path, content).unwrap();
    }
    let program = bin_dir.map_or_else(|| PathBuf::from(&inv.program), |d| d.join(&inv.program));
    let mut child = Command::new(&program)
        .args(&inv.argv)
        .envs(env.iter().copied())
        .stdin(if inv.stdin.is_some() {
            Stdio::piped()
        } else {
            Stdio::null()
        })
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("run {}: {e}", program.display()));
    if let (Some(data), Some(mut pipe)) = (inv.stdin.clone(), child.stdin.take()) {
        std::thread::spawn(move || pipe.write_all(&data));
    }
    let mut stdout = child.stdout.take().unwrap();
    let reader = std::thread::spawn(move || {
        let mut out = Vec::new();
        stdout.read_to_end(&mut out).map(|_| out)
    });
    let started = Instant::now();
    let status = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break status;
        }
        if started.elapsed() > DEADLINE {
            let _ = child.kill();
            panic!(
                "{} {:?} did not finish within {DEADLINE:?}",
                inv.program, inv.argv
            );
        }
        std::thread::sleep(Duration::from_millis(10));
    };
    let stdout = reader.join().unwrap().unwrap();
    let mut stderr = String::new();
    child
        .stderr
        .take()
        .unwrap()
        .read_to_string(&mut stderr)
        .unwrap();
    let code = status.code().unwrap_or(-1);
    assert_eq!(code, 0, "{} failed: {stderr}", inv.program);
    let file = inv.output_file.as_ref().and_then(|p| std::fs::read(p).ok());
    (code, stdout, file)
}

/// Renders `name` in a fresh working directory, runs its stand-in and parses the output.
fn run_standin(name: &str, config: Value, inputs: Value, env: &[(&str, &str)]) -> Parsed {
    let res_dir = TempDir::new("standin-res");
    let workdir = TempDir::new("standin-work");
    let res = resources(&res_dir.0);
    let def = tool(name);
    let ctx = RenderContext {
        workdir: workdir.0.clone(),
        resources: &res,
    };
    let inv = def
        .render(&config, inputs.as_object().unwrap(), &ctx)
        .unwrap();
    let (code, stdout, file) = run(&inv, Some(&standins()), env);
    assert!(
        def.success_exit_codes().contains(&code),
        "{name} exited {code}"
    );
    def.parse(&stdout, file.as_deref())
}

const TARGETS: [&str; 3] = [
    "http://127.0.0.1:18080/",
    "http://127.0.0.1:18081/app",
    "http://10.0.0.5/",
];

#[test]
fn ferox_standin_output_parses() {
    let p = run_standin("discovery.ferox", json!({}), json!({"urls": TARGETS}), &[]);
    assert_eq!(p.parse_error, None);
    assert_eq!(p.records, 9, "three responses for each of three targets");
    assert_eq!(
        dataset(&p, "urls")[..2],
        [
            "http://127.0.0.1:18080/admin",
            "http://127.0.0.1:18080/robots.txt"
        ]
    );
    let one = run_standin(
        "discovery.ferox",
        json!({"url": "http://127.0.0.1:18080"}),
        json!({}),
        &[],
    );
    assert_eq!(one.findings.len(), 3);
    let bad = run_standin(
        "discovery.ferox",
        json!({}),
        json!({"urls": TARGETS}),
        &[("STANDIN_GARBAGE", "1")],
    );
    assert!(bad.parse_error.is_some() && bad.findings.len() == 1);
}

#[test]
fn nuclei_standin_output_parses() {
    let config = json!({"templates": "res://nuclei/templates:latest"});
    let p = run_standin("scan.nuclei", config.clone(), json!({"urls": TARGETS}), &[]);
    assert_eq!(p.parse_error, None);
    assert_eq!(p.findings.len(), 3);
    let sev: Vec<Severity> = p.findings.iter().map(|f| f.severity).collect();
    assert_eq!(sev, [Severity::Info, Severity::Low, Severity::Medium]);
    assert_eq!(p.findings[1].evidence, "CVE-2024-1001");
    assert_eq!(dataset(&p, "urls"), TARGETS);
    let filtered = json!({"templates": "res://nuclei/templates:latest", "severity": ["low"]});
    let p = run_standin("scan.nuclei", filtered, json!({"urls": TARGETS}), &[]);
    assert_eq!(p.findings.len(), 1);
    let bad = run_standin(
        "scan.nuclei",
        config,
        json!({"urls": TARGETS}),
        &[("STANDIN_GARBAGE", "1")],
    );
    assert!(bad.parse_error.unwrap().contains("line 1"));
}

#[test]
fn httpx_katana_ffuf_and_subfinder_standin_outputs_parse() {
    let hosts = json!({"targets": ["127.0.0.1:18080", "https://www.example.com"]});
    let p = run_standin("scan.httpx", json!({}), hosts.clone(), &[]);
    assert_eq!(
        dataset(&p, "urls"),
        ["http://127.0.0.1:18080", "https://www.example.com"]
    );
    assert!(p.findings[0].evidence.contains("tech Python,standin"));
    let bad = run_standin("scan.httpx", json!({}), hosts, &[("STANDIN_GARBAGE", "1")]);
    assert!(bad.parse_error.unwrap().contains("line 2"));

    let p = run_standin(
        "crawl.katana",
        json!({"depth": 1}),
        json!({"urls": TARGETS[..1]}),
        &[],
    );
    assert_eq!(p.parse_error, None);
    assert_eq!(dataset(&p, "urls").len(), 3);
    let bad = run_standin(
        "crawl.katana",
        json!({}),
        json!({"urls": TARGETS}),
        &[("STANDIN_GARBAGE", "1")],
    );
    assert!(bad.parse_error.unwrap().contains("line 2"));

    let ffuf = json!({"url": "http://127.0.0.1:18080/FUZZ", "match_codes": [200, 403]});
    let p = run_standin("discovery.ffuf", ffuf.clone(), json!({}), &[]);
    assert_eq!(p.parse_error, None);
    assert_eq!(
        dataset(&p, "urls"),
        [
            "http://127.0.0.1:18080/admin",
            "http://127.0.0.1:18080/backup"
        ]
    );
    let bad = run_standin(
        "discovery.ffuf",
        ffuf,
        json!({}),
        &[("STANDIN_GARBAGE", "1")],
    );
    assert!(bad.parse_error.is_some());

    let p = run_standin(
        "discovery.subfinder",
        json!({"domains": ["example.com"]}),
        json!({"domains": ["example.org"]}),
        &[],
    );
    assert_eq!(dataset(&p, "hosts").len(), 6);
    assert_eq!(dataset(&p, "hosts")[0], "www.example.com");
    let junk = run_standin(
        "discovery.subfinder",
        json!({"domains": ["example.com"]}),
        json!({}),
        &[("STANDIN_GARBAGE", "1")],
    );
    assert_eq!(junk.parse_error, None, "lines never fail to parse");
}

#[test]
fn standin_sleep_delays_the_program() {
    let started = Instant::now();
    let p = run_standin(
        "discovery.subfinder",
        json!({"domains": ["a.example"]}),
        json!({}),
        &[("STANDIN_SLEEP", "0.3")],
    );
    assert!(started.elapsed() >= Duration::from_millis(300));
    assert_eq!(p.records, 3);
}

#[test]
fn real_nmap_on_loopback_finds_the_broker_and_redis() {
    let on_path = std::env::var_os("PATH")
        .is_some_and(|p| std::env::split_paths(&p).any(|d| d.join("nmap").is_file()));
    assert!(
        on_path,
        "nmap is not installed (scripts/test.sh installs it)"
    );
    let workdir = TempDir::new("nmap");
    let res = Resources::new(None);
    let ctx = RenderContext {
        workdir: workdir.0.clone(),
        resources: &res,
    };
    let def = tool("scan.nmap");
    let config = json!({"targets": ["127.0.0.1"], "ports": "1-1024,5672,6379"});
    let inv = def.render(&config, &serde_json::Map::new(), &ctx).unwrap();
    let (code, stdout, _) = run(&inv, None, &[]);
    assert_eq!(code, 0);
    let p = def.parse(&stdout, None);
    assert_eq!(p.parse_error, None);
    assert!(
        p.findings
            .iter()
            .all(|f| f.target.starts_with("127.0.0.1:"))
    );
    // The tests run against RabbitMQ and Redis on loopback: nmap must see both ports open.
    for port in ["127.0.0.1:5672", "127.0.0.1:6379"] {
        assert!(
            p.findings.iter().any(|f| f.target == port),
            "{port} not among {:?}",
            p.findings.iter().map(|f| &f.target).collect::<Vec<_>>()
        );
    }
}
