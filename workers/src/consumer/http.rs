//! The consumer's HTTP side: the health answer (PostgreSQL and Kafka reachable, retrying,
//! lag), the liveness and readiness probes and the metrics.

use std::sync::Arc;
use std::time::Duration;

use axum::extract::State;
use axum::http::StatusCode;
use axum::response::Response;
use axum::routing::get;
use axum::Router;
use prometheus_client::registry::Registry;
use rdkafka::consumer::{Consumer, StreamConsumer};
use serde_json::json;

use super::ConsumerArgs;
use crate::error::Result;
use crate::metrics::ConsumerMetrics;
use crate::probes::{self, Started};
use crate::shutdown::{self, ShutdownSignal};

/// What the handlers share.
#[derive(Clone)]
struct HealthState {
    database_url: String,
    group: String,
    consumer: Arc<StreamConsumer>,
    metrics: ConsumerMetrics,
    registry: Arc<Registry>,
    started: Started,
    health: Arc<probes::CachedCheck>,
}

/// Serves health, the probes and the metrics until `shutdown`.
pub(super) async fn serve(
    args: &ConsumerArgs,
    consumer: &Arc<StreamConsumer>,
    metrics: &ConsumerMetrics,
    started: &Started,
    mut shutdown: ShutdownSignal,
) -> Result<tokio::task::JoinHandle<std::io::Result<()>>> {
    let mut registry = Registry::default();
    metrics.register(&mut registry);
    registry.register_collector(Box::new(crate::cpu::ProcessCollector));
    let health = HealthState {
        database_url: args.common.database_url.clone(),
        group: args.group.clone(),
        consumer: consumer.clone(),
        metrics: metrics.clone(),
        registry: Arc::new(registry),
        started: started.clone(),
        health: Arc::new(probes::CachedCheck::default()),
    };
    let (listener, address) = args.common.bind_http().await?;
    let app = Router::new()
        .route("/api/consumer/health", get(health_check))
        .route(probes::LIVENESS_PATH, get(probes::alive))
        .route(probes::READINESS_PATH, get(ready))
        .route("/metrics", get(render_metrics))
        .with_state(health);
    tracing::info!(%address, "consumer listening");
    Ok(tokio::spawn(async move {
        axum::serve(listener, app)
            .with_graceful_shutdown(async move { shutdown::wait(&mut shutdown).await })
            .await
    }))
}

/// Readiness: the member has started (PostgreSQL reached once, subscribed).
async fn ready(State(state): State<HealthState>) -> Response {
    probes::readiness(
        (!state.started.get()).then(|| "waiting for PostgreSQL to migrate the schema".into()),
    )
}

async fn health_check(State(state): State<HealthState>) -> Response {
    let cache = state.health.clone();
    cache.answer(|| check_health(state)).await
}

async fn check_health(state: HealthState) -> (StatusCode, serde_json::Value) {
    let database = match tokio::time::timeout(
        Duration::from_secs(3),
        crate::db::connect(&state.database_url),
    )
    .await
    {
        Ok(Ok(client)) => match client.simple_query("SELECT 1").await {
            Ok(_) => "UP".to_string(),
            Err(e) => format!("DOWN: {e}"),
        },
        Ok(Err(e)) => format!("DOWN: {e}"),
        Err(_) => "DOWN: no answer within 3s".to_string(),
    };
    let c = state.consumer.clone();
    let kafka =
        match tokio::task::spawn_blocking(move || c.fetch_metadata(None, Duration::from_secs(3)))
            .await
        {
            Ok(Ok(_)) => "UP".to_string(),
            Ok(Err(e)) => format!("DOWN: {e}"),
            Err(e) => format!("DOWN: {e}"),
        };
    let up = database == "UP" && kafka == "UP";
    let body = json!({
        "status": if up { "UP" } else { "DOWN" },
        "group": state.group,
        "database": database,
        "kafka": kafka,
        "retrying": state.metrics.retrying.get() == 1,
        "lag": state.metrics.lag.get(),
    });
    let status = if up {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    (status, body)
}

async fn render_metrics(State(state): State<HealthState>) -> Response {
    crate::metrics::render(&state.registry)
}
