//! What an `exec` run leaves behind is removed when it ends, however it ends: its process
//! group is killed and its working directory deleted.

use nix::{sys::signal::Signal, unistd::Pid};
use std::path::PathBuf;

/// Kills the process group when dropped: on timeout, on cancellation, and to reap helpers
/// the program left behind; then tells the reaper the group is gone.
pub(super) struct GroupGuard(pub(super) Option<Pid>);

impl Drop for GroupGuard {
    fn drop(&mut self) {
        if let Some(pgid) = self.0 {
            // ESRCH (group already gone) is the normal case after a clean exit.
            let _ = nix::sys::signal::killpg(pgid, Signal::SIGKILL);
            if let Some(reaper) = super::reaper::get() {
                reaper.forget(pgid.as_raw());
            }
        }
    }
}

/// The task's working directory, removed with everything in it when dropped.
pub(super) struct Workdir(pub(super) PathBuf);

impl Drop for Workdir {
    fn drop(&mut self) {
        if let Err(e) = std::fs::remove_dir_all(&self.0)
            && e.kind() != std::io::ErrorKind::NotFound
        {
            tracing::warn!(dir = %self.0.display(), error = %e, "could not remove an exec working directory");
        }
    }
}
