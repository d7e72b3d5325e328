//! The Kafka side of an OutboxSystem: the topic (through the admin API) and consumer lag.

use std::collections::BTreeMap;
use std::time::Duration;

use k8s_openapi::ByteString;
use rdkafka::admin::{
    AdminClient, AdminOptions, AlterConfig, ConfigSource, NewPartitions, NewTopic,
    ResourceSpecifier, TopicReplication,
};
use rdkafka::client::DefaultClientContext;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::{ClientConfig, Offset, TopicPartitionList};

use crate::crd::TopicSpec;
use crate::error::{Error, Result};

/// How long one Kafka request may take before the reconcile gives up and retries later.
const KAFKA_TIMEOUT: Duration = Duration::from_secs(10);

/// Prefix of the keys in the client-settings Secret that become librdkafka properties.
pub use outbox_contract::worker_env::KAFKA_CLIENT_PREFIX as CLIENT_SETTING_PREFIX;

/// The librdkafka properties the operator's own client takes from the client-settings
/// Secret: how to reach and authenticate to the brokers, with certificates and keys
/// given inline (`*.pem`). Nothing that names a file (`ssl.ca.location`,
/// `ssl.keystore.location`, `sasl.kerberos.keytab`), loads code
/// (`plugin.library.paths`, `ssl.engine.location`), runs a command
/// (`sasl.kerberos.kinit.cmd`) or makes the operator fetch a URL
/// (`sasl.oauthbearer.token.endpoint.url`) reaches the operator's process: an allow
/// list, so a property a later librdkafka adds is refused until it is added here. The
/// workers get every `KAFKA_CLIENT_*` key.
pub const OPERATOR_CLIENT_PROPERTIES: &[&str] = &[
    "security.protocol",
    "sasl.mechanism",
    "sasl.mechanisms",
    "sasl.username",
    "sasl.password",
    "ssl.ca.pem",
    "ssl.certificate.pem",
    "ssl.key.pem",
    "ssl.key.password",
    "ssl.endpoint.identification.algorithm",
    "enable.ssl.certificate.verification",
    "ssl.cipher.suites",
    "ssl.curves.list",
    "ssl.sigalgs.list",
    "client.id",
    "client.rack",
    "client.dns.lookup",
    "broker.address.family",
    "socket.timeout.ms",
    "socket.connection.setup.timeout.ms",
    "socket.keepalive.enable",
    "connections.max.idle.ms",
    "reconnect.backoff.ms",
    "reconnect.backoff.max.ms",
    "metadata.max.age.ms",
    "topic.metadata.refresh.interval.ms",
    "api.version.request",
    "api.version.fallback.ms",
    "broker.version.fallback",
];

/// A key of the client-settings Secret the operator's own client does not take.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RefusedSetting {
    /// The Secret's key, e.g. `KAFKA_CLIENT_SSL_CA_LOCATION`.
    pub key: String,
    /// The librdkafka property it stands for, e.g. `ssl.ca.location`.
    pub property: String,
}

/// What the operator's own client makes of the client-settings Secret.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ClientProperties {
    /// Properties it sets.
    pub accepted: BTreeMap<String, String>,
    /// Keys it refuses (outside [`OPERATOR_CLIENT_PROPERTIES`]).
    pub refused: Vec<RefusedSetting>,
}

/// Turns the client-settings Secret's keys into librdkafka properties for the
/// operator's own client: `KAFKA_CLIENT_SECURITY_PROTOCOL` -> `security.protocol`,
/// accepted when it is one of [`OPERATOR_CLIENT_PROPERTIES`], else refused. Keys
/// without the prefix are ignored.
pub fn client_properties(data: &BTreeMap<String, ByteString>) -> ClientProperties {
    let mut properties = ClientProperties::default();
    for (key, value) in data {
        let Some(property) = outbox_contract::worker_env::kafka_client_property(key) else {
            continue;
        };
        if OPERATOR_CLIENT_PROPERTIES.contains(&property.as_str()) {
            properties
                .accepted
                .insert(property, String::from_utf8_lossy(&value.0).into_owned());
        } else {
            properties.refused.push(RefusedSetting {
                key: key.clone(),
                property,
            });
        }
    }
    properties
}

