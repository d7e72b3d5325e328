//! Kafka as the tests see it: create a topic, read its partitions, a config value and
//! how many messages it holds. Each takes the bootstrap servers, so the same helpers
//! serve the shared testbed broker and a test's throwaway one. Test helpers: a failure
//! to create panics naming the topic; a topic that cannot be read is `None`.

use std::time::Duration;

use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, ResourceSpecifier, TopicReplication};
use rdkafka::client::DefaultClientContext;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::ClientConfig;

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

/// Messages in `topic`: the sum of its partitions' high minus low watermarks (None:
/// the topic or one of its partitions cannot be read).
pub async fn message_count(bootstrap: &str, topic: &str) -> Option<i64> {
    let config = config(bootstrap);
    let topic = topic.to_string();
    tokio::task::spawn_blocking(move || {
        let consumer: BaseConsumer = config.create().ok()?;
        let metadata = consumer
            .fetch_metadata(Some(&topic), METADATA_TIMEOUT)
            .ok()?;
        let mut total = 0;
        for partition in metadata.topics().iter().flat_map(|t| t.partitions()) {
            let (low, high) = consumer
                .fetch_watermarks(&topic, partition.id(), METADATA_TIMEOUT)
                .ok()?;
            total += high - low;
        }
        Some(total)
    })
    .await
    .ok()
    .flatten()
}
