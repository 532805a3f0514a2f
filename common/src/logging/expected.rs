//! Lines the AMQP client logs as errors for what its caller expected and handles.
//!
//! The client logs every channel the broker closes at `ERROR` ("Channel closed"), and also hands
//! the error to the call that caused it. A passive declare of a queue that may not exist (the
//! worker looks for the hooks queue every 30 s, the inspector and the tests look for queues) is
//! answered by closing the channel with `NOT_FOUND`: the caller expects that and treats it as
//! "no such queue", so the client's `ERROR` line only alarms whoever reads the log. Those lines
//! are dropped; every other channel close is still logged.

use std::fmt;
use tracing::{
    Event, Subscriber,
    field::{Field, Visit},
};
use tracing_subscriber::layer::Context;

/// The layer dropping the client's `NOT_FOUND` channel-close lines.
pub(super) struct QuietNotFound;

/// Whether an event's fields are the client's "Channel closed" with a `NOT_FOUND` error.
#[derive(Default)]
struct Look {
    channel_closed: bool,
    not_found: bool,
}

impl Visit for Look {
    fn record_str(&mut self, field: &Field, value: &str) {
        if field.name() == "message" {
            self.channel_closed = value == "Channel closed";
        }
    }

    fn record_debug(&mut self, field: &Field, value: &dyn fmt::Debug) {
        match field.name() {
            "message" => self.channel_closed = format!("{value:?}") == "Channel closed",
            "error" => self.not_found = format!("{value:?}").contains("NOTFOUND"),
            _ => {}
        }
    }
}

impl<S: Subscriber> tracing_subscriber::Layer<S> for QuietNotFound {
    fn event_enabled(&self, event: &Event<'_>, _ctx: Context<'_, S>) -> bool {
        if !event.metadata().target().starts_with("lapin") {
            return true;
        }
        let mut look = Look::default();
        event.record(&mut look);
        !(look.channel_closed && look.not_found)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::{
        Arc,
        atomic::{AtomicUsize, Ordering},
    };
    use tracing_subscriber::layer::SubscriberExt as _;

    /// Counts the events that reach it.
    struct Count(Arc<AtomicUsize>);

    impl<S: Subscriber> tracing_subscriber::Layer<S> for Count {
        fn on_event(&self, _event: &Event<'_>, _ctx: Context<'_, S>) {
            self.0.fetch_add(1, Ordering::Relaxed);
        }
    }

    /// Debug-prints as the client's error kinds do.
    #[derive(Debug)]
    #[allow(dead_code, clippy::upper_case_acronyms)]
    enum Kind {
        NOTFOUND,
        PRECONDITIONFAILED,
    }

    /// Proves: the client's "Channel closed" line for `NOT_FOUND` is dropped; the same line
    /// for another error, and any other line, still gets through.
    #[test]
    fn only_not_found_channel_closes_are_dropped() {
        let seen = Arc::new(AtomicUsize::new(0));
        let subscriber = tracing_subscriber::registry()
            .with(Count(Arc::clone(&seen)))
            .with(QuietNotFound);
        tracing::subscriber::with_default(subscriber, || {
            let error = Kind::NOTFOUND;
            tracing::error!(target: "lapin::channel", channel = 1, ?error, "Channel closed");
            assert_eq!(seen.load(Ordering::Relaxed), 0, "NOT_FOUND close dropped");
            let error = Kind::PRECONDITIONFAILED;
            tracing::error!(target: "lapin::channel", channel = 1, ?error, "Channel closed");
            assert_eq!(seen.load(Ordering::Relaxed), 1, "other closes kept");
            let error = Kind::NOTFOUND;
            tracing::error!(target: "secflow_worker", ?error, "Channel closed");
            tracing::error!(target: "lapin::channel", ?error, "something else");
            assert_eq!(seen.load(Ordering::Relaxed), 3, "other lines kept");
        });
    }
}
