//! Delay buckets: which delay queue implements a retry delay, and every bucket there can be.

use std::time::Duration;

/// Delays up to this many ms use evenly spaced buckets; longer ones use a geometric ladder.
const LINEAR_LIMIT_MS: u64 = 1_000;
/// Spacing of the short buckets (max rounding error: half of it).
const LINEAR_STEP_MS: u64 = 20;
/// Ratio between consecutive long buckets (max rounding error: about 2%).
const GEOMETRIC_RATIO: f64 = 1.04;

/// Rounds a retry delay to the delay queue that implements it; `None` means "no delay".
pub fn delay_bucket(delay: Duration) -> Option<u64> {
    let ms = u64::try_from(delay.as_millis()).unwrap_or(u64::MAX);
    if ms < LINEAR_STEP_MS / 2 {
        return None;
    }
    if ms <= LINEAR_LIMIT_MS {
        return Some((ms + LINEAR_STEP_MS / 2) / LINEAR_STEP_MS * LINEAR_STEP_MS);
    }
    let k = ((ms as f64 / LINEAR_LIMIT_MS as f64).ln() / GEOMETRIC_RATIO.ln()).round();
    Some(geometric_step(k as i32))
}

fn geometric_step(k: i32) -> u64 {
    (LINEAR_LIMIT_MS as f64 * GEOMETRIC_RATIO.powi(k)).round() as u64
}

/// Every bucket a delay up to `max` can map to (used to tear a namespace down).
pub fn delay_ladder(max: Duration) -> Vec<u64> {
    let max_ms = u64::try_from(max.as_millis()).unwrap_or(u64::MAX);
    let mut out: Vec<u64> = (1..=LINEAR_LIMIT_MS / LINEAR_STEP_MS)
        .map(|i| i * LINEAR_STEP_MS)
        .collect();
    let last = delay_bucket(max).unwrap_or(0);
    let mut k = 1;
    loop {
        let step = geometric_step(k);
        if step > last.max(max_ms) {
            break;
        }
        out.push(step);
        k += 1;
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn buckets_stay_within_the_redelivery_tolerance() {
        assert_eq!(delay_bucket(Duration::from_millis(3)), None);
        for ms in (10..20_000).step_by(7).chain([3_600_000, 6 * 3_600_000]) {
            let bucket = delay_bucket(Duration::from_millis(ms)).unwrap() as f64;
            let err = (bucket - ms as f64).abs();
            assert!(err <= 0.03 * ms as f64 + 10.0, "{ms} ms -> {bucket} ms");
        }
    }

    #[test]
    fn ladder_covers_every_bucket() {
        let ladder = delay_ladder(Duration::from_secs(6 * 3600));
        for ms in (10..6 * 3_600_000).step_by(9_973) {
            let b = delay_bucket(Duration::from_millis(ms)).unwrap();
            assert!(ladder.contains(&b), "bucket {b} of {ms} ms missing");
        }
        assert!(ladder.len() < 400, "{} delay queues", ladder.len());
    }
}
