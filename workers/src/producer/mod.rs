//! The producer role: HTTP ingest into the outbox, and the relay to Kafka.

pub mod backpressure;
pub mod body;
pub mod connections;
pub mod http;
pub mod memory;
pub mod outbox;
pub mod relay;
pub mod retention;
pub mod topic_registry;
pub mod waker;

use std::collections::HashSet;
use std::sync::Arc;
use std::time::Duration;

use prometheus_client::registry::Registry;
use tokio::sync::Notify;
use tracing::Instrument;

use crate::config::{kafka_client_properties, CommonArgs};
use crate::error::{Error, KafkaContext, Result};
use crate::message_size::TopicLimits;
use crate::metrics::ProducerMetrics;
use crate::probes::Started;
use crate::producer::relay::{Relay, RelaySettings, RelayTarget};
use crate::producer::retention::RetentionSettings;
use crate::shutdown::{self, ShutdownSignal};
use outbox_contract::worker_env::{defaults, names};

/// Producer settings.
#[derive(clap::Args, Debug, Clone)]
pub struct ProducerArgs {
    #[command(flatten)]
    pub common: CommonArgs,
    /// Outbox rows per relay read: read and published to Kafka together.
    #[arg(long, env = names::RELAY_ROWS_PER_READ, default_value_t = i64::from(defaults::RELAY_ROWS_PER_READ))]
    pub relay_rows_per_read: i64,
    /// How long an idle relay waits before polling the outbox again (the immediate
    /// path wakes it at once).
    #[arg(long, env = names::RELAY_LINGER_MS, default_value_t = defaults::RELAY_LINGER_MS as u64)]
    pub relay_linger_ms: u64,
    /// Largest request body accepted, in bytes (larger: 413, refused by its
    /// `Content-Length` before it is read). Unset: a thirty-second of the container's
    /// memory limit, between 1 MiB and 32 MiB (32 MiB without a limit).
    #[arg(long, env = "MAX_BODY_BYTES")]
    pub max_body_bytes: Option<usize>,
    /// Bytes of request bodies held in memory at once across requests, in KiB. A request
    /// reserves its `Content-Length` before its body is read (a chunked body: as it
    /// arrives); one that cannot get it within `BODY_MEMORY_WAIT_MS` is answered 429
    /// with `Retry-After`, one larger than all of it 413. Unset: a sixteenth of the
    /// container's memory limit, between 2 MiB and 256 MiB (256 MiB without a limit);
    /// the messages parsed from the bodies take about as much again.
    #[arg(long, env = "BODY_MEMORY_KBYTES")]
    pub body_memory_kbytes: Option<usize>,
    /// How long a request waits for other requests' bodies to free `BODY_MEMORY_KBYTES`
    /// before it is answered 429.
    #[arg(long, env = "BODY_MEMORY_WAIT_MS", default_value_t = 500)]
    pub body_memory_wait_ms: u64,
    /// How long a request body may take to arrive whole (slower: 408).
    #[arg(long, env = "BODY_READ_TIMEOUT_MS", default_value_t = 30_000)]
    pub body_read_timeout_ms: u64,
    /// HTTP connections served at once; more wait in the listen queue until one closes.
    #[arg(long, env = "MAX_CONNECTIONS", default_value_t = 1024)]
    pub max_connections: usize,
    /// How long a request's head (its line and headers) may take to arrive, which is
    /// also how long a kept-alive connection may sit idle between requests; then the
    /// connection is closed.
    #[arg(long, env = "HEADER_READ_TIMEOUT_MS", default_value_t = 30_000)]
    pub header_read_timeout_ms: u64,
    /// Most messages in one batch request (more: 413 naming this limit).
    #[arg(long, env = "MAX_BATCH_MESSAGES", default_value_t = 50_000)]
    pub max_batch_messages: usize,
    /// Send and batch requests handled at once; more are answered 503 with
    /// `Retry-After` instead of queueing without bound.
    #[arg(long, env = "MAX_CONCURRENT_REQUESTS", default_value_t = 256)]
    pub max_concurrent_requests: usize,
    /// Messages waiting to be relayed at which ingest answers 429 with `Retry-After`
    /// and stores nothing (0: no bound; the default is the OutboxSystem's).
    #[arg(long, env = names::MAX_BACKLOG_MESSAGES, default_value_t = defaults::MAX_BACKLOG_MESSAGES as u64)]
    pub max_backlog_messages: u64,
    /// The outbox table's size on disk (bytes) at which ingest answers 429 with
    /// `Retry-After` and stores nothing (0: no bound; the default is the
    /// OutboxSystem's).
    #[arg(long, env = names::MAX_BACKLOG_BYTES, default_value_t = defaults::MAX_BACKLOG_BYTES as u64)]
    pub max_backlog_bytes: u64,
    /// Bytes of messages the relay's Kafka producer may hold in memory (librdkafka's
    /// `queue.buffering.max.kbytes`, in KiB). Unset: a quarter of the container's
    /// memory limit, between 4 MiB and 64 MiB (64 MiB without a limit).
    #[arg(long, env = "RELAY_QUEUE_KBYTES")]
    pub relay_queue_kbytes: Option<usize>,
    /// Bytes of payload and key the relay reads from PostgreSQL per relay read, in KiB.
    /// Unset: an eighth of the container's memory limit, between 1 MiB and 32 MiB
    /// (32 MiB without a limit).
    #[arg(long, env = "RELAY_FETCH_KBYTES")]
    pub relay_fetch_kbytes: Option<usize>,
    /// Relayed rows are deleted this many seconds after they were relayed (0 keeps
    /// every row).
    #[arg(long, env = names::RETENTION_SECONDS, default_value_t = defaults::RETENTION_SECONDS as u64)]
    pub retention_seconds: u64,
    /// Acknowledgement ledger data untouched this many seconds is deleted (0 keeps it).
    #[arg(long, env = names::LEDGER_RETENTION_SECONDS, default_value_t = defaults::LEDGER_RETENTION_SECONDS as u64)]
    pub ledger_retention_seconds: u64,
    /// Seconds between retention rounds.
    #[arg(long, env = "RETENTION_INTERVAL_SECONDS", default_value_t = 30)]
    pub retention_interval_seconds: u64,
    /// PostgreSQL connections for request handlers.
    #[arg(long, env = "DB_POOL_SIZE", default_value_t = 8)]
    pub db_pool_size: usize,
    /// Serve the API without running a relay (another process relays).
    #[arg(long, env = "RELAY_DISABLED", default_value_t = false)]
    pub relay_disabled: bool,
}

