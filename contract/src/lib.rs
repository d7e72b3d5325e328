//! The contract between the outbox operator and its workers, in one place so that a
//! renamed setting or condition cannot compile on one side only:
//!
//! - [`crd`]: the `outbox.dev/v1alpha1` custom resources (OutboxSystem, LoadTest);
//! - [`worker_env`]: each worker role's settings as the operator renders them into the
//!   environment and the worker reads them back, with one set of defaults;
//! - [`conditions`], [`field_managers`] and [`status_apply`]: who writes which status,
//!   under which name, and how (server-side apply, conditions merged one way);
//! - [`probes`], [`http`] and [`labels`]: the paths, headers and labels both sides use;
//! - [`schema_owner`]: the record of which system holds an outbox schema;
//! - [`loadtest_report`]: the ConfigMap a run leaves its HTML report in;
//! - [`postgres_tls`]: `sslmode`/`sslrootcert` handling for every PostgreSQL session;
//! - [`termination`]: how both binaries learn that their pod is going.

pub mod conditions;
pub mod crd;
pub mod field_managers;
pub mod http;
pub mod labels;
pub mod loadtest_report;
pub mod postgres_tls;
pub mod probes;
pub mod schema_owner;
pub mod status_apply;
pub mod termination;
pub mod worker_env;
