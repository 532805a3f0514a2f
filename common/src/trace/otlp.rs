//! The OTLP/HTTP span exporter: its settings from the standard `OTEL_EXPORTER_OTLP_*`
//! variables, and a protobuf encoder that writes an export request straight from the SDK's
//! ended spans.
//!
//! The encoder writes the `ExportTraceServiceRequest` of the OpenTelemetry protocol
//! (`opentelemetry/proto/collector/trace/v1`) field by field into one buffer: the process's
//! resource is encoded once, when the SDK hands it over, and each batch is one `ResourceSpans`
//! with one `ScopeSpans` per run of spans from the same instrumentation scope. Nothing is
//! converted into intermediate message structs first, which is where a general-purpose exporter
//! spends most of its time for spans as small as ours.

use super::export::TraceConfigError;
use opentelemetry::{Array, InstrumentationScope, KeyValue, Value, trace::SpanKind};
use opentelemetry_sdk::{
    Resource,
    error::{OTelSdkError, OTelSdkResult},
    trace::{SpanData, SpanExporter},
};
use reqwest::header::{CONTENT_TYPE, HeaderMap, HeaderName, HeaderValue};
use std::{
    sync::Mutex,
    time::{Duration, SystemTime, UNIX_EPOCH},
};

/// Where and how spans are sent, read from the environment.
#[derive(Clone, Debug, PartialEq)]
pub(super) struct Settings {
    /// The full URL a batch is posted to.
    pub endpoint: reqwest::Url,
    /// Extra request headers (`OTEL_EXPORTER_OTLP_[TRACES_]HEADERS`).
    pub headers: HeaderMap,
    /// How long one export may take (`OTEL_EXPORTER_OTLP_[TRACES_]TIMEOUT`, milliseconds).
    pub timeout: Duration,
}

const DEFAULT_TIMEOUT: Duration = Duration::from_secs(10);

impl Settings {
    /// The settings the standard variables give, read through `var`; an unusable value is a
    /// configuration error naming its variable.
    pub fn from_vars(var: impl Fn(&str) -> Option<String>) -> Result<Self, TraceConfigError> {
        let get = |name: &str| var(name).filter(|v| !v.trim().is_empty());
        // The signal's own variable wins over the general one.
        let pick = |general: &'static str, traces: &'static str| {
            get(traces)
                .map(|v| (traces, v))
                .or_else(|| get(general).map(|v| (general, v)))
        };
        if let Some((name, protocol)) = pick(
            "OTEL_EXPORTER_OTLP_PROTOCOL",
            "OTEL_EXPORTER_OTLP_TRACES_PROTOCOL",
        ) && protocol.trim() != "http/protobuf"
        {
            return Err(TraceConfigError::new(format!(
                "{name}={protocol}: only http/protobuf is supported"
            )));
        }
        if let Some((name, compression)) = pick(
            "OTEL_EXPORTER_OTLP_COMPRESSION",
            "OTEL_EXPORTER_OTLP_TRACES_COMPRESSION",
        ) && compression.trim() != "none"
        {
            return Err(TraceConfigError::new(format!(
                "{name}={compression}: spans are sent uncompressed (none is the only value supported)"
            )));
        }
        let endpoint = match get("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT") {
            // The signal's own endpoint is used as it is.
            Some(url) => parse_url("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT", url.trim())?,
            None => {
                let base = get("OTEL_EXPORTER_OTLP_ENDPOINT")
                    .unwrap_or_else(|| "http://localhost:4318".to_string());
                let url = format!("{}/v1/traces", base.trim().trim_end_matches('/'));
                parse_url("OTEL_EXPORTER_OTLP_ENDPOINT", &url)?
            }
        };
        let headers = match pick(
            "OTEL_EXPORTER_OTLP_HEADERS",
            "OTEL_EXPORTER_OTLP_TRACES_HEADERS",
        ) {
            Some((name, list)) => parse_headers(&list)
                .map_err(|why| TraceConfigError::new(format!("{name}: {why}")))?,
            None => HeaderMap::new(),
        };
        let timeout = match pick(
            "OTEL_EXPORTER_OTLP_TIMEOUT",
            "OTEL_EXPORTER_OTLP_TRACES_TIMEOUT",
        ) {
            Some((name, ms)) => match ms.trim().parse::<u64>() {
                Ok(ms) if ms > 0 => Duration::from_millis(ms),
                _ => {
                    return Err(TraceConfigError::new(format!(
                        "{name}={ms}: not a positive number of milliseconds"
                    )));
                }
            },
            None => DEFAULT_TIMEOUT,
        };
        Ok(Self {
            endpoint,
            headers,
            timeout,
        })
    }
}

