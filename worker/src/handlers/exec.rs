//! `exec`: runs a program by argv (never through a shell) with a timeout that kills its whole
//! process group, bounded output capture, and classified failures.

use super::parse_config;
use crate::classify::{Classifier, Failure, io_kind_name};
use nix::{sys::signal::Signal, unistd::Pid};
use secflow_common::{ErrorClass, TaskError, nodes::ExecConfig};
use serde_json::{Value, json};
use std::{process::Stdio, time::Duration};
use tokio::io::{AsyncRead, AsyncReadExt};

const DEFAULT_PATH: &str = "/usr/local/bin:/usr/bin:/bin";

/// Kills the process group when dropped: on timeout, on cancellation, and to reap helpers
/// the program left behind.
struct GroupGuard(Option<Pid>);

impl Drop for GroupGuard {
    fn drop(&mut self) {
        if let Some(pgid) = self.0 {
            // ESRCH (group already gone) is the normal case after a clean exit.
            let _ = nix::sys::signal::killpg(pgid, Signal::SIGKILL);
        }
    }
}

/// Runs the configured program and returns its exit code and captured output.
pub async fn run(
    config: &Value,
    timeout: Duration,
    max_output: usize,
    classifier: &Classifier,
) -> Result<Value, TaskError> {
    let cfg: ExecConfig = parse_config("exec", config)?;
    let Some((program, args)) = cfg.argv.split_first() else {
        return Err(TaskError::validation(
            "invalid_config",
            "exec: config.argv must name a program",
        ));
    };
    let mut cmd = tokio::process::Command::new(program);
    cmd.args(args)
        .env_clear()
        .env(
            "PATH",
            std::env::var_os("PATH").unwrap_or_else(|| DEFAULT_PATH.into()),
        )
        .envs(&cfg.env)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .process_group(0)
        .kill_on_drop(true);
    if let Some(dir) = &cfg.cwd {
        cmd.current_dir(dir);
    }
    let mut child = cmd
        .spawn()
        .map_err(|e| spawn_error(program, &e, classifier))?;
    let _guard = GroupGuard(
        child
            .id()
            .and_then(|id| i32::try_from(id).ok())
            .map(Pid::from_raw),
    );
    let stdout = child.stdout.take();
    let stderr = child.stderr.take();
    let work = async {
        let (out, err, status) = tokio::join!(
            capture(stdout, max_output),
            capture(stderr, max_output),
            child.wait()
        );
        (out, err, status)
    };
    let Ok((out, err, status)) = tokio::time::timeout(timeout, work).await else {
        return Err(TaskError::new(
            ErrorClass::Transient,
            "timeout",
            format!(
                "exec: `{program}` did not finish within {} ms; its process group was killed",
                timeout.as_millis()
            ),
        ));
    };
    let status = status.map_err(|e| {
        let failure = Failure {
            message: e.to_string(),
            io_kind: Some(io_kind_name(e.kind())),
            ..Failure::default()
        };
        classifier.error(&failure, format!("exec: waiting for `{program}`: {e}"))
    })?;
    let stderr_text = String::from_utf8_lossy(&err.0).into_owned();
    if status.success() {
        return Ok(json!({
            "exit_code": 0,
            "stdout": String::from_utf8_lossy(&out.0),
            "stderr": stderr_text,
            "stdout_truncated": out.1,
            "stderr_truncated": err.1,
        }));
    }
    use std::os::unix::process::ExitStatusExt;
    let status_text = match (status.code(), status.signal()) {
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
        message: stderr_text.clone(),
        exit_code: status.code(),
        signal: status.signal(),
        ..Failure::default()
    };
    Err(classifier.error(
        &failure,
        format!("exec `{program}`: {status_text}: {tail}")
            .trim_end_matches(": ")
            .to_string(),
    ))
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

fn spawn_error(program: &str, e: &std::io::Error, classifier: &Classifier) -> TaskError {
    let message = format!("exec: cannot start `{program}`: {e}");
    match e.kind() {
        // The task named a program this worker does not have: the task is wrong.
        std::io::ErrorKind::NotFound => TaskError::validation("executable_not_found", message),
        std::io::ErrorKind::PermissionDenied => {
            TaskError::new(ErrorClass::Permanent, "not_executable", message)
        }
        kind => classifier.error(
            &Failure {
                message: e.to_string(),
                io_kind: Some(io_kind_name(kind)),
                ..Failure::default()
            },
            message,
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const T: Duration = Duration::from_secs(10);

    async fn run_default(
        config: &Value,
        timeout: Duration,
        max: usize,
    ) -> Result<Value, TaskError> {
        run(config, timeout, max, &Classifier::defaults()).await
    }

    #[tokio::test]
    async fn captures_output_and_exit_code() {
        let out = run_default(
            &json!({"argv": ["sh", "-c", "echo hi; echo warn >&2"]}),
            T,
            1024,
        )
        .await
        .unwrap();
        assert_eq!(out["stdout"], "hi\n");
        assert_eq!(out["stderr"], "warn\n");
    }

    #[tokio::test]
    async fn output_is_bounded() {
        let out = run_default(
            &json!({"argv": ["sh", "-c", "head -c 100000 /dev/zero"]}),
            T,
            1000,
        )
        .await
        .unwrap();
        assert_eq!(out["stdout"].as_str().unwrap().len(), 1000);
        assert_eq!(out["stdout_truncated"], true);
    }

    #[tokio::test]
    async fn failures_are_classified() {
        let err = run_default(
            &json!({"argv": ["sh", "-c", "echo 'connect: Connection refused' >&2; exit 7"]}),
            T,
            1024,
        )
        .await
        .unwrap_err();
        assert_eq!(
            (err.class, err.code.as_str()),
            (ErrorClass::Transient, "connection_refused")
        );
        let err = run_default(&json!({"argv": ["/nonexistent/tool"]}), T, 1024)
            .await
            .unwrap_err();
        assert_eq!(err.code, "executable_not_found");
        let err = run_default(&json!({"argv": []}), T, 1024)
            .await
            .unwrap_err();
        assert_eq!(err.class, ErrorClass::Validation);
    }

    /// Whether `pid` is a live (not zombie) process.
    fn alive(pid: &str) -> bool {
        std::fs::read_to_string(format!("/proc/{pid}/stat")).is_ok_and(|stat| {
            stat.rsplit(')')
                .next()
                .is_some_and(|rest| !rest.trim_start().starts_with('Z'))
        })
    }

    #[tokio::test]
    async fn timeout_kills_the_process_group() {
        let pidfile = std::env::temp_dir().join(format!("secflow-exec-{}.pid", std::process::id()));
        // A background grandchild that would live 30 s if only the direct child were killed.
        let script = format!("sleep 30 & echo $! > {}; wait", pidfile.display());
        let err = run_default(
            &json!({"argv": ["sh", "-c", script]}),
            Duration::from_millis(500),
            1024,
        )
        .await
        .unwrap_err();
        assert_eq!(err.code, "timeout");
        let pid = std::fs::read_to_string(&pidfile)
            .unwrap()
            .trim()
            .to_string();
        let _ = std::fs::remove_file(&pidfile);
        let deadline = std::time::Instant::now() + Duration::from_secs(5);
        while alive(&pid) {
            assert!(
                std::time::Instant::now() < deadline,
                "grandchild {pid} outlived the timeout"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
}
