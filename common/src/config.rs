//! Settings every binary shares: where the broker and Redis are, and the namespace.

use crate::{Error, Result, topology::Namespace};

/// Default broker URL (loopback, guest account, default vhost).
pub const DEFAULT_AMQP_URL: &str = "amqp://guest:guest@127.0.0.1:5672/%2f";
/// Default Redis URL (loopback).
pub const DEFAULT_REDIS_URL: &str = "redis://127.0.0.1:6379/";

/// Connection settings, from flags with environment fallbacks.
#[derive(clap::Args, Clone, Debug)]
pub struct BrokerArgs {
    /// RabbitMQ URL, or the nodes of a cluster separated by commas: tried in the order listed,
    /// moving to the next when one fails (a comma in a password is written %2C).
    #[arg(long, env = "AMQP_URL", default_value = DEFAULT_AMQP_URL)]
    pub amqp_url: String,
    /// Redis URL.
    #[arg(long, env = "REDIS_URL", default_value = DEFAULT_REDIS_URL)]
    pub redis_url: String,
    /// Prefix of every exchange and queue, so fleets (and tests) stay apart.
    #[arg(long, env = "SECFLOW_NAMESPACE", default_value = "secflow")]
    pub namespace: String,
    /// Deliveries a work queue allows before the broker dead-letters a crash-looping task.
    /// Part of the queue's identity: every binary of a namespace must use the same value.
    #[arg(long, env = "SECFLOW_DELIVERY_LIMIT", default_value_t = 5)]
    pub delivery_limit: u32,
    /// Seconds to keep trying to reach the broker at start-up.
    #[arg(long, env = "SECFLOW_CONNECT_TIMEOUT", default_value_t = 30)]
    pub connect_timeout_secs: u64,
    /// Largest task message, bytes: producers refuse to publish more, workers dead-letter more
    /// unread (`too_large`).
    #[arg(long, env = "SECFLOW_MAX_MESSAGE_BYTES", default_value_t = DEFAULT_MAX_MESSAGE_BYTES)]
    pub max_message_bytes: usize,
    /// Task signing.
    #[command(flatten)]
    pub signing: crate::signing::SigningArgs,
}

/// Default largest task message: room for several upstream outputs of up to 1 MiB each.
pub const DEFAULT_MAX_MESSAGE_BYTES: usize = 8 << 20;

impl BrokerArgs {
    /// Settings for `namespace` on the default loopback services.
    pub fn local(namespace: &str) -> Self {
        Self {
            amqp_url: DEFAULT_AMQP_URL.into(),
            redis_url: DEFAULT_REDIS_URL.into(),
            namespace: namespace.into(),
            delivery_limit: 5,
            connect_timeout_secs: 30,
            max_message_bytes: DEFAULT_MAX_MESSAGE_BYTES,
            signing: crate::signing::SigningArgs::default(),
        }
    }

    /// The validated namespace.
    pub fn namespace(&self) -> Result<Namespace> {
        Namespace::new(&self.namespace)
    }

    /// Checks values that clap cannot.
    pub fn validate(&self) -> Result<()> {
        self.namespace()?;
        crate::broker_list::parse(&self.amqp_url)?;
        if !(1..=1000).contains(&self.delivery_limit) {
            return Err(Error::Config(format!(
                "--delivery-limit {} must be between 1 and 1000",
                self.delivery_limit
            )));
        }
        if !(1024..=(128 << 20)).contains(&self.max_message_bytes) {
            return Err(Error::Config(format!(
                "--max-message-bytes {} must be between 1 KiB and 128 MiB (RabbitMQ's own limit)",
                self.max_message_bytes
            )));
        }
        Ok(())
    }

    /// The signing keys, or `None` if signing was disabled explicitly.
    pub fn keyring(&self) -> Result<Option<crate::signing::Keyring>> {
        self.signing.keyring().map_err(Error::Config)
    }
}

/// A URL with its password replaced, for logs and errors.
pub fn redact_url(url: &str) -> String {
    let Some((scheme, rest)) = url.split_once("://") else {
        return url.to_string();
    };
    match rest.split_once('@') {
        Some((userinfo, host)) => {
            let user = userinfo.split(':').next().unwrap_or("");
            format!("{scheme}://{user}:***@{host}")
        }
        None => url.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn redacts_passwords_only() {
        assert_eq!(
            redact_url("amqp://u:secret@h:5672/%2f"),
            "amqp://u:***@h:5672/%2f"
        );
        assert_eq!(
            redact_url("redis://127.0.0.1:6379/"),
            "redis://127.0.0.1:6379/"
        );
    }

    #[test]
    fn rejects_bad_namespace_and_limit() {
        let mut args = BrokerArgs::local("ok-ns");
        assert!(args.validate().is_ok());
        args.delivery_limit = 0;
        assert!(
            args.validate()
                .unwrap_err()
                .to_string()
                .contains("--delivery-limit")
        );
        assert!(BrokerArgs::local("Bad NS").validate().is_err());
    }
}
