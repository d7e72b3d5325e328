//! Prometheus metrics of each role, served at `/metrics`.

use std::sync::Arc;

use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use prometheus_client::encoding::text::encode;
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{exponential_buckets, Histogram};
use prometheus_client::registry::Registry;

/// Producer service and relay metrics.
#[derive(Debug, Default, Clone)]
pub struct ProducerMetrics {
    pub accepted: Counter,
    pub rejected: Counter,
    pub unavailable: Counter,
    pub unknown: Counter,
    pub busy: Counter,
    pub backlogged: Counter,
    pub body_memory_full: Counter,
    pub replayed: Counter,
    pub retention_deleted: Counter,
    pub retention_rounds: Counter,
    pub published: Counter,
    pub quarantined: Counter,
    pub relay_reads: Counter,
    pub relay_errors: Counter,
    pub relay_leader: Gauge,
    pub backlog_pending: Gauge,
    pub backlog_oldest_age_seconds: Gauge<f64, std::sync::atomic::AtomicU64>,
    pub request_durations: RequestDurations,
}

/// The `route` label of the request latency: `send` or `batch`.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RouteLabels {
    pub route: &'static str,
}

/// The time the ingest endpoints took to answer, by route: from 0.5 ms to 16 s in
/// doubling buckets, so that one request alone and a full batch under load both land
/// inside the range.
#[derive(Debug, Clone)]
pub struct RequestDurations(Family<RouteLabels, Histogram, fn() -> Histogram>);

impl Default for RequestDurations {
    fn default() -> Self {
        fn buckets() -> Histogram {
            Histogram::new(exponential_buckets(0.0005, 2.0, 16))
        }
        RequestDurations(Family::new_with_constructor(buckets))
    }
}

impl RequestDurations {
    /// The histogram of `route`.
    pub fn route(&self, route: &'static str) -> Histogram {
        self.0.get_or_create(&RouteLabels { route }).clone()
    }
}

impl ProducerMetrics {
    /// Registers every metric under `outbox_`.
    pub fn register(&self, registry: &mut Registry) {
        let r = registry.sub_registry_with_prefix("outbox");
        self.register_requests(r);
        self.register_retention(r);
        self.register_relay(r);
        self.register_backlog(r);
        r.register(
            "request_duration_seconds",
            "Time the ingest endpoints took to answer, by route (send, batch), refusals included",
            self.request_durations.0.clone(),
        );
    }

    /// The HTTP service's outcomes: messages accepted, requests refused and replayed.
    fn register_requests(&self, r: &mut Registry) {
        r.register(
            "messages_accepted",
            "Messages stored in the outbox (2xx answered)",
            self.accepted.clone(),
        );
        r.register(
            "requests_rejected",
            "Requests refused for bad input (4xx)",
            self.rejected.clone(),
        );
        r.register(
            "requests_unavailable",
            "Requests refused because PostgreSQL failed (503)",
            self.unavailable.clone(),
        );
        r.register(
            "requests_outcome_unknown",
            "Requests whose connection was lost while committing (500, maybe stored)",
            self.unknown.clone(),
        );
        r.register(
            "requests_busy",
            "Requests refused because MAX_CONCURRENT_REQUESTS were in progress (503)",
            self.busy.clone(),
        );
        r.register(
            "requests_backlogged",
            "Requests refused because the backlog was at MAX_BACKLOG_MESSAGES (429)",
            self.backlogged.clone(),
        );
        r.register(
            "requests_body_memory_full",
            "Requests refused because request bodies in memory were at BODY_MEMORY_KBYTES (429)",
            self.body_memory_full.clone(),
        );
        r.register(
            "requests_replayed",
            "Requests whose Idempotency-Key had already stored their messages (answered with the first ids)",
            self.replayed.clone(),
        );
    }

