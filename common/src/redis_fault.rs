//! What a failed Redis command says about Redis: unreachable (a connection failure, a server
//! that cannot serve) or a bad value (the key holds something the command or script refuses).
//! Shared by the worker's store and the run store, so both tell an outage from corrupted state
//! the same way.

use deadpool_redis::redis::{ErrorKind, RedisError, ServerErrorKind};

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
