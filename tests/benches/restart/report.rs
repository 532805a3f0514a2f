//! What the restart benchmark prints from its samples: the rate before the stop, the rate per
//! 1-s window once the broker is back, when it reached the target, and when consumers returned.

use std::time::Duration;

/// Rate to get back to, as a share of the pre-restart one.
pub const TARGET_RATIO: f64 = 0.9;
/// Within this long after the broker accepts connections.
pub const TARGET_WITHIN: Duration = Duration::from_secs(5);
/// The rate before the stop is measured over at most this long.
const PRE_WINDOW: Duration = Duration::from_secs(5);
const SECOND: Duration = Duration::from_secs(1);

/// One look at the fleet (workers' metrics and /readyz) and the work queue.
#[derive(Clone, Copy, Default)]
pub struct Sample {
    /// Since the workers started.
    pub at: Duration,
    pub completed: u64,
    pub duplicates: u64,
    pub handed_back: u64,
    pub dead_lettered: u64,
    /// Messages ready in the work queue (None while the broker is down).
    pub ready: Option<u32>,
    /// Consumers on the work queue (None while the broker is down).
    pub consumers: Option<u32>,
    /// Workers whose /readyz says consuming.
    pub consuming: usize,
}

/// When the restart's steps happened, since the workers started.
pub struct Restart {
    pub stop_issued: Duration,
    /// The AMQP port stopped accepting TCP connections.
    pub down: Duration,
    pub start_issued: Duration,
    /// The first AMQP handshake that succeeded after the start.
    pub accepting: Duration,
}

/// Completions at `t`, interpolated between samples.
fn completed_at(samples: &[Sample], t: Duration) -> f64 {
    let after = samples.partition_point(|s| s.at < t);
    let before = after.checked_sub(1).and_then(|i| samples.get(i));
    match (before, samples.get(after)) {
        (Some(a), Some(b)) if b.at > a.at => {
            let f = (t - a.at).as_secs_f64() / (b.at - a.at).as_secs_f64();
            a.completed as f64 + f * (b.completed as f64 - a.completed as f64)
        }
        (_, Some(b)) => b.completed as f64,
        (Some(a), None) => a.completed as f64,
        (None, None) => 0.0,
    }
}

fn secs(d: Duration) -> f64 {
    d.as_secs_f64()
}

