//! Server-side apply field managers: each writer owns its own fields of an object.

/// The operator (children of an OutboxSystem, its status, its part of a LoadTest's).
pub const OPERATOR: &str = "outbox-operator";
/// The load-test runner (its part of a LoadTest's status).
pub const RUNNER: &str = "outbox-loadtest-runner";

/// Runner `index` of a LoadTest with `parallelism` above 1: its own line of
/// `status.runners` and its own segment in the report ConfigMap. One manager per
/// runner, so that one runner's apply never removes another's line.
pub fn runner_line(index: i32) -> String {
    format!("{RUNNER}-{index}")
}
