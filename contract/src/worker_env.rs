//! Each worker role's settings as the operator renders them into the pod's environment
//! and the worker reads them back (its flags take the same names through `env`), with
//! one set of defaults: the OutboxSystem's field defaults and the workers' flag
//! defaults are both [`defaults`], so a worker started by hand behaves as one the
//! operator started from a spec that leaves the field out.

use crate::crd::{ConsumerGroupSpec, OutboxSystemSpec};

/// Names of the environment variables.
pub mod names {
    /// Every role: the worker's name in logs and the relay lock (the pod name).
    pub const SERVICE_ID: &str = "SERVICE_ID";
    /// Every role: the outbox database.
    pub const DATABASE_URL: &str = "DATABASE_URL";
    /// Every role: the HTTP port.
    pub const HTTP_PORT: &str = "HTTP_PORT";
    /// Every role: the Kafka bootstrap servers (ConfigMap).
    pub const KAFKA_BOOTSTRAP_SERVERS: &str = "KAFKA_BOOTSTRAP_SERVERS";
    /// Every role: the topic (ConfigMap).
    pub const KAFKA_TOPICS: &str = "KAFKA_TOPICS";
    /// Every role: `namespace/name` of the system, checked against the schema's holder
    /// (ConfigMap).
    pub const OUTBOX_SYSTEM: &str = "OUTBOX_SYSTEM";
    /// Every role: the log filter (ConfigMap).
    pub const RUST_LOG: &str = "RUST_LOG";
    /// Every role, with `spec.database.caSecretRef`: the CA file.
    pub const PGSSLROOTCERT: &str = "PGSSLROOTCERT";
    /// Producer: outbox rows per relay read.
    pub const RELAY_ROWS_PER_READ: &str = "RELAY_ROWS_PER_READ";
    /// Producer: how long an idle relay waits before looking at the outbox again.
    pub const RELAY_LINGER_MS: &str = "RELAY_LINGER_MS";
    /// Producer: the backlog at which ingest answers 429.
    pub const MAX_BACKLOG_MESSAGES: &str = "MAX_BACKLOG_MESSAGES";
    /// Producer: the outbox table's size on disk at which ingest answers 429.
    pub const MAX_BACKLOG_BYTES: &str = "MAX_BACKLOG_BYTES";
    /// Producer: how long relayed rows are kept.
    pub const RETENTION_SECONDS: &str = "RETENTION_SECONDS";
    /// Producer: how long untouched ledger data is kept.
    pub const LEDGER_RETENTION_SECONDS: &str = "LEDGER_RETENTION_SECONDS";
    /// Consumer: its group as declared (the name in the ledger, metrics and reports).
    pub const KAFKA_CONSUMER_GROUP: &str = "KAFKA_CONSUMER_GROUP";
    /// Consumer: its group's id in Kafka (`OutboxSystem::kafka_group_id`); unset, the
    /// declared name.
    pub const KAFKA_CONSUMER_GROUP_ID: &str = "KAFKA_CONSUMER_GROUP_ID";
    /// Consumer: tries after the first failure (-1: forever).
    pub const RETRY_MAX_RETRIES: &str = "RETRY_MAX_RETRIES";
    /// Consumer: the first retry delay.
    pub const RETRY_BACKOFF_MS: &str = "RETRY_BACKOFF_MS";
    /// Consumer: the longest retry delay.
    pub const RETRY_MAX_BACKOFF_MS: &str = "RETRY_MAX_BACKOFF_MS";
    /// Consumer: where messages go after the last try.
    pub const DEAD_LETTER_TOPIC: &str = "DEAD_LETTER_TOPIC";
}

/// Prefix of the environment variables (and of the keys of an OutboxSystem's
/// client-settings Secret, which the workers get as environment) that become librdkafka
/// properties.
pub const KAFKA_CLIENT_PREFIX: &str = "KAFKA_CLIENT_";

/// The librdkafka property a `KAFKA_CLIENT_<PROPERTY>` name stands for: the prefix
/// dropped, lower case, underscores as dots (`KAFKA_CLIENT_SECURITY_PROTOCOL` is
/// `security.protocol`); `None` for any other name.
pub fn kafka_client_property(name: &str) -> Option<String> {
    let property = name.strip_prefix(KAFKA_CLIENT_PREFIX)?;
    if property.is_empty() {
        return None;
    }
    Some(property.to_ascii_lowercase().replace('_', "."))
}

/// The one set of defaults.
pub mod defaults {
    /// The HTTP port of every worker.
    pub const HTTP_PORT: u16 = 8080;
    /// Outbox rows per relay read.
    pub const RELAY_ROWS_PER_READ: i32 = 10_000;
    /// Idle relay wait, ms.
    pub const RELAY_LINGER_MS: i32 = 5;
    /// Backlog bound of ingest (0 would be none).
    pub const MAX_BACKLOG_MESSAGES: i64 = 20_000_000;
    /// Outbox table size bound of ingest, bytes (0: none).
    pub const MAX_BACKLOG_BYTES: i64 = 0;
    /// Relayed rows kept, s.
    pub const RETENTION_SECONDS: i64 = 3600;
    /// Untouched ledger data kept, s.
    pub const LEDGER_RETENTION_SECONDS: i64 = 7 * 24 * 3600;
    /// Consumer retries (-1: forever).
    pub const RETRY_MAX_RETRIES: i32 = -1;
    /// First consumer retry delay, ms.
    pub const RETRY_BACKOFF_MS: i64 = 100;
    /// Longest consumer retry delay, ms.
    pub const RETRY_MAX_BACKOFF_MS: i64 = 30_000;
}

