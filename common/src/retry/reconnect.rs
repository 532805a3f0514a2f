//! The one reconnect backoff of the fleet: how long a client waits before its next attempt to
//! reach RabbitMQ after a connection failed or was lost.
//!
//! Every reconnect loop (the connect retry in [`crate::amqp::connect`], the worker's reconnect
//! loop, the producer's republish and its event followers) uses [`ReconnectBackoff`], so the
//! schedule is decided here only:
//!
//! - the first wait is 200 ms and doubles with each failed attempt, capped at 2 s, so a client
//!   is back within about 2 s of the broker accepting connections again (and within about
//!   0.2 s when the broker's port was closed meanwhile: [`crate::amqp::connect`] watches it);
//! - **equal jitter**: each wait is drawn uniformly from `[d/2, d]` where `d` is the doubled,
//!   capped delay. Half of it spreads a fleet that lost the broker at the same instant (no
//!   thundering herd); the other half is a floor, so no client ever retries in a hot loop the
//!   way full jitter (`[0, d]`) can;
//! - **reset** once a connection has been up: [`ReconnectBackoff::reset`] (or
//!   [`ReconnectBackoff::connection_lasted`] with how long it stayed up), so the pause after the
//!   next loss starts again at 200 ms instead of growing with every loss.
//!
//! The type holds no clock and draws no randomness of its own: the caller passes the random
//! source ([`ReconnectBackoff::next_delay`]) or the draw itself ([`ReconnectBackoff::delay`]).

use super::backoff::{Jitter, Strategy, base_delay, jittered};
use std::time::Duration;

/// Why a [`ReconnectBackoff`] could not be built.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ReconnectBackoffError {
    /// The first delay is zero: the client would retry in a hot loop.
    #[error("the first reconnect delay must be above zero (a zero delay retries in a hot loop)")]
    ZeroFirst,
    /// The cap is below the first delay.
    #[error("the reconnect delay cap {cap:?} is below the first delay {first:?}: raise the cap")]
    CapBelowFirst {
        /// First delay asked for.
        first: Duration,
        /// Cap asked for.
        cap: Duration,
    },
    /// The cap is so long that a client would stay away long after the broker is back.
    #[error("the reconnect delay cap {cap:?} is above the limit of {limit:?}")]
    CapTooLong {
        /// Cap asked for.
        cap: Duration,
        /// Largest allowed.
        limit: Duration,
    },
}

/// Reconnect delays: `first` doubling per failed attempt up to `cap`, equal jitter, reset after
/// a connection that stayed up (see the module documentation).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ReconnectBackoff {
    first: Duration,
    cap: Duration,
    /// Failed attempts since the last reset.
    attempts: u32,
}

impl Default for ReconnectBackoff {
    /// 200 ms doubling up to 2 s.
    fn default() -> Self {
        Self {
            first: Self::FIRST,
            cap: Self::CAP,
            attempts: 0,
        }
    }
}

impl ReconnectBackoff {
    /// First (un-jittered) delay of the default schedule.
    pub const FIRST: Duration = Duration::from_millis(200);
    /// Longest (un-jittered) delay of the default schedule.
    pub const CAP: Duration = Duration::from_secs(2);
    /// Largest cap [`ReconnectBackoff::new`] accepts.
    pub const MAX_CAP: Duration = Duration::from_secs(60);
    /// How long a connection must have stayed up for [`ReconnectBackoff::connection_lasted`] to
    /// reset the schedule: shorter lives are a broker that accepts and drops at once, where
    /// the delay should keep growing.
    pub const STABLE_AFTER: Duration = Duration::from_secs(5);

    /// A schedule starting at `first` and doubling up to `cap`.
    pub fn new(first: Duration, cap: Duration) -> Result<Self, ReconnectBackoffError> {
        if first.is_zero() {
            return Err(ReconnectBackoffError::ZeroFirst);
        }
        if cap < first {
            return Err(ReconnectBackoffError::CapBelowFirst { first, cap });
        }
        if cap > Self::MAX_CAP {
            return Err(ReconnectBackoffError::CapTooLong {
                cap,
                limit: Self::MAX_CAP,
            });
        }
        Ok(Self {
            first,
            cap,
            attempts: 0,
        })
    }

    /// The wait before the next attempt, drawing the jitter from `rng`; counts one failed
    /// attempt.
    pub fn next_delay<R: rand::Rng + ?Sized>(&mut self, rng: &mut R) -> Duration {
        let unit = rand::RngExt::random::<f64>(rng);
        self.delay(unit)
    }

    /// The wait before the next attempt with `unit` a uniform draw in `[0, 1)` (clamped);
    /// counts one failed attempt.
    pub fn delay(&mut self, unit: f64) -> Duration {
        let ceiling = self.ceiling();
        self.attempts = self.attempts.saturating_add(1);
        jittered(ceiling, Jitter::Equal, unit)
    }

