//! Connecting to RabbitMQ and publishing with confirms.
//!
//! Every publish of the fleet goes through [`Publisher::publish`]: it waits for the broker's
//! confirm and turns a nack or a returned (unroutable, `mandatory`) message into an error, so
//! a caller that gets `Ok` knows the broker has the message.

use crate::{
    Error, Result, broker_list, config::redact_url, deadline, retry::ReconnectBackoff,
    signing::Keyring,
};
use lapin::{
    BasicProperties, Channel, Confirmation, Connection, ConnectionProperties,
    options::{BasicPublishOptions, ConfirmSelectOptions},
    types::{FieldTable, LongString},
};
use std::time::{Duration, Instant};

/// Connects to `url` (one AMQP URL, or the nodes of a cluster separated by commas, see
/// [`crate::broker_list`]), retrying with the shared [`ReconnectBackoff`] until `timeout` has
/// passed. Each round tries every address once, in the order listed, beginning with the one
/// the process last reached; the backoff waits between rounds. Each attempt has its own
/// deadline (at most [`deadline::BROKER_OP`]), so a broker that accepts the TCP connection but
/// never answers (paused, overloaded) cannot hold it.
///
/// An address that does not parse and a refused login are configuration errors: they fail at
/// once.
pub async fn connect(url: &str, client_name: &str, timeout: Duration) -> Result<Connection> {
    let urls = broker_list::parse(url)?;
    let deadline = Instant::now() + timeout;
    let mut backoff = ReconnectBackoff::default();
    loop {
        let mut last = None;
        for i in broker_list::order(urls.len(), broker_list::start()) {
            match connect_once(&urls[i], client_name, deadline).await {
                Ok(conn) => {
                    broker_list::reached(i);
                    if urls.len() > 1 {
                        tracing::info!(url = %redact_url(&urls[i]), "connected to RabbitMQ");
                    }
                    return Ok(conn);
                }
                Err(e @ Error::Login { .. }) => return Err(e),
                Err(e) => {
                    broker_list::failed(i, urls.len());
                    if urls.len() > 1 {
                        tracing::warn!(url = %redact_url(&urls[i]), error = %e, "broker address not reachable: trying the next");
                    }
                    last = Some(e);
                }
            }
            if Instant::now() >= deadline {
                break;
            }
        }
        let Some(attempt) = last else {
            return Err(Error::Config("AMQP_URL lists no address".into()));
        };
        let wait = backoff.next_delay(&mut rand::rng());
        if Instant::now() + wait >= deadline {
            return Err(attempt);
        }
        tracing::warn!(url = %broker_list::redact_list(url), error = %attempt, retry_in_ms = wait.as_millis() as u64, "broker not reachable yet");
        wait_for_broker(&urls, wait).await;
    }
}

/// How often a client waiting to reconnect looks whether a broker's closed port opened again
/// (jittered down to half of it, so a fleet does not probe in step).
const PORT_PROBE_EVERY: Duration = Duration::from_millis(200);
/// Longest a port probe (or the name lookup before the probes) may take.
const PORT_PROBE_TIMEOUT: Duration = Duration::from_millis(250);

/// Waits `wait` before the next round of connection attempts, or less: when every address's
/// port refuses connections at the start (a broker stopped or restarting, the usual outage),
/// it probes them with plain TCP connects every [`PORT_PROBE_EVERY`] and returns as soon as
/// one accepts, so a client is back about 0.2 s after its broker instead of up to a whole
/// backoff step (2 s) later. A port that accepts at the start (a broker that is up but refuses
/// or drops AMQP, booting or in an alarm) is not probed again: the backoff then holds as it is,
/// and the broker sees at most one bare TCP connection per wait.
async fn wait_for_broker(urls: &[String], wait: Duration) {
    let until = tokio::time::Instant::now() + wait;
    let addrs = tokio::time::timeout(PORT_PROBE_TIMEOUT, broker_addrs(urls))
        .await
        .unwrap_or_default();
    if addrs.is_empty() || any_port_open(&addrs).await {
        tokio::time::sleep_until(until).await;
        return;
    }
    loop {
        let step = PORT_PROBE_EVERY.mul_f64(rand::random_range(0.5..=1.0));
        let next = tokio::time::Instant::now() + step;
        if next >= until {
            tokio::time::sleep_until(until).await;
            return;
        }
        tokio::time::sleep_until(next).await;
        if any_port_open(&addrs).await {
            return;
        }
    }
}

