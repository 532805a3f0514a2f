//! The DLQ inspector: review, requeue, export and purge a namespace's dead-lettered tasks
//! without ever losing one (see [`session`] for how).

pub mod actions;
pub mod filter;
pub mod record;
pub mod report;
pub mod session;

pub use session::{InspectorError, Session};
