//! Running one allowed program in a task's private working directory: the program resolved by
//! the pool's allowlist, a scrubbed environment, optional stdin, bounded output capture, its
//! process group killed on timeout (and with the worker), and its CPU time and peak memory read
//! from the kernel when it exits. Shared by `exec` nodes, tool nodes and exec hooks.

use super::{ExecPolicy, create_private_dir, forbidden_env, reaper, spawn, spawn_error};
use crate::classify::{Classifier, Failure, io_kind_name};
use nix::{sys::signal::Signal, unistd::Pid};
use secflow_common::{ErrorClass, TaskError};
use serde_json::{Value, json};
use std::{
    collections::BTreeMap,
    path::{Component, Path, PathBuf},
    process::{ExitStatus, Stdio},
    time::Duration,
};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWriteExt};

/// The only PATH a program sees.
pub(super) const SAFE_PATH: &str = "/usr/local/bin:/usr/bin:/bin";

/// A task's working directory, removed with everything in it when dropped.
pub struct Workdir(PathBuf);

impl Workdir {
    /// A fresh private directory for `task_id` under the policy's root.
    pub fn create(policy: &ExecPolicy, task_id: &str) -> Result<Self, TaskError> {
        let dir = policy.workdir_root.join(format!(
            "{task_id}-{}",
            &uuid::Uuid::new_v4().simple().to_string()[..8]
        ));
        create_private_dir(&dir).map_err(|e| {
            TaskError::new(
                ErrorClass::Resource,
                "workdir_unavailable",
                format!("cannot create working directory {}: {e}", dir.display()),
            )
        })?;
        Ok(Self(dir))
    }

    /// Its path.
    pub fn path(&self) -> &Path {
        &self.0
    }
}

impl Drop for Workdir {
    fn drop(&mut self) {
        if let Err(e) = std::fs::remove_dir_all(&self.0)
            && e.kind() != std::io::ErrorKind::NotFound
        {
            tracing::warn!(dir = %self.0.display(), error = %e, "could not remove an exec working directory");
        }
    }
}

/// Kills the process group when dropped: on timeout, on cancellation, and to reap helpers
/// the program left behind; then tells the reaper the group is gone.
struct GroupGuard(Option<Pid>);

impl Drop for GroupGuard {
    fn drop(&mut self) {
        if let Some(pgid) = self.0 {
            // ESRCH (group already gone) is the normal case after a clean exit.
            let _ = nix::sys::signal::killpg(pgid, Signal::SIGKILL);
            if let Some(reaper) = reaper::get() {
                reaper.forget(pgid.as_raw());
            }
        }
    }
}

/// What to run.
pub struct Program<'a> {
    /// Name or path, resolved through the pool's allowlist.
    pub program: &'a str,
    /// Arguments (no shell).
    pub args: &'a [String],
    /// Extra environment (the worker's own is not passed on).
    pub env: &'a BTreeMap<String, String>,
    /// Working directory relative to the task's working directory.
    pub cwd: Option<&'a str>,
    /// Bytes written to its stdin (else stdin is empty).
    pub stdin: Option<Vec<u8>>,
    /// A file inside the working directory to read back once it exited (a tool's output file).
    pub read_back: Option<PathBuf>,
}

/// CPU time and peak memory of a program that exited.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Usage {
    /// User + system CPU time, seconds (its waited-for children included).
    pub cpu_seconds: f64,
    /// Peak resident set size, bytes.
    pub max_rss_bytes: u64,
}

/// A program that exited, with what it wrote.
pub struct Finished {
    /// Its exit status.
    pub status: ExitStatus,
    /// Captured stdout and whether it was cut at the output limit.
    pub stdout: (Vec<u8>, bool),
    /// Captured stderr and whether it was cut.
    pub stderr: (Vec<u8>, bool),
    /// Its resource usage, when the kernel reported it.
    pub usage: Option<Usage>,
    /// The contents of [`Program::read_back`], when asked for and present.
    pub read_back: Option<Vec<u8>>,
}

