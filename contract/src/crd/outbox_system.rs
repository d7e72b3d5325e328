//! The `OutboxSystem` custom resource: a Kafka topic, producer services and consumer groups.

use std::collections::BTreeMap;

use k8s_openapi::api::core::v1::ResourceRequirements;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, Time};
use kube::{CustomResource, KubeSchema};
use serde::{Deserialize, Serialize};

use super::{AutoscalingMode, AutoscalingSpec, PodSettings};
use crate::worker_env::defaults;

/// Declares one transactional-outbox messaging system: a Kafka topic, the producer
/// services that write into the PostgreSQL outbox and relay it to Kafka, and named
/// consumer groups that acknowledge every message.
#[derive(CustomResource, KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[kube(
    group = "outbox.dev",
    version = "v1alpha1",
    kind = "OutboxSystem",
    plural = "outboxsystems",
    shortname = "obs",
    namespaced,
    status = "OutboxSystemStatus",
    derive = "PartialEq",
    printcolumn = r#"{"name":"Topic","type":"string","jsonPath":".spec.topic.name"}"#,
    printcolumn = r#"{"name":"Partitions","type":"integer","description":"Partitions found in Kafka","jsonPath":".status.topic.partitions"}"#,
    printcolumn = r#"{"name":"Producers","type":"string","description":"Ready/desired producer replicas","jsonPath":".status.producers.summary"}"#,
    printcolumn = r#"{"name":"Groups","type":"string","description":"Consumer groups with all replicas ready / all groups","jsonPath":".status.groupsSummary"}"#,
    printcolumn = r#"{"name":"Backlog","type":"integer","description":"Outbox rows not yet relayed to Kafka","jsonPath":".status.backlog.pending"}"#,
    printcolumn = r#"{"name":"Ready","type":"string","jsonPath":".status.conditions[?(@.type==\"Ready\")].status"}"#,
    printcolumn = r#"{"name":"Age","type":"date","jsonPath":".metadata.creationTimestamp"}"#
)]
#[serde(rename_all = "camelCase")]
#[x_kube(validation = Rule::new("!has(self.consumers) || !has(self.consumers.groups) || self.consumers.groups.all(g, !has(g.autoscaling) || g.autoscaling.maxReplicas <= self.topic.partitions)").message("spec.consumers.groups[].autoscaling.maxReplicas may not exceed spec.topic.partitions: a consumer beyond the partition count gets no partition and only waits").field_path(".consumers.groups"))]
pub struct OutboxSystemSpec {
    /// Stops reconciliation while true: the operator leaves the topic and the workloads
    /// as they are and reports `Paused` in status. Deletion is still handled.
    #[serde(default)]
    pub paused: bool,
    /// Worker image for every role (`outbox-worker` binary). Defaults to the operator's
    /// worker image: its `--worker-image` flag (env `WORKER_IMAGE`, set from the Helm
    /// chart's `workerImage` values), else `ghcr.io/outbox-dev/outbox-worker:<operator
    /// version>`.
    /// Runs with this namespace's database URL and Kafka client settings; where the
    /// operator has allowed image repositories (the chart's
    /// `imagePolicy.allowedRepositories`), an image outside them is refused
    /// (`ImageNotAllowed`) and nothing of the system is applied.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub image: Option<String>,
    /// Image pull policy for the worker pods (Always, IfNotPresent, Never). Defaults to
    /// the policy the operator has for its worker image (`--worker-image-pull-policy`,
    /// the chart's `workerImage.pullPolicy`) where the pod runs that image, else to
    /// Kubernetes' default.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(regex(pattern = r"^(Always|IfNotPresent|Never)$"))]
    pub image_pull_policy: Option<String>,
    /// Log filter for the workers, passed as `RUST_LOG` (default `info`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub log_level: Option<String>,
    /// How the operator and the workers reach Kafka.
    pub kafka: KafkaSpec,
    /// How the workers reach PostgreSQL (by Secret reference only).
    pub database: DatabaseSpec,
    /// The Kafka topic the producers publish to and the consumer groups read.
    pub topic: TopicSpec,
    /// The producer service (HTTP API plus outbox relay).
    #[serde(default)]
    pub producers: ProducersSpec,
    /// The consumer groups reading the topic.
    #[serde(default)]
    pub consumers: ConsumersSpec,
    /// How long relayed outbox rows and acknowledgement ledger data are kept.
    #[serde(default)]
    pub retention: RetentionSpec,
}

