//! Running one allowed program in a task's private working directory: the program resolved by
//! the pool's allowlist, a scrubbed environment, optional stdin, bounded output capture, its
//! process group killed on timeout (and with the worker), and its CPU time and peak memory read
//! from the kernel when it exits. The program runs under the [`shim`], which records its
//! outcome in the [`spool`](super::spool) before the worker hears of it; a redelivered attempt
//! reuses that outcome. Shared by `exec` nodes, tool nodes and exec hooks.

use super::{
    ExecPolicy, create_private_dir, forbidden_env, reaper, shim, spawn_error,
    spool::{Attempt, SpoolError},
};
use crate::classify::{Classification, Classifier, Failure};
use nix::{sys::signal::Signal, unistd::Pid};
use secflow_common::{ErrorClass, TaskError};
use serde_json::{Value, json};
use std::os::fd::AsRawFd;
use std::{
    collections::BTreeMap,
    path::{Component, Path, PathBuf},
    process::{ExitStatus, Stdio},
    time::Duration,
};
use tokio::io::AsyncWriteExt;

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

/// The program's process group, registered with the reaper while the task runs. Dropped, it
/// tells the reaper the group is gone, after killing it unless the shim has answered (on
/// timeout and cancellation; after an answer the shim kills what is left itself, while the
/// group's leader keeps the id).
struct GroupGuard {
    pgid: Pid,
    kill: bool,
}