fn parse_url(name: &str, url: &str) -> Result<reqwest::Url, TraceConfigError> {
    let parsed = reqwest::Url::parse(url)
        .map_err(|e| TraceConfigError::new(format!("{name}: {url:?} is not a URL: {e}")))?;
    if !matches!(parsed.scheme(), "http" | "https") || parsed.host_str().is_none() {
        return Err(TraceConfigError::new(format!(
            "{name}: {url:?} is not an http:// or https:// URL with a host"
        )));
    }
    Ok(parsed)
}

/// `key=value,key2=value2`, values percent-decoded, as the variables' format says.
fn parse_headers(list: &str) -> Result<HeaderMap, String> {
    let mut headers = HeaderMap::new();
    for pair in list.split(',').filter(|p| !p.trim().is_empty()) {
        let Some((key, value)) = pair.split_once('=') else {
            return Err(format!("{:?} is not key=value", pair.trim()));
        };
        let key = percent_decode(key.trim())?;
        let value = percent_decode(value.trim())?;
        let name = HeaderName::from_bytes(key.as_bytes())
            .map_err(|_| format!("{key:?} is not a header name"))?;
        let value = HeaderValue::from_str(&value)
            .map_err(|_| format!("the value of {key:?} is not a header value"))?;
        headers.append(name, value);
    }
    Ok(headers)
}

fn percent_decode(s: &str) -> Result<String, String> {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%' {
            let hex = bytes
                .get(i + 1..i + 3)
                .and_then(|h| std::str::from_utf8(h).ok())
                .and_then(|h| u8::from_str_radix(h, 16).ok())
                .ok_or_else(|| format!("{s:?} has a bad percent escape"))?;
            out.push(hex);
            i += 3;
        } else {
            out.push(bytes[i]);
            i += 1;
        }
    }
    String::from_utf8(out).map_err(|_| format!("{s:?} does not decode to UTF-8"))
}

/// Posts each batch, encoded by [`encode_request`], to the endpoint. One attempt per batch: a
/// batch the collector refuses or does not answer in time is dropped (the caller counts it).
#[derive(Debug)]
pub(super) struct Exporter {
    settings: Settings,
    /// The process's resource, encoded (the body of a `Resource` message).
    resource: Vec<u8>,
    /// Built on the exporting thread at its first batch: a blocking client must not be made or
    /// dropped on an async runtime's thread.
    client: Mutex<Option<reqwest::blocking::Client>>,
}

impl Exporter {
    pub fn new(settings: Settings) -> Self {
        Self {
            settings,
            resource: Vec::new(),
            client: Mutex::new(None),
        }
    }

