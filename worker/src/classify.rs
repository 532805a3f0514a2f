//! First rule set for untyped failures: exit codes, HTTP statuses, io error kinds and text.
//!
//! Pure functions, no I/O. Handlers that know their error type return a [`TaskError`] directly;
//! these rules are for what arrives as a number or a line of text.

use secflow_common::{ErrorClass, TaskError};
use std::io;

/// A text rule: any of `needles` (lowercase) found in the message gives `class` with `code`.
struct TextRule {
    needles: &'static [&'static str],
    class: ErrorClass,
    code: &'static str,
}

/// Ordered: the first rule that matches wins, so specific rules come before general ones.
const TEXT_RULES: &[TextRule] = &[
    TextRule {
        needles: &["no space left on device", "disk quota exceeded"],
        class: ErrorClass::Resource,
        code: "disk_full",
    },
    TextRule {
        needles: &[
            "out of memory",
            "cannot allocate memory",
            "memoryerror",
            "oom-kill",
        ],
        class: ErrorClass::Resource,
        code: "out_of_memory",
    },
    TextRule {
        needles: &["too many open files"],
        class: ErrorClass::Resource,
        code: "fd_exhausted",
    },
    TextRule {
        needles: &[
            "certificate",
            "tls handshake",
            "ssl handshake",
            "ssl routines",
        ],
        class: ErrorClass::Permanent,
        code: "tls",
    },
    TextRule {
        needles: &[
            "429 too many requests",
            "rate limit",
            "too many requests",
            "throttl",
        ],
        class: ErrorClass::Transient,
        code: "rate_limited",
    },
    TextRule {
        needles: &[
            "unauthorized",
            "authentication failed",
            "invalid credentials",
            "401 ",
        ],
        class: ErrorClass::Permanent,
        code: "auth",
    },
    TextRule {
        needles: &[
            "permission denied",
            "operation not permitted",
            "access denied",
            "forbidden",
        ],
        class: ErrorClass::Permanent,
        code: "permission_denied",
    },
    TextRule {
        needles: &[
            "could not resolve host",
            "name or service not known",
            "temporary failure in name resolution",
            "no address associated",
            "dns",
        ],
        class: ErrorClass::Transient,
        code: "dns",
    },
    TextRule {
        needles: &[
            "connection refused",
            "connection reset",
            "broken pipe",
            "network is unreachable",
            "no route to host",
            "connection aborted",
            "unexpected eof",
        ],
        class: ErrorClass::Transient,
        code: "network",
    },
    TextRule {
        needles: &["timed out", "timeout", "deadline exceeded"],
        class: ErrorClass::Transient,
        code: "timeout",
    },
    TextRule {
        needles: &[
            "temporarily unavailable",
            "try again",
            "service unavailable",
            "503",
        ],
        class: ErrorClass::Transient,
        code: "unavailable",
    },
    TextRule {
        needles: &["no such file or directory", "not found"],
        class: ErrorClass::Permanent,
        code: "not_found",
    },
    TextRule {
        needles: &[
            "invalid argument",
            "invalid option",
            "unknown option",
            "unrecognized option",
            "usage:",
            "invalid input",
            "invalid config",
            "parse error",
            "syntax error",
        ],
        class: ErrorClass::Validation,
        code: "invalid_input",
    },
];

/// Classifies a message by the first text rule it matches.
pub fn by_text(message: &str) -> Option<(ErrorClass, &'static str)> {
    let lower = message.to_lowercase();
    TEXT_RULES
        .iter()
        .find(|r| r.needles.iter().any(|n| lower.contains(n)))
        .map(|r| (r.class, r.code))
}

/// Classifies a process exit: stderr text first (it says more), then the exit code or signal.
pub fn exit(code: Option<i32>, signal: Option<i32>, stderr: &str) -> TaskError {
    let tail = last_line(stderr);
    let status = match (code, signal) {
        (Some(c), _) => format!("exit code {c}"),
        (None, Some(s)) => format!("killed by signal {s}"),
        (None, None) => "no exit status".to_string(),
    };
    let message = if tail.is_empty() {
        status.clone()
    } else {
        format!("{status}: {tail}")
    };
    if let Some((class, code)) = by_text(stderr) {
        return TaskError::new(class, code, message);
    }
    let (class, code) = match (code, signal) {
        // SIGKILL from outside is most often the OOM killer.
        (None, Some(9)) => (ErrorClass::Resource, "killed"),
        (None, Some(_)) => (ErrorClass::Transient, "signalled"),
        (Some(124), _) => (ErrorClass::Transient, "timeout"),
        (Some(126), _) => (ErrorClass::Permanent, "not_executable"),
        (Some(127), _) => (ErrorClass::Validation, "command_not_found"),
        (Some(137), _) => (ErrorClass::Resource, "killed"),
        (Some(2 | 64 | 65 | 78), _) => (ErrorClass::Validation, "usage"),
        (Some(69 | 75), _) => (ErrorClass::Transient, "unavailable"),
        (Some(77), _) => (ErrorClass::Permanent, "permission_denied"),
        _ => (ErrorClass::Unknown, "exit_nonzero"),
    };
    TaskError::new(class, code, message)
}

