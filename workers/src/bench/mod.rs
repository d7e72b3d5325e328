//! The benchmark: raw baselines and the outbox pipeline side by side, in one run on the
//! same machine, with each stage's rate and its ratio to its baseline.
//!
//! Stages, each over the same N messages (same payload size, same keys):
//! 1. `raw_copy`: binary COPY into a plain table with the outbox's columns, in batches of
//!    `--messages-per-request`, `--concurrency` sessions at once.
//! 2. `raw_produce`: librdkafka produce with the relay's producer settings.
//! 3. `raw_consume`: librdkafka consume of those messages (first message to last).
//! 4. `ingest`: the producer's HTTP batch endpoint (in-process server, relay off),
//!    `--concurrency` requests of `--messages-per-request` at once; vs raw_copy.
//! 5. `relay`: the relay draining that backlog to Kafka until the watermark covers it;
//!    vs raw_produce.
//! 6. `consume`: one consumer group acknowledging everything into the ledger (first
//!    acknowledgement to last); vs raw_consume.
//! 7. `end to end`: HTTP → outbox → relay → Kafka → three groups acknowledged, all at
//!    once ([`end_to_end`]); vs the raw stages added up for the same work.
//!
//! A warm-up round of `--warm-up-messages` goes first and is not counted (the fresh
//! broker's idempotent-producer set-up, cold caches); then `--rounds` rounds, each in a
//! schema and topics of its own, and every figure is the median with its spread
//! ([`regression`]). With `--baseline`, each ratio's change against the kept figures is
//! printed, `--check` fails on a regression and `--update-baseline` keeps the new ones.

mod end_to_end;
mod raw;
pub mod regression;

use std::sync::Arc;
use std::time::{Duration, Instant};

use futures::StreamExt;
use serde::Serialize;

use regression::{Baseline, Figure};
use tokio::sync::Notify;

use crate::config::{kafka_client_properties, CommonArgs};
use crate::consumer::ConsumerArgs;
use crate::error::{DbContext, Error, Result};
use crate::ledger::{self, IdSet};
use crate::metrics::ProducerMetrics;
use crate::producer::relay::{Relay, RelaySettings};
use crate::producer::ProducerArgs;

/// Benchmark settings.
#[derive(clap::Args, Debug, Clone)]
pub struct BenchArgs {
    /// Messages per stage.
    #[arg(long, default_value_t = 1_000_000)]
    pub messages: usize,
    /// Kafka bootstrap servers.
    #[arg(long, env = "KAFKA_BOOTSTRAP_SERVERS")]
    pub kafka_bootstrap_servers: String,
    /// PostgreSQL URL; the benchmark works in a schema of its own.
    #[arg(long, env = "DATABASE_URL", hide_env_values = true)]
    pub database_url: String,
    /// Partitions of the benchmark topics.
    #[arg(long, default_value_t = 6)]
    pub partitions: i32,
    /// Payload size in bytes.
    #[arg(long, default_value_t = 100)]
    pub payload_bytes: usize,
    /// Distinct keys.
    #[arg(long, default_value_t = 1000)]
    pub keys: usize,
    /// Messages per COPY transaction and per HTTP batch request.
    #[arg(long, default_value_t = 10_000)]
    pub messages_per_request: usize,
    /// COPY sessions / HTTP requests at once.
    #[arg(long, default_value_t = 4)]
    pub concurrency: usize,
    /// Where the JSON report goes.
    #[arg(long, default_value = "bench-report.json")]
    pub report: std::path::PathBuf,
    /// Keep the benchmark schema and topics afterwards.
    #[arg(long)]
    pub keep: bool,
    /// Timed rounds; every figure is their median.
    #[arg(long, default_value_t = 3, value_parser = clap::value_parser!(u32).range(1..))]
    pub rounds: u32,
    /// Messages per stage of the untimed warm-up round (0: none).
    #[arg(long, default_value_t = 50_000)]
    pub warm_up_messages: usize,
    /// The kept figures to compare with (a JSON file; absent: nothing to compare).
    #[arg(long, value_name = "PATH")]
    pub baseline: Option<std::path::PathBuf>,
    /// Fail when a ratio fell more than `--tolerance` below its baseline figure.
    #[arg(long, requires = "baseline")]
    pub check: bool,
    /// Write this run's figures to `--baseline`.
    #[arg(long, requires = "baseline", conflicts_with = "check")]
    pub update_baseline: bool,
    /// How far (0–1) a ratio may fall below its baseline figure.
    #[arg(long, default_value_t = regression::DEFAULT_TOLERANCE)]
    pub tolerance: f64,
}

