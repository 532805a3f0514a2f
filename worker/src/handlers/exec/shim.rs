//! The exec shim: a small process between the worker and each `exec` program, so that what a
//! program did is recorded even when its worker dies right after.
//!
//! Without it, a program could finish its side effect and exit, and the worker be killed
//! before it recorded the task's completion: the redelivered task then ran the program again
//! (the side effect twice). The shim is the worker's own binary started as
//! `worker __exec-shim` with an empty environment and the program's stdin; the program's
//! environment and directory come with the request (the task's environment never reaches the
//! shim, which holds the Redis credentials). It starts the program as its child (own process
//! group, parent-death signal, resource limits), is the subreaper of what the program starts,
//! captures its output, waits for it, and *before* it tells the worker, stores the outcome of a
//! program that succeeded (exited with one of its success codes) in Redis under the attempt's
//! spool key
//! ([`super::spool`]). It does not die with the worker: it ignores the signals a terminal or a
//! supervisor sends the worker's group, and ends when its work is done. When the worker's end of
//! its control socket closes (the worker died, or gave up on the program), it kills the
//! program's group at once; a program that had already succeeded is still recorded.
//! A redelivered attempt finds the record and reports it instead of running the program again.
//!
//! After answering, it kills what is left of the program's group (helpers it started), then
//! reaps the program and every orphan it inherited. The program is waited for without being
//! reaped until then, so its group id stays reserved: no kill can reach a reused group.
//!
//! What is left: a program killed (with its worker) between its side effect and its own exit
//! runs again; a program that failed, or whose record would exceed its size cap, is not
//! recorded (a later delivery runs it again).
//!
//! Protocol on fd 3 (a Unix stream socket): the worker writes one [`Request`] line; the shim
//! answers one [`Reply::Started`] (or [`Reply::CannotStart`]) line, then one
//! [`Reply::Finished`] line, and exits.

use serde::{Deserialize, Serialize};
use std::{
    collections::BTreeMap,
    io::{BufRead, BufReader, Read, Write},
    os::{
        fd::FromRawFd,
        unix::{net::UnixStream, process::CommandExt},
    },
    path::PathBuf,
    process::Stdio,
};

/// The first argument that makes the worker binary a shim.
pub const ARG: &str = "__exec-shim";

/// The descriptor of the control socket in the shim.
pub(super) const CONTROL_FD: i32 = 3;

/// What to run (the environment, working directory and stdin are the shim's own).
#[derive(Debug, Serialize, Deserialize)]
pub(super) struct Request {
    /// The resolved program.
    pub program: PathBuf,
    /// Its arguments.
    pub args: Vec<String>,
    /// Its whole environment.
    pub env: BTreeMap<String, String>,
    /// Its working directory.
    pub cwd: PathBuf,
    /// Its address-space cap.
    pub memory_limit_bytes: Option<u64>,
    /// Bytes of stdout and of stderr kept.
    pub max_output: usize,
    /// A file to read back once it exited.
    pub read_back: Option<PathBuf>,
    /// Where to record the outcome before answering.
    pub spool: Option<SpoolTo>,
}

/// A Redis key the outcome goes to.
#[derive(Debug, Serialize, Deserialize)]
pub(super) struct SpoolTo {
    /// The Redis URL.
    pub url: String,
    /// The attempt's spool key.
    pub key: String,
    /// How long the record is kept.
    pub ttl_ms: u64,
    /// Only a program that exits with one of these is recorded.
    pub success_exit_codes: Vec<i32>,
    /// A record larger than this is not stored.
    pub max_bytes: usize,
}

/// The shim's answers.
#[derive(Debug, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub(super) enum Reply {
    /// The program runs as `pid`, leading its own process group.
    Started {
        /// Its pid (and group id).
        pid: i32,
    },
    /// It could not be started.
    CannotStart {
        /// The OS error, when there is one.
        errno: Option<i32>,
        /// What went wrong.
        message: String,
    },
    /// It ended.
    Finished(Record),
}

