//! The labels the operator puts on its children and the load-test runner selects by.

/// Label naming the OutboxSystem a child belongs to.
pub const SYSTEM: &str = "outbox.dev/system";
/// Label naming the consumer group of a consumer child.
pub const GROUP: &str = "outbox.dev/group";
/// Label naming the role: [`PRODUCER`], [`CONSUMER`] or [`LOADTEST`].
pub const COMPONENT: &str = "app.kubernetes.io/component";
/// Label naming the LoadTest a runner Job and its pod belong to.
pub const LOADTEST_NAME: &str = "outbox.dev/loadtest";
/// Label naming the program (`outbox-worker`).
pub const NAME: &str = "app.kubernetes.io/name";
/// Label naming the OutboxSystem, as the common Kubernetes labels do.
pub const INSTANCE: &str = "app.kubernetes.io/instance";
/// Label naming the operator as the manager of a child.
pub const MANAGED_BY: &str = "app.kubernetes.io/managed-by";

/// Every label the operator sets on its children and their pods. Deployment and
/// PodDisruptionBudget selectors, Services and the load-test runner select by them, so
/// a user's pod labels may not set them: the CRDs refuse such labels at admission, and
/// the builders put the operator's values over any that got through.
pub const RESERVED: [&str; 7] = [
    NAME,
    INSTANCE,
    MANAGED_BY,
    COMPONENT,
    SYSTEM,
    GROUP,
    LOADTEST_NAME,
];

/// [`COMPONENT`] of the producer Deployment and its pods.
pub const PRODUCER: &str = "producer";
/// [`COMPONENT`] of the consumer Deployments and their pods.
pub const CONSUMER: &str = "consumer";
/// [`COMPONENT`] of a LoadTest's runner Job.
pub const LOADTEST: &str = "loadtest";

/// The selector of every consumer pod of `system`.
pub fn consumers_of(system: &str) -> String {
    format!("{SYSTEM}={system},{COMPONENT}={CONSUMER}")
}

/// The selector of every producer and consumer pod of `system`.
pub fn workers_of(system: &str) -> String {
    format!("{SYSTEM}={system},{COMPONENT} in ({PRODUCER},{CONSUMER})")
}

/// [`MANAGED_BY`] of the operator's children: the operator watches only children that
/// carry it.
pub const OPERATOR: &str = "outbox-operator";

/// The selector of every child the operator made (Deployments, Services, ConfigMaps,
/// Jobs): what its watches on those kinds ask the API server for.
pub fn operator_children() -> String {
    format!("{MANAGED_BY}={OPERATOR}")
}