/// Retention in PostgreSQL: without it every message ever sent stays in the outbox.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct RetentionSpec {
    /// Seconds a relayed outbox row is kept after it was relayed; 0 keeps every row
    /// (`RETENTION_SECONDS`). Rows not yet relayed are never deleted.
    #[serde(default = "default_relayed_seconds")]
    #[schemars(range(min = 0))]
    pub relayed_seconds: i64,
    /// Seconds acknowledgement ledger data is kept after its last update; 0 keeps it
    /// (`LEDGER_RETENTION_SECONDS`).
    #[serde(default = "default_ledger_seconds")]
    #[schemars(range(min = 0))]
    pub ledger_seconds: i64,
}

impl Default for RetentionSpec {
    fn default() -> Self {
        RetentionSpec {
            relayed_seconds: default_relayed_seconds(),
            ledger_seconds: default_ledger_seconds(),
        }
    }
}

fn default_relayed_seconds() -> i64 {
    defaults::RETENTION_SECONDS
}

fn default_ledger_seconds() -> i64 {
    defaults::LEDGER_RETENTION_SECONDS
}

/// Connection to Kafka.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq, Default)]
#[serde(rename_all = "camelCase")]
pub struct KafkaSpec {
    /// Comma-separated `host:port` list of Kafka brokers. A bare Service name
    /// (`outbox-kafka:9092`) means that Service in this OutboxSystem's namespace, for the
    /// workers and for the operator alike.
    #[schemars(length(min = 1))]
    pub bootstrap_servers: String,
    /// Optional Secret with librdkafka client settings (SASL, TLS). Every key named
    /// `KAFKA_CLIENT_<PROPERTY>` becomes a client property, e.g.
    /// `KAFKA_CLIENT_SECURITY_PROTOCOL` -> `security.protocol`; other keys are ignored.
    /// Producers and consumers get each `KAFKA_CLIENT_*` key as one environment variable
    /// (a `secretKeyRef`, not the whole Secret; a key added later reaches them at the
    /// next reconcile, which rolls them); the load-test runner gets none. The operator's
    /// own Kafka client takes only connection and authentication properties
    /// (`security.protocol`, `sasl.mechanism(s)`, `sasl.username`, `sasl.password`,
    /// `ssl.ca.pem`, `ssl.certificate.pem`, `ssl.key.pem`, `ssl.key.password`,
    /// `ssl.endpoint.identification.algorithm`, timeouts, ...): a key naming a file
    /// (`*.location`, `sasl.kerberos.keytab`), a library (`plugin.library.paths`), a
    /// command (`sasl.kerberos.kinit.cmd`), an OAuth endpoint
    /// (`sasl.oauthbearer.token.endpoint.url`) or any other property makes it refuse the
    /// settings: TopicReady False, reason `KafkaClientSettingRefused`, naming the key.
    /// While the Secret is missing nothing is applied (`KafkaSettingsSecretMissing`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub client_settings_secret_ref: Option<SecretRef>,
}

/// A reference to a Secret in the OutboxSystem's namespace.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq, Default)]
#[serde(rename_all = "camelCase")]
pub struct SecretRef {
    /// Name of the Secret.
    #[schemars(length(min = 1))]
    pub name: String,
}

/// A reference to one key of a Secret in the OutboxSystem's namespace.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq, Default)]
#[serde(rename_all = "camelCase")]
pub struct SecretKeyRef {
    /// Name of the Secret.
    #[schemars(length(min = 1))]
    pub name: String,
    /// Key within the Secret.
    #[schemars(length(min = 1))]
    pub key: String,
}

