//! Stage 7: the whole pipeline at once, as a load test runs it. A producer with its
//! relay and three consumer groups (one member each) run from the start; the N
//! messages go in through the HTTP batch endpoint, and the stage ends when every group
//! has acknowledged all of them (verified exactly). Its baseline is the raw stages'
//! times added up for the same work (COPY + produce + three consumes): the ratio is
//! the pipeline's overhead in one number, above 1 where the stages overlap better
//! than they cost.

use std::time::{Duration, Instant};

use super::{
    acknowledged, consumer_args, create_schema, producer_args, producer_common, send_batches,
    stage, wait_for_http, BenchArgs, Setup, Stage,
};
use crate::error::{Error, Result};
use crate::ledger;

/// Consumer groups of the end-to-end stage (the reference system has three).
pub const GROUPS: usize = 3;

/// The raw stages added up for the end-to-end stage's work.
pub fn raw_sum(raw_copy: &Stage, raw_produce: &Stage, raw_consume: &Stage) -> Stage {
    let seconds = raw_copy.seconds + raw_produce.seconds + GROUPS as f64 * raw_consume.seconds;
    Stage {
        name: "raw sum",
        messages: raw_copy.messages,
        seconds,
        messages_per_second: raw_copy.messages as f64 / seconds.max(1e-9),
        baseline: None,
        ratio: None,
    }
}

/// What the stage leaves running until the benchmark's shutdown: its workers, and
/// the schema they use (dropped once they stopped).
pub struct Running {
    pub tasks: Vec<tokio::task::JoinHandle<Result<()>>>,
    pub schema: String,
}

/// Runs the stage in a schema and topic of its own; returns it compared with `raw_sum`.
pub async fn run(
    args: &BenchArgs,
    setup: &Setup,
    raw_sum: &Stage,
    signal: crate::shutdown::ShutdownSignal,
) -> Result<(Stage, Running)> {
    let n = args.messages;
    let schema = schema_name(setup);
    let schema_url = create_schema(&args.database_url, &schema).await?;
    let topic = format!("{}-e2e", setup.tag).replace('_', "-");
    crate::kafka::create_topic(&setup.kafka, &topic, args.partitions, 1).await?;
    let common = producer_common(args, "bench-e2e-producer", &schema_url, &topic)?;
    let port = common.http_port;
    let mut tasks = vec![tokio::spawn(crate::producer::run(
        producer_args(args, common.clone(), true),
        signal.clone(),
    ))];
    let http = reqwest::Client::new();
    let base = format!("http://127.0.0.1:{port}");
    wait_for_http(&http, &format!("{base}{}", crate::probes::READINESS_PATH)).await?;
    let groups: Vec<String> = (0..GROUPS)
        .map(|g| format!("{}-e2e-{g}", setup.tag))
        .collect();
    for group in &groups {
        let consumer = consumer_args(common.clone(), group)?;
        let health = format!(
            "http://127.0.0.1:{}{}",
            consumer.common.http_port,
            crate::probes::READINESS_PATH
        );
        tasks.push(tokio::spawn(crate::consumer::run(consumer, signal.clone())));
        wait_for_http(&http, &health).await?;
    }

    let db = crate::db::connect(&schema_url).await?;
    let started = Instant::now();
    let expected = send_batches(args, setup, &topic, &http, &base).await?;
    for group in &groups {
        while (acknowledged(&db, group).await? as usize) < n {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
    let elapsed = started.elapsed();
    let reports = ledger::group_reports(&db, &groups, &expected).await?;
    if let Some(r) = reports.iter().find(|r| !r.is_complete()) {
        return Err(Error::Bench(format!(
            "end to end: group {} has {} missing and {} out of order",
            r.group, r.missing, r.out_of_order
        )));
    }
    let mut e2e = stage("end to end", n, elapsed);
    e2e.baseline = Some(raw_sum.name);
    e2e.ratio = Some(raw_sum.seconds / e2e.seconds);
    super::report_stage(&e2e);
    println!(
        "end to end: {GROUPS} groups acknowledged all {n} messages, verified exactly (0 missing, {} duplicates)",
        reports.iter().map(|r| r.duplicates).sum::<u64>()
    );
    Ok((e2e, Running { tasks, schema }))
}

/// The stage's own schema.
pub fn schema_name(setup: &Setup) -> String {
    format!("{}_e2e", setup.tag)
}
