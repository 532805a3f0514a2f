//! Unit tests of the rules and the classifier's order.

use super::*;

fn text(m: &str) -> Failure {
    Failure {
        message: m.into(),
        ..Failure::default()
    }
}

#[test]
fn built_in_rules_compile() {
    assert!(
        rules::compile("built-in rules", DEFAULT_RULES)
            .unwrap()
            .len()
            > 30
    );
}

#[test]
fn text_status_exit_and_io_rules() {
    let c = Classifier::defaults();
    // A name that could exist: the resolver failed (a `.invalid` name, which never resolves,
    // the model takes for the task's bad input).
    assert_eq!(
        c.classify(&text("curl: (6) Could not resolve host: api.example.com"))
            .code,
        "dns"
    );
    assert_eq!(
        c.classify(&text("write /tmp/x: No space left on device"))
            .class,
        ErrorClass::Resource
    );
    assert_eq!(
        c.classify(&Failure {
            http_status: Some(503),
            ..Failure::default()
        })
        .class,
        ErrorClass::Transient
    );
    assert_eq!(
        c.classify(&Failure {
            http_status: Some(404),
            ..Failure::default()
        })
        .class,
        ErrorClass::Permanent
    );
    assert_eq!(
        c.classify(&Failure {
            http_status: Some(500),
            ..Failure::default()
        })
        .class,
        ErrorClass::Unknown
    );
    assert_eq!(
        c.classify(&Failure {
            exit_code: Some(127),
            ..Failure::default()
        })
        .class,
        ErrorClass::Validation
    );
    assert_eq!(
        c.classify(&Failure {
            signal: Some(9),
            ..Failure::default()
        })
        .class,
        ErrorClass::Resource
    );
    let io = Failure {
        io_kind: Some(io_kind_name(std::io::ErrorKind::ConnectionRefused)),
        ..Failure::default()
    };
    assert_eq!(c.classify(&io).class, ErrorClass::Transient);
    let none = c.classify(&Failure {
        exit_code: Some(1),
        ..Failure::default()
    });
    assert_eq!(
        (none.class, none.rule.as_str(), none.matched.as_str()),
        (ErrorClass::Unknown, "unclassified", "none")
    );
    let rules_only = Classifier::defaults().with_model(None);
    assert_eq!(rules_only.classify(&text("all good")).rule, "unclassified");
}

#[test]
fn rules_first_then_the_model() {
    let c = Classifier::defaults();
    let hit = c.classify(&text("dial tcp 10.0.0.1:443: connect: connection refused"));
    assert_eq!(
        (hit.matched.as_str(), hit.confidence, hit.code.as_str()),
        ("rule:connection_refused", 1.0, "connection_refused")
    );
    let f = text("jsonschema: 'ports' is a required property; schema validation failed");
    let by_model = c.classify(&f);
    assert_eq!(
        (
            by_model.class,
            by_model.matched.as_str(),
            by_model.code.as_str()
        ),
        (ErrorClass::Validation, "model", "model_validation")
    );
    assert!((0.0..=1.0).contains(&by_model.confidence));
    let why = c.explain(&f, &by_model, 5);
    assert_eq!(why.features.len(), 5);
    assert!(
        why.features
            .windows(2)
            .all(|w| w[0].contribution >= w[1].contribution)
    );
    assert_eq!(why.model_best, Some(ErrorClass::Validation));
}

#[test]
fn user_rules_come_first_and_errors_name_the_rule() {
    let dir = std::env::temp_dir().join(format!("secflow-rules-{}.yaml", std::process::id()));
    std::fs::write(&dir, "version: 1\nrules:\n  - name: nuclei_no_templates\n    class: permanent\n    message: 'could not find template'\n").unwrap();
    let c = Classifier::with_file(dir.to_str().unwrap()).unwrap();
    assert_eq!(
        c.classify(&text("[FTL] Could not find template 'cves/x.yaml'"))
            .rule,
        "nuclei_no_templates"
    );
    std::fs::write(
        &dir,
        "version: 1\nrules:\n  - name: broken\n    class: transient\n    message: '(unclosed'\n",
    )
    .unwrap();
    let err = Classifier::with_file(dir.to_str().unwrap()).unwrap_err();
    assert!(
        err.contains("rule 1 (`broken`)") && err.contains("regex"),
        "{err}"
    );
    std::fs::write(
        &dir,
        "version: 1\nrules:\n  - name: nothing\n    class: fatal\n",
    )
    .unwrap();
    assert!(
        Classifier::with_file(dir.to_str().unwrap())
            .unwrap_err()
            .contains("fatal")
    );
    let _ = std::fs::remove_file(dir);
}

#[test]
fn word_boundaries_are_ascii_and_hold_beside_typographic_quotes() {
    use super::rules::ascii_boundaries;
    assert_eq!(
        ascii_boundaries(r"\bEAGAIN\b|a\\b|\Bx\d"),
        r"(?-u:\b)EAGAIN(?-u:\b)|a\\b|(?-u:\B)x\d"
    );
    // A non-ASCII quote next to the word still ends it, and the rule still matches.
    let c = Classifier::defaults().with_model(None);
    assert_eq!(
        c.classify(&text("write: ‘ENOSPC’ while saving")).rule,
        "disk_full"
    );
}
