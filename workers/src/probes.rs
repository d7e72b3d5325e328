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

pub use outbox_contract::probes::{LIVENESS_PATH, READINESS_PATH};

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

/// How long a health answer is reused.
pub const HEALTH_TTL: std::time::Duration = std::time::Duration::from_secs(2);

/// A health check run at most once at a time and at most once per [`HEALTH_TTL`]:
/// concurrent requests wait for the check in progress and share its answer, so a
/// flood of health requests costs one database session and one metadata request, not
/// one per request.
#[derive(Debug, Default)]
pub struct CachedCheck {
    last: tokio::sync::Mutex<Option<(std::time::Instant, StatusCode, serde_json::Value)>>,
}

impl CachedCheck {
    /// The answer of a check no older than [`HEALTH_TTL`], running `check` if none is.
    pub async fn answer<F, Fut>(&self, check: F) -> Response
    where
        F: FnOnce() -> Fut,
        Fut: std::future::Future<Output = (StatusCode, serde_json::Value)>,
    {
        let mut last = self.last.lock().await;
        if let Some((at, status, body)) = last.as_ref() {
            if at.elapsed() < HEALTH_TTL {
                return (*status, Json(body.clone())).into_response();
            }
        }
        let (status, body) = check().await;
        *last = Some((std::time::Instant::now(), status, body.clone()));
        (status, Json(body)).into_response()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::AtomicUsize;

    #[tokio::test]
    async fn concurrent_health_requests_share_one_check() {
        let cache = Arc::new(CachedCheck::default());
        let runs = Arc::new(AtomicUsize::new(0));
        let mut requests = Vec::new();
        for _ in 0..50 {
            let (cache, runs) = (cache.clone(), runs.clone());
            requests.push(tokio::spawn(async move {
                cache
                    .answer(|| async move {
                        runs.fetch_add(1, Ordering::SeqCst);
                        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
                        (StatusCode::OK, json!({"status": "UP"}))
                    })
                    .await
                    .status()
            }));
        }
        for r in requests {
            assert_eq!(r.await.expect("request"), StatusCode::OK);
        }
        assert_eq!(runs.load(Ordering::SeqCst), 1);
    }
}