/// Connection to PostgreSQL.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq, Default)]
#[serde(rename_all = "camelCase")]
pub struct DatabaseSpec {
    /// The Secret key holding the `postgres://` URL of the outbox database. Never a plain
    /// string: the URL carries the password. A bare Service name as its host means that
    /// Service in this OutboxSystem's namespace. The password may hold `/`, `?` and `#`
    /// as they are; an `@` in it must be written `%40` (the credentials end at the first
    /// `@`).
    pub url_secret_ref: SecretKeyRef,
    /// The Secret key holding the PEM certificate(s) of the CA that signed the server's
    /// certificate, for `sslmode=verify-ca` or `verify-full` in the URL (`require` then
    /// checks the chain too). Mounted read-only into every worker as `PGSSLROOTCERT`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ca_secret_ref: Option<SecretKeyRef>,
}

/// What happens to the Kafka topic when the OutboxSystem is deleted.
#[derive(
    schemars::JsonSchema, Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, Default,
)]
pub enum DeletionPolicy {
    /// Keep the topic and its messages (default).
    #[default]
    Retain,
    /// Delete the topic.
    Delete,
}

/// The Kafka topic.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq, Default)]
#[serde(rename_all = "camelCase")]
#[x_kube(validation = Rule::new("self.partitions >= oldSelf.partitions").message("spec.topic.partitions may not decrease (Kafka cannot remove partitions)").field_path(".partitions"))]
#[x_kube(validation = Rule::new("self.name == oldSelf.name").message("spec.topic.name is immutable").field_path(".name"))]
#[x_kube(validation = Rule::new("self.replicationFactor == oldSelf.replicationFactor").message("spec.topic.replicationFactor is immutable").field_path(".replicationFactor"))]
pub struct TopicSpec {
    /// Topic name (immutable).
    #[schemars(length(min = 1, max = 249), regex(pattern = r"^[a-zA-Z0-9._-]+$"))]
    pub name: String,
    /// Number of partitions, at least 1. May be raised, never lowered.
    #[schemars(range(min = 1, max = 10000))]
    pub partitions: i32,
    /// Replicas per partition (immutable), at least 1.
    #[serde(default = "default_replication_factor")]
    #[schemars(range(min = 1, max = 32))]
    pub replication_factor: i16,
    /// Topic-level configuration (e.g. `retention.ms`), applied to the topic.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub config: BTreeMap<String, String>,
    /// Retain (default) keeps the topic when the OutboxSystem is deleted; Delete removes it.
    #[serde(default)]
    pub deletion_policy: DeletionPolicy,
}

fn default_replication_factor() -> i16 {
    1
}

/// The producer service: HTTP API writing into the outbox, plus the relay to Kafka.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct ProducersSpec {
    /// Number of producer pods, at least 0.
    #[serde(default = "default_producer_replicas")]
    #[schemars(range(min = 0, max = 1000))]
    pub replicas: i32,
    /// Image override for the producers (defaults to `spec.image`).
    /// Subject to the operator's allowed image repositories, as `spec.image`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub image: Option<String>,
    /// CPU and memory requests and limits of a producer container.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub resources: Option<ResourceRequirements>,
    /// How the relay moves outbox rows into Kafka.
    #[serde(default)]
    pub relay: RelaySpec,
    /// Container port of the HTTP API, health and metrics endpoints.
    #[serde(default = "default_port")]
    #[schemars(range(min = 1, max = 65535))]
    pub port: i32,
    /// Messages waiting to be relayed at which ingest pushes back: requests are
    /// answered 429 with `Retry-After` and store nothing until the relay catches up,
    /// so a Kafka outage cannot fill the database's disk. 0: no bound
    /// (`MAX_BACKLOG_MESSAGES`).
    #[serde(default = "default_max_backlog")]
    #[schemars(range(min = 0))]
    pub max_backlog: i64,
    /// The outbox table's size on disk, in bytes (PostgreSQL's
    /// `pg_total_relation_size`: rows waiting, relayed rows retention still keeps,
    /// indexes), at which ingest pushes back like at `maxBacklog`: a bound on the disk
    /// the outbox may take, whatever the size of the messages. 0: no bound (the
    /// default; set it below the database's free disk) (`MAX_BACKLOG_BYTES`).
    #[serde(default)]
    #[schemars(range(min = 0))]
    pub max_backlog_bytes: i64,
    /// Scheduling and metadata of the producer pods: node selector, tolerations,
    /// affinity, topology spread, priority class, image pull secrets, labels and
    /// annotations.
    #[serde(default, skip_serializing_if = "is_default")]
    pub pod: PodSettings,
    /// The PodDisruptionBudget of the producer pods (on by default: a node drain
    /// evicts one producer at a time).
    #[serde(default, skip_serializing_if = "is_default")]
    pub pod_disruption_budget: PodDisruptionBudgetSpec,
}