/// One timed stage.
#[derive(Debug, Clone, Serialize)]
pub struct Stage {
    pub name: &'static str,
    pub messages: usize,
    pub seconds: f64,
    pub messages_per_second: f64,
    /// The raw baseline this stage is compared with, and the ratio to it.
    pub baseline: Option<&'static str>,
    pub ratio: Option<f64>,
}

/// The JSON report.
#[derive(Debug, Clone, Serialize)]
pub struct BenchReport {
    pub messages: usize,
    pub payload_bytes: usize,
    pub partitions: i32,
    pub messages_per_request: usize,
    pub concurrency: usize,
    pub cores: usize,
    pub warm_up_messages: usize,
    /// Each stage's median over the rounds, with the spread.
    pub figures: Vec<Figure>,
    /// The stages of the last round.
    pub stages: Vec<Stage>,
    /// Every round's stages.
    pub rounds: Vec<Vec<Stage>>,
}

fn stage(name: &'static str, messages: usize, elapsed: Duration) -> Stage {
    let seconds = elapsed.as_secs_f64().max(1e-9);
    Stage {
        name,
        messages,
        seconds,
        messages_per_second: messages as f64 / seconds,
        baseline: None,
        ratio: None,
    }
}

fn compare(mut s: Stage, baseline: &Stage) -> Stage {
    s.baseline = Some(baseline.name);
    s.ratio = Some(s.messages_per_second / baseline.messages_per_second);
    s
}

/// Runs the benchmark: a warm-up round, the timed rounds, the report, and the
/// comparison with the baseline.
pub async fn run(args: BenchArgs) -> Result<()> {
    if !(0.0..1.0).contains(&args.tolerance) {
        return Err(Error::Config(format!(
            "--tolerance {} is not between 0 and 1",
            args.tolerance
        )));
    }
    let baseline = match &args.baseline {
        Some(path) if path.exists() => Some(Baseline::read(path)?),
        Some(path) if args.check => {
            return Err(Error::Config(format!(
                "--check: no baseline at {} (make one with --update-baseline)",
                path.display()
            )))
        }
        _ => None,
    };
    if args.warm_up_messages > 0 {
        let warm = BenchArgs {
            messages: args.warm_up_messages,
            ..args.clone()
        };
        println!(
            "warm-up round ({} messages per stage, not counted)",
            warm.messages
        );
        round(&warm, 0).await?;
    }
    let mut rounds = Vec::new();
    for r in 1..=args.rounds {
        println!("\nround {r} of {}", args.rounds);
        rounds.push(round(&args, r).await?);
    }
    let figures = regression::figures(&rounds);
    write_report(&args, rounds, &figures)?;
    print_figures(&figures, baseline.as_ref(), &args);
    if let Some(baseline) = &baseline {
        let changes = regression::compare(baseline, &figures, args.tolerance);
        if args.check {
            if let Some(e) = regression::regressions_error(&changes, args.tolerance) {
                return Err(e);
            }
            println!(
                "no ratio fell more than {:.0} % below its baseline",
                args.tolerance * 100.0
            );
        }
    }
    if let (true, Some(path)) = (args.update_baseline, &args.baseline) {
        Baseline {
            messages: args.messages,
            rounds: args.rounds as usize,
            figures,
        }
        .write(path)?;
        println!("baseline written to {}", path.display());
    }
    Ok(())
}