    /// The un-jittered delay of the current attempt: the most [`Self::delay`] can return now.
    pub fn ceiling(&self) -> Duration {
        base_delay(
            Strategy::Exponential,
            self.first,
            self.cap,
            2.0,
            self.attempts.saturating_add(1),
        )
    }

    /// Starts the schedule over: call it once a connection is up and working.
    pub fn reset(&mut self) {
        self.attempts = 0;
    }

    /// Resets the schedule if a connection that was just lost had stayed up for at least
    /// [`Self::STABLE_AFTER`]; a shorter life keeps the delay growing.
    pub fn connection_lasted(&mut self, up: Duration) {
        if up >= Self::STABLE_AFTER {
            self.reset();
        }
    }

    /// Failed attempts since the last reset.
    pub fn attempts(&self) -> u32 {
        self.attempts
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::{SeedableRng, rngs::StdRng};

    const MS: fn(u64) -> Duration = Duration::from_millis;

    #[test]
    fn default_starts_at_200ms_doubles_and_caps_at_2s() {
        let mut b = ReconnectBackoff::default();
        // The top of the jitter range (unit → 1) is the un-jittered schedule.
        let tops: Vec<Duration> = (0..7).map(|_| b.delay(1.0)).collect();
        assert_eq!(
            tops,
            [
                MS(200),
                MS(400),
                MS(800),
                MS(1600),
                MS(2000),
                MS(2000),
                MS(2000)
            ]
        );
        assert_eq!(b.attempts(), 7);
    }

    #[test]
    fn equal_jitter_keeps_a_floor_of_half_the_delay() {
        let mut b = ReconnectBackoff::default();
        assert_eq!(b.delay(0.0), MS(100));
        assert_eq!(b.delay(0.5), MS(300));
    }

    /// Property: whatever the random source and however many attempts, every delay lies in
    /// [ceiling/2, ceiling], the ceiling never exceeds the cap, and never falls below first/2.
    #[test]
    fn delays_stay_within_bounds_for_any_draw() {
        for seed in 0..200u64 {
            let mut rng = StdRng::seed_from_u64(seed);
            let first = MS(1 + seed * 7 % 500);
            let cap = first + MS(seed * 13 % 5000);
            let mut b = ReconnectBackoff::new(first, cap).unwrap();
            for _ in 0..64 {
                let ceiling = b.ceiling();
                let d = b.next_delay(&mut rng);
                assert!(ceiling <= cap, "ceiling {ceiling:?} above cap {cap:?}");
                assert!(d <= ceiling && d >= ceiling / 2, "{d:?} vs {ceiling:?}");
                assert!(d >= first / 2, "{d:?} below half the first delay {first:?}");
            }
        }
        // Draws outside [0, 1) are clamped, not trusted.
        let mut b = ReconnectBackoff::default();
        assert_eq!(b.delay(7.0), MS(200));
        assert_eq!(b.delay(-3.0), MS(200));
        assert_eq!(
            b.delay(f64::NAN),
            MS(400),
            "NaN counts as the bottom of the range"
        );
    }

    #[test]
    fn huge_attempt_counts_saturate_at_the_cap() {
        let mut b = ReconnectBackoff::default();
        for _ in 0..100_000 {
            b.delay(0.3);
        }
        assert_eq!(b.delay(1.0), MS(2000));
    }

    #[test]
    fn reset_starts_over_after_a_connection_that_stayed_up() {
        let mut b = ReconnectBackoff::default();
        for _ in 0..5 {
            b.delay(1.0);
        }
        b.connection_lasted(MS(300));
        assert_eq!(
            b.delay(1.0),
            MS(2000),
            "a short-lived connection does not reset"
        );
        b.connection_lasted(ReconnectBackoff::STABLE_AFTER);
        assert_eq!(b.attempts(), 0);
        assert_eq!(
            b.delay(1.0),
            MS(200),
            "a loss after a stable connection starts at 200 ms"
        );
        b.delay(1.0);
        b.reset();
        assert_eq!(b.delay(1.0), MS(200));
    }

    #[test]
    fn constructor_rejects_bad_input() {
        assert_eq!(
            ReconnectBackoff::new(Duration::ZERO, MS(10)),
            Err(ReconnectBackoffError::ZeroFirst)
        );
        assert!(matches!(
            ReconnectBackoff::new(MS(500), MS(100)),
            Err(ReconnectBackoffError::CapBelowFirst { .. })
        ));
        assert!(matches!(
            ReconnectBackoff::new(MS(500), Duration::from_secs(3600)),
            Err(ReconnectBackoffError::CapTooLong { .. })
        ));
        assert_eq!(
            ReconnectBackoff::new(ReconnectBackoff::FIRST, ReconnectBackoff::CAP),
            Ok(ReconnectBackoff::default())
        );
    }
}
