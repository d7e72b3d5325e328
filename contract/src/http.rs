//! Headers of the producers' HTTP API that the load-test runner relies on.

/// Names a request for the producer's at-most-once store: a retry with the same key
/// gets the first request's ids and stores nothing again.
pub const IDEMPOTENCY_KEY: &str = "Idempotency-Key";
