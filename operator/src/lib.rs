//! The outbox operator: custom resource types and their reconcilers.
//!
//! `crd` holds the `outbox.dev/v1alpha1` types (also used by the load-test runner in
//! `workers/`); `system_controller` and `loadtest_controller` reconcile them; `run`
//! starts both.

pub mod backlog;
pub mod conditions;
pub mod context;
pub mod crd;
pub mod error;
pub mod kafka;
pub mod leader;
pub mod loadtest_controller;
pub mod metrics;
pub mod postgres_tls;
pub mod run;
pub mod runner_job;
pub mod schema_owner;
pub mod server;
pub mod service_names;
pub mod status_write;
pub mod system_controller;
pub mod system_status;
pub mod validation;
pub mod workloads;

pub use context::{Context, Settings};
pub use error::{Error, Result};
pub use run::{run, Scope};