/// The socket addresses of the brokers listed (host names looked up once).
async fn broker_addrs(urls: &[String]) -> Vec<std::net::SocketAddr> {
    let mut addrs = Vec::new();
    for url in urls {
        let Ok(uri) = url.parse::<lapin::uri::AMQPUri>() else {
            continue;
        };
        let host = uri.authority.host.trim_matches(|c| c == '[' || c == ']');
        if let Ok(found) = tokio::net::lookup_host((host, uri.authority.port)).await {
            addrs.extend(found);
        }
    }
    addrs
}

/// Whether any of `addrs` accepts a TCP connection within [`PORT_PROBE_TIMEOUT`]; the
/// connection is closed at once.
async fn any_port_open(addrs: &[std::net::SocketAddr]) -> bool {
    for addr in addrs {
        if let Ok(Ok(_)) =
            tokio::time::timeout(PORT_PROBE_TIMEOUT, tokio::net::TcpStream::connect(addr)).await
        {
            return true;
        }
    }
    false
}

/// One connection attempt to one address, within [`deadline::BROKER_OP`] (and at least
/// [`ATTEMPT_MIN`] even when `deadline` is nearly spent).
async fn connect_once(url: &str, client_name: &str, deadline: Instant) -> Result<Connection> {
    let options =
        ConnectionProperties::default().with_connection_name(LongString::from(client_name));
    let remaining = deadline.saturating_duration_since(Instant::now());
    let limit = remaining.clamp(ATTEMPT_MIN, deadline::BROKER_OP);
    // `connect` checked every address with `broker_list::parse`; this cannot fail there.
    let mut uri = url
        .parse::<lapin::uri::AMQPUri>()
        .map_err(|e| Error::Config(format!("AMQP_URL `{}`: {e}", redact_url(url))))?;
    if uri.query.frame_max.is_none() {
        uri.query.frame_max = Some(FRAME_MAX);
    }
    let connecting = Connection::connect_uri(uri, options);
    match deadline::within("the broker's answer to a new connection", limit, connecting).await {
        Ok(Ok(conn)) => Ok(conn),
        Ok(Err(source)) if crate::error::refused_for_good(&source) => Err(Error::Login {
            url: redact_url(url),
            reason: source.to_string(),
        }),
        Ok(Err(source)) => Err(Error::Connect {
            url: redact_url(url),
            source,
        }),
        Err(timeout) => Err(timeout),
    }
}

/// The largest frame this client accepts, unless the address sets `frame_max` itself. The client
/// keeps send and receive buffers of 32 frames each, filled with zeros when the connection
/// opens: at the broker's default (128 KiB) that is 8 MiB resident per connection, at 32 KiB
/// 2 MiB. Tasks and events are a few KiB; a larger body is sent in several frames.
pub const FRAME_MAX: u32 = 32 * 1024;

/// Shortest deadline of one connection attempt, even when the overall timeout is nearly spent.
const ATTEMPT_MIN: Duration = Duration::from_millis(500);

/// Closes `conn` politely, waiting at most [`deadline::CLOSE`]; a close that fails or hangs
/// only drops the connection, which the broker then cleans up (so it is logged, not returned).
pub async fn close(conn: &Connection, reason: &str) {
    match deadline::within(
        "the broker to close a connection",
        deadline::CLOSE,
        conn.close(200, reason.into()),
    )
    .await
    {
        Ok(Ok(())) => {}
        Ok(Err(e)) => tracing::debug!(error = %e, "closing the RabbitMQ connection failed"),
        Err(e) => tracing::debug!(error = %e, "closing the RabbitMQ connection timed out"),
    }
}

/// Longest wait for a publisher confirm.
pub const CONFIRM_TIMEOUT: Duration = Duration::from_secs(30);

/// A channel in confirm mode, shared by every task of a process.
/// Tasks published through it are signed with its keyring (when it has one) and refused above
/// its size limit.
#[derive(Clone)]
pub struct Publisher {
    channel: Channel,
    signer: Option<Keyring>,
    max_message_bytes: usize,
}

