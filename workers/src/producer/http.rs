//! The producer's HTTP API: validation, ingest, health and metrics.

use std::collections::{BTreeMap, HashSet};
use std::sync::Arc;
use std::time::Duration;

use axum::body::{Body, Bytes};
use axum::extract::State;
use axum::http::{header, HeaderMap, StatusCode};
use axum::middleware::from_fn_with_state;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::Registry;
use rdkafka::producer::{FutureProducer, Producer};
use serde::Deserialize;
use serde_json::json;
use tokio::sync::Notify;

use crate::headers;
use crate::message_size::{self, TopicLimits};
use crate::metrics::ProducerMetrics;
use crate::probes::{self, Started};
use crate::producer::outbox::{self, NewMessage, StoreError, Stored};

use super::body;

/// What the handlers share.
#[derive(Clone)]
pub struct AppState {
    pub pool: deadpool_postgres::Pool,
    pub topics: Arc<HashSet<String>>,
    /// This producer's relay, woken when a batch is stored.
    pub wake: Arc<Notify>,
    /// Every relay, woken when a message sent alone is stored.
    pub waker: super::waker::RelayWaker,
    pub metrics: ProducerMetrics,
    pub registry: Arc<Registry>,
    pub kafka: FutureProducer,
    /// `MAX_BODY_BYTES` and `BODY_READ_TIMEOUT_MS`.
    pub body_limits: super::body::BodyLimits,
    /// The bytes of request bodies held at once (`BODY_MEMORY_KBYTES`).
    pub bodies: Arc<super::body::BodyBudget>,
    pub limits: Arc<TopicLimits>,
    /// Set once the schema is migrated: ingest works from then on.
    pub started: Started,
    /// Most messages per batch request.
    pub max_batch_messages: usize,
    /// Permits for send and batch requests in progress.
    pub in_progress: Arc<tokio::sync::Semaphore>,
    pub max_concurrent_requests: usize,
    /// `MAX_BACKLOG_MESSAGES` and the backlog's estimate.
    pub backlog: Arc<crate::producer::backpressure::BacklogBound>,
    /// The health answer, shared by concurrent requests.
    pub health: Arc<probes::CachedCheck>,
    /// The readiness answer: at most one database check per interval.
    pub readiness: Arc<probes::CachedReadiness<DatabaseDown>>,
    /// Ids for messages sent alone, from one reserved block at a time.
    pub single_ids: Arc<outbox::SingleIds>,
}

/// The router: `POST /api/messages/send`, `POST /api/messages/batch`,
/// `GET /api/messages/health` (details), `GET /livez`, `GET /readyz`, `GET /metrics`.
pub fn router(state: AppState) -> Router {
    let durations = state.metrics.request_durations.clone();
    Router::new()
        .route(
            "/api/messages/send",
            post(send).route_layer(from_fn_with_state(durations.route("send"), timed)),
        )
        .route(
            "/api/messages/batch",
            post(batch).route_layer(from_fn_with_state(durations.route("batch"), timed)),
        )
        .route("/api/messages/health", get(health))
        .route(probes::LIVENESS_PATH, get(probes::alive))
        .route(probes::READINESS_PATH, get(ready))
        .route("/metrics", get(metrics))
        .with_state(state)
}

/// Observes how long an ingest route took to answer in its histogram of
/// `outbox_request_duration_seconds{route}` (the layer's state).
async fn timed(
    State(histogram): State<Histogram>,
    request: axum::extract::Request,
    next: axum::middleware::Next,
) -> Response {
    let started = std::time::Instant::now();
    let response = next.run(request).await;
    histogram.observe(started.elapsed().as_secs_f64());
    response
}

/// One message as the API takes it.
#[derive(Debug, Deserialize)]
pub struct SendRequest {
    pub topic: String,
    pub message: String,
    #[serde(default)]
    pub key: Option<String>,
    #[serde(default)]
    pub headers: Option<BTreeMap<String, String>>,
}

/// Many messages, stored all or none.
#[derive(Debug, Deserialize)]
pub struct BatchRequest {
    pub messages: Vec<SendRequest>,
}

/// A refused request: status and a JSON body naming the problem.
#[derive(Debug)]
pub struct ApiError {
    status: StatusCode,
    message: String,
    field: Option<String>,
}

impl ApiError {
    fn bad(message: impl Into<String>, field: Option<String>) -> Self {
        ApiError {
            status: StatusCode::BAD_REQUEST,
            message: message.into(),
            field,
        }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let mut body = json!({"status": "rejected", "error": self.message});
        if let Some(field) = self.field {
            body["field"] = field.into();
        }
        (self.status, Json(body)).into_response()
    }
}

