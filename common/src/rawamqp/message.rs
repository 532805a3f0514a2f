//! A message as the broker sent it, every name kept as bytes, and what in it the regular
//! client cannot read.

use super::wire::{RawTable, RawValue, Reader, Shown, WireError, Writer};

/// Basic properties, strings as bytes (AMQP short strings need not be UTF-8 on the wire).
#[derive(Debug, Clone, Default, PartialEq)]
pub struct RawProperties {
    /// `content-type`
    pub content_type: Option<Vec<u8>>,
    /// `content-encoding`
    pub content_encoding: Option<Vec<u8>>,
    /// `headers`
    pub headers: Option<RawTable>,
    /// `delivery-mode` (2 = persistent)
    pub delivery_mode: Option<u8>,
    /// `priority`
    pub priority: Option<u8>,
    /// `correlation-id`
    pub correlation_id: Option<Vec<u8>>,
    /// `reply-to`
    pub reply_to: Option<Vec<u8>>,
    /// `expiration`
    pub expiration: Option<Vec<u8>>,
    /// `message-id`
    pub message_id: Option<Vec<u8>>,
    /// `timestamp`
    pub timestamp: Option<u64>,
    /// `type`
    pub kind: Option<Vec<u8>>,
    /// `user-id`
    pub user_id: Option<Vec<u8>>,
    /// `app-id`
    pub app_id: Option<Vec<u8>>,
    /// `cluster-id`
    pub cluster_id: Option<Vec<u8>>,
}

/// The short-string properties in wire order with their flag bit and name.
const SHORT_STRINGS: [(u16, &str); 11] = [
    (15, "content_type"),
    (14, "content_encoding"),
    (10, "correlation_id"),
    (9, "reply_to"),
    (8, "expiration"),
    (7, "message_id"),
    (5, "type"),
    (4, "user_id"),
    (3, "app_id"),
    (2, "cluster_id"),
    (0, ""),
];

impl RawProperties {
    fn short_mut(&mut self, bit: u16) -> Option<&mut Option<Vec<u8>>> {
        Some(match bit {
            15 => &mut self.content_type,
            14 => &mut self.content_encoding,
            10 => &mut self.correlation_id,
            9 => &mut self.reply_to,
            8 => &mut self.expiration,
            7 => &mut self.message_id,
            5 => &mut self.kind,
            4 => &mut self.user_id,
            3 => &mut self.app_id,
            2 => &mut self.cluster_id,
            _ => return None,
        })
    }

    fn short(&self, bit: u16) -> Option<&Vec<u8>> {
        match bit {
            15 => self.content_type.as_ref(),
            14 => self.content_encoding.as_ref(),
            10 => self.correlation_id.as_ref(),
            9 => self.reply_to.as_ref(),
            8 => self.expiration.as_ref(),
            7 => self.message_id.as_ref(),
            5 => self.kind.as_ref(),
            4 => self.user_id.as_ref(),
            3 => self.app_id.as_ref(),
            2 => self.cluster_id.as_ref(),
            _ => None,
        }
    }

    /// Decodes the property list of a content header (after class, weight and body size).
    pub fn decode(r: &mut Reader<'_>) -> Result<Self, WireError> {
        let flags = r.u16()?;
        if flags & 1 != 0 {
            return Err(WireError(
                "continued property flags are not supported".into(),
            ));
        }
        let has = |bit: u16| flags & (1 << bit) != 0;
        let mut p = Self::default();
        for bit in (2..=15).rev() {
            if !has(bit) {
                continue;
            }
            match bit {
                13 => p.headers = Some(r.table()?),
                12 => p.delivery_mode = Some(r.u8()?),
                11 => p.priority = Some(r.u8()?),
                6 => p.timestamp = Some(r.u64()?),
                _ => {
                    let v = r.short_str()?;
                    if let Some(slot) = p.short_mut(bit) {
                        *slot = Some(v);
                    }
                }
            }
        }
        Ok(p)
    }

    /// Encodes the property list (flags and values).
    pub fn encode(&self, w: &mut Writer) {
        let mut flags = 0u16;
        let mut body = Writer::default();
        for bit in (2..=15).rev() {
            let present = match bit {
                13 => self.headers.as_ref().map(|h| {
                    body.table(h);
                }),
                12 => self.delivery_mode.map(|v| {
                    body.u8(v);
                }),
                11 => self.priority.map(|v| {
                    body.u8(v);
                }),
                6 => self.timestamp.map(|v| {
                    body.u64(v);
                }),
                _ => self.short(bit).map(|v| {
                    body.short_str(v);
                }),
            };
            if present.is_some() {
                flags |= 1 << bit;
            }
        }
        w.u16(flags);
        w.0.extend_from_slice(&body.0);
    }

