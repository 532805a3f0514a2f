//! Runs of a recipe, kept in Redis and moved forward by the workers themselves (choreography):
//! the producer stores the run and publishes its roots; the worker that ends a node calls one
//! script that marks it, stores its outputs and names the dependents that became ready, which
//! that worker then publishes. Every key of a run shares one hash tag, so the script is atomic
//! on Redis Cluster too.

use crate::{
    hooks::SealedHooks,
    recipe::{Recipe, When, substitute_params},
};
use deadpool_redis::{
    Pool,
    redis::{AsyncCommands, Script},
};
use serde_json::Value;
use std::collections::{BTreeMap, HashMap};
use uuid::Uuid;

mod inputs;
mod model;
mod state;

pub use inputs::{missing_outputs, select_outputs};
pub use model::{NodeEnd, NodeRecord, RunError, RunStatus, StoredNode, count_findings};

/// The input under which a node receives its run's targets.
pub const TARGETS_INPUT: &str = "_targets";

/// Most targets one run may have.
pub const MAX_TARGETS: usize = 10_000;

/// Largest output a node may store in its run (its dependents receive it as input).
pub const MAX_OUTPUT_BYTES: usize = 1 << 20;
/// Longest wait for a Redis connection from the pool (or a new one).
const POOL_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(2);

/// How long cached outputs are kept.
const CACHE_TTL_SECS: u64 = 24 * 3600;

/// How long a run's keys are kept after its last change: every key of the run (its specs,
/// state, outputs, records, compensations, hooks) gets this TTL whenever the run changes.
pub const RUN_TTL_SECS: i64 = 7 * 24 * 3600;

/// What [`RunStore::rewind`] found.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Rewind {
    /// The node had failed: it and what its failure skipped are waiting again.
    Rewound,
    /// The node already succeeded: its end is recorded, it must not run again.
    AlreadySucceeded,
    /// Neither: nothing changed.
    NotFailed,
}

/// Redis access for runs of one namespace.
pub struct RunStore {
    pool: Pool,
    ns: String,
    node_end: Script,
    rewind: Script,
    reported: Script,
    end_reported: Script,
}

impl RunStore {
    /// A store on `url` for namespace `ns`.
    pub fn new(url: &str, ns: &str) -> Result<Self, RunError> {
        let pool = crate::redis_pool::pool(url, POOL_TIMEOUT).map_err(RunError::Redis)?;
        Ok(Self {
            pool,
            ns: ns.to_string(),
            node_end: Script::new(include_str!("node_end.lua")),
            rewind: Script::new(include_str!("rewind.lua")),
            reported: Script::new(include_str!("reported.lua")),
            end_reported: Script::new(
                "if redis.call('EXISTS', KEYS[1]) == 1 then \
                 redis.call('HSET', KEYS[1], '_end_reported', '1') end",
            ),
        })
    }

    /// A pooled connection. Boxed: the pool's future (which may open a connection) is several
    /// kilobytes, which every caller's state would otherwise hold inline and copy at each move.
    async fn conn(&self) -> Result<deadpool_redis::Connection, deadpool_redis::PoolError> {
        Box::pin(self.pool.get()).await
    }

    fn key(&self, run: &str, part: &str) -> String {
        format!("sf:{{{}:run:{run}}}:{part}", self.ns)
    }

    /// The pattern of `run`'s keys, for reports: `sf:{ns:run:ID}:*`.
    pub fn keys_pattern(&self, run: &str) -> String {
        self.key(run, "*")
    }

    /// The keys the scripts take: links (what each node leads to, small), state, waiting,
    /// outputs, unpublished, compensations, then the full node specs (`nodes`) and the sealed
    /// hooks (`hooks`), which the scripts only keep alive. Every key a run has is here.
    fn keys(&self, run: &str) -> [String; 8] {
        [
            "links",
            "state",
            "waiting",
            "outputs",
            "unpublished",
            "compensations",
            "nodes",
            "hooks",
        ]
        .map(|p| self.key(run, p))
    }