impl Default for ProducersSpec {
    fn default() -> Self {
        ProducersSpec {
            replicas: default_producer_replicas(),
            image: None,
            resources: None,
            relay: RelaySpec::default(),
            port: default_port(),
            max_backlog: default_max_backlog(),
            max_backlog_bytes: 0,
            pod: PodSettings::default(),
            pod_disruption_budget: PodDisruptionBudgetSpec::default(),
        }
    }
}

fn is_default<T: Default + PartialEq>(value: &T) -> bool {
    *value == T::default()
}

/// A PodDisruptionBudget (`policy/v1`) over one workload's pods: how many of them
/// voluntary disruptions (a node drain, the cluster autoscaler, anything using the
/// Eviction API) may take at once. It has the workload's name, selects exactly its
/// pods and is owned by the OutboxSystem. With 1 replica and `maxUnavailable: 1` the
/// one pod may still be evicted (its work waits in Kafka or the outbox meanwhile, and
/// nothing is lost); with 0 replicas the budget covers no pod. A pod that is not ready
/// may always be evicted (`unhealthyPodEvictionPolicy: AlwaysAllow`): it serves
/// nothing, and a crash-looping pod must not block a drain.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct PodDisruptionBudgetSpec {
    /// Whether the operator keeps the PodDisruptionBudget (default true). Set false
    /// and the operator deletes the one it made.
    #[serde(default = "default_true")]
    pub enabled: bool,
    /// Pods that may be unavailable at once through voluntary disruptions, at least 1
    /// (default 1).
    #[serde(default = "default_max_unavailable")]
    #[schemars(range(min = 1, max = 1000))]
    pub max_unavailable: i32,
}

impl Default for PodDisruptionBudgetSpec {
    fn default() -> Self {
        PodDisruptionBudgetSpec {
            enabled: default_true(),
            max_unavailable: default_max_unavailable(),
        }
    }
}

fn default_true() -> bool {
    true
}

fn default_max_unavailable() -> i32 {
    1
}

fn default_max_backlog() -> i64 {
    defaults::MAX_BACKLOG_MESSAGES
}

fn default_producer_replicas() -> i32 {
    1
}

fn default_port() -> i32 {
    i32::from(defaults::HTTP_PORT)
}

/// Relay settings: how many outbox rows the relay reads at once (a relay read), and how
/// long an idle relay waits.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
#[x_kube(validation = Rule::new("!has(self.rowsPerRead) || !has(self.rowsPerKafkaBatch)").message("relay.rowsPerKafkaBatch is the old name of relay.rowsPerRead: set only rowsPerRead"))]
pub struct RelaySpec {
    /// Outbox rows the relay reads at once and produces to Kafka together, a relay read
    /// (`RELAY_ROWS_PER_READ`; 10000 when unset).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1, max = 1000000))]
    pub rows_per_read: Option<i32>,
    /// Deprecated: the old name of `rowsPerRead`, still honoured when `rowsPerRead` is
    /// unset (docs/upgrading.md).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1, max = 1000000))]
    pub rows_per_kafka_batch: Option<i32>,
    /// How long an idle relay waits before looking at the outbox again, in milliseconds
    /// (`RELAY_LINGER_MS`; a single message wakes it at once).
    #[serde(default = "default_linger_ms")]
    #[schemars(range(min = 0, max = 60000))]
    pub linger_ms: i32,
}

impl Default for RelaySpec {
    fn default() -> Self {
        RelaySpec {
            rows_per_read: None,
            rows_per_kafka_batch: None,
            linger_ms: default_linger_ms(),
        }
    }
}

