//! Live updates: the console follows the namespace's audit trail (a RabbitMQ stream of every
//! event; on its own connection, renewed with the fleet's reconnect backoff when lost, resumed
//! at the next event so an outage leaves no gap). It starts [`HISTORY`] back, so the sparklines
//! and the nodes' attempts cover the time before the console started too. The events feed the
//! [`Tracker`] and every open `/api/events` stream, each as it was published, secrets masked.

use super::{Shared, tracker::Tracker};
use crate::report::{Secrets, shown};
use axum::{
    extract::State,
    response::sse::{Event, KeepAlive, Sse},
};
use futures_util::{Stream, StreamExt, stream};
use secflow_common::{
    Topology, amqp,
    audit::{self, Start},
    config::BrokerArgs,
    now_ms,
    retry::ReconnectBackoff,
};
use std::{
    convert::Infallible,
    sync::{
        Arc, Mutex,
        atomic::{AtomicBool, Ordering},
    },
    time::Duration,
};
use tokio::sync::broadcast;
use tokio_util::sync::CancellationToken;

/// How far back the console reads the trail when it starts (the sparklines' width).
const HISTORY: Duration = Duration::from_secs(600);

/// Events buffered for a slow stream before it is told it lagged.
const BUFFER: usize = 4_096;

/// The followed events, for handlers.
pub struct Live {
    tx: broadcast::Sender<String>,
    tracker: Arc<Mutex<Tracker>>,
    subscribed: Arc<AtomicBool>,
    stop: CancellationToken,
}

impl Live {
    /// Starts following `broker`'s events until `stop` is cancelled.
    pub fn start(broker: BrokerArgs, stop: CancellationToken) -> Self {
        let (tx, _) = broadcast::channel(BUFFER);
        let live = Self {
            tx,
            tracker: Arc::default(),
            subscribed: Arc::default(),
            stop,
        };
        let follower = Follower {
            tx: live.tx.clone(),
            tracker: Arc::clone(&live.tracker),
            subscribed: Arc::clone(&live.subscribed),
        };
        tokio::spawn(follower.run(broker, live.stop.clone()));
        live
    }

    /// Whether the subscription is up now.
    pub fn subscribed(&self) -> bool {
        self.subscribed.load(Ordering::Relaxed)
    }

    /// Reads what the events said so far.
    pub fn with<T>(&self, f: impl FnOnce(&Tracker) -> T) -> T {
        f(&self.tracker.lock().unwrap_or_else(|e| e.into_inner()))
    }
}

struct Follower {
    tx: broadcast::Sender<String>,
    tracker: Arc<Mutex<Tracker>>,
    subscribed: Arc<AtomicBool>,
}

impl Follower {
    async fn run(self, broker: BrokerArgs, stop: CancellationToken) {
        let mut backoff = ReconnectBackoff::default();
        let timeout = Duration::from_secs(broker.connect_timeout_secs);
        let mut start = Start::At(now_ms().saturating_sub(HISTORY.as_millis() as u64));
        let mut last: Option<u64> = None;
        loop {
            let topology = match broker.namespace() {
                Ok(ns) => Topology::new(ns, broker.delivery_limit),
                Err(e) => {
                    tracing::error!(error = %e, "console: no namespace to follow");
                    return;
                }
            };
            let opened = tokio::select! {
                opened = amqp::connect(&broker.amqp_url, "secflow-console-live", timeout) => opened,
                () = stop.cancelled() => return,
            };
            match opened {
                Ok(conn) => {
                    let since = std::time::Instant::now();
                    self.subscribed.store(true, Ordering::Relaxed);
                    let followed = audit::follow(&conn, &topology, start, &stop, |offset, raw| {
                        last = Some(offset);
                        self.take(raw);
                        std::future::ready(())
                    })
                    .await;
                    self.subscribed.store(false, Ordering::Relaxed);
                    backoff.connection_lasted(since.elapsed());
                    amqp::close(&conn, "console stopped").await;
                    if stop.is_cancelled() {
                        return;
                    }
                    if let Err(e) = followed {
                        tracing::warn!(error = %e, "console: lost the audit trail; reconnecting");
                    }
                }
                Err(e) => tracing::warn!(error = %e, "console: cannot follow events yet"),
            }
            if let Some(offset) = last {
                start = Start::Offset(offset + 1);
            }
            let wait = backoff.next_delay(&mut rand::rng());
            tokio::select! {
                () = tokio::time::sleep(wait) => {}
                () = stop.cancelled() => return,
            }
        }
    }

    fn take(&self, raw: secflow_common::events::RawEvent) {
        let mut tracker = self.tracker.lock().unwrap_or_else(|e| e.into_inner());
        tracker.record(&raw.event);
        if let Ok(value) = serde_json::from_str(raw.json.get()) {
            // Nobody listening is fine.
            let _ = self.tx.send(shown(value, Secrets::Redacted).to_string());
        }
    }
}

/// `GET /api/events`: the events as Server-Sent Events (`data:` one event's JSON). A stream that
/// fell behind gets an event `lagged` (reload what you show) and goes on.
pub async fn sse(
    State(console): State<Shared>,
) -> Sse<impl Stream<Item = Result<Event, Infallible>>> {
    let rx = console.live.tx.subscribe();
    let hello = Event::default()
        .event("hello")
        .data(if console.live.subscribed() {
            "live"
        } else {
            "connecting"
        });
    let events = stream::unfold(rx, |mut rx| async move {
        let event = match rx.recv().await {
            Ok(json) => Event::default().data(json),
            Err(broadcast::error::RecvError::Lagged(n)) => {
                Event::default().event("lagged").data(n.to_string())
            }
            Err(broadcast::error::RecvError::Closed) => return None,
        };
        Some((Ok(event), rx))
    });
    let stream = stream::once(async move { Ok(hello) })
        .chain(events)
        .take_until(console.live.stop.clone().cancelled_owned());
    Sse::new(stream).keep_alive(KeepAlive::default())
}
