//! `classify-report FILE...`: how the worker's classifier (rules, then the model) does on
//! labelled corpus files: accuracy overall, per class and per action (retry, fail fast,
//! security alert), the `unknown` rate, security false negatives and the confusion matrix.
//! `--model FILE` / `--rules FILE` evaluate other ones, `--model-only` the model without the
//! rules, `--misses` lists every wrong answer (and names the security false negatives,
//! otherwise only counted). `--cv K` cross-validates instead: the files are
//! pooled, split into K stratified folds, and each fold is classified by the rules with a model
//! trained on the other folds (default options, or `--epochs`, `--l2`, `--lr`, `--buckets`); the figures are over all the folds.
//! `--across FILE` scores across files instead: a model trained on the other files (same
//! options) behind the rules, on FILE alone, which is closer to unseen messages than folds that
//! split a format between training and scoring; with `--model-only`, that model alone.

use secflow_common::ErrorClass;
use secflow_worker::classify::{
    Classification, Classifier,
    cv::cross_validate,
    train::{Example, TrainOptions, load_examples, train},
};
use std::{fmt::Write, sync::Arc};

const USAGE: &str = "usage: classify-report [--model FILE] [--rules FILE] [--model-only] [--misses] [--cv K | --across FILE] [--epochs N] [--l2 X] [--lr X] [--buckets N] CORPUS.yaml...";

/// What the fleet does about a class.
fn action(c: ErrorClass) -> &'static str {
    match c {
        ErrorClass::Transient | ErrorClass::Resource => "retry",
        ErrorClass::Validation | ErrorClass::Permanent => "fail fast",
        ErrorClass::Security => "security alert",
        ErrorClass::Cancelled => "cancel",
        ErrorClass::Unknown => "retry once",
    }
}

struct Opts {
    model: Option<String>,
    rules: Option<String>,
    model_only: bool,
    misses: bool,
    cv: Option<usize>,
    across: Option<String>,
    train: TrainOptions,
    files: Vec<String>,
}

fn parse_args() -> Result<Opts, String> {
    let mut o = Opts {
        model: None,
        rules: None,
        model_only: false,
        misses: false,
        cv: None,
        across: None,
        train: TrainOptions::default(),
        files: Vec::new(),
    };
    let mut args = std::env::args().skip(1);
    while let Some(a) = args.next() {
        match a.as_str() {
            "--model" => o.model = Some(args.next().ok_or("--model needs a file")?),
            "--rules" => o.rules = Some(args.next().ok_or("--rules needs a file")?),
            "--model-only" => o.model_only = true,
            "--misses" => o.misses = true,
            "--epochs" | "--l2" | "--lr" | "--buckets" => {
                let v = args.next().ok_or(format!("{a} needs a number"))?;
                let bad = || format!("{a} `{v}` is not a number");
                match a.as_str() {
                    "--epochs" => o.train.epochs = v.parse().map_err(|_| bad())?,
                    "--l2" => o.train.l2 = v.parse().map_err(|_| bad())?,
                    // The size itself is checked by the trainer, with the worker's own message.
                    "--buckets" => o.train.buckets = v.parse().map_err(|_| bad())?,
                    _ => o.train.learning_rate = v.parse().map_err(|_| bad())?,
                }
            }
            "--cv" => {
                let k = args.next().ok_or("--cv needs a number of folds")?;
                let k = k
                    .parse()
                    .map_err(|_| format!("--cv `{k}` is not a number of folds"))?;
                o.cv = Some(k);
            }
            "--across" => o.across = Some(args.next().ok_or("--across needs a file")?),
            "-h" | "--help" => return Err(USAGE.into()),
            flag if flag.starts_with("--") => return Err(format!("unknown flag {flag}\n{USAGE}")),
            _ => o.files.push(a),
        }
    }
    if o.files.is_empty() {
        return Err(USAGE.into());
    }
    let trains = o.cv.is_some() || o.across.is_some();
    if trains && o.model.is_some() {
        return Err("--cv and --across train their own models: they take no --model".into());
    }
    if o.cv.is_some() && o.model_only {
        return Err("--model-only goes with --across, not --cv".into());
    }
    if o.cv.is_some() && o.across.is_some() {
        return Err("--cv and --across are two different measures: give one".into());
    }
    Ok(o)
}

