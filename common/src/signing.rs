//! Message authenticity: HMAC-SHA256 over what decides what a task does.
//!
//! A task is signed over its message id (the task id, also the idempotency key), the key id and
//! its body (type, config, inputs, retry policy, timeout). Headers that count attempts and
//! record history (`x-retry-count`, deferrals, requeues, origin) are rewritten by the fleet on
//! every retry; they carry a signature of their own (`crate::bookkeeping`). Copies made for
//! retries, deferrals and the DLQ keep body, message id and task signature, so a requeued task
//! still verifies.
//!
//! A task's W3C trace context (`traceparent`, `tracestate`) is covered too when it has one: it
//! is written once by the task's publisher and copied unchanged, so a copy cannot be moved into
//! another trace, and a trace header added to a task signed without one fails verification.
//!
//! Keys are `ID:SECRET` pairs; the first signs, all verify, so a key can be rotated by adding the
//! new one first on every binary, then removing the old one once its tasks have drained.

use hmac::{KeyInit, Mac};
use lapin::types::FieldTable;
use sha2::Sha256;
use std::{collections::HashMap, fmt, sync::Arc};

/// Header carrying the signature (`v1=` + hex).
pub const SIGNATURE: &str = "x-signature";
/// Header naming the key that made the signature.
pub const KEY_ID: &str = "x-signature-key-id";
/// Shortest secret accepted, bytes.
pub const MIN_SECRET_LEN: usize = 16;

type HmacSha256 = hmac::Hmac<Sha256>;

/// Why a message fails verification. Every variant means: do not run it.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Forgery {
    /// No signature header at all.
    #[error("the task is not signed (no {SIGNATURE} header) and this worker requires signatures")]
    Unsigned,
    /// Signed with a key id this worker does not hold.
    #[error("the task is signed with key id `{0}`, which this worker does not know")]
    UnknownKey(String),
    /// The signature header is not `v1=` followed by 64 hex digits.
    #[error("the task's signature header is malformed")]
    Malformed,
    /// The signature does not match body, message id and key.
    #[error("the task's signature does not match its content (tampered or forged)")]
    Mismatch,
}

impl Forgery {
    /// Error code for DLQ headers and events.
    pub fn code(&self) -> &'static str {
        match self {
            Self::Unsigned => "unsigned",
            Self::UnknownKey(_) => "unknown_signing_key",
            Self::Malformed => "malformed_signature",
            Self::Mismatch => "bad_signature",
        }
    }
}

/// The keys a process signs and verifies with, each held as an HMAC already keyed with its
/// secret: every message signed or checked starts from a copy instead of hashing the key again.
#[derive(Clone)]
pub struct Keyring {
    signer: String,
    keys: Arc<HashMap<String, HmacSha256>>,
}

impl fmt::Debug for Keyring {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut ids: Vec<&String> = self.keys.keys().collect();
        ids.sort();
        write!(f, "Keyring(signs with {}, verifies {ids:?})", self.signer)
    }
}

