//! A minimal AMQP 0-9-1 client for messages the regular client cannot parse.
//!
//! lapin (through amq-protocol) requires every short string on the wire — routing key, message
//! id, content type, header names — to be UTF-8, and drops the whole connection on a message
//! that breaks the rule. RabbitMQ does not check: anyone with publish rights can send one.
//! This client reads such a message (`basic.get`, names kept as bytes), republishes or
//! dead-letters it, and acks it, so neither the worker nor the DLQ inspector is stopped by it.
//! It speaks only what that needs: plain TCP, PLAIN login, one channel, confirms, no consumers.
//! Every operation has a deadline.

mod message;
mod repair;
pub mod wire;

pub use message::{RawMessage, RawProperties};
pub use repair::unparseable_dead_letter;
pub use wire::{RawTable, RawValue, Shown};

use std::time::Duration;
use tokio::{
    io::{AsyncReadExt, AsyncWriteExt, BufReader},
    net::TcpStream,
};
use wire::{Reader, WireError, Writer};

/// What went wrong with the raw client.
#[derive(Debug, thiserror::Error)]
pub enum RawError {
    /// The URL is not one this client can use.
    #[error("raw AMQP reader: {0}")]
    Url(String),
    /// The socket failed.
    #[error("raw AMQP reader: connection failed: {0}")]
    Io(#[from] std::io::Error),
    /// The broker did not answer in time.
    #[error("raw AMQP reader: no answer within {after:?} to {what}")]
    Timeout {
        /// What was waited for.
        what: &'static str,
        /// How long.
        after: Duration,
    },
    /// The broker sent something this client cannot decode.
    #[error("raw AMQP reader: {0}")]
    Wire(#[from] WireError),
    /// The broker closed the channel or connection.
    #[error("raw AMQP reader: RabbitMQ closed the {what}: {code} {text}")]
    Closed {
        /// "channel" or "connection".
        what: &'static str,
        /// Reply code.
        code: u16,
        /// Reply text.
        text: String,
    },
    /// A publish was not stored (nack or unroutable).
    #[error("raw AMQP reader: RabbitMQ did not store the message: {0}")]
    Refused(String),
}

const FRAME_METHOD: u8 = 1;
const FRAME_HEADER: u8 = 2;
const FRAME_BODY: u8 = 3;
const FRAME_HEARTBEAT: u8 = 8;
const FRAME_END: u8 = 0xCE;
const CHANNEL: u16 = 1;

/// One connection with one channel in confirm mode.
pub struct RawClient {
    stream: BufReader<TcpStream>,
    frame_max: u32,
    op_timeout: Duration,
    published: u64,
}

impl RawClient {
    /// Connects to an `amqp://` URL (of a list of several, the first that answers, in the
    /// order [`crate::amqp::connect`] uses) and opens a channel; each later operation must
    /// finish within `op_timeout`.
    pub async fn connect(url: &str, op_timeout: Duration) -> Result<Self, RawError> {
        let urls = crate::broker_list::parse(url).map_err(|e| RawError::Url(e.to_string()))?;
        let mut last = None;
        for i in crate::broker_list::order(urls.len(), crate::broker_list::start()) {
            match Self::connect_one(&urls[i], op_timeout).await {
                Ok(client) => return Ok(client),
                Err(e @ RawError::Url(_)) => return Err(e),
                Err(e) => last = Some(e),
            }
        }
        Err(last.unwrap_or_else(|| RawError::Url("no address".into())))
    }

    async fn connect_one(url: &str, op_timeout: Duration) -> Result<Self, RawError> {
        let uri: lapin::uri::AMQPUri = url.parse().map_err(RawError::Url)?;
        if !matches!(uri.scheme, lapin::uri::AMQPScheme::AMQP) {
            return Err(RawError::Url(
                "only amqp:// URLs are supported for unparseable messages".into(),
            ));
        }
        let addr = (uri.authority.host.clone(), uri.authority.port);
        let stream = deadline(op_timeout, "TCP connect", async {
            Ok(TcpStream::connect(addr).await?)
        })
        .await?;
        let mut client = Self {
            stream: BufReader::new(stream),
            frame_max: 131_072,
            op_timeout,
            published: 0,
        };
        deadline(op_timeout, "the AMQP handshake", client.handshake(&uri)).await?;
        Ok(client)
    }

    async fn handshake(&mut self, uri: &lapin::uri::AMQPUri) -> Result<(), RawError> {
        self.stream
            .get_mut()
            .write_all(b"AMQP\x00\x00\x09\x01")
            .await?;
        self.expect_method(0, 10, 10).await?; // connection.start
        let user = &uri.authority.userinfo;
        let mut response = vec![0u8];
        response.extend_from_slice(user.username.as_bytes());
        response.push(0);
        response.extend_from_slice(user.password.as_bytes());
        let mut w = Writer::method(10, 11);
        w.table(&vec![(
            b"product".to_vec(),
            RawValue::Bytes(b"secflow raw reader".to_vec()),
        )])
        .short_str(b"PLAIN")
        .long_str(&response)
        .short_str(b"en_US");
        self.send_method(0, w).await?;
        let tune = self.expect_method(0, 10, 30).await?;
        let mut r = Reader::new(&tune);
        let channel_max = r.u16()?;
        let frame_max = r.u32()?;
        if frame_max != 0 {
            self.frame_max = self.frame_max.min(frame_max);
        }
        let mut w = Writer::method(10, 31);
        w.u16(channel_max.clamp(1, 1)).u32(self.frame_max).u16(0);
        self.send_method(0, w).await?;
        let mut w = Writer::method(10, 40);
        w.short_str(uri.vhost.as_bytes()).short_str(b"").u8(0);
        self.send_method(0, w).await?;
        self.expect_method(0, 10, 41).await?;
        let mut w = Writer::method(20, 10);
        w.short_str(b"");
        self.send_method(CHANNEL, w).await?;
        self.expect_method(CHANNEL, 20, 11).await?;
        let mut w = Writer::method(85, 10);
        w.u8(0);
        self.send_method(CHANNEL, w).await?;
        self.expect_method(CHANNEL, 85, 11).await?;
        Ok(())
    }

    /// Takes the next message of `queue` unacked (`basic.get`), or `None` when it is empty.
    pub async fn get(&mut self, queue: &str) -> Result<Option<RawMessage>, RawError> {
        let op = self.op_timeout;
        deadline(op, "basic.get", async {
            let mut w = Writer::method(60, 70);
            w.u16(0).short_str(queue.as_bytes()).u8(0);
            self.send_method(CHANNEL, w).await?;
            loop {
                let (class, method, args) = self.next_method().await?;
                match (class, method) {
                    (60, 72) => return Ok(None),
                    (60, 71) => {
                        let mut r = Reader::new(&args);
                        let delivery_tag = r.u64()?;
                        let redelivered = r.u8()? & 1 != 0;
                        let exchange = r.short_str()?;
                        let routing_key = r.short_str()?;
                        let (properties, body) = self.read_content().await?;
                        return Ok(Some(RawMessage {
                            delivery_tag,
                            redelivered,
                            exchange,
                            routing_key,
                            properties,
                            body,
                        }));
                    }
                    _ => {}
                }
            }
        })
        .await
    }

    /// Takes up to `limit` messages from the head of `queue`, unacked, in queue order (fewer
    /// when it runs empty).
    pub async fn take(&mut self, queue: &str, limit: usize) -> Result<Vec<RawMessage>, RawError> {
        let mut taken = Vec::new();
        while taken.len() < limit {
            match self.get(queue).await? {
                Some(msg) => taken.push(msg),
                None => break,
            }
        }
        Ok(taken)
    }

    /// Acknowledges `tag` (and every earlier one with `multiple`).
    pub async fn ack(&mut self, tag: u64, multiple: bool) -> Result<(), RawError> {
        let mut w = Writer::method(60, 80);
        w.u64(tag).u8(u8::from(multiple));
        let op = self.op_timeout;
        deadline(op, "basic.ack", self.send_method(CHANNEL, w)).await
    }

    /// Gives back every unacked message of this client (`basic.nack`, multiple, requeue).
    pub async fn nack_all(&mut self) -> Result<(), RawError> {
        let mut w = Writer::method(60, 120);
        w.u64(0).u8(0b11);
        let op = self.op_timeout;
        deadline(op, "basic.nack", self.send_method(CHANNEL, w)).await
    }

    /// Publishes (mandatory) and waits for the broker's confirm.
    pub async fn publish(
        &mut self,
        exchange: &[u8],
        routing_key: &[u8],
        properties: &RawProperties,
        body: &[u8],
    ) -> Result<(), RawError> {
        let op = self.op_timeout;
        deadline(op, "a publish confirm", async {
            let mut w = Writer::method(60, 40);
            w.u16(0).short_str(exchange).short_str(routing_key).u8(1);
            self.send_method(CHANNEL, w).await?;
            let mut h = Writer::default();
            h.u16(60).u16(0).u64(body.len() as u64);
            properties.encode(&mut h);
            self.send_frame(FRAME_HEADER, CHANNEL, &h.0).await?;
            let chunk = (self.frame_max as usize).saturating_sub(8).max(1);
            for part in body.chunks(chunk) {
                self.send_frame(FRAME_BODY, CHANNEL, part).await?;
            }
            self.stream.get_mut().flush().await?;
            self.published += 1;
            let mut returned = None;
            loop {
                let (class, method, args) = self.next_method().await?;
                let mut r = Reader::new(&args);
                match (class, method) {
                    (60, 50) => {
                        let code = r.u16()?;
                        let text = String::from_utf8_lossy(&r.short_str()?).into_owned();
                        self.read_content().await?;
                        returned = Some(format!("returned {code} {text}"));
                    }
                    (60, 80) | (60, 120) => {
                        let tag = r.u64()?;
                        let multiple = r.u8()? & 1 != 0;
                        if tag == self.published || (multiple && tag >= self.published) {
                            return match (method, returned) {
                                (120, _) => Err(RawError::Refused("nack".into())),
                                (_, Some(why)) => Err(RawError::Refused(why)),
                                _ => Ok(()),
                            };
                        }
                    }
                    _ => {}
                }
            }
        })
        .await
    }

    /// Closes the connection politely (bounded; errors ignored: the broker cleans up anyway).
    pub async fn close(mut self) {
        let mut w = Writer::method(10, 50);
        w.u16(200).short_str(b"done").u16(0).u16(0);
        let op = self.op_timeout;
        let _ = deadline(op, "connection.close", async {
            self.send_method(0, w).await?;
            loop {
                if let (10, 51, _) = self.next_method().await? {
                    return Ok(());
                }
            }
        })
        .await;
    }

    async fn read_content(&mut self) -> Result<(RawProperties, Vec<u8>), RawError> {
        let (kind, _, payload) = self.read_frame().await?;
        if kind != FRAME_HEADER {
            return Err(
                WireError(format!("expected a content header, got frame type {kind}")).into(),
            );
        }
        let mut r = Reader::new(&payload);
        let _class = r.u16()?;
        let _weight = r.u16()?;
        let size = r.u64()?;
        let properties = RawProperties::decode(&mut r)?;
        let mut body = Vec::with_capacity(usize::try_from(size).unwrap_or(0).min(1 << 24));
        while (body.len() as u64) < size {
            let (kind, _, payload) = self.read_frame().await?;
            if kind != FRAME_BODY {
                return Err(
                    WireError(format!("expected a body frame, got frame type {kind}")).into(),
                );
            }
            body.extend_from_slice(&payload);
        }
        Ok((properties, body))
    }

    async fn expect_method(
        &mut self,
        channel: u16,
        class: u16,
        method: u16,
    ) -> Result<Vec<u8>, RawError> {
        let (c, m, args) = self.next_method().await?;
        if (c, m) != (class, method) {
            return Err(WireError(format!(
                "expected method {class}.{method} on channel {channel}, got {c}.{m}"
            ))
            .into());
        }
        Ok(args)
    }

    /// The next method frame (heartbeats skipped; a close from the broker is an error).
    async fn next_method(&mut self) -> Result<(u16, u16, Vec<u8>), RawError> {
        loop {
            let (kind, channel, payload) = self.read_frame().await?;
            match kind {
                FRAME_HEARTBEAT => continue,
                FRAME_METHOD => {}
                other => return Err(WireError(format!("unexpected frame type {other}")).into()),
            }
            let mut r = Reader::new(&payload);
            let class = r.u16()?;
            let method = r.u16()?;
            let args = r.rest().to_vec();
            if (class, method) == (10, 50) || (class, method) == (20, 40) {
                let mut r = Reader::new(&args);
                let code = r.u16()?;
                let text = String::from_utf8_lossy(&r.short_str()?).into_owned();
                let what = if class == 10 { "connection" } else { "channel" };
                let ok = Writer::method(class, method + 1);
                let _ = self.send_method(channel, ok).await;
                return Err(RawError::Closed { what, code, text });
            }
            return Ok((class, method, args));
        }
    }

    async fn read_frame(&mut self) -> Result<(u8, u16, Vec<u8>), RawError> {
        let mut head = [0u8; 7];
        self.stream.read_exact(&mut head).await?;
        let kind = head[0];
        let channel = u16::from_be_bytes([head[1], head[2]]);
        let size = u32::from_be_bytes([head[3], head[4], head[5], head[6]]);
        if size > self.frame_max.max(131_072) {
            return Err(WireError(format!(
                "frame of {size} bytes is over the negotiated maximum"
            ))
            .into());
        }
        let mut payload = vec![0u8; size as usize];
        self.stream.read_exact(&mut payload).await?;
        if self.stream.read_u8().await? != FRAME_END {
            return Err(WireError("frame does not end with 0xCE".into()).into());
        }
        Ok((kind, channel, payload))
    }

    async fn send_method(&mut self, channel: u16, w: Writer) -> Result<(), RawError> {
        self.send_frame(FRAME_METHOD, channel, &w.0).await?;
        self.stream.get_mut().flush().await?;
        Ok(())
    }

    async fn send_frame(&mut self, kind: u8, channel: u16, payload: &[u8]) -> Result<(), RawError> {
        let mut frame = Vec::with_capacity(payload.len() + 8);
        frame.push(kind);
        frame.extend_from_slice(&channel.to_be_bytes());
        frame.extend_from_slice(
            &u32::try_from(payload.len())
                .unwrap_or(u32::MAX)
                .to_be_bytes(),
        );
        frame.extend_from_slice(payload);
        frame.push(FRAME_END);
        self.stream.get_mut().write_all(&frame).await?;
        Ok(())
    }
}

async fn deadline<T>(
    after: Duration,
    what: &'static str,
    fut: impl std::future::Future<Output = Result<T, RawError>>,
) -> Result<T, RawError> {
    tokio::time::timeout(after, fut)
        .await
        .map_err(|_| RawError::Timeout { what, after })?
}
