//! Following one run until it ends, across lost broker connections: what `producer watch` and
//! `submit --wait` wait with.
//!
//! Events are only a fast path: the run's state in the run store (Redis) is the truth. So the
//! follower subscribes first and reads the state second (no end falls between the two), and
//! after a lost connection it reconnects with the shared [`ReconnectBackoff`], subscribes again
//! and reads the state again: an end published while it was disconnected is found in the store.
//! It also reads the state every [`STATE_POLL`] while subscribed, in case an end event was
//! never published. An outage longer than `--connect-timeout-secs` ends it with
//! [`FollowError::Outage`]; the run itself goes on.

use futures_util::StreamExt;
use lapin::{Connection, Consumer};
use secflow_common::{
    Error, amqp,
    config::BrokerArgs,
    deadline::{REDIS_OP, within},
    events::TaskEvent,
    retry::ReconnectBackoff,
    runs::{RunError, RunStatus, RunStore},
};
use std::{
    future::Future,
    pin::pin,
    time::{Duration, Instant},
};
use uuid::Uuid;

/// How often the run's state is read while subscribed (a safety net: the end event is the
/// fast path).
pub const STATE_POLL: Duration = Duration::from_secs(5);

/// Why following a run stopped before it ended. The run itself goes on in every case.
#[derive(Debug, thiserror::Error)]
pub enum FollowError {
    /// RabbitMQ stayed unreachable for longer than the outage budget.
    #[error(
        "lost RabbitMQ for more than {} s (--connect-timeout-secs) while following run {run}: \
         the run goes on; see `producer status {run}` (last error: {last})",
        .after.as_secs()
    )]
    Outage {
        /// The run followed.
        run: Uuid,
        /// The outage budget.
        after: Duration,
        /// The last connection error.
        last: String,
    },
    /// The caller's own time limit passed.
    #[error("run {run} did not end within {} s (it goes on; see `producer status {run}`)", .after.as_secs())]
    TimedOut {
        /// The run followed.
        run: Uuid,
        /// The limit.
        after: Duration,
    },
    /// The command was interrupted (ctrl-c).
    #[error("interrupted: run {run} goes on; see `producer status {run}`")]
    Interrupted {
        /// The run followed.
        run: Uuid,
    },
    /// The broker refused something that reconnecting does not cure.
    #[error(transparent)]
    Broker(#[from] Error),
    /// The run store could not be read (unknown run, Redis unreachable).
    #[error(transparent)]
    Store(#[from] RunError),
}

/// A live subscription to the events exchange, on its own connection.
pub struct Subscription {
    conn: Connection,
    consumer: Consumer,
    since: Instant,
}

impl Subscription {
    /// Connects (retrying for at most `timeout`) and subscribes to the events matching
    /// `pattern`.
    pub async fn open(
        broker: &BrokerArgs,
        pattern: &str,
        timeout: Duration,
    ) -> Result<Self, Error> {
        let (conn, topology) =
            crate::connect_within(broker, "secflow-producer-follow", timeout).await?;
        Self::on(conn, &topology, pattern).await
    }

    /// Subscribes to the events matching `pattern` on `conn`, which it takes over.
    pub async fn on(
        conn: Connection,
        topology: &secflow_common::Topology,
        pattern: &str,
    ) -> Result<Self, Error> {
        let subscribed = async {
            let ch = secflow_common::deadline::within(
                "a new channel",
                secflow_common::deadline::BROKER_OP,
                conn.create_channel(),
            )
            .await??;
            secflow_common::events::subscribe(&ch, topology, pattern).await
        }
        .await;
        match subscribed {
            Ok(consumer) => Ok(Self {
                conn,
                consumer,
                since: Instant::now(),
            }),
            Err(e) => {
                amqp::close(&conn, "subscribe failed").await;
                Err(e)
            }
        }
    }

    /// The next delivery: `None` once the subscription ended (connection closed).
    pub async fn next(&mut self) -> Option<lapin::Result<lapin::message::Delivery>> {
        self.consumer.next().await
    }

    /// How long it has been up.
    pub fn age(&self) -> Duration {
        self.since.elapsed()
    }

    /// Its connection (`submit` publishes the run's roots on it).
    pub fn connection(&self) -> &Connection {
        &self.conn
    }

    /// Closes its connection (bounded).
    pub async fn close(self) {
        amqp::close(&self.conn, "done").await;
    }
}

/// What to follow and for how long.
pub struct Follow<'a> {
    /// Broker settings (reconnects use them; the outage budget is `--connect-timeout-secs`).
    pub broker: &'a BrokerArgs,
    /// The run store.
    pub runs: &'a RunStore,
    /// The run.
    pub run_id: Uuid,
    /// Routing-key pattern of the events to follow: `#` to report progress,
    /// `workflow.completed` to wait for the end only.
    pub pattern: &'a str,
    /// Give up (the run goes on) after this long, if set.
    pub limit: Option<Duration>,
}

