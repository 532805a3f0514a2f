//! The fleet's self-healing record: who leads the controller, and how many healing actions
//! were taken and worked, per action (hash `sf:{ns:healing}`, fields `ACTION:taken` and
//! `ACTION:worked`), from which the recovery success rate is reported.

use super::{ControlError, ControlStore, redis_err};
use deadpool_redis::redis::{AsyncCommands, Script};
use std::collections::BTreeMap;

/// Healing actions taken and those that worked, by action.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct HealingStats {
    /// Action → (taken, worked).
    pub actions: BTreeMap<String, (u64, u64)>,
}

impl HealingStats {
    /// Share of actions that worked, `None` before any was taken.
    pub fn recovery_rate(&self) -> Option<f64> {
        let (taken, worked) = self
            .actions
            .values()
            .fold((0, 0), |(t, w), (at, aw)| (t + at, w + aw));
        (taken > 0).then(|| worked as f64 / taken as f64)
    }
}

fn healing_key(ns: &str) -> String {
    format!("sf:{{{ns}:healing}}")
}

fn leader_key(ns: &str) -> String {
    format!("sf:{{{ns}:controller}}")
}

impl ControlStore {
    /// Counts one healing `action`, and whether it `worked`.
    pub async fn count_healing(&self, action: &str, worked: bool) -> Result<(), ControlError> {
        let mut conn = self.conn().await?;
        let key = healing_key(&self.ns);
        let mut pipe = deadpool_redis::redis::pipe();
        pipe.hincr(&key, format!("{action}:taken"), 1).ignore();
        if worked {
            pipe.hincr(&key, format!("{action}:worked"), 1).ignore();
        }
        pipe.query_async::<()>(&mut *conn).await.map_err(redis_err)
    }

    /// Healing actions so far.
    pub async fn healing(&self) -> Result<HealingStats, ControlError> {
        let mut conn = self.conn().await?;
        let fields: BTreeMap<String, u64> = conn
            .hgetall(healing_key(&self.ns))
            .await
            .map_err(redis_err)?;
        let mut stats = HealingStats::default();
        for (field, n) in fields {
            if let Some((action, what)) = field.rsplit_once(':') {
                let entry = stats.actions.entry(action.to_string()).or_default();
                match what {
                    "taken" => entry.0 = n,
                    "worked" => entry.1 = n,
                    _ => {}
                }
            }
        }
        Ok(stats)
    }

    /// Takes or keeps the controller's lead for `me` for `ttl_ms`: whether `me` leads now.
    pub async fn lead(&self, me: &str, ttl_ms: u64) -> Result<bool, ControlError> {
        let script = Script::new(
            r"local cur = redis.call('GET', KEYS[1])
              if cur == false then redis.call('SET', KEYS[1], ARGV[1], 'PX', ARGV[2]) return 1 end
              if cur == ARGV[1] then redis.call('PEXPIRE', KEYS[1], ARGV[2]) return 1 end
              return 0",
        );
        let mut conn = self.conn().await?;
        let led: i64 = script
            .key(leader_key(&self.ns))
            .arg(me)
            .arg(ttl_ms)
            .invoke_async(&mut *conn)
            .await
            .map_err(redis_err)?;
        Ok(led == 1)
    }

    /// Gives the lead up if `me` holds it (a clean exit hands it over at once).
    pub async fn resign(&self, me: &str) -> Result<(), ControlError> {
        let script = Script::new(
            r"if redis.call('GET', KEYS[1]) == ARGV[1] then redis.call('DEL', KEYS[1]) end return 0",
        );
        let mut conn = self.conn().await?;
        script
            .key(leader_key(&self.ns))
            .arg(me)
            .invoke_async::<i64>(&mut *conn)
            .await
            .map(|_| ())
            .map_err(redis_err)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_recovery_rate_counts_every_action() {
        let mut s = HealingStats::default();
        assert_eq!(s.recovery_rate(), None);
        s.actions.insert("a".into(), (3, 3));
        s.actions.insert("b".into(), (1, 0));
        assert_eq!(s.recovery_rate(), Some(0.75));
    }
}
