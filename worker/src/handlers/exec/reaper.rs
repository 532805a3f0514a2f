//! A helper process that kills the process groups of a worker's `exec` programs when the
//! worker dies, however it dies (SIGKILL included).
//!
//! Each program runs under a [`shim`](super::shim), which kills the program's group when the
//! worker's end of its control socket closes; the reaper is the second line, and the one for a
//! group whose shim is gone. The worker forks it once: a loop of raw system calls (no
//! allocation, no locks, as a fork of a multi-threaded process requires) that keeps the set of
//! live groups: the worker registers each program's group as soon as the shim reports it
//! started, and unregisters it once it has killed the group. When its socket to the worker
//! reads end-of-file (the kernel closes the worker's end when the worker dies, for any reason)
//! the reaper SIGKILLs every group still registered and exits. The shims themselves are not
//! registered: they outlive the worker long enough to record a program that ended.
//!
//! A program that leaves its group on purpose (`setsid`, `setpgid`) escapes it; a cgroup would
//! be needed to catch those.

use std::{
    io,
    os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd},
    sync::OnceLock,
};

/// Most groups tracked at once; more than any prefetch runs concurrently. Beyond it a group is
/// not tracked (its program still dies with the worker).
const CAPACITY: usize = 4096;

/// The worker's end of the reaper's socket.
pub struct Reaper {
    socket: OwnedFd,
}

static REAPER: OnceLock<Option<Reaper>> = OnceLock::new();

/// The process's reaper, started on first use; `None` if it could not be started (logged once:
/// programs then still die with the worker, only their helpers may not).
pub fn get() -> Option<&'static Reaper> {
    REAPER
        .get_or_init(|| match start() {
            Ok(reaper) => Some(reaper),
            Err(e) => {
                tracing::warn!(error = %e, "could not start the exec reaper: helpers started by exec programs may outlive a killed worker");
                None
            }
        })
        .as_ref()
}

impl Reaper {
    /// Tracks group `pgid` (a program that leads its own group). A failure is ignored: the
    /// program runs, only its helpers may outlive a killed worker.
    pub fn track(&self, pgid: i32) {
        send(self.socket.as_raw_fd(), pgid);
    }

    /// Stops tracking group `pgid` (it has been killed and its leader reaped).
    pub fn forget(&self, pgid: i32) {
        send(self.socket.as_raw_fd(), -pgid);
    }
}

/// One 4-byte record; never raises SIGPIPE (the reaper may be gone).
fn send(fd: RawFd, value: i32) {
    let bytes = value.to_ne_bytes();
    loop {
        // SAFETY: `bytes` is valid for its length; a closed or invalid fd only yields an error.
        let n = unsafe { libc::send(fd, bytes.as_ptr().cast(), bytes.len(), libc::MSG_NOSIGNAL) };
        if n >= 0 || io::Error::last_os_error().raw_os_error() != Some(libc::EINTR) {
            return;
        }
    }
}

fn start() -> io::Result<Reaper> {
    let mut fds = [0 as RawFd; 2];
    // SAFETY: socketpair writes two descriptors into the array. SEQPACKET keeps records whole
    // and reads end-of-file when every copy of the other end is closed.
    let rc = unsafe {
        libc::socketpair(
            libc::AF_UNIX,
            libc::SOCK_SEQPACKET | libc::SOCK_CLOEXEC,
            0,
            fds.as_mut_ptr(),
        )
    };
    if rc != 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: both descriptors were just created and are owned here alone.
    let (ours, theirs) = unsafe { (OwnedFd::from_raw_fd(fds[0]), OwnedFd::from_raw_fd(fds[1])) };
    // SAFETY: the child runs only `reap`, which makes async-signal-safe system calls on its own
    // stack and never returns, as required after forking a multi-threaded process.
    match unsafe { libc::fork() } {
        -1 => Err(io::Error::last_os_error()),
        0 => unsafe { reap(theirs.as_raw_fd()) },
        _ => {
            drop(theirs);
            Ok(Reaper { socket: ours })
        }
    }
}

