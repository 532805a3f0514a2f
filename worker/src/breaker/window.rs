//! Calls and failures in a breaker's sliding window, counted per time bucket: what a
//! failure-rate threshold reads. Pure, no clock, no I/O.
//!
//! The window of `window_ms` is cut into [`BUCKETS`] buckets aligned on multiples of their
//! width; a bucket leaves the window when its start is `window_ms` old. The stored state is
//! therefore a few counters whatever the call rate, never one entry per call.

use serde::{Deserialize, Serialize};

/// Buckets per window.
pub const BUCKETS: u64 = 10;

/// Calls and failures counted in one bucket of the window.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Bucket {
    /// Start of the bucket (a multiple of the bucket width), ms since the epoch.
    pub start_ms: u64,
    /// Calls reported in it, successes and failures.
    pub calls: u32,
    /// Of those, failures.
    pub failures: u32,
}

/// The width of one bucket of a `window_ms` window (at least 1 ms).
pub fn bucket_width(window_ms: u64) -> u64 {
    window_ms.div_ceil(BUCKETS).max(1)
}

/// Drops the buckets that left the window at `now_ms`, then counts one call (a failure when
/// `failed`) in the bucket of `now_ms`.
///
/// A report stamped earlier than the newest bucket (another worker's clock runs ahead) is
/// counted in the newest bucket, so buckets stay in order and the list stays short.
pub fn count(buckets: &mut Vec<Bucket>, now_ms: u64, window_ms: u64, failed: bool) {
    buckets.retain(|b| now_ms.saturating_sub(b.start_ms) < window_ms);
    let start_ms = now_ms - now_ms % bucket_width(window_ms);
    match buckets.last_mut() {
        Some(newest) if newest.start_ms >= start_ms => {
            newest.calls = newest.calls.saturating_add(1);
            newest.failures = newest.failures.saturating_add(u32::from(failed));
        }
        _ => buckets.push(Bucket {
            start_ms,
            calls: 1,
            failures: u32::from(failed),
        }),
    }
    // Only a window shortened between two reports can leave more; keep the newest.
    let cap = BUCKETS as usize + 1;
    if buckets.len() > cap {
        buckets.drain(..buckets.len() - cap);
    }
}

/// Calls and failures in all the buckets.
pub fn totals(buckets: &[Bucket]) -> (u64, u64) {
    buckets.iter().fold((0, 0), |(calls, failures), b| {
        (calls + u64::from(b.calls), failures + u64::from(b.failures))
    })
}

/// True when at least `minimum_calls` calls are counted and at least `threshold_pct` percent
/// of them failed.
pub fn rate_reached(buckets: &[Bucket], threshold_pct: u32, minimum_calls: u32) -> bool {
    let (calls, failures) = totals(buckets);
    calls > 0
        && calls >= u64::from(minimum_calls)
        && failures * 100 >= u64::from(threshold_pct) * calls
}

#[cfg(test)]
mod tests {
    use super::*;

    fn counted(reports: &[(u64, bool)], window_ms: u64) -> Vec<Bucket> {
        let mut buckets = Vec::new();
        for &(now, failed) in reports {
            count(&mut buckets, now, window_ms, failed);
        }
        buckets
    }

    #[test]
    fn calls_in_one_bucket_share_its_counters() {
        let b = counted(&[(1_000, true), (1_050, false), (1_099, false)], 1_000);
        assert_eq!(
            b,
            vec![Bucket {
                start_ms: 1_000,
                calls: 3,
                failures: 1
            }]
        );
        assert_eq!(bucket_width(1_000), 100);
        assert_eq!(bucket_width(5), 1);
    }

    #[test]
    fn buckets_leave_the_window_when_their_start_is_window_ms_old() {
        let b = counted(&[(0, true), (150, true), (1_099, false)], 1_000);
        assert_eq!(
            totals(&b),
            (2, 1),
            "the bucket at 0 left; the one at 100 stays"
        );
        let b = counted(&[(0, true), (150, true), (5_000, false)], 1_000);
        assert_eq!(totals(&b), (1, 0));
    }

    #[test]
    fn the_state_stays_bounded_however_many_calls() {
        let reports: Vec<_> = (0..100_000).map(|i| (i, i % 2 == 0)).collect();
        let b = counted(&reports, 1_000);
        assert!(b.len() <= BUCKETS as usize, "{} buckets", b.len());
        assert_eq!(totals(&b), (1_000, 500));
    }

    #[test]
    fn a_report_from_a_clock_behind_goes_to_the_newest_bucket() {
        let b = counted(&[(1_000, false), (900, true)], 1_000);
        assert_eq!(b.len(), 1);
        assert_eq!(totals(&b), (2, 1));
    }

    #[test]
    fn the_rate_needs_the_minimum_calls_and_the_threshold() {
        let half = counted(&(0..20).map(|i| (i, i % 2 == 0)).collect::<Vec<_>>(), 1_000);
        assert!(rate_reached(&half, 40, 20));
        assert!(rate_reached(&half, 50, 20), "at the threshold opens");
        assert!(!rate_reached(&half, 51, 20));
        assert!(!rate_reached(&half, 40, 21), "below the minimum calls");
        assert!(!rate_reached(&[], 1, 1));
    }
}
