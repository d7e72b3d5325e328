//! What every reconcile gets: the client, the event recorder, metrics and settings.

use kube::runtime::events::{Event, EventType, Recorder, Reporter};
use kube::{Client, Resource};

use crate::metrics::Metrics;

/// Settings of the operator that reconciles read.
#[derive(Debug, Clone)]
pub struct Settings {
    /// ServiceAccount the load-test runner Jobs run as.
    pub loadtest_service_account: String,
    /// How often a healthy OutboxSystem is re-read to refresh lag and backlog.
    pub status_refresh: std::time::Duration,
    /// How long the oldest pending message may wait before delivery counts as stalled.
    pub stall_after: std::time::Duration,
    /// How long the operator keeps trying to delete a `deletionPolicy: Delete` topic
    /// (Kafka or its client Secret gone) before it lets the OutboxSystem go and leaves
    /// the topic behind, with a Warning Event naming it.
    pub topic_deletion_timeout: std::time::Duration,
    /// The image (and its pull policy) of producers, consumers and load-test runners
    /// whose OutboxSystem or LoadTest names none.
    pub worker_image: crate::workloads::WorkerImage,
    /// The repositories a spec's images must come from (empty: any).
    pub image_policy: crate::image_policy::ImagePolicy,
}

impl Default for Settings {
    fn default() -> Self {
        Settings {
            loadtest_service_account: "outbox-loadtest".to_string(),
            status_refresh: std::time::Duration::from_secs(30),
            stall_after: std::time::Duration::from_secs(120),
            topic_deletion_timeout: std::time::Duration::from_secs(300),
            worker_image: crate::workloads::WorkerImage::default(),
            image_policy: crate::image_policy::ImagePolicy::default(),
        }
    }
}

/// Shared state of both controllers.
#[derive(Clone)]
pub struct Context {
    /// When each OutboxSystem's status (by uid) was last written, to pace gauge updates.
    pub status_writes:
        std::sync::Arc<std::sync::Mutex<std::collections::HashMap<String, std::time::Instant>>>,
    /// Kubernetes client.
    pub client: Client,
    /// Publishes Events.
    pub recorder: Recorder,
    /// Prometheus metrics.
    pub metrics: Metrics,
    /// Operator settings.
    pub settings: Settings,
    /// The leader election, when enabled: reconciles act only while it says so.
    pub leader: Option<std::sync::Arc<crate::leader::Elector>>,
}

/// Field manager of every server-side apply, and the Events' reporting controller.
pub const MANAGER: &str = outbox_contract::field_managers::OPERATOR;

impl Context {
    /// A context for `client`.
    pub fn new(client: Client, metrics: Metrics, settings: Settings) -> Self {
        let reporter = Reporter {
            controller: MANAGER.to_string(),
            instance: std::env::var("POD_NAME").ok(),
        };
        Context {
            status_writes: Default::default(),
            recorder: Recorder::new(client.clone(), reporter),
            client,
            metrics,
            settings,
            leader: None,
        }
    }

    /// Reconciles act only while `leader` says this replica leads.
    pub fn with_leader(mut self, leader: Option<std::sync::Arc<crate::leader::Elector>>) -> Self {
        self.leader = leader;
        self
    }

    /// False when leader election is on and this replica's leadership has lapsed (a
    /// renewal missed its deadline): the reconcile must not act.
    pub fn may_act(&self) -> bool {
        self.leader.as_ref().is_none_or(|l| l.leading())
    }
}

/// Publishes a Kubernetes Event about `object`; a failure to publish is logged, never
/// fatal to the reconcile.
pub async fn publish_event<K: Resource<DynamicType = ()>>(
    ctx: &Context,
    object: &K,
    type_: EventType,
    reason: &str,
    note: String,
) {
    let event = Event {
        type_,
        reason: reason.to_string(),
        note: Some(note),
        action: "Reconcile".to_string(),
        secondary: None,
    };
    if let Err(error) = ctx.recorder.publish(&event, &object.object_ref(&())).await {
        tracing::warn!(%error, reason, "could not publish an Event");
    }
}
