//! The one strict parser of what a task's key holds: a lease, a completing marker or a done
//! marker, exactly as this worker writes them. Anything else is corrupted state, never "leased
//! by another attempt" and never "completed".

/// What a task's key (`sf:{ns:task:ID}`) holds.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum TaskValue {
    /// `lease:<owner>`, expiring in `ttl_ms`: an attempt is running the task.
    Lease { owner: String, ttl_ms: u64 },
    /// `completing:<since_ms>:<owner>`: the attempt completed the task and is reporting it (or
    /// stopped while doing so).
    Completing { since_ms: u64, owner: String },
    /// `done:<owner>`: completed and reported.
    Done { owner: String },
}

/// How far in the future a completing marker's time may be (clocks of workers differ).
pub const MAX_CLOCK_SKEW_MS: u64 = 60_000;

/// Parses a task key's value `raw`, whose remaining time to live is `pttl_ms` (Redis `PTTL`:
/// -1 without expiry), at `now_ms`. The error says what is wrong, for the operator.
pub fn parse_task_value(raw: &str, pttl_ms: i64, now_ms: u64) -> Result<TaskValue, String> {
    let shown = shown(raw);
    if let Some(owner) = raw.strip_prefix("lease:") {
        check_owner(owner).map_err(|e| format!("lease `{shown}`: {e}"))?;
        // A lease always expires; one that does not would hold the task for ever.
        let ttl_ms = u64::try_from(pttl_ms)
            .map_err(|_| format!("lease `{shown}` has no expiry (PTTL {pttl_ms})"))?;
        return Ok(TaskValue::Lease {
            owner: owner.to_string(),
            ttl_ms,
        });
    }
    if let Some(owner) = raw.strip_prefix("done:") {
        check_owner(owner).map_err(|e| format!("done marker `{shown}`: {e}"))?;
        return Ok(TaskValue::Done {
            owner: owner.to_string(),
        });
    }
    if let Some(rest) = raw.strip_prefix("completing:") {
        let (since, owner) = rest.split_once(':').ok_or_else(|| {
            format!("completing marker `{shown}` is not `completing:<since_ms>:<owner>`")
        })?;
        let since_ms = parse_ms(since)
            .ok_or_else(|| format!("completing marker `{shown}`: `{since}` is not a time in ms"))?;
        if since_ms > now_ms.saturating_add(MAX_CLOCK_SKEW_MS) {
            return Err(format!(
                "completing marker `{shown}` is dated {} ms in the future",
                since_ms - now_ms
            ));
        }
        check_owner(owner).map_err(|e| format!("completing marker `{shown}`: {e}"))?;
        return Ok(TaskValue::Completing {
            since_ms,
            owner: owner.to_string(),
        });
    }
    Err(format!(
        "`{shown}` is none of `lease:`, `completing:`, `done:`"
    ))
}

/// Digits only (no sign, no spaces), fitting a u64.
fn parse_ms(s: &str) -> Option<u64> {
    if s.is_empty() || !s.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    s.parse().ok()
}

/// An attempt's identity as [`super::Lease`] makes it: `<worker id>/<32 hex digits>`.
fn check_owner(owner: &str) -> Result<(), String> {
    let (worker, attempt) = owner
        .rsplit_once('/')
        .ok_or("the attempt is not `<worker>/<uuid>`")?;
    if worker.is_empty() || worker.len() > 128 || worker.chars().any(char::is_control) {
        return Err("the attempt's worker id is empty, too long or has control characters".into());
    }
    if attempt.len() != 32 || !attempt.bytes().all(|b| b.is_ascii_hexdigit()) {
        return Err("the attempt's uuid is not 32 hex digits".into());
    }
    Ok(())
}

/// The value as it may be logged: at most 80 characters, control characters escaped.
fn shown(raw: &str) -> String {
    let mut out: String = raw
        .chars()
        .take(80)
        .flat_map(char::escape_default)
        .collect();
    if raw.chars().count() > 80 {
        out.push('…');
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    const OWNER: &str = "host-1/0123456789abcdef0123456789abcdef";
    const NOW: u64 = 1_700_000_000_000;

    fn parse(raw: &str, pttl: i64) -> Result<TaskValue, String> {
        parse_task_value(raw, pttl, NOW)
    }

    #[test]
    fn what_the_worker_writes_parses() {
        assert_eq!(
            parse(&format!("lease:{OWNER}"), 1_500),
            Ok(TaskValue::Lease {
                owner: OWNER.into(),
                ttl_ms: 1_500
            })
        );
        assert_eq!(
            parse(&format!("done:{OWNER}"), -1),
            Ok(TaskValue::Done {
                owner: OWNER.into()
            })
        );
        assert_eq!(
            parse(&format!("completing:{}:{OWNER}", NOW - 5), 10_000),
            Ok(TaskValue::Completing {
                since_ms: NOW - 5,
                owner: OWNER.into()
            })
        );
        // A worker id may itself hold ':' and '/'.
        let odd = "pod:a/b/0123456789abcdef0123456789abcdef";
        assert!(parse(&format!("completing:{NOW}:{odd}"), 10).is_ok());
    }

    #[test]
    fn garbage_is_refused_with_what_is_wrong() {
        let cases = [
            ("completing:garbage", -1, "not `completing:"),
            (
                "completing:12x:host/0123456789abcdef0123456789abcdef",
                5,
                "not a time",
            ),
            (
                "completing:-5:host/0123456789abcdef0123456789abcdef",
                5,
                "not a time",
            ),
            ("completing:123:nobody", 5, "not `<worker>/<uuid>`"),
            ("done:", -1, "not `<worker>/<uuid>`"),
            ("done:host/xyz", -1, "32 hex"),
            ("lease:", 100, "not `<worker>/<uuid>`"),
            ("whatever", -1, "none of"),
            ("", -1, "none of"),
        ];
        for (raw, pttl, expected) in cases {
            let err = parse(raw, pttl).unwrap_err();
            assert!(err.contains(expected), "{raw}: {err}");
        }
    }

    #[test]
    fn a_lease_without_expiry_or_a_marker_from_the_future_is_refused() {
        let err = parse(&format!("lease:{OWNER}"), -1).unwrap_err();
        assert!(err.contains("no expiry"), "{err}");
        let later = NOW + MAX_CLOCK_SKEW_MS + 1;
        let err = parse(&format!("completing:{later}:{OWNER}"), 5).unwrap_err();
        assert!(err.contains("future"), "{err}");
    }

    #[test]
    fn logged_values_are_bounded_and_escaped() {
        let err = parse(&format!("x\n{}", "y".repeat(500)), -1).unwrap_err();
        assert!(err.contains("x\\ny") && err.len() < 200, "{err}");
    }
}
