//! The built-in classifier (rules, then the model) against a labelled corpus of real error
//! messages (`tests/corpus/errors.yaml`), through `worker classify --stdin --json` as an
//! operator runs it.

use secflow_tests::command;
use serde::Deserialize;
use serde_json::{Value, json};
use std::{io::Write, process::Stdio};

#[derive(Deserialize)]
struct Labelled {
    class: String,
    message: String,
    #[serde(default)]
    exit_code: Option<i32>,
    #[serde(default)]
    signal: Option<i32>,
    #[serde(default)]
    http_status: Option<u16>,
}

/// Runs `worker classify --stdin --json` over a corpus; returns the accuracy in percent and
/// how many misses were a confident wrong class (not `unknown`), and prints every miss.
fn accuracy(name: &str, corpus: &[Labelled]) -> (f64, usize) {
    let input: String = corpus
        .iter()
        .map(|l| json!({"message": l.message, "exit_code": l.exit_code, "signal": l.signal, "http_status": l.http_status}).to_string() + "\n")
        .collect();
    let mut child = command("worker")
        .args(["classify", "--stdin", "--json"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    child
        .stdin
        .take()
        .unwrap()
        .write_all(input.as_bytes())
        .unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(out.status.success());
    let results: Vec<Value> = String::from_utf8(out.stdout)
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(results.len(), corpus.len(), "one result per line");
    let missed: Vec<_> = corpus
        .iter()
        .zip(&results)
        .filter(|(l, r)| r["class"] != l.class.as_str())
        .collect();
    let confidently_wrong = missed
        .iter()
        .filter(|(_, r)| r["class"] != "unknown")
        .count();
    let misses: Vec<String> = missed
        .into_iter()
        .map(|(l, r)| {
            format!(
                "  expected {}, got {} (rule {}): {}",
                l.class,
                r["class"],
                r["rule"],
                l.message.lines().next().unwrap_or("")
            )
        })
        .collect();
    let accuracy = 100.0 * (corpus.len() - misses.len()) as f64 / corpus.len() as f64;
    println!(
        "classification of {name}: {}/{} correct ({accuracy:.1}%)",
        corpus.len() - misses.len(),
        corpus.len()
    );
    for m in &misses {
        println!("{m}");
    }
    (accuracy, confidently_wrong)
}

/// Proves: the defaults classify at least 97% of 150+ real messages right (and prints the
/// figure and every miss).
#[test]
fn default_rules_classify_the_corpus() {
    let corpus: Vec<Labelled> =
        yaml_serde::from_str(include_str!("../corpus/errors.yaml")).unwrap();
    assert!(
        corpus.len() >= 150,
        "the corpus has {} messages",
        corpus.len()
    );
    let (accuracy, _) = accuracy("errors.yaml", &corpus);
    assert!(accuracy >= 97.0, "{accuracy:.1}% < 97%");
}

/// Reports accuracy on held-out messages the rules were not tuned on (and the model was not
/// trained on), and proves that what they do not recognise falls to `unknown` (retry once,
/// then DLQ) rather than to a wrong class that would fail fast or retry for nothing.
#[test]
fn default_rules_on_held_out_messages() {
    let corpus: Vec<Labelled> =
        yaml_serde::from_str(include_str!("../corpus/holdout.yaml")).unwrap();
    let (accuracy, confidently_wrong) = accuracy("holdout.yaml", &corpus);
    assert!(
        accuracy >= 70.0,
        "{accuracy:.1}% on messages the rules have not seen"
    );
    assert!(
        confidently_wrong <= 1,
        "{confidently_wrong} unseen messages got a wrong class other than unknown"
    );
}

/// Proves: a single message, an exit code and a rules file on the command line; malformed
/// stdin lines get an error line, not a crash.
#[test]
fn classify_command_line() {
    let out = command("worker")
        .args(["classify", "--exit-code", "127", "sh: 1: nmapx: not found"])
        .output()
        .unwrap();
    assert_eq!(
        String::from_utf8_lossy(&out.stdout).trim(),
        "validation (code command_not_found, rule command_not_found, confidence 1.00, matched rule:command_not_found)"
    );
    let rules = std::env::temp_dir().join(format!("secflow-cli-rules-{}.yaml", std::process::id()));
    std::fs::write(&rules, "version: 1\nrules:\n  - name: scanner_quota\n    class: resource\n    message: 'scan quota'\n").unwrap();
    let out = command("worker")
        .args([
            "classify",
            "--json",
            "--rules",
            rules.to_str().unwrap(),
            "monthly scan quota used up",
        ])
        .output()
        .unwrap();
    let v: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(
        (v["class"].as_str(), v["rule"].as_str()),
        (Some("resource"), Some("scanner_quota"))
    );
    let mut child = command("worker")
        .args(["classify", "--stdin", "--json"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    child
        .stdin
        .take()
        .unwrap()
        .write_all(b"not json\n{\"message\":\"Connection refused\"}\n")
        .unwrap();
    let out = child.wait_with_output().unwrap();
    let lines: Vec<Value> = String::from_utf8(out.stdout)
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert!(
        lines[0]["error"]
            .as_str()
            .unwrap()
            .contains("not a failure object")
    );
    assert_eq!(lines[1]["class"], "transient");
    let _ = std::fs::remove_file(rules);
}
