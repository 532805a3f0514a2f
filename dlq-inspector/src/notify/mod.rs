//! `dlq-inspector notify`: follows the audit trail and sends dead letters, security
//! rejections, breaker openings, backlogs, unresponsive workers and error-rate anomalies to
//! webhooks (generic JSON and Slack-compatible), deduplicated per fingerprint, rate limited,
//! retried, never in the way of the fleet (it only reads the trail).
//!
//! Where it got to is kept in Redis (`sf:{NS:notify}`), so a restarted notifier goes on from
//! there instead of missing what happened while it was down.

pub mod rules;
pub mod send;

use crate::session::InspectorError;
use deadpool_redis::redis::AsyncCommands;
use rules::{Dedup, ErrorRate, Policy};
use secflow_common::{
    Topology, amqp,
    audit::{self, Start},
    config::BrokerArgs,
    deadline::{REDIS_OP, within},
    now_ms,
    retry::reconnect::ReconnectBackoff,
    severity::Severity,
};
use send::{Destination, Format};
use std::sync::{
    Arc,
    atomic::{AtomicU64, Ordering},
};
use std::time::Duration;
use tokio_util::sync::CancellationToken;

/// The notifier's settings.
#[derive(clap::Args, Clone, Debug)]
pub struct NotifyArgs {
    /// Webhook taking the alert as JSON (repeatable).
    #[arg(
        long = "webhook",
        env = "SECFLOW_NOTIFY_WEBHOOK",
        value_delimiter = ',',
        hide_env_values = true
    )]
    pub webhooks: Vec<String>,
    /// Slack-compatible incoming webhook (`{"text": ...}`) (repeatable).
    #[arg(
        long = "slack",
        env = "SECFLOW_NOTIFY_SLACK",
        value_delimiter = ',',
        hide_env_values = true
    )]
    pub slack: Vec<String>,
    /// Failures less severe than this are not sent: critical, high, medium, low.
    #[arg(long, default_value = "high")]
    pub min_severity: Severity,
    /// One alert per fingerprint per this long (10m, 1h).
    #[arg(long, default_value = "10m", value_parser = crate::cli::duration_ms)]
    pub dedup_window: u64,
    /// At most this many alerts a minute per destination.
    #[arg(long, default_value_t = 30)]
    pub max_per_minute: u32,
    /// Alert when more than this share of attempts fail over --error-window.
    #[arg(long, default_value_t = 0.10)]
    pub error_rate: f64,
    /// The error rate's window.
    #[arg(long, default_value = "5m", value_parser = crate::cli::duration_ms)]
    pub error_window: u64,
    /// Fewest attempts in the window for the error rate to count.
    #[arg(long, default_value_t = 20)]
    pub error_min_attempts: u64,
    /// Where to start when no earlier position is saved: `next` (what happens from now on)
    /// or `first` (everything the trail still holds).
    #[arg(long, default_value = "next", value_parser = ["next", "first"])]
    pub from: String,
}

