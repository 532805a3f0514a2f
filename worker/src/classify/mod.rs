//! Classification of untyped failures (a message, an exit code or signal, an HTTP status, an
//! io error kind) into recovery classes, by ordered rules: those of a `--rules` file first,
//! then the built-in ones (`worker/rules/default.yaml`). Pure: no I/O once loaded.

mod rules;

use rules::Rule;
use secflow_common::{ErrorClass, TaskError};
use serde::{Deserialize, Serialize};

/// The built-in rules.
const DEFAULT_RULES: &str = include_str!("../../rules/default.yaml");

/// What is known about a failure.
#[derive(Clone, Debug, Default, Deserialize)]
pub struct Failure {
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
    /// `std::io::ErrorKind` name.
    #[serde(default)]
    pub io_kind: Option<String>,
}

/// The verdict: class, code and the rule that matched.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct Classification {
    /// Recovery class.
    pub class: ErrorClass,
    /// Code for headers and metrics.
    pub code: String,
    /// Name of the matched rule (`unclassified` when none did).
    pub rule: String,
}

/// Ordered, compiled rules.
#[derive(Debug)]
pub struct Classifier {
    rules: Vec<Rule>,
}

impl Classifier {
    /// The built-in rules only.
    pub fn defaults() -> Self {
        // The built-in file is part of the binary and covered by tests.
        let rules = rules::compile("built-in rules", DEFAULT_RULES).unwrap_or_default();
        Self { rules }
    }

    /// The rules of `path` (tried first), then the built-in ones.
    pub fn with_file(path: &str) -> Result<Self, String> {
        let text = std::fs::read_to_string(path)
            .map_err(|e| format!("cannot read rules file {path}: {e}"))?;
        let mut rules = rules::compile(path, &text)?;
        rules.extend(Self::defaults().rules);
        Ok(Self { rules })
    }

    /// Classifies a failure by the first rule whose every condition holds.
    pub fn classify(&self, f: &Failure) -> Classification {
        let hit = self.rules.iter().find(|r| {
            r.message.as_ref().is_none_or(|re| re.is_match(&f.message))
                && (r.exit_codes.is_empty()
                    || f.exit_code.is_some_and(|c| r.exit_codes.contains(&c)))
                && (r.signals.is_empty() || f.signal.is_some_and(|s| r.signals.contains(&s)))
                && (r.http_status.is_empty()
                    || f.http_status
                        .is_some_and(|s| r.http_status.iter().any(|(a, b)| (*a..=*b).contains(&s))))
                && (r.io_kinds.is_empty()
                    || f.io_kind.as_ref().is_some_and(|k| r.io_kinds.contains(k)))
        });
        match hit {
            Some(r) => Classification {
                class: r.class,
                code: r.code.clone(),
                rule: r.name.clone(),
            },
            None => Classification {
                class: ErrorClass::Unknown,
                code: "unclassified".into(),
                rule: "unclassified".into(),
            },
        }
    }

    /// A [`TaskError`] for `f`, with `message` as its text.
    pub fn error(&self, f: &Failure, message: String) -> TaskError {
        let c = self.classify(f);
        TaskError::new(c.class, c.code, message)
    }
}

/// Classifies one JSON line (`{"message", "exit_code", "http_status", ...}`) into a JSON
/// result with a `class` field, or an `error` field naming what is wrong with the line.
pub fn classify_json_line(classifier: &Classifier, line: &str) -> serde_json::Value {
    match serde_json::from_str::<Failure>(line) {
        Ok(f) => serde_json::json!(classifier.classify(&f)),
        Err(e) => {
            serde_json::json!({ "error": format!("not a failure object ({e}): expected {{\"message\": ..., \"exit_code\"?: N, \"http_status\"?: N}}") })
        }
    }
}

/// The name of an io error kind as rules spell it (`ConnectionRefused`).
pub fn io_kind_name(kind: std::io::ErrorKind) -> String {
    format!("{kind:?}")
}

#[cfg(test)]
mod tests {
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
        assert_eq!(
            c.classify(&text("curl: (6) Could not resolve host: example.invalid"))
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
        let none = c.classify(&text("all good"));
        assert_eq!(
            (none.class, none.rule.as_str()),
            (ErrorClass::Unknown, "unclassified")
        );
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
        std::fs::write(&dir, "version: 1\nrules:\n  - name: broken\n    class: transient\n    message: '(unclosed'\n").unwrap();
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
}
