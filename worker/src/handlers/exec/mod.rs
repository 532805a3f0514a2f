//! `exec`: runs an allowed program by argv (never through a shell) in a fresh working
//! directory, with a scrubbed environment, resource limits, a timeout that kills its whole
//! process group, bounded output capture, and classified failures. The program and its
//! group die with the worker, also when the worker is SIGKILLed ([`spawn`], [`reaper`]).

mod guards;
mod reaper;
mod spawn;

use guards::{GroupGuard, Workdir};

use super::parse_config;
use crate::classify::{Classifier, Failure, io_kind_name};
use nix::unistd::Pid;
use secflow_common::{ErrorClass, TaskError, nodes::ExecConfig};
use serde_json::{Value, json};
use std::{
    collections::BTreeMap,
    path::{Component, Path, PathBuf},
    process::Stdio,
    time::Duration,
};
use tokio::io::{AsyncRead, AsyncReadExt};

/// The only PATH a program sees.
const SAFE_PATH: &str = "/usr/local/bin:/usr/bin:/bin";

/// Variables a task may not set: they change what the loader or a shell runs.
fn forbidden_env(name: &str) -> bool {
    let n = name.to_ascii_uppercase();
    n.starts_with("LD_")
        || n.starts_with("DYLD_")
        || ["BASH_ENV", "ENV", "PATH", "IFS", "SHELLOPTS", "PS4"].contains(&n.as_str())
}

/// Which programs a worker pool may run, where, and within which limits.
#[derive(Debug)]
pub struct ExecPolicy {
    /// `None`: any program (explicit `--exec-allow '*'`); otherwise name or path → resolved path.
    allow: Option<BTreeMap<String, PathBuf>>,
    workdir_root: PathBuf,
    memory_limit_bytes: Option<u64>,
}

impl ExecPolicy {
    /// Resolves the allowlist now, at start: names through the worker's `PATH` (a name that is
    /// not found is an error), absolute paths as given. `*` alone allows everything.
    pub fn new(
        allow: &[String],
        workdir_root: Option<PathBuf>,
        memory_limit_mb: Option<u64>,
    ) -> Result<Self, String> {
        let workdir_root =
            workdir_root.unwrap_or_else(|| std::env::temp_dir().join("secflow-exec"));
        create_private_dir(&workdir_root).map_err(|e| {
            format!(
                "cannot create exec working directory root {}: {e}",
                workdir_root.display()
            )
        })?;
        let allow = if allow.iter().any(|a| a == "*") {
            if allow.len() > 1 {
                return Err("--exec-allow: `*` cannot be combined with other entries".into());
            }
            None
        } else {
            let search = std::env::var("PATH").unwrap_or_else(|_| SAFE_PATH.into());
            let mut map = BTreeMap::new();
            for entry in allow.iter().map(|a| a.trim()).filter(|a| !a.is_empty()) {
                let path = if entry.contains('/') {
                    if !entry.starts_with('/') {
                        return Err(format!(
                            "--exec-allow `{entry}`: give a name or an absolute path"
                        ));
                    }
                    PathBuf::from(entry)
                } else {
                    search
                        .split(':')
                        .map(|dir| Path::new(dir).join(entry))
                        .find(|p| p.is_file())
                        .ok_or_else(|| {
                            format!("--exec-allow `{entry}`: not found on PATH ({search})")
                        })?
                };
                map.insert(entry.to_string(), path.clone());
                map.insert(path.to_string_lossy().into_owned(), path);
            }
            Some(map)
        };
        Ok(Self {
            allow,
            workdir_root,
            memory_limit_bytes: memory_limit_mb.map(|mb| mb.saturating_mul(1 << 20)),
        })
    }

    /// A policy allowing any program, for unit tests and `--exec-allow '*'`.
    #[cfg(test)]
    fn any() -> Self {
        Self::new(&["*".into()], None, None).unwrap()
    }