/// How a program ended and what it left: the shim's answer and the spooled record.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Record {
    /// Its raw wait status.
    pub status: i32,
    /// Captured stdout (lossy UTF-8) and whether it was cut.
    pub stdout: String,
    /// Whether stdout was cut at the limit.
    pub stdout_truncated: bool,
    /// Captured stderr (lossy UTF-8).
    pub stderr: String,
    /// Whether stderr was cut at the limit.
    pub stderr_truncated: bool,
    /// CPU seconds (user + system), when known.
    pub cpu_seconds: Option<f64>,
    /// Peak resident bytes, when known.
    pub max_rss_bytes: Option<u64>,
    /// The read-back file's content (hex: its bytes as they were), when asked for and present.
    pub read_back: Option<String>,
}

/// The shim's life; never returns. Called by the worker binary's `main` before anything else
/// (no runtime, no logging set up).
pub fn main() -> ! {
    let code = match serve() {
        Ok(()) => 0,
        Err(e) => {
            eprintln!("secflow exec shim: {e}");
            1
        }
    };
    std::process::exit(code)
}

fn serve() -> Result<(), String> {
    // A signal to the worker's process group (Ctrl-C, a supervisor's SIGTERM) is for the
    // worker: the shim finishes recording and leaves on its own.
    for signal in [libc::SIGINT, libc::SIGTERM, libc::SIGHUP, libc::SIGQUIT] {
        // SAFETY: setting a signal to be ignored has no memory effects.
        unsafe { libc::signal(signal, libc::SIG_IGN) };
    }
    // Close-on-exec (the program must not inherit it); failing means fd 3 is not open: the shim
    // was not started by a worker.
    // SAFETY: fcntl on a descriptor number only reads or sets its flags.
    if unsafe { libc::fcntl(CONTROL_FD, libc::F_SETFD, libc::FD_CLOEXEC) } != 0 {
        return Err(format!(
            "fd {CONTROL_FD} is not open: `worker {ARG}` is started by a worker for one exec program, not by hand"
        ));
    }
    // SAFETY: fd 3 is open and is the control socket the worker handed over (checked by the
    // first read); nothing else in this process owns it.
    let control = unsafe { UnixStream::from_raw_fd(CONTROL_FD) };
    let mut reader = BufReader::new(
        control
            .try_clone()
            .map_err(|e| format!("fd {CONTROL_FD} is not the worker's control socket: {e}"))?,
    );
    let mut line = String::new();
    (&mut reader)
        .take(64 << 20)
        .read_line(&mut line)
        .map_err(|e| format!("reading the request: {e}"))?;
    let request: Request =
        serde_json::from_str(&line).map_err(|e| format!("unreadable request: {e}"))?;
    let mut answer = control;
    // What the program starts in the background is re-parented here, not to init, and reaped
    // below (in a container the worker is init and reaps nobody's orphans).
    // SAFETY: prctl with integer arguments only changes this process's attributes.
    unsafe { libc::prctl(libc::PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0) };
    let mut child = match program(&request).spawn() {
        Ok(child) => child,
        Err(e) => {
            send(
                &mut answer,
                &Reply::CannotStart {
                    errno: e.raw_os_error(),
                    message: e.to_string(),
                },
            );
            return Ok(());
        }
    };
    let pid = i32::try_from(child.id()).map_err(|_| "pid out of range".to_string())?;
    send(&mut answer, &Reply::Started { pid });
    // Whether the program has been reaped (its group id may then be reused): a kill of its
    // group happens only under this lock, while it has not been.
    let reaped = std::sync::Arc::new(std::sync::Mutex::new(false));
    let kill_group = {
        let reaped = std::sync::Arc::clone(&reaped);
        move || {
            let reaped = reaped
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner);
            if !*reaped {
                // SAFETY: kill only sends a signal.
                unsafe { libc::kill(-pid, libc::SIGKILL) };
            }
        }
    };
    // The worker closing its end (it died, timed the program out, or dropped the task) kills
    // the group now.
    let on_close = kill_group.clone();
    std::thread::spawn(move || {
        let mut buf = [0u8; 64];
        while matches!(reader.read(&mut buf), Ok(n) if n > 0) {}
        on_close();
    });
    let max = request.max_output;
    let stdout = child.stdout.take();
    let stderr = child.stderr.take();
    let out = std::thread::spawn(move || capture(stdout, max));
    let err = std::thread::spawn(move || capture(stderr, max));
    let (status, usage) = exited(pid);
    let (stdout, stdout_truncated) = out.join().unwrap_or_default();
    let (stderr, stderr_truncated) = err.join().unwrap_or_default();
    let record = Record {
        status,
        stdout: String::from_utf8_lossy(&stdout).into_owned(),
        stdout_truncated,
        stderr: String::from_utf8_lossy(&stderr).into_owned(),
        stderr_truncated,
        cpu_seconds: usage.map(|u| u.0),
        max_rss_bytes: usage.map(|u| u.1),
        read_back: request
            .read_back
            .as_ref()
            .and_then(|p| std::fs::read(p).ok())
            .map(hex::encode),
    };
    // Recorded before the worker hears of it: from here on, a worker dying does not make the
    // program run again. Only a program that succeeded is recorded (a failed one runs again).
    if let Some(spool) = &request.spool
        && libc::WIFEXITED(status)
        && spool
            .success_exit_codes
            .contains(&libc::WEXITSTATUS(status))
    {
        let value = serde_json::to_string(&record).map_err(|e| e.to_string())?;
        if value.len() > spool.max_bytes {
            eprintln!(
                "secflow exec shim: the outcome of `{}` is {} bytes, over the record cap of {} (--exec-spool-max-bytes): not recorded (it runs again if its worker dies now)",
                request.program.display(),
                value.len(),
                spool.max_bytes
            );
        } else if let Err(e) = secflow_common::redis_pool::set_once(
            &spool.url,
            &spool.key,
            &value,
            spool.ttl_ms,
            std::time::Duration::from_secs(5),
        ) {
            eprintln!(
                "secflow exec shim: could not record the outcome of `{}` (it may run again if its worker dies now): {e}",
                request.program.display()
            );
        }
    }
    send(&mut answer, &Reply::Finished(record));
    // Helpers the program left in its group die now (its leader, not reaped yet, keeps the
    // group id reserved); then the leader and every orphan re-parented here are reaped.
    kill_group();
    {
        let mut reaped = reaped
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        // SAFETY: waitpid on our own child only writes the status.
        unsafe { libc::waitpid(pid, std::ptr::null_mut(), 0) };
        *reaped = true;
    }
    // Reaped above; std's `Child` does not wait on drop.
    drop(child);
    reap_orphans(std::time::Duration::from_secs(5));
    Ok(())
}