impl Keyring {
    /// Parses `ID:SECRET` entries separated by commas or newlines (blank lines and `#` comments
    /// ignored); the first entry signs. Errors name the entry but never show a secret.
    pub fn parse(text: &str) -> Result<Self, String> {
        let mut keys = HashMap::new();
        let mut signer = None;
        for (n, entry) in text
            .split([',', '\n'])
            .map(str::trim)
            .filter(|e| !e.is_empty() && !e.starts_with('#'))
            .enumerate()
        {
            let Some((id, secret)) = entry.split_once(':') else {
                return Err(format!("signing key entry {} is not ID:SECRET", n + 1));
            };
            let id = id.trim();
            if id.is_empty()
                || id.len() > 64
                || !id
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || "._-".contains(c))
            {
                return Err(format!(
                    "signing key entry {}: key id must be 1-64 of A-Z a-z 0-9 . _ -",
                    n + 1
                ));
            }
            if secret.len() < MIN_SECRET_LEN {
                return Err(format!(
                    "signing key `{id}`: secret is {} bytes, at least {MIN_SECRET_LEN} are required",
                    secret.len()
                ));
            }
            // HMAC takes a key of any length.
            let keyed = HmacSha256::new_from_slice(secret.as_bytes())
                .map_err(|e| format!("signing key `{id}`: {e}"))?;
            if keys.insert(id.to_string(), keyed).is_some() {
                return Err(format!("signing key id `{id}` appears twice"));
            }
            signer.get_or_insert_with(|| id.to_string());
        }
        let signer = signer.ok_or("no signing key given")?;
        Ok(Self {
            signer,
            keys: Arc::new(keys),
        })
    }

    /// Id of the key that signs.
    pub fn signer(&self) -> &str {
        &self.signer
    }

    /// Adds the signature headers for a message with `message_id` and `body`.
    /// Set the trace context headers first: the signature covers them.
    pub fn sign(&self, headers: &mut FieldTable, message_id: &str, body: &[u8]) {
        let trace = Trace::of(Some(headers));
        // `v1=` and 64 hex digits, written on the stack (this runs for every task published).
        let mut text = [0u8; 3 + 64];
        text[..3].copy_from_slice(b"v1=");
        let written = match self.tag(&self.signer, message_id, &trace, body) {
            Some(tag) => hex::encode_to_slice(tag, &mut text[3..]).map_or(3, |()| text.len()),
            None => 3,
        };
        let value = std::str::from_utf8(&text[..written]).unwrap_or("v1=");
        crate::headers::set_str(headers, KEY_ID, &self.signer);
        crate::headers::set_str(headers, SIGNATURE, value);
    }

    /// Checks the signature of a message; constant time in the comparison.
    pub fn verify(
        &self,
        headers: Option<&FieldTable>,
        message_id: &str,
        body: &[u8],
    ) -> Result<(), Forgery> {
        let Some(signature) = crate::headers::get_str(headers, SIGNATURE) else {
            return Err(Forgery::Unsigned);
        };
        let key_id = crate::headers::get_str(headers, KEY_ID).unwrap_or_default();
        let Some(key) = self.keys.get(key_id) else {
            return Err(Forgery::UnknownKey(printable(key_id)));
        };
        let mut given = [0u8; 32];
        signature
            .strip_prefix("v1=")
            .and_then(|h| hex::decode_to_slice(h, &mut given).ok())
            .ok_or(Forgery::Malformed)?;
        let trace = Trace::of(headers);
        let mac = mac(key, key_id, message_id, &trace, body);
        mac.verify_slice(&given).map_err(|_| Forgery::Mismatch)
    }

    fn tag(&self, key_id: &str, message_id: &str, trace: &Trace, body: &[u8]) -> Option<[u8; 32]> {
        let key = self.keys.get(key_id)?;
        Some(
            mac(key, key_id, message_id, trace, body)
                .finalize()
                .into_bytes()
                .into(),
        )
    }

    /// HMAC-SHA256 of `data` (already framed by the caller) under key `key_id`; `None` if
    /// this keyring does not hold it.
    pub(crate) fn hmac(&self, key_id: &str, data: &[u8]) -> Option<Vec<u8>> {
        let mut mac = self.keys.get(key_id)?.clone();
        mac.update(data);
        Some(mac.finalize().into_bytes().to_vec())
    }

    /// Whether `given` is the HMAC of `data` under `key_id`, compared in constant time;
    /// `None` if this keyring does not hold the key.
    pub(crate) fn check(&self, key_id: &str, data: &[u8], given: &[u8]) -> Option<bool> {
        let mut mac = self.keys.get(key_id)?.clone();
        mac.update(data);
        Some(mac.verify_slice(given).is_ok())
    }
}

/// The trace context headers of a message, as the signature covers them (raw, unparsed).
struct Trace<'a> {
    parent: Option<&'a str>,
    state: Option<&'a str>,
}

impl<'a> Trace<'a> {
    fn of(headers: Option<&'a FieldTable>) -> Self {
        Self {
            parent: crate::headers::get_str(headers, crate::trace::TRACEPARENT),
            state: crate::headers::get_str(headers, crate::trace::TRACESTATE),
        }
    }
}

/// A task without trace headers is signed as before they existed (`secflow-task-v1`); with
/// them, each is framed by its length before the body (`secflow-task-v2`). `key` is the HMAC
/// keyed with the secret of `key_id`.
fn mac(key: &HmacSha256, key_id: &str, message_id: &str, trace: &Trace, body: &[u8]) -> HmacSha256 {
    let mut mac = key.clone();
    let traced = trace.parent.is_some() || trace.state.is_some();
    mac.update(if traced {
        b"secflow-task-v2\n"
    } else {
        b"secflow-task-v1\n"
    });
    mac.update(key_id.as_bytes());
    mac.update(b"\n");
    mac.update(message_id.as_bytes());
    mac.update(b"\n");
    if traced {
        for value in [trace.parent, trace.state] {
            match value {
                Some(v) => {
                    // `LEN:VALUE\n`, the length formatted on the stack (this runs for every
                    // delivery): a `usize` has at most 20 digits, so the write cannot fail.
                    let mut digits = [0u8; 20];
                    let room = digits.len();
                    let mut free = &mut digits[..];
                    let _ = std::io::Write::write_fmt(&mut free, format_args!("{}", v.len()));
                    let written = room - free.len();
                    mac.update(&digits[..written]);
                    mac.update(b":");
                    mac.update(v.as_bytes());
                    mac.update(b"\n");
                }
                None => mac.update(b"-\n"),
            }
        }
    }
    mac.update(body);
    mac
}