/// Refuses a content type other than JSON, before the body is read.
fn json_content_type(headers: &HeaderMap) -> Result<(), ApiError> {
    let content_type = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("");
    let mime = content_type
        .split(';')
        .next()
        .unwrap_or("")
        .trim()
        .to_ascii_lowercase();
    if mime != "application/json" {
        return Err(ApiError {
            status: StatusCode::UNSUPPORTED_MEDIA_TYPE,
            message: if content_type.is_empty() {
                "missing Content-Type: expected application/json".into()
            } else {
                format!("unsupported Content-Type `{content_type}`: expected application/json")
            },
            field: None,
        });
    }
    Ok(())
}

/// What a send or batch request brings: its idempotency key, its body and the
/// reservation of the body's bytes in memory, to be held until it is answered (the
/// messages parsed from the body take about as many bytes as the body).
struct Input {
    key: Option<String>,
    body: Bytes,
    held: body::BodyReservation,
}

/// A send or batch request let in ([`admission`]) and its [`input`] read; or the
/// answer, a refused request's body thrown away as it arrives.
async fn admitted(
    state: &AppState,
    headers: &HeaderMap,
    body: Body,
) -> Result<(tokio::sync::OwnedSemaphorePermit, Input), Response> {
    let permit = match admission(state) {
        Ok(permit) => permit,
        Err(refusal) => {
            body::discard(body.into_data_stream());
            return Err(refusal.answer(state));
        }
    };
    Ok((permit, input(state, headers, body).await?))
}

/// Checks the headers, then reads the body within its limits: a body that is too
/// large, too slow, or for which no memory is left is refused before it is read whole.
async fn input(state: &AppState, headers: &HeaderMap, body: Body) -> Result<Input, Response> {
    let key =
        match idempotency_key(headers).and_then(|key| json_content_type(headers).map(|()| key)) {
            Ok(key) => key,
            Err(e) => {
                state.metrics.rejected.inc();
                body::discard(body.into_data_stream());
                return Err(e.into_response());
            }
        };
    match body::read(headers, body, state.body_limits, &state.bodies).await {
        Ok((body, held)) => Ok(Input { key, body, held }),
        Err(e) => Err(body_refused(state, e)),
    }
}

/// The answer to a body that was not read: 413 too large, 408 too slow, 429 no memory
/// left for it now, 400 unreadable.
fn body_refused(state: &AppState, e: body::BodyError) -> Response {
    use body::{BodyError, BudgetRefusal};
    let status = match &e {
        BodyError::Budget(BudgetRefusal::Exhausted { .. }) => {
            state.metrics.body_memory_full.inc();
            tracing::debug!(error = %e, "refusing a request: request bodies at their memory bound");
            return (
                StatusCode::TOO_MANY_REQUESTS,
                [(header::RETRY_AFTER, "1")],
                Json(json!({"status": "busy", "error": format!("{e}: nothing was stored, retry after 1 s")})),
            )
                .into_response();
        }
        BodyError::TooLarge { .. } | BodyError::Budget(BudgetRefusal::LargerThanBudget { .. }) => {
            StatusCode::PAYLOAD_TOO_LARGE
        }
        BodyError::Timeout { .. } => StatusCode::REQUEST_TIMEOUT,
        BodyError::Unreadable(_) | BodyError::BadLength => StatusCode::BAD_REQUEST,
    };
    state.metrics.rejected.inc();
    ApiError {
        status,
        message: format!("{e}; nothing was stored"),
        field: None,
    }
    .into_response()
}

/// Parses JSON into `T` with the failing field's path in the error.
fn parse<T: serde::de::DeserializeOwned>(body: &[u8]) -> Result<T, ApiError> {
    let mut deserializer = serde_json::Deserializer::from_slice(body);
    let value: T = serde_path_to_error::deserialize(&mut deserializer).map_err(|e| {
        let path = e.path().to_string();
        let inner = e.into_inner();
        let field = (path != "." && !inner.is_syntax() && !inner.is_eof()).then_some(path);
        let message = if inner.is_syntax() || inner.is_eof() {
            format!("malformed JSON: {inner}")
        } else {
            match &field {
                Some(field) => format!("invalid field `{field}`: {inner}"),
                None => format!("invalid request: {inner}"),
            }
        };
        ApiError::bad(message, field)
    })?;
    deserializer
        .end()
        .map_err(|e| ApiError::bad(format!("malformed JSON: {e}"), None))?;
    Ok(value)
}

