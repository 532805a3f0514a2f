//! Training the learned fallback from labelled example files: loading them, a fixed
//! validation split (a fifth of the examples, chosen by a hash of the message, so an example
//! stays on its side when files grow), SGD on the softmax loss with L2 regularisation (fixed
//! seed, fixed epochs: the same files give the same model, byte for byte), the choice of the
//! `unknown` threshold on the validation split, and the final model trained on everything.

use super::{
    Failure,
    features::{Features, stable_hash},
    model::{Model, Prediction, Why, softmax},
};
use secflow_common::ErrorClass;
use serde::Deserialize;

/// One labelled failure as example files write it (`tests/corpus/errors.yaml`).
#[derive(Clone, Debug, Deserialize)]
pub struct Example {
    /// The expected class.
    pub class: ErrorClass,
    /// Message or stderr.
    #[serde(default)]
    pub message: String,
    /// Process exit code.
    #[serde(default)]
    pub exit_code: Option<i32>,
    /// Signal that killed the process.
    #[serde(default)]
    pub signal: Option<i32>,
    /// HTTP status.
    #[serde(default)]
    pub http_status: Option<u16>,
    /// `std::io::ErrorKind` name (either spelling, see [`Failure`]).
    #[serde(default, deserialize_with = "super::io_kind")]
    pub io_kind: Option<String>,
    /// Where the message comes from (tool, library); informative only.
    #[serde(default)]
    pub source: Option<String>,
}

impl Example {
    /// An example of `class` with only a message.
    pub fn new(class: ErrorClass, message: &str) -> Self {
        Self {
            class,
            message: message.into(),
            exit_code: None,
            signal: None,
            http_status: None,
            io_kind: None,
            source: None,
        }
    }

    /// What makes two examples the same one: class, message and every field.
    fn identity(&self) -> String {
        format!(
            "{:?}|{}|{:?}|{:?}|{:?}|{:?}",
            self.class, self.message, self.exit_code, self.signal, self.http_status, self.io_kind
        )
    }

    /// The failure it describes.
    pub fn failure(&self) -> Failure {
        Failure {
            message: self.message.clone(),
            exit_code: self.exit_code,
            signal: self.signal,
            http_status: self.http_status,
            io_kind: self.io_kind.clone(),
        }
    }
}

/// Training settings; the defaults are the shipped model's.
#[derive(Clone, Debug)]
pub struct TrainOptions {
    /// Feature-hash buckets (a power of two).
    pub buckets: u32,
    /// Passes over the data.
    pub epochs: u32,
    /// Seed of the example order.
    pub seed: u64,
    /// Initial learning rate.
    pub learning_rate: f32,
    /// L2 regularisation strength.
    pub l2: f32,
}

impl Default for TrainOptions {
    fn default() -> Self {
        TrainOptions {
            buckets: 1 << 16,
            epochs: 80,
            seed: 0x5ec_f10e,
            learning_rate: 0.5,
            l2: 2e-6,
        }
    }
}

/// Reads example files (YAML lists); errors name the file and what is wrong.
pub fn load_examples(path: &str) -> Result<Vec<Example>, String> {
    let text = std::fs::read_to_string(path)
        .map_err(|e| format!("cannot read examples file {path}: {e}"))?;
    let examples: Vec<Example> = yaml_serde::from_str(&text).map_err(|e| {
        format!("{path}: not a list of labelled examples ({{class, message, exit_code?, signal?, http_status?, io_kind?}}): {e}")
    })?;
    for (i, e) in examples.iter().enumerate() {
        let has_field = e.exit_code.is_some()
            || e.signal.is_some()
            || e.http_status.is_some()
            || e.io_kind.is_some();
        if e.message.trim().is_empty() && !has_field {
            return Err(format!(
                "{path}: example {} has neither a message nor an exit_code, signal, http_status or io_kind",
                i + 1
            ));
        }
    }
    Ok(examples)
}

/// Examples without exact repeats (same class, message and fields), in their first order.
pub fn distinct(examples: &[Example]) -> Vec<&Example> {
    let mut seen = std::collections::HashSet::new();
    examples
        .iter()
        .filter(|e| seen.insert(e.identity()))
        .collect()
}

/// Whether an example belongs to the validation split (a fifth, by its message's hash).
pub fn is_validation(e: &Example) -> bool {
    stable_hash(e.message.as_bytes()).is_multiple_of(5)
}

