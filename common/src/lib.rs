//! Shared pieces of the SecFlow fleet: the task envelope, header names, error classes, retry
//! policies, broker configuration and connection helpers, and the one module that declares the
//! RabbitMQ topology.

pub mod amqp;
pub mod audit;
pub mod bookkeeping;
pub mod broker_list;
pub mod config;
pub mod control;
pub mod dead_letter;
pub mod deadline;
pub mod duration;
pub mod envelope;
pub mod error;
pub mod events;
pub mod headers;
pub mod hooks;
pub mod logging;
pub mod nodes;
pub mod rawamqp;
pub mod recipe;
pub mod redact;
pub mod redis_fault;
pub mod redis_pool;
pub mod retry;
pub mod runs;
pub mod severity;
pub mod signing;
pub mod task_error;
pub mod tools;
pub mod topology;
pub mod trace;
pub mod utc;

pub use envelope::TaskEnvelope;
pub use error::{Error, Result};
pub use task_error::{ErrorClass, TaskError};
pub use topology::Topology;

/// Milliseconds since the Unix epoch, the time unit of every timestamp SecFlow writes.
pub fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}