/// A header value fit for an error message: bounded, control characters replaced.
fn printable(s: &str) -> String {
    s.chars()
        .take(64)
        .map(|c| if c.is_control() { '?' } else { c })
        .collect()
}

/// Signing settings every binary that publishes or runs tasks shares.
#[derive(clap::Args, Clone, Debug, Default)]
pub struct SigningArgs {
    /// Task signing keys as ID:SECRET[,ID:SECRET...]; the first signs, all verify.
    #[arg(long, env = "SECFLOW_SIGNING_KEY", hide_env_values = true)]
    pub signing_key: Option<String>,
    /// File with signing keys, one ID:SECRET per line (first signs), e.g. a mounted Secret.
    #[arg(long, env = "SECFLOW_SIGNING_KEY_FILE")]
    pub signing_key_file: Option<std::path::PathBuf>,
    /// Publish unsigned tasks and run tasks without checking signatures. Anyone who can
    /// publish to the broker can then run any task type with any config.
    #[arg(long, env = "SECFLOW_INSECURE_NO_SIGNING")]
    pub insecure_no_signing: bool,
}

impl SigningArgs {
    /// Settings signing with `keys` (`ID:SECRET`).
    pub fn with_key(keys: &str) -> Self {
        Self {
            signing_key: Some(keys.into()),
            ..Self::default()
        }
    }

