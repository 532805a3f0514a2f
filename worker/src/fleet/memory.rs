//! The memory watchdog: a worker above `--max-rss-mb` stops taking work, finishes or hands
//! back what it holds and exits 0, so its supervisor starts a fresh one (nothing is lost: the
//! graceful shutdown acks nothing it has not settled).

use std::time::Duration;
use tokio_util::sync::CancellationToken;

/// How often resident memory is read.
const EVERY: Duration = Duration::from_millis(500);

/// This process's resident memory, bytes (`None` off Linux or if /proc cannot be read).
pub fn rss_bytes() -> Option<u64> {
    let statm = std::fs::read_to_string("/proc/self/statm").ok()?;
    let pages: u64 = statm.split_whitespace().nth(1)?.parse().ok()?;
    // SAFETY: sysconf only reads a system constant.
    let page = unsafe { libc::sysconf(libc::_SC_PAGESIZE) };
    Some(pages * u64::try_from(page).unwrap_or(4096))
}

/// Watches resident memory until `stop`, from the moment the worker first consumes (`armed`);
/// above `limit_bytes`, cancels `exceeded` (the worker's shutdown) once, and says so.
pub fn watch(
    limit_bytes: u64,
    armed: impl Fn() -> bool + Send + 'static,
    exceeded: CancellationToken,
    stop: CancellationToken,
) {
    tokio::spawn(async move {
        loop {
            if let Some(rss) = rss_bytes().filter(|&rss| armed() && rss > limit_bytes) {
                tracing::warn!(
                    rss_mb = rss >> 20,
                    limit_mb = limit_bytes >> 20,
                    "memory limit exceeded: no new work; finishing or handing back what this worker holds, then exiting for a fresh start"
                );
                metrics::counter!("secflow_memory_limit_exits_total").increment(1);
                exceeded.cancel();
                return;
            }
            tokio::select! {
                () = tokio::time::sleep(EVERY) => {}
                () = stop.cancelled() => return,
            }
        }
    });
}

#[cfg(test)]
mod tests {
    #[test]
    fn resident_memory_is_read() {
        let rss = super::rss_bytes().unwrap();
        assert!(rss > 1 << 20, "{rss}");
    }
}
