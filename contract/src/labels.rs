//! The labels the operator puts on its children and the load-test runner selects by.

/// Label naming the OutboxSystem a child belongs to.
pub const SYSTEM: &str = "outbox.dev/system";
/// Label naming the consumer group of a consumer child.
pub const GROUP: &str = "outbox.dev/group";
/// Label naming the role: [`PRODUCER`], [`CONSUMER`] or [`LOADTEST`].
pub const COMPONENT: &str = "app.kubernetes.io/component";

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

/// Label every child of the operator carries, with value [`OPERATOR`]; the operator
/// watches only children that carry it.
pub const MANAGED_BY: &str = "app.kubernetes.io/managed-by";
/// [`MANAGED_BY`] of the operator's children.
pub const OPERATOR: &str = "outbox-operator";

/// The selector of every child the operator made (Deployments, Services, ConfigMaps,
/// Jobs): what its watches on those kinds ask the API server for.
pub fn operator_children() -> String {
    format!("{MANAGED_BY}={OPERATOR}")
}
