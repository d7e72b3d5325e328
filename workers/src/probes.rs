//! Kubernetes probe endpoints, the same on every role.
//!
//! - `/livez`: the process serves HTTP. Nothing outside the process fails it, so an
//!   outage of Kafka or PostgreSQL never gets a worker restarted (a restart cannot fix
//!   either, and it stops ingest).
//! - `/readyz`: the role can do its job: for a producer, ingest works (PostgreSQL
//!   answers and the schema is in place); Kafka only affects the relay, which waits for
//!   it and shows it in the health details and metrics.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde_json::json;

pub use outbox_operator::workloads::{LIVENESS_PATH, READINESS_PATH};

/// Set once the role finished starting (schema migrated, and so on).
#[derive(Debug, Clone, Default)]
pub struct Started(Arc<AtomicBool>);

impl Started {
    pub fn set(&self) {
        self.0.store(true, Ordering::Release);
    }

    pub fn get(&self) -> bool {
        self.0.load(Ordering::Acquire)
    }
}

/// The liveness answer.
pub async fn alive() -> Response {
    (StatusCode::OK, Json(json!({"status": "alive"}))).into_response()
}

/// A readiness answer: 200 when `problem` is `None`, else 503 naming it.
pub fn readiness(problem: Option<String>) -> Response {
    match problem {
        None => (StatusCode::OK, Json(json!({"status": "ready"}))).into_response(),
        Some(problem) => (
            StatusCode::SERVICE_UNAVAILABLE,
            Json(json!({"status": "not ready", "reason": problem})),
        )
            .into_response(),
    }
}