    /// The path to run for `program`, or a security error if the pool does not allow it.
    fn resolve(&self, program: &str) -> Result<PathBuf, TaskError> {
        let Some(allow) = &self.allow else {
            return Ok(PathBuf::from(program));
        };
        allow.get(program).cloned().ok_or_else(|| {
            let names: Vec<&str> = allow
                .keys()
                .filter(|k| !k.starts_with('/'))
                .map(String::as_str)
                .collect();
            TaskError::new(
                ErrorClass::Security,
                "exec_not_allowed",
                format!(
                    "exec: `{program}` is not in this worker pool's allowlist (--exec-allow; allowed: {})",
                    if names.is_empty() { "absolute paths only".to_string() } else { names.join(", ") }
                ),
            )
        })
    }
}

fn create_private_dir(path: &Path) -> std::io::Result<()> {
    use std::os::unix::fs::DirBuilderExt;
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(path)
}

/// Runs the configured program and returns its exit code and captured output.
pub async fn run(
    policy: &ExecPolicy,
    task_id: &str,
    config: &Value,
    timeout: Duration,
    max_output: usize,
    classifier: &Classifier,
) -> Result<Value, TaskError> {
    let cfg: ExecConfig = parse_config("exec", config)?;
    let limits = Limits {
        timeout,
        max_output,
    };
    run_program(policy, task_id, &cfg, None, limits, classifier).await
}

/// How long a program may run and how much of its output is kept.
#[derive(Clone, Copy, Debug)]
pub struct Limits {
    /// Past this, its process group is killed.
    pub timeout: Duration,
    /// Bytes of stdout and of stderr kept.
    pub max_output: usize,
}

/// Runs `cfg` under `policy`, feeding it `stdin` (else `/dev/null`): the one spawning path of
/// `exec` tasks and exec hooks.
pub async fn run_program(
    policy: &ExecPolicy,
    task_id: &str,
    cfg: &ExecConfig,
    stdin: Option<&[u8]>,
    Limits {
        timeout,
        max_output,
    }: Limits,
    classifier: &Classifier,
) -> Result<Value, TaskError> {
    let Some((program, args)) = cfg.argv.split_first() else {
        return Err(TaskError::validation(
            "invalid_config",
            "exec: config.argv must name a program",
        ));
    };
    let path = policy.resolve(program)?;
    if let Some(name) = cfg.env.keys().find(|k| forbidden_env(k)) {
        return Err(TaskError::new(
            ErrorClass::Security,
            "exec_env_forbidden",
            format!("exec: the task may not set `{name}` (it changes what gets run)"),
        ));
    }
    let dir = policy.workdir_root.join(format!(
        "{task_id}-{}",
        &uuid::Uuid::new_v4().simple().to_string()[..8]
    ));
    create_private_dir(&dir).map_err(|e| {
        TaskError::new(
            ErrorClass::Resource,
            "workdir_unavailable",
            format!(
                "exec: cannot create working directory {}: {e}",
                dir.display()
            ),
        )
    })?;
    let workdir = Workdir(dir);
    let cwd = match &cfg.cwd {
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
    cmd.args(args)
        .env_clear()
        .env("PATH", SAFE_PATH)
        .env("HOME", &workdir.0)
        .env("TMPDIR", &workdir.0)
        .env("LANG", "C.UTF-8")
        .envs(&cfg.env)
        .current_dir(&cwd)
        .stdin(if stdin.is_some() {
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
        .map_err(|e| spawn_error(program, &e, classifier))?;
    // Dropped before `workdir` (reverse order): the group is dead before its directory goes.
    let _guard = GroupGuard(
        child
            .id()
            .and_then(|id| i32::try_from(id).ok())
            .map(Pid::from_raw),
    );
    let stdout = child.stdout.take();
    let stderr = child.stderr.take();
    let input = child.stdin.take();
    let work = async {
        let (out, err, status, ()) = tokio::join!(
            capture(stdout, max_output),
            capture(stderr, max_output),
            child.wait(),
            feed(input, stdin.unwrap_or_default())
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

/// Writes `data` to the program's stdin and closes it; a program that exits without reading
/// it all is not an error here (its exit status says how it went).
async fn feed(pipe: Option<tokio::process::ChildStdin>, data: &[u8]) {
    use tokio::io::AsyncWriteExt;
    if let Some(mut pipe) = pipe {
        let _ = pipe.write_all(data).await;
        let _ = pipe.shutdown().await;
    }
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
mod tests;