/// Follows the trail and notifies until `stop`.
pub async fn run(
    broker: &BrokerArgs,
    args: NotifyArgs,
    stop: CancellationToken,
) -> Result<(), InspectorError> {
    broker.validate()?;
    if args.webhooks.is_empty() && args.slack.is_empty() {
        return Err(InspectorError::Usage(
            "notify needs somewhere to send: --webhook URL and/or --slack URL".into(),
        ));
    }
    if !(0.0..1.0).contains(&args.error_rate) {
        return Err(InspectorError::Usage(format!(
            "--error-rate {} is not a share between 0 and 1",
            args.error_rate
        )));
    }
    for url in args.webhooks.iter().chain(&args.slack) {
        let parsed = reqwest::Url::parse(url).map_err(|e| {
            InspectorError::Usage(format!("notification URL `{url}` does not parse: {e}"))
        })?;
        if !matches!(parsed.scheme(), "http" | "https") {
            return Err(InspectorError::Usage(format!(
                "notification URL `{url}` is not http or https"
            )));
        }
    }
    let _ = rustls::crypto::ring::default_provider().install_default();
    let client = reqwest::Client::builder()
        .connect_timeout(Duration::from_secs(5))
        .build()
        .map_err(|e| InspectorError::Usage(format!("HTTP client: {e}")))?;
    let ns = broker.namespace()?;
    let topology = Topology::new(ns.clone(), broker.delivery_limit);
    let destinations: Vec<Destination> = args
        .webhooks
        .iter()
        .map(|u| (u, Format::Json))
        .chain(args.slack.iter().map(|u| (u, Format::Slack)))
        .map(|(u, f)| {
            Destination::start(
                client.clone(),
                u.clone(),
                f,
                ns.as_str().to_string(),
                args.max_per_minute,
            )
        })
        .collect();
    let policy = Policy {
        min_severity: args.min_severity,
        dedup_ms: args.dedup_window,
        error_rate: args.error_rate,
        window_ms: args.error_window,
        min_attempts: args.error_min_attempts,
    };
    let position = Position::open(&broker.redis_url, ns.as_str())?;
    let saved = position.load().await;
    let mut start = match (saved, args.from.as_str()) {
        (Some(offset), _) => Start::Offset(offset + 1),
        (None, "first") => Start::First,
        (None, _) => Start::Next,
    };
    let last = Arc::new(AtomicU64::new(u64::MAX));
    position.keep_saving(Arc::clone(&last), stop.clone());
    let (mut dedup, mut rate) = (Dedup::default(), ErrorRate::default());
    let mut backoff = ReconnectBackoff::default();
    eprintln!(
        "notify: following the audit trail of {} ({} destinations)",
        ns.as_str(),
        destinations.len()
    );
    while !stop.is_cancelled() {
        let conn = tokio::select! {
            () = stop.cancelled() => break,
            c = amqp::connect(&broker.amqp_url, "secflow-notify", Duration::from_secs(10)) => c,
        };
        let followed = match conn {
            Ok(conn) => {
                let handled = audit::follow(&conn, &topology, start, &stop, |offset, raw| {
                    last.store(offset, Ordering::Relaxed);
                    let json: serde_json::Value =
                        serde_json::from_str(raw.json.get()).unwrap_or_default();
                    let now = now_ms();
                    let alerts = rules::alert_for(&raw.event, &json, &policy)
                        .into_iter()
                        .chain(rate.observe(&raw.event, &policy));
                    for alert in alerts {
                        if let Some(alert) = dedup.admit(alert, now, policy.dedup_ms) {
                            for d in &destinations {
                                d.send(alert.clone());
                            }
                        }
                    }
                    std::future::ready(())
                })
                .await;
                amqp::close(&conn, "notify stopped").await;
                handled.map_err(|e| e.to_string())
            }
            Err(e) => Err(e.to_string()),
        };
        if let Err(e) = followed {
            let wait = backoff.next_delay(&mut rand::rng());
            tracing::warn!(error = %e, retry_in_ms = wait.as_millis() as u64, "notify: lost the audit trail; reconnecting");
            tokio::select! {
                () = stop.cancelled() => break,
                () = tokio::time::sleep(wait) => {}
            }
        }
        let seen = last.load(Ordering::Relaxed);
        if seen != u64::MAX {
            start = Start::Offset(seen + 1);
        }
    }
    position.save(last.load(Ordering::Relaxed)).await;
    Ok(())
}

/// Where the notifier got to in the trail, kept in Redis.
struct Position {
    pool: deadpool_redis::Pool,
    key: String,
}

impl Position {
    fn open(url: &str, ns: &str) -> Result<Self, InspectorError> {
        let pool =
            secflow_common::redis_pool::pool(url, REDIS_OP).map_err(InspectorError::Usage)?;
        Ok(Self {
            pool,
            key: format!("sf:{{{ns}:notify}}"),
        })
    }

    /// The last offset handled, if saved (Redis unreachable: none, with a warning).
    async fn load(&self) -> Option<u64> {
        let read = async {
            let mut conn = self.pool.get().await.map_err(|e| e.to_string())?;
            conn.hget::<_, _, Option<u64>>(&self.key, "offset")
                .await
                .map_err(|e| e.to_string())
        };
        let loaded = within("Redis: the notifier's position", REDIS_OP, read)
            .await
            .map_err(|e| e.to_string())
            .and_then(|r| r);
        loaded.unwrap_or_else(|e| {
            tracing::warn!(error = %e, "notify: no saved position (Redis); starting from --from");
            None
        })
    }

    async fn save(&self, offset: u64) {
        if offset == u64::MAX {
            return;
        }
        let write = async {
            let mut conn = self.pool.get().await.map_err(|e| e.to_string())?;
            conn.hset::<_, _, _, ()>(&self.key, "offset", offset)
                .await
                .map_err(|e| e.to_string())
        };
        if let Ok(Err(e)) = within("Redis: saving the notifier's position", REDIS_OP, write).await {
            tracing::warn!(error = %e, "notify: position not saved");
        }
    }

    /// Saves `last` every second until `stop`.
    fn keep_saving(&self, last: Arc<AtomicU64>, stop: CancellationToken) {
        let (pool, key) = (self.pool.clone(), self.key.clone());
        tokio::spawn(async move {
            let me = Position { pool, key };
            let mut saved = u64::MAX;
            loop {
                tokio::select! {
                    () = stop.cancelled() => return,
                    () = tokio::time::sleep(Duration::from_secs(1)) => {}
                }
                let now = last.load(Ordering::Relaxed);
                if now != saved {
                    me.save(now).await;
                    saved = now;
                }
            }
        });
    }
}