    fn post(&self, body: Vec<u8>) -> OTelSdkResult {
        let mut slot = self
            .client
            .lock()
            .map_err(|_| OTelSdkError::InternalFailure("the exporter's lock is poisoned".into()))?;
        let client = match &mut *slot {
            Some(client) => client,
            empty @ None => empty.insert(
                reqwest::blocking::Client::builder()
                    .timeout(self.settings.timeout)
                    .build()
                    .map_err(|e| OTelSdkError::InternalFailure(format!("the HTTP client: {e}")))?,
            ),
        };
        let response = client
            .post(self.settings.endpoint.clone())
            .headers(self.settings.headers.clone())
            .header(CONTENT_TYPE, "application/x-protobuf")
            .body(body)
            .send()
            .map_err(|e| OTelSdkError::InternalFailure(format!("OTLP export: {e}")))?;
        let status = response.status();
        // Read the (small) reply so the connection can be reused.
        let _ = response.bytes();
        if status.is_success() {
            Ok(())
        } else {
            Err(OTelSdkError::InternalFailure(format!(
                "OTLP export: the collector answered {status}"
            )))
        }
    }
}

impl SpanExporter for Exporter {
    async fn export(&self, batch: Vec<SpanData>) -> OTelSdkResult {
        if batch.is_empty() {
            return Ok(());
        }
        let mut body = Vec::with_capacity(256 * batch.len() + self.resource.len() + 64);
        encode_request(&self.resource, &batch, &mut body);
        drop(batch);
        self.post(body)
    }

    fn shutdown_with_timeout(&self, _timeout: Duration) -> OTelSdkResult {
        Ok(())
    }

    fn set_resource(&mut self, resource: &Resource) {
        let mut encoded = Vec::new();
        for (key, value) in resource.iter() {
            put_key_value(&mut encoded, 1, key.as_str(), value);
        }
        self.resource = encoded;
    }
}

/// Writes an `ExportTraceServiceRequest` holding `spans` under `resource` (an encoded
/// `Resource` body) to `out`.
pub(super) fn encode_request(resource: &[u8], spans: &[SpanData], out: &mut Vec<u8>) {
    // Each span is encoded once into `encoded`, then copied once into `out` behind the
    // enclosing messages' headers, whose lengths are known by then. `runs`: each run of spans
    // from one scope, as its `ScopeSpans` fields other than the spans, and where its spans are.
    let mut encoded = Vec::with_capacity(out.capacity());
    let mut runs: Vec<(Vec<u8>, std::ops::Range<usize>)> = Vec::new();
    let mut span = Vec::with_capacity(512);
    let mut i = 0;
    while i < spans.len() {
        let scope = &spans[i].instrumentation_scope;
        let mut head = Vec::new();
        put_scope(&mut head, scope);
        let from = encoded.len();
        while i < spans.len() && same_scope(&spans[i].instrumentation_scope, scope) {
            span.clear();
            encode_span(&spans[i], &mut span);
            put_message(&mut encoded, 2, &span);
            i += 1;
        }
        runs.push((head, from..encoded.len()));
    }
    let scope_len = |(head, range): &(Vec<u8>, std::ops::Range<usize>)| head.len() + range.len();
    let body = len_field_len(1, resource.len())
        + runs
            .iter()
            .map(|run| len_field_len(2, scope_len(run)))
            .sum::<usize>();
    put_tag(out, 1, WIRE_LEN);
    put_varint(out, body as u64);
    put_message(out, 1, resource);
    for run in &runs {
        put_tag(out, 2, WIRE_LEN);
        put_varint(out, scope_len(run) as u64);
        out.extend_from_slice(&run.0);
        out.extend_from_slice(&encoded[run.1.clone()]);
    }
}

fn same_scope(a: &InstrumentationScope, b: &InstrumentationScope) -> bool {
    std::ptr::eq(a, b)
        || (a.name() == b.name()
            && a.version() == b.version()
            && a.schema_url() == b.schema_url()
            && a.attributes().eq(b.attributes()))
}

/// Field 1 of `ScopeSpans`: the `InstrumentationScope`; field 3 its schema URL.
fn put_scope(out: &mut Vec<u8>, scope: &InstrumentationScope) {
    let mut body = Vec::new();
    put_str(&mut body, 1, scope.name());
    if let Some(version) = scope.version() {
        put_str(&mut body, 2, version);
    }
    put_attributes(&mut body, 3, scope.attributes());
    put_message(out, 1, &body);
    if let Some(url) = scope.schema_url() {
        put_str(out, 3, url);
    }
}