    /// Stores a new run of a validated `recipe` about `targets` and returns its id and its
    /// root nodes. `cache` lets cached outputs stand in for running nodes (`--no-cache` turns
    /// it off). The recipe's hooks are stored sealed with `signer` ([`SealedHooks`]).
    pub async fn create(
        &self,
        recipe: &Recipe,
        params: &BTreeMap<String, Value>,
        targets: &[String],
        cache: bool,
        signer: Option<&crate::signing::Keyring>,
        trace: Option<&crate::trace::TraceContext>,
    ) -> Result<(Uuid, Vec<StoredNode>), RunError> {
        let run_id = Uuid::now_v7();
        let value_of = |name: &str| {
            params
                .get(name)
                .cloned()
                .or_else(|| recipe.parameters.get(name).and_then(|p| p.default.clone()))
        };
        let compensations: HashMap<&str, &str> = recipe
            .nodes
            .iter()
            .filter_map(|n| n.compensate.as_deref().map(|c| (n.id.as_str(), c)))
            .collect();
        let is_compensation = |id: &str| compensations.values().any(|c| *c == id);
        let mut dependents: HashMap<&str, Vec<String>> = HashMap::new();
        for node in recipe.nodes.iter().filter(|n| !is_compensation(&n.id)) {
            for source in node.inputs.values() {
                if let Some((up, _)) = source.split_once('.') {
                    let list = dependents.entry(up).or_default();
                    if !list.contains(&node.id) {
                        list.push(node.id.clone());
                    }
                }
            }
        }
        let stored: Vec<StoredNode> = recipe
            .nodes
            .iter()
            .map(|n| StoredNode {
                id: n.id.clone(),
                task_id: Uuid::now_v7(),
                node_type: n.node_type.clone(),
                config: substitute_params(&n.config, &value_of),
                inputs: n.inputs.clone(),
                outputs: n.outputs.clone(),
                retry: n.retry.clone(),
                timeout_ms: n
                    .timeout
                    .as_deref()
                    .and_then(|t| crate::duration::parse_ms(t).ok()),
                service: n.service.clone(),
                cache,
                optional: n.optional,
                when: if n.when == When::Always {
                    "always".into()
                } else {
                    "success".into()
                },
                dependents: dependents.remove(n.id.as_str()).unwrap_or_default(),
                compensation: is_compensation(&n.id),
                targets: targets.to_vec(),
                fallback: n.fallback.iter().map(|a| a.resolve(&value_of)).collect(),
                fallback_on: n.fallback_on.clone().unwrap_or_default(),
                degrade: n.degrade.clone(),
                essential: n.essential,
            })
            .collect();
        let [links, state, waiting, _, _, compensations_key, nodes, hooks] =
            self.keys(&run_id.to_string());
        let mut pipe = deadpool_redis::redis::pipe();
        pipe.atomic();
        for n in &stored {
            let link = serde_json::json!({ "d": n.dependents, "o": n.optional, "w": n.when, "c": n.compensation });
            pipe.hset(&links, &n.id, link.to_string());
            let upstreams = n
                .inputs
                .values()
                .filter_map(|s| s.split_once('.'))
                .map(|(up, _)| up)
                .collect::<std::collections::HashSet<_>>()
                .len();
            pipe.hset(&nodes, &n.id, serde_json::to_string(n).unwrap_or_default());
            pipe.hset(
                &state,
                &n.id,
                if n.compensation {
                    "standby"
                } else if upstreams == 0 {
                    "queued"
                } else {
                    "pending"
                },
            );
            pipe.hset(&waiting, &n.id, upstreams);
        }
        for (node, comp) in &compensations {
            pipe.hset(&compensations_key, *node, *comp);
        }
        pipe.hset(
            &state,
            "_total",
            stored.iter().filter(|n| !n.compensation).count(),
        )
        .hset(&state, "_run", "running")
        .hset(&state, "_name", &recipe.name);
        pipe.hset(&state, "_created_at", crate::now_ms());
        if let Some(trace) = trace {
            // The run's root span: resumed nodes are published under it too.
            pipe.hset(&state, "_trace", trace.traceparent());
        }
        if !recipe.hooks.is_empty() {
            let sealed = SealedHooks::seal(&recipe.hooks, &run_id.to_string(), signer)
                .and_then(|sealed| serde_json::to_string(&sealed))
                .map_err(|e| RunError::Corrupt(format!("hooks: {e}")))?;
            pipe.set(&hooks, sealed);
        }
        // Keys not written yet (outputs, unpublished) get the TTL from the script that
        // writes them.
        for key in self.keys(&run_id.to_string()) {
            pipe.expire(key, RUN_TTL_SECS);
        }
        let mut conn = self.conn().await?;
        pipe.query_async::<()>(&mut conn).await?;
        let roots = stored
            .into_iter()
            .filter(|n| n.inputs.is_empty() && !n.compensation)
            .collect();
        Ok((run_id, roots))
    }

    /// The hooks `run` was submitted with, still sealed (`None`: none, or the run is unknown).
    pub async fn hooks(&self, run: &str) -> Result<Option<SealedHooks>, RunError> {
        let mut conn = self.conn().await?;
        let raw: Option<String> = conn.get(self.key(run, "hooks")).await?;
        raw.map(|r| serde_json::from_str(&r).map_err(|e| RunError::Corrupt(format!("hooks: {e}"))))
            .transpose()
    }

