//! The process's tracer: spans always get ids (they go into logs and headers), and are exported
//! over OTLP/HTTP (protobuf) only when `OTEL_EXPORTER_OTLP_TRACES_ENDPOINT` or
//! `OTEL_EXPORTER_OTLP_ENDPOINT` is set, unless `OTEL_SDK_DISABLED=true` or
//! `OTEL_TRACES_EXPORTER=none`.
//!
//! The standard variables are read by the SDK (`OTEL_SERVICE_NAME`, `OTEL_RESOURCE_ATTRIBUTES`,
//! `OTEL_TRACES_SAMPLER` / `_ARG`) and by our exporter ([`otlp`]: `OTEL_EXPORTER_OTLP_[TRACES_]`
//! `ENDPOINT`, `HEADERS`, `TIMEOUT`, `PROTOCOL` (`http/protobuf`), `COMPRESSION` (`none`)).
//!
//! Exporting never waits on the task path: an ended span goes into a bounded queue that a
//! thread of the SDK exports in batches. A full queue (the collector slow or gone) drops the
//! span, and a batch the collector refuses or never answers is dropped too; both are counted
//! ([`counts`]) for `/metrics`.

use super::otlp;
use opentelemetry::{KeyValue, trace::TracerProvider as _};
use opentelemetry_sdk::{
    Resource,
    error::OTelSdkResult,
    resource::{EnvResourceDetector, ResourceDetector, SdkProvidedResourceDetector},
    trace::{
        BatchConfigBuilder, BatchSpanProcessor, SdkTracer, SdkTracerProvider, Span, SpanData,
        SpanExporter, SpanProcessor,
    },
};
use std::{
    sync::{
        Arc, OnceLock,
        atomic::{AtomicU64, AtomicUsize, Ordering},
    },
    time::Duration,
};

/// Spans waiting for export at most; more are dropped (and counted).
const QUEUE: usize = 4096;

static EXPORTED: AtomicU64 = AtomicU64::new(0);
static DROPPED_QUEUE_FULL: AtomicU64 = AtomicU64::new(0);
static DROPPED_EXPORT_FAILED: AtomicU64 = AtomicU64::new(0);
static TRACER: OnceLock<Installed> = OnceLock::new();

struct Installed {
    tracer: SdkTracer,
    provider: SdkTracerProvider,
    exporting: bool,
}

/// What became of ended spans since the process started.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct SpanCounts {
    /// Accepted by the collector.
    pub exported: u64,
    /// Dropped because the export queue was full.
    pub dropped_queue_full: u64,
    /// Dropped because their batch could not be delivered.
    pub dropped_export_failed: u64,
}

/// The counters behind `secflow_trace_spans_*`.
pub fn counts() -> SpanCounts {
    SpanCounts {
        exported: EXPORTED.load(Ordering::Relaxed),
        dropped_queue_full: DROPPED_QUEUE_FULL.load(Ordering::Relaxed),
        dropped_export_failed: DROPPED_EXPORT_FAILED.load(Ordering::Relaxed),
    }
}

/// Whether spans leave the process.
pub fn exporting() -> bool {
    TRACER.get().is_some_and(|t| t.exporting)
}

/// A setting of the `OTEL_*` variables that cannot work.
#[derive(Debug, thiserror::Error)]
#[error("OpenTelemetry settings: {0}")]
pub struct TraceConfigError(String);

impl TraceConfigError {
    pub(super) fn new(why: String) -> Self {
        Self(why)
    }
}

/// Installs the tracer of this process, `service` being its `service.name` unless
/// `OTEL_SERVICE_NAME` or `OTEL_RESOURCE_ATTRIBUTES` say otherwise. Call once, early; later
/// calls keep the first tracer. A bad endpoint is a configuration error.
pub fn init(service: &str, version: &str) -> Result<(), TraceConfigError> {
    if TRACER.get().is_some() {
        return Ok(());
    }
    let resource = resource(service, version);
    let mut builder = SdkTracerProvider::builder().with_resource(resource);
    let exporting = export_wanted();
    if exporting {
        // The exporter's HTTP client takes TLS from the process-wide provider (https endpoints).
        let _ = rustls::crypto::ring::default_provider().install_default();
        let settings = otlp::Settings::from_vars(|name| std::env::var(name).ok())?;
        builder = builder.with_span_processor(Bounded::new(otlp::Exporter::new(settings)));
    }
    let provider = builder.build();
    let tracer = provider.tracer("secflow");
    let _ = TRACER.set(Installed {
        tracer,
        provider,
        exporting,
    });
    Ok(())
}

