//! Fleet controls: what operators (and the fleet's own signals) set in Redis and every worker
//! obeys within a second — breakers held open or disabled by hand, paused task types, and the
//! degradation level. One hash, `sf:{ns:controls}`, holds them all, so a worker reads every
//! control with one command and keeps a copy ([`Controls`]) that its task gate consults without
//! a round trip.
//!
//! Fields: `breaker:SERVICE` and `pause:TYPE` (JSON [`BreakerHold`] / [`Pause`]), `level`
//! (JSON [`LevelSetting`]). A field that does not parse is reported and ignored.

pub mod healing;
pub mod level;
pub mod registry;

use deadpool_redis::{
    Pool,
    redis::{AsyncCommands, Script},
};
pub use level::{Level, LevelOverrides};
use serde::{Deserialize, Serialize};
use std::{collections::BTreeMap, time::Duration};

/// Longest wait for a Redis connection.
const POOL_TIMEOUT: Duration = Duration::from_secs(2);

/// How a breaker is held by hand.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum HoldMode {
    /// Open until `until_ms` (or until closed by hand): tasks are deferred.
    Open,
    /// Disabled until enabled: tasks are deferred, never failed.
    Disabled,
}

/// A breaker held open or disabled by an operator.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct BreakerHold {
    /// Open or disabled.
    pub mode: HoldMode,
    /// When an `open` hold ends by itself (ms since the epoch); `None`: until closed by hand.
    #[serde(default)]
    pub until_ms: Option<u64>,
    /// Why, as the operator wrote it.
    pub reason: String,
    /// Who (user name or `console:ROLE`).
    pub by: String,
    /// When it was set.
    pub at_ms: u64,
}

/// A paused task type: its tasks are deferred, not run and not failed, until resumed.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Pause {
    /// Why, as the operator wrote it.
    pub reason: String,
    /// Who.
    pub by: String,
    /// When it was set.
    pub at_ms: u64,
}

/// The fleet's degradation level and who set it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct LevelSetting {
    /// The level in force.
    pub level: Level,
    /// `true`: the fleet's signals move it; `false`: an operator fixed it.
    pub auto: bool,
    /// Why it is at this level.
    pub reason: String,
    /// Who set it (`auto` for the fleet's own controller).
    pub by: String,
    /// Since when.
    pub at_ms: u64,
}

impl Default for LevelSetting {
    fn default() -> Self {
        Self {
            level: Level::Full,
            auto: true,
            reason: "default".into(),
            by: "auto".into(),
            at_ms: 0,
        }
    }
}

/// Every control in force, as one read found them.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Controls {
    /// Breakers held by hand, by service.
    pub breakers: BTreeMap<String, BreakerHold>,
    /// Paused task types.
    pub paused: BTreeMap<String, Pause>,
    /// The degradation level.
    pub level: LevelSetting,
    /// Fields that did not parse (field and why), ignored.
    pub problems: Vec<String>,
}

/// Why a task is held back now, and for how long before it is tried again.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Held {
    /// For the deferral's log line and event.
    pub reason: String,
    /// Until it is tried again.
    pub delay: Duration,
}

/// Shortest and longest wait of a held task: a fresh hold is checked again within a second or
/// so (an operator who lifts it sees tasks move at once), an old one less often (thousands of
/// held tasks do not churn the broker).
const HOLD_MIN: Duration = Duration::from_secs(1);
const HOLD_MAX: Duration = Duration::from_secs(30);

impl Controls {
    /// Whether a task of `task_type` calling `service` is held back at `now_ms`.
    pub fn held(&self, service: &str, task_type: &str, now_ms: u64) -> Option<Held> {
        if let Some(p) = self.paused.get(task_type) {
            return Some(Held {
                reason: format!("type {task_type} paused by {}: {}", p.by, p.reason),
                delay: hold_delay(now_ms.saturating_sub(p.at_ms), None),
            });
        }
        let hold = self.breakers.get(service)?;
        let left = match (hold.mode, hold.until_ms) {
            (HoldMode::Open, Some(until)) if until <= now_ms => return None,
            (HoldMode::Open, Some(until)) => Some(Duration::from_millis(until - now_ms)),
            _ => None,
        };
        let what = match hold.mode {
            HoldMode::Open => "held open",
            HoldMode::Disabled => "disabled",
        };
        Some(Held {
            reason: format!(
                "breaker of {service} {what} by {}: {}",
                hold.by, hold.reason
            ),
            delay: hold_delay(now_ms.saturating_sub(hold.at_ms), left),
        })
    }
}