    /// Records that `node` ended (`ok` with `output`, or failed) and returns the dependents
    /// that became ready, the run's status, and whether the node had already ended (another
    /// attempt recorded it first). Calling it again for an ended node changes nothing and
    /// returns the dependents whose publish was not confirmed yet ([`RunStore::published`]).
    /// The node's findings ([`count_findings`]) are added to the run's.
    /// `failure` says why a failed node failed (shown by `producer status`); `record` how a
    /// completed one was served (one served below `full` quality, or skipped, makes the run
    /// end `degraded` rather than `succeeded`).
    pub async fn node_end(
        &self,
        run: &str,
        node: &StoredNode,
        output: Option<&Value>,
        failure: Option<&str>,
        record: Option<&NodeRecord>,
    ) -> Result<NodeEnd, RunError> {
        let keys = self.keys(run);
        // A node skipped at its degradation level produced nothing: its dependents get its
        // outputs as missing (`_partial`).
        let skipped = record.is_some_and(|r| r.skipped.is_some());
        let selected = match output {
            Some(_) if skipped => select_outputs(node, &Value::Null).to_string(),
            Some(o) => select_outputs(node, o).to_string(),
            None => failure.unwrap_or_default().to_string(),
        };
        let mut invocation = self.node_end.prepare_invoke();
        for k in &keys {
            invocation.key(k);
        }
        invocation
            .arg(&node.id)
            .arg(if output.is_some() { "ok" } else { "failed" })
            .arg(selected)
            .arg(crate::now_ms())
            .arg(output.map_or(0, count_findings))
            .arg(record.map_or_else(String::new, |r| {
                serde_json::to_string(r).unwrap_or_default()
            }))
            .arg(if record.is_some_and(NodeRecord::degrades_run) {
                "1"
            } else {
                "0"
            })
            .arg(RUN_TTL_SECS);
        let mut conn = self.conn().await?;
        let (ready, status, already, findings, created, name): (
            String,
            String,
            String,
            u64,
            u64,
            String,
        ) = invocation.invoke_async(&mut conn).await?;
        let ids: Vec<String> =
            serde_json::from_str(&ready).map_err(|e| RunError::Corrupt(e.to_string()))?;
        let ready = self.nodes(run, &ids).await?;
        Ok(NodeEnd {
            ready,
            status,
            already: already == "1",
            findings,
            created_at_ms: created,
            name,
        })
    }

    /// Puts a failed node (and what its failure skipped) back to waiting before it runs again.
    pub async fn rewind(&self, run: &str, node: &str) -> Result<Rewind, RunError> {
        let mut invocation = self.rewind.prepare_invoke();
        for k in self.keys(run) {
            invocation.key(k);
        }
        invocation.arg(node).arg(RUN_TTL_SECS);
        let mut conn = self.conn().await?;
        let rewound: i64 = invocation.invoke_async(&mut conn).await?;
        Ok(match rewound {
            1 => Rewind::Rewound,
            2 => Rewind::AlreadySucceeded,
            _ => Rewind::NotFailed,
        })
    }

    /// Records that `node`'s own end event was confirmed. Returns the run's end when the caller
    /// must now report it: the run has its final status and every node that ended has had its
    /// end event confirmed (so the run's end event comes after all of them), and the run's end
    /// has not been reported yet ([`RunStore::end_reported`]).
    pub async fn reported(&self, run: &str, node: &str) -> Result<Option<NodeEnd>, RunError> {
        let mut invocation = self.reported.prepare_invoke();
        invocation.key(self.key(run, "state")).arg(node);
        let mut conn = self.conn().await?;
        let (report, status, findings, created, name): (String, String, u64, u64, String) =
            invocation.invoke_async(&mut conn).await?;
        let end = NodeEnd {
            ready: Vec::new(),
            status,
            already: false,
            findings,
            created_at_ms: created,
            name,
        };
        Ok((report == "1" && end.run_ended()).then_some(end))
    }

    /// Records that the run's end event was confirmed: later node reports do not repeat it.
    /// A run whose keys are gone (expired, deleted) is left alone: no key without a TTL.
    pub async fn end_reported(&self, run: &str) -> Result<(), RunError> {
        let mut invocation = self.end_reported.prepare_invoke();
        invocation.key(self.key(run, "state"));
        let mut conn = self.conn().await?;
        invocation.invoke_async::<()>(&mut conn).await?;
        Ok(())
    }

    /// Confirms that the dependents `node_end` returned for `node` were published.
    pub async fn published(&self, run: &str, node: &str) -> Result<(), RunError> {
        let mut conn = self.conn().await?;
        conn.hdel::<_, _, ()>(self.key(run, "unpublished"), node)
            .await?;
        Ok(())
    }

    /// The stored specs of `ids`.
    pub async fn nodes(&self, run: &str, ids: &[String]) -> Result<Vec<StoredNode>, RunError> {
        if ids.is_empty() {
            return Ok(Vec::new());
        }
        let mut conn = self.conn().await?;
        let raw: Vec<Option<String>> = deadpool_redis::redis::cmd("HMGET")
            .arg(self.key(run, "nodes"))
            .arg(ids)
            .query_async(&mut conn)
            .await?;
        raw.into_iter()
            .zip(ids)
            .map(|(r, id)| {
                let text = r.ok_or_else(|| RunError::Corrupt(format!("node `{id}` missing")))?;
                serde_json::from_str(&text).map_err(|e| RunError::Corrupt(e.to_string()))
            })
            .collect()
    }

    /// Deletes a run's keys (tests).
    pub async fn delete(&self, run: &str) -> Result<(), RunError> {
        let mut conn = self.conn().await?;
        conn.del::<_, ()>(self.keys(run).to_vec()).await?;
        Ok(())
    }
}