/// What the operator sets for the producer role (besides what every role gets).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProducerSettings {
    pub relay_rows_per_read: i32,
    pub relay_linger_ms: i32,
    pub max_backlog_messages: i64,
    pub max_backlog_bytes: i64,
    pub retention_seconds: i64,
    pub ledger_retention_seconds: i64,
}

impl ProducerSettings {
    /// The producer settings of `spec`.
    pub fn of(spec: &OutboxSystemSpec) -> ProducerSettings {
        ProducerSettings {
            relay_rows_per_read: spec.producers.relay.rows_per_read(),
            relay_linger_ms: spec.producers.relay.linger_ms,
            max_backlog_messages: spec.producers.max_backlog.max(0),
            max_backlog_bytes: spec.producers.max_backlog_bytes.max(0),
            retention_seconds: spec.retention.relayed_seconds,
            ledger_retention_seconds: spec.retention.ledger_seconds,
        }
    }

    /// As environment variables.
    pub fn env(&self) -> Vec<(&'static str, String)> {
        vec![
            (
                names::RELAY_ROWS_PER_READ,
                self.relay_rows_per_read.to_string(),
            ),
            (names::RELAY_LINGER_MS, self.relay_linger_ms.to_string()),
            (
                names::MAX_BACKLOG_MESSAGES,
                self.max_backlog_messages.to_string(),
            ),
            (names::MAX_BACKLOG_BYTES, self.max_backlog_bytes.to_string()),
            (names::RETENTION_SECONDS, self.retention_seconds.to_string()),
            (
                names::LEDGER_RETENTION_SECONDS,
                self.ledger_retention_seconds.to_string(),
            ),
        ]
    }
}

/// What the operator sets for a consumer of one group (besides what every role gets).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConsumerSettings {
    pub group: String,
    pub kafka_group_id: String,
    pub retry_max_retries: i32,
    pub retry_backoff_ms: i64,
    pub retry_max_backoff_ms: i64,
    pub dead_letter_topic: Option<String>,
}

impl ConsumerSettings {
    /// The consumer settings of `group`, whose id in Kafka is `kafka_group_id`
    /// ([`crate::crd::OutboxSystem::kafka_group_id`]'s answer for it).
    pub fn of(group: &ConsumerGroupSpec, kafka_group_id: String) -> ConsumerSettings {
        ConsumerSettings {
            group: group.name.clone(),
            kafka_group_id,
            retry_max_retries: group.retry.max_retries,
            retry_backoff_ms: group.retry.backoff_ms,
            retry_max_backoff_ms: group.retry.max_backoff_ms,
            dead_letter_topic: group.dead_letter_topic.clone(),
        }
    }

    /// As environment variables (no dead-letter topic: none set).
    pub fn env(&self) -> Vec<(&'static str, String)> {
        let mut env = vec![
            (names::KAFKA_CONSUMER_GROUP, self.group.clone()),
            (names::KAFKA_CONSUMER_GROUP_ID, self.kafka_group_id.clone()),
            (names::RETRY_MAX_RETRIES, self.retry_max_retries.to_string()),
            (names::RETRY_BACKOFF_MS, self.retry_backoff_ms.to_string()),
            (
                names::RETRY_MAX_BACKOFF_MS,
                self.retry_max_backoff_ms.to_string(),
            ),
        ];
        if let Some(topic) = &self.dead_letter_topic {
            env.push((names::DEAD_LETTER_TOPIC, topic.clone()));
        }
        env
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::crd::OutboxSystem;

    #[test]
    fn kafka_client_names_become_librdkafka_properties() {
        assert_eq!(
            kafka_client_property("KAFKA_CLIENT_SECURITY_PROTOCOL").as_deref(),
            Some("security.protocol")
        );
        assert_eq!(kafka_client_property("KAFKA_CLIENT_"), None);
        assert_eq!(kafka_client_property("KAFKA_TOPICS"), None);
    }

    #[test]
    fn a_spec_that_leaves_the_settings_out_gets_the_one_set_of_defaults() {
        let spec: OutboxSystemSpec = serde_json::from_value(serde_json::json!({
            "kafka": {"bootstrapServers": "kafka:9092"},
            "database": {"urlSecretRef": {"name": "db", "key": "url"}},
            "topic": {"name": "events", "partitions": 3},
            "consumers": {"groups": [{"name": "g", "replicas": 1}]}
        }))
        .unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(
            ProducerSettings::of(&spec),
            ProducerSettings {
                relay_rows_per_read: defaults::RELAY_ROWS_PER_READ,
                relay_linger_ms: defaults::RELAY_LINGER_MS,
                max_backlog_messages: defaults::MAX_BACKLOG_MESSAGES,
                max_backlog_bytes: defaults::MAX_BACKLOG_BYTES,
                retention_seconds: defaults::RETENTION_SECONDS,
                ledger_retention_seconds: defaults::LEDGER_RETENTION_SECONDS,
            }
        );
        let mut system = OutboxSystem::new("orders", spec.clone());
        system.metadata.namespace = Some("team-a".into());
        assert_eq!(
            ConsumerSettings::of(&spec.consumers.groups[0], system.kafka_group_id("g")),
            ConsumerSettings {
                group: "g".into(),
                kafka_group_id: "team-a.orders.g".into(),
                retry_max_retries: defaults::RETRY_MAX_RETRIES,
                retry_backoff_ms: defaults::RETRY_BACKOFF_MS,
                retry_max_backoff_ms: defaults::RETRY_MAX_BACKOFF_MS,
                dead_letter_topic: None,
            }
        );
        assert_eq!(spec.producers.port, i32::from(defaults::HTTP_PORT));
    }
}
