//! The learned fallback: a multinomial logistic regression over hashed features (see
//! [`super::features`]), its decision (confidence threshold for `unknown`, security guard),
//! its explanations, and its file format (`worker/rules/model.json`).
//!
//! Why logistic regression: it yields class probabilities directly (softmax), which the
//! classifier needs twice, for a confidence below which it answers `unknown` and for the
//! security guard (a small probability of `security` is enough to refuse a retryable answer);
//! an averaged perceptron or a linear SVM would give margins that need a separate calibration.
//! Training it by SGD is deterministic, takes seconds on thousands of examples, and inference
//! is one sparse dot product per class.

use super::{
    Failure,
    features::{self, Features},
    round,
};
use secflow_common::ErrorClass;
use serde::{Deserialize, Serialize};
use std::sync::{Arc, OnceLock};

/// The model shipped with the worker.
const EMBEDDED: &str = include_str!("../../rules/model.json");
/// The `format` field of a model file.
const FORMAT: &str = "secflow-classifier";

/// What a model file says about its training (printed by the training command).
#[derive(Clone, Debug, Default, Deserialize, Serialize)]
pub struct TrainingInfo {
    /// The example files it was trained on.
    pub files: Vec<String>,
    /// Distinct examples.
    pub examples: usize,
    /// Share of the examples the final model gets right (its best class), 0–1.
    pub training_accuracy: f64,
    /// Examples held apart for validation (by a hash of the message).
    pub validation_examples: usize,
    /// Share of them that a model trained on the rest gets right, 0–1.
    pub validation_accuracy: f64,
    /// Passes over the data.
    pub epochs: u32,
}

/// A model file: weights quantised to `i8` (× `scale`), only the buckets with a non-zero
/// weight, each as 4 bytes of bucket index (big-endian) and one byte per class, hex-encoded.
#[derive(Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
struct ModelFile {
    format: String,
    version: u32,
    buckets: u32,
    classes: Vec<ErrorClass>,
    unknown_below: f32,
    security_above: f32,
    scale: f32,
    bias: Vec<f32>,
    weights: String,
    training: TrainingInfo,
}

/// Why the model answered what it did.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Why {
    /// Its best class was likely enough.
    Confident,
    /// Its best class was below the `unknown` threshold.
    Unsure,
    /// `security` was likely enough to override everything else.
    SecurityGuard,
}

/// A model's verdict on one failure.
#[derive(Clone, Debug)]
pub struct Prediction {
    /// The answer (after the threshold and the guard).
    pub class: ErrorClass,
    /// The probability of the answer; for `unknown` by threshold, that of the best guess.
    pub confidence: f32,
    /// The most likely class.
    pub best: ErrorClass,
    /// The probability of `security`.
    pub security: f32,
    /// How the answer was reached.
    pub why: Why,
}

/// One feature's part in an answer.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct Contribution {
    /// Readable feature (`word:reset`, `chars:eset`, `field:exit=137`, `bias`).
    pub feature: String,
    /// Its weight for the class.
    pub weight: f64,
    /// Weight × the feature's value: what it added to the class's score.
    pub contribution: f64,
}

/// A trained linear model.
#[derive(Clone, Debug)]
pub struct Model {
    classes: Vec<ErrorClass>,
    mask: u32,
    /// `buckets × classes`, bucket-major.
    weights: Vec<f32>,
    bias: Vec<f32>,
    /// A loaded file's `i8` weights, [`ROW`] a bucket, and their scale: what inference reads.
    compact: Vec<i8>,
    compact_scale: f32,
    /// Below this probability of its best class, the model answers `unknown`.
    pub unknown_below: f32,
    /// At or above this probability of `security`, the model answers `security`.
    pub security_above: f32,
    /// How it was trained.
    pub training: TrainingInfo,
}

/// Bytes per bucket in the compact inference table (models of up to this many classes).
const ROW: usize = 8;

impl Model {
    /// A model from its parts (the trainer's output); `buckets` is a power of two.
    pub(super) fn from_parts(
        classes: Vec<ErrorClass>,
        buckets: u32,
        weights: Vec<f32>,
        bias: Vec<f32>,
    ) -> Self {
        Model {
            classes,
            mask: buckets - 1,
            weights,
            bias,
            compact: Vec::new(),
            compact_scale: 0.0,
            unknown_below: 0.5,
            security_above: 0.2,
            training: TrainingInfo::default(),
        }
    }