/// How a run ended.
pub enum Ended {
    /// The program exited (with any status).
    Finished(Finished),
    /// It outlived its timeout; its process group was killed.
    TimedOut,
}

impl Finished {
    /// The node output: exit code, stdout, stderr, truncation flags and usage, over `extra`.
    pub fn output(&self, mut extra: Value) -> Value {
        let base = json!({
            "exit_code": self.status.code(),
            "stdout": String::from_utf8_lossy(&self.stdout.0),
            "stderr": String::from_utf8_lossy(&self.stderr.0),
            "stdout_truncated": self.stdout.1,
            "stderr_truncated": self.stderr.1,
        });
        if let (Some(map), Value::Object(base)) = (extra.as_object_mut(), base) {
            for (k, v) in base {
                map.entry(k).or_insert(v);
            }
            if let Some(u) = self.usage {
                map.insert(
                    "usage".into(),
                    json!({ "cpu_seconds": u.cpu_seconds, "max_rss_bytes": u.max_rss_bytes }),
                );
            }
        }
        extra
    }

    /// The classified error of a program that did not exit as it should.
    pub fn failure(&self, program: &str, classifier: &Classifier) -> TaskError {
        use std::os::unix::process::ExitStatusExt;
        let stderr_text = String::from_utf8_lossy(&self.stderr.0);
        let status_text = match (self.status.code(), self.status.signal()) {
            (Some(c), _) => format!("exit code {c}"),
            (None, Some(s)) => format!("killed by signal {s}"),
            (None, None) => "no exit status".to_string(),
        };
        let tail = stderr_text
            .lines()
            .rev()
            .find(|l| !l.trim().is_empty())
            .unwrap_or("")
            .trim();
        let failure = Failure {
            message: stderr_text.clone().into_owned(),
            exit_code: self.status.code(),
            signal: self.status.signal(),
            ..Failure::default()
        };
        classifier.error(
            &failure,
            format!("exec `{program}`: {status_text}: {tail}")
                .trim_end_matches(": ")
                .to_string(),
        )
    }
}