/// A quarter of the hold's age, between [`HOLD_MIN`] and [`HOLD_MAX`], and no longer than what
/// is `left` of it.
fn hold_delay(age_ms: u64, left: Option<Duration>) -> Duration {
    let d = Duration::from_millis(age_ms / 4).clamp(HOLD_MIN, HOLD_MAX);
    left.map_or(d, |left| d.min(left.max(Duration::from_millis(10))))
}

/// The controls hash of namespace `ns`.
pub fn controls_key(ns: &str) -> String {
    format!("sf:{{{ns}:controls}}")
}

/// The key of `service`'s shared breaker state in namespace `ns` (written by the workers).
pub fn breaker_key(ns: &str, service: &str) -> String {
    format!("sf:{{{ns}:breaker:{service}}}")
}

/// A failure to read or change the controls.
#[derive(Debug, thiserror::Error)]
pub enum ControlError {
    /// Redis did not answer or refused.
    #[error("Redis: {0}")]
    Redis(String),
}

fn redis_err(e: impl std::fmt::Display) -> ControlError {
    ControlError::Redis(e.to_string())
}

/// Reads and changes the controls of one namespace.
pub struct ControlStore {
    pool: Pool,
    ns: String,
    key: String,
    set_auto_level: Script,
}

impl ControlStore {
    /// A store on `url` for namespace `ns`. Does not connect yet.
    pub fn new(url: &str, ns: &str) -> Result<Self, ControlError> {
        let pool = crate::redis_pool::pool(url, POOL_TIMEOUT).map_err(ControlError::Redis)?;
        Ok(Self {
            pool,
            ns: ns.to_string(),
            key: controls_key(ns),
            // The fleet's controller never overrides an operator's level.
            set_auto_level: Script::new(
                r#"local cur = redis.call('HGET', KEYS[1], 'level')
                   if cur and not string.find(cur, '"auto":true', 1, true) then return 0 end
                   redis.call('HSET', KEYS[1], 'level', ARGV[1])
                   return 1"#,
            ),
        })
    }

    /// The namespace.
    pub fn ns(&self) -> &str {
        &self.ns
    }

    /// The pool, for callers that read other keys of the namespace (breaker states).
    pub fn pool(&self) -> &Pool {
        &self.pool
    }

    async fn conn(&self) -> Result<deadpool_redis::Connection, ControlError> {
        self.pool.get().await.map_err(redis_err)
    }

    /// Every control in force.
    pub async fn read(&self) -> Result<Controls, ControlError> {
        let mut conn = self.conn().await?;
        let fields: BTreeMap<String, String> = conn.hgetall(&self.key).await.map_err(redis_err)?;
        Ok(parse(fields))
    }

    async fn put(&self, field: String, value: Option<String>) -> Result<(), ControlError> {
        let mut conn = self.conn().await?;
        match value {
            Some(v) => conn.hset::<_, _, _, ()>(&self.key, field, v).await,
            None => conn.hdel::<_, _, ()>(&self.key, field).await,
        }
        .map_err(redis_err)
    }

    /// Holds `service`'s breaker (`Some`) or lifts the hold (`None`).
    pub async fn hold_breaker(
        &self,
        service: &str,
        hold: Option<&BreakerHold>,
    ) -> Result<(), ControlError> {
        let value = hold.map(|h| serde_json::to_string(h).unwrap_or_default());
        self.put(format!("breaker:{service}"), value).await
    }

    /// Forgets `service`'s shared breaker state: the next call starts a fresh, closed breaker.
    pub async fn reset_breaker(&self, service: &str) -> Result<(), ControlError> {
        let mut conn = self.conn().await?;
        conn.del::<_, ()>(breaker_key(&self.ns, service))
            .await
            .map_err(redis_err)
    }

    /// Pauses `task_type` (`Some`) or resumes it (`None`).
    pub async fn pause(&self, task_type: &str, pause: Option<&Pause>) -> Result<(), ControlError> {
        let value = pause.map(|p| serde_json::to_string(p).unwrap_or_default());
        self.put(format!("pause:{task_type}"), value).await
    }

