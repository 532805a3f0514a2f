//! K-fold cross-validation of the whole classifier (rules, then a model trained on the other
//! folds): stratified folds (each class spread evenly, in an order fixed by a hash of the
//! message and a seed), so that the figures are the same on every run and every machine.

use super::{
    Classification, Classifier,
    features::stable_hash,
    train::{self, Example, TrainOptions},
};
use secflow_common::ErrorClass;
use std::sync::Arc;

/// The fold (0..k) of each example: per class, examples are ordered by a hash of their
/// message and `seed`, then dealt round-robin, continuing where the previous class stopped so
/// that folds stay within one example of each other in size.
pub fn stratified_folds(examples: &[Example], k: usize, seed: u64) -> Vec<usize> {
    let mut fold = vec![0; examples.len()];
    let mut next = 0;
    for class in ErrorClass::ALL {
        let mut members: Vec<usize> = (0..examples.len())
            .filter(|i| examples[*i].class == class)
            .collect();
        let key = |i: &usize| {
            let e = &examples[*i];
            (stable_hash(format!("{seed}|{}", e.message).as_bytes()), *i)
        };
        members.sort_by_key(key);
        for i in members {
            fold[i] = next % k;
            next += 1;
        }
    }
    fold
}

/// Trains a model on `k - 1` folds with `opts`, classifies the remaining fold with `rules`
/// (a fresh copy, the trained model behind it), for each of the `k` folds: every distinct
/// example once with the classification it got. `rules` builds the rules-only classifier.
pub fn cross_validate(
    examples: &[Example],
    k: usize,
    opts: &TrainOptions,
    rules: &dyn Fn() -> Result<Classifier, String>,
) -> Result<Vec<(Example, Classification)>, String> {
    if k < 2 {
        return Err(format!("--cv {k}: cross-validation needs at least 2 folds"));
    }
    // A repeat in two folds would be scored on its own training copy.
    let examples: Vec<Example> = train::distinct(examples).into_iter().cloned().collect();
    if examples.len() < k {
        return Err(format!(
            "{} distinct examples are too few for {k} folds",
            examples.len()
        ));
    }
    let fold = stratified_folds(&examples, k, opts.seed);
    let mut out = Vec::with_capacity(examples.len());
    for f in 0..k {
        let fit: Vec<Example> = examples
            .iter()
            .zip(&fold)
            .filter(|(_, g)| **g != f)
            .map(|(e, _)| e.clone())
            .collect();
        let (model, _) = train::train(&fit, &[], opts)?;
        let classifier = rules()?.with_model(Some(Arc::new(model)));
        for (e, _) in examples.iter().zip(&fold).filter(|(_, g)| **g == f) {
            out.push((e.clone(), classifier.classify(&e.failure())));
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ex(class: ErrorClass, message: &str) -> Example {
        Example::new(class, message)
    }

    #[test]
    fn folds_are_stratified_balanced_and_fixed() {
        let mut examples = Vec::new();
        for i in 0..10 {
            examples.push(ex(ErrorClass::Transient, &format!("connection reset {i}")));
        }
        for i in 0..5 {
            examples.push(ex(ErrorClass::Security, &format!("avc: denied {i}")));
        }
        let folds = stratified_folds(&examples, 5, 7);
        assert_eq!(folds, stratified_folds(&examples, 5, 7));
        for f in 0..5 {
            let members: Vec<&Example> = examples
                .iter()
                .zip(&folds)
                .filter(|(_, g)| **g == f)
                .map(|(e, _)| e)
                .collect();
            assert_eq!(members.len(), 3);
            let sec = members
                .iter()
                .filter(|e| e.class == ErrorClass::Security)
                .count();
            assert_eq!(sec, 1);
        }
        let twice = [examples[0].clone(), examples[0].clone()];
        assert_eq!(train::distinct(&twice).len(), 1);
        assert!(
            cross_validate(&examples, 1, &TrainOptions::default(), &|| Ok(
                Classifier::defaults()
            ))
            .is_err()
        );
    }
}