/// The request header that makes a retried request store nothing twice.
pub use outbox_contract::http::IDEMPOTENCY_KEY;

/// Longest idempotency key accepted.
const MAX_IDEMPOTENCY_KEY: usize = 255;

/// The request's `Idempotency-Key`: 1 to 255 visible ASCII characters, or none.
fn idempotency_key(headers: &HeaderMap) -> Result<Option<String>, ApiError> {
    let Some(value) = headers.get(IDEMPOTENCY_KEY) else {
        return Ok(None);
    };
    let bad = |why: &str| {
        ApiError::bad(
            format!("{IDEMPOTENCY_KEY}: {why}; nothing was stored"),
            Some(IDEMPOTENCY_KEY.into()),
        )
    };
    let key = value
        .to_str()
        .map_err(|_| bad("only visible ASCII characters are allowed"))?;
    if key.is_empty() || key.len() > MAX_IDEMPOTENCY_KEY {
        return Err(bad(&format!(
            "{} characters; 1 to {MAX_IDEMPOTENCY_KEY} are allowed",
            key.len()
        )));
    }
    if !key.bytes().all(|b| b.is_ascii_graphic()) {
        return Err(bad("only visible ASCII characters are allowed"));
    }
    Ok(Some(key.to_string()))
}

/// Checks one message: known topic, no reserved header names, no NUL (PostgreSQL text
/// cannot hold it), and no larger than the topic takes.
fn validate(
    request: SendRequest,
    state: &AppState,
    field_prefix: &str,
) -> Result<NewMessage, ApiError> {
    refuse_unknown_topic(&request.topic, &state.topics, field_prefix)?;
    refuse_nul(&request.message, || format!("{field_prefix}message"))?;
    if let Some(key) = &request.key {
        refuse_nul(key, || format!("{field_prefix}key"))?;
    }
    refuse_bad_headers(request.headers.as_ref(), field_prefix)?;
    refuse_oversized(&request, &state.limits, field_prefix)?;
    Ok(NewMessage {
        topic: request.topic,
        key: request.key,
        payload: request.message,
        headers: request.headers,
    })
}

/// 400 naming the topics this producer accepts when `topic` is not one of them.
fn refuse_unknown_topic(
    topic: &str,
    topics: &HashSet<String>,
    field_prefix: &str,
) -> Result<(), ApiError> {
    if !topics.contains(topic) {
        let mut known: Vec<&String> = topics.iter().collect();
        known.sort();
        let field = format!("{field_prefix}topic");
        return Err(ApiError::bad(
            format!(
                "{field}: unknown topic `{}`: this producer accepts {}",
                topic,
                known
                    .iter()
                    .map(|t| format!("`{t}`"))
                    .collect::<Vec<_>>()
                    .join(", ")
            ),
            Some(field),
        ));
    }
    Ok(())
}

/// 400 for a reserved header name or a NUL in a header, 413 when the headers alone are
/// larger than a message may be.
fn refuse_bad_headers(
    headers: Option<&BTreeMap<String, String>>,
    field_prefix: &str,
) -> Result<(), ApiError> {
    for (name, value) in headers.into_iter().flatten() {
        let field = || format!("{field_prefix}headers.{}", name.replace('\0', "\\u0000"));
        if headers::is_reserved(name) {
            let field = field();
            return Err(ApiError::bad(
                format!(
                    "{field}: header names starting with `{}` are reserved for the outbox's own headers",
                    headers::RESERVED_PREFIX
                ),
                Some(field),
            ));
        }
        refuse_nul(name, field)?;
        refuse_nul(value, field)?;
    }
    if let Some(headers) = headers {
        if let Some(problem) =
            message_size::refuse_headers(headers.iter().map(|(k, v)| (k.as_str(), v.as_str())))
        {
            let field = format!("{field_prefix}headers");
            return Err(ApiError {
                status: StatusCode::PAYLOAD_TOO_LARGE,
                message: format!("{field}: {problem}"),
                field: Some(field),
            });
        }
    }
    Ok(())
}

