//! The SecFlow producer: turns requests into task messages and publishes them with publisher
//! confirms and `mandatory`, so a task either reaches a work queue or the caller gets an error.

pub mod events;
pub mod publish;
pub mod recipes;

pub use publish::{PublishError, PublishRequest, publish_tasks};

use secflow_common::{Result, Topology, amqp, config::BrokerArgs};

/// Validates the settings, connects and declares the exchanges: what every producer command
/// does first.
pub async fn connect(
    broker: &BrokerArgs,
    client_name: &str,
) -> Result<(lapin::Connection, Topology)> {
    broker.validate()?;
    let topology = Topology::new(broker.namespace()?, broker.delivery_limit);
    let timeout = std::time::Duration::from_secs(broker.connect_timeout_secs);
    let conn = amqp::connect(&broker.amqp_url, client_name, timeout).await?;
    let ch = conn.create_channel().await?;
    topology.declare_core(&ch).await?;
    let _ = ch.close(200, "declared".into()).await;
    Ok((conn, topology))
}
