//! Bookkeeping headers (counters, failure history, origin) signed by the fleet that writes them.
//!
//! The task signature covers what a task *does* (message id and body); the headers the fleet
//! rewrites on every retry, deferral, hand-back, dead letter and requeue say what has already
//! *happened* to it, and decide how much more work it gets. They carry a second HMAC,
//! `x-bookkeeping-signature`, over the message id and every header of [`SIGNED`] in that
//! order (absent ones included, as absent). Workers and the inspector hold the keys and sign
//! again at each republish; nobody else can write a count that verifies.
//!
//! On receipt ([`verify`]): a valid signature makes the headers [`Trust::Signed`]; no signature
//! and no `x-retry-count` is a task as a producer publishes it ([`Trust::Fresh`]: any other
//! bookkeeping header is ignored, read as its default, and dropped from copies); a signature
//! that does not verify, or an `x-retry-count` without one, is [`Tampered`] (someone rewrote a
//! copy the fleet made): the worker dead-letters it as `security` without running it.

use crate::{headers as h, signing::Keyring};
use lapin::types::FieldTable;

/// Header carrying the bookkeeping signature (`v1=` + hex).
pub const SIGNATURE: &str = "x-bookkeeping-signature";
/// Header naming the key that made it.
pub const KEY_ID: &str = "x-bookkeeping-key-id";

/// Every bookkeeping header the signature covers, in the order it encodes them.
pub const SIGNED: [(&str, Kind); 18] = [
    (h::RETRY_COUNT, Kind::Count),
    (h::DEFER_COUNT, Kind::Count),
    (h::UNSETTLED_BEFORE, Kind::Count),
    (h::REQUEUE_COUNT, Kind::Count),
    (h::FIRST_FAILURE_AT, Kind::Count),
    (h::LAST_FAILURE_AT, Kind::Count),
    (h::DEAD_LETTERED_AT, Kind::Count),
    (h::LAST_REQUEUED_AT, Kind::Count),
    (h::SCHEDULED_DELAY_MS, Kind::Count),
    (h::RETRY_PUBLISHED_AT, Kind::Count),
    (h::ERROR_CLASS, Kind::Text),
    (h::ERROR_CODE, Kind::Text),
    (h::ERROR_MESSAGE, Kind::Text),
    (h::DEAD_LETTER_REASON, Kind::Text),
    (h::WORKER_ID, Kind::Text),
    (h::ORIGIN_QUEUE, Kind::Text),
    (h::ORIGIN_EXCHANGE, Kind::Text),
    (h::ORIGIN_ROUTING_KEY, Kind::Text),
];

/// How a signed header's value is read (and so encoded).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    /// An unsigned integer, whatever width it came in.
    Count,
    /// UTF-8 text.
    Text,
}

/// How far a delivery's bookkeeping headers can be believed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Trust {
    /// Signed by a key of the fleet: read as written.
    Signed,
    /// Not signed and no retry count: a task as published by a producer. Any other bookkeeping
    /// header on it is ignored (read as absent).
    Fresh,
    /// Signing is disabled: headers are read as written, nothing is checked.
    Unchecked,
}

impl Trust {
    /// Whether bookkeeping headers are read as written.
    pub fn believed(self) -> bool {
        matches!(self, Self::Signed | Self::Unchecked)
    }
}

/// Bookkeeping headers rewritten by someone without the key. The task must not run.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum Tampered {
    /// A retry count without a bookkeeping signature.
    #[error(
        "the task carries {} without {SIGNATURE}: only the fleet writes retry counts, and it signs them; the copy was rewritten (or made by a version before bookkeeping signatures: requeue it with `dlq-inspector requeue --reset-retries`)",
        h::RETRY_COUNT
    )]
    UnsignedRetryCount,
    /// Signed with a key id this process does not hold.
    #[error(
        "the task's bookkeeping headers are signed with key id `{0}`, which this process does not know"
    )]
    UnknownKey(String),
    /// The signature does not match the headers (a count, origin or history was changed).
    #[error(
        "the task's bookkeeping headers (retry count, history, origin) do not match their signature: they were rewritten outside the fleet"
    )]
    Mismatch,
}

impl Tampered {
    /// Error code for DLQ headers and events.
    pub fn code(&self) -> &'static str {
        "forged_bookkeeping"
    }
}

