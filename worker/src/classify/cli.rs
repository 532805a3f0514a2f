//! `worker classify`: classify one failure from the command line or one JSON object per line
//! of stdin as the worker would, with the confidence, what matched and, on request, the
//! features behind the answer; `--train` trains a model from labelled example files.

use super::{
    Classification, Classifier, Explanation, Failure, Model, classify_json_line,
    train::{self, TrainOptions},
};
use std::io::{BufRead, Write};

/// Flags of `worker classify`.
#[derive(clap::Args, Debug)]
pub struct ClassifyArgs {
    /// Process exit code that came with the message.
    #[arg(long)]
    pub exit_code: Option<i32>,
    /// Signal that killed the process.
    #[arg(long)]
    pub signal: Option<i32>,
    /// HTTP status that came with the message.
    #[arg(long)]
    pub http_status: Option<u16>,
    /// `std::io::ErrorKind` name that came with the message (`TimedOut`).
    #[arg(long)]
    pub io_kind: Option<String>,
    /// Rules file tried before the built-in rules.
    #[arg(long, env = "SECFLOW_RULES")]
    pub rules: Option<String>,
    /// Model file used instead of the built-in one (`worker/rules/model.json`).
    #[arg(long, env = "SECFLOW_MODEL")]
    pub model: Option<String>,
    /// Read one JSON object per line from stdin ({"message", "exit_code"?, "signal"?,
    /// "http_status"?, "io_kind"?}).
    #[arg(long)]
    pub stdin: bool,
    /// Print JSON.
    #[arg(long)]
    pub json: bool,
    /// Also print the model's view and the features that weighed most.
    #[arg(long)]
    pub explain: bool,
    /// Train a model from the --examples files and write it to --out.
    #[arg(long, requires_all = ["examples", "out"], conflicts_with_all = ["stdin", "text"])]
    pub train: bool,
    /// Labelled examples file (YAML list of {class, message, exit_code?, ...}); repeatable.
    #[arg(long, requires = "train")]
    pub examples: Vec<String>,
    /// Where --train writes the model.
    #[arg(long, requires = "train")]
    pub out: Option<String>,
    /// Training: feature-hash buckets (a power of two).
    #[arg(long, requires = "train", default_value_t = TrainOptions::default().buckets)]
    pub buckets: u32,
    /// Training: passes over the examples.
    #[arg(long, requires = "train", default_value_t = TrainOptions::default().epochs)]
    pub epochs: u32,
    /// The message.
    pub text: Vec<String>,
}

/// Runs `worker classify`.
pub fn run(args: ClassifyArgs) -> anyhow::Result<()> {
    if args.train {
        return train_command(&args);
    }
    let classifier = Classifier::new(args.rules.as_deref(), args.model.as_deref())
        .map_err(anyhow::Error::msg)?;
    let mut out = std::io::BufWriter::new(std::io::stdout().lock());
    if args.stdin {
        for line in std::io::stdin().lock().lines() {
            let line = line?;
            if !line.trim().is_empty() {
                writeln!(
                    out,
                    "{}",
                    classify_json_line(&classifier, &line, args.explain)
                )?;
            }
        }
        return Ok(out.flush()?);
    }
    let failure = Failure {
        message: args.text.join(" "),
        exit_code: args.exit_code,
        signal: args.signal,
        http_status: args.http_status,
        io_kind: args.io_kind.clone(),
    };
    let c = classifier.classify(&failure);
    let explanation = args.explain.then(|| classifier.explain(&failure, &c, 8));
    if args.json {
        let mut v = serde_json::json!(c);
        if let Some(e) = &explanation {
            v["explain"] = serde_json::json!(e);
        }
        writeln!(out, "{v}")?;
    } else {
        writeln!(out, "{}", text_line(&c))?;
        if let Some(e) = &explanation {
            write_explanation(&mut out, e)?;
        }
    }
    Ok(out.flush()?)
}

/// `transient (code timeout, rule timeout, confidence 1.00, matched rule:timeout)`.
fn text_line(c: &Classification) -> String {
    format!(
        "{} (code {}, rule {}, confidence {:.2}, matched {})",
        c.class, c.code, c.rule, c.confidence, c.matched
    )
}

fn write_explanation(out: &mut impl Write, e: &Explanation) -> std::io::Result<()> {
    match (e.model_best, e.model_confidence, e.model_security) {
        (Some(best), Some(p), Some(sec)) => writeln!(
            out,
            "  model: {best} ({p:.2}), security {sec:.2}; features towards {}:",
            e.towards
        )?,
        _ => writeln!(out, "  model: no words to judge, or no model")?,
    }
    for f in &e.features {
        writeln!(
            out,
            "    {:+.3}  {} (weight {:+.3})",
            f.contribution, f.feature, f.weight
        )?;
    }
    Ok(())
}

/// Held-out evaluation files must never shape the model.
fn refuse_held_out(path: &str) -> anyhow::Result<()> {
    let name = std::path::Path::new(path)
        .file_name()
        .map(|n| n.to_string_lossy().to_lowercase())
        .unwrap_or_default();
    if name.contains("holdout") || name.contains("heldout") {
        anyhow::bail!("{path}: a held-out file is for evaluation only; train on other files");
    }
    Ok(())
}

fn train_command(args: &ClassifyArgs) -> anyhow::Result<()> {
    let out_path = args.out.as_deref().unwrap_or_default();
    let mut examples = Vec::new();
    for path in &args.examples {
        refuse_held_out(path)?;
        let file = train::load_examples(path).map_err(anyhow::Error::msg)?;
        println!("{path}: {} examples", file.len());
        examples.extend(file);
    }
    let opts = TrainOptions {
        buckets: args.buckets,
        epochs: args.epochs,
        ..TrainOptions::default()
    };
    let (model, report) =
        train::train(&examples, &args.examples, &opts).map_err(anyhow::Error::msg)?;
    let pct = |(a, b): (usize, usize)| {
        if b == 0 {
            0.0
        } else {
            100.0 * a as f64 / b as f64
        }
    };
    println!(
        "training accuracy: {}/{} ({:.1}%) on {} distinct examples, {} epochs, {} buckets",
        report.training.0,
        report.training.1,
        pct(report.training),
        report.examples,
        opts.epochs,
        opts.buckets
    );
    println!(
        "validation accuracy: {}/{} ({:.1}%) by a model trained on the other four fifths",
        report.validation.0,
        report.validation.1,
        pct(report.validation)
    );
    let (answered, right) = report.validation_answered;
    println!(
        "unknown below confidence {:.2} (chosen on the validation split): {answered}/{} answered, {right} of them right ({:.1}%); security guard at {:.2}: {} false alarms",
        report.unknown_below,
        report.validation.1,
        pct((right, answered)),
        model.security_above,
        report.guard_false_alarms
    );
    let json = model.to_json();
    // The file must read back as the model just evaluated.
    Model::from_json(out_path, &json).map_err(anyhow::Error::msg)?;
    std::fs::write(out_path, &json)
        .map_err(|e| anyhow::anyhow!("cannot write model file {out_path}: {e}"))?;
    println!("wrote {out_path} ({} bytes)", json.len());
    Ok(())
}