impl RelaySpec {
    /// The rows of a relay read: `rowsPerRead`, else its old name, else the default.
    pub fn rows_per_read(&self) -> i32 {
        self.rows_per_read
            .or(self.rows_per_kafka_batch)
            .unwrap_or(defaults::RELAY_ROWS_PER_READ)
    }
}

fn default_linger_ms() -> i32 {
    defaults::RELAY_LINGER_MS
}

/// The consumer side: named consumer groups.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
#[x_kube(validation = Rule::new("self.groups.all(g, self.groups.exists_one(h, h.name == g.name))").message("spec.consumers.groups: group names must be unique").field_path(".groups"))]
pub struct ConsumersSpec {
    /// Image override for the consumers (defaults to `spec.image`).
    /// Subject to the operator's allowed image repositories, as `spec.image`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub image: Option<String>,
    /// CPU and memory requests and limits of a consumer container.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub resources: Option<ResourceRequirements>,
    /// Container port of the health and metrics endpoints.
    #[serde(default = "default_port")]
    #[schemars(range(min = 1, max = 65535))]
    pub port: i32,
    /// Consumer groups; each gets its own Deployment. Names must be unique.
    #[serde(default)]
    #[schemars(length(max = 64))]
    pub groups: Vec<ConsumerGroupSpec>,
    /// Scheduling and metadata of every group's pods, unless a group's own `pod`
    /// says otherwise: a group's settings override these field by field (maps such as
    /// `nodeSelector` and `metadata.labels` are merged key by key, the group's value
    /// winning; lists such as `tolerations`, and `affinity` and `priorityClassName`,
    /// are replaced whole when the group sets them, an empty list included).
    #[serde(default, skip_serializing_if = "is_default")]
    pub pod: PodSettings,
    /// The PodDisruptionBudget of each group (one per group, on by default: a node
    /// drain evicts one member of a group at a time), unless the group sets its own.
    #[serde(default, skip_serializing_if = "is_default")]
    pub pod_disruption_budget: PodDisruptionBudgetSpec,
}

impl ConsumersSpec {
    /// The pod settings of `group`: its own over the consumers-wide ones
    /// ([`PodSettings::overridden_by`]).
    pub fn pod_of(&self, group: &ConsumerGroupSpec) -> PodSettings {
        self.pod.overridden_by(&group.pod)
    }

    /// The disruption budget of `group`: its own when it sets one, the consumers-wide
    /// one otherwise.
    pub fn pod_disruption_budget_of(&self, group: &ConsumerGroupSpec) -> PodDisruptionBudgetSpec {
        group
            .pod_disruption_budget
            .clone()
            .unwrap_or_else(|| self.pod_disruption_budget.clone())
    }
}

impl Default for ConsumersSpec {
    fn default() -> Self {
        ConsumersSpec {
            image: None,
            resources: None,
            port: default_port(),
            groups: Vec::new(),
            pod: PodSettings::default(),
            pod_disruption_budget: PodDisruptionBudgetSpec::default(),
        }
    }
}

/// One Kafka consumer group.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct ConsumerGroupSpec {
    /// Consumer group name (a DNS label: lower case, digits, '-'), shown in status,
    /// the ledger and reports; its id in Kafka is `<namespace>.<system>.<name>`
    /// (`status.groups[].kafkaGroupId`).
    #[schemars(
        length(min = 1, max = 40),
        regex(pattern = r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$")
    )]
    pub name: String,
    /// Number of consumer pods in this group, at least 0 (default 1). Ignored when
    /// `autoscaling` is set: the autoscaler sets the replicas then.
    #[serde(default = "default_group_replicas")]
    #[schemars(range(min = 0, max = 1000))]
    pub replicas: i32,
    /// Replicas that follow the group's lag, between `minReplicas` and `maxReplicas`,
    /// through KEDA (mode `keda`) or an autoscaler of your own (mode `external`)
    /// instead of the fixed `replicas`. Unset: `replicas` consumers, always.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub autoscaling: Option<AutoscalingSpec>,
    /// What a consumer does when handling a message fails.
    #[serde(default)]
    pub retry: RetrySpec,
    /// Topic receiving messages that failed their last retry (unused with maxRetries -1).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 249), regex(pattern = r"^[a-zA-Z0-9._-]+$"))]
    pub dead_letter_topic: Option<String>,
    /// This group's pod settings, over `spec.consumers.pod` field by field (maps merged
    /// key by key, this group's value winning; lists and the other fields replaced
    /// whole when set here, an empty list included).
    #[serde(default, skip_serializing_if = "is_default")]
    pub pod: PodSettings,
    /// This group's PodDisruptionBudget, replacing `spec.consumers.podDisruptionBudget`
    /// whole when set.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pod_disruption_budget: Option<PodDisruptionBudgetSpec>,
}

