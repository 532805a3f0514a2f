//! `producer`: publishes tasks to a SecFlow fleet.

use clap::{Parser, Subcommand};
use secflow_common::{config::BrokerArgs, retry::RetryPolicy};
use secflow_producer::{PublishError, PublishRequest, publish_tasks};

/// SecFlow producer.
#[derive(Parser)]
#[command(name = "producer", version)]
struct Cli {
    #[command(flatten)]
    broker: BrokerArgs,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Publish ad-hoc single-node tasks and print their ids.
    Publish {
        /// Node type, e.g. builtin.echo, exec, http.
        #[arg(long = "type")]
        node_type: String,
        /// Handler config as a JSON object.
        #[arg(long, default_value = "{}")]
        config: String,
        /// Number of tasks to publish.
        #[arg(long, default_value_t = 1)]
        count: usize,
        /// Retry policy as JSON, e.g. {"max_attempts":3,"base_delay_ms":500}.
        #[arg(long)]
        retry: Option<String>,
        /// Handler timeout in milliseconds.
        #[arg(long)]
        timeout_ms: Option<u64>,
        /// Print one JSON object per task instead of bare ids.
        #[arg(long)]
        json: bool,
    },
    /// Check a recipe: ids, types, configs, inputs, parameters, cycles. Exits 1 on any error.
    Validate {
        /// Recipe file (YAML).
        recipe: String,
        /// Parameter value, NAME=VALUE (VALUE read as JSON when it parses, else as text).
        #[arg(long = "param")]
        params: Vec<String>,
        #[command(flatten)]
        catalog: CatalogArgs,
    },
    /// Run a recipe: store the run, publish its root nodes, print the run id.
    Submit {
        /// Recipe file (YAML).
        recipe: String,
        /// Parameter value, NAME=VALUE.
        #[arg(long = "param")]
        params: Vec<String>,
        /// What the run scans (URL, host, range; repeatable): tool nodes whose target input
        /// is not connected to an upstream node scan these.
        #[arg(long = "target")]
        targets: Vec<String>,
        #[command(flatten)]
        catalog: CatalogArgs,
        /// Wait until the run ends; exit 0 only if it succeeded.
        #[arg(long)]
        wait: bool,
        /// Run every node, even those whose output is cached from an earlier identical run.
        #[arg(long)]
        no_cache: bool,
        /// With --wait, give up waiting after this many seconds (the run goes on). A lost
        /// broker connection is re-established meanwhile, each outage bounded by
        /// --connect-timeout-secs.
        #[arg(long, default_value_t = 3600)]
        timeout: u64,
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
    /// Re-run a run's failed nodes (or one of them); upstream outputs are kept.
    Resume {
        /// Run id.
        run: String,
        /// Only this node.
        #[arg(long)]
        node: Option<String>,
    },
    /// Follow a run live until it ends; exit 0 only if it succeeded. A lost broker connection
    /// is re-established (each outage bounded by --connect-timeout-secs) and the run's state
    /// read again, so its end is not missed.
    Watch {
        /// Run id.
        run: String,
    },
    /// Cancel a run: queued nodes are skipped, running ones stopped (exec process groups
    /// killed); `when: always` nodes still run.
    Cancel {
        /// Run id.
        run: String,
    },
    /// Show a run: its status and each node's state.
    Status {
        /// Run id.
        run: String,
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
    /// Follow task events (node.completed, node.retrying, node.dead_lettered, ...).
    Events {
        /// Routing-key pattern of the events to show.
        #[arg(long, default_value = "#")]
        pattern: String,
        /// Exit after this many seconds without an event (default: follow forever).
        #[arg(long)]
        idle_exit: Option<u64>,
        /// Print the events as JSON lines.
        #[arg(long)]
        json: bool,
        /// Print a run's execution trace instead (`[time] Node scan.nuclei completed
        /// (findings=3) [scan]`).
        #[arg(long, conflicts_with = "json")]
        trace: bool,
    },
}

/// One thread: the producer only waits on the broker and Redis (its confirmed publishes run no
/// faster on a thread per core; transport benchmark).
#[tokio::main(flavor = "current_thread")]
async fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    secflow_common::logging::init(false, "warn");
    let _flush = secflow_common::trace::install("secflow-producer", env!("CARGO_PKG_VERSION"))?;
    match cli.command {
        Command::Publish {
            node_type,
            config,
            count,
            retry,
            timeout_ms,
            json,
        } => {
            let config = serde_json::from_str(&config)
                .map_err(|e| anyhow::anyhow!("--config is not valid JSON: {e}"))?;
            let retry = retry
                .map(|r| serde_json::from_str::<RetryPolicy>(&r))
                .transpose()
                .map_err(|e| anyhow::anyhow!("--retry is not a valid retry policy: {e}"))?;
            let req = PublishRequest {
                node_type: node_type.clone(),
                config,
                count,
                retry,
                timeout_ms,
            };
            match publish_tasks(&cli.broker, &req).await {
                Ok(ids) => print_ids(&ids, &node_type, json),
                Err(PublishError::Partial {
                    confirmed,
                    failed,
                    first,
                }) => {
                    // Confirmed ids still go to stdout: those tasks are queued.
                    print_ids(&confirmed, &node_type, json);
                    for (id, error) in &failed {
                        eprintln!("not published: {id}: {error}");
                    }
                    anyhow::bail!(
                        "{} of {count} tasks were not published: {first}",
                        failed.len()
                    );
                }
                Err(e) => return Err(e.into()),
            }
        }
        Command::Submit {
            recipe,
            params,
            targets,
            catalog,
            wait,
            no_cache,
            timeout,
            json,
        } => {
            let params =
                secflow_producer::recipes::parse_params(&params).map_err(anyhow::Error::msg)?;
            let wait = wait.then(|| std::time::Duration::from_secs(timeout));
            let catalog = catalog.load()?;
            let request = secflow_producer::recipes::RunRequest {
                path: &recipe,
                params: &params,
                targets: &targets,
                catalog: &catalog,
            };
            let submitted = secflow_producer::recipes::submit_until(
                &cli.broker,
                &request,
                wait,
                !no_cache,
                ctrl_c(),
            )
            .await?;
            if json {
                println!("{}", serde_json::to_string(&submitted)?);
            } else {
                println!("{}", submitted.run_id);
                if let Some(status) = &submitted.status {
                    eprintln!("run {} ended: {status}", submitted.run_id);
                }
            }
            if submitted
                .status
                .as_deref()
                .is_some_and(|s| s != "succeeded")
            {
                anyhow::bail!(
                    "run {} ended {}",
                    submitted.run_id,
                    submitted.status.unwrap_or_default()
                );
            }
        }
        Command::Watch { run } => {
            let status = secflow_producer::recipes::watch(&cli.broker, &run, ctrl_c(), |line| {
                println!("{line}")
            })
            .await?;
            if status != "succeeded" {
                anyhow::bail!("run {run} ended {status}");
            }
        }
        Command::Cancel { run } => {
            if secflow_producer::recipes::cancel(&cli.broker, &run).await? {
                println!(
                    "cancelling run {run}: queued nodes are skipped, running ones stopped, `when: always` nodes still run"
                );
            } else {
                anyhow::bail!("run {run} has already ended; nothing to cancel");
            }
        }
        Command::Resume { run, node } => {
            let nodes =
                secflow_producer::recipes::resume(&cli.broker, &run, node.as_deref()).await?;
            println!("resumed {} of run {run}", nodes.join(", "));
        }
        Command::Status { run, json } => {
            let runs =
                secflow_common::runs::RunStore::new(&cli.broker.redis_url, &cli.broker.namespace)?;
            let status = secflow_common::deadline::within(
                "Redis to read a run's state",
                secflow_common::deadline::REDIS_OP,
                runs.status(&run),
            )
            .await??;
            if json {
                println!("{}", serde_json::to_string(&status)?);
            } else {
                println!(
                    "run {} {}{}, findings={}",
                    status.run_id,
                    status.status,
                    status
                        .blocking_node
                        .as_ref()
                        .map(|n| format!(" (blocked by `{n}`)"))
                        .unwrap_or_default(),
                    status.findings
                );
                for (node, state) in &status.nodes {
                    let mut line = format!("  {node:<30} {state:<10}");
                    if let Some(n) = status.node_findings.get(node) {
                        line.push_str(&format!(" findings={n}"));
                    }
                    if let Some(up) = status.blocked_by.get(node) {
                        line.push_str(&format!(" blocked by `{up}`"));
                    }
                    if let Some(why) = status.errors.get(node) {
                        line.push_str(&format!(" {why}"));
                    }
                    if let Some(record) = status.records.get(node) {
                        line.push_str(&secflow_producer::events::record_text(record));
                    }
                    println!("{}", line.trim_end());
                }
            }
        }
        Command::Validate {
            recipe,
            params,
            catalog,
        } => {
            let params =
                secflow_producer::recipes::parse_params(&params).map_err(anyhow::Error::msg)?;
            let catalog = catalog.load()?;
            match secflow_producer::recipes::load_with(&recipe, &params, &catalog) {
                Ok(summary) => println!("{recipe}: ok, {summary}"),
                Err(errors) => {
                    for e in &errors {
                        eprintln!("{e}");
                    }
                    anyhow::bail!(
                        "{recipe}: {} problem(s); nothing was published",
                        errors.len()
                    );
                }
            }
        }
        Command::Events {
            pattern,
            idle_exit,
            json,
            trace,
        } => {
            let idle = idle_exit.map(std::time::Duration::from_secs);
            secflow_producer::events::follow(&cli.broker, &pattern, idle, ctrl_c(), |event| {
                if json {
                    println!("{}", serde_json::to_string(event).unwrap_or_default());
                } else if trace {
                    println!("{}", secflow_producer::events::trace_line(event));
                } else {
                    println!("{}", secflow_producer::events::describe(event));
                }
            })
            .await?;
        }
    }
    Ok(())
}

/// Resolves on ctrl-c (never, if the handler cannot be installed: the default action then
/// still ends the process).
async fn ctrl_c() {
    if tokio::signal::ctrl_c().await.is_err() {
        std::future::pending::<()>().await;
    }
}

fn print_ids(ids: &[uuid::Uuid], node_type: &str, json: bool) {
    let mut out = String::with_capacity(ids.len() * 40);
    for id in ids {
        if json {
            out.push_str(&serde_json::json!({ "task_id": id, "type": node_type }).to_string());
        } else {
            out.push_str(&id.to_string());
        }
        out.push('\n');
    }
    print!("{out}");
}

/// The tools and resources recipes are checked against (the workers' own settings).
#[derive(clap::Args, Debug)]
struct CatalogArgs {
    /// Tool definitions (YAML) added to the built-in ones, as the workers load them.
    #[arg(long, env = "SECFLOW_TOOLS")]
    tools: Option<std::path::PathBuf>,
    /// Resource directory: `res://` settings are checked to exist in it.
    #[arg(long, env = "SECFLOW_RESOURCES")]
    resources: Option<std::path::PathBuf>,
}

impl CatalogArgs {
    fn load(&self) -> anyhow::Result<secflow_common::recipe::Catalog> {
        let mut tools = secflow_common::tools::ToolSet::builtin()?;
        if let Some(path) = &self.tools {
            tools.merge(
                secflow_common::tools::ToolSet::load(path)
                    .map_err(|e| anyhow::anyhow!("--tools: {e}"))?,
            );
        }
        Ok(secflow_common::recipe::Catalog {
            tools,
            resources: secflow_common::tools::Resources::new(self.resources.clone()),
        })
    }
}