/// Whether a run in `status` has ended.
fn has_ended(status: &str) -> bool {
    matches!(
        status,
        "succeeded" | "partial" | "degraded" | "failed" | "cancelled"
    )
}

/// Whether a node in `state` has ended.
fn node_ended(state: &str) -> bool {
    matches!(state, "succeeded" | "failed" | "skipped" | "cancelled")
}

/// Follows `f.run_id` until it ends and returns its final status; `first` is a subscription
/// already open (`submit` opens it before publishing), else one is opened. `on_line` gets a
/// progress line per state read and per event of the run. Ends early when `shutdown` resolves.
pub async fn until_end(
    f: &Follow<'_>,
    first: Option<Subscription>,
    shutdown: impl Future<Output = ()>,
    mut on_line: impl FnMut(String),
) -> Result<String, FollowError> {
    let run = f.run_id;
    let run_key = run.to_string();
    let stop_at = f.limit.map(|l| tokio::time::Instant::now() + l);
    let far = tokio::time::Instant::now() + Duration::from_secs(100 * 365 * 24 * 3600);
    let mut stop = pin!(tokio::time::sleep_until(stop_at.unwrap_or(far)));
    let mut shutdown = pin!(shutdown);
    let outage_budget = Duration::from_secs(f.broker.connect_timeout_secs);
    let mut backoff = ReconnectBackoff::default();
    let mut outage: Option<(Instant, String)> = None;
    let mut sub = first;
    let mut first_read = true;
    // `select!` arms that end the follow whatever it is waiting for.
    let timed_out = || FollowError::TimedOut {
        run,
        after: f.limit.unwrap_or_default(),
    };
    loop {
        // 1. A subscription: the one given, or a new one within what is left of the outage.
        let mut s = match sub.take() {
            Some(s) => s,
            None => {
                let (started, last) = outage.get_or_insert_with(|| (Instant::now(), String::new()));
                let left = outage_budget.saturating_sub(started.elapsed());
                if left.is_zero() {
                    return Err(FollowError::Outage {
                        run,
                        after: outage_budget,
                        last: last.clone(),
                    });
                }
                let opened = tokio::select! {
                    opened = Subscription::open(f.broker, f.pattern, left) => opened,
                    () = &mut shutdown => return Err(FollowError::Interrupted { run }),
                    () = &mut stop => return Err(timed_out()),
                };
                match opened {
                    Ok(s) => {
                        tracing::warn!(run = %run, "reconnected to RabbitMQ: following the run again");
                        s
                    }
                    Err(e) if e.is_transient() => {
                        tracing::warn!(run = %run, error = %e, "cannot follow the run yet");
                        *last = e.to_string();
                        let wait = backoff.next_delay(&mut rand::rng());
                        tokio::select! {
                            () = tokio::time::sleep(wait) => {},
                            () = &mut shutdown => return Err(FollowError::Interrupted { run }),
                            () = &mut stop => return Err(timed_out()),
                        }
                        continue;
                    }
                    Err(e) => return Err(e.into()),
                }
            }
        };
        // 2. The state, read after subscribing: an end missed while disconnected is here.
        let read = read_status(f.runs, &run_key).await;
        let status = match read {
            Ok(status) => Some(status),
            Err(source) if first_read => {
                s.close().await;
                return Err(FollowError::Store(source));
            }
            Err(e) => {
                tracing::warn!(run = %run, error = %e, "cannot read the run's state now; following its events");
                None
            }
        };
        first_read = false;
        let mut done = 0;
        let mut total = 0;
        if let Some(status) = status {
            total = status.nodes.len();
            done = status.nodes.values().filter(|s| node_ended(s)).count();
            on_line(format!(
                "run {run}: {}, {done}/{total} nodes ended",
                status.status
            ));
            if has_ended(&status.status) {
                s.close().await;
                return Ok(status.status);
            }
        }
        // 3. Its events, until the end or a lost connection.
        let mut poll = tokio::time::interval(STATE_POLL);
        poll.tick().await;
        let lost = loop {
            tokio::select! {
                next = s.consumer.next() => match next {
                    Some(Ok(delivery)) => {
                        let events = secflow_common::events::decode(&delivery.data).unwrap_or_default();
                        for e in events.iter().filter(|e| e.run_id == Some(run)) {
                            if let Some(end) = final_status(e) {
                                on_line(crate::events::trace_line(e));
                                on_line(format!("run {run}: {end}, {done}/{total} nodes ended"));
                                s.close().await;
                                return Ok(end);
                            }
                            if matches!(e.kind.as_str(), "node.completed" | "node.dead_lettered" | "node.cancelled") {
                                done += 1;
                            }
                            on_line(crate::events::trace_line(e));
                        }
                    }
                    Some(Err(e)) => break Error::Amqp(e).to_string(),
                    None => break "the events subscription ended".to_string(),
                },
                _ = poll.tick() => {
                    if !s.conn.status().connected() {
                        break "the connection is closed".to_string();
                    }
                    if let Ok(status) = read_status(f.runs, &run_key).await
                        && has_ended(&status.status)
                    {
                        on_line(format!("run {run}: {}", status.status));
                        s.close().await;
                        return Ok(status.status);
                    }
                }
                () = &mut shutdown => {
                    s.close().await;
                    return Err(FollowError::Interrupted { run });
                }
                () = &mut stop => {
                    s.close().await;
                    return Err(timed_out());
                }
            }
        };
        tracing::warn!(run = %run, reason = %lost, "lost the events subscription: reconnecting; the run's state is read again afterwards, so no end is missed");
        backoff.connection_lasted(s.since.elapsed());
        s.close().await;
        outage = Some((Instant::now(), lost));
        let wait = backoff.next_delay(&mut rand::rng());
        tokio::select! {
            () = tokio::time::sleep(wait) => {},
            () = &mut shutdown => return Err(FollowError::Interrupted { run }),
            () = &mut stop => return Err(timed_out()),
        }
    }
}

