//! What a completed node's output must satisfy before its run records it: every declared
//! output present, and a size that fits the run; a fitting output is cached for warm re-runs.

use crate::disposition::Disposition;
use secflow_common::{
    TaskEnvelope,
    runs::{MAX_OUTPUT_BYTES, NodeRecord, RunStore},
};

/// A completed node must produce every output it declares, unless it was skipped at its
/// degradation level (its dependents then get its outputs as missing, `_partial`). (A store
/// error here is left to recording the node's end, which meets it again and retries the node.)
pub(super) async fn check_outputs(
    runs: &RunStore,
    task: &TaskEnvelope,
    disposition: Disposition,
    record: Option<&NodeRecord>,
) -> Disposition {
    let (Disposition::Complete(output), Some(run)) = (&disposition, task.run_id) else {
        return disposition;
    };
    if record.is_some_and(|r| r.skipped.is_some()) {
        return disposition;
    }
    let Ok(nodes) = runs
        .nodes(&run.to_string(), std::slice::from_ref(&task.node_id))
        .await
    else {
        return disposition;
    };
    match nodes
        .first()
        .map(|n| secflow_common::runs::missing_outputs(n, output))
    {
        Some(missing) if !missing.is_empty() => {
            tracing::warn!(task_id = %task.task_id, node = %task.node_id, ?missing, "node completed without a declared output: failing it");
            crate::disposition::missing_output(&task.node_id, &missing, output)
        }
        _ => disposition,
    }
}

/// A completed node's output must fit in its run; a fitting one is cached for warm re-runs,
/// unless it was degraded (served by an alternative, skipped, or run with a level's overrides):
/// the cache stands in for the node as written.
pub(super) async fn check_and_cache(
    runs: &RunStore,
    task: &TaskEnvelope,
    disposition: Disposition,
    record: Option<&NodeRecord>,
) -> Disposition {
    let Disposition::Complete(output) = &disposition else {
        return disposition;
    };
    let size = output.to_string().len();
    if size > MAX_OUTPUT_BYTES {
        return crate::disposition::output_too_large(&task.node_id, size, MAX_OUTPUT_BYTES);
    }
    let degraded = record
        .is_some_and(|r| r.served_by.is_some() || r.skipped.is_some() || !r.adjusted.is_empty());
    // A node whose chain falls back on its last output keeps it, whatever `cache` says.
    let keeps_last = task
        .fallback
        .iter()
        .any(|a| a.node_type == secflow_common::nodes::CACHE_LAST);
    if (task.cache || keeps_last)
        && !degraded
        && let Err(e) = runs.cache(&task.cache_key(), output).await
    {
        tracing::warn!(task_id = %task.task_id, error = %e, "could not cache the node's output");
    }
    disposition
}
