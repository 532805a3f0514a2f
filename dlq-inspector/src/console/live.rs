//! Live updates: one subscription to the namespace's events exchange (`#`, on its own
//! connection, renewed with the fleet's reconnect backoff when lost) feeds the [`Tracker`] and
//! every open `/api/events` stream. Each event goes out as it was published, secrets masked.

use super::{Shared, tracker::Tracker};
use crate::report::{Secrets, shown};
use axum::{
    extract::State,
    response::sse::{Event, KeepAlive, Sse},
};
use futures_util::{Stream, StreamExt, stream};
use secflow_common::{config::BrokerArgs, retry::ReconnectBackoff};
use secflow_producer::follow_run::Subscription;
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
        loop {
            let opened = tokio::select! {
                opened = Subscription::open(&broker, "#", timeout) => opened,
                () = stop.cancelled() => return,
            };
            match opened {
                Ok(mut sub) => {
                    self.subscribed.store(true, Ordering::Relaxed);
                    let stopped = loop {
                        tokio::select! {
                            next = sub.next() => match next {
                                Some(Ok(delivery)) => self.take(&delivery.data),
                                Some(Err(_)) | None => break false,
                            },
                            () = stop.cancelled() => break true,
                        }
                    };
                    self.subscribed.store(false, Ordering::Relaxed);
                    backoff.connection_lasted(sub.age());
                    sub.close().await;
                    if stopped {
                        return;
                    }
                    tracing::warn!("console: lost the events subscription; reconnecting");
                }
                Err(e) => tracing::warn!(error = %e, "console: cannot follow events yet"),
            }
            let wait = backoff.next_delay(&mut rand::rng());
            tokio::select! {
                () = tokio::time::sleep(wait) => {}
                () = stop.cancelled() => return,
            }
        }
    }

    fn take(&self, body: &[u8]) {
        let Ok(events) = secflow_common::events::decode_raw(body) else {
            tracing::warn!("console: skipping an event that is not SecFlow JSON");
            return;
        };
        let mut tracker = self.tracker.lock().unwrap_or_else(|e| e.into_inner());
        for raw in events {
            tracker.record(&raw.event);
            if let Ok(value) = serde_json::from_str(raw.json.get()) {
                // Nobody listening is fine.
                let _ = self.tx.send(shown(value, Secrets::Redacted).to_string());
            }
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