    /// The model built into the worker (`worker/rules/model.json`), parsed once.
    pub fn embedded() -> Option<Arc<Model>> {
        static MODEL: OnceLock<Option<Arc<Model>>> = OnceLock::new();
        MODEL
            .get_or_init(|| {
                Model::from_json("built-in model", EMBEDDED)
                    .ok()
                    .map(Arc::new)
            })
            .clone()
    }

    /// Reads a model file; errors name the file and what is wrong.
    pub fn load(path: &str) -> Result<Model, String> {
        let text = std::fs::read_to_string(path)
            .map_err(|e| format!("cannot read model file {path}: {e}"))?;
        Model::from_json(path, &text)
    }

    /// Parses a model file's text; `source` names it in errors.
    pub fn from_json(source: &str, text: &str) -> Result<Model, String> {
        let file: ModelFile = serde_json::from_str(text)
            .map_err(|e| format!("{source}: not a classifier model file: {e}"))?;
        if file.format != FORMAT || file.version != 1 {
            return Err(format!(
                "{source}: format `{}` version {} (expected `{FORMAT}` version 1)",
                file.format, file.version
            ));
        }
        if !file.buckets.is_power_of_two() || !(1 << 8..=1 << 22).contains(&file.buckets) {
            return Err(format!(
                "{source}: buckets {} is not a power of two between 256 and 4194304",
                file.buckets
            ));
        }
        let c = file.classes.len();
        if c < 2 || file.bias.len() != c {
            return Err(format!(
                "{source}: {c} classes and {} biases (need 2 or more, one bias each)",
                file.bias.len()
            ));
        }
        let probabilities = [file.unknown_below, file.security_above];
        if !probabilities.iter().all(|p| (0.0..=1.0).contains(p)) || !file.scale.is_finite() {
            return Err(format!(
                "{source}: unknown_below and security_above must be between 0 and 1, scale finite"
            ));
        }
        let bytes = hex::decode(&file.weights)
            .map_err(|e| format!("{source}: weights are not hex: {e}"))?;
        if bytes.len() % (4 + c) != 0 {
            return Err(format!(
                "{source}: weights hold {} bytes, not rows of 4 + {c}",
                bytes.len()
            ));
        }
        // Inference (and explanations) read the compact table alone: the dense `f32` copy is
        // kept only for models of more classes than a compact row holds.
        let mut compact = if c <= ROW {
            vec![0i8; file.buckets as usize * ROW]
        } else {
            Vec::new()
        };
        let mut weights = if compact.is_empty() {
            vec![0f32; file.buckets as usize * c]
        } else {
            Vec::new()
        };
        for (n, row) in bytes.chunks_exact(4 + c).enumerate() {
            let bucket = u32::from_be_bytes([row[0], row[1], row[2], row[3]]);
            if bucket >= file.buckets {
                return Err(format!(
                    "{source}: weights row {n} names bucket {bucket}, beyond {}",
                    file.buckets
                ));
            }
            for (k, q) in row[4..].iter().enumerate() {
                if let Some(slot) = weights.get_mut(bucket as usize * c + k) {
                    *slot = f32::from(*q as i8) * file.scale;
                }
                if let Some(slot) = compact.get_mut(bucket as usize * ROW + k) {
                    *slot = *q as i8;
                }
            }
        }
        let mut model = Model::from_parts(file.classes, file.buckets, weights, file.bias);
        model.compact = compact;
        model.compact_scale = file.scale;
        model.unknown_below = file.unknown_below;
        model.security_above = file.security_above;
        model.training = file.training;
        Ok(model)
    }