/// Prints the figures; whether the rate was back to the target in time.
pub fn report(n: usize, workers: usize, samples: &[Sample], r: &Restart) -> bool {
    let at = |t| completed_at(samples, t);
    // The first second (connections, first prefetch) is ramp-up, not the running rate.
    let first = samples
        .iter()
        .find(|s| s.completed > 0)
        .map_or(Duration::ZERO, |s| s.at);
    let pre_from = r
        .stop_issued
        .saturating_sub(PRE_WINDOW)
        .max((first + SECOND).min(r.stop_issued.saturating_sub(SECOND)));
    let pre = (at(r.stop_issued) - at(pre_from)) / secs(r.stop_issued - pre_from).max(1e-3);
    // The drain ended with the last settlement the workers counted.
    let settled = |s: &Sample| s.completed + s.dead_lettered;
    let last = samples.last().map_or(0, settled);
    let end = samples
        .iter()
        .find(|s| settled(s) >= last)
        .map_or(Duration::ZERO, |s| s.at);
    println!(
        "  pre-restart rate {pre:>7.0} tasks/s over the {:.1} s before the stop",
        secs(r.stop_issued - pre_from)
    );
    println!(
        "  stop issued at {:.2} s with {:.0} done; port closed {:.2} s later with {:.0} done ({:.0} %); down {:.2} s; start issued at {:.2} s; accepting AMQP at {:.2} s ({:.2} s after the start command)",
        secs(r.stop_issued),
        at(r.stop_issued),
        secs(r.down - r.stop_issued),
        at(r.down),
        100.0 * at(r.down) / n as f64,
        secs(r.accepting - r.down),
        secs(r.start_issued),
        secs(r.accepting),
        secs(r.accepting - r.start_issued)
    );
    println!(
        "  after the broker accepts connections (1-s windows; fewest consumers on the queue, fewest workers ready):"
    );
    let mut from = r.accepting;
    while from + SECOND <= end {
        let rate = at(from + SECOND) - at(from);
        let window: Vec<_> = samples
            .iter()
            .filter(|s| s.at >= from && s.at < from + SECOND)
            .collect();
        let consumers = window.iter().filter_map(|s| s.consumers).min();
        println!(
            "    +{:>3.0} s {rate:>7.0} tasks/s {:>4.0} %  consumers {}  ready {}/{workers}",
            secs(from - r.accepting),
            100.0 * rate / pre,
            consumers.map_or("-".into(), |c| c.to_string()),
            window.iter().map(|s| s.consuming).min().unwrap_or(0)
        );
        from += SECOND;
    }
    let back = |f: &dyn Fn(&Sample) -> bool| {
        samples
            .iter()
            .find(|s| s.at >= r.accepting && f(s))
            .map_or("never".into(), |s| {
                format!("{:.2} s", secs(s.at - r.accepting))
            })
    };
    // Dips after the first return (e.g. a consumer cancelled to isolate a suspect).
    let dips = samples
        .iter()
        .filter(|s| s.at >= r.accepting && s.at < end)
        .filter(|s| s.consumers.is_some_and(|c| (c as usize) < workers))
        .count();
    println!(
        "  all {workers} consumers on the queue {} after, all workers ready {} after; samples with fewer consumers after that: {dips}",
        back(&|s| s.consumers.is_some_and(|c| c as usize >= workers)),
        back(&|s| s.consuming >= workers)
    );
    let left = n as f64 - at(r.accepting);
    let tail = samples
        .iter()
        .find(|s| s.completed as f64 >= 0.99 * n as f64)
        .map_or(end, |s| s.at);
    println!(
        "  {left:.0} tasks left when the broker was back: drained in {:.2} s ({:.2} s at the pre-restart rate); 99 % done {:.2} s after, the last 1 % took {:.2} s",
        secs(end.saturating_sub(r.accepting)),
        left / pre,
        secs(tail.saturating_sub(r.accepting)),
        secs(end.saturating_sub(tail))
    );
    // The first sliding 1-s window wholly after the broker is back at the target rate.
    let recovered = samples
        .iter()
        .filter(|s| s.at >= r.accepting + SECOND && s.at <= end)
        .find(|s| at(s.at) - at(s.at - SECOND) >= TARGET_RATIO * pre)
        .map(|s| s.at - r.accepting);
    let target = format!(
        ">= {:.0} % of the pre-restart rate within {:.0} s of the broker accepting connections",
        TARGET_RATIO * 100.0,
        secs(TARGET_WITHIN)
    );
    let rate_back = match recovered {
        Some(d) if d <= TARGET_WITHIN => {
            println!(
                "  PASS: {target}: a 1-s window ending {:.2} s after",
                secs(d)
            );
            true
        }
        Some(d) => {
            println!(
                "  FAIL: {target}: first in a 1-s window ending {:.2} s after",
                secs(d)
            );
            false
        }
        None => {
            println!("  FAIL: {target}: no 1-s window after the restart reached it");
            false
        }
    };
    // Full speed means all of the rest, not a burst: the tail must not lag either.
    let late = secs(end.saturating_sub(r.accepting)) - left / pre;
    let drained = late <= secs(TARGET_WITHIN);
    println!(
        "  {}: the {left:.0} tasks left drained {late:.2} s later than at the pre-restart rate (target <= {:.0} s)",
        if drained { "PASS" } else { "FAIL" },
        secs(TARGET_WITHIN)
    );
    rate_back && drained
}