    /// The keyring, or `None` when signing was disabled explicitly. No key and no explicit
    /// opt-out is an error: a fleet never runs unsigned tasks by accident.
    pub fn keyring(&self) -> Result<Option<Keyring>, String> {
        let mut text = String::new();
        if let Some(keys) = &self.signing_key {
            text.push_str(keys);
            text.push('\n');
        }
        if let Some(path) = &self.signing_key_file {
            let file = std::fs::read_to_string(path)
                .map_err(|e| format!("cannot read signing key file {}: {e}", path.display()))?;
            text.push_str(&file);
        }
        let given = !text.trim().is_empty();
        match (given, self.insecure_no_signing) {
            (true, true) => {
                Err("signing keys are given and --insecure-no-signing is set: choose one".into())
            }
            (true, false) => Keyring::parse(&text).map(Some),
            (false, true) => Ok(None),
            (false, false) => Err("no task signing key: set SECFLOW_SIGNING_KEY (ID:SECRET), \
                 --signing-key-file, or disable signing explicitly with --insecure-no-signing"
                .into()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ring(s: &str) -> Keyring {
        Keyring::parse(s).unwrap()
    }

    #[test]
    fn signed_message_verifies_and_any_change_fails() {
        let k = ring("k1:0123456789abcdef0123");
        let mut h = FieldTable::default();
        k.sign(&mut h, "id-1", b"{\"a\":1}");
        assert_eq!(k.verify(Some(&h), "id-1", b"{\"a\":1}"), Ok(()));
        assert_eq!(
            k.verify(Some(&h), "id-1", b"{\"a\":2}"),
            Err(Forgery::Mismatch)
        );
        assert_eq!(
            k.verify(Some(&h), "id-2", b"{\"a\":1}"),
            Err(Forgery::Mismatch)
        );
        assert_eq!(k.verify(None, "id-1", b"{\"a\":1}"), Err(Forgery::Unsigned));
        let other = ring("k1:another-secret-of-enough-length");
        assert_eq!(
            other.verify(Some(&h), "id-1", b"{\"a\":1}"),
            Err(Forgery::Mismatch)
        );
        crate::headers::set_str(&mut h, SIGNATURE, "v1=zz");
        assert_eq!(
            k.verify(Some(&h), "id-1", b"{\"a\":1}"),
            Err(Forgery::Malformed)
        );
    }

    #[test]
    fn the_trace_context_is_covered_when_present() {
        let k = ring("k1:0123456789abcdef0123");
        let parent = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";
        let mut h = FieldTable::default();
        crate::headers::set_str(&mut h, crate::trace::TRACEPARENT, parent);
        k.sign(&mut h, "id", b"body");
        assert_eq!(k.verify(Some(&h), "id", b"body"), Ok(()));
        // Moved into another trace, given a tracestate, or stripped of its trace: forged.
        let mut moved = h.clone();
        crate::headers::set_str(
            &mut moved,
            crate::trace::TRACEPARENT,
            &parent.replace("4bf9", "4bf8"),
        );
        assert_eq!(
            k.verify(Some(&moved), "id", b"body"),
            Err(Forgery::Mismatch)
        );
        let mut stated = h.clone();
        crate::headers::set_str(&mut stated, crate::trace::TRACESTATE, "v=1");
        assert_eq!(
            k.verify(Some(&stated), "id", b"body"),
            Err(Forgery::Mismatch)
        );
        let mut stripped = h.clone();
        crate::headers::remove(&mut stripped, &[crate::trace::TRACEPARENT]);
        assert_eq!(
            k.verify(Some(&stripped), "id", b"body"),
            Err(Forgery::Mismatch)
        );
        // A trace header added to a task signed without one.
        let mut plain = FieldTable::default();
        k.sign(&mut plain, "id", b"body");
        crate::headers::set_str(&mut plain, crate::trace::TRACEPARENT, parent);
        assert_eq!(
            k.verify(Some(&plain), "id", b"body"),
            Err(Forgery::Mismatch)
        );
    }

    /// The signed bytes are a wire format (workers verify what producers of other versions
    /// signed): pinned by HMACs computed outside this code over the documented framing,
    /// `secflow-task-v1\nKEY_ID\nMESSAGE_ID\nBODY` and, with a trace context,
    /// `secflow-task-v2\nKEY_ID\nMESSAGE_ID\nLEN:TRACEPARENT\n-\nBODY`.
    #[test]
    fn the_signed_bytes_are_fixed() {
        let k = ring("k1:0123456789abcdef0123");
        let signature =
            |h: &FieldTable| crate::headers::get_str(Some(h), SIGNATURE).map(String::from);
        let mut plain = FieldTable::default();
        k.sign(&mut plain, "id", b"body");
        assert_eq!(
            signature(&plain).as_deref(),
            Some("v1=f18290e72343dfbf8acbabd52808c4205fc4e516c8988716e70ac0610aef6b73")
        );
        let mut traced = FieldTable::default();
        crate::headers::set_str(
            &mut traced,
            crate::trace::TRACEPARENT,
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
        );
        k.sign(&mut traced, "id", b"body");
        assert_eq!(
            signature(&traced).as_deref(),
            Some("v1=905df53dbf8a91308370152103ffa647bc7a75ed68761a776dfcb1f989d5948c")
        );
    }

    #[test]
    fn rotation_old_key_still_verifies_new_key_signs() {
        let old = ring("k1:0123456789abcdef0123");
        let mut h = FieldTable::default();
        old.sign(&mut h, "id", b"body");
        let rotated = ring("k2:fedcba9876543210fedc,k1:0123456789abcdef0123");
        assert_eq!(rotated.signer(), "k2");
        assert_eq!(rotated.verify(Some(&h), "id", b"body"), Ok(()));
        let retired = ring("k2:fedcba9876543210fedc");
        assert_eq!(
            retired.verify(Some(&h), "id", b"body"),
            Err(Forgery::UnknownKey("k1".into()))
        );
    }

    #[test]
    fn bad_key_config_is_named_without_the_secret() {
        let short = Keyring::parse("k1:short").unwrap_err();
        assert!(
            short.contains("at least 16") && !short.contains("short`"),
            "{short}"
        );
        assert!(Keyring::parse("nocolon").unwrap_err().contains("ID:SECRET"));
        assert!(
            Keyring::parse("a b:0123456789abcdef0")
                .unwrap_err()
                .contains("key id")
        );
        assert!(
            Keyring::parse("k:0123456789abcdef0,k:0123456789abcdef1")
                .unwrap_err()
                .contains("twice")
        );
        let none = SigningArgs::default().keyring().unwrap_err();
        assert!(none.contains("--insecure-no-signing"), "{none}");
        let off = SigningArgs {
            insecure_no_signing: true,
            ..SigningArgs::default()
        };
        assert!(off.keyring().unwrap().is_none());
        let missing = SigningArgs {
            signing_key_file: Some("/nonexistent/keys".into()),
            ..SigningArgs::default()
        };
        assert!(missing.keyring().unwrap_err().contains("/nonexistent/keys"));
    }
}