    /// Sets the level as an operator (or returns it to the signals with `auto: true`).
    pub async fn set_level(&self, setting: &LevelSetting) -> Result<(), ControlError> {
        let value = serde_json::to_string(setting).unwrap_or_default();
        self.put("level".into(), Some(value)).await
    }

    /// Sets the level as the fleet's controller: only while the level is automatic. Whether
    /// it was set.
    pub async fn set_level_auto(&self, setting: &LevelSetting) -> Result<bool, ControlError> {
        let mut conn = self.conn().await?;
        let value = serde_json::to_string(setting).unwrap_or_default();
        let set: i64 = self
            .set_auto_level
            .key(&self.key)
            .arg(value)
            .invoke_async(&mut *conn)
            .await
            .map_err(redis_err)?;
        Ok(set == 1)
    }
}

/// Reads the hash's fields; what does not parse is named in `problems`.
pub fn parse(fields: BTreeMap<String, String>) -> Controls {
    let mut controls = Controls::default();
    for (field, value) in fields {
        let result = if let Some(service) = field.strip_prefix("breaker:") {
            serde_json::from_str(&value).map(|h| {
                controls.breakers.insert(service.to_string(), h);
            })
        } else if let Some(ty) = field.strip_prefix("pause:") {
            serde_json::from_str(&value).map(|p| {
                controls.paused.insert(ty.to_string(), p);
            })
        } else if field == "level" {
            serde_json::from_str(&value).map(|l| controls.level = l)
        } else {
            controls.problems.push(format!("{field}: not a control"));
            continue;
        };
        if let Err(e) = result {
            controls.problems.push(format!("{field}: {e}"));
        }
    }
    controls
}

#[cfg(test)]
mod tests {
    use super::*;

    fn hold(mode: HoldMode, until_ms: Option<u64>, at_ms: u64) -> BreakerHold {
        BreakerHold {
            mode,
            until_ms,
            reason: "maintenance".into(),
            by: "alice".into(),
            at_ms,
        }
    }

    #[test]
    fn a_paused_type_and_a_held_breaker_hold_tasks() {
        let mut c = Controls::default();
        assert_eq!(c.held("nvd", "enrich.cve", 1_000), None);
        c.breakers
            .insert("nvd".into(), hold(HoldMode::Open, Some(61_000), 1_000));
        let h = c.held("nvd", "enrich.cve", 1_000).unwrap();
        assert!(h.reason.contains("held open by alice: maintenance"));
        assert_eq!(h.delay, HOLD_MIN, "a fresh hold is checked again soon");
        assert_eq!(
            c.held("nvd", "enrich.cve", 61_000),
            None,
            "an open hold ends"
        );
        assert_eq!(
            c.held("nvd", "enrich.cve", 60_990).unwrap().delay,
            Duration::from_millis(10)
        );
        c.breakers
            .insert("nvd".into(), hold(HoldMode::Disabled, None, 0));
        let old = c.held("nvd", "x", 3_600_000).unwrap();
        assert_eq!(old.delay, HOLD_MAX, "an old hold is checked less often");
        c.paused.insert(
            "scan.nuclei".into(),
            Pause {
                reason: "r".into(),
                by: "bob".into(),
                at_ms: 0,
            },
        );
        assert!(
            c.held("other", "scan.nuclei", 8_000)
                .unwrap()
                .reason
                .contains("paused by bob")
        );
        assert_eq!(c.held("other", "scan.other", 8_000), None);
    }

    #[test]
    fn fields_that_do_not_parse_are_named_and_ignored() {
        let mut fields = BTreeMap::new();
        fields.insert("breaker:nvd".to_string(), "{".to_string());
        fields.insert("junk".to_string(), "1".to_string());
        fields.insert(
            "level".to_string(),
            r#"{"level":"low","auto":false,"reason":"r","by":"op","at_ms":5}"#.to_string(),
        );
        let c = parse(fields);
        assert!(c.breakers.is_empty());
        assert_eq!(c.level.level, Level::Low);
        assert_eq!(c.problems.len(), 2);
        assert!(c.problems[0].starts_with("breaker:nvd"));
    }
}