/// How the training went (also kept in the model file).
#[derive(Clone, Debug)]
pub struct TrainReport {
    /// Examples after removing exact duplicates.
    pub examples: usize,
    /// Correct / total on all examples, final model, best class.
    pub training: (usize, usize),
    /// Correct / total on the validation split, model trained on the rest, best class.
    pub validation: (usize, usize),
    /// On the validation split with the chosen threshold: answered (not `unknown`) and correct
    /// among them.
    pub validation_answered: (usize, usize),
    /// Non-security validation examples the security guard would turn into `security`.
    pub guard_false_alarms: usize,
    /// The chosen `unknown` threshold.
    pub unknown_below: f32,
}

/// Trains a model on `examples` (from `files`, recorded in the model).
pub fn train(
    examples: &[Example],
    files: &[String],
    opts: &TrainOptions,
) -> Result<(Model, TrainReport), String> {
    if !opts.buckets.is_power_of_two() || !(1 << 8..=1 << 22).contains(&opts.buckets) {
        return Err(format!(
            "buckets {} is not a power of two between 256 and 4194304",
            opts.buckets
        ));
    }
    let examples = distinct(examples);
    let classes: Vec<ErrorClass> = ErrorClass::ALL
        .into_iter()
        .filter(|c| examples.iter().any(|e| e.class == *c))
        .collect();
    if classes.len() < 2 {
        return Err(format!(
            "the examples name {} class(es); training needs at least 2",
            classes.len()
        ));
    }
    let probe = Model::from_parts(classes.clone(), opts.buckets, Vec::new(), Vec::new());
    let data: Vec<(Features, usize, bool)> = examples
        .iter()
        .map(|e| {
            let k = classes.iter().position(|c| *c == e.class).unwrap_or(0);
            (probe.features(&e.failure(), false), k, is_validation(e))
        })
        .collect();
    let fit_part: Vec<&(Features, usize, bool)> = data.iter().filter(|d| !d.2).collect();
    let val_part: Vec<&(Features, usize, bool)> = data.iter().filter(|d| d.2).collect();
    if fit_part.is_empty() || val_part.is_empty() {
        return Err(format!(
            "{} examples are too few to set a fifth apart for validation",
            data.len()
        ));
    }
    let held = fit(&fit_part, &classes, opts).quantised();
    let val_probs: Vec<(Vec<f32>, usize)> = val_part
        .iter()
        .map(|d| (held.probabilities(&d.0), d.1))
        .collect();
    let unknown_below = choose_threshold(&held, &val_probs);
    let security_above = choose_security(&held, &val_probs);
    let mut held = held;
    held.unknown_below = unknown_below;
    held.security_above = security_above;
    let validation = (
        val_probs.iter().filter(|(p, k)| argmax(p) == *k).count(),
        val_probs.len(),
    );
    let verdicts: Vec<(Prediction, usize)> = val_probs
        .iter()
        .map(|(p, k)| (held.decide(p), *k))
        .collect();
    let answered: Vec<&(Prediction, usize)> = verdicts
        .iter()
        .filter(|(v, _)| v.why != Why::Unsure)
        .collect();
    let validation_answered = (
        answered.len(),
        answered
            .iter()
            .filter(|(v, k)| v.class == classes[*k])
            .count(),
    );
    let guard_false_alarms = verdicts
        .iter()
        .filter(|(v, k)| classes[*k] != ErrorClass::Security && v.class == ErrorClass::Security)
        .count();

    let all: Vec<&(Features, usize, bool)> = data.iter().collect();
    let mut model = fit(&all, &classes, opts).quantised();
    model.unknown_below = unknown_below;
    model.security_above = security_above;
    let training = (
        all.iter()
            .filter(|d| argmax(&model.probabilities(&d.0)) == d.1)
            .count(),
        all.len(),
    );
    model.training = super::model::TrainingInfo {
        files: files.to_vec(),
        examples: all.len(),
        training_accuracy: ratio(training),
        validation_examples: validation.1,
        validation_accuracy: ratio(validation),
        epochs: opts.epochs,
    };
    let report = TrainReport {
        examples: all.len(),
        training,
        validation,
        validation_answered,
        guard_false_alarms,
        unknown_below,
    };
    Ok((model, report))
}

fn ratio((a, b): (usize, usize)) -> f64 {
    if b == 0 { 0.0 } else { a as f64 / b as f64 }
}

fn argmax(p: &[f32]) -> usize {
    p.iter()
        .enumerate()
        .fold(
            (0, f32::MIN),
            |a, (k, x)| if *x > a.1 { (k, *x) } else { a },
        )
        .0
}