/// 413 when the message (payload, key and headers) is larger than its topic takes.
fn refuse_oversized(
    request: &SendRequest,
    limits: &TopicLimits,
    field_prefix: &str,
) -> Result<(), ApiError> {
    let size = message_size::record_size(
        &request.message,
        request.key.as_deref(),
        request
            .headers
            .iter()
            .flatten()
            .map(|(k, v)| (k.as_str(), v.as_str())),
    );
    let limit = limits.limit(&request.topic);
    if size > limit.bytes {
        let field = format!("{field_prefix}message");
        return Err(ApiError {
            status: StatusCode::PAYLOAD_TOO_LARGE,
            message: format!(
                "{field}: the message is {size} bytes (payload, key and headers) and topic `{}` takes at most {} bytes ({})",
                request.topic, limit.bytes, limit.reason()
            ),
            field: Some(field),
        });
    }
    Ok(())
}

/// 400 naming the field when `value` holds a NUL; the field name is only written out
/// then (this runs for every message of a batch).
fn refuse_nul(value: &str, field: impl FnOnce() -> String) -> Result<(), ApiError> {
    if value.contains('\0') {
        let field = field();
        return Err(ApiError::bad(
            format!(
                "{field}: contains a NUL character (\\u0000), which PostgreSQL text cannot store"
            ),
            Some(field),
        ));
    }
    Ok(())
}

fn unavailable(metrics: &ProducerMetrics, e: crate::Error) -> Response {
    metrics.unavailable.inc();
    tracing::warn!(error = %crate::error_chain(&e), "refusing a request: database unavailable");
    (
        StatusCode::SERVICE_UNAVAILABLE,
        [(header::RETRY_AFTER, "1")],
        // The error chain (host names, server messages) goes to the log, not to clients.
        Json(json!({"status": "unavailable", "error": "database unavailable: nothing was stored, retry after 1 s"})),
    )
        .into_response()
}

/// A permit to handle one more send or batch request, or the answer that refuses it
/// before its body is read: busy (`MAX_CONCURRENT_REQUESTS` in progress), starting (the
/// schema not migrated yet) or backlogged (`MAX_BACKLOG_MESSAGES` waiting, or the
/// outbox table at `MAX_BACKLOG_BYTES`).
fn admission(state: &AppState) -> Result<tokio::sync::OwnedSemaphorePermit, Refusal> {
    let permit = state
        .in_progress
        .clone()
        .try_acquire_owned()
        .map_err(|_| Refusal::Busy)?;
    if !state.started.get() {
        return Err(Refusal::Starting);
    }
    if let Some(exceeded) = state.backlog.exceeded() {
        return Err(Refusal::Backlogged(exceeded));
    }
    Ok(permit)
}

/// Why [`admission`] refused a request.
enum Refusal {
    Busy,
    Starting,
    Backlogged(crate::producer::backpressure::Exceeded),
}

impl Refusal {
    fn answer(self, state: &AppState) -> Response {
        match self {
            Refusal::Busy => busy(state),
            Refusal::Starting => starting(state),
            Refusal::Backlogged(exceeded) => backlogged(state, exceeded),
        }
    }
}

/// The answer when no permit is left: come back later, nothing was stored.
fn busy(state: &AppState) -> Response {
    state.metrics.busy.inc();
    (
        StatusCode::SERVICE_UNAVAILABLE,
        [(header::RETRY_AFTER, "1")],
        Json(json!({"status": "busy", "error": format!(
            "{} requests are already in progress (MAX_CONCURRENT_REQUESTS): nothing was stored, retry after 1 s",
            state.max_concurrent_requests
        )})),
    )
        .into_response()
}

/// Counts what was stored and wakes the relay (a message sent alone: the one that
/// leads, wherever it runs; a batch: this producer's, the others look on their next
/// poll); returns the ids and whether an earlier request with the same idempotency key
/// had stored them.
fn accepted(state: &AppState, stored: Stored, alone: bool) -> (Vec<i64>, bool) {
    match stored {
        Stored::New(ids) => {
            if alone {
                state.waker.wake();
            } else {
                state.wake.notify_one();
            }
            state.readiness.reached();
            state.metrics.accepted.inc_by(ids.len() as u64);
            state.backlog.accepted(ids.len() as u64);
            (ids, false)
        }
        Stored::Replayed(ids) => {
            state.readiness.reached();
            state.metrics.replayed.inc();
            (ids, true)
        }
    }
}

/// The answer before the schema is migrated: nothing was stored, come back shortly.
fn starting(state: &AppState) -> Response {
    state.metrics.unavailable.inc();
    (
        StatusCode::SERVICE_UNAVAILABLE,
        [(header::RETRY_AFTER, "1")],
        Json(json!({"status": "unavailable", "error": "starting: the outbox schema is not migrated yet (PostgreSQL unreachable or another replica migrating): nothing was stored, retry after 1 s"})),
    )
        .into_response()
}