/// The librdkafka configuration of the operator's clients.
pub fn client_config(
    bootstrap_servers: &str,
    properties: &BTreeMap<String, String>,
) -> ClientConfig {
    let mut config = ClientConfig::new();
    config.set("bootstrap.servers", bootstrap_servers);
    // A metadata request must never create the topic behind the operator's back.
    config.set("allow.auto.create.topics", "false");
    for (key, value) in properties {
        config.set(key, value);
    }
    config
}

/// A topic as found in Kafka.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ObservedTopic {
    /// Number of partitions.
    pub partitions: i32,
    /// Replicas of the first partition.
    pub replication_factor: i32,
    /// Values of the topic's configuration entries that are set on the topic itself.
    pub dynamic_config: BTreeMap<String, String>,
    /// Effective values of the configuration keys the spec names.
    pub effective_config: BTreeMap<String, String>,
}

/// What has to happen to make the topic match the spec.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TopicPlan {
    /// Create the topic with the spec's partitions, replication and config.
    pub create: bool,
    /// Raise the partition count to this number.
    pub raise_partitions_to: Option<i32>,
    /// Config entries to set (key, wanted value), only those that differ.
    pub config_changes: BTreeMap<String, String>,
    /// Mismatches the operator cannot fix and reports in the TopicReady condition.
    pub conflicts: Vec<String>,
}

impl TopicPlan {
    /// True when the topic already matches the spec.
    pub fn is_noop(&self) -> bool {
        !self.create
            && self.raise_partitions_to.is_none()
            && self.config_changes.is_empty()
            && self.conflicts.is_empty()
    }
}

/// Compares the spec with what Kafka has (pure).
pub fn plan_topic(spec: &TopicSpec, observed: Option<&ObservedTopic>) -> TopicPlan {
    let Some(observed) = observed else {
        return TopicPlan {
            create: true,
            raise_partitions_to: None,
            config_changes: BTreeMap::new(),
            conflicts: Vec::new(),
        };
    };
    let mut conflicts = Vec::new();
    let raise_partitions_to = match observed.partitions.cmp(&spec.partitions) {
        std::cmp::Ordering::Less => Some(spec.partitions),
        std::cmp::Ordering::Equal => None,
        std::cmp::Ordering::Greater => {
            conflicts.push(format!(
                "spec.topic.partitions is {} but topic {} has {} partitions in Kafka; Kafka cannot remove partitions, so the topic keeps {}",
                spec.partitions, spec.name, observed.partitions, observed.partitions
            ));
            None
        }
    };
    if observed.replication_factor != i32::from(spec.replication_factor) {
        conflicts.push(format!(
            "spec.topic.replicationFactor is {} but topic {} has replication factor {} in Kafka; the operator does not reassign replicas",
            spec.replication_factor, spec.name, observed.replication_factor
        ));
    }
    let config_changes = spec
        .config
        .iter()
        .filter(|(key, value)| observed.effective_config.get(*key) != Some(*value))
        .map(|(key, value)| (key.clone(), value.clone()))
        .collect();
    TopicPlan {
        create: false,
        raise_partitions_to,
        config_changes,
        conflicts,
    }
}

/// The operator's Kafka admin connection for one OutboxSystem.
pub struct KafkaAdmin {
    admin: AdminClient<DefaultClientContext>,
    config: ClientConfig,
}

impl KafkaAdmin {
    /// Connects (lazily: librdkafka connects on the first request).
    pub fn new(config: ClientConfig) -> Result<Self> {
        let admin = config
            .create::<AdminClient<DefaultClientContext>>()
            .map_err(Error::kafka("creating the admin client"))?;
        Ok(KafkaAdmin { admin, config })
    }

    fn options() -> AdminOptions {
        AdminOptions::new()
            .request_timeout(Some(KAFKA_TIMEOUT))
            .operation_timeout(Some(KAFKA_TIMEOUT))
    }

