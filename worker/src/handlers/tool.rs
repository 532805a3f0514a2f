//! Tool nodes (`discovery.ferox`, `scan.nuclei`, ...): the node's definition renders the
//! command line from its config and inputs, the program runs like an `exec` task (allowlist,
//! private working directory, process group killed on timeout and with the worker), and its
//! output is parsed into findings and datasets.
//!
//! The published error table for tool nodes: a crash or an exit code the tool does not count
//! as success is retried (3 retries by default, the tool's policy), then the node fails; a
//! timeout kills the process group and fails the node at once (the rest of the run goes on);
//! an output the parser cannot read keeps the raw output as one generic finding and the node
//! succeeds, flagged `parser: fallback`.

use super::exec::{Ended, ExecPolicy, Program, Workdir, run_in};
use crate::classify::{Classification, Classifier};
use secflow_common::{
    ErrorClass, TaskEnvelope, TaskError,
    tools::{RenderContext, RenderProblem, Resources, ToolDef},
};
use serde_json::{Map, Value};
use std::{collections::BTreeMap, time::Duration};

/// Stdout kept from a tool for parsing (its parsed output is bounded separately).
const MAX_TOOL_STDOUT: usize = 64 << 20;

/// What tool nodes share: the exec policy, resources, output limit and classifier.
pub struct ToolEnv<'a> {
    /// Which programs may run.
    pub exec: &'a ExecPolicy,
    /// Where `res://` settings resolve.
    pub resources: &'a Resources,
    /// Bytes of stderr kept.
    pub max_output: usize,
    /// Classifies a failed program.
    pub classifier: &'a Classifier,
    /// Classified failures of the task before this attempt and times it was requeued
    /// (`x-retry-count`, `x-requeue-count`).
    pub retry: (u64, u64),
}

/// Runs `task` with its tool definition `def` within `timeout`.
pub async fn run(
    env: &ToolEnv<'_>,
    def: &ToolDef,
    task: &TaskEnvelope,
    timeout: Duration,
) -> Result<Value, TaskError> {
    let task_id = task.task_id.to_string();
    let workdir = Workdir::create(env.exec, &task_id)?;
    let inputs = with_run_targets(def, &task.inputs);
    let ctx = RenderContext {
        workdir: workdir.path().to_path_buf(),
        resources: env.resources,
    };
    let invocation = match def.render(&task.config, &inputs, &ctx) {
        Ok(invocation) => invocation,
        Err(e) => {
            if let RenderProblem::EmptyInput(input) = &e.problem {
                // Nothing upstream to scan is a result, not a failure: no findings.
                tracing::info!(task_id = %task.task_id, node = %task.node_id, input, "tool input is empty: nothing to run");
                let mut output = def.empty().to_output();
                output["skipped"] = Value::String(format!("input `{input}` is empty"));
                return Ok(output);
            }
            let code = match e.problem {
                RenderProblem::Resource(_) => "resource_missing",
                RenderProblem::MissingInput(_) => "missing_input",
                _ => "invalid_config",
            };
            return Err(TaskError::validation(code, e.to_string()));
        }
    };
    for (path, bytes) in &invocation.files {
        std::fs::write(path, bytes).map_err(|e| {
            TaskError::new(
                ErrorClass::Resource,
                "workdir_unavailable",
                format!("{}: cannot write {}: {e}", def.name(), path.display()),
            )
        })?;
    }
    let no_env = BTreeMap::new();
    let program = Program {
        program: &invocation.program,
        args: &invocation.argv,
        env: &no_env,
        cwd: None,
        stdin: invocation.stdin.clone(),
        read_back: invocation.output_file.clone(),
        attempt: Some(super::exec::Attempt {
            task_id: &task_id,
            retry: env.retry.0,
            requeue: env.retry.1,
            success_exit_codes: def.success_exit_codes(),
        }),
    };
    // The tool's own deadline goes first, so its timeout (not the worker's) ends the node.
    let own = timeout.saturating_sub((timeout / 20).min(Duration::from_secs(1)));
    let capture = env.max_output.max(MAX_TOOL_STDOUT);
    let done = match run_in(env.exec, &workdir, program, own, capture, env.classifier).await? {
        Ended::Finished(done) => done,
        Ended::TimedOut => {
            tracing::warn!(task_id = %task.task_id, node = %task.node_id, tool = def.name(), timeout_ms = own.as_millis() as u64, "tool timed out: process group killed, node failed");
            return Err(timed_out(def.name(), own));
        }
    };
    let code = done.status.code();
    if !code.is_some_and(|c| def.success_exit_codes().contains(&c)) {
        let (error, how) = done.classified_failure(&invocation.program, env.classifier);
        return Err(retryable_crash(error, &how, &done.stderr.0));
    }
    let mut stdout = done.stdout.0.as_slice();
    if done.stdout.1 {
        // Cut at the capture limit: parse whole lines only.
        let end = stdout
            .iter()
            .rposition(|b| *b == b'\n')
            .map_or(0, |i| i + 1);
        stdout = &stdout[..end];
    }
    let parsed = def.parse(stdout, done.read_back.as_deref());
    if let Some(error) = &parsed.parse_error {
        tracing::warn!(task_id = %task.task_id, node = %task.node_id, tool = def.name(), error, "tool output not parseable: kept raw as a generic finding");
    }
    let mut output = done.output(parsed.to_output());
    if let Some(o) = output.as_object_mut() {
        // The parsed datasets are the output; the raw stream is not kept twice.
        o.remove("stdout");
        o.insert("stdout_truncated".into(), Value::Bool(done.stdout.1));
    }
    Ok(output)
}