/// Runs `run` in `workdir` under `timeout`, capturing at most `max_output` bytes of each
/// stream. Errors are the program's refusal (not allowed, forbidden environment, cannot start);
/// how it exited is the caller's to judge.
pub async fn run_in(
    policy: &ExecPolicy,
    workdir: &Workdir,
    run: Program<'_>,
    timeout: Duration,
    max_output: usize,
    classifier: &Classifier,
) -> Result<Ended, TaskError> {
    let path = policy.resolve(run.program)?;
    if let Some(name) = run.env.keys().find(|k| forbidden_env(k)) {
        return Err(TaskError::new(
            ErrorClass::Security,
            "exec_env_forbidden",
            format!("exec: the task may not set `{name}` (it changes what gets run)"),
        ));
    }
    let cwd = match run.cwd {
        Some(rel) => {
            let rel = Path::new(rel);
            if !rel.components().all(|c| matches!(c, Component::Normal(_))) {
                return Err(TaskError::validation(
                    "invalid_config",
                    format!(
                        "exec: config.cwd `{}` must be a relative path inside the task's working directory",
                        rel.display()
                    ),
                ));
            }
            let cwd = workdir.0.join(rel);
            create_private_dir(&cwd).map_err(|e| {
                TaskError::new(
                    ErrorClass::Resource,
                    "workdir_unavailable",
                    format!("exec: {e}"),
                )
            })?;
            cwd
        }
        None => workdir.0.clone(),
    };
    let mut cmd = tokio::process::Command::new(&path);
    cmd.args(run.args)
        .env_clear()
        .env("PATH", SAFE_PATH)
        .env("HOME", &workdir.0)
        .env("TMPDIR", &workdir.0)
        .env("LANG", "C.UTF-8")
        .envs(run.env)
        .current_dir(&cwd)
        .stdin(if run.stdin.is_some() {
            Stdio::piped()
        } else {
            Stdio::null()
        })
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .process_group(0)
        .kill_on_drop(true);
    spawn::contain(&mut cmd, policy.memory_limit_bytes);
    let mut child = spawn::spawn(cmd)
        .await
        .map_err(|e| spawn_error(run.program, &e, classifier))?;
    let pid = child.id().and_then(|id| i32::try_from(id).ok());
    // Dropped before the caller's `workdir`: the group is dead before its directory goes.
    let _guard = GroupGuard(pid.map(Pid::from_raw));
    let stdin = child.stdin.take();
    let input = run.stdin;
    let feed = async move {
        if let (Some(mut pipe), Some(bytes)) = (stdin, input) {
            // A program that exits without reading all of it closes the pipe: not an error.
            let _ = pipe.write_all(&bytes).await;
            let _ = pipe.shutdown().await;
        }
    };
    let stdout = child.stdout.take();
    let stderr = child.stderr.take();
    let work = async {
        let (out, err, usage, ()) = tokio::join!(
            capture(stdout, max_output),
            capture(stderr, max_output),
            exit_usage(pid),
            feed
        );
        // Reaped only now: `exit_usage` read the exited program's usage without reaping it.
        (out, err, usage, child.wait().await)
    };
    let Ok((stdout, stderr, usage, status)) = tokio::time::timeout(timeout, work).await else {
        return Ok(Ended::TimedOut);
    };
    let status = status.map_err(|e| {
        let failure = Failure {
            message: e.to_string(),
            io_kind: Some(io_kind_name(e.kind())),
            ..Failure::default()
        };
        classifier.error(
            &failure,
            format!("exec: waiting for `{}`: {e}", run.program),
        )
    })?;
    let read_back = run
        .read_back
        .as_ref()
        .and_then(|p| std::fs::read(workdir.0.join(p)).ok());
    Ok(Ended::Finished(Finished {
        status,
        stdout,
        stderr,
        usage,
        read_back,
    }))
}

/// Waits until `pid` has exited and returns its resource usage, leaving it for `wait` to reap
/// (`waitid` with `WNOWAIT`; the raw system call, whose fifth argument returns the usage).
async fn exit_usage(pid: Option<i32>) -> Option<Usage> {
    let pid = pid?;
    tokio::task::spawn_blocking(move || {
        loop {
            // SAFETY: all-zero is a valid siginfo_t and rusage; both outlive the call.
            let mut info: libc::siginfo_t = unsafe { std::mem::zeroed() };
            let mut usage: libc::rusage = unsafe { std::mem::zeroed() };
            // SAFETY: waitid(P_PID, pid, &info, WEXITED | WNOWAIT, &usage) only writes into
            // the two structures passed.
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
                let seconds = |t: libc::timeval| t.tv_sec as f64 + t.tv_usec as f64 / 1e6;
                return Some(Usage {
                    cpu_seconds: seconds(usage.ru_utime) + seconds(usage.ru_stime),
                    // Linux reports kilobytes.
                    max_rss_bytes: u64::try_from(usage.ru_maxrss).unwrap_or(0) * 1024,
                });
            }
            if std::io::Error::last_os_error().kind() != std::io::ErrorKind::Interrupted {
                return None;
            }
        }
    })
    .await
    .ok()
    .flatten()
}

/// Reads a pipe to its end, keeping the first `limit` bytes; says whether it cut anything.
async fn capture<R: AsyncRead + Unpin>(pipe: Option<R>, limit: usize) -> (Vec<u8>, bool) {
    let Some(mut pipe) = pipe else {
        return (Vec::new(), false);
    };
    let mut kept = Vec::new();
    let mut buf = [0u8; 8192];
    let mut truncated = false;
    loop {
        match pipe.read(&mut buf).await {
            Ok(0) | Err(_) => return (kept, truncated),
            Ok(n) => {
                let room = limit.saturating_sub(kept.len());
                kept.extend_from_slice(&buf[..n.min(room)]);
                truncated |= n > room;
            }
        }
    }
}
