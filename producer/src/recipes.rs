//! Loading recipes: read, parse, validate with the given parameters.

use secflow_common::recipe::{self, Recipe, RecipeError};
use serde_json::Value;
use std::{collections::BTreeMap, fmt};

/// What a valid recipe amounts to.
#[derive(Debug)]
pub struct Summary {
    /// The recipe.
    pub recipe: Recipe,
    /// Nodes with no inputs (published first).
    pub roots: Vec<String>,
}

impl fmt::Display for Summary {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "`{}`: {} nodes, roots: {}",
            self.recipe.name,
            self.recipe.nodes.len(),
            self.roots.join(", ")
        )
    }
}

/// Reads and validates the recipe at `path`; every problem is returned.
pub fn load(path: &str, params: &BTreeMap<String, Value>) -> Result<Summary, Vec<RecipeError>> {
    let error = |message: String| {
        vec![RecipeError {
            source: path.to_string(),
            node: None,
            field: String::new(),
            message,
        }]
    };
    // Checked before reading, so a huge file is never loaded into memory.
    let size = std::fs::metadata(path)
        .map_err(|e| error(format!("cannot read the recipe: {e}")))?
        .len();
    if size > recipe::MAX_RECIPE_BYTES as u64 {
        return Err(error(format!(
            "the recipe is {size} bytes, over the {}-byte limit",
            recipe::MAX_RECIPE_BYTES
        )));
    }
    let text =
        std::fs::read_to_string(path).map_err(|e| error(format!("cannot read the recipe: {e}")))?;
    let recipe = recipe::parse(path, &text).map_err(|e| vec![e])?;
    let errors = recipe::validate(path, &recipe, params);
    if !errors.is_empty() {
        return Err(errors);
    }
    let roots = recipe
        .nodes
        .iter()
        .filter(|n| n.inputs.is_empty())
        .map(|n| n.id.clone())
        .collect();
    Ok(Summary { recipe, roots })
}

/// Parses `NAME=VALUE` parameters; VALUE is JSON when it parses as JSON, else text.
pub fn parse_params(raw: &[String]) -> Result<BTreeMap<String, Value>, String> {
    raw.iter()
        .map(|p| {
            let (name, value) = p
                .split_once('=')
                .ok_or_else(|| format!("--param `{p}` must be NAME=VALUE"))?;
            let value =
                serde_json::from_str(value).unwrap_or_else(|_| Value::String(value.to_string()));
            Ok((name.to_string(), value))
        })
        .collect()
}

/// A submitted run.
#[derive(Debug, serde::Serialize)]
pub struct Submitted {
    /// Run id.
    pub run_id: uuid::Uuid,
    /// Root nodes published.
    pub roots: Vec<String>,
    /// Final status when waited for.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub status: Option<String>,
}

/// Validates `path`, stores the run in Redis and publishes its roots with confirms. With
/// `wait`, follows the events until the run ends (or `timeout` passes).
pub async fn submit(
    broker: &secflow_common::config::BrokerArgs,
    path: &str,
    params: &BTreeMap<String, Value>,
    wait: Option<std::time::Duration>,
    cache: bool,
) -> anyhow::Result<Submitted> {
    use futures_util::StreamExt;
    let summary = load(path, params).map_err(|errors| {
        anyhow::anyhow!(
            "{}\n{path}: {} problem(s); nothing was published",
            errors
                .iter()
                .map(ToString::to_string)
                .collect::<Vec<_>>()
                .join("\n"),
            errors.len()
        )
    })?;
    let runs = secflow_common::runs::RunStore::new(&broker.redis_url, &broker.namespace)?;
    let (conn, topology) = crate::connect(broker, "secflow-producer-submit").await?;
    // Subscribe before publishing, so a fast run's end is not missed.
    let ch = conn.create_channel().await?;
    let mut events = match wait {
        Some(_) => {
            Some(secflow_common::events::subscribe(&ch, &topology, "workflow.completed").await?)
        }
        None => None,
    };
    // Before the run is stored: without signing keys nothing is stored either.
    let publisher = secflow_common::amqp::Publisher::for_tasks(
        &conn,
        broker.keyring()?,
        broker.max_message_bytes,
    )
    .await?;
    let (run_id, roots) = runs.create(&summary.recipe, params, cache).await?;
    for root in &roots {
        let task = runs.envelope(run_id, root).await?;
        secflow_common::amqp::publish_task(&publisher, &topology, &task).await?;
    }
    let mut submitted = Submitted {
        run_id,
        roots: roots.iter().map(|r| r.id.clone()).collect(),
        status: None,
    };
    if let (Some(timeout), Some(consumer)) = (wait, events.as_mut()) {
        let deadline = tokio::time::Instant::now() + timeout;
        while submitted.status.is_none() {
            let next = tokio::time::timeout_at(deadline, consumer.next())
                .await
                .map_err(|_| anyhow::anyhow!("run {run_id} did not end within {} s (it goes on; see producer status {run_id})", timeout.as_secs()))?;
            let Some(Ok(delivery)) = next else {
                anyhow::bail!("lost the events subscription while waiting for run {run_id}")
            };
            for event in secflow_common::events::decode(&delivery.data).unwrap_or_default() {
                if event.run_id == Some(run_id) {
                    submitted.status = event
                        .output
                        .and_then(|o| o.get("status").and_then(Value::as_str).map(str::to_string));
                }
            }
        }
    }
    let _ = conn.close(200, "submitted".into()).await;
    Ok(submitted)
}

