//! The console's view of the DLQ. Reading the DLQ means holding it (see [`crate::session`]), so
//! the console takes a snapshot (every message's record, properties and body), hands every
//! message back at once, and serves lists and records from it for a few seconds. Actions take
//! the DLQ again, act through [`crate::actions`] like the commands, and drop the snapshot.

use crate::{
    InspectorError, Session,
    filter::{Filter, Selection},
    record::DeadRecord,
};
use lapin::BasicProperties;
use secflow_common::{config::BrokerArgs, now_ms};
use serde::Deserialize;
use std::{
    collections::BTreeMap,
    sync::Arc,
    time::{Duration, Instant},
};

/// How long a snapshot answers before the DLQ is read again.
pub const FRESH: Duration = Duration::from_secs(3);

/// One message as read.
pub struct Entry {
    /// What it says about itself.
    pub record: DeadRecord,
    /// Its properties (headers included).
    pub props: BasicProperties,
    /// Its body.
    pub body: Vec<u8>,
}

/// The DLQ at one moment.
pub struct Snapshot {
    /// When it was read, ms since the epoch.
    pub taken_ms: u64,
    taken: Instant,
    /// Every message, in queue order.
    pub entries: Vec<Entry>,
}

/// The latest snapshot, read again when stale.
#[derive(Default)]
pub struct DlqCache {
    current: tokio::sync::Mutex<Option<Arc<Snapshot>>>,
}

impl DlqCache {
    /// A snapshot at most [`FRESH`] old (a new one with `refresh`). One read at a time: callers
    /// meanwhile wait for it and share it.
    pub async fn get(
        &self,
        broker: &BrokerArgs,
        lock_wait: Duration,
        refresh: bool,
    ) -> Result<Arc<Snapshot>, InspectorError> {
        let mut current = self.current.lock().await;
        if let Some(s) = current
            .as_ref()
            .filter(|s| !refresh && s.taken.elapsed() < FRESH)
        {
            return Ok(Arc::clone(s));
        }
        let session = Session::open(broker, lock_wait).await?;
        let entries = session
            .messages
            .iter()
            .zip(&session.records)
            .map(|(d, r)| Entry {
                record: r.clone(),
                props: d.properties.clone(),
                body: d.data.clone(),
            })
            .collect();
        session.release().await?;
        let snapshot = Arc::new(Snapshot {
            taken_ms: now_ms(),
            taken: Instant::now(),
            entries,
        });
        *current = Some(Arc::clone(&snapshot));
        Ok(snapshot)
    }

    /// The latest snapshot, however old, without reading the DLQ.
    pub async fn peek(&self) -> Option<Arc<Snapshot>> {
        self.current.lock().await.clone()
    }

    /// Forgets the snapshot (after an action changed the DLQ).
    pub async fn invalidate(&self) {
        *self.current.lock().await = None;
    }
}

/// Which dead letters an action is about, as the API takes it: task ids, filters (the
/// inspector's keys: type, class, code, reason, run, queue, older, newer), or all.
#[derive(Clone, Debug, Default, Deserialize)]
pub struct Select {
    /// Task ids.
    #[serde(default)]
    pub ids: Vec<String>,
    /// KEY → VALUE, all of which must hold.
    #[serde(default)]
    pub filter: BTreeMap<String, String>,
    /// Every dead letter.
    #[serde(default)]
    pub all: bool,
}

impl Select {
    /// The inspector's selection; a bad filter is a usage error.
    pub fn selection(&self) -> Result<Selection, InspectorError> {
        Ok(Selection {
            ids: self.ids.clone(),
            filters: filters(&self.filter)?,
            all: self.all,
        })
    }
}

/// `KEY → VALUE` as the inspector's filters (empty values are ignored: an empty form field).
pub fn filters(map: &BTreeMap<String, String>) -> Result<Vec<Filter>, InspectorError> {
    map.iter()
        .filter(|(_, v)| !v.trim().is_empty())
        .map(|(k, v)| format!("{k}={}", v.trim()).parse::<Filter>())
        .collect::<Result<_, _>>()
        .map_err(InspectorError::Usage)
}