/// The flag bits of the protocol's `SpanFlags`: whether the parent's remoteness is known, and
/// whether it is remote.
const CONTEXT_HAS_IS_REMOTE: u32 = 0x100;
const CONTEXT_IS_REMOTE: u32 = 0x200;

/// The body of one `Span` message.
fn encode_span(s: &SpanData, out: &mut Vec<u8>) {
    let cx = &s.span_context;
    put_bytes(out, 1, &cx.trace_id().to_bytes());
    put_bytes(out, 2, &cx.span_id().to_bytes());
    put_str(out, 3, &cx.trace_state().header());
    if s.parent_span_id != opentelemetry::trace::SpanId::INVALID {
        put_bytes(out, 4, &s.parent_span_id.to_bytes());
    }
    put_str(out, 5, &s.name);
    let kind = match s.span_kind {
        SpanKind::Internal => 1,
        SpanKind::Server => 2,
        SpanKind::Client => 3,
        SpanKind::Producer => 4,
        SpanKind::Consumer => 5,
    };
    put_varint_field(out, 6, kind);
    put_fixed64(out, 7, nanos(s.start_time));
    put_fixed64(out, 8, nanos(s.end_time));
    put_attributes(out, 9, &s.attributes);
    put_varint_field(out, 10, u64::from(s.dropped_attributes_count));
    let mut nested = Vec::new();
    for event in s.events.iter() {
        nested.clear();
        put_fixed64(&mut nested, 1, nanos(event.timestamp));
        put_str(&mut nested, 2, &event.name);
        put_attributes(&mut nested, 3, &event.attributes);
        put_varint_field(&mut nested, 4, u64::from(event.dropped_attributes_count));
        put_message(out, 11, &nested);
    }
    put_varint_field(out, 12, u64::from(s.events.dropped_count));
    for link in s.links.iter() {
        nested.clear();
        let lcx = &link.span_context;
        put_bytes(&mut nested, 1, &lcx.trace_id().to_bytes());
        put_bytes(&mut nested, 2, &lcx.span_id().to_bytes());
        put_str(&mut nested, 3, &lcx.trace_state().header());
        put_attributes(&mut nested, 4, &link.attributes);
        put_varint_field(&mut nested, 5, u64::from(link.dropped_attributes_count));
        put_fixed32(&mut nested, 6, span_flags(lcx, lcx.is_remote()));
        put_message(out, 13, &nested);
    }
    put_varint_field(out, 14, u64::from(s.links.dropped_count));
    nested.clear();
    match &s.status {
        opentelemetry::trace::Status::Unset => {}
        opentelemetry::trace::Status::Ok => put_varint_field(&mut nested, 3, 1),
        opentelemetry::trace::Status::Error { description } => {
            put_str(&mut nested, 2, description);
            put_varint_field(&mut nested, 3, 2);
        }
    }
    put_message(out, 15, &nested);
    put_fixed32(out, 16, span_flags(cx, s.parent_span_is_remote));
}

/// A span's or link's `flags`: its trace flags, and whether the context it refers to (the
/// span's parent, the link's target) is remote.
fn span_flags(cx: &opentelemetry::trace::SpanContext, remote: bool) -> u32 {
    let flags = u32::from(cx.trace_flags().to_u8()) | CONTEXT_HAS_IS_REMOTE;
    if remote {
        flags | CONTEXT_IS_REMOTE
    } else {
        flags
    }
}

fn nanos(t: SystemTime) -> u64 {
    t.duration_since(UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_nanos()).unwrap_or(u64::MAX))
}