/// Classifies an HTTP status that is not a success.
pub fn http_status(status: u16) -> (ErrorClass, &'static str) {
    match status {
        408 => (ErrorClass::Transient, "http_timeout"),
        429 => (ErrorClass::Transient, "rate_limited"),
        502..=504 => (ErrorClass::Transient, "http_unavailable"),
        507 => (ErrorClass::Resource, "http_insufficient_storage"),
        401 | 403 => (ErrorClass::Permanent, "http_auth"),
        400..=499 => (ErrorClass::Permanent, "http_client_error"),
        // A 500 is often a deterministic bug, sometimes a blip: retry once.
        _ => (ErrorClass::Unknown, "http_server_error"),
    }
}

/// Classifies an io error by its kind.
pub fn io_error(err: &io::Error) -> ErrorClass {
    use io::ErrorKind as K;
    match err.kind() {
        K::ConnectionRefused
        | K::ConnectionReset
        | K::ConnectionAborted
        | K::NotConnected
        | K::BrokenPipe
        | K::TimedOut
        | K::Interrupted
        | K::WouldBlock
        | K::UnexpectedEof
        | K::AddrInUse
        | K::AddrNotAvailable
        | K::NetworkUnreachable
        | K::HostUnreachable => ErrorClass::Transient,
        K::StorageFull | K::OutOfMemory | K::QuotaExceeded => ErrorClass::Resource,
        K::InvalidInput | K::InvalidData => ErrorClass::Validation,
        K::NotFound | K::PermissionDenied | K::Unsupported | K::ReadOnlyFilesystem => {
            ErrorClass::Permanent
        }
        _ => by_text(&err.to_string()).map_or(ErrorClass::Unknown, |(c, _)| c),
    }
}

fn last_line(text: &str) -> &str {
    text.lines()
        .rev()
        .find(|l| !l.trim().is_empty())
        .unwrap_or("")
        .trim()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn text_rules_pick_the_specific_class() {
        assert_eq!(
            by_text("curl: (6) Could not resolve host: example.invalid").map(|r| r.0),
            Some(ErrorClass::Transient)
        );
        assert_eq!(
            by_text("write /tmp/x: No space left on device").map(|r| r.1),
            Some("disk_full")
        );
        assert_eq!(
            by_text("open /etc/shadow: Permission denied").map(|r| r.0),
            Some(ErrorClass::Permanent)
        );
        assert_eq!(
            by_text("error: unrecognized option '--bogus'").map(|r| r.0),
            Some(ErrorClass::Validation)
        );
        assert_eq!(by_text("all good"), None);
    }

    #[test]
    fn exit_codes_and_signals() {
        assert_eq!(exit(Some(127), None, "").class, ErrorClass::Validation);
        assert_eq!(exit(None, Some(9), "").class, ErrorClass::Resource);
        let e = exit(
            Some(1),
            None,
            "warming up\ncurl: (7) Failed to connect: Connection refused\n",
        );
        assert_eq!(
            (e.class, e.code.as_str()),
            (ErrorClass::Transient, "network")
        );
        assert!(e.message.ends_with("Connection refused"), "{}", e.message);
        assert_eq!(exit(Some(3), None, "").class, ErrorClass::Unknown);
    }

    #[test]
    fn http_statuses() {
        for s in [429, 502, 503, 504] {
            assert_eq!(http_status(s).0, ErrorClass::Transient, "{s}");
        }
        for s in [400, 401, 404, 410, 422] {
            assert_eq!(http_status(s).0, ErrorClass::Permanent, "{s}");
        }
        assert_eq!(http_status(500).0, ErrorClass::Unknown);
    }

    #[test]
    fn io_kinds() {
        assert_eq!(
            io_error(&io::Error::from(io::ErrorKind::ConnectionRefused)),
            ErrorClass::Transient
        );
        assert_eq!(
            io_error(&io::Error::from(io::ErrorKind::StorageFull)),
            ErrorClass::Resource
        );
        assert_eq!(
            io_error(&io::Error::from(io::ErrorKind::NotFound)),
            ErrorClass::Permanent
        );
    }
}
