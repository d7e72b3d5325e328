//! Kafka as the tests see it: create a topic, read its partitions, a config value, how
//! many messages it holds, and its messages from the start. Each takes the bootstrap servers, so the same helpers
//! serve the shared testbed broker and a test's throwaway one. Test helpers: a failure
//! to create panics naming the topic; a topic that cannot be read is `None`.

use std::time::Duration;

use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, ResourceSpecifier, TopicReplication};
use rdkafka::client::DefaultClientContext;
use std::collections::HashMap;

use rdkafka::consumer::{BaseConsumer, Consumer, StreamConsumer};
use rdkafka::message::{Headers, Message};
use rdkafka::{ClientConfig, Offset, TopicPartitionList};

const METADATA_TIMEOUT: Duration = Duration::from_secs(10);

fn config(bootstrap: &str) -> ClientConfig {
    let mut config = ClientConfig::new();
    config.set("bootstrap.servers", bootstrap);
    config
}

/// Creates `topic` with `partitions` (replication 1) and topic-level `configs`
/// (`max.message.bytes`, ...).
pub async fn create_topic(bootstrap: &str, topic: &str, partitions: i32, configs: &[(&str, &str)]) {
    let admin: AdminClient<DefaultClientContext> = config(bootstrap)
        .create()
        .unwrap_or_else(|e| panic!("a Kafka admin client for {bootstrap}: {e}"));
    let mut new = NewTopic::new(topic, partitions, TopicReplication::Fixed(1));
    for (key, value) in configs {
        new = new.set(key, value);
    }
    let results = admin
        .create_topics([&new], &AdminOptions::new())
        .await
        .unwrap_or_else(|e| panic!("creating topic {topic}: {e}"));
    for result in results {
        result.unwrap_or_else(|(t, e)| panic!("creating topic {t}: {e}"));
    }
}

/// Partitions of `topic` (None: no such topic). Lists all topics, which never
/// auto-creates one.
pub async fn partitions(bootstrap: &str, topic: &str) -> Option<usize> {
    let config = config(bootstrap);
    let topic = topic.to_string();
    tokio::task::spawn_blocking(move || {
        let consumer: BaseConsumer = config.create().ok()?;
        let metadata = consumer.fetch_metadata(None, METADATA_TIMEOUT).ok()?;
        metadata
            .topics()
            .iter()
            .find(|t| t.name() == topic && t.error().is_none())
            .map(|t| t.partitions().len())
    })
    .await
    .ok()
    .flatten()
}

/// The value of `key` in the config of `topic`, as the broker reports it.
pub async fn topic_config(bootstrap: &str, topic: &str, key: &str) -> Option<String> {
    let admin: AdminClient<DefaultClientContext> = config(bootstrap).create().ok()?;
    let results = admin
        .describe_configs([&ResourceSpecifier::Topic(topic)], &AdminOptions::new())
        .await
        .ok()?;
    let resource = results.into_iter().next()?.ok()?;
    resource.get(key)?.value.clone()
}

/// Each partition of `topic` with its low and high watermarks (None: the topic or one
/// of its partitions cannot be read).
fn watermarks(consumer: &BaseConsumer, topic: &str) -> Option<Vec<(i32, i64, i64)>> {
    let metadata = consumer
        .fetch_metadata(Some(topic), METADATA_TIMEOUT)
        .ok()?;
    metadata
        .topics()
        .iter()
        .flat_map(|t| t.partitions())
        .map(|p| {
            let (low, high) = consumer
                .fetch_watermarks(topic, p.id(), METADATA_TIMEOUT)
                .ok()?;
            Some((p.id(), low, high))
        })
        .collect()
}

/// Messages in `topic`: the sum of its partitions' high minus low watermarks (None:
/// the topic or one of its partitions cannot be read).
pub async fn message_count(bootstrap: &str, topic: &str) -> Option<i64> {
    let config = config(bootstrap);
    let topic = topic.to_string();
    tokio::task::spawn_blocking(move || {
        let consumer: BaseConsumer = config.create().ok()?;
        let partitions = watermarks(&consumer, &topic)?;
        Some(partitions.iter().map(|(_, low, high)| high - low).sum())
    })
    .await
    .ok()
    .flatten()
}

/// A message read back from a topic.
#[derive(Debug, Clone)]
pub struct TopicMessage {
    /// The payload as text (lossy UTF-8; empty when it has none).
    pub payload: String,
    pub headers: HashMap<String, String>,
    /// Milliseconds since the epoch: when the producer handed it to its client.
    pub timestamp_ms: i64,
}

/// Reads `topic` from the start, as a group of its own, until `count` messages arrived;
/// panics naming the topic and how many came when `timeout` runs out first.
pub async fn read_topic(
    bootstrap: &str,
    topic: &str,
    count: usize,
    timeout: Duration,
) -> Vec<TopicMessage> {
    let reader: StreamConsumer = config(bootstrap)
        .set("group.id", crate::unique_name("topic-reader"))
        .set("auto.offset.reset", "earliest")
        .set("enable.auto.commit", "false")
        .create()
        .unwrap_or_else(|e| panic!("a Kafka consumer for {bootstrap}: {e}"));
    reader
        .subscribe(&[topic])
        .unwrap_or_else(|e| panic!("subscribing to {topic}: {e}"));
    let mut seen = Vec::new();
    let deadline = tokio::time::Instant::now() + timeout;
    while seen.len() < count {
        let next = tokio::time::timeout_at(deadline, reader.recv())
            .await
            .unwrap_or_else(|_| {
                panic!(
                    "only {} of {count} messages on {topic} within {timeout:?}",
                    seen.len()
                )
            })
            .unwrap_or_else(|e| panic!("reading {topic}: {e}"));
        let headers = next
            .headers()
            .map(|h| {
                h.iter()
                    .map(|h| {
                        let value = h.value.map(String::from_utf8_lossy).unwrap_or_default();
                        (h.key.to_string(), value.into_owned())
                    })
                    .collect()
            })
            .unwrap_or_default();
        seen.push(TopicMessage {
            payload: next
                .payload()
                .map(|p| String::from_utf8_lossy(p).into_owned())
                .unwrap_or_default(),
            headers,
            timestamp_ms: next.timestamp().to_millis().unwrap_or_default(),
        });
    }
    seen
}

/// Whether consumer group `group` has committed, on every partition of `topic`, the
/// offset past the partition's last message (None: the broker could not be asked).
/// Once it has, and while nothing new is written, the group has nothing left to read:
/// no delivery of any message is still to come.
pub async fn group_caught_up(bootstrap: &str, topic: &str, group: &str) -> Option<bool> {
    let mut config = config(bootstrap);
    config.set("group.id", group);
    let topic = topic.to_string();
    tokio::task::spawn_blocking(move || {
        let consumer: BaseConsumer = config.create().ok()?;
        let partitions = watermarks(&consumer, &topic)?;
        let mut list = TopicPartitionList::new();
        for (partition, _, _) in &partitions {
            list.add_partition(&topic, *partition);
        }
        let committed = consumer.committed_offsets(list, METADATA_TIMEOUT).ok()?;
        Some(partitions.iter().all(|&(partition, low, high)| {
            match committed
                .find_partition(&topic, partition)
                .map(|e| e.offset())
            {
                Some(Offset::Offset(at)) => at >= high,
                // Nothing committed: caught up only where there is nothing to read.
                _ => high == low,
            }
        }))
    })
    .await
    .ok()
    .flatten()
}
