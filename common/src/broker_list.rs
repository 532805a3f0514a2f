//! Several RabbitMQ addresses in one `AMQP_URL`: the nodes of a cluster, comma-separated.
//!
//! A process tries them in the order listed, beginning with the one it last reached, and moves
//! on to the next when an address fails: after losing its node it reconnects to the next one
//! in the list (its own address first again only when the others fail too). Processes spread
//! over the nodes by listing them in different orders; in Kubernetes the cluster's Service
//! spreads connections over the ready nodes by itself, and one address is enough.
//!
//! The position is one per process, shared by every connection the process opens, so the
//! worker's consumer, its announcer and its sweeps reach the same node.

use crate::{Error, Result, config::redact_url};
use std::sync::atomic::{AtomicUsize, Ordering};

/// The addresses of `list` (one AMQP URL, or several separated by commas), each checked to be
/// an AMQP URL. A comma inside a password is written `%2C`.
pub fn parse(list: &str) -> Result<Vec<String>> {
    let urls: Vec<String> = list.split(',').map(|u| u.trim().to_string()).collect();
    let several = urls.len() > 1;
    for (i, url) in urls.iter().enumerate() {
        if url.is_empty() {
            return Err(Error::Config(format!(
                "AMQP_URL `{}` has an empty address (a stray comma?): list the nodes as \
                 amqp://USER:PASSWORD@HOST1:PORT/VHOST,amqp://USER:PASSWORD@HOST2:PORT/VHOST",
                redact_list(list)
            )));
        }
        if let Err(e) = url.parse::<lapin::uri::AMQPUri>() {
            let which = if several {
                format!(" (address {} of {})", i + 1, urls.len())
            } else {
                String::new()
            };
            return Err(Error::Config(format!(
                "AMQP_URL `{}`{which} is not an AMQP URL: {e} (expected \
                 amqp://USER:PASSWORD@HOST:PORT/VHOST or amqps://…, several separated by commas)",
                redact_url(url)
            )));
        }
    }
    Ok(urls)
}

/// `list` with every password replaced, for logs and errors.
pub fn redact_list(list: &str) -> String {
    list.split(',')
        .map(|u| redact_url(u.trim()))
        .collect::<Vec<_>>()
        .join(",")
}

/// The indexes of `n` addresses in the order to try them: from `start` round the list.
pub fn order(n: usize, start: usize) -> impl Iterator<Item = usize> {
    (0..n).map(move |k| (start + k) % n.max(1))
}

/// Where the next round starts after address `failed` of `n` failed, when it was to start at
/// `current`: past the failed address if the round was to start there, else unchanged (another
/// connection of the process has moved on already).
pub fn after_failure(current: usize, failed: usize, n: usize) -> usize {
    if current % n.max(1) == failed {
        (failed + 1) % n.max(1)
    } else {
        current
    }
}

/// The process's position in its list: the address it reached last, or the one to try next.
static POSITION: AtomicUsize = AtomicUsize::new(0);

/// Where this process's next connection attempt starts.
pub fn start() -> usize {
    POSITION.load(Ordering::Relaxed)
}

/// Records that address `i` answered: the process's next connections start there.
pub fn reached(i: usize) {
    POSITION.store(i, Ordering::Relaxed);
}

/// Records that address `i` of `n` failed: the next round starts past it.
pub fn failed(i: usize, n: usize) {
    let _ = POSITION.fetch_update(Ordering::Relaxed, Ordering::Relaxed, |current| {
        Some(after_failure(current, i, n))
    });
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_one_or_several_addresses() {
        assert_eq!(
            parse("amqp://u:p@a:5672/%2f").unwrap(),
            ["amqp://u:p@a:5672/%2f"]
        );
        assert_eq!(
            parse("amqp://u:p@a:5672/%2f, amqp://u:p@b:5673/%2f").unwrap(),
            ["amqp://u:p@a:5672/%2f", "amqp://u:p@b:5673/%2f"]
        );
    }

    #[test]
    fn a_bad_address_is_named_without_its_password() {
        let err = parse("amqp://u:secret@a:5672/%2f,http://u:secret@b/")
            .unwrap_err()
            .to_string();
        assert!(err.contains("address 2 of 2"), "{err}");
        assert!(err.contains("is not an AMQP URL"), "{err}");
        assert!(!err.contains("secret"), "{err}");
        let err = parse("amqp://u:secret@a:5672/%2f,")
            .unwrap_err()
            .to_string();
        assert!(err.contains("empty address"), "{err}");
        assert!(!err.contains("secret"), "{err}");
        assert!(parse("").is_err());
    }

    #[test]
    fn tries_every_address_once_from_the_start() {
        assert_eq!(order(3, 0).collect::<Vec<_>>(), [0, 1, 2]);
        assert_eq!(order(3, 2).collect::<Vec<_>>(), [2, 0, 1]);
        assert_eq!(order(3, 7).collect::<Vec<_>>(), [1, 2, 0]);
        assert_eq!(order(1, 5).collect::<Vec<_>>(), [0]);
    }

    #[test]
    fn a_failure_moves_the_start_past_the_failed_address_only() {
        assert_eq!(after_failure(0, 0, 3), 1);
        assert_eq!(after_failure(2, 2, 3), 0);
        // Another connection moved on already: keep its choice.
        assert_eq!(after_failure(1, 0, 3), 1);
        assert_eq!(after_failure(0, 0, 1), 0);
    }
}
