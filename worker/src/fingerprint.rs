//! Failure fingerprints: the same failure, told apart from its incidental details, so the
//! fleet can see one cause failing over and over.

use regex::Regex;
use sha2::{Digest, Sha256};
use std::sync::LazyLock;

/// Hex SHA-256 of the node type, the error class and the normalised message.
pub fn fingerprint(node_type: &str, class: &str, message: &str) -> String {
    let mut hasher = Sha256::new();
    for part in [node_type, class, &normalise(message)] {
        hasher.update(part.as_bytes());
        hasher.update([0u8]);
    }
    hex::encode(hasher.finalize())
}

/// Lowercase, numbers and hex identifiers replaced by `#`, whitespace collapsed, first 200
/// characters: "timeout after 3012 ms on 10.0.0.7" and "... 2987 ms on 10.0.0.9" agree.
pub fn normalise(message: &str) -> String {
    static HEX: LazyLock<Regex> =
        LazyLock::new(|| Regex::new(r"[0-9a-f]*[0-9][0-9a-f]*").unwrap_or_else(|_| unreachable!()));
    let lower = message.to_lowercase();
    let replaced = HEX.replace_all(&lower, "#");
    replaced
        .split_whitespace()
        .collect::<Vec<_>>()
        .join(" ")
        .chars()
        .take(200)
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn incidental_details_do_not_change_the_fingerprint() {
        let a = fingerprint(
            "http",
            "transient",
            "GET http://10.0.0.7:8080/x timed out after 3012 ms (req 9f86d081884c7d65)",
        );
        let b = fingerprint(
            "http",
            "transient",
            "GET  http://10.0.0.9:8081/x timed out after 2987 ms (req 1b4f0e9851971998)",
        );
        assert_eq!(a, b);
        assert_ne!(
            a,
            fingerprint(
                "exec",
                "transient",
                "GET http://10.0.0.7:8080/x timed out after 3012 ms"
            )
        );
        assert_ne!(a, fingerprint("http", "transient", "connection refused"));
    }

    #[test]
    fn normalises_numbers_hex_and_space() {
        assert_eq!(normalise("Error  42 at\tdeadbeef00 x1"), "error # at # x#");
        assert_eq!(normalise("req 9f86d081884c7d65)"), "req #)");
    }
}
