//! Why a Redis call failed: Redis unreachable (the worker degrades) or one key holding state
//! the worker cannot use (only the task or service of that key is affected).

use deadpool_redis::redis::{ErrorKind, RedisError, ServerErrorKind};

/// Why a store call did not give an answer.
#[derive(Clone, Debug, thiserror::Error)]
pub enum StoreError {
    /// Redis is known to be unreachable; the call was not attempted.
    #[error("Redis is unreachable (working on local state)")]
    Degraded,
    /// Redis did not answer: connection refused, reset or dropped, timeout, no pooled
    /// connection in time, or the server cannot serve (loading, read-only, cluster down).
    #[error("Redis unreachable: {0}")]
    Unreachable(String),
    /// Redis answered, but one key's value is unusable. Never a reason to degrade.
    #[error(transparent)]
    Corrupted(#[from] StateCorrupted),
}

/// One key holds a value of the wrong type or in no format this worker writes.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error(
    "corrupted state in Redis key `{key}`: {detail} (inspect it with `redis-cli GET {key}` / `TYPE {key}`; delete it to let the task run again)"
)]
pub struct StateCorrupted {
    /// The key.
    pub key: String,
    /// What is wrong with it.
    pub detail: String,
}

/// What a failed command says about Redis.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Fault {
    /// Redis is not answering: degrade.
    Unreachable,
    /// Redis answered that the value is unusable (WRONGTYPE, a Lua error on it, a reply of a
    /// type the caller did not expect): only the key is affected.
    BadValue,
}

/// Classifies a failed command by the error's kind.
pub fn classify(e: &RedisError) -> Fault {
    if e.is_io_error() || e.is_connection_dropped() || e.is_timeout() || e.is_connection_refusal() {
        return Fault::Unreachable;
    }
    match e.kind() {
        // `ERR ...`: the command or script ran and refused the value (a Lua error on a garbage
        // value, `INCR` on a non-integer).
        ErrorKind::Server(ServerErrorKind::ResponseError) | ErrorKind::UnexpectedReturnType => {
            Fault::BadValue
        }
        // Server errors the client library does not name, such as WRONGTYPE.
        ErrorKind::Extension if e.code() == Some("WRONGTYPE") => Fault::BadValue,
        // Loading, read-only replica, cluster down, OOM, auth, protocol: Redis cannot serve.
        _ => Fault::Unreachable,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn server_error(line: &str) -> RedisError {
        let (code, detail) = line.split_once(' ').unwrap_or((line, ""));
        deadpool_redis::redis::make_extension_error(code.to_string(), Some(detail.to_string()))
    }

    #[test]
    fn io_failures_are_outages() {
        let refused = RedisError::from(std::io::Error::from(std::io::ErrorKind::ConnectionRefused));
        assert_eq!(classify(&refused), Fault::Unreachable);
        let reset = RedisError::from(std::io::Error::from(std::io::ErrorKind::ConnectionReset));
        assert_eq!(classify(&reset), Fault::Unreachable);
        let timeout = RedisError::from(std::io::Error::from(std::io::ErrorKind::TimedOut));
        assert_eq!(classify(&timeout), Fault::Unreachable);
    }

    #[test]
    fn wrong_type_is_a_bad_value() {
        let e = server_error("WRONGTYPE Operation against a key holding the wrong kind of value");
        assert_eq!(classify(&e), Fault::BadValue);
        let script = RedisError::from((
            ErrorKind::Server(ServerErrorKind::ResponseError),
            "user_script:7: attempt to perform arithmetic on a nil value",
        ));
        assert_eq!(classify(&script), Fault::BadValue);
        assert_eq!(
            classify(&server_error("OOM command not allowed")),
            Fault::Unreachable
        );
        let loading = RedisError::from((
            ErrorKind::Server(ServerErrorKind::BusyLoading),
            "loading the dataset",
        ));
        assert_eq!(classify(&loading), Fault::Unreachable);
    }
}