impl Publisher {
    /// Opens a channel on `conn` and switches it to confirm mode; tasks go out unsigned.
    pub async fn new(conn: &Connection) -> Result<Self> {
        let channel =
            deadline::within("a new channel", deadline::BROKER_OP, conn.create_channel()).await??;
        deadline::within(
            "confirm mode on a new channel",
            deadline::BROKER_OP,
            channel.confirm_select(ConfirmSelectOptions::default()),
        )
        .await??;
        Ok(Self {
            channel,
            signer: None,
            max_message_bytes: crate::config::DEFAULT_MAX_MESSAGE_BYTES,
        })
    }

    /// A publisher for tasks: signed with `signer` (`None` only when signing was disabled
    /// explicitly, see [`crate::config::BrokerArgs::keyring`]), refused above
    /// `max_message_bytes`.
    pub async fn for_tasks(
        conn: &Connection,
        signer: Option<Keyring>,
        max_message_bytes: usize,
    ) -> Result<Self> {
        let mut publisher = Self::new(conn).await?;
        publisher.signer = signer;
        publisher.max_message_bytes = max_message_bytes;
        Ok(publisher)
    }

    /// Publishes and waits for the broker's confirm. With `mandatory`, a message no queue
    /// takes is an [`Error::Unroutable`] rather than silently dropped.
    pub async fn publish(
        &self,
        exchange: &str,
        routing_key: &str,
        body: &[u8],
        properties: BasicProperties,
        mandatory: bool,
    ) -> Result<()> {
        let options = BasicPublishOptions {
            mandatory,
            ..BasicPublishOptions::default()
        };
        let publish = async {
            self.channel
                .basic_publish(
                    exchange.into(),
                    routing_key.into(),
                    options,
                    body,
                    properties,
                )
                .await?
                .await
        };
        // A confirm that never comes (a connection dying half-way) must not hold the caller
        // for ever: it is reported like a lost connection and the message treated as unsent.
        let confirm = deadline::within_lazy(
            || format!("the confirm of a publish to `{exchange}`/`{routing_key}`"),
            CONFIRM_TIMEOUT,
            publish,
        )
        .await??;
        match confirm {
            Confirmation::Ack(None) | Confirmation::NotRequested => Ok(()),
            Confirmation::Ack(Some(_)) => Err(Error::Unroutable {
                exchange: exchange.into(),
                routing_key: routing_key.into(),
            }),
            Confirmation::Nack(_) => Err(Error::Nacked {
                exchange: exchange.into(),
                routing_key: routing_key.into(),
            }),
        }
    }

    /// The same publisher refusing (or, for events, splitting) bodies over `max_message_bytes`:
    /// the broker's `max_message_size` closes the channel of a larger publish.
    pub fn limited(mut self, max_message_bytes: usize) -> Self {
        self.max_message_bytes = max_message_bytes;
        self
    }

    /// Largest body this publisher sends.
    pub fn max_message_bytes(&self) -> usize {
        self.max_message_bytes
    }

    /// The keys tasks and bookkeeping headers are signed with (`None`: signing disabled).
    pub fn signer(&self) -> Option<&Keyring> {
        self.signer.as_ref()
    }

    /// The underlying channel.
    pub fn channel(&self) -> &Channel {
        &self.channel
    }
}

/// Properties of a persistent JSON message with `message_id`.
pub fn json_properties(message_id: &str, headers: FieldTable) -> BasicProperties {
    BasicProperties::default()
        .with_message_id(message_id.into())
        .with_content_type(crate::envelope::CONTENT_TYPE.into())
        .with_delivery_mode(2)
        .with_timestamp(crate::now_ms() / 1000)
        .with_headers(headers)
}

/// Properties of a copy of a message: identity and content fields kept, always persistent,
/// never an expiration (a per-message TTL would hold up a delay queue behind it).
pub fn copy_properties(p: &BasicProperties, headers: FieldTable) -> BasicProperties {
    let mut out = BasicProperties::default()
        .with_delivery_mode(2)
        .with_headers(headers);
    if let Some(v) = p.message_id() {
        out = out.with_message_id(v.clone());
    }
    if let Some(v) = p.content_type() {
        out = out.with_content_type(v.clone());
    }
    if let Some(v) = p.correlation_id() {
        out = out.with_correlation_id(v.clone());
    }
    if let Some(v) = p.timestamp() {
        out = out.with_timestamp(*v);
    }
    if let Some(v) = p.kind() {
        out = out.with_type(v.clone());
    }
    out
}

