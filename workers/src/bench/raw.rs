//! Stages 1 to 3, the raw baselines: binary COPY into a plain table with the outbox's
//! columns, librdkafka produce with the relay's settings, and librdkafka consume of what
//! was produced, with nothing of the outbox in between.

use std::time::{Duration, Instant};

use futures::StreamExt;
use rdkafka::consumer::{Consumer, StreamConsumer};
use rdkafka::producer::FutureRecord;
use tokio_postgres::binary_copy::BinaryCopyInWriter;
use tokio_postgres::types::{ToSql, Type};

use super::{key_of, report_stage, stage, BenchArgs, Setup, Stage};
use crate::error::{DbContext, Error, KafkaContext, Result};
use crate::ledger;

/// Stage 1: raw COPY of the same rows into a plain table: the ingest baseline.
pub(super) async fn copy_stage(args: &BenchArgs, setup: &Setup) -> Result<Stage> {
    let (n, key) = (args.messages, key_of(args.keys));
    let (schema_url, raw_topic, payload) = (&setup.schema_url, &setup.raw_topic, &setup.payload);
    let db = ledger::connect_and_migrate(schema_url).await?;
    db.batch_execute(
        "CREATE TABLE raw_copy (id bigint, topic text, key text, payload text, headers jsonb,
                                created_at timestamptz NOT NULL DEFAULT now())",
    )
    .await
    .db("creating the raw COPY table")?;
    drop(db);
    let started = Instant::now();
    let chunks: Vec<(usize, usize)> = (0..n)
        .step_by(args.messages_per_request)
        .map(|s| (s, (s + args.messages_per_request).min(n)))
        .collect();
    let results: Vec<Result<()>> = futures::stream::iter(chunks.into_iter().map(|(from, to)| {
        let url = schema_url.to_string();
        let topic = raw_topic.to_string();
        let payload = payload.to_string();
        async move { raw_copy(&url, &topic, &payload, from, to, key).await }
    }))
    .buffer_unordered(args.concurrency)
    .collect()
    .await;
    results.into_iter().collect::<Result<Vec<()>>>()?;
    let raw_copy_stage = stage("raw_copy", n, started.elapsed());
    report_stage(&raw_copy_stage);
    Ok(raw_copy_stage)
}

/// Stage 2: raw librdkafka produce with the relay's settings: the relay baseline.
pub(super) async fn produce_stage(args: &BenchArgs, setup: &Setup) -> Result<Stage> {
    let (n, key) = (args.messages, key_of(args.keys));
    let (kafka, raw_topic, payload) = (&setup.kafka, &setup.raw_topic, &setup.payload);
    let producer =
        crate::kafka::relay_producer(kafka, crate::message_size::RELAY_MESSAGE_MAX_BYTES)?;
    let started = Instant::now();
    let mut deliveries = Vec::with_capacity(n);
    for i in 0..n {
        let k = key(i);
        let id = i.to_string();
        let mut record = FutureRecord::to(raw_topic)
            .payload(payload)
            .key(&k)
            .headers(
                rdkafka::message::OwnedHeaders::new().insert(rdkafka::message::Header {
                    key: crate::headers::MESSAGE_ID,
                    value: Some(&id),
                }),
            );
        loop {
            match producer.send_result(record) {
                Ok(d) => {
                    deliveries.push(d);
                    break;
                }
                Err((
                    rdkafka::error::KafkaError::MessageProduction(
                        rdkafka::types::RDKafkaErrorCode::QueueFull,
                    ),
                    r,
                )) => {
                    record = r;
                    tokio::time::sleep(Duration::from_millis(2)).await;
                }
                Err((e, _)) => {
                    return Err(Error::Kafka {
                        context: "raw produce".into(),
                        source: e,
                    })
                }
            }
        }
    }
    for d in deliveries {
        match d.await {
            Ok(Ok(_)) => {}
            Ok(Err((e, _))) => {
                return Err(Error::Kafka {
                    context: "raw produce delivery".into(),
                    source: e,
                })
            }
            Err(_) => return Err(Error::Bench("raw produce: delivery report dropped".into())),
        }
    }
    let raw_produce = stage("raw_produce", n, started.elapsed());
    report_stage(&raw_produce);
    Ok(raw_produce)
}

/// Stage 3: raw librdkafka consume of what stage 2 produced: the consumer baseline.
pub(super) async fn consume_stage(args: &BenchArgs, setup: &Setup) -> Result<Stage> {
    let (n, tag, raw_topic) = (args.messages, &setup.tag, &setup.raw_topic);
    let kafka = &setup.kafka;
    let mut config = kafka.clone();
    config
        .set("group.id", format!("{tag}-raw"))
        .set("enable.auto.commit", "false")
        .set("auto.offset.reset", "earliest");
    let consumer: StreamConsumer = config.create().kafka("creating the raw consumer")?;
    consumer
        .subscribe(&[raw_topic.as_str()])
        .kafka("subscribing")?;
    let mut seen = 0usize;
    let mut first = None;
    while seen < n {
        let m = consumer.recv().await.kafka("raw consume")?;
        first.get_or_insert_with(Instant::now);
        let _ = rdkafka::Message::headers(&m);
        seen += 1;
    }
    let raw_consume = stage(
        "raw_consume",
        n,
        first.map(|f| f.elapsed()).unwrap_or_default(),
    );
    report_stage(&raw_consume);
    Ok(raw_consume)
}

/// Copies rows `from..to` into `raw_copy` in one transaction of one session.
async fn raw_copy(
    url: &str,
    topic: &str,
    payload: &str,
    from: usize,
    to: usize,
    key: impl Fn(usize) -> String,
) -> Result<()> {
    let mut client = crate::db::connect(url).await?;
    let tx = client.transaction().await.db("raw COPY transaction")?;
    let sink = tx
        .copy_in("COPY raw_copy (id, topic, key, payload, headers) FROM STDIN (FORMAT binary)")
        .await
        .db("raw COPY")?;
    let writer = BinaryCopyInWriter::new(
        sink,
        &[Type::INT8, Type::TEXT, Type::TEXT, Type::TEXT, Type::JSONB],
    );
    futures::pin_mut!(writer);
    let none: Option<serde_json::Value> = None;
    for i in from..to {
        let id = i as i64;
        let k = key(i);
        let row: [&(dyn ToSql + Sync); 5] = [&id, &topic, &k, &payload, &none];
        writer.as_mut().write(&row).await.db("raw COPY rows")?;
    }
    writer.finish().await.db("raw COPY finish")?;
    tx.commit().await.db("raw COPY commit")?;
    Ok(())
}