/// The answer while the backlog is at its bound: come back later, nothing was stored.
fn backlogged(state: &AppState, exceeded: crate::producer::backpressure::Exceeded) -> Response {
    state.metrics.backlogged.inc();
    (
        StatusCode::TOO_MANY_REQUESTS,
        [(header::RETRY_AFTER, "1")],
        Json(json!({"status": "backlogged", "error": format!(
            "{exceeded}: nothing was stored, retry after 1 s"
        )})),
    )
        .into_response()
}

/// The answer to a failed write: 400 for data PostgreSQL refuses, 503 when nothing was
/// stored, 500 with `"status": "unknown"` when the connection was lost as it committed.
fn store_failed(metrics: &ProducerMetrics, e: StoreError) -> Response {
    match e {
        StoreError::NotStored(e) => unavailable(metrics, e),
        StoreError::Data { .. } => {
            metrics.rejected.inc();
            ApiError::bad(format!("{e}; nothing was stored"), None).into_response()
        }
        StoreError::KeyReused { .. } => {
            metrics.rejected.inc();
            ApiError {
                status: StatusCode::UNPROCESSABLE_ENTITY,
                message: format!("{e}; nothing was stored"),
                field: Some(IDEMPOTENCY_KEY.into()),
            }
            .into_response()
        }
        StoreError::Unknown(_) => {
            metrics.unknown.inc();
            tracing::error!(error = %crate::error_chain(&e), "lost PostgreSQL while committing: outcome unknown");
            (
                StatusCode::INTERNAL_SERVER_ERROR,
                Json(json!({"status": "unknown", "error": "the outcome is unknown: the connection to PostgreSQL was lost while storing, the message may or may not be stored; send it again with the same Idempotency-Key to find out without storing it twice"})),
            )
                .into_response()
        }
    }
}

async fn send(State(state): State<AppState>, headers: HeaderMap, body: Body) -> Response {
    let (_permit, Input { key, body, held }) = match admitted(&state, &headers, body).await {
        Ok(admitted) => admitted,
        Err(answer) => return answer,
    };
    let _held = held;
    let parsed = parse::<SendRequest>(&body).and_then(|r| validate(r, &state, ""));
    drop(body);
    let message = match parsed {
        Ok(message) => message,
        Err(e) => {
            state.metrics.rejected.inc();
            return e.into_response();
        }
    };
    let client = match state.pool.get().await {
        Ok(c) => c,
        Err(source) => {
            return unavailable(
                &state.metrics,
                crate::Error::Pool {
                    context: "getting a connection",
                    source,
                },
            )
        }
    };
    let stored = match key {
        None => outbox::insert_one(&client, &message, &state.single_ids)
            .await
            .map(|id| Stored::New(vec![id])),
        Some(key) => outbox::insert_one_once(&client, &message, &key, &state.single_ids).await,
    };
    match stored {
        Ok(stored) => {
            let (ids, replayed) = accepted(&state, stored, true);
            let mut body = json!({"status": "accepted", "id": ids.first(), "topic": message.topic});
            if replayed {
                body["replayed"] = true.into();
            }
            (StatusCode::OK, Json(body)).into_response()
        }
        Err(e) => store_failed(&state.metrics, e),
    }
}

async fn batch(State(state): State<AppState>, headers: HeaderMap, body: Body) -> Response {
    let (_permit, Input { key, body, held }) = match admitted(&state, &headers, body).await {
        Ok(admitted) => admitted,
        Err(answer) => return answer,
    };
    let _held = held;
    let parsed = parse::<BatchRequest>(&body);
    drop(body);
    let request = match parsed {
        Ok(r) => r,
        Err(e) => {
            state.metrics.rejected.inc();
            return e.into_response();
        }
    };
    if request.messages.is_empty() {
        state.metrics.rejected.inc();
        return ApiError::bad(
            "`messages` is empty: send at least one message",
            Some("messages".into()),
        )
        .into_response();
    }
    if request.messages.len() > state.max_batch_messages {
        state.metrics.rejected.inc();
        return ApiError {
            status: StatusCode::PAYLOAD_TOO_LARGE,
            message: format!(
                "messages: {} messages in one batch; at most {} per request (MAX_BATCH_MESSAGES): split the batch",
                request.messages.len(),
                state.max_batch_messages
            ),
            field: Some("messages".into()),
        }
        .into_response();
    }
    let mut messages = Vec::with_capacity(request.messages.len());
    for (i, m) in request.messages.into_iter().enumerate() {
        match validate(m, &state, &format!("messages[{i}].")) {
            Ok(m) => messages.push(m),
            Err(e) => {
                state.metrics.rejected.inc();
                return e.into_response();
            }
        }
    }
    let mut client = match state.pool.get().await {
        Ok(c) => c,
        Err(source) => {
            return unavailable(
                &state.metrics,
                crate::Error::Pool {
                    context: "getting a connection",
                    source,
                },
            )
        }
    };
    match outbox::insert_once(&mut client, &messages, key.as_deref()).await {
        Ok(stored) => {
            let (ids, replayed) = accepted(&state, stored, false);
            let mut body = json!({"status": "accepted", "count": ids.len(), "ids": ids});
            if replayed {
                body["replayed"] = true.into();
            }
            (StatusCode::OK, Json(body)).into_response()
        }
        Err(e) => store_failed(&state.metrics, e),
    }
}

