//! A service's shared breaker state as the workers store it (`VERSION|JSON` under
//! `sf:{ns:breaker:SERVICE}`), read leniently: fields this version does not know are ignored.
//! Pure: no clock, no I/O.

use serde::{Deserialize, Serialize};

/// Where a stored breaker is.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Mode {
    /// Calls go through; failures are counted.
    Closed,
    /// Calls are deferred until `opened_at_ms + open_ms`.
    Open,
    /// A few probes go through to test the service.
    HalfOpen,
}

impl Mode {
    /// The mode as the state writes it.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Closed => "closed",
            Self::Open => "open",
            Self::HalfOpen => "half_open",
        }
    }
}

/// The fields of a stored breaker state the inspector shows and decides on.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct StoredBreaker {
    /// Current mode.
    pub mode: Mode,
    /// Times of the failures counted in its window (ms since the epoch).
    #[serde(default)]
    pub failures: Vec<u64>,
    /// When it last opened.
    #[serde(default)]
    pub opened_at_ms: u64,
    /// How long this opening lasts.
    #[serde(default)]
    pub open_ms: u64,
    /// Probes out (half-open).
    #[serde(default)]
    pub probes: u32,
    /// Successful probes so far (half-open).
    #[serde(default)]
    pub successes: u32,
}

impl StoredBreaker {
    /// When an open breaker lets its next task through as a probe.
    pub fn open_until_ms(&self) -> u64 {
        self.opened_at_ms.saturating_add(self.open_ms)
    }

    /// `open_until_ms` when open, else nothing.
    pub fn open_until(&self) -> Option<u64> {
        (self.mode == Mode::Open).then(|| self.open_until_ms())
    }
}

/// Parses a stored record, `<version>|<state JSON>`; the error says what is wrong with it.
pub fn parse_record(raw: &str) -> Result<StoredBreaker, String> {
    let (version, json) = raw
        .split_once('|')
        .ok_or("not `<version>|<json>` (the workers repair it on their next call)")?;
    if version.is_empty() || !version.bytes().all(|b| b.is_ascii_digit()) {
        return Err(format!(
            "version `{}` is not a number",
            version.escape_default()
        ));
    }
    serde_json::from_str(json).map_err(|e| format!("state is unreadable: {e}"))
}

/// The service a breaker key of namespace `ns` belongs to (`sf:{ns:breaker:SERVICE}`).
pub fn service_of_key<'k>(ns: &str, key: &'k str) -> Option<&'k str> {
    key.strip_prefix("sf:{")?
        .strip_prefix(ns)?
        .strip_prefix(":breaker:")?
        .strip_suffix('}')
        .filter(|s| !s.is_empty())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_worker_records_and_ignores_unknown_fields() {
        let b = parse_record(
            r#"7|{"mode":"open","failures":[1,2,3],"opened_at_ms":1000,"open_ms":500,"probes":0,"successes":0,"later":true}"#,
        )
        .unwrap();
        assert_eq!(b.mode, Mode::Open);
        assert_eq!((b.failures.len(), b.open_until()), (3, Some(1_500)));
        let half = parse_record(r#"1|{"mode":"half_open"}"#).unwrap();
        assert_eq!((half.mode, half.open_until()), (Mode::HalfOpen, None));
        assert!(parse_record("{}").unwrap_err().contains("<version>"));
        assert!(parse_record("x|{}").unwrap_err().contains("not a number"));
        assert!(
            parse_record(r#"1|{"mode":"ajar"}"#)
                .unwrap_err()
                .contains("unreadable")
        );
    }

    #[test]
    fn a_key_names_its_service() {
        assert_eq!(
            service_of_key("ns", "sf:{ns:breaker:nvd.api}"),
            Some("nvd.api")
        );
        assert_eq!(service_of_key("ns", "sf:{ns2:breaker:nvd}"), None);
        assert_eq!(service_of_key("ns", "sf:{ns:breaker:}"), None);
        assert_eq!(service_of_key("ns", "sf:{ns:task:x}"), None);
    }
}
