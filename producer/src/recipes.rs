//! Recipes and their runs: load and validate, submit. Resuming, watching and cancelling a run
//! are in [`crate::control`], re-exported here.

pub use crate::control::{cancel, resume, watch};

use crate::follow_run::{self, Follow, Subscription};
use secflow_common::trace::{KeyValue, Kind, TraceSpan};
use secflow_common::{
    amqp,
    config::BrokerArgs,
    deadline::{REDIS_OP, within},
    recipe::{self, Catalog, Recipe, RecipeError},
    runs::RunStore,
};
use serde_json::Value;
use std::{collections::BTreeMap, fmt, time::Duration};

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
        )?;
        let hooks = &self.recipe.hooks;
        let count = hooks.on_node_complete.len() + hooks.on_workflow_complete.len();
        if count > 0 {
            write!(f, ", hooks: {count}")?;
        }
        Ok(())
    }
}

/// Reads and validates the recipe at `path` against the built-in tools; every problem is
/// returned.
pub fn load(path: &str, params: &BTreeMap<String, Value>) -> Result<Summary, Vec<RecipeError>> {
    load_with(path, params, Catalog::builtin())
}

/// [`load`] against `catalog`'s tools and resources.
pub fn load_with(
    path: &str,
    params: &BTreeMap<String, Value>,
    catalog: &Catalog,
) -> Result<Summary, Vec<RecipeError>> {
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
    let errors = recipe::validate_with(path, &recipe, params, catalog);
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
    /// The run's trace id (32 hex digits).
    pub trace_id: String,
}

/// Validates `path`, stores the run in Redis and publishes its roots with confirms. With
/// `wait`, follows the run until it ends (or `wait` passes), across lost connections.
pub async fn submit(
    broker: &BrokerArgs,
    path: &str,
    params: &BTreeMap<String, Value>,
    wait: Option<Duration>,
    cache: bool,
) -> anyhow::Result<Submitted> {
    let request = RunRequest {
        path,
        params,
        targets: &[],
        catalog: Catalog::builtin(),
    };
    submit_until(broker, &request, wait, cache, std::future::pending()).await
}

/// What to run: a recipe with its parameters and targets, checked against a catalog.
pub struct RunRequest<'a> {
    /// Recipe file.
    pub path: &'a str,
    /// Parameter values.
    pub params: &'a BTreeMap<String, Value>,
    /// What the run is about (`--target`): tool nodes with an unconnected target input scan
    /// these.
    pub targets: &'a [String],
    /// Tools and resources the recipe is checked against.
    pub catalog: &'a Catalog,
}