    /// The Kafka cluster's id (`cluster.id`): which cluster the bootstrap servers lead
    /// to, whatever they are called. Topic ownership is recorded against it.
    pub async fn cluster_id(&self) -> Result<String> {
        let config = self.config.clone();
        let action = "reading the cluster id".to_string();
        tokio::task::spawn_blocking(move || {
            let consumer: BaseConsumer = config.create()?;
            consumer
                .client()
                .fetch_cluster_id(KAFKA_TIMEOUT)
                .filter(|id| !id.is_empty())
                .ok_or(KafkaError::MetadataFetch(
                    RDKafkaErrorCode::OperationTimedOut,
                ))
        })
        .await
        .map_err(|source| Error::KafkaTask {
            action: action.clone(),
            source,
        })?
        .map_err(Error::kafka(action))
    }

    /// The topic as Kafka has it, or None when it does not exist.
    pub async fn describe_topic(&self, spec: &TopicSpec) -> Result<Option<ObservedTopic>> {
        let name = spec.name.clone();
        let config = self.config.clone();
        let action = format!("reading metadata of topic {name}");
        let metadata = tokio::task::spawn_blocking(move || {
            let consumer: BaseConsumer = config.create()?;
            consumer.fetch_metadata(Some(&name), KAFKA_TIMEOUT)
        })
        .await
        .map_err(|source| Error::KafkaTask {
            action: action.clone(),
            source,
        })?
        .map_err(Error::kafka(action))?;
        let Some(topic) = metadata.topics().iter().find(|t| t.name() == spec.name) else {
            return Ok(None);
        };
        match topic.error() {
            None => {}
            Some(rdkafka::types::RDKafkaRespErr::RD_KAFKA_RESP_ERR_UNKNOWN_TOPIC_OR_PART) => {
                return Ok(None)
            }
            Some(code) => {
                return Err(Error::Kafka {
                    action: format!("reading metadata of topic {}", spec.name),
                    source: KafkaError::MetadataFetch(RDKafkaErrorCode::from(code)),
                })
            }
        }
        if topic.partitions().is_empty() {
            return Ok(None);
        }
        let partitions = i32::try_from(topic.partitions().len()).unwrap_or(i32::MAX);
        let replication_factor =
            i32::try_from(topic.partitions()[0].replicas().len()).unwrap_or(i32::MAX);

        let results = self
            .admin
            .describe_configs(&[ResourceSpecifier::Topic(&spec.name)], &Self::options())
            .await
            .map_err(Error::kafka(format!(
                "describing the config of topic {}",
                spec.name
            )))?;
        let mut dynamic_config = BTreeMap::new();
        let mut effective_config = BTreeMap::new();
        for result in results {
            let resource = result.map_err(|code| Error::Kafka {
                action: format!("describing the config of topic {}", spec.name),
                source: KafkaError::AdminOp(code),
            })?;
            for entry in resource.entries {
                let Some(value) = entry.value else { continue };
                if spec.config.contains_key(&entry.name) {
                    effective_config.insert(entry.name.clone(), value.clone());
                }
                if entry.source == ConfigSource::DynamicTopic {
                    dynamic_config.insert(entry.name, value);
                }
            }
        }
        Ok(Some(ObservedTopic {
            partitions,
            replication_factor,
            dynamic_config,
            effective_config,
        }))
    }

    /// Carries out `plan` (create, raise partitions, set config). Conflicts are not
    /// touched: the caller reports them.
    pub async fn apply_plan(
        &self,
        spec: &TopicSpec,
        observed: Option<&ObservedTopic>,
        plan: &TopicPlan,
    ) -> Result<()> {
        if plan.create {
            return self.create_topic(spec).await;
        }
        if let Some(count) = plan.raise_partitions_to {
            self.raise_partitions(spec, count).await?;
        }
        if !plan.config_changes.is_empty() {
            self.set_config(spec, observed).await?;
        }
        Ok(())
    }