    /// A header's value as bytes or text, by its UTF-8 name.
    pub fn header(&self, name: &str) -> Option<&RawValue> {
        self.headers
            .as_ref()?
            .iter()
            .find(|(k, _)| k == name.as_bytes())
            .map(|(_, v)| v)
    }
}

/// One message fetched with the raw client.
#[derive(Debug, Clone)]
pub struct RawMessage {
    /// Delivery tag on the raw channel.
    pub delivery_tag: u64,
    /// Whether the broker delivered it before.
    pub redelivered: bool,
    /// Exchange it was published to.
    pub exchange: Vec<u8>,
    /// Routing key it was published with.
    pub routing_key: Vec<u8>,
    /// Its properties.
    pub properties: RawProperties,
    /// Its body.
    pub body: Vec<u8>,
}

impl RawMessage {
    /// What in the message the regular client cannot read: every short string (routing key,
    /// exchange, properties, header names at any depth) that is not UTF-8, named. Empty when
    /// the message is readable.
    pub fn unreadable_fields(&self) -> Vec<String> {
        let mut out = Vec::new();
        let mut check = |what: &str, bytes: &[u8]| {
            if std::str::from_utf8(bytes).is_err() {
                out.push(format!("{what} {}", Shown(bytes)));
            }
        };
        check("exchange", &self.exchange);
        check("routing key", &self.routing_key);
        for (bit, name) in SHORT_STRINGS {
            if let Some(v) = self.properties.short(bit) {
                check(name, v);
            }
        }
        if let Some(h) = &self.properties.headers {
            table_names(h, "header", &mut check);
        }
        out
    }

    /// The message id as text, lossily (for display).
    pub fn message_id_lossy(&self) -> Option<String> {
        self.properties
            .message_id
            .as_ref()
            .map(|b| String::from_utf8_lossy(b).into_owned())
    }
}

fn table_names(t: &RawTable, path: &str, check: &mut impl FnMut(&str, &[u8])) {
    for (name, value) in t {
        check(&format!("{path} name"), name);
        let inner = format!("{path} {}", String::from_utf8_lossy(name));
        match value {
            RawValue::Table(t) => table_names(t, &inner, check),
            RawValue::Array(items) => {
                for item in items {
                    if let RawValue::Table(t) = item {
                        table_names(t, &inner, check);
                    }
                }
            }
            _ => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn message(props: RawProperties, routing_key: &[u8]) -> RawMessage {
        RawMessage {
            delivery_tag: 1,
            redelivered: false,
            exchange: b"ns.tasks".to_vec(),
            routing_key: routing_key.to_vec(),
            properties: props,
            body: b"{}".to_vec(),
        }
    }

    #[test]
    fn properties_round_trip() {
        let p = RawProperties {
            content_type: Some(b"application/json".to_vec()),
            headers: Some(vec![(b"x-retry-count".to_vec(), RawValue::Int(2))]),
            delivery_mode: Some(2),
            message_id: Some(vec![0xff]),
            timestamp: Some(7),
            app_id: Some(b"a".to_vec()),
            ..RawProperties::default()
        };
        let mut w = Writer::default();
        p.encode(&mut w);
        assert_eq!(RawProperties::decode(&mut Reader::new(&w.0)).unwrap(), p);
    }

    #[test]
    fn names_every_field_that_is_not_utf8() {
        let ok = message(RawProperties::default(), b"builtin.echo");
        assert!(ok.unreadable_fields().is_empty());
        let bad = message(
            RawProperties {
                message_id: Some(vec![0xc3, 0x28]),
                headers: Some(vec![(
                    b"outer".to_vec(),
                    RawValue::Table(vec![(vec![0xff], RawValue::Void)]),
                )]),
                ..RawProperties::default()
            },
            &[0x80],
        );
        let fields = bad.unreadable_fields();
        assert_eq!(fields.len(), 3, "{fields:?}");
        assert!(fields[0].starts_with("routing key"));
        assert!(fields[1].starts_with("message_id"));
        assert!(fields[2].starts_with("header outer name"));
    }
}