/// Reaps children until none is left or `within` has passed (orphans of the program, killed
/// with its group, die at once; one that left the group may outlive this).
fn reap_orphans(within: std::time::Duration) {
    let deadline = std::time::Instant::now() + within;
    loop {
        // SAFETY: waitpid only writes the status.
        let r = unsafe { libc::waitpid(-1, std::ptr::null_mut(), libc::WNOHANG) };
        if r < 0 && std::io::Error::last_os_error().raw_os_error() != Some(libc::EINTR) {
            return; // ECHILD: none left.
        }
        if r == 0 {
            if std::time::Instant::now() >= deadline {
                return;
            }
            std::thread::sleep(std::time::Duration::from_millis(10));
        }
    }
}

/// The program's command: its own process group, no core dumps, the memory cap, killed when
/// the shim dies (checked against the race where the shim died before it was armed), and the
/// signals the shim ignores back to their defaults.
fn program(request: &Request) -> std::process::Command {
    let mut cmd = std::process::Command::new(&request.program);
    cmd.args(&request.args)
        .env_clear()
        .envs(&request.env)
        .current_dir(&request.cwd)
        .stdin(Stdio::inherit())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .process_group(0);
    let shim = nix::unistd::getpid();
    let limit = request.memory_limit_bytes;
    // SAFETY: the closure runs in the child between fork and exec and only makes
    // async-signal-safe system calls (signal, setrlimit, prctl, getppid); it allocates nothing.
    unsafe {
        cmd.pre_exec(move || {
            use nix::sys::resource::{Resource, setrlimit};
            for signal in [libc::SIGINT, libc::SIGTERM, libc::SIGHUP, libc::SIGQUIT] {
                libc::signal(signal, libc::SIG_DFL);
            }
            setrlimit(Resource::RLIMIT_CORE, 0, 0).map_err(std::io::Error::from)?;
            if let Some(bytes) = limit {
                setrlimit(Resource::RLIMIT_AS, bytes, bytes).map_err(std::io::Error::from)?;
            }
            nix::sys::prctl::set_pdeathsig(nix::sys::signal::Signal::SIGKILL)
                .map_err(std::io::Error::from)?;
            if nix::unistd::getppid() != shim {
                return Err(std::io::Error::from_raw_os_error(libc::ESRCH));
            }
            Ok(())
        });
    }
    cmd
}

