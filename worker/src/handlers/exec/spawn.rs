//! Starts `exec` programs so they never outlive their worker: a parent-death signal and
//! resource limits set between fork and exec, every fork made from one thread that lives as long
//! as the process, and each program's group registered with the [`reaper`](super::reaper) as
//! soon as it has exec'd.
//!
//! Why a thread of our own: `PR_SET_PDEATHSIG` fires when the *thread* that forked the child
//! exits, not when its process does. tokio forks on whichever thread polls the spawn: a runtime
//! worker (gone when its runtime shuts down, e.g. an in-process worker in a test) or a
//! blocking-pool thread (which exits after 10 s idle). Either would SIGKILL a healthy program
//! mid-run. The spawner thread below is started once, never joined, and blocks on a channel
//! whose sender is a static that is never dropped: it exits only with the process.
//!
//! The kernel clears the parent-death signal when a program execs a set-user-ID or
//! capability-raising binary; such a program is still killed with its group by the reaper.

use std::{
    io,
    sync::{OnceLock, mpsc},
};
use tokio::{
    process::{Child, Command},
    runtime::Handle,
    sync::oneshot,
};

/// One program to start, with the runtime its `Child` is driven by.
struct Request {
    cmd: Command,
    runtime: Handle,
    reply: oneshot::Sender<io::Result<Child>>,
}

static SPAWNER: OnceLock<Result<mpsc::Sender<Request>, String>> = OnceLock::new();

/// Starts `cmd` from the spawner thread after [`contain`] set it up.
pub async fn spawn(cmd: Command) -> io::Result<Child> {
    let sender = SPAWNER
        .get_or_init(|| {
            let (sender, requests) = mpsc::channel::<Request>();
            std::thread::Builder::new()
                .name("secflow-exec-spawner".into())
                .spawn(move || serve(&requests))
                .map(|_| sender)
                .map_err(|e| format!("cannot start the exec spawner thread: {e}"))
        })
        .as_ref()
        .map_err(|e| io::Error::other(e.clone()))?;
    let (reply, answer) = oneshot::channel();
    let request = Request {
        cmd,
        runtime: Handle::current(),
        reply,
    };
    let gone = || io::Error::other("the exec spawner thread is gone; restart the worker");
    sender.send(request).map_err(|_| gone())?;
    answer.await.map_err(|_| gone())?
}

/// The spawner thread: starts each requested program in its caller's runtime (so the caller
/// can await it), registers its group with the reaper and hands it back. A caller that went
/// away meanwhile drops the child, which kills it (`kill_on_drop`).
fn serve(requests: &mpsc::Receiver<Request>) {
    while let Ok(Request {
        mut cmd,
        runtime,
        reply,
    }) = requests.recv()
    {
        let child = {
            let _entered = runtime.enter();
            cmd.spawn()
        };
        if let (Ok(child), Some(reaper)) = (&child, super::reaper::get())
            && let Some(pid) = child.id().and_then(|id| i32::try_from(id).ok())
        {
            reaper.track(pid);
        }
        let _ = reply.send(child);
    }
}

/// Sets up what runs in the child between fork and exec: no core dumps, the memory cap, and
/// the parent-death signal (checked against the race where the worker died before it was set).
/// `cmd` must make the child a group leader (`process_group(0)`): the reaper tracks it by
/// its group.
pub fn contain(cmd: &mut Command, memory_limit_bytes: Option<u64>) {
    use nix::sys::resource::{Resource, setrlimit};
    let worker = nix::unistd::getpid();
    // Started now, in the worker, so it exists before the first program does.
    let _ = super::reaper::get();
    // SAFETY: the closure runs in the child between fork and exec. It only makes
    // async-signal-safe system calls (setrlimit, prctl, getppid) and allocates nothing, errors
    // included (`io::Error` from an errno does not allocate).
    unsafe {
        cmd.pre_exec(move || {
            setrlimit(Resource::RLIMIT_CORE, 0, 0).map_err(io::Error::from)?;
            if let Some(bytes) = memory_limit_bytes {
                setrlimit(Resource::RLIMIT_AS, bytes, bytes).map_err(io::Error::from)?;
            }
            nix::sys::prctl::set_pdeathsig(nix::sys::signal::Signal::SIGKILL)
                .map_err(io::Error::from)?;
            // Re-parented already: the worker died before the signal was armed.
            if nix::unistd::getppid() != worker {
                return Err(io::Error::from_raw_os_error(libc::ESRCH));
            }
            Ok(())
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Proves: a program started for a thread that exits right after (as a blocking-pool thread
    /// does) is not killed by its parent-death signal: the fork happened on the spawner thread.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_program_outlives_the_thread_that_asked_for_it() {
        let mut cmd = Command::new("sh");
        cmd.args(["-c", "sleep 0.3"])
            .process_group(0)
            .kill_on_drop(true);
        contain(&mut cmd, None);
        let runtime = Handle::current();
        let mut child = std::thread::spawn(move || runtime.block_on(spawn(cmd)))
            .join()
            .unwrap()
            .unwrap();
        let status = child.wait().await.unwrap();
        assert!(status.success(), "the program was killed: {status:?}");
    }
}
