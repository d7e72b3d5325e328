//! The producer (HTTP ingest into a PostgreSQL outbox and a relay to Kafka), the
//! consumer (a consumer-group member acknowledging into the ledger) and the benchmark
//! that times them against raw baselines. The `outbox-worker` binary runs them, and the
//! load-test runner (`outbox-loadtest`) as its `loadtest` subcommand.
//!
//! What they share with the runner (errors, database sessions, the schema, the ledger's
//! read side, CPU accounting, shutdown) is `outbox-core`, re-exported here under its
//! module names.

pub mod bench;
pub mod config;
pub mod consumer;
pub mod headers;
pub mod kafka;
pub mod kafka_watchdog;
pub mod message_size;
pub mod metrics;
pub mod probes;
pub mod producer;
#[cfg(test)]
mod role_settings_tests;

pub use outbox_core::{cpu, db, error, error_chain, ledger, redact, schema, shutdown};
pub use outbox_core::{Error, Result};
