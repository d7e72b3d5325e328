//! Kafka clients: configuration, the relay's idempotent producer, topic checks.

use std::collections::BTreeMap;
use std::time::Duration;

use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::client::DefaultClientContext;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::producer::FutureProducer;
use rdkafka::ClientConfig;

use crate::error::{Error, KafkaContext, Result};

/// Base client settings: bootstrap servers plus `KAFKA_CLIENT_*` properties (SASL/TLS).
pub fn client_config(bootstrap_servers: &str, extra: &BTreeMap<String, String>) -> ClientConfig {
    let mut config = ClientConfig::new();
    config.set("bootstrap.servers", bootstrap_servers);
    for (key, value) in extra {
        config.set(key, value);
    }
    config
}

/// The relay's producer: idempotent, acks from all in-sync replicas, never gives up on a
/// message locally (a broker outage stalls the relay instead of dropping or reordering),
/// fills record batches generously but never above `record_batch_bytes` (the smallest
/// topic limit).
pub fn relay_producer(base: &ClientConfig, record_batch_bytes: usize) -> Result<FutureProducer> {
    let mut config = base.clone();
    config
        .set("enable.idempotence", "true")
        .set("acks", "all")
        .set("max.in.flight.requests.per.connection", "5")
        .set("message.timeout.ms", "0")
        .set("linger.ms", "5")
        .set(
            "message.max.bytes",
            crate::message_size::RELAY_MESSAGE_MAX_BYTES.to_string(),
        )
        .set("batch.size", record_batch_bytes.to_string())
        .set("batch.num.messages", "10000")
        .set("queue.buffering.max.messages", "200000")
        .set("compression.type", "lz4");
    // 64 MiB unless the caller sized it (the relay does, from RELAY_QUEUE_KBYTES).
    if base.get("queue.buffering.max.kbytes").is_none() {
        config.set("queue.buffering.max.kbytes", "65536");
    }
    config.create().kafka("creating the relay's Kafka producer")
}

/// Checks that the brokers answer and that every topic exists, naming what is missing.
/// Blocking: call from `spawn_blocking` in async code.
pub fn check_topics(base: &ClientConfig, topics: &[String], timeout: Duration) -> Result<()> {
    let consumer: BaseConsumer = base.create().kafka("creating a Kafka metadata client")?;
    let metadata = consumer
        .fetch_metadata(None, timeout)
        .kafka("Kafka brokers did not answer a metadata request (unreachable?)")?;
    let missing: Vec<&String> = topics
        .iter()
        .filter(|t| {
            !metadata.topics().iter().any(|m| {
                m.name() == t.as_str() && m.error().is_none() && !m.partitions().is_empty()
            })
        })
        .collect();
    if missing.is_empty() {
        Ok(())
    } else {
        Err(Error::KafkaMissing(format!(
            "topic(s) {} do not exist (this cluster does not create topics on demand)",
            missing
                .iter()
                .map(|t| format!("`{t}`"))
                .collect::<Vec<_>>()
                .join(", ")
        )))
    }
}

/// [`check_topics`] from async code.
pub async fn check_topics_async(
    base: &ClientConfig,
    topics: &[String],
    timeout: Duration,
) -> Result<()> {
    let base = base.clone();
    let topics = topics.to_vec();
    tokio::task::spawn_blocking(move || check_topics(&base, &topics, timeout))
        .await
        .map_err(|e| Error::Config(format!("topic check task failed: {e}")))?
}

/// Creates a topic (replication factor 1 unless given); an existing topic is fine.
pub async fn create_topic(
    base: &ClientConfig,
    name: &str,
    partitions: i32,
    replication: i32,
) -> Result<()> {
    let admin: AdminClient<DefaultClientContext> =
        base.create().kafka("creating a Kafka admin client")?;
    let topic = NewTopic::new(name, partitions, TopicReplication::Fixed(replication));
    let results = admin
        .create_topics(
            [&topic],
            &AdminOptions::new().operation_timeout(Some(Duration::from_secs(30))),
        )
        .await
        .kafka(format!("creating topic {name}"))?;
    for result in results {
        match result {
            Ok(_) => {}
            Err((_, rdkafka::types::RDKafkaErrorCode::TopicAlreadyExists)) => {}
            Err((topic, code)) => {
                return Err(Error::KafkaMissing(format!(
                    "creating topic {topic} failed: {code}"
                )))
            }
        }
    }
    Ok(())
}