/// The `unknown` threshold that costs least on the validation split: a wrong answer costs 1,
/// an `unknown` for a known class 0.8 (it is retried once, then dead-lettered: cheaper than a
/// wrong answer, but still no answer). Candidates 0.20 to 0.90 by 0.05; a tie goes to the
/// lower one.
fn choose_threshold(m: &Model, val: &[(Vec<f32>, usize)]) -> f32 {
    let unknown = m.classes().iter().position(|c| *c == ErrorClass::Unknown);
    let mut best = (f32::MAX, 0.5);
    for step in 0..=14 {
        let t = 0.20 + 0.05 * step as f32;
        let cost: f32 = val
            .iter()
            .map(|(p, k)| {
                let top = argmax(p);
                match (p[top] >= t, top == *k, Some(*k) == unknown) {
                    (true, true, _) => 0.0,
                    (true, false, _) => 1.0,
                    (false, _, true) => 0.0,
                    (false, _, false) => 0.8,
                }
            })
            .sum();
        if cost < best.0 - 1e-6 {
            best = (cost, (t * 100.0).round() / 100.0);
        }
    }
    best.1
}

/// The security guard's threshold that costs least on the validation split: a security
/// example answered as something else costs 3, another one turned into `security` costs 1.
/// Candidates 0.15 to 0.40 by 0.05; a tie goes to the lower one (the safer side).
fn choose_security(m: &Model, val: &[(Vec<f32>, usize)]) -> f32 {
    let Some(sec) = m.classes().iter().position(|c| *c == ErrorClass::Security) else {
        return 1.0;
    };
    let mut best = (f32::MAX, 0.15);
    for step in 0..=5 {
        let t = 0.15 + 0.05 * step as f32;
        let cost: f32 = val
            .iter()
            .map(|(p, k)| match (*k == sec, p[sec] >= t) {
                (true, false) => 3.0,
                (false, true) => 1.0,
                _ => 0.0,
            })
            .sum();
        if cost < best.0 - 1e-6 {
            best = (cost, (t * 100.0).round() / 100.0);
        }
    }
    best.1
}

/// SGD on the class-weighted softmax loss with L2 (kept exact on sparse updates by scaling the
/// weight vector); the learning rate decays as `lr / (1 + lr · l2 · t)`.
fn fit(data: &[&(Features, usize, bool)], classes: &[ErrorClass], opts: &TrainOptions) -> Model {
    let c = classes.len();
    let mut v = vec![0f32; opts.buckets as usize * c];
    let mut bias = vec![0f32; c];
    let mut scale = 1f32;
    let mut counts = vec![0usize; c];
    data.iter().for_each(|d| counts[d.1] += 1);
    // Rare classes count more (square root of the inverse frequency), so that a handful of
    // security examples still shape the model.
    let weight: Vec<f32> = counts
        .iter()
        .map(|n| ((data.len() as f32) / (c as f32 * (*n).max(1) as f32)).sqrt())
        .collect();
    let mut rng = opts.seed;
    let mut order: Vec<usize> = (0..data.len()).collect();
    let mut z = vec![0f32; c];
    let mut t = 0f32;
    for _ in 0..opts.epochs {
        for i in (1..order.len()).rev() {
            let j = (splitmix(&mut rng) % (i as u64 + 1)) as usize;
            order.swap(i, j);
        }
        for &i in &order {
            let (feats, y, _) = data[i];
            let lr = opts.learning_rate / (1.0 + opts.learning_rate * opts.l2 * t);
            t += 1.0;
            z.copy_from_slice(&bias);
            for &(b, x) in &feats.entries {
                let row = &v[b as usize * c..(b as usize + 1) * c];
                z.iter_mut().zip(row).for_each(|(z, w)| *z += scale * w * x);
            }
            softmax(&mut z);
            z[*y] -= 1.0;
            z.iter_mut().for_each(|g| *g *= weight[*y]);
            scale *= 1.0 - lr * opts.l2;
            for &(b, x) in &feats.entries {
                let row = &mut v[b as usize * c..(b as usize + 1) * c];
                row.iter_mut()
                    .zip(&z)
                    .for_each(|(w, g)| *w -= lr * g * x / scale);
            }
            bias.iter_mut().zip(&z).for_each(|(b, g)| *b -= lr * g);
            if scale < 1e-3 {
                v.iter_mut().for_each(|w| *w *= scale);
                scale = 1.0;
            }
        }
    }
    v.iter_mut().for_each(|w| *w *= scale);
    Model::from_parts(classes.to_vec(), opts.buckets, v, bias)
}

/// SplitMix64: a fixed, seedable sequence for the example order.
fn splitmix(state: &mut u64) -> u64 {
    *state = state.wrapping_add(0x9e37_79b9_7f4a_7c15);
    let mut z = *state;
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}