    /// Creates the topic with the spec's partitions, replication factor and config; a
    /// topic that exists by now is fine.
    async fn create_topic(&self, spec: &TopicSpec) -> Result<()> {
        let mut topic = NewTopic::new(
            &spec.name,
            spec.partitions,
            TopicReplication::Fixed(i32::from(spec.replication_factor)),
        );
        for (key, value) in &spec.config {
            topic = topic.set(key, value);
        }
        let results = self
            .admin
            .create_topics([&topic], &Self::options())
            .await
            .map_err(Error::kafka(format!("creating topic {}", spec.name)))?;
        for result in results {
            match result {
                Ok(_) | Err((_, RDKafkaErrorCode::TopicAlreadyExists)) => {}
                Err((_, code)) => {
                    return Err(Error::Kafka {
                        action: format!("creating topic {}", spec.name),
                        source: KafkaError::AdminOp(code),
                    })
                }
            }
        }
        Ok(())
    }

    /// Raises the topic's partition count to `count`.
    async fn raise_partitions(&self, spec: &TopicSpec, count: i32) -> Result<()> {
        let count = usize::try_from(count).unwrap_or(1);
        let results = self
            .admin
            .create_partitions([&NewPartitions::new(&spec.name, count)], &Self::options())
            .await
            .map_err(Error::kafka(format!(
                "raising partitions of topic {}",
                spec.name
            )))?;
        for result in results {
            if let Err((_, code)) = result {
                return Err(Error::Kafka {
                    action: format!("raising partitions of topic {} to {count}", spec.name),
                    source: KafkaError::AdminOp(code),
                });
            }
        }
        Ok(())
    }

    /// Sets the spec's config entries on the topic, keeping its other dynamic ones.
    async fn set_config(&self, spec: &TopicSpec, observed: Option<&ObservedTopic>) -> Result<()> {
        // AlterConfigs replaces the topic's whole dynamic config: send what is set
        // now plus the spec's entries so that nothing else is reset.
        let mut wanted = observed
            .map(|o| o.dynamic_config.clone())
            .unwrap_or_default();
        wanted.extend(spec.config.clone());
        let mut alter = AlterConfig::new(ResourceSpecifier::Topic(&spec.name));
        for (key, value) in &wanted {
            alter = alter.set(key, value);
        }
        let results = self
            .admin
            .alter_configs([&alter], &Self::options())
            .await
            .map_err(Error::kafka(format!(
                "setting the config of topic {}",
                spec.name
            )))?;
        for result in results {
            if let Err((_, code)) = result {
                return Err(Error::Kafka {
                    action: format!("setting the config of topic {}", spec.name),
                    source: KafkaError::AdminOp(code),
                });
            }
        }
        Ok(())
    }

    /// Deletes the topic; a topic that is already gone is fine.
    pub async fn delete_topic(&self, name: &str) -> Result<()> {
        let results = self
            .admin
            .delete_topics(&[name], &Self::options())
            .await
            .map_err(Error::kafka(format!("deleting topic {name}")))?;
        for result in results {
            match result {
                Ok(_) | Err((_, RDKafkaErrorCode::UnknownTopicOrPartition)) => {}
                Err((_, code)) => {
                    return Err(Error::Kafka {
                        action: format!("deleting topic {name}"),
                        source: KafkaError::AdminOp(code),
                    })
                }
            }
        }
        Ok(())
    }