fn pct(a: usize, b: usize) -> f64 {
    if b == 0 {
        0.0
    } else {
        100.0 * a as f64 / b as f64
    }
}

fn main() {
    let result = parse_args().and_then(|o| {
        let classifier = Classifier::new(o.rules.as_deref(), o.model.as_deref())?;
        if o.model_only && classifier.model().is_none() {
            return Err("no model to evaluate".into());
        }
        let mut text = String::new();
        if let Some(k) = o.cv {
            let mut examples = Vec::new();
            for file in &o.files {
                refuse_held_out(file)?;
                examples.extend(load_examples(file)?);
            }
            let rules = || Classifier::new(o.rules.as_deref(), None);
            let scored = cross_validate(&examples, k, &o.train, &rules)?;
            let title = format!("{k}-fold cross-validation over {}", o.files.join(" + "));
            report(&scored, &o, &title, &mut text);
        }
        if let Some(scored_file) = &o.across {
            let mut examples = Vec::new();
            for file in o.files.iter().filter(|f| *f != scored_file) {
                refuse_held_out(file)?;
                examples.extend(load_examples(file)?);
            }
            refuse_held_out(scored_file)?;
            let (model, _) = train(&examples, &[], &o.train)?;
            let classifier =
                Classifier::new(o.rules.as_deref(), None)?.with_model(Some(Arc::new(model)));
            let scored: Vec<(Example, Classification)> = load_examples(scored_file)?
                .into_iter()
                .map(|e| {
                    let f = e.failure();
                    let c = if o.model_only {
                        classifier.classify_by_model(&f)
                    } else {
                        classifier.classify(&f)
                    };
                    (e, c)
                })
                .collect();
            let others: Vec<&str> = o
                .files
                .iter()
                .filter(|f| *f != scored_file)
                .map(String::as_str)
                .collect();
            let title = format!("{scored_file}, model trained on {}", others.join(" + "));
            report(&scored, &o, &title, &mut text);
        }
        for file in o.files.iter().filter(|_| !trains_own(&o)) {
            let scored: Vec<(Example, Classification)> = load_examples(file)?
                .into_iter()
                .map(|e| {
                    let f = e.failure();
                    let c = if o.model_only {
                        classifier.classify_by_model(&f)
                    } else {
                        classifier.classify(&f)
                    };
                    (e, c)
                })
                .collect();
            report(&scored, &o, file, &mut text);
        }
        // A closed pipe (`| head`) is not an error worth a panic.
        let _ = std::io::Write::write_all(&mut std::io::stdout(), text.as_bytes());
        Ok(())
    });
    if let Err(e) = result {
        eprintln!("classify-report: {e}");
        std::process::exit(2);
    }
}

/// Whether the report trains its own models (`--cv`, `--across`) rather than scoring files.
fn trains_own(o: &Opts) -> bool {
    o.cv.is_some() || o.across.is_some()
}

/// Held-out files are for one final evaluation: never pooled into cross-validation folds.
fn refuse_held_out(path: &str) -> Result<(), String> {
    let name = std::path::Path::new(path)
        .file_name()
        .map(|n| n.to_string_lossy().to_lowercase())
        .unwrap_or_default();
    if name.contains("holdout") || name.contains("heldout") {
        return Err(format!(
            "{path}: a held-out file is for evaluation only; cross-validate on other files"
        ));
    }
    Ok(())
}