fn put_attributes<'a>(
    out: &mut Vec<u8>,
    field: u32,
    attributes: impl IntoIterator<Item = &'a KeyValue>,
) {
    for kv in attributes {
        put_key_value(out, field, kv.key.as_str(), &kv.value);
    }
}

/// A `KeyValue` message as field `field`. Its length is worked out before writing, so the
/// attribute is written in place, without a scratch buffer.
fn put_key_value(out: &mut Vec<u8>, field: u32, key: &str, value: &Value) {
    let value_len = any_value_len(value);
    let len = str_field_len(1, key) + len_field_len(2, value_len);
    put_tag(out, field, WIRE_LEN);
    put_varint(out, len as u64);
    put_str(out, 1, key);
    put_tag(out, 2, WIRE_LEN);
    put_varint(out, value_len as u64);
    put_any_value_body(out, value);
}

fn put_value(out: &mut Vec<u8>, field: u32, value: &Value) {
    put_tag(out, field, WIRE_LEN);
    put_varint(out, any_value_len(value) as u64);
    put_any_value_body(out, value);
}

/// The body of an `AnyValue`: one field of its `oneof`.
fn put_any_value_body(out: &mut Vec<u8>, value: &Value) {
    match value {
        Value::Bool(b) => put_varint_field_always(out, 2, u64::from(*b)),
        Value::I64(i) => put_varint_field_always(out, 3, *i as u64),
        Value::F64(f) => put_fixed64(out, 4, f.to_bits()),
        Value::String(s) => put_str_always(out, 1, s.as_str()),
        Value::Array(array) => {
            let mut values = Vec::new();
            match array {
                Array::Bool(v) => v
                    .iter()
                    .for_each(|b| put_value(&mut values, 1, &Value::Bool(*b))),
                Array::I64(v) => v
                    .iter()
                    .for_each(|i| put_value(&mut values, 1, &Value::I64(*i))),
                Array::F64(v) => v
                    .iter()
                    .for_each(|f| put_value(&mut values, 1, &Value::F64(*f))),
                Array::String(v) => v
                    .iter()
                    .for_each(|s| put_value(&mut values, 1, &Value::String(s.clone()))),
                other => put_value(&mut values, 1, &Value::String(other.to_string().into())),
            }
            put_message(out, 5, &values);
        }
        other => put_str_always(out, 1, &other.to_string()),
    }
}

fn any_value_len(value: &Value) -> usize {
    match value {
        Value::Bool(b) => 1 + varint_len(u64::from(*b)),
        Value::I64(i) => 1 + varint_len(*i as u64),
        Value::F64(_) => 1 + 8,
        Value::String(s) => len_field_len(1, s.as_str().len()),
        other => {
            let mut scratch = Vec::new();
            put_any_value_body(&mut scratch, other);
            scratch.len()
        }
    }
}

const WIRE_VARINT: u32 = 0;
const WIRE_FIXED64: u32 = 1;
const WIRE_LEN: u32 = 2;
const WIRE_FIXED32: u32 = 5;

fn put_tag(out: &mut Vec<u8>, field: u32, wire: u32) {
    put_varint(out, u64::from(field << 3 | wire));
}

fn put_varint(out: &mut Vec<u8>, mut v: u64) {
    while v >= 0x80 {
        out.push((v as u8) | 0x80);
        v >>= 7;
    }
    out.push(v as u8);
}

fn varint_len(v: u64) -> usize {
    (64 - (v | 1).leading_zeros() as usize).div_ceil(7)
}

fn tag_len(field: u32) -> usize {
    varint_len(u64::from(field << 3))
}

fn len_field_len(field: u32, len: usize) -> usize {
    tag_len(field) + varint_len(len as u64) + len
}

fn str_field_len(field: u32, s: &str) -> usize {
    if s.is_empty() {
        0
    } else {
        len_field_len(field, s.len())
    }
}