/// Exports what is queued and stops the exporter, within `deadline`. Blocks: call it from a
/// blocking thread.
pub fn shutdown(deadline: Duration) {
    if let Some(t) = TRACER.get() {
        let _ = t.provider.shutdown_with_timeout(deadline);
    }
}

/// The tracer (a non-exporting one when [`init`] was not called, as in unit tests).
pub(super) fn tracer() -> &'static SdkTracer {
    &TRACER
        .get_or_init(|| {
            let provider = SdkTracerProvider::builder().build();
            Installed {
                tracer: provider.tracer("secflow"),
                provider,
                exporting: false,
            }
        })
        .tracer
}

fn export_wanted() -> bool {
    let set = |name: &str| std::env::var(name).is_ok_and(|v| !v.trim().is_empty());
    let disabled = std::env::var("OTEL_SDK_DISABLED").is_ok_and(|v| v.trim() == "true");
    let none = std::env::var("OTEL_TRACES_EXPORTER").is_ok_and(|v| v.trim() == "none");
    !disabled
        && !none
        && (set("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT") || set("OTEL_EXPORTER_OTLP_ENDPOINT"))
}

/// `service.name` and version, host name; then `OTEL_RESOURCE_ATTRIBUTES` and
/// `OTEL_SERVICE_NAME`, which win.
fn resource(service: &str, version: &str) -> Resource {
    let mut builder = Resource::builder_empty()
        .with_service_name(service.to_string())
        .with_attribute(KeyValue::new("service.version", version.to_string()))
        .with_attribute(KeyValue::new("telemetry.sdk.language", "rust"));
    if let Some(host) = crate::logging::hostname() {
        builder = builder.with_attribute(KeyValue::new("host.name", host));
    }
    let mut detectors: Vec<Box<dyn ResourceDetector>> = vec![Box::new(EnvResourceDetector::new())];
    if std::env::var("OTEL_SERVICE_NAME").is_ok_and(|v| !v.trim().is_empty()) {
        detectors.push(Box::new(SdkProvidedResourceDetector));
    }
    builder.with_detectors(&detectors).build()
}

/// A batch processor whose queue is bounded here, so every span it drops is counted.
#[derive(Debug)]
struct Bounded {
    inner: BatchSpanProcessor,
    pending: Arc<AtomicUsize>,
}

impl Bounded {
    fn new<E: SpanExporter + 'static>(exporter: E) -> Self {
        let pending = Arc::new(AtomicUsize::new(0));
        let counted = Counted {
            inner: exporter,
            pending: pending.clone(),
        };
        // The inner queue is larger than ours, so it never drops a span we did not count.
        let config = BatchConfigBuilder::default()
            .with_max_queue_size(QUEUE * 2)
            .with_max_export_batch_size(512)
            .with_scheduled_delay(Duration::from_millis(500))
            .build();
        let inner = BatchSpanProcessor::builder(counted)
            .with_batch_config(config)
            .build();
        Self { inner, pending }
    }
}

impl SpanProcessor for Bounded {
    fn on_start(&self, _span: &mut Span, _cx: &opentelemetry::Context) {}

    fn on_end(&self, span: SpanData) {
        if self.pending.fetch_add(1, Ordering::Relaxed) >= QUEUE {
            self.pending.fetch_sub(1, Ordering::Relaxed);
            DROPPED_QUEUE_FULL.fetch_add(1, Ordering::Relaxed);
            return;
        }
        self.inner.on_end(span);
    }

    fn force_flush(&self) -> OTelSdkResult {
        self.inner.force_flush()
    }

    fn shutdown_with_timeout(&self, timeout: Duration) -> OTelSdkResult {
        self.inner.shutdown_with_timeout(timeout)
    }

    fn set_resource(&mut self, resource: &Resource) {
        self.inner.set_resource(resource);
    }
}

/// The exporter, counting what each batch became.
#[derive(Debug)]
struct Counted<E> {
    inner: E,
    pending: Arc<AtomicUsize>,
}

impl<E: SpanExporter> SpanExporter for Counted<E> {
    async fn export(&self, batch: Vec<SpanData>) -> OTelSdkResult {
        let n = batch.len();
        let result = self.inner.export(batch).await;
        self.pending.fetch_sub(n, Ordering::Relaxed);
        let counter = if result.is_ok() {
            &EXPORTED
        } else {
            &DROPPED_EXPORT_FAILED
        };
        counter.fetch_add(n as u64, Ordering::Relaxed);
        result
    }

    fn shutdown_with_timeout(&self, timeout: Duration) -> OTelSdkResult {
        self.inner.shutdown_with_timeout(timeout)
    }

    fn force_flush(&self) -> OTelSdkResult {
        self.inner.force_flush()
    }

    fn set_resource(&mut self, resource: &Resource) {
        self.inner.set_resource(resource);
    }
}
