//! Redis access of the control commands and the paced requeue: the namespace's control store,
//! every call under a deadline, and the breaker states the workers store.

use crate::{
    InspectorError,
    breaker_state::{StoredBreaker, parse_record, service_of_key},
};
use deadpool_redis::redis;
use secflow_common::{
    config::{BrokerArgs, redact_url},
    control::{ControlStore, Controls, breaker_key, registry::WorkerRecord},
};
use std::{collections::BTreeMap, fmt::Display, future::Future, time::Duration};

/// Longest wait for one Redis call (a connection included).
pub const REDIS_CALL: Duration = Duration::from_secs(5);

/// A stored breaker state, or why it could not be read.
pub type BreakerRead = Result<StoredBreaker, String>;

/// One namespace's controls and breaker states in Redis.
pub struct Fleet {
    /// The namespace's control store.
    pub store: ControlStore,
    url: String,
}

impl Fleet {
    /// The fleet of `broker`'s namespace on `broker`'s Redis. Does not connect yet.
    pub fn open(broker: &BrokerArgs) -> Result<Self, InspectorError> {
        let ns = broker.namespace()?;
        let url = redact_url(&broker.redis_url);
        let store = ControlStore::new(&broker.redis_url, ns.as_str()).map_err(|e| {
            InspectorError::Redis {
                url: url.clone(),
                detail: e.to_string(),
            }
        })?;
        Ok(Self { store, url })
    }

    /// `fut` under [`REDIS_CALL`], its error naming Redis, the URL and `what` failed.
    pub async fn call<T, E: Display>(
        &self,
        what: &str,
        fut: impl Future<Output = Result<T, E>>,
    ) -> Result<T, InspectorError> {
        let err = |detail: String| InspectorError::Redis {
            url: self.url.clone(),
            detail: format!("{what}: {detail}"),
        };
        match tokio::time::timeout(REDIS_CALL, fut).await {
            Ok(Ok(v)) => Ok(v),
            Ok(Err(e)) => Err(err(e.to_string())),
            Err(_) => Err(err(format!("no answer within {REDIS_CALL:?}"))),
        }
    }

    /// Every control in force.
    pub async fn controls(&self) -> Result<Controls, InspectorError> {
        self.call("reading the controls", self.store.read()).await
    }

    /// Every registered worker, and the records that did not parse.
    pub async fn workers(&self) -> Result<(Vec<WorkerRecord>, Vec<String>), InspectorError> {
        self.call("reading the worker registry", self.store.workers())
            .await
    }

    /// Healing actions taken and those that worked.
    pub async fn healing(
        &self,
    ) -> Result<secflow_common::control::healing::HealingStats, InspectorError> {
        self.call("reading the healing record", self.store.healing())
            .await
    }

    /// The services that have a stored breaker state (one `SCAN` pass).
    pub async fn breaker_services(&self) -> Result<Vec<String>, InspectorError> {
        let ns = self.store.ns().to_string();
        let pattern = format!("sf:{{{ns}:breaker:*}}");
        let scan = async {
            let keys = scan_keys(self.store.pool(), &pattern).await?;
            let mut services: Vec<String> = keys
                .iter()
                .filter_map(|k| service_of_key(&ns, k).map(str::to_string))
                .collect();
            services.sort();
            services.dedup();
            Ok::<_, String>(services)
        };
        self.call("listing breaker states", scan).await
    }

    /// The stored breaker state of each of `services` that has one (one pipelined round trip).
    pub async fn breaker_states(
        &self,
        services: &[String],
    ) -> Result<BTreeMap<String, BreakerRead>, InspectorError> {
        if services.is_empty() {
            return Ok(BTreeMap::new());
        }
        let read = async {
            let mut conn = self.store.pool().get().await.map_err(|e| e.to_string())?;
            let mut pipe = redis::pipe();
            for s in services {
                pipe.cmd("GET").arg(breaker_key(self.store.ns(), s));
            }
            let values: Vec<Option<String>> = pipe
                .query_async(&mut *conn)
                .await
                .map_err(|e| e.to_string())?;
            Ok::<_, String>(
                services
                    .iter()
                    .zip(values)
                    .filter_map(|(s, v)| v.map(|v| (s.clone(), parse_record(&v))))
                    .collect(),
            )
        };
        self.call("reading breaker states", read).await
    }
}

pub use secflow_common::redis_pool::scan_keys;