/// Publishes one task to the tasks exchange (routing key = its type), confirmed and mandatory,
/// with `trace` as its trace context, signed when the publisher has keys; a task over the size
/// limit is refused unpublished.
pub async fn publish_task(
    publisher: &Publisher,
    topology: &crate::Topology,
    task: &crate::TaskEnvelope,
    trace: Option<&crate::trace::TraceContext>,
) -> Result<()> {
    let (body, props) = task_message(publisher, task, trace)?;
    publisher
        .publish(
            &topology.tasks_exchange(),
            &task.node_type,
            &body,
            props,
            true,
        )
        .await
}

/// The message [`publish_task`] sends for `task`: its body and properties (message id, type,
/// `trace` in its headers, the signature when the publisher has keys), or why it may not be
/// sent (over the size limit).
pub fn task_message(
    publisher: &Publisher,
    task: &crate::TaskEnvelope,
    trace: Option<&crate::trace::TraceContext>,
) -> Result<(Vec<u8>, BasicProperties)> {
    let body = task.to_body();
    if body.len() > publisher.max_message_bytes {
        return Err(Error::TooLarge {
            what: format!("task {} ({})", task.task_id, task.node_id),
            bytes: body.len(),
            limit: publisher.max_message_bytes,
        });
    }
    let message_id = task.task_id.to_string();
    let mut headers = FieldTable::default();
    if let Some(trace) = trace {
        trace.write(&mut headers);
    }
    if let Some(signer) = &publisher.signer {
        signer.sign(&mut headers, &message_id, &body);
    }
    let props = json_properties(&message_id, headers).with_type(task.node_type.as_str().into());
    Ok((body, props))
}

/// Looks `queue` up with a passive declare on a channel of its own, closed afterwards: the broker
/// answers a missing queue by closing the channel it was asked on, so no channel in use is ever
/// risked. The caller bounds it with a deadline.
pub async fn passive_declare(
    conn: &Connection,
    queue: &str,
) -> std::result::Result<lapin::Queue, lapin::Error> {
    let ch = conn.create_channel().await?;
    let passive = lapin::options::QueueDeclareOptions {
        passive: true,
        ..Default::default()
    };
    let found = ch
        .queue_declare(queue.into(), passive, FieldTable::default())
        .await;
    let _ = ch.close(200, "looked up".into()).await;
    found
}

#[cfg(test)]
mod tests {
    use super::*;

    fn free_port() -> u16 {
        std::net::TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .map(|a| a.port())
            .unwrap()
    }

    #[tokio::test]
    async fn a_wait_ends_when_a_closed_broker_port_opens() {
        let port = free_port();
        let urls = vec![format!("amqp://guest:guest@127.0.0.1:{port}/%2f")];
        let opened = tokio::spawn(async move {
            tokio::time::sleep(Duration::from_millis(300)).await;
            tokio::net::TcpListener::bind(("127.0.0.1", port))
                .await
                .unwrap()
        });
        let started = Instant::now();
        wait_for_broker(&urls, Duration::from_secs(30)).await;
        let took = started.elapsed();
        let _listener = opened.await.unwrap();
        assert!(
            took >= Duration::from_millis(300),
            "returned before the port opened: {took:?}"
        );
        assert!(
            took < Duration::from_secs(10),
            "the wait was not cut short when the port opened: {took:?}"
        );
    }

    #[tokio::test]
    async fn a_port_open_from_the_start_does_not_shorten_the_backoff() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let urls = vec![format!("amqp://guest:guest@127.0.0.1:{port}/%2f")];
        let started = Instant::now();
        wait_for_broker(&urls, Duration::from_millis(600)).await;
        assert!(started.elapsed() >= Duration::from_millis(600));
        // It looked once, at the start, and not again.
        let (_first, _) = listener.accept().await.unwrap();
        let again = tokio::time::timeout(Duration::from_millis(300), listener.accept()).await;
        assert!(again.is_err(), "probed an open port more than once");
    }
}