    /// The retention of relayed rows: rows deleted, rounds run.
    fn register_retention(&self, r: &mut Registry) {
        r.register(
            "retention_deleted",
            "Relayed outbox rows deleted by retention",
            self.retention_deleted.clone(),
        );
        r.register(
            "retention_rounds",
            "Retention rounds this replica ran to the end (holding the retention lock)",
            self.retention_rounds.clone(),
        );
    }

    /// The relay: rows quarantined, messages and batches published, restarts, leadership.
    fn register_relay(&self, r: &mut Registry) {
        r.register(
            "relay_quarantined",
            "Rows the relay could not publish (refused by Kafka for good, or for a topic it does not relay to), moved to outbox_quarantine and skipped",
            self.quarantined.clone(),
        );
        r.register(
            "relay_published",
            "Messages the relay published and Kafka confirmed",
            self.published.clone(),
        );
        r.register(
            "relay_reads",
            "Relay reads whose every row Kafka confirmed",
            self.relay_reads.clone(),
        );
        r.register(
            "relay_errors",
            "Relay restarts after an error",
            self.relay_errors.clone(),
        );
        r.register(
            "relay_leader",
            "1 while this instance holds the relay lock",
            self.relay_leader.clone(),
        );
    }

    /// The backlog the relay has yet to publish, read every 10 s.
    fn register_backlog(&self, r: &mut Registry) {
        r.register(
            "backlog_pending",
            "Outbox rows not yet relayed (counted up to 1,000,000), read every 10 s",
            self.backlog_pending.clone(),
        );
        r.register(
            "backlog_oldest_age_seconds",
            "Age of the oldest outbox row not yet relayed (0 when none), read every 10 s",
            self.backlog_oldest_age_seconds.clone(),
        );
    }
}

/// Consumer metrics.
#[derive(Debug, Default, Clone)]
pub struct ConsumerMetrics {
    pub consumed: Counter,
    pub acknowledged: Counter,
    pub duplicates: Counter,
    pub out_of_order: Counter,
    pub retried: Counter,
    pub retrying: Gauge,
    pub dead_lettered: Counter,
    pub abandoned: Counter,
    pub lag: Gauge,
}

impl ConsumerMetrics {
    /// Registers every metric under `outbox_consumer_`.
    pub fn register(&self, registry: &mut Registry) {
        let r = registry.sub_registry_with_prefix("outbox_consumer");
        r.register(
            "consumed",
            "Messages received from Kafka",
            self.consumed.clone(),
        );
        r.register(
            "acknowledged",
            "Messages acknowledged for the first time",
            self.acknowledged.clone(),
        );
        r.register(
            "duplicates",
            "Redelivered messages (already acknowledged)",
            self.duplicates.clone(),
        );
        r.register(
            "out_of_order",
            "Messages that arrived before an earlier message of their key",
            self.out_of_order.clone(),
        );
        r.register(
            "retried",
            "Processing attempts that failed and will be retried",
            self.retried.clone(),
        );
        r.register(
            "retrying",
            "1 while a batch is being retried (forever when max retries is -1)",
            self.retrying.clone(),
        );
        r.register(
            "dead_lettered",
            "Messages sent to the dead-letter topic",
            self.dead_lettered.clone(),
        );
        r.register(
            "abandoned",
            "Messages given up on that the dead-letter topic refused too (too large, or no such topic): recorded in the ledger as abandoned, then skipped",
            self.abandoned.clone(),
        );
        r.register(
            "lag",
            "Messages in the assigned partitions not yet consumed",
            self.lag.clone(),
        );
    }
}

/// Renders a registry in the OpenMetrics text format.
pub fn render(registry: &Arc<Registry>) -> Response {
    let mut body = String::new();
    match encode(&mut body, registry) {
        Ok(()) => (
            [(
                header::CONTENT_TYPE,
                "application/openmetrics-text; version=1.0.0; charset=utf-8",
            )],
            body,
        )
            .into_response(),
        Err(e) => (
            StatusCode::INTERNAL_SERVER_ERROR,
            format!("encoding metrics: {e}"),
        )
            .into_response(),
    }
}
