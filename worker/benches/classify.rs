//! Classification latency in-process: each labelled message of the training corpora (errors.yaml
//! and train*.yaml) classified one at a time, many rounds, reporting p50 / p99 / max per
//! message for the whole classifier (rules, then the model), for the model alone, and for the
//! messages no rule matches; then a 64 KiB stderr. Run with `cargo bench -p secflow-worker
//! --bench classify` (optimised build). `SECFLOW_BENCH_SLOWEST=N` prints instead the N
//! messages slowest to classify, each timed on its own (median of 21, caches warm).

use secflow_worker::classify::{Classification, Classifier, Failure, train::load_examples};
use std::{hint::black_box, time::Instant};

const ROUNDS: usize = 200;

fn corpus() -> Vec<Failure> {
    let dir = concat!(env!("CARGO_MANIFEST_DIR"), "/../tests/corpus");
    let mut names: Vec<String> = std::fs::read_dir(dir)
        .map(|d| {
            d.filter_map(|e| e.ok())
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .collect()
        })
        .unwrap_or_default();
    names.retain(|n| n == "errors.yaml" || (n.starts_with("train") && n.ends_with(".yaml")));
    names.sort();
    let mut out = Vec::new();
    for n in names {
        match load_examples(&format!("{dir}/{n}")) {
            Ok(examples) => out.extend(examples.iter().map(|e| e.failure())),
            Err(e) => eprintln!("skipping {n}: {e}"),
        }
    }
    out
}

fn measure(
    name: &str,
    failures: &[Failure],
    rounds: usize,
    classify: impl Fn(&Failure) -> Classification,
) {
    for f in failures {
        black_box(classify(f));
    }
    let mut nanos: Vec<u128> = Vec::with_capacity(failures.len() * rounds);
    for _ in 0..rounds {
        for f in failures {
            let t = Instant::now();
            black_box(classify(black_box(f)));
            nanos.push(t.elapsed().as_nanos());
        }
    }
    nanos.sort_unstable();
    let at = |q: f64| nanos[((nanos.len() - 1) as f64 * q) as usize] as f64 / 1000.0;
    println!(
        "{name:<34} {:>6} calls  p50 {:>7.2} µs  p99 {:>7.2} µs  max {:>8.2} µs",
        nanos.len(),
        at(0.5),
        at(0.99),
        at(1.0)
    );
}

/// The `n` messages slowest to classify (median over `rounds`), slowest first, with their
/// length and the answer's source.
fn slowest(classifier: &Classifier, failures: &[Failure], rounds: usize, n: usize) {
    let mut timed: Vec<(u128, &Failure)> = failures
        .iter()
        .map(|f| {
            let mut t: Vec<u128> = (0..rounds)
                .map(|_| {
                    let start = Instant::now();
                    black_box(classifier.classify(black_box(f)));
                    start.elapsed().as_nanos()
                })
                .collect();
            t.sort_unstable();
            (t[rounds / 2], f)
        })
        .collect();
    timed.sort_by_key(|t| std::cmp::Reverse(t.0));
    for (nanos, f) in timed.iter().take(n) {
        let c = classifier.classify(f);
        let head: String = f.message.chars().take(100).collect();
        println!(
            "{:>8.2} µs {:>5} bytes {:<24} {}",
            *nanos as f64 / 1000.0,
            f.message.len(),
            c.matched,
            head.replace('\n', " ")
        );
    }
}

fn main() {
    let classifier = Classifier::defaults();
    let rules_only = Classifier::defaults().with_model(None);
    let all = corpus();
    let unmatched: Vec<Failure> = all
        .iter()
        .filter(|f| rules_only.classify(f).matched == "none")
        .cloned()
        .collect();
    println!(
        "{} messages, {} of them matched by no rule",
        all.len(),
        unmatched.len()
    );
    if let Some(n) = std::env::var("SECFLOW_BENCH_SLOWEST")
        .ok()
        .and_then(|n| n.parse().ok())
    {
        slowest(&classifier, &all, 21, n);
        return;
    }
    measure("classify (rules, then model)", &all, ROUNDS, |f| {
        classifier.classify(f)
    });
    measure(
        "classify, messages no rule matches",
        &unmatched,
        ROUNDS,
        |f| classifier.classify(f),
    );
    measure("model alone", &all, ROUNDS, |f| {
        classifier.classify_by_model(f)
    });
    measure("rules alone", &all, ROUNDS, |f| rules_only.classify(f));
    let long = Failure {
        message: "progress: 10% of targets probed\n".repeat(2048)
            + "fatal: schema validation failed",
        exit_code: Some(1),
        ..Failure::default()
    };
    measure(
        "classify, 64 KiB stderr",
        std::slice::from_ref(&long),
        200,
        |f| classifier.classify(f),
    );
}