/// A scalar field, left out when 0 (proto3's default).
fn put_varint_field(out: &mut Vec<u8>, field: u32, v: u64) {
    if v != 0 {
        put_varint_field_always(out, field, v);
    }
}

/// A field of a `oneof`, written even when it holds the default.
fn put_varint_field_always(out: &mut Vec<u8>, field: u32, v: u64) {
    put_tag(out, field, WIRE_VARINT);
    put_varint(out, v);
}

fn put_fixed64(out: &mut Vec<u8>, field: u32, v: u64) {
    put_tag(out, field, WIRE_FIXED64);
    out.extend_from_slice(&v.to_le_bytes());
}

fn put_fixed32(out: &mut Vec<u8>, field: u32, v: u32) {
    put_tag(out, field, WIRE_FIXED32);
    out.extend_from_slice(&v.to_le_bytes());
}

fn put_bytes(out: &mut Vec<u8>, field: u32, bytes: &[u8]) {
    put_tag(out, field, WIRE_LEN);
    put_varint(out, bytes.len() as u64);
    out.extend_from_slice(bytes);
}

/// A string field, left out when empty (proto3's default).
fn put_str(out: &mut Vec<u8>, field: u32, s: &str) {
    if !s.is_empty() {
        put_bytes(out, field, s.as_bytes());
    }
}

fn put_str_always(out: &mut Vec<u8>, field: u32, s: &str) {
    put_bytes(out, field, s.as_bytes());
}

/// An embedded message (its body already encoded), written even when empty: an empty
/// message still says it is there.
fn put_message(out: &mut Vec<u8>, field: u32, body: &[u8]) {
    put_bytes(out, field, body);
}

#[cfg(test)]
mod tests {
    use super::*;

    fn vars(pairs: &[(&str, &str)]) -> impl Fn(&str) -> Option<String> {
        let pairs: Vec<(String, String)> = pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        move |name| {
            pairs
                .iter()
                .find(|(k, _)| k == name)
                .map(|(_, v)| v.clone())
        }
    }

    #[test]
    fn the_general_endpoint_gets_the_traces_path_and_the_signals_own_is_kept() {
        let s = Settings::from_vars(vars(&[("OTEL_EXPORTER_OTLP_ENDPOINT", "http://c:4318/")]))
            .unwrap();
        assert_eq!(s.endpoint.as_str(), "http://c:4318/v1/traces");
        assert_eq!(s.timeout, DEFAULT_TIMEOUT);
        let s = Settings::from_vars(vars(&[
            ("OTEL_EXPORTER_OTLP_ENDPOINT", "http://c:4318"),
            ("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT", "https://t:1/custom"),
        ]))
        .unwrap();
        assert_eq!(s.endpoint.as_str(), "https://t:1/custom");
    }

    #[test]
    fn headers_and_timeout_are_read_and_the_signals_own_win() {
        let s = Settings::from_vars(vars(&[
            ("OTEL_EXPORTER_OTLP_ENDPOINT", "http://c:4318"),
            ("OTEL_EXPORTER_OTLP_HEADERS", "a=1"),
            (
                "OTEL_EXPORTER_OTLP_TRACES_HEADERS",
                "api-key=s%20ecret, x-team = sec ",
            ),
            ("OTEL_EXPORTER_OTLP_TIMEOUT", "1500"),
        ]))
        .unwrap();
        assert_eq!(
            s.headers.len(),
            2,
            "the traces list replaces the general one"
        );
        assert_eq!(s.headers["api-key"], "s ecret");
        assert_eq!(s.headers["x-team"], "sec");
        assert_eq!(s.timeout, Duration::from_millis(1500));
    }

