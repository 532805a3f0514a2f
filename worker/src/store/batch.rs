//! Plain commands of every in-flight task written to Redis together. A call hands its command
//! to the store's one writer task and waits for its own reply; the writer sends every command
//! waiting at that moment as one pipeline (one write and one read on each side, one round trip
//! under the store's deadline) and answers each call from its own reply. Under load the claims,
//! completion and done markers of dozens of tasks share a round trip; a command sent alone goes
//! out at once, so nothing waits for company.
//!
//! Failures keep the store's rules: a connection failure or a missed deadline degrades the store
//! and fails every command of the batch as unreachable; a reply refusing one key's value (a
//! wrong type) is that key's corrupted state, reported to that command's caller alone.

use super::{Fault, OP_TIMEOUT, Store, StoreError, classify};
use deadpool_redis::redis::{Cmd, RedisResult, Value};
use std::sync::{Arc, Weak};
use tokio::sync::{mpsc, oneshot};

/// Most commands sent in one pipeline.
const MAX_BATCH: usize = 512;

/// A command waiting for the writer, and where its reply goes.
pub(super) struct Queued {
    cmd: Cmd,
    reply: oneshot::Sender<Answer>,
}

/// One command's reply: its value, or why it has none.
pub(super) type Answer = Result<Value, Failure>;

/// Why a command has no value.
#[derive(Debug)]
pub(super) enum Failure {
    /// Redis refused the key's value (wrong type): the caller reports the key corrupted.
    BadValue(String),
    /// Redis is unreachable or was not asked.
    Store(StoreError),
}

/// The sending side of the store's writer.
pub(super) type Queue = mpsc::UnboundedSender<Queued>;

/// Starts the writer of `store`; it ends when the store is dropped (its queue closes).
pub(super) fn start(store: &Arc<Store>) -> Queue {
    let (queue, commands) = mpsc::unbounded_channel();
    tokio::spawn(write(Arc::downgrade(store), commands));
    queue
}

/// Hands `cmd` to the writer and waits for its reply. The writer's round trip is bounded by
/// the store's deadline; the wait here by twice that (a batch ahead of this one, then its own).
pub(super) async fn send(queue: &Queue, cmd: Cmd) -> Answer {
    let (reply, answer) = oneshot::channel();
    if queue.send(Queued { cmd, reply }).is_err() {
        return Err(Failure::Store(StoreError::Unreachable(
            "the store is shutting down".into(),
        )));
    }
    match tokio::time::timeout(2 * OP_TIMEOUT, answer).await {
        Ok(Ok(answer)) => answer,
        Ok(Err(_)) => Err(Failure::Store(StoreError::Unreachable(
            "the store is shutting down".into(),
        ))),
        Err(_) => Err(Failure::Store(StoreError::Unreachable(format!(
            "no answer within {} ms",
            (2 * OP_TIMEOUT).as_millis()
        )))),
    }
}

/// The writer: every command waiting, one pipeline, until the store is gone.
async fn write(store: Weak<Store>, mut commands: mpsc::UnboundedReceiver<Queued>) {
    let mut batch = Vec::with_capacity(MAX_BATCH);
    while commands.recv_many(&mut batch, MAX_BATCH).await > 0 {
        let Some(store) = store.upgrade() else {
            return;
        };
        store.send_batch(&mut batch).await;
    }
}

impl Store {
    /// Sends `batch` (emptying it) as one pipeline and answers each command.
    async fn send_batch(self: &Arc<Self>, batch: &mut Vec<Queued>) {
        if self.is_degraded() {
            for queued in batch.drain(..) {
                let _ = queued.reply.send(Err(Failure::Store(StoreError::Degraded)));
            }
            return;
        }
        let mut pipe = deadpool_redis::redis::pipe();
        pipe.ignore_errors();
        let mut replies = Vec::with_capacity(batch.len());
        for queued in batch.drain(..) {
            pipe.add_command(queued.cmd);
            replies.push(queued.reply);
        }
        let sent = self
            .attempt(|mut conn| async move {
                pipe.query_async::<Vec<RedisResult<Value>>>(&mut conn).await
            })
            .await;
        let failure = match sent {
            Ok(Ok(results)) if results.len() == replies.len() => {
                let mut unreachable = None;
                for (result, reply) in results.into_iter().zip(replies) {
                    let answer = match result {
                        Ok(value) => Ok(value),
                        Err(e) if classify(&e) == Fault::BadValue => {
                            Err(Failure::BadValue(e.to_string()))
                        }
                        Err(e) => {
                            let why = e.to_string();
                            unreachable.get_or_insert_with(|| why.clone());
                            Err(Failure::Store(StoreError::Unreachable(why)))
                        }
                    };
                    let _ = reply.send(answer);
                }
                // A server that cannot serve (loading, read-only, out of memory) is down for
                // every command, as a lost connection is.
                if let Some(why) = unreachable {
                    self.degrade(&why);
                }
                return;
            }
            Ok(Ok(results)) => format!(
                "{} replies to a pipeline of {} commands",
                results.len(),
                replies.len()
            ),
            Ok(Err(e)) => e.to_string(),
            Err(why) => why,
        };
        self.degrade(&failure);
        for reply in replies {
            let _ = reply.send(Err(Failure::Store(StoreError::Unreachable(
                failure.clone(),
            ))));
        }
    }
}