/// The final status a run's end event (`workflow.completed`, `workflow.failed`) carries, if
/// `e` is one.
fn final_status(e: &TaskEvent) -> Option<String> {
    matches!(e.kind.as_str(), "workflow.completed" | "workflow.failed").then(|| {
        e.status
            .clone()
            .or_else(|| {
                e.output
                    .as_ref()
                    .and_then(|o| o["status"].as_str())
                    .map(str::to_string)
            })
            .unwrap_or_else(|| "ended".to_string())
    })
}

/// The run's state, within [`REDIS_OP`].
async fn read_status(runs: &RunStore, run: &str) -> Result<RunStatus, RunError> {
    within("Redis to read a run's state", REDIS_OP, runs.status(run))
        .await
        .map_err(|e| RunError::Redis(e.to_string()))?
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_final_statuses_are_an_end() {
        for s in ["running", "cancelling", "compensating"] {
            assert!(!has_ended(s), "{s}");
        }
        for s in ["succeeded", "failed", "partial", "degraded", "cancelled"] {
            assert!(has_ended(s));
        }
    }

    #[test]
    fn the_end_event_carries_the_final_status() {
        let mut e: TaskEvent = serde_json::from_value(serde_json::json!({
            "kind": "workflow.completed", "worker": "w", "retry_count": 0, "at_ms": 0,
            "output": { "status": "failed" }
        }))
        .unwrap();
        assert_eq!(final_status(&e).as_deref(), Some("failed"));
        e.kind = "node.completed".into();
        assert_eq!(final_status(&e), None);
    }
}
