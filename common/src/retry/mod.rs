//! Retry policies: when a failed task is tried again, and how long it waits; and the one
//! reconnect backoff ([`reconnect`]) of every client that lost RabbitMQ.
//!
//! The schedule ([`backoff`]) is kept apart from the decision of whether to retry at all,
//! which the worker's disposition makes from the error class and the attempt count.

pub mod backoff;
pub mod policy;
pub mod reconnect;

pub use backoff::{Jitter, Strategy};
pub use policy::RetryPolicy;
pub use reconnect::{ReconnectBackoff, ReconnectBackoffError};