    /// Per Kafka group id (`OutboxSystem::kafka_group_id`, not the declared name):
    /// messages in `topic` not yet committed by the group, summed over `partitions`
    /// partitions (a partition without a commit counts from its low watermark). None
    /// for a group whose offsets could not be read.
    pub async fn consumer_lag(
        &self,
        topic: &str,
        partitions: i32,
        groups: &[String],
    ) -> BTreeMap<String, Option<i64>> {
        let config = self.config.clone();
        let topic = topic.to_string();
        let groups = groups.to_vec();
        let groups_for_err = groups.clone();
        tokio::task::spawn_blocking(move || {
            let watermarks: Vec<Option<(i64, i64)>> = {
                let consumer: Result<BaseConsumer, _> = config.create();
                match consumer {
                    Ok(c) => (0..partitions)
                        .map(|p| c.fetch_watermarks(&topic, p, KAFKA_TIMEOUT).ok())
                        .collect(),
                    Err(_) => vec![None; usize::try_from(partitions).unwrap_or(0)],
                }
            };
            groups
                .into_iter()
                .map(|group| {
                    let lag = group_lag(&config, &topic, &group, &watermarks);
                    (group, lag)
                })
                .collect()
        })
        .await
        .unwrap_or_else(|_| groups_for_err.into_iter().map(|g| (g, None)).collect())
    }
}

fn group_lag(
    config: &ClientConfig,
    topic: &str,
    group: &str,
    watermarks: &[Option<(i64, i64)>],
) -> Option<i64> {
    let mut config = config.clone();
    config.set("group.id", group);
    config.set("enable.auto.commit", "false");
    let consumer: BaseConsumer = config.create().ok()?;
    let mut tpl = TopicPartitionList::new();
    for partition in 0..i32::try_from(watermarks.len()).ok()? {
        tpl.add_partition(topic, partition);
    }
    let committed = consumer.committed_offsets(tpl, KAFKA_TIMEOUT).ok()?;
    let mut lag = 0i64;
    for (partition, marks) in watermarks.iter().enumerate() {
        let (low, high) = (*marks)?;
        let partition = i32::try_from(partition).ok()?;
        let offset = committed
            .find_partition(topic, partition)
            .map(|e| e.offset())
            .unwrap_or(Offset::Invalid);
        lag += lag_of_partition(offset, low, high);
    }
    Some(lag)
}