impl Drop for GroupGuard {
    fn drop(&mut self) {
        if self.kill {
            // ESRCH (group already gone) is a normal case.
            let _ = nix::sys::signal::killpg(self.pgid, Signal::SIGKILL);
        }
        if let Some(reaper) = reaper::get() {
            reaper.forget(self.pgid.as_raw());
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
    /// The task attempt it runs for: its outcome is spooled under it, and a redelivery of the
    /// same attempt reuses the outcome instead of running it again (`None`: hooks).
    pub attempt: Option<Attempt<'a>>,
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
        self.classified_failure(program, classifier).0
    }

    /// [`Self::failure`], with how the classifier placed it.
    pub fn classified_failure(
        &self,
        program: &str,
        classifier: &Classifier,
    ) -> (TaskError, Classification) {
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
        let c = classifier.classify(&failure);
        let message = format!("exec `{program}`: {status_text}: {tail}")
            .trim_end_matches(": ")
            .to_string();
        (TaskError::new(c.class, c.code.clone(), message), c)
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
    // Where the shim records the outcome, if anywhere.
    let spool_to = match (&policy.spool, run.attempt) {
        (Some(spool), Some(attempt)) => {
            let key = spool.key(attempt, &identity(&path, &run, &workdir.0));
            match spool.recorded(&key).await {
                Ok(Some(record)) => {
                    tracing::info!(
                        task_id = attempt.task_id,
                        key,
                        "exec: an earlier delivery of this attempt ran the program to its end (its worker died before recording the task's end): using that outcome, not running it again"
                    );
                    return Ok(Ended::Finished(Finished::from(record)));
                }
                Ok(None) => Some(spool.to(&key, attempt.success_exit_codes)),
                Err(SpoolError::Corrupted(e)) => return Err(e),
                // Redis does not answer: the task got here without it (declared idempotent,
                // it runs at least once) or lost it since its claim. It runs, unrecorded.
                Err(SpoolError::Unreachable(e)) => {
                    tracing::warn!(task_id = attempt.task_id, error = %e, "exec: cannot look up an earlier outcome (Redis unreachable): running the program without a record");
                    None
                }
            }
        }
        _ => None,
    };
    let mut env: BTreeMap<String, String> = [("PATH", SAFE_PATH), ("LANG", "C.UTF-8")]
        .into_iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
    let home = workdir.0.to_string_lossy().into_owned();
    env.insert("HOME".into(), home.clone());
    env.insert("TMPDIR".into(), home);
    env.extend(run.env.iter().map(|(k, v)| (k.clone(), v.clone())));
    let request = shim::Request {
        program: path,
        args: run.args.to_vec(),
        env,
        cwd: cwd.clone(),
        memory_limit_bytes: policy.memory_limit_bytes,
        max_output,
        read_back: run.read_back.as_ref().map(|p| workdir.0.join(p)),
        spool: spool_to,
    };
    let shim_path = policy.shim.as_ref().ok_or_else(|| {
        TaskError::new(
            ErrorClass::Permanent,
            "exec_shim_missing",
            "exec: this worker has no exec shim (the worker binary; --exec-shim)",
        )
    })?;
    let (ours, theirs) =
        std::os::unix::net::UnixStream::pair().map_err(|e| shim_failed(run.program, &e))?;
    // The task's environment goes to the program only, in the request: the shim, which holds
    // the Redis credentials, starts with none (nothing a task sets reaches its resolver).
    let mut cmd = tokio::process::Command::new(shim_path);
    cmd.arg(shim::ARG)
        .env_clear()
        .current_dir(&cwd)
        .stdin(if run.stdin.is_some() {
            Stdio::piped()
        } else {
            Stdio::null()
        })
        .stdout(Stdio::null())
        // The shim's own complaints go to the worker's log stream.
        .stderr(Stdio::inherit());
    // Not killed when the task is dropped (timeout, cancellation): the closed control socket
    // makes the shim kill the program's group and reap it, then leave (tokio reaps the shim).
    let control_fd = theirs.as_raw_fd();
    // SAFETY: between fork and exec, only dup2/fcntl on descriptors this process owns.
    unsafe {
        cmd.pre_exec(move || {
            if control_fd == shim::CONTROL_FD {
                // dup2 onto itself would leave close-on-exec set.
                if libc::fcntl(control_fd, libc::F_SETFD, 0) != 0 {
                    return Err(std::io::Error::last_os_error());
                }
            } else if libc::dup2(control_fd, shim::CONTROL_FD) < 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
    // Started before the first program, so it exists when the program's group is registered.
    let _ = reaper::get();
    // The shim not starting is this worker's problem, not the task's program's.
    let mut child = cmd.spawn().map_err(|e| shim_failed(run.program, &e))?;
    drop(theirs);
    let mut control = Control::new(ours).map_err(|e| shim_failed(run.program, &e))?;
    control
        .send(&request)
        .await
        .map_err(|e| shim_failed(run.program, &e))?;
    let pid = match control.reply().await {
        Ok(shim::Reply::Started { pid }) => pid,
        Ok(shim::Reply::CannotStart { errno, message }) => {
            let e = errno.map_or_else(
                || std::io::Error::other(message),
                std::io::Error::from_raw_os_error,
            );
            return Err(spawn_error(run.program, &e, classifier));
        }
        Ok(other) => {
            return Err(shim_failed(
                run.program,
                &format!("answered {other:?} first"),
            ));
        }
        Err(e) => return Err(shim_failed(run.program, &e)),
    };
    if let Some(reaper) = reaper::get() {
        reaper.track(pid);
    }
    // Dropped before the caller's `workdir`: the group is dead before its directory goes.
    let mut guard = GroupGuard {
        pgid: Pid::from_raw(pid),
        kill: true,
    };
    let stdin = child.stdin.take();
    let input = run.stdin;
    let feed = async move {
        if let (Some(mut pipe), Some(bytes)) = (stdin, input) {
            // A program that exits without reading all of it closes the pipe: not an error.
            let _ = pipe.write_all(&bytes).await;
            let _ = pipe.shutdown().await;
        }
    };
    // The shim leaves after its answer, once it has killed the program's helpers and reaped
    // what it must: dropped here, tokio reaps it when it exits.
    let work = async {
        let (reply, ()) = tokio::join!(control.reply(), feed);
        reply
    };
    let Ok(reply) = tokio::time::timeout(timeout, work).await else {
        return Ok(Ended::TimedOut);
    };
    drop(child);
    match reply {
        Ok(shim::Reply::Finished(record)) => {
            guard.kill = false;
            Ok(Ended::Finished(Finished::from(record)))
        }
        Ok(other) => Err(shim_failed(run.program, &format!("answered {other:?}"))),
        Err(e) => Err(shim_failed(run.program, &e)),
    }
}

/// What names one run of a program within an attempt: path, arguments, environment,
/// directory and stdin, with the working directory's path (new for every delivery: input and
/// output files live there) replaced by a placeholder.
fn identity(path: &Path, run: &Program<'_>, workdir: &Path) -> Vec<Vec<u8>> {
    use std::os::unix::ffi::OsStrExt;
    let dir = workdir.as_os_str().as_bytes();
    let plain = |bytes: &[u8]| replace(bytes, dir, b"${workdir}");
    let mut parts = vec![path.as_os_str().as_bytes().to_vec()];
    parts.extend(run.args.iter().map(|a| plain(a.as_bytes())));
    parts.push(b"\0env".to_vec());
    for (k, v) in run.env {
        parts.push(k.as_bytes().to_vec());
        parts.push(plain(v.as_bytes()));
    }
    parts.push(run.cwd.unwrap_or_default().as_bytes().to_vec());
    parts.push(plain(run.stdin.as_deref().unwrap_or_default()));
    parts
}

/// `bytes` with every `from` replaced by `to`.
fn replace(bytes: &[u8], from: &[u8], to: &[u8]) -> Vec<u8> {
    if from.is_empty() {
        return bytes.to_vec();
    }
    let mut out = Vec::with_capacity(bytes.len());
    let mut rest = bytes;
    while let Some(at) = rest.windows(from.len()).position(|w| w == from) {
        out.extend_from_slice(&rest[..at]);
        out.extend_from_slice(to);
        rest = &rest[at + from.len()..];
    }
    out.extend_from_slice(rest);
    out
}

/// The worker's end of a shim's control socket.
struct Control {
    reader: tokio::io::BufReader<tokio::net::UnixStream>,
}

impl Control {
    fn new(socket: std::os::unix::net::UnixStream) -> std::io::Result<Self> {
        socket.set_nonblocking(true)?;
        Ok(Self {
            reader: tokio::io::BufReader::new(tokio::net::UnixStream::from_std(socket)?),
        })
    }

    async fn send(&mut self, request: &shim::Request) -> Result<(), String> {
        let mut line = serde_json::to_vec(request).map_err(|e| e.to_string())?;
        line.push(b'\n');
        self.reader
            .get_mut()
            .write_all(&line)
            .await
            .map_err(|e| e.to_string())
    }

    /// The next answer; the shim ending without one is an error.
    async fn reply(&mut self) -> Result<shim::Reply, String> {
        use tokio::io::AsyncBufReadExt;
        let mut line = String::new();
        match self.reader.read_line(&mut line).await {
            Ok(0) => Err("it ended without answering".into()),
            Ok(_) => serde_json::from_str(&line).map_err(|e| format!("unreadable answer: {e}")),
            Err(e) => Err(e.to_string()),
        }
    }
}

fn shim_failed(program: &str, e: &dyn std::fmt::Display) -> TaskError {
    TaskError::new(
        ErrorClass::Transient,
        "exec_shim_failed",
        format!("exec: the shim running `{program}` failed: {e}"),
    )
}

impl From<shim::Record> for Finished {
    fn from(r: shim::Record) -> Self {
        use std::os::unix::process::ExitStatusExt;
        Self {
            status: ExitStatus::from_raw(r.status),
            stdout: (r.stdout.into_bytes(), r.stdout_truncated),
            stderr: (r.stderr.into_bytes(), r.stderr_truncated),
            usage: r
                .cpu_seconds
                .zip(r.max_rss_bytes)
                .map(|(cpu_seconds, max_rss_bytes)| Usage {
                    cpu_seconds,
                    max_rss_bytes,
                }),
            // Hex from the shim; text from nowhere else, so anything else reads as none.
            read_back: r.read_back.and_then(|h| hex::decode(h).ok()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Proves: a run's identity does not depend on its working directory's path (new for every
    /// delivery), and does on what the program is given.
    #[test]
    fn identity_ignores_the_working_directory_path() {
        let env = BTreeMap::from([("OUT".to_string(), "/w/one/out.json".to_string())]);
        let program = |args: &'static [String], stdin: &str| Program {
            program: "nuclei",
            args,
            env: &env,
            cwd: None,
            stdin: Some(stdin.as_bytes().to_vec()),
            read_back: None,
            attempt: None,
        };
        let args: &'static [String] = Box::leak(Box::new([
            "-list".to_string(),
            "/w/one/input-urls.txt".to_string(),
        ]));
        let first = identity(
            Path::new("/usr/bin/nuclei"),
            &program(args, "/w/one"),
            Path::new("/w/one"),
        );
        let env_two = BTreeMap::from([("OUT".to_string(), "/w/two/out.json".to_string())]);
        let args_two: &'static [String] = Box::leak(Box::new([
            "-list".to_string(),
            "/w/two/input-urls.txt".to_string(),
        ]));
        let second = identity(
            Path::new("/usr/bin/nuclei"),
            &Program {
                env: &env_two,
                ..program(args_two, "/w/two")
            },
            Path::new("/w/two"),
        );
        assert_eq!(first, second);
        let other: &'static [String] = Box::leak(Box::new(["-list".to_string(), "x".to_string()]));
        assert_ne!(
            first,
            identity(
                Path::new("/usr/bin/nuclei"),
                &program(other, "/w/one"),
                Path::new("/w/one")
            )
        );
        assert_eq!(replace(b"a/w/b/w", b"/w", b"X"), b"aX/bX");
    }
}
