//! The SecFlow worker: consumes tasks from its pool's work queue, runs the handler of each
//! task's type, and settles every delivery (ack, retry through a delay queue, or dead-letter).

pub mod breaker;
pub mod chaos;
pub mod checkpoint;
pub mod classify;
pub mod config;
pub mod controls;
pub mod disposition;
pub mod events;
pub mod fallback;
pub mod fingerprint;
pub mod fleet;
pub mod handlers;
pub mod hooks;
pub mod idempotency;
pub mod meta;
pub mod observe;
pub mod poison;
pub mod policies;
pub mod report;
pub mod run;
pub mod settle;
pub mod stats;
pub mod store;
mod task;
pub mod workflow;

pub use config::WorkerConfig;
pub use run::{WorkerError, run, run_with_stats};
pub use stats::WorkerStats;
