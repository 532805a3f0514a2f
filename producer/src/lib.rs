//! The SecFlow producer: turns requests into task messages and publishes them with publisher
//! confirms and `mandatory`, so a task either reaches a work queue or the caller gets an error.

pub mod events;
pub mod publish;

pub use publish::{PublishError, PublishRequest, publish_tasks};