fn default_group_replicas() -> i32 {
    1
}

/// The Kafka consumer group id of the group declared as `group` in the OutboxSystem
/// `namespace/system`: `<namespace>.<system>.<group>`. Kafka's group ids are
/// cluster-wide, so two systems on one cluster that both declare `group-a` must not
/// both join `group-a` (their rebalances would couple and each would read the other's
/// offsets). Namespace first, so that a Kafka ACL on the prefix `<namespace>.` grants a
/// namespace's credentials exactly its groups; dots as separators, which none of the
/// three names may hold (DNS labels), so that no two systems' ids can meet.
/// Everything that reads or writes a group's offsets takes its id from
/// [`OutboxSystem::kafka_group_id`], which calls this.
pub fn kafka_group_id(namespace: &str, system: &str, group: &str) -> String {
    format!("{namespace}.{system}.{group}")
}

impl OutboxSystem {
    /// The Kafka consumer group id of its declared group `group`: the one recorded in
    /// `status.groups[].kafkaGroupId`; for a group the status lists without one (a
    /// system from before group ids were prefixed) the bare group name it has always
    /// had, so that it keeps its committed offsets; for a group not in the status yet,
    /// [`kafka_group_id`].
    pub fn kafka_group_id(&self, group: &str) -> String {
        let recorded = self
            .status
            .as_ref()
            .and_then(|s| s.groups.iter().find(|g| g.name == group));
        match recorded {
            Some(g) => g
                .kafka_group_id
                .clone()
                .unwrap_or_else(|| group.to_string()),
            None => kafka_group_id(
                self.metadata.namespace.as_deref().unwrap_or_default(),
                self.metadata.name.as_deref().unwrap_or_default(),
                group,
            ),
        }
    }
}

/// Retry policy of a consumer group.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
#[x_kube(validation = Rule::new("self.maxBackoffMs >= self.backoffMs").message("spec.consumers.groups[].retry.maxBackoffMs must be at least backoffMs").field_path(".maxBackoffMs"))]
pub struct RetrySpec {
    /// Retries before a message goes to the dead-letter topic; -1 retries forever.
    #[serde(default = "default_max_retries")]
    #[schemars(range(min = -1, max = 1000000))]
    pub max_retries: i32,
    /// First retry delay in milliseconds (doubles on each retry).
    #[serde(default = "default_backoff_ms")]
    #[schemars(range(min = 0, max = 3600000))]
    pub backoff_ms: i64,
    /// Upper bound of the retry delay in milliseconds.
    #[serde(default = "default_max_backoff_ms")]
    #[schemars(range(min = 0, max = 3600000))]
    pub max_backoff_ms: i64,
}

impl Default for RetrySpec {
    fn default() -> Self {
        RetrySpec {
            max_retries: default_max_retries(),
            backoff_ms: default_backoff_ms(),
            max_backoff_ms: default_max_backoff_ms(),
        }
    }
}

fn default_max_retries() -> i32 {
    defaults::RETRY_MAX_RETRIES
}

fn default_backoff_ms() -> i64 {
    defaults::RETRY_BACKOFF_MS
}

fn default_max_backoff_ms() -> i64 {
    defaults::RETRY_MAX_BACKOFF_MS
}