    /// The model file's text. Weights are quantised to `i8`: [`Model::quantised`] is what a
    /// reload gives.
    pub fn to_json(&self) -> String {
        let c = self.classes.len();
        let scale = self.quant_scale();
        let mut rows = Vec::new();
        for (bucket, w) in self.dense().chunks_exact(c).enumerate() {
            let q: Vec<i8> = w.iter().map(|x| quantise(*x, scale)).collect();
            if q.iter().any(|x| *x != 0) {
                rows.extend_from_slice(&(bucket as u32).to_be_bytes());
                rows.extend(q.iter().map(|x| *x as u8));
            }
        }
        let file = ModelFile {
            format: FORMAT.into(),
            version: 1,
            buckets: self.mask + 1,
            classes: self.classes.clone(),
            unknown_below: self.unknown_below,
            security_above: self.security_above,
            scale,
            bias: self.bias.clone(),
            weights: hex::encode(rows),
            training: self.training.clone(),
        };
        // A struct of plain fields always serialises.
        serde_json::to_string_pretty(&file).unwrap_or_default() + "\n"
    }

    /// The same model with its weights rounded as its file stores them.
    pub fn quantised(&self) -> Model {
        let scale = self.quant_scale();
        let mut m = self.clone();
        m.weights = self.dense().into_owned();
        m.weights
            .iter_mut()
            .for_each(|w| *w = f32::from(quantise(*w, scale)) * scale);
        m
    }

    fn quant_scale(&self) -> f32 {
        let max = self.dense().iter().fold(0f32, |m, w| m.max(w.abs()));
        if max > 0.0 { max / 127.0 } else { 1.0 }
    }

    /// The weight of `bucket` for the `k`-th class, from whichever table the model holds.
    fn weight(&self, bucket: usize, k: usize) -> f32 {
        if self.compact.is_empty() {
            self.weights
                .get(bucket * self.classes.len() + k)
                .copied()
                .unwrap_or(0.0)
        } else {
            self.compact
                .get(bucket * ROW + k)
                .map_or(0.0, |q| f32::from(*q) * self.compact_scale)
        }
    }

