//! Redaction of secrets in text that leaves a process: logs, DLQ headers, events.
//!
//! Built-in patterns cover credentials in URLs, `Authorization` / `Cookie` headers, bearer
//! tokens, `key=value` pairs whose key names a secret, and well-known token shapes (AWS, GitHub,
//! GitLab, Slack, Stripe, JWT, PEM private keys). Operators add their own patterns; a process
//! installs its redactor once with [`install`] and every exposure point uses [`redact`].

use regex::{Regex, RegexSet};
use std::{borrow::Cow, sync::OnceLock};

/// What a secret is replaced with.
pub const MASK: &str = "[REDACTED]";

/// (pattern, replacement): the replacement keeps the groups that are not secret.
const BUILTIN: &[(&str, &str)] = &[
    // PEM private keys, whole block.
    (
        r"-----BEGIN [A-Z ]*PRIVATE KEY-----[\s\S]*?(?:-----END [A-Z ]*PRIVATE KEY-----|$)",
        MASK,
    ),
    // user:password@ in any URL.
    (
        r"(?i)\b([a-z][a-z0-9+.-]*://)([^/\s:@]+):([^/\s@]+)@",
        "${1}${2}:[REDACTED]@",
    ),
    // Authorization: Bearer xyz / Basic xyz / xyz.
    (
        r#"(?i)\b((?:proxy-)?authorization["']?\s*[:=]\s*["']?)(?:(bearer|basic|token|digest|negotiate)\s+)?[^\s"',;]+"#,
        "${1}${2} [REDACTED]",
    ),
    // Cookie / Set-Cookie header values, to the end of the line.
    (
        r#"(?i)\b((?:set-)?cookie["']?\s*[:=]\s*["']?)[^\r\n"']+"#,
        "${1}[REDACTED]",
    ),
    // Bearer tokens anywhere.
    (r"(?i)\b(bearer\s+)[A-Za-z0-9._~+/=-]{8,}", "${1}[REDACTED]"),
    // key=value / "key": "value" where the key names a secret.
    (
        r#"(?i)\b([a-z0-9_.-]*(?:password|passwd|pwd|secret|token|api[_-]?key|apikey|access[_-]?key|private[_-]?key|credential|session[_-]?id)[a-z0-9_.-]*)(["']?\s*[:=]\s*["']?)([^\s"'&,;}\]]+)"#,
        "${1}${2}[REDACTED]",
    ),
    // Well-known token shapes.
    (r"\b(?:AKIA|ASIA)[0-9A-Z]{16}\b", MASK),
    (r"\bgh[pousr]_[A-Za-z0-9]{30,}\b", MASK),
    (r"\bgithub_pat_[A-Za-z0-9_]{40,}\b", MASK),
    (r"\bglpat-[A-Za-z0-9_-]{20,}\b", MASK),
    (r"\bxox[abposr]-[A-Za-z0-9-]{10,}\b", MASK),
    (r"\b[sr]k_(?:live|test)_[A-Za-z0-9]{16,}\b", MASK),
    (
        r"\beyJ[A-Za-z0-9_-]{8,}\.[A-Za-z0-9_-]{8,}\.[A-Za-z0-9_-]{8,}",
        MASK,
    ),
];

/// A compiled set of redaction patterns.
#[derive(Debug)]
pub struct Redactor {
    any: RegexSet,
    rules: Vec<(Regex, String)>,
}

impl Redactor {
    /// The built-in patterns plus `extra` ones (each match replaced whole).
    pub fn new(extra: &[String]) -> Result<Self, String> {
        let mut sources: Vec<(String, String)> = BUILTIN
            .iter()
            .map(|(p, r)| ((*p).to_string(), (*r).to_string()))
            .collect();
        sources.extend(extra.iter().map(|p| (p.clone(), MASK.to_string())));
        let mut rules = Vec::with_capacity(sources.len());
        for (pattern, replacement) in &sources {
            let re = Regex::new(pattern)
                .map_err(|e| format!("redaction pattern `{pattern}` is not a valid regex: {e}"))?;
            rules.push((re, replacement.clone()));
        }
        let any = RegexSet::new(sources.iter().map(|(p, _)| p))
            .map_err(|e| format!("redaction patterns: {e}"))?;
        Ok(Self { any, rules })
    }

    /// `text` with every secret masked; borrowed when there is none (the common case costs one
    /// scan of the set).
    pub fn redact<'a>(&self, text: &'a str) -> Cow<'a, str> {
        let hits = self.any.matches(text);
        if !hits.matched_any() {
            return Cow::Borrowed(text);
        }
        let mut out = text.to_string();
        for i in hits.iter() {
            let (re, replacement) = &self.rules[i];
            if let Cow::Owned(s) = re.replace_all(&out, replacement.as_str()) {
                out = s;
            }
        }
        Cow::Owned(out)
    }

    /// Masks secrets in every string of a JSON value, in place.
    pub fn redact_json(&self, value: &mut serde_json::Value) {
        match value {
            serde_json::Value::String(s) => {
                if let Cow::Owned(r) = self.redact(s) {
                    *s = r;
                }
            }
            serde_json::Value::Array(items) => items.iter_mut().for_each(|v| self.redact_json(v)),
            serde_json::Value::Object(map) => {
                for (k, v) in map.iter_mut() {
                    if secret_key(k) && v.is_string() {
                        *v = serde_json::Value::String(MASK.into());
                    } else {
                        self.redact_json(v);
                    }
                }
            }
            _ => {}
        }
    }
}