/// Messages after the committed offset (pure).
pub fn lag_of_partition(committed: Offset, low: i64, high: i64) -> i64 {
    let from = match committed {
        Offset::Offset(o) => o.max(low),
        _ => low,
    };
    (high - from).max(0)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::crd::DeletionPolicy;

    fn spec(partitions: i32) -> TopicSpec {
        TopicSpec {
            name: "events".into(),
            partitions,
            replication_factor: 1,
            config: BTreeMap::from([("retention.ms".to_string(), "3600000".to_string())]),
            deletion_policy: DeletionPolicy::Retain,
        }
    }

    fn observed(partitions: i32, retention: &str) -> ObservedTopic {
        ObservedTopic {
            partitions,
            replication_factor: 1,
            dynamic_config: BTreeMap::new(),
            effective_config: BTreeMap::from([("retention.ms".to_string(), retention.to_string())]),
        }
    }

    #[test]
    fn missing_topic_is_created() {
        let plan = plan_topic(&spec(6), None);
        assert!(plan.create);
        assert!(plan.conflicts.is_empty());
    }

    #[test]
    fn matching_topic_needs_nothing() {
        assert!(plan_topic(&spec(6), Some(&observed(6, "3600000"))).is_noop());
    }

    #[test]
    fn fewer_partitions_in_kafka_are_raised() {
        let plan = plan_topic(&spec(8), Some(&observed(6, "3600000")));
        assert_eq!(plan.raise_partitions_to, Some(8));
        assert!(!plan.create);
    }

    #[test]
    fn more_partitions_in_kafka_are_a_conflict_not_ignored() {
        let plan = plan_topic(&spec(4), Some(&observed(6, "3600000")));
        assert_eq!(plan.raise_partitions_to, None);
        assert_eq!(plan.conflicts.len(), 1);
        assert!(
            plan.conflicts[0].contains("spec.topic.partitions"),
            "{:?}",
            plan.conflicts
        );
    }

    #[test]
    fn differing_replication_factor_is_a_conflict() {
        let mut found = observed(6, "3600000");
        found.replication_factor = 3;
        let plan = plan_topic(&spec(6), Some(&found));
        assert!(plan.conflicts[0].contains("replicationFactor"));
    }

    #[test]
    fn differing_config_is_changed() {
        let plan = plan_topic(&spec(6), Some(&observed(6, "604800000")));
        assert_eq!(plan.config_changes["retention.ms"], "3600000");
    }

    fn secret(keys: &[(&str, &str)]) -> BTreeMap<String, ByteString> {
        keys.iter()
            .map(|(k, v)| (k.to_string(), ByteString(v.as_bytes().to_vec())))
            .collect()
    }

    #[test]
    fn client_settings_keys_become_properties() {
        let props = client_properties(&secret(&[
            ("KAFKA_CLIENT_SECURITY_PROTOCOL", "SASL_SSL"),
            ("KAFKA_CLIENT_SASL_MECHANISMS", "PLAIN"),
            ("KAFKA_CLIENT_SSL_CA_PEM", "-----BEGIN CERTIFICATE-----"),
            ("OTHER", "x"),
        ]));
        assert_eq!(props.accepted["security.protocol"], "SASL_SSL");
        assert_eq!(props.accepted["sasl.mechanisms"], "PLAIN");
        assert_eq!(props.accepted.len(), 3);
        assert_eq!(props.refused, vec![]);
    }

    #[test]
    fn the_operators_own_client_refuses_file_paths_plugins_commands_and_oauth_endpoints() {
        let dangerous = [
            ("KAFKA_CLIENT_SSL_CA_LOCATION", "ssl.ca.location"),
            ("KAFKA_CLIENT_SSL_KEY_LOCATION", "ssl.key.location"),
            (
                "KAFKA_CLIENT_SSL_KEYSTORE_LOCATION",
                "ssl.keystore.location",
            ),
            ("KAFKA_CLIENT_SSL_ENGINE_LOCATION", "ssl.engine.location"),
            ("KAFKA_CLIENT_PLUGIN_LIBRARY_PATHS", "plugin.library.paths"),
            (
                "KAFKA_CLIENT_SASL_KERBEROS_KINIT_CMD",
                "sasl.kerberos.kinit.cmd",
            ),
            ("KAFKA_CLIENT_SASL_KERBEROS_KEYTAB", "sasl.kerberos.keytab"),
            (
                "KAFKA_CLIENT_SASL_OAUTHBEARER_TOKEN_ENDPOINT_URL",
                "sasl.oauthbearer.token.endpoint.url",
            ),
            ("KAFKA_CLIENT_HTTPS_CA_LOCATION", "https.ca.location"),
            // What the operator sets itself: the spec's brokers, no topic made by a read.
            ("KAFKA_CLIENT_BOOTSTRAP_SERVERS", "bootstrap.servers"),
            (
                "KAFKA_CLIENT_ALLOW_AUTO_CREATE_TOPICS",
                "allow.auto.create.topics",
            ),
        ];
        let mut keys: Vec<(&str, &str)> = dangerous.iter().map(|(k, _)| (*k, "x")).collect();
        keys.push(("KAFKA_CLIENT_SASL_USERNAME", "alice"));
        let props = client_properties(&secret(&keys));
        assert_eq!(
            props.accepted,
            BTreeMap::from([("sasl.username".to_string(), "alice".to_string())])
        );
        let mut refused: Vec<(String, String)> = props
            .refused
            .into_iter()
            .map(|r| (r.key, r.property))
            .collect();
        refused.sort();
        let mut expected: Vec<(String, String)> = dangerous
            .iter()
            .map(|(k, p)| (k.to_string(), p.to_string()))
            .collect();
        expected.sort();
        assert_eq!(refused, expected);
    }

    #[test]
    fn lag_counts_from_commit_or_low_watermark() {
        assert_eq!(lag_of_partition(Offset::Offset(90), 0, 100), 10);
        assert_eq!(lag_of_partition(Offset::Invalid, 20, 100), 80);
        assert_eq!(lag_of_partition(Offset::Offset(5), 20, 100), 80);
        assert_eq!(lag_of_partition(Offset::Offset(100), 0, 100), 0);
    }
}
