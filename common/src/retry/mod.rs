//! Retry policies: when a failed task is tried again, and how long it waits.
//!
//! The schedule ([`backoff`]) is kept apart from the decision of whether to retry at all,
//! which the worker's disposition makes from the error class and the attempt count.

pub mod backoff;
pub mod policy;

pub use backoff::{Jitter, Strategy};
pub use policy::RetryPolicy;