fn report(scored: &[(Example, Classification)], o: &Opts, file: &str, out: &mut String) {
    let classes = ErrorClass::ALL;
    let idx = |c: ErrorClass| classes.iter().position(|x| *x == c).unwrap_or(0);
    let mut confusion = [[0usize; 7]; 7];
    let mut by_matched: std::collections::BTreeMap<&str, (usize, usize)> = Default::default();
    let (mut unknown, mut sec_fn, mut action_right) = (0, Vec::new(), 0);
    // Of those, the ones answered with a class that is retried: the worst miss, a security
    // event run again instead of stopped.
    let mut sec_retried = 0;
    for (e, c) in scored {
        confusion[idx(e.class)][idx(c.class)] += 1;
        let kind = if c.matched.starts_with("rule:") {
            "rule"
        } else {
            c.matched.as_str()
        };
        let entry = by_matched
            .entry(if kind == "rule" {
                "rules"
            } else if kind == "model" {
                "model"
            } else {
                "none"
            })
            .or_default();
        entry.1 += 1;
        if c.class == e.class {
            entry.0 += 1;
        } else if o.misses {
            let first = e.message.lines().next().unwrap_or("");
            let _ = writeln!(
                out,
                "  miss: expected {}, got {} ({}, {:.2}): {first}",
                e.class, c.class, c.matched, c.confidence
            );
        }
        unknown += usize::from(c.class == ErrorClass::Unknown);
        action_right += usize::from(action(c.class) == action(e.class));
        if e.class == ErrorClass::Security && c.class != ErrorClass::Security {
            sec_retried += usize::from(matches!(action(c.class), "retry" | "retry once"));
            sec_fn.push(format!(
                "{} as {}",
                e.message.lines().next().unwrap_or(""),
                c.class
            ));
        }
    }
    let n = scored.len();
    let right: usize = (0..7).map(|k| confusion[k][k]).sum();
    let _ = writeln!(
        out,
        "== {file}: {n} messages{}",
        if o.model_only { " (model only)" } else { "" }
    );
    let _ = writeln!(out, "accuracy: {right}/{n} ({:.1}%)", pct(right, n));
    for (kind, (r, t)) in &by_matched {
        let _ = writeln!(
            out,
            "  answered by {kind}: {t}, right {r} ({:.1}%)",
            pct(*r, *t)
        );
    }
    let _ = writeln!(out, "per class (right/expected):");
    for (k, c) in classes.iter().enumerate() {
        let total: usize = confusion[k].iter().sum();
        if total > 0 {
            let _ = writeln!(
                out,
                "  {:<11} {:>4}/{:<4} {:>5.1}%",
                c.as_str(),
                confusion[k][k],
                total,
                pct(confusion[k][k], total)
            );
        }
    }
    let _ = writeln!(out, "per action (right/expected):");
    for a in [
        "retry",
        "fail fast",
        "security alert",
        "cancel",
        "retry once",
    ] {
        let expected: Vec<usize> = (0..7).filter(|k| action(classes[*k]) == a).collect();
        let total: usize = expected
            .iter()
            .map(|k| confusion[*k].iter().sum::<usize>())
            .sum();
        let ok: usize = expected
            .iter()
            .map(|k| {
                (0..7)
                    .filter(|j| action(classes[*j]) == a)
                    .map(|j| confusion[*k][j])
                    .sum::<usize>()
            })
            .sum();
        if total > 0 {
            let _ = writeln!(out, "  {a:<15} {ok:>4}/{total:<4} {:>5.1}%", pct(ok, total));
        }
    }
    let _ = writeln!(
        out,
        "action accuracy: {action_right}/{n} ({:.1}%)",
        pct(action_right, n)
    );
    let _ = writeln!(out, "unknown rate: {unknown}/{n} ({:.1}%)", pct(unknown, n));
    let _ = writeln!(out, "security false negatives: {}", sec_fn.len());
    let _ = writeln!(
        out,
        "  of which answered with a class that is retried: {sec_retried}"
    );
    // Their text only with --misses: a held-out file's figures must not show its messages.
    for s in sec_fn.iter().filter(|_| o.misses) {
        let _ = writeln!(out, "  {s}");
    }
    let _ = writeln!(out, "confusion (rows expected, columns answered):");
    let short = ["trans", "resrc", "valid", "perm", "secur", "cancl", "unkn"];
    let _ = writeln!(
        out,
        "  {:<11}{}",
        "",
        short.iter().map(|s| format!("{s:>6}")).collect::<String>()
    );
    for (k, c) in classes.iter().enumerate() {
        let _ = writeln!(
            out,
            "  {:<11}{}",
            c.as_str(),
            confusion[k]
                .iter()
                .map(|x| format!("{x:>6}"))
                .collect::<String>()
        );
    }
}
