//! Unit tests of the model: its decision, its file format, deterministic training and the
//! security guard over retryable rules.

use super::{
    train::{Example, TrainOptions, load_examples, train},
    *,
};

fn example(class: ErrorClass, message: &str) -> Example {
    Example::new(class, message)
}

/// A small corpus where `sandbox` and `escape` mean security.
fn corpus() -> Vec<Example> {
    let mut out = Vec::new();
    for i in 0..12 {
        out.push(example(
            ErrorClass::Security,
            &format!("sandbox escape attempt {i} blocked in job"),
        ));
        out.push(example(
            ErrorClass::Transient,
            &format!("upstream answered slowly, request {i} took too long"),
        ));
        out.push(example(
            ErrorClass::Validation,
            &format!("field {i} of the input is malformed json"),
        ));
    }
    out
}

fn small() -> TrainOptions {
    TrainOptions {
        buckets: 1 << 12,
        epochs: 10,
        ..TrainOptions::default()
    }
}

#[test]
fn decide_applies_the_guard_then_the_threshold() {
    let classes = vec![
        ErrorClass::Transient,
        ErrorClass::Security,
        ErrorClass::Unknown,
    ];
    let mut m = Model::from_parts(classes, 256, vec![0.0; 256 * 3], vec![0.0; 3]);
    m.unknown_below = 0.6;
    m.security_above = 0.25;
    let p = m.decide(&[0.7, 0.2, 0.1]);
    assert_eq!((p.class, p.why), (ErrorClass::Transient, Why::Confident));
    let p = m.decide(&[0.5, 0.1, 0.4]);
    assert_eq!(
        (p.class, p.best, p.why),
        (ErrorClass::Unknown, ErrorClass::Transient, Why::Unsure)
    );
    let p = m.decide(&[0.7, 0.3, 0.0]);
    assert_eq!((p.class, p.why), (ErrorClass::Security, Why::SecurityGuard));
    assert!((p.confidence - 0.3).abs() < 1e-6);
}

#[test]
fn training_is_deterministic_and_the_file_round_trips() {
    let (a, report) = train(&corpus(), &["c.yaml".into()], &small()).unwrap();
    let (b, _) = train(&corpus(), &["c.yaml".into()], &small()).unwrap();
    assert_eq!(a.to_json(), b.to_json(), "same examples, same model");
    assert_eq!(report.training, (36, 36));
    let back = Model::from_json("test", &a.to_json()).unwrap();
    assert_eq!(back.training.files, ["c.yaml"]);
    let f = Failure {
        message: "sandbox escape attempt seen".into(),
        ..Failure::default()
    };
    let (pa, pb) = (
        a.probabilities(&a.features(&f, false)),
        back.probabilities(&back.features(&f, false)),
    );
    assert!(
        pa.iter().zip(&pb).all(|(x, y)| (x - y).abs() < 1e-6),
        "{pa:?} {pb:?}"
    );
    assert_eq!(
        back.predict(&f).map(|p| p.class),
        Some(ErrorClass::Security)
    );
}

#[test]
fn a_security_answer_overrides_a_retryable_rule() {
    let (mut m, _) = train(&corpus(), &[], &small()).unwrap();
    m.security_above = 0.5;
    let c = Classifier::defaults().with_model(Some(std::sync::Arc::new(m)));
    // The `timeout` rule matches; the words say it was an escape from the sandbox.
    let f = Failure {
        message: "escape from the sandbox blocked, job timed out".into(),
        ..Failure::default()
    };
    let v = c.classify(&f);
    assert_eq!(
        (v.class, v.rule.as_str(), v.code.as_str()),
        (ErrorClass::Security, "security_guard", "model_security")
    );
    let plain = c.classify(&Failure {
        message: "request timed out".into(),
        ..Failure::default()
    });
    assert_eq!(plain.matched, "rule:timeout");
}

#[test]
fn bad_model_files_and_examples_are_named() {
    let (m, _) = train(&corpus(), &[], &small()).unwrap();
    let good: serde_json::Value = serde_json::from_str(&m.to_json()).unwrap();
    let broken = |key: &str, value: serde_json::Value| {
        let mut v = good.clone();
        v[key] = value;
        Model::from_json("m.json", &v.to_string()).unwrap_err()
    };
    assert!(broken("buckets", 1000.into()).contains("buckets 1000 is not a power of two"));
    assert!(broken("weights", "zz".into()).contains("weights are not hex"));
    assert!(broken("weights", "00ffffff0102".into()).contains("rows of 4 + 3"));
    assert!(broken("weights", "00100000010203".into()).contains("beyond 4096"));
    assert!(broken("format", "other".into()).contains("expected `secflow-classifier`"));
    assert!(broken("bias", serde_json::json!([0.0])).contains("one bias each"));
    assert!(
        Model::from_json("m.json", "{}")
            .unwrap_err()
            .starts_with("m.json: not a classifier model file")
    );
    assert!(
        Model::load("/nonexistent/m.json")
            .unwrap_err()
            .contains("cannot read model file")
    );

    let path = std::env::temp_dir().join(format!("secflow-examples-{}.yaml", std::process::id()));
    std::fs::write(
        &path,
        "- {class: transient, message: ok}\n- {class: fatal, message: x}\n",
    )
    .unwrap();
    let err = load_examples(path.to_str().unwrap()).unwrap_err();
    assert!(
        err.contains("not a list of labelled examples") && err.contains("fatal"),
        "{err}"
    );
    std::fs::write(
        &path,
        "- {class: transient, message: ok}\n- {class: transient, message: ''}\n",
    )
    .unwrap();
    let err = load_examples(path.to_str().unwrap()).unwrap_err();
    assert!(err.contains("example 2 has neither a message"), "{err}");
    let _ = std::fs::remove_file(path);
    let one_class = vec![
        example(ErrorClass::Transient, "a"),
        example(ErrorClass::Transient, "b"),
    ];
    assert!(
        train(&one_class, &[], &small())
            .unwrap_err()
            .contains("at least 2")
    );
}