/// Runs the producer until `shutdown`, as its steps: check the settings → the Kafka
/// client and the topics' size limits → serve HTTP at once (liveness; readiness once
/// PostgreSQL answers and the schema is migrated, however long that takes) → wait for
/// PostgreSQL → housekeeping (backlog bound and gauge, retention) → the relay → wait
/// for the server and the relay to stop. Kafka need not be up, nor the topics exist:
/// the relay waits for them.
pub async fn run(args: ProducerArgs, shutdown: ShutdownSignal) -> Result<()> {
    args.common.validate()?;
    if args.relay_rows_per_read < 1 {
        return Err(Error::Config(
            "RELAY_ROWS_PER_READ must be at least 1".into(),
        ));
    }
    let span = tracing::info_span!("producer", service_id = %args.common.service_id);
    async move {
        let kafka = KafkaSide::connect(&args, &shutdown)?;
        let state = app_state(&args, &kafka, &shutdown)?;
        let parts = state.clone();
        let server = serve(&args, state, shutdown.clone()).await?;
        let mut waiting = shutdown.clone();
        let migrated = crate::db::wait_and_migrate(
            &args.common.database_url,
            args.common.outbox_system.as_deref(),
            &mut waiting,
        )
        .await?;
        let relay = match migrated {
            None => None,
            Some(client) => {
                drop(client);
                parts.started.set();
                housekeeping(&args, &parts, &shutdown);
                start_relay(&args, kafka, &parts, &shutdown)?
            }
        };
        let served = server.await;
        if let Some(relay) = relay {
            let _ = relay.await;
        }
        match served {
            Ok(Ok(())) => {}
            Ok(Err(source)) => {
                return Err(Error::Io {
                    context: "serving HTTP".into(),
                    source,
                })
            }
            Err(e) => return Err(Error::Config(format!("the HTTP server task failed: {e}"))),
        }
        tracing::info!("producer stopped");
        Ok(())
    }
    .instrument(span)
    .await
}

/// The producer's side of Kafka: the client configuration, a client for metadata, the
/// topics' size limits (kept fresh in the background) and the relay's memory.
struct KafkaSide {
    config: rdkafka::ClientConfig,
    client: rdkafka::producer::FutureProducer,
    topics: Vec<String>,
    limits: Arc<TopicLimits>,
    memory: RelayMemory,
}