/// [`submit`] of `request`, giving up the wait (the run goes on) when `shutdown` resolves.
pub async fn submit_until(
    broker: &BrokerArgs,
    request: &RunRequest<'_>,
    wait: Option<Duration>,
    cache: bool,
    shutdown: impl std::future::Future<Output = ()>,
) -> anyhow::Result<Submitted> {
    let (path, params) = (request.path, request.params);
    anyhow::ensure!(
        request.targets.len() <= secflow_common::runs::MAX_TARGETS,
        "{} targets given, over the limit of {}",
        request.targets.len(),
        secflow_common::runs::MAX_TARGETS
    );
    let summary = load_with(path, params, request.catalog).map_err(|errors| {
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
    if request.targets.is_empty() {
        let scanning: Vec<String> = summary
            .recipe
            .nodes
            .iter()
            .filter(|n| request.catalog.needs_targets(n))
            .map(|n| format!("`{}` ({})", n.id, n.node_type))
            .collect();
        anyhow::ensure!(
            scanning.is_empty(),
            "{path}: node(s) {} scan the run's targets: give them with --target URL (repeatable); nothing was published",
            scanning.join(", ")
        );
    }
    let runs = RunStore::new(&broker.redis_url, &broker.namespace)?;
    let (conn, topology) = crate::connect(broker, "secflow-producer-submit").await?;
    let store = Store {
        broker,
        runs: &runs,
        topology: &topology,
    };
    let Some(limit) = wait else {
        let stored = store
            .run(&conn, &summary, params, request.targets, cache)
            .await;
        amqp::close(&conn, "submitted").await;
        let (run_id, roots, trace_id) = stored?;
        return Ok(Submitted {
            run_id,
            roots,
            status: None,
            trace_id,
        });
    };
    // Subscribe before publishing, so a fast run's end is not missed; the subscription owns
    // the connection from here and the roots go out on it.
    let sub = Subscription::on(conn, &topology, "workflow.*").await?;
    let (run_id, roots, trace_id) = match store
        .run(sub.connection(), &summary, params, request.targets, cache)
        .await
    {
        Ok(stored) => stored,
        Err(e) => {
            sub.close().await;
            return Err(e);
        }
    };
    let follow = Follow {
        broker,
        runs: &runs,
        run_id,
        pattern: "workflow.*",
        limit: Some(limit),
    };
    let status = follow_run::until_end(&follow, Some(sub), shutdown, |_| {}).await?;
    Ok(Submitted {
        run_id,
        roots,
        status: Some(status),
        trace_id,
    })
}

/// Storing a run and publishing its roots.
struct Store<'a> {
    broker: &'a BrokerArgs,
    runs: &'a RunStore,
    topology: &'a secflow_common::Topology,
}

impl Store<'_> {
    /// Stores the run and publishes its roots on `conn`: the run id and root ids.
    async fn run(
        &self,
        conn: &lapin::Connection,
        summary: &Summary,
        params: &BTreeMap<String, Value>,
        targets: &[String],
        cache: bool,
    ) -> anyhow::Result<(uuid::Uuid, Vec<String>, String)> {
        // Before the run is stored: without signing keys nothing is stored either.
        let keyring = self.broker.keyring()?;
        let publisher =
            amqp::Publisher::for_tasks(conn, keyring.clone(), self.broker.max_message_bytes)
                .await?;
        if !summary.recipe.hooks.is_empty() {
            // Before any root is published: every completion of the run lands in the queue.
            declare_hooks(conn, self.topology).await?;
        }
        // The run's trace: its root span covers the submission; every node attempt of the run
        // is a span in it.
        let mut span = TraceSpan::start(
            format!("run {}", summary.recipe.name),
            Kind::Producer,
            None,
            vec![KeyValue::new(
                "secflow.workflow",
                summary.recipe.name.clone(),
            )],
        );
        let (run_id, roots) = within(
            "Redis to store a new run",
            REDIS_OP,
            self.runs.create(
                &summary.recipe,
                params,
                targets,
                cache,
                keyring.as_ref(),
                span.context(),
            ),
        )
        .await??;
        span.set("secflow.run_id", run_id.to_string());
        for root in &roots {
            let task = within(
                "Redis to build a root task",
                REDIS_OP,
                self.runs.envelope(run_id, root),
            )
            .await??;
            amqp::publish_task(&publisher, self.topology, &task, span.context()).await?;
        }
        let trace_id = span.trace_id();
        span.end("published", None);
        let mut started = secflow_common::events::TaskEvent::new("workflow.started", "producer")
            .about(None, Some(run_id));
        started.workflow = Some(summary.recipe.name.clone());
        if let Err(e) = publish_event(conn, self.topology, started).await {
            // The run is stored and its roots are out: it runs whether or not this is seen.
            tracing::warn!(run = %run_id, error = %e, "could not announce the run's start");
        }
        Ok((run_id, roots.into_iter().map(|r| r.id).collect(), trace_id))
    }
}

/// Declares the hooks queue (bound to the events hooks fire on) on a channel of its own.
async fn declare_hooks(
    conn: &lapin::Connection,
    topology: &secflow_common::Topology,
) -> anyhow::Result<()> {
    use secflow_common::deadline::BROKER_OP;
    let ch = within("a new channel", BROKER_OP, conn.create_channel()).await??;
    let declared = within(
        "declaring the hooks queue",
        BROKER_OP,
        topology.declare_hooks(&ch),
    )
    .await;
    let _ = within(
        "closing a channel",
        BROKER_OP,
        ch.close(200, "declared".into()),
    )
    .await;
    declared??;
    Ok(())
}

/// Publishes one event with confirms (not mandatory: nobody may be listening).
pub(crate) async fn publish_event(
    conn: &lapin::Connection,
    topology: &secflow_common::Topology,
    event: secflow_common::events::TaskEvent,
) -> anyhow::Result<()> {
    let publisher = amqp::Publisher::new(conn).await?;
    let body = serde_json::to_vec(&[&event])?;
    let props = secflow_common::amqp::json_properties(
        event.event_id.as_deref().unwrap_or_default(),
        Default::default(),
    );
    publisher
        .publish(
            &topology.events_exchange(),
            &event.kind,
            &body,
            props,
            false,
        )
        .await?;
    Ok(())
}
