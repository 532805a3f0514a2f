//! `exec`: runs an allowed program by argv (never through a shell) in a fresh working
//! directory, with a scrubbed environment, resource limits, a timeout that kills its whole
//! process group, bounded output capture, and classified failures. The program and its
//! group die with the worker, also when the worker is SIGKILLed ([`shim`], [`reaper`]), and
//! the outcome of a program that ended is recorded before the worker hears of it, so a
//! redelivered attempt does not run it again ([`spool`]).
//! `${inputs.NAME:file}` arguments get the path of a file holding the input ([`files`]).

mod files;
mod program;
mod reaper;
pub mod shim;
mod spool;

pub use program::{Ended, Program, Workdir, run_in};
pub use spool::{Attempt, Spool};

use super::parse_config;
use crate::classify::{Classifier, Failure, io_kind_name};
use secflow_common::{ErrorClass, TaskError, nodes::ExecConfig};
use serde_json::{Map, Value, json};
use std::{
    collections::BTreeMap,
    path::{Path, PathBuf},
    time::Duration,
};

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
    /// The worker binary, started as the shim between the worker and each program.
    shim: Option<PathBuf>,
    /// Where programs' outcomes are recorded (`None`: not recorded, e.g. without Redis).
    spool: Option<Spool>,
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
            let search = std::env::var("PATH").unwrap_or_else(|_| program::SAFE_PATH.into());
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
                // An allowed absolute path may also be called by its file name (tool
                // definitions name programs): `/opt/tools/nuclei` allows `nuclei`.
                if let Some(name) = path.file_name().and_then(|n| n.to_str()) {
                    map.entry(name.to_string()).or_insert_with(|| path.clone());
                }
                map.insert(path.to_string_lossy().into_owned(), path);
            }
            Some(map)
        };
        Ok(Self {
            allow,
            workdir_root,
            memory_limit_bytes: memory_limit_mb.map(|mb| mb.saturating_mul(1 << 20)),
            shim: default_shim(),
            spool: None,
        })
    }

    /// Starts programs under `shim` (the worker binary) instead of the one found by default.
    #[must_use]
    pub fn with_shim(mut self, shim: PathBuf) -> Self {
        self.shim = Some(shim);
        self
    }

    /// Records programs' outcomes in `spool`.
    #[must_use]
    pub fn with_spool(mut self, spool: Spool) -> Self {
        self.spool = Some(spool);
        self
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

/// The worker binary when this process is it; else (a test binary running workers in-process)
/// the `worker` binary built beside it (`target/<profile>/worker`).
fn default_shim() -> Option<PathBuf> {
    let exe = std::env::current_exe().ok()?;
    if exe.file_name().is_some_and(|n| n == "worker") {
        return Some(exe);
    }
    exe.ancestors()
        .skip(1)
        .take(2)
        .map(|dir| dir.join("worker"))
        .find(|p| p.is_file())
}

fn create_private_dir(path: &Path) -> std::io::Result<()> {
    use std::os::unix::fs::DirBuilderExt;
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(path)
}

/// Runs the configured program and returns its exit code, captured output and resource usage.
/// Its `${inputs.NAME:file}` arguments are written from `inputs` first.
pub async fn run(
    policy: &ExecPolicy,
    attempt: Attempt<'_>,
    config: &Value,
    inputs: &Map<String, Value>,
    limits: Limits,
    classifier: &Classifier,
) -> Result<Value, TaskError> {
    let mut cfg: ExecConfig = parse_config("exec", config)?;
    let workdir = Workdir::create(policy, attempt.task_id)?;
    files::write_input_files(&mut cfg.argv, inputs, &workdir)?;
    run_program_in(
        policy,
        &workdir,
        &cfg,
        None,
        Some(attempt),
        limits,
        classifier,
    )
    .await
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
/// `exec` tasks and exec hooks. Its exit code, captured output and resource usage.
pub async fn run_program(
    policy: &ExecPolicy,
    task_id: &str,
    cfg: &ExecConfig,
    stdin: Option<&[u8]>,
    limits: Limits,
    classifier: &Classifier,
) -> Result<Value, TaskError> {
    let workdir = Workdir::create(policy, task_id)?;
    run_program_in(policy, &workdir, cfg, stdin, None, limits, classifier).await
}

/// [`run_program`] in `workdir`.
async fn run_program_in(
    policy: &ExecPolicy,
    workdir: &Workdir,
    cfg: &ExecConfig,
    stdin: Option<&[u8]>,
    attempt: Option<Attempt<'_>>,
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
    let run = Program {
        program,
        args,
        env: &cfg.env,
        cwd: cfg.cwd.as_deref(),
        stdin: stdin.map(<[u8]>::to_vec),
        read_back: None,
        attempt,
    };
    let done = match run_in(policy, workdir, run, timeout, max_output, classifier).await? {
        Ended::Finished(done) => done,
        Ended::TimedOut => {
            return Err(TaskError::new(
                ErrorClass::Transient,
                "timeout",
                format!(
                    "exec: `{program}` did not finish within {} ms; its process group was killed",
                    timeout.as_millis()
                ),
            ));
        }
    };
    if done.status.success() {
        return Ok(done.output(json!({})));
    }
    Err(done.failure(program, classifier))
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