/// A tool node stopped at its timeout: its process group is killed (by dropping the run) and
/// the node fails at once, not retried, while the rest of its run goes on.
pub fn timed_out(tool: &str, timeout: Duration) -> TaskError {
    TaskError::new(
        ErrorClass::Permanent,
        "timeout",
        format!(
            "{tool} did not finish within {} ms; its process group was killed (a tool timeout is not retried)",
            timeout.as_millis()
        ),
    )
}

/// The model's probability below which its guess does not override the tool error table.
const MODEL_SURE_FOR_TOOLS: f64 = 0.5;
/// Words of stderr below which the model's guess does not override it, however sure: with
/// fewer, its answer rests on the exit code and its priors, not on what the tool said.
const MODEL_WORDS_FOR_TOOLS: usize = 3;

/// A failed run the classifier could not place is, for a tool, a crash or an unexpected exit:
/// retried under the tool's policy (the error table's 3 retries), not once. So is one only the
/// learned model placed, at less than even odds or from fewer than [`MODEL_WORDS_FOR_TOOLS`]
/// words of stderr (a word or two and an unknown exit code say little): the published table
/// wins over a weak guess. A security answer always stands. `stderr` is counted only when the
/// model's answer is in question.
fn retryable_crash(mut error: TaskError, how: &Classification, stderr: &[u8]) -> TaskError {
    let weak_guess = how.matched == "model"
        && how.class != ErrorClass::Security
        && (how.confidence < MODEL_SURE_FOR_TOOLS || words(stderr) < MODEL_WORDS_FOR_TOOLS);
    if error.class == ErrorClass::Unknown || weak_guess {
        error.class = ErrorClass::Transient;
        error.code = "tool_failed".into();
    }
    error
}

/// Words in `text`: runs of two or more ASCII letters (`segfault-ish` is two). Read as bytes:
/// every byte of a character that is not ASCII ends a run, as the character would once decoded.
fn words(text: &[u8]) -> usize {
    text.split(|b| !b.is_ascii_alphabetic())
        .filter(|w| w.len() >= 2)
        .count()
}

/// The task's inputs, with the run's targets standing in for every unconnected input the
/// definition marks `run_targets`.
fn with_run_targets(def: &ToolDef, inputs: &Map<String, Value>) -> Map<String, Value> {
    let mut out = inputs.clone();
    let Some(targets) = inputs.get(secflow_common::runs::TARGETS_INPUT) else {
        return out;
    };
    for (name, spec) in &def.spec().inputs {
        if spec.run_targets && out.get(name).is_none_or(Value::is_null) {
            out.insert(name.clone(), targets.clone());
        }
    }
    out
}

/// The retry policy of tool nodes whose definition names none: the error table's 3 retries.
pub fn default_policy() -> secflow_common::retry::RetryPolicy {
    secflow_common::retry::RetryPolicy {
        max_attempts: 4,
        base_delay_ms: 5_000,
        ..secflow_common::retry::RetryPolicy::default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn placed(class: ErrorClass, matched: &str, confidence: f64) -> (TaskError, Classification) {
        let code = format!("model_{class}");
        let c = Classification {
            class,
            code: code.clone(),
            rule: "model".into(),
            confidence,
            matched: matched.into(),
        };
        (
            TaskError::new(class, code, "exec `t`: exit code 3: boom"),
            c,
        )
    }

    #[test]
    fn a_crash_is_retried_unless_something_placed_it_with_confidence() {
        let class = |(e, c): (TaskError, Classification)| {
            retryable_crash(e, &c, b"six words of the tool stderr").class
        };
        use ErrorClass::*;
        assert_eq!(class(placed(Unknown, "model", 0.2)), Transient);
        assert_eq!(class(placed(Validation, "model", 0.31)), Transient);
        assert_eq!(class(placed(Validation, "model", 0.8)), Validation);
        assert_eq!(
            class(placed(Validation, "rule:usage_exit", 1.0)),
            Validation
        );
        assert_eq!(class(placed(Security, "model", 0.25)), Security);
    }

    #[test]
    fn a_sure_guess_from_a_word_or_two_of_stderr_does_not_fail_a_crash_fast() {
        use ErrorClass::*;
        let stderr = b"segfault-ish\n";
        assert_eq!(words(stderr), 2);
        let (e, c) = placed(Validation, "model", 0.9);
        assert_eq!(retryable_crash(e, &c, stderr).class, Transient);
        let (e, c) = placed(Validation, "model", 0.9);
        let stderr = b"error: the target list names no host: check targets.txt";
        assert_eq!(retryable_crash(e, &c, stderr).class, Validation);
        // Rules and security answers stand on any amount of text.
        let (e, c) = placed(Validation, "rule:usage_exit", 1.0);
        assert_eq!(retryable_crash(e, &c, b"").class, Validation);
        let (e, c) = placed(Security, "model", 0.9);
        assert_eq!(retryable_crash(e, &c, b"x").class, Security);
        // Text that is not ASCII ends a word as it would once decoded.
        assert_eq!(words("dépassé délai".as_bytes()), 2);
    }
}