impl KafkaSide {
    fn connect(args: &ProducerArgs, shutdown: &ShutdownSignal) -> Result<KafkaSide> {
        let topics = args.common.topics();
        let memory = RelayMemory::from_args(args, crate::producer::memory::cgroup_limit());
        tracing::info!(
            limit_bytes = ?memory.limit,
            queue_kbytes = memory.queue_kbytes,
            fetch_bytes = memory.fetch_bytes,
            "relay memory"
        );
        let config = crate::kafka::client_config(
            &args.common.kafka_bootstrap_servers,
            &kafka_client_properties(),
        );
        let client = config.create().kafka("creating a Kafka metadata client")?;
        let limits = TopicLimits::new();
        tokio::spawn(
            refresh_limits(
                limits.clone(),
                config.clone(),
                topics.clone(),
                shutdown.clone(),
            )
            .in_current_span(),
        );
        Ok(KafkaSide {
            config,
            client,
            topics,
            limits,
            memory,
        })
    }
}

/// What the HTTP handlers share: the pool, metrics, limits, admission and the relay's
/// wakers.
fn app_state(
    args: &ProducerArgs,
    kafka: &KafkaSide,
    shutdown: &ShutdownSignal,
) -> Result<http::AppState> {
    let metrics = ProducerMetrics::default();
    let mut registry = Registry::default();
    metrics.register(&mut registry);
    registry.register_collector(Box::new(crate::cpu::ProcessCollector));
    let pool = crate::db::pool(&args.common.database_url, args.db_pool_size)?;
    let wake = Arc::new(Notify::new());
    let bodies = BodyMemory::from_args(args, crate::producer::memory::cgroup_limit());
    tracing::info!(
        max_body_bytes = bodies.max_body_bytes,
        body_memory_bytes = bodies.budget_bytes,
        "request body memory"
    );
    Ok(http::AppState {
        waker: waker::RelayWaker::start(wake.clone(), pool.clone(), shutdown.clone()),
        pool,
        topics: Arc::new(kafka.topics.iter().cloned().collect::<HashSet<_>>()),
        wake,
        metrics,
        registry: Arc::new(registry),
        kafka: kafka.client.clone(),
        body_limits: body::BodyLimits {
            max_bytes: bodies.max_body_bytes,
            read_timeout: Duration::from_millis(args.body_read_timeout_ms.max(1)),
        },
        bodies: body::BodyBudget::new(
            bodies.budget_bytes,
            Duration::from_millis(args.body_memory_wait_ms),
        ),
        limits: kafka.limits.clone(),
        started: Started::default(),
        max_batch_messages: args.max_batch_messages.max(1),
        in_progress: Arc::new(tokio::sync::Semaphore::new(
            args.max_concurrent_requests.max(1),
        )),
        max_concurrent_requests: args.max_concurrent_requests.max(1),
        backlog: crate::producer::backpressure::BacklogBound::new(
            args.max_backlog_messages,
            args.max_backlog_bytes,
        ),
        health: Arc::new(crate::probes::CachedCheck::default()),
        readiness: Arc::new(crate::probes::CachedReadiness::default()),
        single_ids: Arc::default(),
    })
}

/// Serves the HTTP API until `shutdown`.
async fn serve(
    args: &ProducerArgs,
    state: http::AppState,
    mut shutdown: ShutdownSignal,
) -> Result<tokio::task::JoinHandle<std::io::Result<()>>> {
    let (listener, address) = args.common.bind_http().await?;
    tracing::info!(%address, topics = ?state.topics, max_connections = args.max_connections, "producer listening");
    let listener = connections::LimitedListener::new(listener, args.max_connections);
    Ok(tokio::spawn(connections::serve(
        listener,
        http::router(state),
        Duration::from_millis(args.header_read_timeout_ms.max(1)),
        async move { shutdown::wait(&mut shutdown).await },
    )))
}

