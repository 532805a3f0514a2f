//! Cancelling a run's running nodes: each worker hears `run.cancelled` and stops its own.

use std::{
    collections::HashMap,
    sync::{Arc, Mutex},
};
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

/// Cancellation tokens of the runs this worker has nodes of in flight.
#[derive(Default)]
pub struct RunCancels {
    runs: Mutex<HashMap<Uuid, (CancellationToken, usize)>>,
}

impl RunCancels {
    /// A token cancelled if `run` is cancelled while the caller holds it; release with
    /// [`RunCancels::release`].
    pub fn enter(&self, run: Uuid) -> CancellationToken {
        let mut runs = self
            .runs
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let entry = runs
            .entry(run)
            .or_insert_with(|| (CancellationToken::new(), 0));
        entry.1 += 1;
        entry.0.clone()
    }

    /// Ends a holder of `run`'s token.
    pub fn release(&self, run: Uuid) {
        let mut runs = self
            .runs
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if let Some(entry) = runs.get_mut(&run) {
            entry.1 -= 1;
            if entry.1 == 0 {
                runs.remove(&run);
            }
        }
    }

    /// Stops this worker's running nodes of `run`.
    pub fn cancel(&self, run: Uuid) {
        let runs = self
            .runs
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if let Some((token, n)) = runs.get(&run) {
            tracing::warn!(%run, running = n, "run cancelled: stopping its running nodes");
            token.cancel();
        }
    }
}

/// Listens for `run.cancelled` events and stops this worker's running nodes of those runs.
pub async fn listen_for_cancels(
    conn: &lapin::Connection,
    topology: &secflow_common::Topology,
    cancels: Arc<RunCancels>,
) -> secflow_common::Result<()> {
    use futures_util::StreamExt;
    let ch = conn.create_channel().await?;
    let mut events = secflow_common::events::subscribe(&ch, topology, "run.cancelled").await?;
    tokio::spawn(async move {
        let _ch = ch;
        while let Some(Ok(delivery)) = events.next().await {
            for event in secflow_common::events::decode(&delivery.data).unwrap_or_default() {
                if let Some(run) = event.run_id {
                    cancels.cancel(run);
                }
            }
        }
    });
    Ok(())
}
