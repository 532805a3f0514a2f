//! What the worker reads from a delivery's headers before running it, believing the
//! bookkeeping headers only as far as their signature allows.

use lapin::message::Delivery;
use secflow_common::{
    bookkeeping::{self, Tampered, Trust},
    headers as h, now_ms,
    signing::Keyring,
    trace::TraceContext,
};

/// Counters, history and retry timing of a delivery.
#[derive(Clone, Debug)]
pub struct DeliveryMeta {
    /// Whether the bookkeeping headers below were believed (`Err`: rewritten outside the
    /// fleet; the counters are then their defaults and the task must not run).
    pub bookkeeping: Result<Trust, Tampered>,
    /// `x-retry-count`: classified failures so far.
    pub retry_count: u64,
    /// `x-delivery-count`: unsettled deliveries of this copy (crashes, lost channels). The
    /// broker writes it, so it is always believed.
    pub delivery_count: u64,
    /// Unsettled deliveries of earlier copies, carried over by hand-backs.
    pub unsettled_before: u64,
    /// `x-defer-count`: deferrals so far.
    pub defer_count: u64,
    /// `x-requeue-count`: times an operator requeued the task from the DLQ.
    pub requeue_count: u64,
    /// `x-first-failure-at`, ms since the epoch.
    pub first_failure_at: Option<u64>,
    /// Delay scheduled before this (retried) delivery, ms.
    pub scheduled_delay_ms: Option<u64>,
    /// How long this retried delivery really waited, ms.
    pub observed_delay_ms: Option<u64>,
    /// How the attempt ran, once it has (for its events and metrics).
    pub report: Option<crate::report::NodeReport>,
    /// The trace context the task was published under (its parent).
    pub parent: Option<TraceContext>,
    /// This attempt's own span context (set when its span starts).
    pub trace: Option<TraceContext>,
}

impl Default for DeliveryMeta {
    fn default() -> Self {
        Self {
            bookkeeping: Ok(Trust::Fresh),
            retry_count: 0,
            delivery_count: 0,
            unsettled_before: 0,
            defer_count: 0,
            requeue_count: 0,
            first_failure_at: None,
            scheduled_delay_ms: None,
            observed_delay_ms: None,
            report: None,
            parent: None,
            trace: None,
        }
    }
}

impl DeliveryMeta {
    /// Deliveries of this task that ended without settlement, over all its copies.
    pub fn unsettled_total(&self) -> u64 {
        self.delivery_count.saturating_add(self.unsettled_before)
    }

    /// Whether an earlier delivery of this task was never settled: it may have killed the
    /// worker that ran it.
    pub fn is_suspect(&self) -> bool {
        self.unsettled_total() > 0
    }

    /// Whether the bookkeeping headers are read as written.
    pub fn believed(&self) -> bool {
        self.bookkeeping.as_ref().is_ok_and(|t| t.believed())
    }

    /// Reads the counters and retry timing from `delivery`. Bookkeeping headers count only
    /// when their signature verifies with `keyring` (or signing is disabled: `None`).
    pub fn read(delivery: &Delivery, keyring: Option<&Keyring>) -> Self {
        let headers = delivery.properties.headers().as_ref();
        let message_id = delivery
            .properties
            .message_id()
            .as_ref()
            .map(|m| m.as_str())
            .unwrap_or_default();
        let bookkeeping = bookkeeping::verify(keyring, headers, message_id);
        let mut meta = Self {
            delivery_count: h::get_u64(headers, h::DELIVERY_COUNT).unwrap_or(0),
            // Covered by the task signature, which the worker checks before it runs the task.
            parent: TraceContext::from_headers(headers),
            ..Self::default()
        };
        if bookkeeping.as_ref().is_ok_and(|t| t.believed()) {
            let published = h::get_u64(headers, h::RETRY_PUBLISHED_AT);
            meta.retry_count = h::get_u64(headers, h::RETRY_COUNT).unwrap_or(0);
            meta.unsettled_before = h::get_u64(headers, h::UNSETTLED_BEFORE).unwrap_or(0);
            meta.defer_count = h::get_u64(headers, h::DEFER_COUNT).unwrap_or(0);
            meta.requeue_count = h::get_u64(headers, h::REQUEUE_COUNT).unwrap_or(0);
            meta.first_failure_at = h::get_u64(headers, h::FIRST_FAILURE_AT);
            meta.scheduled_delay_ms = h::get_u64(headers, h::SCHEDULED_DELAY_MS);
            meta.observed_delay_ms = published.map(|p| now_ms().saturating_sub(p));
        }
        meta.bookkeeping = bookkeeping;
        meta
    }
}
