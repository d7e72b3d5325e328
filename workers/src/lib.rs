//! Workers of the outbox system: the producer (HTTP ingest into a PostgreSQL outbox and
//! a relay to Kafka), the consumer (a consumer-group member acknowledging into a
//! ledger), the ledger's verification API for the load-test runner, and a benchmark.
//!
//! For the load-test runner: [`ledger::connect_and_migrate`], then
//! [`ledger::group_report`] for each consumer group over the [`ledger::IdSet`] of the
//! ids the send endpoints returned.

pub mod backpressure;
pub mod bench;
pub mod config;
pub mod consumer;
pub mod cpu;
pub mod db;
pub mod error;
pub mod headers;
pub mod kafka;
pub mod kafka_watchdog;
pub mod ledger;
pub mod loadtest;
pub mod memory;
pub mod message_size;
pub mod metrics;
pub mod outbox;
pub mod probes;
pub mod producer;
pub mod relay;
pub mod retention;
#[cfg(test)]
mod role_settings_tests;
pub mod schema;
pub mod shutdown;

pub use error::{Error, Result};

/// An error and its sources, `: `-joined, for one-line logs.
pub fn error_chain(error: &dyn std::error::Error) -> String {
    let mut text = error.to_string();
    let mut source = error.source();
    while let Some(e) = source {
        let s = e.to_string();
        if !text.contains(&s) {
            text.push_str(": ");
            text.push_str(&s);
        }
        source = e.source();
    }
    text
}
