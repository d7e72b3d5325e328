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

/// How long a readiness answer is believed: a check or a request that reached the
/// database.
pub const READINESS_MAX_AGE: std::time::Duration = std::time::Duration::from_secs(5);

/// Readiness that costs the database at most one check per [`READINESS_MAX_AGE`],
/// however often it is probed: a request that reached the database recently answers
/// it without a check; otherwise one check runs at a time and its answer is reused
/// until it is that old.
#[derive(Debug)]
pub struct CachedReadiness<E> {
    max_age: std::time::Duration,
    /// When a real request last reached the database.
    last_success: std::sync::Mutex<Option<tokio::time::Instant>>,
    last_check: tokio::sync::Mutex<Option<(tokio::time::Instant, Result<(), E>)>>,
}

impl<E: Clone> Default for CachedReadiness<E> {
    fn default() -> Self {
        CachedReadiness::new(READINESS_MAX_AGE)
    }
}

impl<E: Clone> CachedReadiness<E> {
    pub fn new(max_age: std::time::Duration) -> Self {
        CachedReadiness {
            max_age,
            last_success: std::sync::Mutex::new(None),
            last_check: tokio::sync::Mutex::new(None),
        }
    }

    /// A real request reached the database just now.
    pub fn reached(&self) {
        if let Ok(mut last) = self.last_success.lock() {
            *last = Some(tokio::time::Instant::now());
        }
    }

    fn fresh(&self, at: tokio::time::Instant) -> bool {
        at.elapsed() < self.max_age
    }

    /// Whether the database answers: from a recent request or check, else from `check`.
    pub async fn answer<F, Fut>(&self, check: F) -> Result<(), E>
    where
        F: FnOnce() -> Fut,
        Fut: std::future::Future<Output = Result<(), E>>,
    {
        let recent_request = self
            .last_success
            .lock()
            .ok()
            .and_then(|last| *last)
            .is_some_and(|at| self.fresh(at));
        if recent_request {
            return Ok(());
        }
        let mut last = self.last_check.lock().await;
        if let Some((at, result)) = last.as_ref() {
            if self.fresh(*at) {
                return result.clone();
            }
        }
        let result = check().await;
        *last = Some((tokio::time::Instant::now(), result.clone()));
        result
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::AtomicUsize;

    /// `probes` concurrent readiness answers, counting the checks in `checks`.
    async fn probe_many(
        readiness: &Arc<CachedReadiness<&'static str>>,
        checks: &Arc<AtomicUsize>,
        probes: usize,
    ) -> Vec<Result<(), &'static str>> {
        let mut answers = Vec::new();
        for _ in 0..probes {
            let (readiness, checks) = (readiness.clone(), checks.clone());
            answers.push(tokio::spawn(async move {
                readiness
                    .answer(|| async move {
                        checks.fetch_add(1, Ordering::SeqCst);
                        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
                        Err("database unreachable")
                    })
                    .await
            }));
        }
        let mut results = Vec::new();
        for answer in answers {
            results.push(answer.await.expect("probe"));
        }
        results
    }

    #[tokio::test(start_paused = true)]
    async fn many_readiness_probes_cause_at_most_one_database_check_per_interval() {
        let readiness = Arc::new(CachedReadiness::new(std::time::Duration::from_secs(5)));
        let checks = Arc::new(AtomicUsize::new(0));
        let answers = probe_many(&readiness, &checks, 100).await;
        assert!(answers.iter().all(|a| *a == Err("database unreachable")));
        assert_eq!(checks.load(Ordering::SeqCst), 1);
        tokio::time::advance(std::time::Duration::from_secs(4)).await;
        probe_many(&readiness, &checks, 100).await;
        assert_eq!(
            checks.load(Ordering::SeqCst),
            1,
            "checked again within the interval"
        );
        tokio::time::advance(std::time::Duration::from_secs(2)).await;
        probe_many(&readiness, &checks, 100).await;
        assert_eq!(checks.load(Ordering::SeqCst), 2);
    }

    #[tokio::test(start_paused = true)]
    async fn a_request_that_reached_the_database_answers_readiness_without_a_check() {
        let readiness = Arc::new(CachedReadiness::new(std::time::Duration::from_secs(5)));
        let checks = Arc::new(AtomicUsize::new(0));
        readiness.reached();
        let answers = probe_many(&readiness, &checks, 10).await;
        assert!(answers.iter().all(Result::is_ok));
        assert_eq!(checks.load(Ordering::SeqCst), 0);
        tokio::time::advance(std::time::Duration::from_secs(6)).await;
        let answers = probe_many(&readiness, &checks, 10).await;
        assert!(answers.iter().all(Result::is_err));
        assert_eq!(checks.load(Ordering::SeqCst), 1);
    }

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
