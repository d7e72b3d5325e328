//! The outbox operator: the reconcilers of the custom resources.
//!
//! The types it shares with the workers (`crd`, `postgres_tls`, `schema_owner`, the
//! workers' settings) live in the `outbox-contract` crate and are re-exported here;
//! `system_controller` and `loadtest_controller` reconcile them; `run` starts both.

pub mod backlog;
pub mod context;
pub mod error;
pub mod host_names;
pub mod image_policy;
pub mod kafka;
pub mod leader;
pub mod loadtest_controller;
pub mod loadtest_metrics;
pub mod metrics;
pub mod run;
pub mod runner_job;
pub mod server;
pub mod server_side_apply;
pub mod system_controller;
pub mod system_status;
#[cfg(test)]
mod test_fixtures;
pub mod topic_ownership;
pub mod validation;
pub mod workloads;

pub use outbox_contract::{conditions, crd, postgres_tls, schema_owner};

pub use context::{Context, Settings};
pub use error::{Error, Result};
pub use run::{run, Scope};
