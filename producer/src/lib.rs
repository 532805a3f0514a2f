//! The SecFlow producer: turns requests into task messages and publishes them with publisher
//! confirms and `mandatory`, so a task either reaches a work queue or the caller gets an error.

pub mod control;
pub mod events;
pub mod follow_run;
pub mod publish;
pub mod recipes;

pub use publish::{PublishError, PublishRequest, publish_tasks};

use secflow_common::{
    Result, Topology, amqp,
    config::BrokerArgs,
    deadline::{BROKER_OP, within},
};
use std::time::Duration;

/// Validates the settings, connects (retrying up to `--connect-timeout-secs`) and declares the
/// exchanges: what every producer command does first.
pub async fn connect(
    broker: &BrokerArgs,
    client_name: &str,
) -> Result<(lapin::Connection, Topology)> {
    let timeout = Duration::from_secs(broker.connect_timeout_secs);
    connect_within(broker, client_name, timeout).await
}

/// [`connect`], retrying for at most `timeout` (what is left of an outage's budget).
pub async fn connect_within(
    broker: &BrokerArgs,
    client_name: &str,
    timeout: Duration,
) -> Result<(lapin::Connection, Topology)> {
    broker.validate()?;
    let topology = Topology::new(broker.namespace()?, broker.delivery_limit);
    let conn = amqp::connect(&broker.amqp_url, client_name, timeout).await?;
    let declared = async {
        let ch = within("a new channel", BROKER_OP, conn.create_channel()).await??;
        within(
            "declaring the exchanges",
            BROKER_OP,
            topology.declare_core(&ch),
        )
        .await??;
        let _ = within(
            "closing a channel",
            BROKER_OP,
            ch.close(200, "declared".into()),
        )
        .await;
        Ok(())
    }
    .await;
    if let Err(e) = declared {
        amqp::close(&conn, "declare failed").await;
        return Err(e);
    }
    Ok((conn, topology))
}