/// Waits until `pid` has exited, without reaping it (its group id stays reserved): its raw wait
/// status and (CPU seconds, peak RSS bytes). `waitid` with `WNOWAIT`, by the raw system call,
/// whose fifth argument returns the usage.
fn exited(pid: i32) -> (i32, Option<(f64, u64)>) {
    loop {
        // SAFETY: all-zero is a valid siginfo_t and rusage; both outlive the call, which only
        // writes into them.
        let mut info: libc::siginfo_t = unsafe { std::mem::zeroed() };
        let mut usage: libc::rusage = unsafe { std::mem::zeroed() };
        let r = unsafe {
            libc::syscall(
                libc::SYS_waitid,
                libc::P_PID,
                pid,
                &mut info as *mut libc::siginfo_t,
                libc::WEXITED | libc::WNOWAIT,
                &mut usage as *mut libc::rusage,
            )
        };
        if r == 0 {
            // SAFETY: filled in by a successful waitid.
            let (code, value) = unsafe { (info.si_code, info.si_status()) };
            // The raw wait status `ExitStatus::from_raw` reads: exit code << 8, or the signal.
            let status = if code == libc::CLD_EXITED {
                (value & 0xff) << 8
            } else {
                value & 0x7f
            };
            let seconds = |t: libc::timeval| t.tv_sec as f64 + t.tv_usec as f64 / 1e6;
            let cpu = seconds(usage.ru_utime) + seconds(usage.ru_stime);
            // Linux reports kilobytes.
            let rss = u64::try_from(usage.ru_maxrss).unwrap_or(0) * 1024;
            return (status, Some((cpu, rss)));
        }
        if std::io::Error::last_os_error().raw_os_error() != Some(libc::EINTR) {
            // Not our child (cannot happen): report a kill.
            return (libc::SIGKILL, None);
        }
    }
}

/// Reads a pipe to its end, keeping the first `limit` bytes; says whether it cut anything.
fn capture(pipe: Option<impl Read>, limit: usize) -> (Vec<u8>, bool) {
    let Some(mut pipe) = pipe else {
        return (Vec::new(), false);
    };
    let mut kept = Vec::new();
    let mut buf = [0u8; 8192];
    let mut truncated = false;
    loop {
        match pipe.read(&mut buf) {
            Ok(0) => return (kept, truncated),
            Ok(n) => {
                let room = limit.saturating_sub(kept.len());
                kept.extend_from_slice(&buf[..n.min(room)]);
                truncated |= n > room;
            }
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(_) => return (kept, truncated),
        }
    }
}

/// One reply line; a worker that is gone is not an error (the record is in Redis).
fn send(control: &mut UnixStream, reply: &Reply) {
    if let Ok(mut line) = serde_json::to_vec(reply) {
        line.push(b'\n');
        let _ = control.write_all(&line);
    }
}