/// The background work once PostgreSQL answers: the request pool's sessions, the
/// backlog bound and gauge, the topics for `outbox_enqueue`, and retention.
fn housekeeping(args: &ProducerArgs, parts: &http::AppState, shutdown: &ShutdownSignal) {
    let pool = parts.pool.clone();
    tokio::spawn(
        async move {
            let warmed = crate::producer::outbox::warm_pool(&pool).await;
            tracing::info!(
                warmed,
                size = pool.status().max_size,
                "request pool sessions opened"
            );
        }
        .in_current_span(),
    );
    tokio::spawn(
        parts
            .backlog
            .clone()
            .watch(parts.pool.clone(), shutdown.clone())
            .in_current_span(),
    );
    tokio::spawn(
        watch_backlog(parts.pool.clone(), parts.metrics.clone(), shutdown.clone())
            .in_current_span(),
    );
    crate::producer::topic_registry::spawn(
        parts.pool.clone(),
        parts.limits.clone(),
        parts.topics.clone(),
        shutdown.clone(),
    );
    tokio::spawn(
        crate::producer::retention::run(
            args.common.database_url.clone(),
            RetentionSettings {
                relayed: Duration::from_secs(args.retention_seconds),
                ledger: Duration::from_secs(args.ledger_retention_seconds),
                interval: Duration::from_secs(args.retention_interval_seconds.max(1)),
                slice_rows: 50_000,
            },
            parts.metrics.clone(),
            shutdown.clone(),
        )
        .in_current_span(),
    );
}

/// The relay on its own runtime, unless another process relays.
fn start_relay(
    args: &ProducerArgs,
    kafka: KafkaSide,
    parts: &http::AppState,
    shutdown: &ShutdownSignal,
) -> Result<Option<tokio::task::JoinHandle<()>>> {
    if args.relay_disabled {
        return Ok(None);
    }
    let relay = Relay::new(
        args.common.database_url.clone(),
        RelayTarget {
            kafka: kafka.config,
            topics: kafka.topics,
            limits: kafka.limits,
        },
        RelaySettings {
            rows_per_read: args.relay_rows_per_read,
            linger: Duration::from_millis(args.relay_linger_ms),
            queue_kbytes: kafka.memory.queue_kbytes,
            fetch_bytes: kafka.memory.fetch_bytes,
            ..RelaySettings::default()
        },
        parts.wake.clone(),
        parts.metrics.clone(),
        args.common.service_id.clone(),
    );
    relay
        .spawn_on_own_runtime(shutdown.clone())
        .map(Some)
        .map_err(|source| Error::Io {
            context: "starting the relay's runtime".into(),
            source,
        })
}

/// What the relay may hold in memory: the Kafka producer's queue and one batch read
/// from PostgreSQL, from the settings or else from the container's memory limit.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct RelayMemory {
    limit: Option<u64>,
    queue_kbytes: usize,
    fetch_bytes: usize,
}

impl RelayMemory {
    fn from_args(args: &ProducerArgs, limit: Option<u64>) -> RelayMemory {
        use crate::producer::memory::share_of;
        const MIB: u64 = 1 << 20;
        let queue_kbytes = args
            .relay_queue_kbytes
            .unwrap_or_else(|| (share_of(limit, 4, 4 * MIB, 64 * MIB) / 1024) as usize)
            .max(1024);
        let fetch_bytes = args
            .relay_fetch_kbytes
            .map(|k| k.saturating_mul(1024))
            .unwrap_or_else(|| share_of(limit, 8, MIB, 32 * MIB) as usize)
            .max(64 * 1024);
        RelayMemory {
            limit,
            queue_kbytes,
            fetch_bytes,
        }
    }
}

/// What request bodies may hold in memory: one body, and all bodies at once, from the
/// settings or else from the container's memory limit.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct BodyMemory {
    max_body_bytes: usize,
    budget_bytes: u64,
}

impl BodyMemory {
    fn from_args(args: &ProducerArgs, limit: Option<u64>) -> BodyMemory {
        use crate::producer::memory::share_of;
        const MIB: u64 = 1 << 20;
        let max_body_bytes = args
            .max_body_bytes
            .unwrap_or_else(|| share_of(limit, 32, MIB, 32 * MIB) as usize)
            .max(1);
        let budget_bytes = args
            .body_memory_kbytes
            .map(|k| (k as u64).saturating_mul(1024))
            .unwrap_or_else(|| share_of(limit, 16, 2 * MIB, 256 * MIB))
            .max(1024);
        BodyMemory {
            max_body_bytes,
            budget_bytes,
        }
    }
}

/// Keeps the topics' size limits current for ingest: at start, then every 30 s.
async fn refresh_limits(
    limits: std::sync::Arc<TopicLimits>,
    kafka: rdkafka::ClientConfig,
    topics: Vec<String>,
    mut shutdown: ShutdownSignal,
) {
    loop {
        if let Err(e) = limits.refresh(&kafka, &topics).await {
            tracing::debug!(error = %crate::error_chain(&e), "could not refresh the topics' max.message.bytes");
        }
        tokio::select! {
            _ = tokio::time::sleep(Duration::from_secs(30)) => {}
            _ = shutdown::wait(&mut shutdown) => return,
        }
    }
}

