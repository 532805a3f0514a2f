//! Acks of one consumer channel, batched: when several deliveries are settled at once (a batch
//! of events confirmed together), the lowest run of them is acked with one `basic.ack
//! multiple`, which the broker settles as one command instead of one per message.
//!
//! A multiple ack of tag T settles every unsettled delivery of the channel up to T, so it may
//! only cover deliveries that are settled: every delivery is registered when it is taken from
//! the consumer ([`Acks::delivered`]), before anything can ack a later one, and only a run of
//! registered deliveries that are all ready, starting at the lowest one still open, is acked
//! together. A ready delivery behind one still running is acked alone at once: nothing waits
//! for company, so batching never delays an ack.

use lapin::{Acker, options::BasicAckOptions};
use std::{collections::BTreeMap, time::Duration};
use tokio::sync::{mpsc, oneshot};

/// Longest wait for an ack to be written (a stalled connection must not hold the batcher): the
/// settlement's own bound on an ack or nack.
const ACK_TIMEOUT: Duration = super::SETTLE_TIMEOUT;

enum Msg<A = Acker> {
    /// Taken from the consumer: open until acked or forgotten.
    Delivered(u64),
    /// Settled: ack it, then say so.
    Ack(u64, A, oneshot::Sender<()>),
    /// Settled otherwise (nacked): no longer open.
    Forget(u64),
}

/// Hands settled deliveries of one channel to its ack batcher.
#[derive(Clone)]
pub struct Acks {
    tx: mpsc::UnboundedSender<Msg>,
}

impl Acks {
    /// Starts the batcher of one consumer channel. It ends when every handle is dropped.
    pub fn start() -> Self {
        let (tx, rx) = mpsc::unbounded_channel();
        tokio::spawn(run(rx));
        Self { tx }
    }

    /// Registers a delivery taken from the consumer, before it is processed.
    pub fn delivered(&self, tag: u64) {
        let _ = self.tx.send(Msg::Delivered(tag));
    }

    /// Acks a settled delivery (now, alone or with others); returns once the ack is written
    /// (or could not be), so a worker that stops after its tasks never leaves one unsent.
    pub async fn ack(&self, tag: u64, acker: Acker) {
        let (done, written) = oneshot::channel();
        match self.tx.send(Msg::Ack(tag, acker, done)) {
            Ok(()) => {
                let _ = written.await;
            }
            // The batcher is gone (the worker is stopping): ack it directly.
            Err(mpsc::error::SendError(msg)) => {
                if let Msg::Ack(_, acker, _) = msg {
                    let _ =
                        tokio::time::timeout(ACK_TIMEOUT, acker.ack(BasicAckOptions::default()))
                            .await;
                }
            }
        }
    }

    /// Says a delivery was settled with a nack: it no longer holds back a multiple ack.
    pub fn forget(&self, tag: u64) {
        let _ = self.tx.send(Msg::Forget(tag));
    }
}

async fn run(mut rx: mpsc::UnboundedReceiver<Msg>) {
    let mut open: Open = Open::default();
    let mut waiting = Vec::new();
    while let Some(first) = rx.recv().await {
        open.apply(first, &mut waiting);
        while let Ok(next) = rx.try_recv() {
            open.apply(next, &mut waiting);
        }
        let acks = open.take_ready();
        if !acks.is_empty() {
            let sent = futures_util::future::join_all(acks.into_iter().map(|(acker, multiple)| {
                tokio::time::timeout(ACK_TIMEOUT, async move {
                    acker.ack(BasicAckOptions { multiple }).await
                })
            }))
            .await;
            for result in sent {
                let error = match result {
                    Ok(Ok(_)) => continue,
                    Ok(Err(e)) => e.to_string(),
                    Err(_) => format!("not written within {ACK_TIMEOUT:?}"),
                };
                // The broker redelivers what it did not get acked; each replacement is safe.
                tracing::warn!(
                    error,
                    "ack failed after settlement; the broker will redeliver"
                );
            }
        }
        // Every settled delivery is acked now (in a run or alone): its settlement may end.
        for done in waiting.drain(..) {
            let _ = done.send(());
        }
    }
}

/// The channel's open deliveries by tag: `None` while running, the acker once settled.
struct Open<A = Acker>(BTreeMap<u64, Option<A>>);

impl<A> Default for Open<A> {
    fn default() -> Self {
        Self(BTreeMap::new())
    }
}

