//! Recorded outputs of each tool parsed with its built-in definition; malformed ones fall back.

use super::{dataset, fixture, parse_fixture, tool};
use crate::tools::{Parsed, Severity};
use serde_json::json;

fn severities(p: &Parsed) -> Vec<Severity> {
    p.findings.iter().map(|f| f.severity).collect()
}

fn targets(p: &Parsed) -> Vec<&str> {
    p.findings.iter().map(|f| f.target.as_str()).collect()
}

/// The fallback result: one generic info finding with the raw output, empty datasets.
fn assert_fallback(p: &Parsed, name: &str, datasets: &[&str], error_has: &str) {
    let error = p.parse_error.as_deref().expect("a parse error");
    assert!(error.contains(error_has), "{error}");
    assert_eq!(p.findings.len(), 1);
    let f = &p.findings[0];
    assert_eq!(f.tool, name);
    assert_eq!(f.severity, Severity::Info);
    assert_eq!(f.title, format!("unparsed output of {name}"));
    assert_eq!(f.target, "");
    assert!(!f.evidence.is_empty() && f.evidence.len() <= 500);
    assert!(f.raw.is_string());
    for d in datasets {
        assert_eq!(p.datasets[*d], Vec::<serde_json::Value>::new(), "{d}");
    }
    let out = p.to_output();
    assert_eq!(out["parser"], "fallback");
    assert_eq!(out["parse_error"], error);
    assert_eq!(out["findings_count"], 1);
}

#[test]
fn ferox_keeps_real_responses_only() {
    let p = parse_fixture("discovery.ferox", "output.jsonl");
    assert_eq!(p.parse_error, None);
    assert_eq!(
        p.records, 5,
        "configuration, statistics and the wildcard are left out"
    );
    assert_eq!(p.findings.len(), 4, "the repeated /admin/ is one finding");
    assert_eq!(
        dataset(&p, "urls"),
        [
            "http://127.0.0.1:18080/admin",
            "http://127.0.0.1:18080/admin/",
            "http://127.0.0.1:18080/robots.txt",
            "http://127.0.0.1:18080/backup",
        ]
    );
    assert_eq!(p.findings[0].title, "301 /admin");
    assert_eq!(
        p.findings[3].evidence,
        "status 403, 153 bytes, 12 words, 5 lines"
    );
    assert!(severities(&p).iter().all(|s| *s == Severity::Info));
    assert_eq!(p.findings[0].raw["headers"]["location"], "/admin/");
    let bad = parse_fixture("discovery.ferox", "malformed.jsonl");
    assert_fallback(&bad, "discovery.ferox", &["urls"], "line 2, column");
}

#[test]
fn nuclei_findings_carry_severity_target_and_evidence() {
    let p = parse_fixture("scan.nuclei", "output.jsonl");
    assert_eq!(p.parse_error, None);
    assert_eq!(p.records, 6);
    assert_eq!(p.findings.len(), 5, "the repeated CVE match is one finding");
    assert_eq!(
        severities(&p),
        [
            Severity::Info,
            Severity::Info,
            Severity::Medium,
            Severity::Critical,
            Severity::Info
        ]
    );
    assert_eq!(
        targets(&p),
        [
            "http://127.0.0.1:18080/",
            "http://127.0.0.1:18080/",
            "http://127.0.0.1:18080/.git/config",
            "http://target.example.com/cgi-bin/.%2e/.%2e/.%2e/.%2e/etc/passwd",
            "target.example.com",
        ]
    );
    let cve = &p.findings[3];
    assert_eq!(
        cve.title,
        "Apache 2.4.49 - Path Traversal and Remote Code Execution"
    );
    assert_eq!(cve.evidence, "CVE-2021-41773");
    assert_eq!(cve.raw["info"]["classification"]["cvss-score"], 9.8);
    assert_eq!(p.findings[0].evidence, "python");
    assert_eq!(p.findings[2].evidence, "repositoryformatversion = 0");
    assert_ne!(p.findings[0].id, p.findings[1].id);
    assert_eq!(dataset(&p, "urls").len(), 4);
    let again = parse_fixture("scan.nuclei", "output.jsonl");
    assert_eq!(again.findings[3].id, cve.id, "ids are stable");
    let out = p.to_output();
    assert_eq!(out["findings_count"], 5);
    assert_eq!(out["records"], 6);
    assert_eq!(out["parser"], "ok");
    assert_eq!(out["findings"][3]["severity"], "critical");
    let bad = parse_fixture("scan.nuclei", "malformed.jsonl");
    assert_fallback(&bad, "scan.nuclei", &["urls"], "line 2, column");
}

#[test]
fn httpx_makes_one_info_finding_per_live_url() {
    let p = parse_fixture("scan.httpx", "output.jsonl");
    assert_eq!(p.parse_error, None);
    assert_eq!(p.records, 3, "the failed probe is left out");
    assert_eq!(
        dataset(&p, "urls"),
        [
            "http://127.0.0.1:18080",
            "https://www.example.com",
            "http://www.example.com"
        ]
    );
    assert_eq!(p.findings[0].title, "live web service (200)");
    assert_eq!(
        p.findings[0].evidence,
        "status 200; title Directory listing for /; tech Python:3.11.7,SimpleHTTP:0.6; \
         server SimpleHTTP/0.6 Python/3.11.7"
    );
    assert_eq!(p.findings[2].title, "live web service (301)");
    let bad = parse_fixture("scan.httpx", "malformed.jsonl");
    assert_fallback(&bad, "scan.httpx", &["urls"], "line 2, column 2");
}

