//! Server-side apply field managers: each writer owns its own fields of an object.

/// The operator (children of an OutboxSystem, its status, its part of a LoadTest's).
pub const OPERATOR: &str = "outbox-operator";
/// The load-test runner (its part of a LoadTest's status).
pub const RUNNER: &str = "outbox-loadtest-runner";
