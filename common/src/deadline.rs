//! Deadlines for every wait on the outside world: no broker operation and no Redis call is
//! awaited without one.
//!
//! [`within`] bounds one future and turns an expiry into [`Error::Timeout`], which names what
//! was waited for and counts as transient ([`Error::is_transient`]): the caller treats it like
//! a lost connection. The constants are the deadlines the fleet uses unless a caller has a
//! better one (the confirm of a publish, [`crate::amqp::CONFIRM_TIMEOUT`], has its own).

use crate::{Error, Result};
use std::{future::Future, time::Duration};

/// Longest wait for one broker operation: channel open or close, confirm mode, declare, bind,
/// consume, cancel, delete.
pub const BROKER_OP: Duration = Duration::from_secs(10);

/// Longest wait for one Redis call of the producer (the run store answers in milliseconds; a
/// Redis that takes this long is treated as unreachable).
pub const REDIS_OP: Duration = Duration::from_secs(5);

/// Longest wait for closing a connection politely; after it the connection is dropped.
pub const CLOSE: Duration = Duration::from_secs(3);

/// Awaits `fut` for at most `after`: its output, or [`Error::Timeout`] naming `what` (e.g.
/// "opening a channel"). The output is returned as is, so a fallible operation reads
/// `within(..).await??` (the outer `?` for the deadline, the inner one for its own error).
pub async fn within<F: Future>(what: &str, after: Duration, fut: F) -> Result<F::Output> {
    within_lazy(|| what.to_string(), after, fut).await
}

/// [`within`] for hot paths: `what` is only built when the deadline passes, so a publish that
/// is confirmed in time allocates nothing for it.
pub async fn within_lazy<F: Future>(
    what: impl FnOnce() -> String,
    after: Duration,
    fut: F,
) -> Result<F::Output> {
    tokio::time::timeout(after, fut)
        .await
        .map_err(|_| Error::Timeout {
            what: what(),
            after,
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    const SHORT: Duration = Duration::from_millis(10);

    #[tokio::test]
    async fn a_future_that_never_ends_times_out_naming_what_it_waited_for() {
        let err = within(
            "the answer of a stalled broker",
            SHORT,
            std::future::pending::<()>(),
        )
        .await
        .unwrap_err();
        assert!(matches!(err, Error::Timeout { after, .. } if after == SHORT));
        assert!(err.is_transient());
        assert!(
            err.to_string().contains("the answer of a stalled broker"),
            "{err}"
        );
    }

    #[tokio::test]
    async fn a_prompt_answer_is_returned_unchanged() {
        let out = within("an answer", REDIS_OP, async { Ok::<u8, String>(7) }).await;
        assert_eq!(out.unwrap(), Ok(7));
    }
}