#[test]
fn katana_collects_endpoints_without_findings() {
    let p = parse_fixture("crawl.katana", "output.jsonl");
    assert_eq!(p.parse_error, None);
    assert_eq!(p.records, 6);
    assert!(p.findings.is_empty());
    assert_eq!(
        dataset(&p, "urls"),
        [
            "http://127.0.0.1:18080/",
            "http://127.0.0.1:18080/admin/",
            "http://127.0.0.1:18080/static/app.js",
            "http://127.0.0.1:18080/login?next=%2Fadmin%2F",
            "http://127.0.0.1:18080/missing.css",
        ]
    );
    let bad = parse_fixture("crawl.katana", "malformed.jsonl");
    assert_fallback(
        &bad,
        "crawl.katana",
        &["urls"],
        "line 2 is a string, not a JSON object",
    );
}

#[test]
fn nmap_open_ports_become_findings_and_services() {
    let p = parse_fixture("scan.nmap", "output.txt");
    assert_eq!(p.parse_error, None);
    assert_eq!(p.records, 3);
    assert_eq!(
        dataset(&p, "services"),
        [
            "127.0.0.1:5672/tcp amqp",
            "127.0.0.1:6379/tcp redis",
            "127.0.0.1:18099/tcp unknown"
        ]
    );
    assert_eq!(
        targets(&p),
        ["127.0.0.1:5672", "127.0.0.1:6379", "127.0.0.1:18099"]
    );
    assert_eq!(p.findings[1].title, "open port 6379/tcp (redis)");
    assert_eq!(p.findings[1].evidence, "6379/tcp open redis");

    let p = parse_fixture("scan.nmap", "output-hostnames.txt");
    assert_eq!(p.records, 3, "the closed port is left out");
    assert_eq!(dataset(&p, "services")[0], "localhost:5672/tcp amqp");
    assert_eq!(
        p.findings[0].evidence,
        "5672/tcp open amqp RabbitMQ 3.10.8 (0-9) 127.0.0.1"
    );
    assert_eq!(p.findings[0].raw["ip"], "127.0.0.1");
}

#[test]
fn nmap_host_context_is_replaced_per_host() {
    let text = "Nmap scan report for web (10.0.0.1)\n80/tcp open  http\n\
                Nmap scan report for 10.0.0.2\n22/tcp open  ssh\n";
    let p = tool("scan.nmap").parse(text.as_bytes(), None);
    assert_eq!(
        p.findings[0].raw,
        json!({"host": "web", "ip": "10.0.0.1", "port": "80",
        "proto": "tcp", "state": "open", "service": "http"})
    );
    assert_eq!(
        p.findings[1].raw,
        json!({"host": "10.0.0.2", "port": "22", "proto": "tcp",
        "state": "open", "service": "ssh"})
    );
    let garbage = tool("scan.nmap").parse(b"\x00\xffnot nmap at all\n", None);
    assert_eq!(
        (garbage.records, garbage.parse_error),
        (0, None),
        "no match is zero findings"
    );
}

#[test]
fn ffuf_results_are_read_from_the_output_file() {
    let p = parse_fixture("discovery.ffuf", "output.json");
    assert_eq!(p.parse_error, None);
    assert_eq!(p.records, 3);
    assert_eq!(
        dataset(&p, "urls"),
        [
            "http://127.0.0.1:18080/admin",
            "http://127.0.0.1:18080/robots.txt",
            "http://127.0.0.1:18080/server-status"
        ]
    );
    assert_eq!(p.findings[0].title, "301 admin");
    assert_eq!(
        p.findings[0].evidence,
        "status 301, 0 bytes, 1 words, 1 lines /admin/"
    );
    let def = tool("discovery.ffuf");
    let none = def.parse(b"", None);
    assert_eq!(
        (none.records, none.parse_error.is_none()),
        (0, true),
        "no file: nothing found"
    );
    assert_eq!(def.parse(b"", Some(b"{\"results\": null}")).records, 0);
    let bad = parse_fixture("discovery.ffuf", "malformed.json");
    assert_fallback(&bad, "discovery.ffuf", &["urls"], "line 1, column");
    let wrong = def.parse(b"", Some(b"{\"results\": [1]}"));
    assert!(
        wrong
            .parse_error
            .unwrap()
            .contains("record 0 of `results` is a number")
    );
    let missing = def.parse(b"", Some(b"{\"res\": []}"));
    assert!(missing.parse_error.unwrap().contains("no `results`"));
}

#[test]
fn subfinder_lines_become_hosts() {
    let p = parse_fixture("discovery.subfinder", "output.txt");
    assert_eq!(p.parse_error, None);
    assert_eq!(p.records, 6);
    assert!(p.findings.is_empty());
    assert_eq!(
        dataset(&p, "hosts"),
        [
            "www.example.com",
            "api.example.com",
            "mail.example.com",
            "dev.example.com",
            "staging.example.org"
        ]
    );
    let out = p.to_output();
    assert_eq!(out["findings"], json!([]));
    assert_eq!(out["hosts"].as_array().unwrap().len(), 5);
}

#[test]
fn the_fallback_keeps_at_most_64_kib_of_raw_output() {
    let mut big = b"not json ".repeat(20_000);
    big.extend_from_slice(b"\n");
    let p = tool("scan.nuclei").parse(&big, None);
    assert_fallback(&p, "scan.nuclei", &["urls"], "line 1, column 2");
    let raw = p.findings[0].raw.as_str().unwrap();
    assert!(raw.len() < 64 * 1024 + 64 && raw.contains("[truncated"));
    assert_eq!(p.findings[0].evidence.len(), 500);
    let output = fixture("scan.nuclei", "malformed.jsonl");
    let p = tool("scan.nuclei").parse(&output, None);
    assert_eq!(p.findings[0].raw, json!(String::from_utf8(output).unwrap()));
}