/// One round of every stage: the raw baselines (COPY, produce, consume), then the
/// pipeline (ingest, relay, one consumer group) each compared with its baseline, then
/// the whole pipeline against the raw stages added up.
async fn round(args: &BenchArgs, number: u32) -> Result<Vec<Stage>> {
    let setup = Setup::create(args, number).await?;
    println!(
        "{} messages of {} bytes, {} partitions, schema {}",
        args.messages, args.payload_bytes, args.partitions, setup.tag
    );
    let raw_copy_stage = raw::copy_stage(args, &setup).await?;
    let raw_produce = raw::produce_stage(args, &setup).await?;
    let raw_consume = raw::consume_stage(args, &setup).await?;
    let (stop, signal) = crate::shutdown::channel();
    let (ingest, expected, common, producer_task) =
        ingest_stage(args, &setup, &raw_copy_stage, signal.clone()).await?;
    let db = crate::db::connect(&setup.schema_url).await?;
    let (relay_stage, relay_task) =
        relay_stage(args, &setup, &db, &raw_produce, signal.clone()).await?;
    let (consume, consumer_task) = consume_stage(
        args,
        &setup,
        &db,
        &raw_consume,
        &expected,
        common,
        signal.clone(),
    )
    .await?;
    let raw_sum = end_to_end::raw_sum(&raw_copy_stage, &raw_produce, &raw_consume);
    let (end_to_end, e2e_workers) = end_to_end::run(args, &setup, &raw_sum, signal).await?;
    let _ = stop.send(true);
    let _ = relay_task.await;
    let _ = producer_task.await;
    let _ = consumer_task.await;
    for task in e2e_workers.tasks {
        let _ = task.await;
    }
    if !args.keep {
        for schema in [setup.tag.as_str(), e2e_workers.schema.as_str()] {
            let _ = db
                .batch_execute(&format!("DROP SCHEMA \"{schema}\" CASCADE"))
                .await;
        }
    }
    Ok(vec![
        raw_copy_stage,
        raw_produce,
        raw_consume,
        ingest,
        relay_stage,
        consume,
        raw_sum,
        end_to_end,
    ])
}

/// What every stage shares: a schema and two topics of this run's own.
struct Setup {
    tag: String,
    schema_url: String,
    kafka: rdkafka::ClientConfig,
    raw_topic: String,
    topic: String,
    payload: String,
}

impl Setup {
    /// Round `number`'s schema and topics (0 is the warm-up).
    async fn create(args: &BenchArgs, number: u32) -> Result<Setup> {
        let tag = format!(
            "bench_{}_r{number}",
            chrono::Utc::now().format("%Y%m%d%H%M%S")
        );
        let schema_url = create_schema(&args.database_url, &tag).await?;
        let kafka =
            crate::kafka::client_config(&args.kafka_bootstrap_servers, &kafka_client_properties());
        let raw_topic = format!("{tag}-raw").replace('_', "-");
        let topic = format!("{tag}-pipeline").replace('_', "-");
        crate::kafka::create_topic(&kafka, &raw_topic, args.partitions, 1).await?;
        crate::kafka::create_topic(&kafka, &topic, args.partitions, 1).await?;
        Ok(Setup {
            tag,
            schema_url,
            kafka,
            raw_topic,
            topic,
            payload: "x".repeat(args.payload_bytes),
        })
    }
}

/// The key of message `i` with `keys` distinct keys.
fn key_of(keys: usize) -> impl Fn(usize) -> String + Copy {
    move |i| format!("key-{}", i % keys.max(1))
}

/// Stage 4: ingest through a producer's HTTP batch endpoint (relay off); returns the
/// stage, the ids the answers named, and the running producer.
async fn ingest_stage(
    args: &BenchArgs,
    setup: &Setup,
    raw_copy_stage: &Stage,
    signal: crate::shutdown::ShutdownSignal,
) -> Result<(
    Stage,
    IdSet,
    CommonArgs,
    tokio::task::JoinHandle<Result<()>>,
)> {
    let n = args.messages;
    let topic = &setup.topic;
    let common = producer_common(args, "bench-producer", &setup.schema_url, topic)?;
    let port = common.http_port;
    let producer_task = tokio::spawn(crate::producer::run(
        producer_args(args, common.clone(), false),
        signal.clone(),
    ));
    let http = reqwest::Client::new();
    let base = format!("http://127.0.0.1:{port}");
    wait_for_http(&http, &format!("{base}{}", crate::probes::READINESS_PATH)).await?;
    let started = Instant::now();
    let expected = send_batches(args, setup, topic, &http, &base).await?;
    let ingest = compare(stage("ingest", n, started.elapsed()), raw_copy_stage);
    report_stage(&ingest);
    Ok((ingest, expected, common, producer_task))
}

