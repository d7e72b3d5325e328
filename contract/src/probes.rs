//! The HTTP paths the kubelet probes on every worker.

/// Liveness endpoint of every worker: the process serves HTTP (nothing outside it fails
/// it, so a Kafka or PostgreSQL outage never restarts a worker).
pub const LIVENESS_PATH: &str = "/livez";
/// Readiness endpoint of every worker: a producer is ready when ingest works
/// (PostgreSQL), a consumer once it has started.
pub const READINESS_PATH: &str = "/readyz";