/// The reaper's life: keep the set of groups until end-of-file, then kill them all.
///
/// # Safety
/// Only in the child of `fork`; never returns.
unsafe fn reap(socket: RawFd) -> ! {
    unsafe {
        // Holding the worker's sockets (broker, Redis) would keep its connections open after
        // it died, so the broker would not redeliver its tasks: keep only our socket.
        close_all_but(socket);
        // A signal to the worker's process group (Ctrl-C, a supervisor's SIGTERM) is for the
        // worker: the reaper leaves when the worker does.
        for signal in [libc::SIGINT, libc::SIGTERM, libc::SIGHUP, libc::SIGQUIT] {
            libc::signal(signal, libc::SIG_IGN);
        }
        let mut groups = [0 as libc::pid_t; CAPACITY];
        let mut record = [0u8; 4];
        loop {
            let n = libc::recv(socket, record.as_mut_ptr().cast(), record.len(), 0);
            if n < 0 && io::Error::last_os_error().raw_os_error() == Some(libc::EINTR) {
                continue;
            }
            if n != 4 {
                // End-of-file (the worker is gone), or an error: nothing more will come.
                break;
            }
            let value = i32::from_ne_bytes(record);
            let (find, put) = if value > 0 {
                (0, value)
            } else {
                (value.saturating_neg(), 0)
            };
            if let Some(slot) = groups.iter_mut().find(|g| **g == find) {
                *slot = put;
            }
        }
        for &pgid in groups.iter().filter(|g| **g > 0) {
            libc::kill(-pgid, libc::SIGKILL);
        }
        libc::_exit(0)
    }
}

/// Closes every descriptor but `keep`. Async-signal-safe.
unsafe fn close_all_but(keep: RawFd) {
    let keep = libc::c_uint::try_from(keep).unwrap_or(0);
    let ranges = [
        (0, keep.saturating_sub(1)),
        (keep.saturating_add(1), libc::c_uint::MAX),
    ];
    for (first, last) in ranges.into_iter().filter(|(f, l)| f <= l && *f != keep) {
        // SAFETY: close_range only closes descriptors.
        let rc = unsafe { libc::syscall(libc::SYS_close_range, first, last, 0) };
        if rc != 0 {
            // Kernels before 5.9: close one by one, up to a bound.
            for fd in first..last.min(1 << 16) {
                // SAFETY: closing a descriptor that is not open only fails.
                unsafe { libc::close(fd as libc::c_int) };
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Whether `pid` is a live (not zombie) process.
    fn alive(pid: i32) -> bool {
        std::fs::read_to_string(format!("/proc/{pid}/stat")).is_ok_and(|stat| {
            stat.rsplit(')')
                .next()
                .is_some_and(|rest| !rest.trim_start().starts_with('Z'))
        })
    }

    /// Proves: a group registered with a reaper is killed when the reaper's worker end closes,
    /// and a forgotten one is not. (A private reaper: the process-wide one lives on.)
    #[test]
    fn end_of_file_kills_registered_groups_only() {
        let spawn_group = || {
            use std::os::unix::process::CommandExt;
            std::process::Command::new("sleep")
                .arg("30")
                .process_group(0)
                .spawn()
                .unwrap()
        };
        let reaper = start().unwrap();
        let (mut kept, mut forgotten) = (spawn_group(), spawn_group());
        reaper.track(kept.id() as i32);
        reaper.track(forgotten.id() as i32);
        reaper.forget(forgotten.id() as i32);
        drop(reaper);
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
        while kept.try_wait().unwrap().is_none() {
            assert!(
                std::time::Instant::now() < deadline,
                "registered group survived"
            );
            std::thread::sleep(std::time::Duration::from_millis(10));
        }
        assert!(
            alive(forgotten.id() as i32),
            "a forgotten group is left alone"
        );
        let _ = forgotten.kill();
        let _ = forgotten.wait();
    }
}
