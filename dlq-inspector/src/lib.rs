//! The DLQ inspector: review, requeue, export and purge a namespace's dead-lettered tasks
//! without ever losing one (see [`session`] for how), and the operator's fleet controls
//! ([`controls`]).

pub mod actions;
pub mod analytics;
pub mod announce;
pub mod breaker_state;
pub mod cli;
pub mod console;
pub mod control_view;
pub mod controls;
pub mod dlq_cmd;
pub mod filter;
pub mod fleet;
pub mod gate;
pub mod notify;
pub mod pace;
pub mod record;
pub mod report;
pub mod session;
pub mod trail;

pub use session::{InspectorError, Session};