/// Why PostgreSQL is taken for down, in words fit for an answer to anyone: the error
/// itself (host names, the driver's messages) is logged, never answered.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum DatabaseDown {
    #[error("database unreachable")]
    Unreachable,
    #[error("database failed a check query")]
    Failing,
    #[error("database did not answer within 3 s")]
    NoAnswer,
}

/// Whether PostgreSQL answers `SELECT 1` on a pooled session within 3 s; a failure is
/// logged whole and answered as a [`DatabaseDown`].
async fn database_state(pool: &deadpool_postgres::Pool) -> Result<(), DatabaseDown> {
    let checked = tokio::time::timeout(Duration::from_secs(3), async {
        let client = pool.get().await.map_err(|source| {
            tracing::warn!(error = %crate::error_chain(&source), "database check: no session");
            DatabaseDown::Unreachable
        })?;
        client.simple_query("SELECT 1").await.map_err(|source| {
            tracing::warn!(error = %crate::error_chain(&source), "database check: SELECT 1 failed");
            DatabaseDown::Failing
        })?;
        Ok(())
    })
    .await;
    checked.unwrap_or_else(|_| {
        tracing::warn!("database check: no answer within 3 s");
        Err(DatabaseDown::NoAnswer)
    })
}

/// Readiness: ingest works (schema migrated, PostgreSQL answers). Kafka is not asked.
/// A request that reached PostgreSQL within [`probes::READINESS_MAX_AGE`] answers it;
/// otherwise at most one check per that interval runs, however often it is probed.
async fn ready(State(state): State<AppState>) -> Response {
    if !state.started.get() {
        return probes::readiness(Some("waiting for PostgreSQL to migrate the schema".into()));
    }
    let pool = state.pool.clone();
    let answer = state
        .readiness
        .answer(|| async move { database_state(&pool).await })
        .await;
    probes::readiness(answer.err().map(|down| down.to_string()))
}

/// Details for people and dashboards: 200 while ingest works (status `UP`, or
/// `DEGRADED` when Kafka is down and messages wait in the outbox), 503 when it does not.
async fn health(State(state): State<AppState>) -> Response {
    let cache = state.health.clone();
    cache.answer(|| check_health(state)).await
}

async fn check_health(state: AppState) -> (StatusCode, serde_json::Value) {
    let database = match database_state(&state.pool).await {
        Ok(()) if !state.started.get() => "DOWN: the schema is not migrated yet".to_string(),
        Ok(()) => "UP".to_string(),
        Err(e) => format!("DOWN: {e}"),
    };
    let kafka = state.kafka.clone();
    let kafka = match tokio::task::spawn_blocking(move || {
        kafka.client().fetch_metadata(None, Duration::from_secs(3))
    })
    .await
    {
        Ok(Ok(_)) => "UP".to_string(),
        Ok(Err(e)) => format!("DOWN: {e}"),
        Err(e) => format!("DOWN: {e}"),
    };
    let (status, code) = match (database == "UP", kafka == "UP") {
        (true, true) => ("UP", StatusCode::OK),
        (true, false) => ("DEGRADED", StatusCode::OK),
        (false, _) => ("DOWN", StatusCode::SERVICE_UNAVAILABLE),
    };
    let relay_leader = state.metrics.relay_leader.get() == 1;
    (
        code,
        json!({"status": status, "database": database, "kafka": kafka, "relayLeader": relay_leader}),
    )
}

async fn metrics(State(state): State<AppState>) -> Response {
    crate::metrics::render(&state.registry)
}

#[cfg(test)]
#[path = "http_tests.rs"]
mod tests;