/// The bytes the signature covers: a version tag, the key id, the message id and each header
/// of [`SIGNED`] as `name` + `-` (absent), `#` + decimal (count), `'` + length + `:` + bytes
/// (text) or `?` (present but not readable as its kind), one per line.
pub fn canonical(headers: Option<&FieldTable>, key_id: &str, message_id: &str) -> Vec<u8> {
    let mut out = Vec::with_capacity(256);
    out.extend_from_slice(b"secflow-bookkeeping-v1\n");
    for part in [key_id, message_id] {
        out.extend_from_slice(format!("{}:", part.len()).as_bytes());
        out.extend_from_slice(part.as_bytes());
        out.push(b'\n');
    }
    for (name, kind) in SIGNED {
        out.extend_from_slice(name.as_bytes());
        let present = headers.is_some_and(|t| t.inner().contains_key(name));
        match (present, kind) {
            (false, _) => out.push(b'-'),
            (true, Kind::Count) => match h::get_u64(headers, name) {
                Some(v) => out.extend_from_slice(format!("#{v}").as_bytes()),
                None => out.push(b'?'),
            },
            (true, Kind::Text) => match h::get_str(headers, name) {
                Some(s) => {
                    out.extend_from_slice(format!("'{}:", s.len()).as_bytes());
                    out.extend_from_slice(s.as_bytes());
                }
                None => out.push(b'?'),
            },
        }
        out.push(b'\n');
    }
    out
}

/// Signs the bookkeeping headers of a message with `message_id` (call it last, after every
/// header is set).
pub fn sign(keyring: &Keyring, headers: &mut FieldTable, message_id: &str) {
    let tag = keyring
        .hmac(
            keyring.signer(),
            &canonical(Some(headers), keyring.signer(), message_id),
        )
        .unwrap_or_default();
    h::set_str(headers, KEY_ID, keyring.signer());
    h::set_str(headers, SIGNATURE, &format!("v1={}", hex::encode(tag)));
}

/// How far the bookkeeping headers of a message with `message_id` can be believed
/// (`keyring` is `None` only when signing was disabled explicitly).
pub fn verify(
    keyring: Option<&Keyring>,
    headers: Option<&FieldTable>,
    message_id: &str,
) -> Result<Trust, Tampered> {
    let Some(keyring) = keyring else {
        return Ok(Trust::Unchecked);
    };
    let Some(signature) = h::get_str(headers, SIGNATURE) else {
        if headers.is_some_and(|t| t.inner().contains_key(h::RETRY_COUNT)) {
            return Err(Tampered::UnsignedRetryCount);
        }
        return Ok(Trust::Fresh);
    };
    let key_id = h::get_str(headers, KEY_ID).unwrap_or_default();
    let given = signature
        .strip_prefix("v1=")
        .and_then(|x| hex::decode(x).ok())
        .ok_or(Tampered::Mismatch)?;
    let data = canonical(headers, key_id, message_id);
    match keyring.check(key_id, &data, &given) {
        None => Err(Tampered::UnknownKey(
            key_id
                .chars()
                .take(64)
                .filter(|c| !c.is_control())
                .collect(),
        )),
        Some(true) => Ok(Trust::Signed),
        Some(false) => Err(Tampered::Mismatch),
    }
}

/// Whether `name` is a bookkeeping header or its signature.
pub fn is_bookkeeping(name: &str) -> bool {
    name == SIGNATURE || name == KEY_ID || SIGNED.iter().any(|(n, _)| *n == name)
}

/// Removes every bookkeeping header and its signature, so a copy of a message whose
/// bookkeeping was not believed starts from what the fleet writes itself.
pub fn strip(headers: &mut FieldTable) {
    let names: Vec<String> = headers
        .inner()
        .keys()
        .map(|k| k.to_string())
        .filter(|k| is_bookkeeping(k))
        .collect();
    let names: Vec<&str> = names.iter().map(String::as_str).collect();
    h::remove(headers, &names);
}

/// Copy headers of a message whose bookkeeping was judged `trust` (`None`: tampered):
/// unbelieved bookkeeping is dropped, never carried over (and signed) into the copy.
pub fn for_copy(original: Option<&FieldTable>, trust: Option<Trust>) -> FieldTable {
    let mut headers = h::for_copy(original);
    if !trust.is_some_and(Trust::believed) {
        strip(&mut headers);
    }
    headers
}

#[cfg(test)]
mod tests {
    use super::*;
    use lapin::types::AMQPValue;

    const KEY: &str = "k1:0123456789abcdef0123";

    fn ring(s: &str) -> Keyring {
        Keyring::parse(s).unwrap()
    }

    fn dead_letter() -> FieldTable {
        let mut t = FieldTable::default();
        h::set_u64(&mut t, h::RETRY_COUNT, 2);
        h::set_u64(&mut t, h::FIRST_FAILURE_AT, 1_000);
        h::set_str(&mut t, h::DEAD_LETTER_REASON, "exhausted");
        h::set_str(&mut t, h::ORIGIN_EXCHANGE, "ns.tasks");
        h::set_str(&mut t, h::ORIGIN_ROUTING_KEY, "builtin.fail");
        h::set_str(&mut t, "x-signature", "v1=body-signature-is-not-covered");
        t
    }