/// What the operator observed about an OutboxSystem.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq, Default)]
#[serde(rename_all = "camelCase")]
pub struct OutboxSystemStatus {
    /// The `metadata.generation` this status describes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,
    /// Ready, TopicReady, ProducersReady, ConsumersReady, Degraded, BacklogObserved,
    /// DeliveryStalled, MessagesQuarantined, Paused, AutoscalingUnavailable.
    #[serde(default)]
    #[x_kube(merge_strategy = ListMerge::Map(vec!["type".into()]))]
    pub conditions: Vec<Condition>,
    /// The topic as found in Kafka.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub topic: Option<TopicStatus>,
    /// Producer replicas.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub producers: Option<ReplicaStatus>,
    /// Per consumer group: replicas and lag.
    #[serde(default)]
    pub groups: Vec<GroupStatus>,
    /// Groups whose replicas are all ready, over all groups, e.g. `2/3`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub groups_summary: Option<String>,
    /// Rows waiting in the outbox; absent when the database could not be asked.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub backlog: Option<BacklogStatus>,
}

/// The topic as found in Kafka.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq, Default)]
#[serde(rename_all = "camelCase")]
pub struct TopicStatus {
    /// Topic name.
    pub name: String,
    /// Partitions found in Kafka (absent when the topic does not exist yet).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub partitions: Option<i32>,
    /// Replicas per partition found in Kafka.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub replication_factor: Option<i32>,
    /// The last time the operator raised the partition count. Kafka then maps keys to
    /// partitions anew: messages of a key written before and after may be consumed by
    /// different members, out of order, while any were in flight.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_partition_raise: Option<PartitionRaise>,
    /// True when the operator created the topic for this system, false when the topic
    /// was there before, on the Kafka cluster `ownershipClusterId`:
    /// `deletionPolicy: Delete` deletes only a topic it created.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub created_by_operator: Option<bool>,
    /// The Kafka cluster (its `cluster.id`) `createdByOperator` speaks of, recorded with
    /// it. The operator changes and deletes the topic only while the Kafka it reaches
    /// is this cluster: pointed at another one, it creates the topic there when it is
    /// missing (and records that cluster), and leaves a topic it finds there as it is
    /// (`TopicReady` False, reason `TopicOnOtherCluster`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ownership_cluster_id: Option<String>,
    /// The `cluster.id` of the Kafka the operator reached at its last look; two
    /// systems on one cluster may not share a topic.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cluster_id: Option<String>,
}

/// A raise of the topic's partition count.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct PartitionRaise {
    /// Partitions before.
    pub from: i32,
    /// Partitions after.
    pub to: i32,
    /// When the operator raised them.
    pub time: Time,
}

/// Ready and desired replicas of a workload.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq, Default)]
#[serde(rename_all = "camelCase")]
pub struct ReplicaStatus {
    /// Pods ready.
    pub ready: i32,
    /// Pods wanted.
    pub desired: i32,
    /// `ready/desired`, for printer columns.
    pub summary: String,
}

impl ReplicaStatus {
    /// Builds the status and its `ready/desired` summary.
    pub fn new(ready: i32, desired: i32) -> Self {
        ReplicaStatus {
            ready,
            desired,
            summary: format!("{ready}/{desired}"),
        }
    }
}

/// One consumer group as observed.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq, Default)]
#[serde(rename_all = "camelCase")]
pub struct GroupStatus {
    /// Consumer group name, as declared in `spec.consumers.groups[].name`.
    pub name: String,
    /// The group's id in Kafka: `<namespace>.<system>.<name>`, or the bare name for a
    /// group that existed before ids were prefixed (it keeps its committed offsets).
    /// Recorded here, the id stays what it is.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub kafka_group_id: Option<String>,
    /// Pods ready.
    pub ready: i32,
    /// Pods wanted: the Deployment's replicas (an autoscaled group's as its
    /// autoscaler set them).
    pub desired: i32,
    /// Who scales the group when it is autoscaled: `keda` or `external`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub autoscaling: Option<AutoscalingMode>,
    /// Messages in the topic not yet committed by this group (sum over partitions);
    /// absent when Kafka could not be asked.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub lag: Option<i64>,
}