    #[test]
    fn unusable_settings_name_their_variable() {
        let cases = [
            ("OTEL_EXPORTER_OTLP_ENDPOINT", "localhost:4318"),
            ("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT", "ftp://c/"),
            ("OTEL_EXPORTER_OTLP_TIMEOUT", "soon"),
            ("OTEL_EXPORTER_OTLP_TRACES_PROTOCOL", "grpc"),
            ("OTEL_EXPORTER_OTLP_COMPRESSION", "gzip"),
            ("OTEL_EXPORTER_OTLP_HEADERS", "novalue"),
            ("OTEL_EXPORTER_OTLP_HEADERS", "bad key=1"),
            ("OTEL_EXPORTER_OTLP_HEADERS", "k=%zz"),
        ];
        for (name, value) in cases {
            let err = Settings::from_vars(vars(&[(name, value)])).unwrap_err();
            assert!(err.to_string().contains(name), "{name}={value}: {err}");
        }
        assert!(
            Settings::from_vars(vars(&[("OTEL_EXPORTER_OTLP_PROTOCOL", "http/protobuf")])).is_ok()
        );
    }

    #[test]
    fn varints_and_lengths_agree() {
        for v in [
            0u64,
            1,
            127,
            128,
            300,
            16_383,
            16_384,
            u64::from(u32::MAX),
            u64::MAX,
        ] {
            let mut out = Vec::new();
            put_varint(&mut out, v);
            assert_eq!(out.len(), varint_len(v), "{v}");
        }
        for value in [
            Value::Bool(false),
            Value::I64(-1),
            Value::I64(0),
            Value::F64(1.5),
            Value::String("".into()),
            Value::String("x".repeat(200).into()),
            Value::Array(Array::I64(vec![1, 2])),
        ] {
            let mut out = Vec::new();
            put_any_value_body(&mut out, &value);
            assert_eq!(out.len(), any_value_len(&value), "{value:?}");
        }
    }

    #[test]
    fn a_key_value_encodes_as_protobuf_says() {
        let mut out = Vec::new();
        put_key_value(&mut out, 9, "k", &Value::I64(2));
        // field 9 len 7 { field 1 "k", field 2 len 2 { field 3 varint 2 } }
        assert_eq!(out, [0x4a, 7, 0x0a, 1, b'k', 0x12, 2, 0x18, 2]);
        out.clear();
        put_key_value(&mut out, 1, "s", &Value::String("".into()));
        // An empty string value is still written: the oneof says which kind it is.
        assert_eq!(out, [0x0a, 7, 0x0a, 1, b's', 0x12, 2, 0x0a, 0]);
    }

    /// The fields of one protobuf message: (field number, bytes of a length-delimited field
    /// or the value of a scalar one, little-endian), failing on anything malformed.
    fn fields(mut buf: &[u8]) -> Vec<(u32, Vec<u8>)> {
        fn varint(buf: &mut &[u8]) -> u64 {
            let (mut v, mut shift) = (0u64, 0);
            loop {
                let b = buf[0];
                *buf = &buf[1..];
                v |= u64::from(b & 0x7f) << shift;
                if b < 0x80 {
                    return v;
                }
                shift += 7;
            }
        }
        let mut out = Vec::new();
        while !buf.is_empty() {
            let tag = varint(&mut buf);
            let (field, wire) = ((tag >> 3) as u32, (tag & 7) as u32);
            let value = match wire {
                WIRE_VARINT => varint(&mut buf).to_le_bytes().to_vec(),
                WIRE_FIXED64 | WIRE_FIXED32 => {
                    let n = if wire == WIRE_FIXED64 { 8 } else { 4 };
                    let (v, rest) = buf.split_at(n);
                    buf = rest;
                    v.to_vec()
                }
                WIRE_LEN => {
                    let n = varint(&mut buf) as usize;
                    let (v, rest) = buf.split_at(n);
                    buf = rest;
                    v.to_vec()
                }
                other => panic!("wire type {other}"),
            };
            out.push((field, value));
        }
        out
    }