    #[test]
    fn canonical_encoding_is_fixed_and_tells_absent_from_empty_and_zero() {
        let mut t = FieldTable::default();
        h::set_u64(&mut t, h::RETRY_COUNT, 3);
        h::set_str(&mut t, h::ERROR_CODE, "");
        t.insert(h::DEFER_COUNT.into(), AMQPValue::Double(1.5));
        let text = String::from_utf8(canonical(Some(&t), "k1", "id-1")).unwrap();
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(lines.len(), 3 + SIGNED.len(), "{text}");
        assert_eq!(
            &lines[..5],
            &[
                "secflow-bookkeeping-v1",
                "2:k1",
                "4:id-1",
                "x-retry-count#3",
                "x-defer-count?",
            ]
        );
        assert!(lines.contains(&"x-error-code'0:"), "{text}");
        assert!(lines.contains(&"x-error-class-"), "{text}");
        // The same count in another integer width encodes the same.
        let mut narrow = t.clone();
        narrow.insert(h::RETRY_COUNT.into(), AMQPValue::LongInt(3));
        assert_eq!(canonical(Some(&narrow), "k1", "id-1"), text.as_bytes());
        // Retry count 0 is not the same as no retry count.
        let mut zero = FieldTable::default();
        h::set_u64(&mut zero, h::RETRY_COUNT, 0);
        assert_ne!(
            canonical(Some(&zero), "k1", "id-1"),
            canonical(None, "k1", "id-1")
        );
    }

    #[test]
    fn signed_bookkeeping_verifies_and_every_rewrite_is_caught() {
        let k = ring(KEY);
        let mut t = dead_letter();
        sign(&k, &mut t, "id-1");
        assert_eq!(verify(Some(&k), Some(&t), "id-1"), Ok(Trust::Signed));
        // Headers outside the set (the body signature, the broker's) may change.
        let mut other = t.clone();
        h::set_u64(&mut other, h::DELIVERY_COUNT, 4);
        assert_eq!(verify(Some(&k), Some(&other), "id-1"), Ok(Trust::Signed));

        let reset = |f: &dyn Fn(&mut FieldTable)| {
            let mut c = t.clone();
            f(&mut c);
            verify(Some(&k), Some(&c), "id-1")
        };
        let mismatch = Err(Tampered::Mismatch);
        assert_eq!(reset(&|c| h::set_u64(c, h::RETRY_COUNT, 0)), mismatch);
        assert_eq!(
            reset(&|c| {
                h::remove(c, &[h::RETRY_COUNT]);
            }),
            mismatch
        );
        assert_eq!(reset(&|c| h::set_u64(c, h::UNSETTLED_BEFORE, 99)), mismatch);
        assert_eq!(
            reset(&|c| h::set_str(c, h::ORIGIN_EXCHANGE, "amq.direct")),
            mismatch
        );
        assert_eq!(
            verify(Some(&k), Some(&t), "id-2"),
            mismatch,
            "bound to the task id"
        );
        let attacker = ring("k1:an-attackers-guess-at-the-key");
        assert_eq!(verify(Some(&attacker), Some(&t), "id-1"), mismatch);
        let retired = ring("k2:fedcba9876543210fedc");
        assert_eq!(
            verify(Some(&retired), Some(&t), "id-1"),
            Err(Tampered::UnknownKey("k1".into()))
        );
        // Rotation: a key that only verifies still accepts what the old signer wrote.
        let rotated = ring(&format!("k2:fedcba9876543210fedc,{KEY}"));
        assert_eq!(verify(Some(&rotated), Some(&t), "id-1"), Ok(Trust::Signed));
    }

    #[test]
    fn unsigned_bookkeeping_is_fresh_unless_it_claims_a_retry_count() {
        let k = ring(KEY);
        assert_eq!(verify(Some(&k), None, "id"), Ok(Trust::Fresh));
        let mut forged = FieldTable::default();
        h::set_u64(&mut forged, h::UNSETTLED_BEFORE, 99);
        h::set_str(&mut forged, h::ORIGIN_EXCHANGE, "amq.direct");
        assert_eq!(verify(Some(&k), Some(&forged), "id"), Ok(Trust::Fresh));
        let copy = for_copy(Some(&forged), Some(Trust::Fresh));
        assert!(
            copy.inner().is_empty(),
            "unbelieved headers are not carried: {copy:?}"
        );
        h::set_u64(&mut forged, h::RETRY_COUNT, 0);
        assert_eq!(
            verify(Some(&k), Some(&forged), "id"),
            Err(Tampered::UnsignedRetryCount)
        );
        assert_eq!(verify(None, Some(&forged), "id"), Ok(Trust::Unchecked));
        let kept = for_copy(Some(&forged), Some(Trust::Unchecked));
        assert_eq!(
            h::get_str(Some(&kept), h::ORIGIN_EXCHANGE),
            Some("amq.direct")
        );
    }

    #[test]
    fn strip_keeps_what_is_not_bookkeeping() {
        let k = ring(KEY);
        let mut t = dead_letter();
        sign(&k, &mut t, "id");
        h::set_str(&mut t, "traceparent", "00-abc");
        strip(&mut t);
        let mut names: Vec<String> = t.inner().keys().map(|k| k.to_string()).collect();
        names.sort();
        assert_eq!(names, ["traceparent", "x-signature"]);
    }
}