    /// Every weight, `buckets × classes`, bucket-major (a loaded model keeps only its compact
    /// table: the dense one is rebuilt from it).
    fn dense(&self) -> std::borrow::Cow<'_, [f32]> {
        if !self.weights.is_empty() || self.compact.is_empty() {
            return std::borrow::Cow::Borrowed(&self.weights);
        }
        let c = self.classes.len();
        let buckets = self.mask as usize + 1;
        let mut dense = vec![0f32; buckets * c];
        for (bucket, row) in dense.chunks_exact_mut(c).enumerate() {
            for (k, w) in row.iter_mut().enumerate() {
                *w = self.weight(bucket, k);
            }
        }
        std::borrow::Cow::Owned(dense)
    }

    /// The classes it knows, in its order.
    pub fn classes(&self) -> &[ErrorClass] {
        &self.classes
    }

    /// Class probabilities (in [`Model::classes`] order) for extracted features.
    pub fn probabilities(&self, feats: &Features) -> Vec<f32> {
        let c = self.classes.len();
        let mut z = self.bias.clone();
        if self.compact.is_empty() {
            for &(bucket, value) in &feats.entries {
                let row = &self.weights[bucket as usize * c..(bucket as usize + 1) * c];
                z.iter_mut().zip(row).for_each(|(z, w)| *z += w * value);
            }
        } else {
            // The quantised weights, scaled once at the end: 8 bytes a bucket stay in cache.
            let mut acc = [0f32; ROW];
            for &(bucket, value) in &feats.entries {
                let row = self
                    .compact
                    .get(bucket as usize * ROW..)
                    .unwrap_or_default();
                acc.iter_mut()
                    .zip(row)
                    .for_each(|(a, q)| *a += f32::from(*q) * value);
            }
            z.iter_mut()
                .zip(acc)
                .for_each(|(z, a)| *z += a * self.compact_scale);
        }
        softmax(&mut z);
        z
    }

    /// Features of `f` as this model hashes them.
    pub fn features(&self, f: &Failure, named: bool) -> Features {
        features::extract(f, self.mask, named)
    }

    /// The verdict on `f`, or `None` when its message holds no word to judge.
    pub fn predict(&self, f: &Failure) -> Option<Prediction> {
        if self.compact.is_empty() {
            let feats = self.features(f, false);
            return feats
                .has_text
                .then(|| self.decide(&self.probabilities(&feats)));
        }
        // A loaded model scores as it extracts: per group, the sum of its features' quantised
        // weights (exact integers), scaled once the group's size is known. No feature list.
        let mut scorer = Scorer {
            table: &self.compact,
            counts: [0; 4],
            sums: [[0; ROW]; 4],
        };
        if !features::walk(f, self.mask, &mut scorer) {
            return None;
        }
        let mut z = self.bias.clone();
        for (g, (n, sums)) in scorer.counts.iter().zip(&scorer.sums).enumerate() {
            if *n > 0 {
                let scale = features::group_scale(g, *n as usize) * self.compact_scale;
                z.iter_mut()
                    .zip(sums)
                    .for_each(|(z, s)| *z += *s as f32 * scale);
            }
        }
        softmax(&mut z);
        Some(self.decide(&z))
    }

    /// The answer for class probabilities: `security` when its probability reaches
    /// `security_above` (the guard, whether or not it is the best class), else the best class
    /// when it reaches `unknown_below`, else `unknown`.
    pub fn decide(&self, p: &[f32]) -> Prediction {
        let (best_k, best_p) = p
            .iter()
            .copied()
            .enumerate()
            .fold((0, f32::MIN), |a, (k, x)| if x > a.1 { (k, x) } else { a });
        let best = self.classes[best_k];
        let security = self.prob_of(p, ErrorClass::Security);
        let (class, confidence, why) = if security >= self.security_above {
            let why = if best == ErrorClass::Security {
                Why::Confident
            } else {
                Why::SecurityGuard
            };
            (ErrorClass::Security, security, why)
        } else if best_p < self.unknown_below {
            (ErrorClass::Unknown, best_p, Why::Unsure)
        } else {
            (best, best_p, Why::Confident)
        };
        Prediction {
            class,
            confidence,
            best,
            security,
            why,
        }
    }

    /// The probability of `class` (0 for a class it does not know).
    pub fn prob_of(&self, p: &[f32], class: ErrorClass) -> f32 {
        self.classes
            .iter()
            .position(|c| *c == class)
            .map_or(0.0, |k| p[k])
    }

    /// The `top` features that pushed `f` most towards `class`, largest first.
    pub fn explain(&self, f: &Failure, class: ErrorClass, top: usize) -> Vec<Contribution> {
        let Some(k) = self.classes.iter().position(|c| *c == class) else {
            return Vec::new();
        };
        let feats = self.features(f, true);
        let mut parts: Vec<(String, f32, f32)> = Vec::new();
        for (&(bucket, value), name) in feats.entries.iter().zip(feats.names) {
            let weight = self.weight(bucket as usize, k);
            match parts.iter_mut().find(|p| p.0 == name) {
                Some(p) => p.2 += weight * value,
                None => parts.push((name, weight, weight * value)),
            }
        }
        parts.push(("bias".into(), self.bias[k], self.bias[k]));
        parts.sort_by(|a, b| b.2.total_cmp(&a.2));
        parts
            .into_iter()
            .take(top)
            .map(|(feature, w, x)| Contribution {
                feature,
                weight: round(w, 4),
                contribution: round(x, 4),
            })
            .collect()
    }
}

/// Running per-group sums of a compact table's rows: inference without a feature list.
struct Scorer<'a> {
    table: &'a [i8],
    counts: [u32; 4],
    sums: [[i32; ROW]; 4],
}

impl features::Sink for Scorer<'_> {
    fn feature(&mut self, g: features::Group, bucket: u32, _name: impl FnOnce() -> String) {
        let g = g as usize;
        self.counts[g] += 1;
        let at = bucket as usize * ROW;
        if let Some(row) = self.table.get(at..at + ROW) {
            self.sums[g]
                .iter_mut()
                .zip(row)
                .for_each(|(s, q)| *s += i32::from(*q));
        }
    }
}

fn quantise(w: f32, scale: f32) -> i8 {
    (w / scale).round().clamp(-127.0, 127.0) as i8
}

/// Softmax in place.
pub(super) fn softmax(z: &mut [f32]) {
    let max = z.iter().copied().fold(f32::MIN, f32::max);
    let mut sum = 0.0;
    for x in z.iter_mut() {
        *x = (*x - max).exp();
        sum += *x;
    }
    z.iter_mut().for_each(|x| *x /= sum);
}
