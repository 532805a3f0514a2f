//! Errors of the shared layer, worded for the operator who has to act on them.

use thiserror::Error;

/// Result with the shared [`Error`].
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// What can go wrong talking to the broker or with configuration.
#[derive(Debug, Error)]
pub enum Error {
    /// The broker could not be reached before the deadline.
    #[error("cannot reach RabbitMQ at {url}: {source} (is it running? check AMQP_URL)")]
    Connect {
        /// The broker URL with the password redacted.
        url: String,
        /// The last connection error.
        source: lapin::Error,
    },
    /// A queue or exchange already exists with other settings.
    #[error(
        "{kind} `{name}` already exists with different settings ({detail}); \
         run every binary with the same --delivery-limit, or delete it if it is a leftover"
    )]
    TopologyConflict {
        /// "queue" or "exchange".
        kind: &'static str,
        /// Its name.
        name: String,
        /// The broker's reply text.
        detail: String,
    },
    /// The broker refused a message because no queue is bound for its routing key.
    #[error(
        "no queue is bound for routing key `{routing_key}` on exchange `{exchange}`: \
         start a worker pool that handles it (worker --bind)"
    )]
    Unroutable {
        /// Exchange published to.
        exchange: String,
        /// Routing key that matched nothing.
        routing_key: String,
    },
    /// The broker negatively acknowledged a publish (it could not store it).
    #[error(
        "RabbitMQ refused to store a message for `{exchange}`/`{routing_key}` (nack): retry later"
    )]
    Nacked {
        /// Exchange published to.
        exchange: String,
        /// Routing key used.
        routing_key: String,
    },
    /// The broker or Redis did not answer in time (see [`crate::deadline::within`]).
    #[error(
        "gave up after {after:?} waiting for {what}: is the service up and reachable, and not \
         overloaded?"
    )]
    Timeout {
        /// What was waited for.
        what: String,
        /// How long.
        after: std::time::Duration,
    },
    /// The connection to the broker was lost (broker restarted or stopped, network cut): not
    /// a configuration error; reconnecting may succeed.
    #[error("lost the connection to RabbitMQ while {0}: it reconnects when the broker is back")]
    ConnectionLost(String),
    /// Lifecycle events could not be published (their publisher lost its channel).
    #[error("publishing lifecycle events failed: {0}")]
    Events(String),
    /// A message is over the size limit.
    #[error("{what} is {bytes} bytes, over the {limit}-byte message limit (--max-message-bytes)")]
    TooLarge {
        /// What was too large.
        what: String,
        /// Its size.
        bytes: usize,
        /// The limit.
        limit: usize,
    },
    /// A configuration value is invalid.
    #[error("invalid configuration: {0}")]
    Config(String),
    /// The broker refused the login: the credentials or the vhost are wrong.
    #[error(
        "RabbitMQ at {url} refused the login: {reason} (check the user, password and vhost in AMQP_URL)"
    )]
    Login {
        /// The broker URL with the password redacted.
        url: String,
        /// The broker's reply.
        reason: String,
    },
    /// Any other broker error.
    #[error("RabbitMQ error: {0}")]
    Amqp(#[from] lapin::Error),
}

/// Whether the broker refused an operation for a reason that another try cannot change: a
/// login or permission refusal, an argument that conflicts with what exists.
pub fn refused_for_good(e: &lapin::Error) -> bool {
    use lapin::protocol::{AMQPErrorKind, AMQPHardError, AMQPSoftError};
    match e.kind() {
        lapin::ErrorKind::ProtocolError(amqp) => matches!(
            amqp.kind(),
            AMQPErrorKind::Soft(AMQPSoftError::ACCESSREFUSED | AMQPSoftError::PRECONDITIONFAILED)
                | AMQPErrorKind::Hard(AMQPHardError::NOTALLOWED)
        ),
        lapin::ErrorKind::InvalidProtocolVersion(_) | lapin::ErrorKind::AuthProviderError(_) => {
            true
        }
        _ => false,
    }
}

impl Error {
    /// Whether the client dropped the connection because it could not parse what the broker
    /// sent (a message whose names are not UTF-8: see [`crate::rawamqp`]).
    pub fn is_unparseable_frame(&self) -> bool {
        matches!(self, Self::Amqp(e) if matches!(e.kind(), lapin::ErrorKind::ParsingError(_)))
    }

    /// Whether trying again on a new connection may succeed (lost connection, broker busy),
    /// as opposed to a mistake that repeats (unroutable, too large, bad settings).
    pub fn is_transient(&self) -> bool {
        matches!(
            self,
            Self::Connect { .. }
                | Self::ConnectionLost(_)
                | Self::Nacked { .. }
                | Self::Timeout { .. }
                | Self::Events(_)
        ) || matches!(self, Self::Amqp(e) if !refused_for_good(e))
    }
}