/// Where a benchmark producer listens (a free loopback port) and what it works on.
fn producer_common(
    args: &BenchArgs,
    service_id: &str,
    schema_url: &str,
    topic: &str,
) -> Result<CommonArgs> {
    Ok(CommonArgs {
        service_id: service_id.into(),
        kafka_bootstrap_servers: args.kafka_bootstrap_servers.clone(),
        database_url: schema_url.to_string(),
        kafka_topics: vec![topic.to_string()],
        http_port: free_port()?,
        http_address: std::net::IpAddr::from([127, 0, 0, 1]),
        outbox_system: None,
    })
}

/// The settings of the benchmark's in-process producer (`relay` off: the ingest stage
/// times the HTTP path alone).
fn producer_args(args: &BenchArgs, common: CommonArgs, relay: bool) -> ProducerArgs {
    ProducerArgs {
        common,
        relay_rows_per_read: i64::from(outbox_contract::worker_env::defaults::RELAY_ROWS_PER_READ),
        relay_linger_ms: 50,
        max_body_bytes: Some(256 * 1024 * 1024),
        // The benchmark's own bodies, however many at once: no memory limit to guard.
        body_memory_kbytes: Some(4 * 1024 * 1024),
        body_memory_wait_ms: 500,
        body_read_timeout_ms: 30_000,
        max_connections: 1024,
        header_read_timeout_ms: 30_000,
        db_pool_size: args.concurrency.max(1) + 2,
        relay_disabled: !relay,
        max_batch_messages: args.messages_per_request.max(1),
        max_concurrent_requests: args.concurrency.max(1) * 4,
        relay_queue_kbytes: None,
        relay_fetch_kbytes: None,
        max_backlog_messages: 0,
        max_backlog_bytes: 0,
        // The benchmark drops its schema afterwards; nothing to delete meanwhile.
        retention_seconds: 0,
        ledger_retention_seconds: 0,
        retention_interval_seconds: 30,
    }
}

/// Sends the N messages to `topic` through the producer at `base`, `--concurrency`
/// batch requests of `--messages-per-request` at once, and returns their ids.
async fn send_batches(
    args: &BenchArgs,
    setup: &Setup,
    topic: &str,
    http: &reqwest::Client,
    base: &str,
) -> Result<IdSet> {
    let (n, key, payload) = (args.messages, key_of(args.keys), &setup.payload);
    let bodies: Vec<bytes::Bytes> = (0..n)
        .step_by(args.messages_per_request)
        .map(|s| {
            let messages: Vec<serde_json::Value> = (s..(s + args.messages_per_request).min(n))
                .map(|i| serde_json::json!({"topic": topic, "key": key(i), "message": payload}))
                .collect();
            bytes::Bytes::from(serde_json::json!({ "messages": messages }).to_string())
        })
        .collect();
    let answers: Vec<Result<Vec<i64>>> = futures::stream::iter(bodies.into_iter().map(|body| {
        let http = http.clone();
        let url = format!("{base}/api/messages/batch");
        async move {
            let r = http
                .post(url)
                .header("content-type", "application/json")
                .body(body)
                .send()
                .await
                .map_err(|e| Error::Bench(format!("batch request: {e}")))?;
            if !r.status().is_success() {
                return Err(Error::Bench(format!(
                    "batch request answered {}",
                    r.status()
                )));
            }
            let v: serde_json::Value = r
                .json()
                .await
                .map_err(|e| Error::Bench(format!("batch answer: {e}")))?;
            Ok(v["ids"]
                .as_array()
                .map(|a| a.iter().filter_map(|x| x.as_i64()).collect())
                .unwrap_or_default())
        }
    }))
    .buffer_unordered(args.concurrency)
    .collect()
    .await;
    let mut ids = Vec::with_capacity(n);
    for a in answers {
        ids.extend(a?);
    }
    let expected = IdSet::from_ids(ids);
    if expected.len() != n as u64 {
        return Err(Error::Bench(format!(
            "ingest returned {} distinct ids for {n} messages",
            expected.len()
        )));
    }
    Ok(expected)
}