/// The outbox backlog, from the `outbox_backlog` view.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq, Default)]
#[serde(rename_all = "camelCase")]
pub struct BacklogStatus {
    /// Rows accepted but not yet relayed to Kafka: counted exactly up to 10,000; beyond,
    /// the id sequence's last value less the relay's watermark (high by the ids of
    /// rolled-back requests).
    pub pending: i64,
    /// Age of the oldest pending row in seconds (absent when nothing is pending).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub oldest_age_seconds: Option<f64>,
    /// Rows the relay could not publish (refused by Kafka for good as too large or
    /// invalid, or written for a topic this system does not relay to), skipped and
    /// kept in the `outbox_quarantine` table with the reason.
    #[serde(default)]
    pub quarantined: i64,
    /// The oldest open transaction that holds an id, when the oldest pending row waits
    /// longer than the stall threshold: the relay publishes only rows written before
    /// the oldest running transaction, so this one may be what holds delivery back.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub oldest_transaction: Option<String>,
}

#[cfg(test)]
mod tests {
    use super::*;

    fn system(namespace: &str, name: &str, groups: &[&str]) -> OutboxSystem {
        let spec: OutboxSystemSpec = serde_json::from_value(serde_json::json!({
            "kafka": {"bootstrapServers": "kafka:9092"},
            "database": {"urlSecretRef": {"name": "db", "key": "url"}},
            "topic": {"name": "events", "partitions": 3},
            "consumers": {"groups": groups.iter()
                .map(|g| serde_json::json!({"name": g, "replicas": 1}))
                .collect::<Vec<_>>()}
        }))
        .unwrap_or_else(|e| panic!("{e}"));
        let mut system = OutboxSystem::new(name, spec);
        system.metadata.namespace = Some(namespace.into());
        system
    }

    #[test]
    fn a_relay_read_takes_rows_per_read_else_its_old_name_else_the_default() {
        let relay = |json: serde_json::Value| -> RelaySpec {
            serde_json::from_value(json).unwrap_or_else(|e| panic!("{e}"))
        };
        assert_eq!(
            relay(serde_json::json!({"rowsPerRead": 500})).rows_per_read(),
            500
        );
        assert_eq!(
            relay(serde_json::json!({"rowsPerKafkaBatch": 700})).rows_per_read(),
            700
        );
        assert_eq!(relay(serde_json::json!({})).rows_per_read(), 10_000);
        assert_eq!(RelaySpec::default().linger_ms, defaults::RELAY_LINGER_MS);
    }

    #[test]
    fn two_systems_declaring_the_same_group_get_different_kafka_group_ids() {
        let a = system("team-a", "orders", &["group-a"]);
        let b = system("team-b", "orders", &["group-a"]);
        let c = system("team-a", "payments", &["group-a"]);
        let ids = [
            a.kafka_group_id("group-a"),
            b.kafka_group_id("group-a"),
            c.kafka_group_id("group-a"),
        ];
        assert_eq!(ids[0], "team-a.orders.group-a");
        assert_eq!(ids[1], "team-b.orders.group-a");
        assert_eq!(ids[2], "team-a.payments.group-a");
        // Once recorded in status, the id is what the status says.
        let mut recorded = a.clone();
        recorded.status = Some(OutboxSystemStatus {
            groups: vec![GroupStatus {
                name: "group-a".into(),
                kafka_group_id: Some("team-a.orders.group-a".into()),
                ..GroupStatus::default()
            }],
            ..OutboxSystemStatus::default()
        });
        assert_eq!(recorded.kafka_group_id("group-a"), "team-a.orders.group-a");
    }

    #[test]
    fn a_group_from_before_prefixed_ids_keeps_its_bare_name_and_a_new_one_is_prefixed() {
        let mut legacy = system("team-a", "orders", &["group-a", "group-new"]);
        // Written by an operator that did not record Kafka group ids.
        legacy.status = Some(OutboxSystemStatus {
            groups: vec![GroupStatus {
                name: "group-a".into(),
                ..GroupStatus::default()
            }],
            ..OutboxSystemStatus::default()
        });
        assert_eq!(legacy.kafka_group_id("group-a"), "group-a");
        assert_eq!(
            legacy.kafka_group_id("group-new"),
            "team-a.orders.group-new"
        );
    }
}