/// Publishes the failed nodes of `run` again (or just `node`), with their original task ids;
/// the worker that takes one puts the run back to running. Upstream outputs are kept.
pub async fn resume(
    broker: &secflow_common::config::BrokerArgs,
    run: &str,
    node: Option<&str>,
) -> anyhow::Result<Vec<String>> {
    let runs = secflow_common::runs::RunStore::new(&broker.redis_url, &broker.namespace)?;
    let run_id: uuid::Uuid = run
        .parse()
        .map_err(|_| anyhow::anyhow!("`{run}` is not a run id"))?;
    let mut failed = runs.failed_nodes(run).await?;
    if let Some(only) = node {
        failed.retain(|n| n.id == only);
        anyhow::ensure!(
            !failed.is_empty(),
            "node `{only}` of run {run} has not failed: nothing to resume"
        );
    }
    anyhow::ensure!(!failed.is_empty(), "run {run} has no failed node to resume");
    let (conn, topology) = crate::connect(broker, "secflow-producer-resume").await?;
    let publisher = secflow_common::amqp::Publisher::for_tasks(
        &conn,
        broker.keyring()?,
        broker.max_message_bytes,
    )
    .await?;
    for n in &failed {
        let task = runs.envelope(run_id, n).await?;
        secflow_common::amqp::publish_task(&publisher, &topology, &task).await?;
    }
    let _ = conn.close(200, "resumed".into()).await;
    Ok(failed.into_iter().map(|n| n.id).collect())
}

/// Follows `run` on the events exchange, calling `on_line` with a progress line per event,
/// until it ends; returns its final status.
pub async fn watch(
    broker: &secflow_common::config::BrokerArgs,
    run: &str,
    mut on_line: impl FnMut(String),
) -> anyhow::Result<String> {
    use futures_util::StreamExt;
    let runs = secflow_common::runs::RunStore::new(&broker.redis_url, &broker.namespace)?;
    let run_id: uuid::Uuid = run
        .parse()
        .map_err(|_| anyhow::anyhow!("`{run}` is not a run id"))?;
    let (conn, topology) = crate::connect(broker, "secflow-producer-watch").await?;
    let ch = conn.create_channel().await?;
    // Subscribe first, then read the state: no event falls between the two.
    let mut events = secflow_common::events::subscribe(&ch, &topology, "#").await?;
    let status = runs.status(run).await?;
    let total = status.nodes.len();
    let ended = |s: &str| matches!(s, "succeeded" | "failed" | "skipped" | "cancelled");
    let mut done = status.nodes.values().filter(|s| ended(s)).count();
    on_line(format!(
        "run {run}: {}, {done}/{total} nodes ended",
        status.status
    ));
    if status.status != "running" {
        return Ok(status.status);
    }
    while let Some(delivery) = events.next().await {
        let Ok(delivery) = delivery else {
            anyhow::bail!("lost the events subscription")
        };
        for e in secflow_common::events::decode(&delivery.data).unwrap_or_default() {
            if e.run_id != Some(run_id) {
                continue;
            }
            if e.kind == "workflow.completed" {
                let final_status = e
                    .output
                    .as_ref()
                    .and_then(|o| o["status"].as_str())
                    .unwrap_or("ended")
                    .to_string();
                on_line(format!("run {run}: {final_status}"));
                return Ok(final_status);
            }
            if matches!(
                e.kind.as_str(),
                "node.completed" | "node.dead_lettered" | "node.cancelled"
            ) {
                done += 1;
            }
            on_line(format!("[{done}/{total}] {}", crate::events::describe(&e)));
        }
    }
    anyhow::bail!("the events subscription ended before run {run} did")
}

/// Cancels `run`: marks it so queued nodes are skipped and tells the workers (event
/// `run.cancelled`) to stop its running nodes. `when: always` nodes still run. False when the
/// run had already ended.
pub async fn cancel(
    broker: &secflow_common::config::BrokerArgs,
    run: &str,
) -> anyhow::Result<bool> {
    let runs = secflow_common::runs::RunStore::new(&broker.redis_url, &broker.namespace)?;
    let run_id: uuid::Uuid = run
        .parse()
        .map_err(|_| anyhow::anyhow!("`{run}` is not a run id"))?;
    if !runs.cancel(run).await? {
        return Ok(false);
    }
    let (conn, topology) = crate::connect(broker, "secflow-producer-cancel").await?;
    let publisher = secflow_common::amqp::Publisher::new(&conn).await?;
    let event = secflow_common::events::TaskEvent {
        kind: "run.cancelled".into(),
        event_id: Some(secflow_common::events::event_id(
            Some(run_id),
            "run.cancelled",
        )),
        task_id: None,
        run_id: Some(run_id),
        node_id: None,
        node_type: None,
        worker: "producer".into(),
        retry_count: 0,
        at_ms: secflow_common::now_ms(),
        output: None,
        error: None,
        next_delay_ms: None,
        scheduled_delay_ms: None,
        observed_delay_ms: None,
        attempt: None,
    };
    let body = serde_json::to_vec(&[event])?;
    let props = secflow_common::amqp::json_properties(run, Default::default());
    publisher
        .publish(
            &topology.events_exchange(),
            "run.cancelled",
            &body,
            props,
            false,
        )
        .await?;
    let _ = conn.close(200, "cancelled".into()).await;
    Ok(true)
}