/// Stage 5: the relay drains the outbox into Kafka; compared with the raw produce.
async fn relay_stage(
    args: &BenchArgs,
    setup: &Setup,
    db: &tokio_postgres::Client,
    raw_produce: &Stage,
    signal: crate::shutdown::ShutdownSignal,
) -> Result<(Stage, tokio::task::JoinHandle<()>)> {
    let n = args.messages;
    let (schema_url, kafka, topic) = (&setup.schema_url, &setup.kafka, &setup.topic);
    let metrics = ProducerMetrics::default();
    let relay = Relay::new(
        schema_url.to_string(),
        crate::producer::relay::RelayTarget {
            kafka: kafka.clone(),
            topics: vec![topic.to_string()],
            limits: crate::message_size::TopicLimits::new(),
        },
        RelaySettings::default(),
        Arc::new(Notify::new()),
        metrics.clone(),
        "bench-relay".into(),
    );
    let started = Instant::now();
    let relay_task = relay
        .spawn_on_own_runtime(signal.clone())
        .map_err(|e| Error::Bench(format!("starting the relay's runtime: {e}")))?;
    loop {
        let pending: i64 = db
            .query_one("SELECT pending FROM outbox_backlog", &[])
            .await
            .db("reading the backlog")?
            .get(0);
        if pending == 0 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let relay_stage = compare(stage("relay", n, started.elapsed()), raw_produce);
    report_stage(&relay_stage);

    Ok((relay_stage, relay_task))
}

/// Stage 6: one consumer group acknowledges everything; compared with the raw consume,
/// then verified exactly against the ids of stage 4.
async fn consume_stage(
    args: &BenchArgs,
    setup: &Setup,
    db: &tokio_postgres::Client,
    raw_consume: &Stage,
    expected: &IdSet,
    common: CommonArgs,
    signal: crate::shutdown::ShutdownSignal,
) -> Result<(Stage, tokio::task::JoinHandle<Result<()>>)> {
    let (n, tag) = (args.messages, &setup.tag);
    let group = format!("{tag}-group");
    let consumer_task = tokio::spawn(crate::consumer::run(
        consumer_args(common, &group)?,
        signal.clone(),
    ));
    let mut first = None;
    loop {
        let acked = acknowledged(db, &group).await?;
        if acked > 0 {
            first.get_or_insert_with(Instant::now);
        }
        if acked as usize >= n {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let consume = compare(
        stage("consume", n, first.map(|f| f.elapsed()).unwrap_or_default()),
        raw_consume,
    );
    report_stage(&consume);
    let verify_started = Instant::now();
    let verified = ledger::group_report(db, &group, expected).await?;
    println!(
        "verification of {n} ids took {:.3}s: acknowledged {} missing {} duplicates {} out of order {}",
        verify_started.elapsed().as_secs_f64(),
        verified.acknowledged,
        verified.missing,
        verified.duplicates,
        verified.out_of_order
    );

    Ok((consume, consumer_task))
}

/// The settings of a benchmark consumer of `group` (defaults of the consumer role).
fn consumer_args(common: CommonArgs, group: &str) -> Result<ConsumerArgs> {
    Ok(ConsumerArgs {
        common: CommonArgs {
            service_id: format!("bench-consumer-{group}"),
            http_port: free_port()?,
            ..common
        },
        group: group.to_string(),
        kafka_group_id: None,
        retry_max_retries: -1,
        retry_backoff_ms: 200,
        retry_max_backoff_ms: 10_000,
        dead_letter_topic: None,
        acks_per_transaction: crate::consumer::DEFAULT_ACKS_PER_TRANSACTION,
        transaction_linger_ms: 20,
    })
}

/// Messages `group` acknowledged so far.
async fn acknowledged(db: &tokio_postgres::Client, group: &str) -> Result<i64> {
    let acked: Option<i64> = db
        .query_one(
            "SELECT sum(acked)::bigint FROM outbox_ack_chunks WHERE group_name = $1",
            &[&group],
        )
        .await
        .db("counting acknowledgements")?
        .get(0);
    Ok(acked.unwrap_or(0))
}

/// The JSON report and the table of stages.
fn write_report(args: &BenchArgs, rounds: Vec<Vec<Stage>>, figures: &[Figure]) -> Result<()> {
    let report = BenchReport {
        messages: args.messages,
        payload_bytes: args.payload_bytes,
        partitions: args.partitions,
        messages_per_request: args.messages_per_request,
        concurrency: args.concurrency,
        cores: std::thread::available_parallelism()
            .map(|c| c.get())
            .unwrap_or(1),
        warm_up_messages: args.warm_up_messages,
        figures: figures.to_vec(),
        stages: rounds.last().cloned().unwrap_or_default(),
        rounds,
    };
    let json = serde_json::to_string_pretty(&report)
        .map_err(|e| Error::Config(format!("encoding the report: {e}")))?;
    std::fs::write(&args.report, json).map_err(|source| Error::Io {
        context: format!("writing {}", args.report.display()),
        source,
    })?;
    println!("\nreport written to {}", args.report.display());
    Ok(())
}

/// The figures: median rate, median ratio with its spread over the rounds, and the
/// change against the baseline.
fn print_figures(figures: &[Figure], baseline: Option<&Baseline>, args: &BenchArgs) {
    let changes = baseline
        .map(|b| regression::compare(b, figures, args.tolerance))
        .unwrap_or_default();
    println!(
        "\nmedian of {} round(s):\n{:<12} {:>12} {:>34} {:>28}",
        args.rounds, "stage", "msg/s", "vs raw baseline (min–max)", "vs kept figure"
    );
    for f in figures {
        let ratio = match (&f.baseline, f.ratio) {
            (Some(b), Some(r)) => format!("{r:.2} × {b} ({:.2}–{:.2})", f.min, f.max),
            _ => format!("baseline ({:.0}–{:.0})", f.min, f.max),
        };
        let change = changes
            .iter()
            .find(|c| c.stage == f.stage)
            .map(|c| {
                format!(
                    "{:.2} → {:.2} ({:+.0} %){}",
                    c.before,
                    c.now,
                    (c.change - 1.0) * 100.0,
                    if c.regressed { " REGRESSED" } else { "" }
                )
            })
            .unwrap_or_else(|| "-".into());
        println!(
            "{:<12} {:>12.0} {:>34} {:>28}",
            f.stage, f.messages_per_second, ratio, change
        );
    }
}

fn report_stage(s: &Stage) {
    println!(
        "{:<12} {:>10.0} msg/s ({:.2}s)",
        s.name, s.messages_per_second, s.seconds
    );
}

async fn create_schema(database_url: &str, schema: &str) -> Result<String> {
    let client = crate::db::connect(database_url).await?;
    client
        .batch_execute(&format!("CREATE SCHEMA \"{schema}\""))
        .await
        .db("creating the benchmark schema")?;
    let sep = if database_url.contains('?') { '&' } else { '?' };
    Ok(format!(
        "{database_url}{sep}options=-csearch_path%3D{schema}"
    ))
}

fn free_port() -> Result<u16> {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .map_err(|source| Error::Io {
            context: "finding a free port".into(),
            source,
        })
}

async fn wait_for_http(http: &reqwest::Client, url: &str) -> Result<()> {
    for _ in 0..300 {
        if let Ok(r) = http.get(url).send().await {
            if r.status().is_success() {
                return Ok(());
            }
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    Err(Error::Bench(format!("{url} did not become healthy")))
}