impl<A> Open<A> {
    fn apply(&mut self, msg: Msg<A>, waiting: &mut Vec<oneshot::Sender<()>>) {
        match msg {
            Msg::Delivered(tag) => {
                self.0.entry(tag).or_insert(None);
            }
            // Registered before it could be settled; an unknown tag (never registered) is
            // acked alone, as if it were behind a running one.
            Msg::Ack(tag, acker, done) => {
                self.0.insert(tag, Some(acker));
                waiting.push(done);
            }
            Msg::Forget(tag) => {
                self.0.remove(&tag);
            }
        }
    }

    /// The acks to send now, each with whether it is `multiple`: one for the lowest run of
    /// settled deliveries, then one for each settled delivery behind a running one.
    fn take_ready(&mut self) -> Vec<(A, bool)> {
        let run = self.0.values().take_while(|a| a.is_some()).count();
        let mut acks = Vec::new();
        if run > 0 {
            let mut last = None;
            for _ in 0..run {
                last = self.0.pop_first();
            }
            if let Some((_, Some(acker))) = last {
                acks.push((acker, run > 1));
            }
        }
        let behind: Vec<u64> = self
            .0
            .iter()
            .filter(|(_, a)| a.is_some())
            .map(|(tag, _)| *tag)
            .collect();
        for tag in behind {
            if let Some(Some(acker)) = self.0.remove(&tag) {
                acks.push((acker, false));
            }
        }
        acks
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The acks `take_ready` sends: (the tag whose acker is used, whether multiple).
    fn ready(open: &mut Open<u64>) -> Vec<(u64, bool)> {
        open.take_ready()
    }

    /// Applies `msg` (an ack's completion signal is not looked at here).
    fn apply(open: &mut Open<u64>, msg: Msg<u64>) {
        open.apply(msg, &mut Vec::new());
    }

    fn ack(tag: u64) -> Msg<u64> {
        Msg::Ack(tag, tag, oneshot::channel().0)
    }

    #[test]
    fn a_settled_run_from_the_lowest_open_tag_is_one_multiple_ack() {
        let mut open = Open::<u64>::default();
        for tag in 1..=5 {
            apply(&mut open, Msg::Delivered(tag));
        }
        for tag in 1..=3 {
            apply(&mut open, ack(tag));
        }
        assert_eq!(ready(&mut open), vec![(3, true)]);
        assert_eq!(open.0.keys().copied().collect::<Vec<_>>(), vec![4, 5]);
    }

    #[test]
    fn one_settled_delivery_is_acked_alone() {
        let mut open = Open::<u64>::default();
        apply(&mut open, Msg::Delivered(1));
        apply(&mut open, Msg::Delivered(2));
        apply(&mut open, ack(1));
        assert_eq!(ready(&mut open), vec![(1, false)]);
        assert_eq!(open.0.keys().copied().collect::<Vec<_>>(), vec![2]);
    }

    #[test]
    fn settled_deliveries_behind_a_running_one_are_acked_alone_at_once() {
        let mut open = Open::<u64>::default();
        for tag in 1..=4 {
            apply(&mut open, Msg::Delivered(tag));
        }
        apply(&mut open, ack(3));
        apply(&mut open, ack(4));
        // Tag 1 still runs: a multiple ack of 4 would settle it; each goes alone.
        assert_eq!(ready(&mut open), vec![(3, false), (4, false)]);
        assert_eq!(open.0.keys().copied().collect::<Vec<_>>(), vec![1, 2]);
        apply(&mut open, ack(2));
        assert_eq!(ready(&mut open), vec![(2, false)]);
        apply(&mut open, ack(1));
        assert_eq!(ready(&mut open), vec![(1, false)]);
        assert!(open.0.is_empty());
    }

    #[test]
    fn a_nacked_delivery_no_longer_holds_the_run_back() {
        let mut open = Open::<u64>::default();
        for tag in 1..=3 {
            apply(&mut open, Msg::Delivered(tag));
        }
        apply(&mut open, Msg::Forget(1));
        apply(&mut open, ack(2));
        apply(&mut open, ack(3));
        assert_eq!(ready(&mut open), vec![(3, true)]);
        assert!(open.0.is_empty());
    }

    #[test]
    fn nothing_settled_sends_nothing() {
        let mut open = Open::<u64>::default();
        apply(&mut open, Msg::Delivered(1));
        assert!(ready(&mut open).is_empty());
        assert_eq!(open.0.len(), 1);
    }
}