/// Reads the backlog into the metrics every 10 s: a delivery that stalls shows as a
/// growing oldest age, whatever holds it back.
async fn watch_backlog(
    pool: deadpool_postgres::Pool,
    metrics: ProducerMetrics,
    mut shutdown: ShutdownSignal,
) {
    loop {
        let reading = async {
            let client = pool.get().await.ok()?;
            let row = client
                .query_one(
                    "SELECT pending, oldest_age_seconds FROM outbox_backlog",
                    &[],
                )
                .await
                .ok()?;
            Some((row.get::<_, i64>(0), row.get::<_, f64>(1)))
        };
        if let Ok(Some((pending, oldest))) =
            tokio::time::timeout(Duration::from_secs(5), reading).await
        {
            metrics.backlog_pending.set(pending);
            metrics.backlog_oldest_age_seconds.set(oldest);
        }
        tokio::select! {
            _ = tokio::time::sleep(Duration::from_secs(10)) => {}
            _ = shutdown::wait(&mut shutdown) => return,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::{BodyMemory, ProducerArgs, RelayMemory};
    use clap::Parser;

    #[derive(Parser)]
    struct Cli {
        #[command(flatten)]
        producer: ProducerArgs,
    }

    fn args(extra: &[&str]) -> ProducerArgs {
        let mut argv = vec![
            "producer",
            "--kafka-bootstrap-servers",
            "kafka:9092",
            "--database-url",
            "postgres://outbox@db/outbox",
            "--kafka-topics",
            "orders",
        ];
        argv.extend_from_slice(extra);
        Cli::try_parse_from(argv).expect("arguments").producer
    }

    #[test]
    fn relay_buffers_are_a_share_of_the_memory_limit() {
        let memory = RelayMemory::from_args(&args(&[]), Some(256 << 20));
        assert_eq!(memory.queue_kbytes, 64 * 1024);
        assert_eq!(memory.fetch_bytes, 32 << 20);
        let small = RelayMemory::from_args(&args(&[]), Some(64 << 20));
        assert_eq!(small.queue_kbytes, 16 * 1024);
        assert_eq!(small.fetch_bytes, 8 << 20);
    }

    #[test]
    fn without_a_limit_the_buffers_keep_their_ceilings() {
        let memory = RelayMemory::from_args(&args(&[]), None);
        assert_eq!(memory.queue_kbytes, 64 * 1024);
        assert_eq!(memory.fetch_bytes, 32 << 20);
    }

    #[test]
    fn explicit_settings_win_over_the_limit() {
        let memory = RelayMemory::from_args(
            &args(&[
                "--relay-queue-kbytes",
                "2048",
                "--relay-fetch-kbytes",
                "512",
            ]),
            Some(256 << 20),
        );
        assert_eq!(memory.queue_kbytes, 2048);
        assert_eq!(memory.fetch_bytes, 512 * 1024);
    }

    #[test]
    fn request_bodies_are_bounded_by_a_share_of_the_memory_limit() {
        let memory = BodyMemory::from_args(&args(&[]), Some(256 << 20));
        assert_eq!(memory.max_body_bytes, 8 << 20);
        assert_eq!(memory.budget_bytes, 16 << 20);
        let large = BodyMemory::from_args(&args(&[]), Some(1 << 30));
        assert_eq!(large.max_body_bytes, 32 << 20);
        assert_eq!(large.budget_bytes, 64 << 20);
        let small = BodyMemory::from_args(&args(&[]), Some(8 << 20));
        assert_eq!(small.max_body_bytes, 1 << 20);
        assert_eq!(small.budget_bytes, 2 << 20);
        let unlimited = BodyMemory::from_args(&args(&[]), None);
        assert_eq!(unlimited.max_body_bytes, 32 << 20);
        assert_eq!(unlimited.budget_bytes, 256 << 20);
    }

    #[test]
    fn explicit_body_settings_win_over_the_limit() {
        let memory = BodyMemory::from_args(
            &args(&["--max-body-bytes", "1000", "--body-memory-kbytes", "64"]),
            Some(256 << 20),
        );
        assert_eq!(memory.max_body_bytes, 1000);
        assert_eq!(memory.budget_bytes, 64 * 1024);
    }
}
