//! How long the oldest ready message of a work queue has waited.
//!
//! Quorum queues report no message timestamps (RabbitMQ's `head_message_timestamp` is for
//! classic queues only), and a look at a work queue's first message would count as one of its
//! deliveries against the delivery limit. The controller therefore keeps a ledger of arrivals
//! from what the broker and the fleet say each tick: every message that ever reached the queue
//! is either still ready (the broker's count), held by a worker (in flight) or settled (acked:
//! completed, retried, deferred, dead-lettered, handed back or a duplicate). Their sum is the
//! number of arrivals so far. Under FIFO the first ready message is arrival number
//! `in flight + settled + 1`, and it arrived at the first tick whose arrivals reached that number:
//! its age is the time since that tick (to a tick's resolution). Before the ledger has seen that
//! arrival (the controller just took the lead), the age is at least the ledger's own age, and
//! says so.
//!
//! What the sum misses (a message the broker dead-letters itself at the delivery limit, a purge
//! by hand) only makes the age come out older than it is, never younger; a copy the broker
//! returns to the head (a worker's connection lost) keeps its place as the oldest.

use std::collections::VecDeque;

/// Longest ledger kept, in ticks: a day at one tick a second. Older backlogs read as "at least".
const MAX_SAMPLES: usize = 86_400;

/// The age of a queue's oldest ready message.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Age {
    /// Milliseconds.
    pub ms: u64,
    /// The message arrived before the ledger began: it is at least this old.
    pub at_least: bool,
}

/// The arrivals ledger of one work queue.
#[derive(Clone, Debug, Default)]
pub struct Arrivals {
    /// (tick time ms, arrivals counted by then), arrivals never decreasing. The front is the
    /// first tick whose arrivals reach the oldest ready message.
    samples: VecDeque<(u64, u64)>,
    /// Messages settled from the queue since the ledger began.
    settled: u64,
    /// The front tick already counted the oldest ready message and no earlier tick is known
    /// (the ledger began with a backlog, or outgrew its length): it arrived before then.
    unbounded: bool,
}

impl Arrivals {
    /// Records one tick at `now_ms`: `ready` messages in the queue (the broker), `in_flight`
    /// held by its workers and `newly_settled` settled since the last tick (the fleet's
    /// records). The age of the oldest ready message; zero when none is ready.
    pub fn observe(&mut self, now_ms: u64, ready: u64, in_flight: u64, newly_settled: u64) -> Age {
        self.settled += newly_settled;
        let taken = self.settled + in_flight;
        // The broker's count and the workers' records are read a moment apart: a dip is the
        // gap between them, not messages leaving without being counted.
        let last = self.samples.back().map(|&(_, a)| a);
        let arrivals = (taken + ready).max(last.unwrap_or(0));
        if ready == 0 {
            // Whatever comes next arrives after this tick.
            self.samples.clear();
            self.samples.push_back((now_ms, arrivals));
            self.unbounded = false;
            return Age {
                ms: 0,
                at_least: false,
            };
        }
        if last.is_none() {
            self.unbounded = true;
        }
        self.samples.push_back((now_ms, arrivals));
        if self.samples.len() > MAX_SAMPLES {
            self.samples.pop_front();
            self.unbounded = true;
        }
        // The oldest ready message is arrival number `taken + 1`; ticks that had not seen it
        // are not needed again (later heads only come later). The last tick always has.
        let head = taken + 1;
        while self.samples.len() > 1 && self.samples.front().is_some_and(|&(_, a)| a < head) {
            self.samples.pop_front();
            self.unbounded = false;
        }
        let since = self.samples.front().map_or(now_ms, |&(at, _)| at);
        Age {
            ms: now_ms.saturating_sub(since),
            at_least: self.unbounded,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const S: u64 = 1_000;

    fn age(ms: u64, at_least: bool) -> Age {
        Age { ms, at_least }
    }

    #[test]
    fn an_untouched_backlog_ages_from_the_tick_it_arrived() {
        let mut q = Arrivals::default();
        assert_eq!(q.observe(0, 0, 0, 0).ms, 0);
        // 10 arrive before the next tick; nobody takes them.
        for t in 1..=5 {
            let seen = q.observe(t * S, 10, 0, 0);
            assert_eq!(seen, age((t - 1) * S, false));
        }
    }

    #[test]
    fn the_age_follows_the_head_as_it_is_taken() {
        let mut q = Arrivals::default();
        q.observe(0, 0, 0, 0);
        q.observe(S, 5, 0, 0); // arrivals 1-5 by 1 s
        q.observe(2 * S, 10, 0, 0); // 6-10 by 2 s
        // At 3 s, the first five are done: the head is arrival 6, seen first at 2 s.
        assert_eq!(q.observe(3 * S, 5, 0, 5).ms, S);
        // At 4 s, two more run and one is done: the head is arrival 9 (also by 2 s).
        assert_eq!(q.observe(4 * S, 2, 2, 1).ms, 2 * S);
        // At 5 s, 3 new ones arrived and the rest finished: head is arrival 11, by 5 s.
        assert_eq!(q.observe(5 * S, 3, 0, 4).ms, 0);
        assert_eq!(q.observe(6 * S, 3, 0, 0).ms, S);
    }

    #[test]
    fn a_backlog_found_when_the_ledger_begins_is_at_least_the_ledger_s_age() {
        let mut q = Arrivals::default();
        assert_eq!(q.observe(10 * S, 7, 2, 0), age(0, true));
        assert_eq!(q.observe(12 * S, 7, 2, 0), age(2 * S, true));
        // Once messages that arrived under the ledger's eyes reach the head, the age is bounded.
        q.observe(13 * S, 9, 2, 0); // two more arrived
        assert_eq!(q.observe(14 * S, 2, 0, 9), age(S, false));
    }

    #[test]
    fn a_reading_gap_between_broker_and_records_never_lowers_the_arrivals() {
        let mut q = Arrivals::default();
        q.observe(0, 0, 0, 0);
        q.observe(S, 100, 0, 0);
        // A worker took 64 (the broker says so) before its record shows them in flight.
        let age = q.observe(2 * S, 36, 0, 0);
        assert_eq!(
            age.ms, S,
            "the head is still the first batch, arrived by 1 s"
        );
        // Its record catches up; nothing new arrived.
        assert_eq!(q.observe(3 * S, 36, 64, 0).ms, 2 * S);
    }

    #[test]
    fn an_empty_queue_resets_the_ledger() {
        let mut q = Arrivals::default();
        q.observe(0, 3, 0, 0);
        assert_eq!(q.observe(S, 0, 0, 3), age(0, false));
        assert_eq!(q.observe(2 * S, 1, 0, 0), age(0, false));
        assert_eq!(q.observe(4 * S, 1, 0, 0), age(2 * S, false));
    }
}