/// Whether an object key names a secret (its value is masked whatever it looks like).
fn secret_key(key: &str) -> bool {
    let k = key.to_ascii_lowercase();
    [
        "password",
        "passwd",
        "secret",
        "token",
        "api_key",
        "apikey",
        "api-key",
        "authorization",
        "cookie",
        "private_key",
        "access_key",
        "credential",
    ]
    .iter()
    .any(|s| k.contains(s))
}

static INSTALLED: OnceLock<Redactor> = OnceLock::new();

/// Installs the process-wide redactor with `extra` patterns (first call wins).
pub fn install(extra: &[String]) -> Result<(), String> {
    let redactor = Redactor::new(extra)?;
    let _ = INSTALLED.set(redactor);
    Ok(())
}

/// The process-wide redactor (built-in patterns if none was installed).
pub fn global() -> &'static Redactor {
    INSTALLED.get_or_init(|| {
        Redactor::new(&[]).unwrap_or_else(|e| unreachable!("built-in patterns compile: {e}"))
    })
}

/// Masks secrets in `text` with the process-wide redactor.
pub fn redact(text: &str) -> Cow<'_, str> {
    global().redact(text)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn r(s: &str) -> String {
        Redactor::new(&[]).unwrap().redact(s).into_owned()
    }

    #[test]
    fn masks_known_secret_shapes() {
        let cases = [
            (
                "GET https://admin:hunter2@api.example.com/x failed",
                "hunter2",
            ),
            ("Authorization: Bearer abcdef123456789", "abcdef123456789"),
            ("authorization=Basic dXNlcjpwYXNz", "dXNlcjpwYXNz"),
            ("Cookie: session=abc123; theme=dark", "abc123"),
            ("curl -H 'X-Api-Key: s3cr3tvalue' ...", "s3cr3tvalue"),
            ("https://h/cb?access_token=tok123&x=1", "tok123"),
            (r#"{"password": "p@ss", "user": "bob"}"#, "p@ss"),
            ("key AKIAIOSFODNN7EXAMPLE leaked", "AKIAIOSFODNN7EXAMPLE"),
            (
                "token ghp_abcdefghijklmnopqrstuvwxyz0123456789",
                "ghp_abcdefghijklmnopqrstuvwxyz0123456789",
            ),
            (
                "jwt eyJhbGciOiJIUzI1NiJ9.eyJzdWIiOiIxMjM0NTY3ODkwIn0.dozjgNryP4J3jVmNHl0w5N_XgL0n3I9PlFUP0THsR8U",
                "dozjgNryP4J3jVmNHl0w5N",
            ),
            (
                "-----BEGIN RSA PRIVATE KEY-----\nMIIEpAIBAAKCAQEA\n-----END RSA PRIVATE KEY-----",
                "MIIEpAIBAAKCAQEA",
            ),
            ("DB_PASSWORD=correcthorse ./run", "correcthorse"),
        ];
        for (text, secret) in cases {
            let out = r(text);
            assert!(!out.contains(secret), "{text:?} -> {out:?}");
            assert!(out.contains(MASK), "{text:?} -> {out:?}");
        }
    }

    #[test]
    fn leaves_ordinary_text_alone() {
        for text in [
            "connection refused (os error 111) to 10.0.0.5:443",
            "HTTP 503 Service Unavailable from https://api.example.com/v1/scan",
            "nuclei: 3 templates matched on example.com",
        ] {
            assert_eq!(r(text), text);
        }
        assert_eq!(
            r("user bob at https://bob@host/x"),
            "user bob at https://bob@host/x"
        );
    }

    #[test]
    fn extra_patterns_and_json() {
        let red = Redactor::new(&["CORP-[0-9]{6}".into()]).unwrap();
        assert_eq!(red.redact("id CORP-123456 here"), "id [REDACTED] here");
        let mut v = serde_json::json!({"headers": {"Cookie": "a=b"}, "api_token": "xyz", "n": 3,
            "log": ["see https://u:pw@h/"]});
        red.redact_json(&mut v);
        let s = v.to_string();
        assert!(
            !s.contains("a=b") && !s.contains("xyz") && !s.contains(":pw@"),
            "{s}"
        );
        assert!(
            Redactor::new(&["(".into()])
                .unwrap_err()
                .contains("not a valid regex")
        );
    }
}
