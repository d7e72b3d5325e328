//! Prometheus metrics of the operator: its reconciles (`outbox_operator_*`) and the last
//! result of each LoadTest (`outbox_loadtest_*`, [`crate::loadtest_metrics`]).

use std::sync::Arc;
use std::time::Instant;

use kube::runtime::reflector::Store;
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::histogram::{exponential_buckets, Histogram};
use prometheus_client::registry::Registry;

use crate::crd::LoadTest;
use crate::error::Error;
use crate::loadtest_metrics::LoadTestCollector;

/// Labels of the per-controller metrics.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ControllerLabels {
    /// `outboxsystem` or `loadtest`.
    pub controller: String,
}

/// Labels of the error counter.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ErrorLabels {
    /// `outboxsystem` or `loadtest`.
    pub controller: String,
    /// The error variant ([`Error::metric_label`]).
    pub error: String,
}

/// The operator's metrics, shared by both controllers.
#[derive(Clone)]
pub struct Metrics {
    /// Reconciles started.
    pub reconciles: Family<ControllerLabels, Counter>,
    /// Reconciles that failed, by error variant.
    pub errors: Family<ErrorLabels, Counter>,
    /// Reconcile durations in seconds.
    pub durations: Family<ControllerLabels, Histogram>,
    /// The LoadTests' results, once [`Metrics::serve_loadtests`] gave it their store.
    loadtests: LoadTestCollector,
    registry: Arc<Registry>,
}

impl Default for Metrics {
    fn default() -> Self {
        let reconciles = Family::<ControllerLabels, Counter>::default();
        let errors = Family::<ErrorLabels, Counter>::default();
        let durations = Family::<ControllerLabels, Histogram>::new_with_constructor(
            new_duration_histogram as fn() -> Histogram,
        );
        let mut registry = Registry::default();
        let operator = registry.sub_registry_with_prefix("outbox_operator");
        operator.register("reconciliations", "Reconciles started", reconciles.clone());
        operator.register(
            "reconciliation_errors",
            "Reconciles that failed, by error",
            errors.clone(),
        );
        operator.register(
            "reconcile_duration_seconds",
            "Time a reconcile took",
            durations.clone(),
        );
        // Named `outbox_loadtest_*`, outside the operator's prefix: they describe the
        // LoadTests, not the operator.
        let loadtests = LoadTestCollector::default();
        registry.register_collector(Box::new(loadtests.clone()));
        Metrics {
            reconciles,
            errors,
            durations,
            loadtests,
            registry: Arc::new(registry),
        }
    }
}

fn new_duration_histogram() -> Histogram {
    Histogram::new(exponential_buckets(0.01, 2.0, 12))
}

impl Metrics {
    /// Counts a reconcile of `controller` and times it until the guard drops.
    pub fn reconcile_started(&self, controller: &str) -> ReconcileTimer {
        let labels = ControllerLabels {
            controller: controller.to_string(),
        };
        self.reconciles.get_or_create(&labels).inc();
        ReconcileTimer {
            start: Instant::now(),
            labels,
            metrics: self.clone(),
        }
    }

    /// Counts a failed reconcile.
    pub fn reconcile_failed(&self, controller: &str, error: &Error) {
        self.errors
            .get_or_create(&ErrorLabels {
                controller: controller.to_string(),
                error: error.metric_label().to_string(),
            })
            .inc();
    }

    /// Serves the last result of every LoadTest in `store` (the LoadTest controller's
    /// reflector store) from now on, read at each scrape. The first store given stays.
    pub fn serve_loadtests(&self, store: Store<LoadTest>) {
        if !self.loadtests.serve(store) {
            tracing::warn!("LoadTest metrics already read from another store; keeping that one");
        }
    }

    /// The text exposition of every metric.
    pub fn encode(&self) -> Result<String, std::fmt::Error> {
        let mut out = String::new();
        prometheus_client::encoding::text::encode(&mut out, &self.registry)?;
        Ok(out)
    }
}

/// Observes the reconcile duration when dropped.
pub struct ReconcileTimer {
    start: Instant,
    labels: ControllerLabels,
    metrics: Metrics,
}

impl Drop for ReconcileTimer {
    fn drop(&mut self) {
        self.metrics
            .durations
            .get_or_create(&self.labels)
            .observe(self.start.elapsed().as_secs_f64());
    }
}
