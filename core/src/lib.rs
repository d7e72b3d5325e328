//! What every program on the data path shares: the error type, PostgreSQL sessions and
//! the schema's migrations, the acknowledgement ledger's layout and read side, CPU
//! accounting, shutdown, and passwords kept out of logs.
//!
//! The producer and the consumer (`outbox-workers`) and the load-test runner
//! (`outbox-loadtest`) depend on this crate; it depends on none of them.

pub mod cpu;
pub mod db;
pub mod error;
pub mod ledger;
pub mod redact;
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