#[test]
fn the_built_in_model_loads_with_every_class() {
    let m = Model::embedded().expect("worker/rules/model.json parses");
    assert_eq!(m.classes(), ErrorClass::ALL);
    assert!((0.2..=0.9).contains(&m.unknown_below) && (0.15..=0.4).contains(&m.security_above));
    assert!(m.training.examples >= 150);
}

#[test]
fn scoring_while_extracting_gives_the_feature_lists_probabilities() {
    let m = Model::embedded().expect("worker/rules/model.json parses");
    let messages = [
        "curl: (7) Failed to connect to 10.0.0.12:443 after 30001 ms: Connection refused",
        "HTTPError 429 TooManyRequests: rate limit exceeded, retry after 30s",
        "sandbox escape attempt: write to /etc/passwd blocked by seccomp",
        "Fehler: Verbindung zurückgesetzt — „peer“ closed ÜBER TLS",
        "x",
    ];
    for (i, message) in messages.iter().enumerate() {
        let f = Failure {
            message: message.to_string(),
            exit_code: Some(i as i32),
            http_status: (i % 2 == 0).then_some(503),
            ..Failure::default()
        };
        let listed = m.decide(&m.probabilities(&m.features(&f, false)));
        let scored = m.predict(&f).expect("the message has words");
        assert_eq!(
            (scored.class, scored.best),
            (listed.class, listed.best),
            "{message}"
        );
        assert!(
            (scored.confidence - listed.confidence).abs() < 1e-5,
            "{message}"
        );
        assert!(
            (scored.security - listed.security).abs() < 1e-5,
            "{message}"
        );
    }
    assert!(
        m.predict(&Failure::default()).is_none(),
        "no words, no verdict"
    );
}

#[test]
fn a_confident_model_overrules_a_built_in_rule_but_not_a_security_one_nor_an_operators() {
    let (m, _) = train(&corpus(), &[], &small()).unwrap();
    let m = std::sync::Arc::new(m);
    let c = Classifier::defaults().with_model(Some(m.clone()));
    // The `timeout` rule matches ("timed out"); the model reads malformed input.
    let f = Failure {
        message: "field 7 of the input is malformed json, the parser timed out".into(),
        ..Failure::default()
    };
    let p = m.predict(&f).unwrap();
    assert_eq!(p.class, ErrorClass::Validation);
    assert!(p.confidence >= MODEL_OVERRULES_AT, "{p:?}");
    let v = c.classify(&f);
    assert_eq!(
        (v.class, v.rule.as_str(), v.matched.as_str()),
        (ErrorClass::Validation, "model_over_rule", "model")
    );
    // A security rule stands whatever the model thinks.
    let sec = c.classify(&Failure {
        message: "field 7 of the input is malformed json: host key verification failed".into(),
        ..Failure::default()
    });
    assert_eq!(sec.matched, "rule:host_key_changed");
    // So does an operator's rule.
    let path = std::env::temp_dir().join(format!("sf-rules-{}.yaml", std::process::id()));
    std::fs::write(
        &path,
        "version: 1\nrules:\n  - name: mine\n    class: transient\n    message: \"parser timed out\"\n",
    )
    .unwrap();
    let ours = Classifier::new(Some(path.to_str().unwrap()), None)
        .unwrap()
        .with_model(Some(m));
    let _ = std::fs::remove_file(&path);
    assert_eq!(ours.classify(&f).matched, "rule:mine");
}

#[test]
fn a_firm_rule_stands_against_a_confident_model() {
    let (m, _) = train(&corpus(), &[], &small()).unwrap();
    let m = std::sync::Arc::new(m);
    // A built-in rule matching the message, as it is and marked firm.
    let rules = |firm: bool| {
        let text = format!(
            "version: 1\nrules:\n  - name: slow\n    class: transient\n    message: \"parser timed out\"\n    firm: {firm}\n"
        );
        let mut c = Classifier::defaults();
        c.rules = super::RuleSet::new(super::rules::compile("test", &text).unwrap()).unwrap();
        c.with_model(Some(m.clone()))
    };
    let f = Failure {
        message: "field 7 of the input is malformed json, the parser timed out".into(),
        ..Failure::default()
    };
    assert_eq!(rules(false).classify(&f).rule, "model_over_rule");
    let firm = rules(true).classify(&f);
    assert_eq!(
        (firm.class, firm.matched.as_str()),
        (ErrorClass::Transient, "rule:slow")
    );
}