    fn span(scope: &InstrumentationScope, id: u64, parent: u64) -> SpanData {
        use opentelemetry::trace::{SpanContext, SpanId, Status, TraceFlags, TraceId, TraceState};
        SpanData {
            span_context: SpanContext::new(
                TraceId::from(7u128),
                SpanId::from(id),
                TraceFlags::SAMPLED,
                false,
                TraceState::default(),
            ),
            parent_span_id: SpanId::from(parent),
            parent_span_is_remote: parent != 0,
            span_kind: SpanKind::Consumer,
            name: "task builtin.noop".into(),
            start_time: UNIX_EPOCH + Duration::from_secs(1),
            end_time: UNIX_EPOCH + Duration::from_secs(2),
            attributes: vec![
                KeyValue::new("secflow.retry_count", 1),
                KeyValue::new("secflow.node", "scan"),
            ],
            dropped_attributes_count: 0,
            events: Default::default(),
            links: Default::default(),
            status: Status::error("boom"),
            instrumentation_scope: scope.clone(),
        }
    }

    #[test]
    fn a_request_nests_resource_scopes_and_spans_as_the_protocol_says() {
        let ours = InstrumentationScope::builder("secflow").build();
        let other = InstrumentationScope::builder("other")
            .with_version("1.2")
            .build();
        let spans = [span(&ours, 1, 0), span(&ours, 2, 1), span(&other, 3, 2)];
        let mut exporter = Exporter::new(
            Settings::from_vars(vars(&[("OTEL_EXPORTER_OTLP_ENDPOINT", "http://c")])).unwrap(),
        );
        exporter.set_resource(
            &Resource::builder_empty()
                .with_service_name("secflow-worker")
                .build(),
        );
        let mut out = Vec::new();
        encode_request(&exporter.resource, &spans, &mut out);
        let request = fields(&out);
        assert_eq!(request.len(), 1, "one ResourceSpans");
        let resource_spans = fields(&request[0].1);
        assert_eq!(resource_spans[0].0, 1, "the resource first");
        let attribute = &fields(&resource_spans[0].1)[0].1;
        assert_eq!(fields(attribute)[0].1, b"service.name");
        let scopes: Vec<_> = resource_spans.iter().filter(|f| f.0 == 2).collect();
        assert_eq!(scopes.len(), 2, "one ScopeSpans per scope");
        let names: Vec<Vec<u8>> = scopes
            .iter()
            .map(|s| fields(&fields(&s.1)[0].1)[0].1.clone())
            .collect();
        assert_eq!(names, [b"secflow".to_vec(), b"other".to_vec()]);
        let first: Vec<_> = fields(&scopes[0].1)
            .into_iter()
            .filter(|f| f.0 == 2)
            .collect();
        assert_eq!(first.len(), 2, "two spans in the first scope");
        let span = fields(&first[1].1);
        let field = |n: u32| span.iter().find(|f| f.0 == n).map(|f| f.1.clone());
        assert_eq!(field(1), Some(7u128.to_be_bytes().to_vec()), "trace id");
        assert_eq!(field(2), Some(2u64.to_be_bytes().to_vec()), "span id");
        assert_eq!(field(4), Some(1u64.to_be_bytes().to_vec()), "parent");
        assert_eq!(field(5), Some(b"task builtin.noop".to_vec()));
        assert_eq!(field(6).map(|v| v[0]), Some(5), "consumer");
        assert_eq!(field(7), Some(1_000_000_000u64.to_le_bytes().to_vec()));
        assert_eq!(span.iter().filter(|f| f.0 == 9).count(), 2, "attributes");
        let status = fields(&field(15).unwrap());
        assert_eq!(
            status,
            [(2, b"boom".to_vec()), (3, 2u64.to_le_bytes().to_vec())]
        );
        assert_eq!(field(16), Some(0x301u32.to_le_bytes().to_vec()), "flags");
        let root = fields(&first[0].1);
        assert!(root.iter().all(|f| f.0 != 4), "a root has no parent field");
    }
}
