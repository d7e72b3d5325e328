//! Desired child objects of an OutboxSystem (pure functions, no client): the producer
//! Deployment and Service, one Deployment and Service per consumer group, their
//! PodDisruptionBudgets, and the ConfigMap with the non-secret settings.

use std::collections::BTreeMap;
use std::hash::{DefaultHasher, Hash, Hasher};

use k8s_openapi::api::apps::v1::{Deployment, DeploymentSpec};
use k8s_openapi::api::core::v1::{
    Capabilities, ConfigMap, ConfigMapEnvSource, Container, ContainerPort, EmptyDirVolumeSource,
    EnvFromSource, EnvVar, EnvVarSource, HTTPGetAction, KeyToPath, ObjectFieldSelector,
    PodSecurityContext, PodSpec, PodTemplateSpec, Probe, ResourceRequirements, SeccompProfile,
    SecretKeySelector, SecretVolumeSource, SecurityContext, Service, ServicePort, ServiceSpec,
    Volume, VolumeMount,
};
use k8s_openapi::api::policy::v1::{PodDisruptionBudget, PodDisruptionBudgetSpec as BudgetSpec};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{LabelSelector, ObjectMeta, OwnerReference};
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;

use outbox_contract::worker_env::{names, ConsumerSettings, ProducerSettings};

use crate::crd::{
    ConsumerGroupSpec, OutboxSystem, OutboxSystemSpec, PodDisruptionBudgetSpec, PodSettings,
};

/// Name of the worker binary in the image.
pub const WORKER_BINARY: &str = "outbox-worker";
/// Default worker image repository; the tag is the operator's version.
pub const DEFAULT_IMAGE_REPOSITORY: &str = "ghcr.io/outbox-dev/outbox-worker";
pub use outbox_contract::probes::{LIVENESS_PATH, READINESS_PATH};

/// Pod-template annotation carrying a hash of the ConfigMap's data, so that a config
/// change rolls the pods.
pub const CONFIG_HASH_ANNOTATION: &str = "outbox.dev/config-hash";

/// The worker image of the default release, compiled in: the default of the operator's
/// `--worker-image`.
pub fn default_image() -> String {
    format!("{DEFAULT_IMAGE_REPOSITORY}:{}", env!("CARGO_PKG_VERSION"))
}

/// The worker image the operator gives a worker whose spec names none: the operator's
/// `--worker-image` (`WORKER_IMAGE`, the chart's `workerImage`), else [`default_image`],
/// with the pull policy for it (`--worker-image-pull-policy`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WorkerImage {
    /// Image reference.
    pub image: String,
    /// Pull policy for that image; None leaves it to Kubernetes.
    pub pull_policy: Option<String>,
}

impl Default for WorkerImage {
    fn default() -> Self {
        WorkerImage {
            image: default_image(),
            pull_policy: None,
        }
    }
}

impl WorkerImage {
    /// Image and pull policy of one worker container: the first image of `specified`
    /// (most specific first, e.g. the role's own, then the system's) with the spec's pull
    /// policy; when none names an image, this one, with the spec's pull policy or else
    /// this one's.
    pub fn resolve(
        &self,
        specified: &[Option<&String>],
        spec_pull_policy: Option<&String>,
    ) -> (String, Option<String>) {
        match specified.iter().flatten().next() {
            Some(image) => ((*image).clone(), spec_pull_policy.cloned()),
            None => (
                self.image.clone(),
                spec_pull_policy.or(self.pull_policy.as_ref()).cloned(),
            ),
        }
    }
}

/// Name of the producer Deployment and Service.
pub fn producer_name(system: &str) -> String {
    format!("{system}-producer")
}

/// Name of a consumer group's Deployment and Service.
pub fn consumer_name(system: &str, group: &str) -> String {
    format!("{system}-consumer-{group}")
}

/// Name of the ConfigMap with the non-secret settings.
pub fn config_map_name(system: &str) -> String {
    format!("{system}-config")
}

/// Everything the builders need from the OutboxSystem's metadata.
#[derive(Debug, Clone)]
pub struct Owner {
    /// Name of the OutboxSystem.
    pub name: String,
    /// Its namespace.
    pub namespace: String,
    /// Controller owner reference pointing at it.
    pub owner_ref: OwnerReference,
    /// The Kafka group id of each declared consumer group, by declared name
    /// ([`OutboxSystem::kafka_group_id`]).
    pub kafka_group_ids: BTreeMap<String, String>,
}

impl Owner {
    /// The Kafka group id of the declared group `group`: the system's answer, or, for a
    /// group it was not asked about, the prefixed id of a new group.
    pub fn kafka_group_id(&self, group: &str) -> String {
        self.kafka_group_ids.get(group).cloned().unwrap_or_else(|| {
            outbox_contract::crd::kafka_group_id(&self.namespace, &self.name, group)
        })
    }
}

/// All children of one OutboxSystem.
#[derive(Debug, Clone)]
pub struct Children {
    /// The ConfigMap with the non-secret settings.
    pub config_map: ConfigMap,
    /// The producer Deployment.
    pub producer: Deployment,
    /// The producer Service.
    pub producer_service: Service,
    /// One Deployment per consumer group, in spec order.
    pub consumers: Vec<Deployment>,
    /// One Service per consumer group, in spec order.
    pub consumer_services: Vec<Service>,
    /// The PodDisruptionBudgets wanted: the producers' and then each group's, in spec
    /// order, each where its `podDisruptionBudget` is enabled. Any other budget of the
    /// system is to be deleted.
    pub budgets: Vec<PodDisruptionBudget>,
}

/// Builds every child of `system`; workers whose spec names no image get `worker_image`;
/// `client_setting_keys` are the keys of the Kafka client-settings Secret.
pub fn build(
    owner: &Owner,
    spec: &OutboxSystemSpec,
    worker_image: &WorkerImage,
    client_setting_keys: &[String],
) -> Children {
    let config_map = config_map(owner, spec);
    let config_hash = hash_config(&config_map);
    let kafka_env = client_settings_env(spec, client_setting_keys);
    Children {
        producer: producer_deployment(owner, spec, worker_image, &config_hash, &kafka_env),
        producer_service: service(
            owner,
            &producer_name(&owner.name),
            labels(owner, outbox_contract::labels::PRODUCER, None),
            spec.producers.port,
            false,
        ),
        consumers: spec
            .consumers
            .groups
            .iter()
            .map(|g| consumer_deployment(owner, spec, g, worker_image, &config_hash, &kafka_env))
            .collect(),
        consumer_services: spec
            .consumers
            .groups
            .iter()
            .map(|g| {
                service(
                    owner,
                    &consumer_name(&owner.name, &g.name),
                    labels(owner, outbox_contract::labels::CONSUMER, Some(&g.name)),
                    spec.consumers.port,
                    true,
                )
            })
            .collect(),
        budgets: budgets(owner, spec),
        config_map,
    }
}

/// The PodDisruptionBudgets of the producers and of each group whose budget is enabled.
pub fn budgets(owner: &Owner, spec: &OutboxSystemSpec) -> Vec<PodDisruptionBudget> {
    let producers = (
        producer_name(&owner.name),
        labels(owner, outbox_contract::labels::PRODUCER, None),
        spec.producers.pod_disruption_budget.clone(),
    );
    let groups = spec.consumers.groups.iter().map(|g| {
        (
            consumer_name(&owner.name, &g.name),
            labels(owner, outbox_contract::labels::CONSUMER, Some(&g.name)),
            spec.consumers.pod_disruption_budget_of(g),
        )
    });
    std::iter::once(producers)
        .chain(groups)
        .filter(|(_, _, budget)| budget.enabled)
        .map(|(name, labels, budget)| pod_disruption_budget(owner, &name, labels, &budget))
        .collect()
}

/// A PodDisruptionBudget named like its workload, selecting exactly the workload's pods
/// (its Deployment's selector): at most `maxUnavailable` of them evicted at once, and a
/// pod that is not ready always evictable (it serves nothing; a crash-looping pod must
/// not block a node drain).
pub fn pod_disruption_budget(
    owner: &Owner,
    name: &str,
    labels: BTreeMap<String, String>,
    budget: &PodDisruptionBudgetSpec,
) -> PodDisruptionBudget {
    PodDisruptionBudget {
        metadata: meta(owner, name, labels.clone()),
        spec: Some(BudgetSpec {
            max_unavailable: Some(IntOrString::Int(budget.max_unavailable)),
            selector: Some(LabelSelector {
                match_labels: Some(labels),
                match_expressions: None,
            }),
            unhealthy_pod_eviction_policy: Some("AlwaysAllow".to_string()),
            ..BudgetSpec::default()
        }),
        status: None,
    }
}

/// The pod template `operator` built, with the user's `settings` added: their labels
/// and annotations under the operator's own (the operator's value wins on a shared key:
/// selectors and the config-hash rollout depend on them), and each scheduling field
/// set. A topology spread constraint without a `labelSelector` gets the operator's pod
/// labels, so that it counts exactly the pods of this workload.
pub fn with_pod_settings(operator: PodTemplateSpec, settings: &PodSettings) -> PodTemplateSpec {
    let mut metadata = operator.metadata.unwrap_or_default();
    let own_labels = metadata.labels.clone().unwrap_or_default();
    let under = |user: &BTreeMap<String, String>, own: Option<BTreeMap<String, String>>| {
        let mut map = user.clone();
        map.extend(own.unwrap_or_default());
        (!map.is_empty()).then_some(map)
    };
    metadata.labels = under(&settings.metadata.labels, metadata.labels.take());
    metadata.annotations = under(&settings.metadata.annotations, metadata.annotations.take());
    let mut pod = operator.spec.unwrap_or_default();
    if !settings.node_selector.is_empty() {
        pod.node_selector = Some(settings.node_selector.clone());
    }
    pod.tolerations = settings.tolerations.clone();
    pod.affinity = settings.affinity.clone();
    pod.topology_spread_constraints = settings.topology_spread_constraints.clone().map(|list| {
        list.into_iter()
            .map(|mut constraint| {
                constraint
                    .label_selector
                    .get_or_insert_with(|| LabelSelector {
                        match_labels: Some(own_labels.clone()),
                        match_expressions: None,
                    });
                constraint
            })
            .collect()
    });
    pod.priority_class_name = settings.priority_class_name.clone();
    pod.image_pull_secrets = settings.image_pull_secrets.clone();
    PodTemplateSpec {
        metadata: Some(metadata),
        spec: Some(pod),
    }
}

/// Labels of a child (and the selector of its pods).
pub fn labels(owner: &Owner, component: &str, group: Option<&str>) -> BTreeMap<String, String> {
    let mut labels = worker_labels(&owner.name, component);
    if let Some(group) = group {
        labels.insert(
            outbox_contract::labels::GROUP.to_string(),
            group.to_string(),
        );
    }
    labels
}

/// The labels every worker pod of OutboxSystem `system` in role `component` carries
/// (the load-test runner's too).
pub fn worker_labels(system: &str, component: &str) -> BTreeMap<String, String> {
    BTreeMap::from([
        (
            outbox_contract::labels::NAME.to_string(),
            WORKER_BINARY.to_string(),
        ),
        (
            outbox_contract::labels::INSTANCE.to_string(),
            system.to_string(),
        ),
        (
            outbox_contract::labels::MANAGED_BY.to_string(),
            outbox_contract::labels::OPERATOR.to_string(),
        ),
        (
            outbox_contract::labels::COMPONENT.to_string(),
            component.to_string(),
        ),
        (
            outbox_contract::labels::SYSTEM.to_string(),
            system.to_string(),
        ),
    ])
}

fn meta(owner: &Owner, name: &str, labels: BTreeMap<String, String>) -> ObjectMeta {
    ObjectMeta {
        name: Some(name.to_string()),
        namespace: Some(owner.namespace.clone()),
        labels: Some(labels),
        owner_references: Some(vec![owner.owner_ref.clone()]),
        ..ObjectMeta::default()
    }
}

/// The non-secret settings every worker of the system reads (through `envFrom`).
pub fn config_map(owner: &Owner, spec: &OutboxSystemSpec) -> ConfigMap {
    let data = BTreeMap::from([
        (
            names::KAFKA_BOOTSTRAP_SERVERS.to_string(),
            spec.kafka.bootstrap_servers.clone(),
        ),
        (names::KAFKA_TOPICS.to_string(), spec.topic.name.clone()),
        // The workers check that their outbox schema is this system's (see
        // `schema_owner`).
        (
            names::OUTBOX_SYSTEM.to_string(),
            crate::schema_owner::system_id(&owner.namespace, &owner.name),
        ),
        (
            names::RUST_LOG.to_string(),
            spec.log_level.clone().unwrap_or_else(|| "info".to_string()),
        ),
    ]);
    ConfigMap {
        metadata: meta(
            owner,
            &config_map_name(&owner.name),
            labels(owner, "config", None),
        ),
        data: Some(data),
        ..ConfigMap::default()
    }
}

fn hash_config(config_map: &ConfigMap) -> String {
    let mut hasher = DefaultHasher::new();
    config_map.data.hash(&mut hasher);
    format!("{:016x}", hasher.finish())
}

fn plain_env(name: &str, value: impl Into<String>) -> EnvVar {
    EnvVar {
        name: name.to_string(),
        value: Some(value.into()),
        value_from: None,
    }
}

/// Environment shared by every role: pod name as SERVICE_ID, the database URL from the
/// referenced Secret key, the HTTP port, and the mounted PostgreSQL CA when there is one.
pub fn common_env(spec: &OutboxSystemSpec, port: i32) -> Vec<EnvVar> {
    let mut env = vec![
        EnvVar {
            name: names::SERVICE_ID.to_string(),
            value: None,
            value_from: Some(EnvVarSource {
                field_ref: Some(ObjectFieldSelector {
                    field_path: "metadata.name".to_string(),
                    api_version: None,
                }),
                ..EnvVarSource::default()
            }),
        },
        EnvVar {
            name: names::DATABASE_URL.to_string(),
            value: None,
            value_from: Some(EnvVarSource {
                secret_key_ref: Some(SecretKeySelector {
                    name: spec.database.url_secret_ref.name.clone(),
                    key: spec.database.url_secret_ref.key.clone(),
                    optional: Some(false),
                }),
                ..EnvVarSource::default()
            }),
        },
        plain_env(names::HTTP_PORT, port.to_string()),
    ];
    if spec.database.ca_secret_ref.is_some() {
        env.push(plain_env(
            names::PGSSLROOTCERT,
            format!("{POSTGRES_CA_DIR}/{POSTGRES_CA_FILE}"),
        ));
    }
    env
}

/// Where `spec.database.caSecretRef` is mounted in every worker.
pub const POSTGRES_CA_DIR: &str = "/etc/outbox/postgres-ca";
const POSTGRES_CA_FILE: &str = "ca.crt";

/// The volumes of every worker and their mounts: a writable `/tmp` (the root
/// filesystem is read-only) and, with `spec.database.caSecretRef`, the PostgreSQL CA.
pub fn worker_volumes(spec: &OutboxSystemSpec) -> (Vec<Volume>, Vec<VolumeMount>) {
    let mut volumes = vec![Volume {
        name: "tmp".to_string(),
        empty_dir: Some(EmptyDirVolumeSource::default()),
        ..Volume::default()
    }];
    let mut mounts = vec![VolumeMount {
        name: "tmp".to_string(),
        mount_path: "/tmp".to_string(),
        ..VolumeMount::default()
    }];
    if let Some(ca) = &spec.database.ca_secret_ref {
        volumes.push(Volume {
            name: "postgres-ca".to_string(),
            secret: Some(SecretVolumeSource {
                secret_name: Some(ca.name.clone()),
                items: Some(vec![KeyToPath {
                    key: ca.key.clone(),
                    path: POSTGRES_CA_FILE.to_string(),
                    mode: None,
                }]),
                default_mode: Some(0o444),
                optional: Some(false),
            }),
            ..Volume::default()
        });
        mounts.push(VolumeMount {
            name: "postgres-ca".to_string(),
            mount_path: POSTGRES_CA_DIR.to_string(),
            read_only: Some(true),
            ..VolumeMount::default()
        });
    }
    (volumes, mounts)
}

/// The Kafka client settings of producers and consumers: one variable per
/// `KAFKA_CLIENT_*` key of the client-settings Secret (`client_setting_keys`), each
/// through a `secretKeyRef` to its key. Not `envFrom`, which would import every key of
/// the Secret (`LD_PRELOAD`, `DATABASE_URL`, ...): its `prefix` adds a prefix and does
/// not filter. The value never leaves the Secret; a key added later reaches the pods
/// at the operator's next reconcile, which rolls them.
pub fn client_settings_env(spec: &OutboxSystemSpec, client_setting_keys: &[String]) -> Vec<EnvVar> {
    let Some(secret) = &spec.kafka.client_settings_secret_ref else {
        return Vec::new();
    };
    client_setting_keys
        .iter()
        .filter(|key| outbox_contract::worker_env::kafka_client_property(key).is_some())
        .map(|key| EnvVar {
            name: key.clone(),
            value: None,
            value_from: Some(EnvVarSource {
                secret_key_ref: Some(SecretKeySelector {
                    name: secret.name.clone(),
                    key: key.clone(),
                    optional: Some(false),
                }),
                ..EnvVarSource::default()
            }),
        })
        .collect()
}

/// `envFrom`: the system's ConfigMap, whose every key the operator sets.
pub fn env_from(system: &str) -> Vec<EnvFromSource> {
    vec![EnvFromSource {
        config_map_ref: Some(ConfigMapEnvSource {
            name: config_map_name(system),
            optional: Some(false),
        }),
        ..EnvFromSource::default()
    }]
}

/// The locked-down container security context every worker runs with.
pub fn container_security_context() -> SecurityContext {
    SecurityContext {
        allow_privilege_escalation: Some(false),
        read_only_root_filesystem: Some(true),
        run_as_non_root: Some(true),
        capabilities: Some(Capabilities {
            drop: Some(vec!["ALL".to_string()]),
            add: None,
        }),
        ..SecurityContext::default()
    }
}

/// The pod security context every worker runs with.
pub fn pod_security_context() -> PodSecurityContext {
    PodSecurityContext {
        run_as_non_root: Some(true),
        run_as_user: Some(65532),
        run_as_group: Some(65532),
        seccomp_profile: Some(SeccompProfile {
            type_: "RuntimeDefault".to_string(),
            localhost_profile: None,
        }),
        ..PodSecurityContext::default()
    }
}

/// An HTTP probe on the container's named port `http`.
fn probe(path: &str, initial_delay: i32, failure_threshold: i32) -> Probe {
    Probe {
        http_get: Some(HTTPGetAction {
            path: Some(path.to_string()),
            port: IntOrString::String("http".to_string()),
            ..HTTPGetAction::default()
        }),
        initial_delay_seconds: Some(initial_delay),
        period_seconds: Some(10),
        timeout_seconds: Some(2),
        failure_threshold: Some(failure_threshold),
        ..Probe::default()
    }
}

struct PodParams<'a> {
    component: &'a str,
    group: Option<&'a str>,
    image: String,
    image_pull_policy: Option<String>,
    args: Vec<String>,
    env: Vec<EnvVar>,
    port: i32,
    resources: Option<ResourceRequirements>,
    replicas: i32,
    name: String,
    pod: PodSettings,
}

fn deployment(
    owner: &Owner,
    spec: &OutboxSystemSpec,
    params: PodParams<'_>,
    config_hash: &str,
) -> Deployment {
    let labels = labels(owner, params.component, params.group);
    let (volumes, mounts) = worker_volumes(spec);
    let container = Container {
        name: params.component.to_string(),
        image: Some(params.image),
        image_pull_policy: params.image_pull_policy,
        command: Some(vec![WORKER_BINARY.to_string()]),
        args: Some(params.args),
        env: Some(params.env),
        env_from: Some(env_from(&owner.name)),
        ports: Some(vec![ContainerPort {
            name: Some("http".to_string()),
            container_port: params.port,
            protocol: Some("TCP".to_string()),
            ..ContainerPort::default()
        }]),
        liveness_probe: Some(probe(LIVENESS_PATH, 10, 6)),
        readiness_probe: Some(probe(READINESS_PATH, 2, 3)),
        resources: params.resources,
        security_context: Some(container_security_context()),
        volume_mounts: Some(mounts),
        ..Container::default()
    };
    Deployment {
        metadata: meta(owner, &params.name, labels.clone()),
        spec: Some(DeploymentSpec {
            replicas: Some(params.replicas),
            selector: LabelSelector {
                match_labels: Some(labels.clone()),
                match_expressions: None,
            },
            template: with_pod_settings(
                PodTemplateSpec {
                    metadata: Some(ObjectMeta {
                        labels: Some(labels),
                        annotations: Some(BTreeMap::from([(
                            CONFIG_HASH_ANNOTATION.to_string(),
                            config_hash.to_string(),
                        )])),
                        ..ObjectMeta::default()
                    }),
                    spec: Some(PodSpec {
                        containers: vec![container],
                        security_context: Some(pod_security_context()),
                        automount_service_account_token: Some(false),
                        termination_grace_period_seconds: Some(30),
                        volumes: Some(volumes),
                        ..PodSpec::default()
                    }),
                },
                &params.pod,
            ),
            ..DeploymentSpec::default()
        }),
        status: None,
    }
}

/// The producer Deployment.
pub fn producer_deployment(
    owner: &Owner,
    spec: &OutboxSystemSpec,
    worker_image: &WorkerImage,
    config_hash: &str,
    kafka_env: &[EnvVar],
) -> Deployment {
    let mut env = common_env(spec, spec.producers.port);
    env.extend_from_slice(kafka_env);
    env.extend(
        ProducerSettings::of(spec)
            .env()
            .into_iter()
            .map(|(name, value)| plain_env(name, value)),
    );
    let (image, image_pull_policy) = worker_image.resolve(
        &[spec.producers.image.as_ref(), spec.image.as_ref()],
        spec.image_pull_policy.as_ref(),
    );
    deployment(
        owner,
        spec,
        PodParams {
            component: outbox_contract::labels::PRODUCER,
            group: None,
            image,
            image_pull_policy,
            args: vec!["producer".to_string()],
            env,
            port: spec.producers.port,
            resources: spec.producers.resources.clone(),
            replicas: spec.producers.replicas,
            name: producer_name(&owner.name),
            pod: spec.producers.pod.clone(),
        },
        config_hash,
    )
}

/// The Deployment of one consumer group.
pub fn consumer_deployment(
    owner: &Owner,
    spec: &OutboxSystemSpec,
    group: &ConsumerGroupSpec,
    worker_image: &WorkerImage,
    config_hash: &str,
    kafka_env: &[EnvVar],
) -> Deployment {
    let mut env = common_env(spec, spec.consumers.port);
    env.extend_from_slice(kafka_env);
    env.extend(
        ConsumerSettings::of(group, owner.kafka_group_id(&group.name))
            .env()
            .into_iter()
            .map(|(name, value)| plain_env(name, value)),
    );
    let (image, image_pull_policy) = worker_image.resolve(
        &[spec.consumers.image.as_ref(), spec.image.as_ref()],
        spec.image_pull_policy.as_ref(),
    );
    deployment(
        owner,
        spec,
        PodParams {
            component: outbox_contract::labels::CONSUMER,
            group: Some(&group.name),
            image,
            image_pull_policy,
            args: vec!["consumer".to_string()],
            env,
            port: spec.consumers.port,
            resources: spec.consumers.resources.clone(),
            replicas: group.replicas,
            name: consumer_name(&owner.name, &group.name),
            pod: spec.consumers.pod_of(group),
        },
        config_hash,
    )
}

fn service(
    owner: &Owner,
    name: &str,
    labels: BTreeMap<String, String>,
    port: i32,
    headless: bool,
) -> Service {
    Service {
        metadata: meta(owner, name, labels.clone()),
        spec: Some(ServiceSpec {
            selector: Some(labels),
            cluster_ip: headless.then(|| "None".to_string()),
            ports: Some(vec![ServicePort {
                name: Some("http".to_string()),
                port,
                target_port: Some(IntOrString::String("http".to_string())),
                protocol: Some("TCP".to_string()),
                ..ServicePort::default()
            }]),
            ..ServiceSpec::default()
        }),
        status: None,
    }
}

/// Builds the owner description of `system` (None when the API server has not given it
/// a name, namespace or uid yet).
pub fn owner_of(system: &OutboxSystem) -> Option<Owner> {
    use kube::Resource;
    Some(Owner {
        name: system.metadata.name.clone()?,
        namespace: system.metadata.namespace.clone()?,
        owner_ref: system.controller_owner_ref(&())?,
        kafka_group_ids: system
            .spec
            .consumers
            .groups
            .iter()
            .map(|g| (g.name.clone(), system.kafka_group_id(&g.name)))
            .collect(),
    })
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use crate::crd::*;

    pub(crate) fn reference_spec() -> OutboxSystemSpec {
        let group = |name: &str, replicas| ConsumerGroupSpec {
            name: name.to_string(),
            replicas,
            retry: RetrySpec::default(),
            dead_letter_topic: None,
            pod: PodSettings::default(),
            pod_disruption_budget: None,
        };
        OutboxSystemSpec {
            paused: false,
            retention: Default::default(),
            image: None,
            image_pull_policy: None,
            log_level: None,
            kafka: KafkaSpec {
                bootstrap_servers: "kafka:9092".into(),
                client_settings_secret_ref: Some(SecretRef {
                    name: "kafka-client".into(),
                }),
            },
            database: DatabaseSpec {
                url_secret_ref: SecretKeyRef {
                    name: "outbox-postgres".into(),
                    key: "url".into(),
                },
                ca_secret_ref: None,
            },
            topic: TopicSpec {
                name: "shared-events".into(),
                partitions: 6,
                replication_factor: 1,
                config: BTreeMap::new(),
                deletion_policy: DeletionPolicy::Retain,
            },
            producers: ProducersSpec {
                replicas: 3,
                ..ProducersSpec::default()
            },
            consumers: ConsumersSpec {
                groups: vec![
                    group("group-a", 3),
                    group("group-b", 2),
                    group("group-c", 1),
                ],
                ..ConsumersSpec::default()
            },
        }
    }

    fn owner() -> Owner {
        Owner {
            name: "demo".into(),
            namespace: "ns".into(),
            owner_ref: OwnerReference {
                api_version: "outbox.dev/v1alpha1".into(),
                kind: "OutboxSystem".into(),
                name: "demo".into(),
                uid: "uid-1".into(),
                controller: Some(true),
                block_owner_deletion: Some(true),
            },
            kafka_group_ids: BTreeMap::new(),
        }
    }

    fn env_value(d: &Deployment, name: &str) -> Option<String> {
        d.spec.as_ref()?.template.spec.as_ref()?.containers[0]
            .env
            .as_ref()?
            .iter()
            .find(|e| e.name == name)?
            .value
            .clone()
    }

    /// Whether `meta`'s labels match the selector the operator watches its children by.
    pub(crate) fn watched_by_the_operator(meta: &ObjectMeta) -> bool {
        let selector = outbox_contract::labels::operator_children();
        let Some((key, value)) = selector.split_once('=') else {
            return false;
        };
        meta.labels
            .as_ref()
            .and_then(|l| l.get(key))
            .map(String::as_str)
            == Some(value)
    }

    #[test]
    fn every_child_carries_the_label_the_operators_watches_select_by() {
        let children = build(&owner(), &reference_spec(), &WorkerImage::default(), &[]);
        let mut metas = vec![
            &children.config_map.metadata,
            &children.producer.metadata,
            &children.producer_service.metadata,
        ];
        metas.extend(children.consumers.iter().map(|d| &d.metadata));
        metas.extend(children.consumer_services.iter().map(|s| &s.metadata));
        metas.extend(children.budgets.iter().map(|b| &b.metadata));
        assert_eq!(
            metas.len(),
            13,
            "every child of the reference system is checked"
        );
        for meta in metas {
            assert!(
                watched_by_the_operator(meta),
                "{:?} is not selected by {}: the operator would never see it change",
                meta.name,
                outbox_contract::labels::operator_children()
            );
        }
    }

    #[test]
    fn reference_topology_gives_one_producer_and_three_consumer_deployments() {
        let children = build(&owner(), &reference_spec(), &WorkerImage::default(), &[]);
        assert_eq!(
            children.producer.metadata.name.as_deref(),
            Some("demo-producer")
        );
        assert_eq!(
            children.producer.spec.as_ref().and_then(|s| s.replicas),
            Some(3)
        );
        let consumers: Vec<(String, i32)> = children
            .consumers
            .iter()
            .map(|d| {
                (
                    d.metadata.name.clone().unwrap_or_default(),
                    d.spec.as_ref().and_then(|s| s.replicas).unwrap_or(-1),
                )
            })
            .collect();
        assert_eq!(
            consumers,
            vec![
                ("demo-consumer-group-a".to_string(), 3),
                ("demo-consumer-group-b".to_string(), 2),
                ("demo-consumer-group-c".to_string(), 1)
            ]
        );
        assert_eq!(children.consumer_services.len(), 3);
    }

    #[test]
    fn producers_keep_relayed_rows_an_hour_and_ledger_data_a_week_unless_told() {
        let mut spec = reference_spec();
        let children = build(&owner(), &spec, &WorkerImage::default(), &[]);
        let p = &children.producer;
        assert_eq!(env_value(p, "RETENTION_SECONDS").as_deref(), Some("3600"));
        assert_eq!(
            env_value(p, "LEDGER_RETENTION_SECONDS").as_deref(),
            Some("604800")
        );
        assert_eq!(
            env_value(p, "MAX_BACKLOG_MESSAGES").as_deref(),
            Some("20000000")
        );
        spec.retention.relayed_seconds = 0;
        let children = build(&owner(), &spec, &WorkerImage::default(), &[]);
        assert_eq!(
            env_value(&children.producer, "RETENTION_SECONDS").as_deref(),
            Some("0")
        );
    }

    #[test]
    fn a_consumer_joins_the_kafka_group_its_system_names_and_keeps_the_declared_name() {
        let mut system = OutboxSystem::new("demo", reference_spec());
        system.metadata.namespace = Some("ns".into());
        system.metadata.uid = Some("uid-1".into());
        // group-a is from before prefixed ids (listed in status without one).
        system.status = Some(crate::crd::OutboxSystemStatus {
            groups: vec![crate::crd::GroupStatus {
                name: "group-a".into(),
                ..Default::default()
            }],
            ..Default::default()
        });
        let owner = owner_of(&system).expect("named, namespaced, with a uid");
        let children = build(&owner, &system.spec, &WorkerImage::default(), &[]);
        let ids: Vec<_> = children
            .consumers
            .iter()
            .map(|d| {
                (
                    env_value(d, "KAFKA_CONSUMER_GROUP").unwrap_or_default(),
                    env_value(d, "KAFKA_CONSUMER_GROUP_ID").unwrap_or_default(),
                )
            })
            .collect();
        let pair = |a: &str, b: &str| (a.to_string(), b.to_string());
        assert_eq!(
            ids,
            [
                pair("group-a", "group-a"),
                pair("group-b", "ns.demo.group-b"),
                pair("group-c", "ns.demo.group-c"),
            ]
        );
    }

    #[test]
    fn consumer_env_carries_group_and_retry_policy() {
        let children = build(&owner(), &reference_spec(), &WorkerImage::default(), &[]);
        let b = &children.consumers[1];
        assert_eq!(
            env_value(b, "KAFKA_CONSUMER_GROUP").as_deref(),
            Some("group-b")
        );
        assert_eq!(
            env_value(b, "KAFKA_CONSUMER_GROUP_ID").as_deref(),
            Some("ns.demo.group-b")
        );
        assert_eq!(env_value(b, "RETRY_MAX_RETRIES").as_deref(), Some("-1"));
        assert_eq!(env_value(b, "HTTP_PORT").as_deref(), Some("8080"));
        assert_eq!(env_value(b, "DEAD_LETTER_TOPIC"), None);
        let args = b
            .spec
            .as_ref()
            .and_then(|s| s.template.spec.as_ref())
            .map(|p| p.containers[0].args.clone());
        assert_eq!(args, Some(Some(vec!["consumer".to_string()])));
    }

    #[test]
    fn the_postgres_ca_secret_is_mounted_read_only_into_every_worker_as_pgsslrootcert() {
        let mut spec = reference_spec();
        spec.database.ca_secret_ref = Some(SecretKeyRef {
            name: "pg-ca".into(),
            key: "root.pem".into(),
        });
        let children = build(&owner(), &spec, &WorkerImage::default(), &[]);
        let deployments = std::iter::once(&children.producer).chain(children.consumers.iter());
        for deployment in deployments {
            let pod = deployment
                .spec
                .as_ref()
                .and_then(|s| s.template.spec.clone())
                .unwrap_or_default();
            let volume = pod
                .volumes
                .iter()
                .flatten()
                .find(|v| v.name == "postgres-ca")
                .and_then(|v| v.secret.clone())
                .unwrap_or_default();
            assert_eq!(volume.secret_name.as_deref(), Some("pg-ca"));
            let item = &volume.items.unwrap_or_default()[0];
            assert_eq!(
                (item.key.as_str(), item.path.as_str()),
                ("root.pem", "ca.crt")
            );
            let container = &pod.containers[0];
            let mount = container
                .volume_mounts
                .iter()
                .flatten()
                .find(|m| m.name == "postgres-ca")
                .cloned()
                .unwrap_or_default();
            assert_eq!(mount.mount_path, POSTGRES_CA_DIR);
            assert_eq!(mount.read_only, Some(true));
            assert_eq!(
                env_value(deployment, "PGSSLROOTCERT").as_deref(),
                Some("/etc/outbox/postgres-ca/ca.crt")
            );
        }
        let without = build(&owner(), &reference_spec(), &WorkerImage::default(), &[]);
        assert_eq!(env_value(&without.producer, "PGSSLROOTCERT"), None);
    }

    /// Each container's env entries that come from Secret `secret`: (name, key).
    fn env_from_secret(d: &Deployment, secret: &str) -> Vec<(String, String)> {
        let container = d
            .spec
            .as_ref()
            .and_then(|s| s.template.spec.as_ref())
            .map(|p| p.containers[0].clone())
            .unwrap_or_default();
        container
            .env
            .iter()
            .flatten()
            .filter_map(|e| {
                let r = e.value_from.as_ref()?.secret_key_ref.as_ref()?;
                (r.name == secret && r.optional == Some(false))
                    .then(|| (e.name.clone(), r.key.clone()))
            })
            .collect()
    }

    #[test]
    fn only_the_kafka_client_keys_of_the_settings_secret_reach_the_workers_each_by_its_key() {
        let keys: Vec<String> = [
            "KAFKA_CLIENT_SECURITY_PROTOCOL",
            "KAFKA_CLIENT_SASL_PASSWORD",
            "LD_PRELOAD",
            "DATABASE_URL",
            "RUST_LOG",
            "KAFKA_CLIENT_",
            "kafka_client_sasl_username",
        ]
        .map(String::from)
        .to_vec();
        let children = build(&owner(), &reference_spec(), &WorkerImage::default(), &keys);
        let expected = vec![
            (
                "KAFKA_CLIENT_SASL_PASSWORD".to_string(),
                "KAFKA_CLIENT_SASL_PASSWORD".to_string(),
            ),
            (
                "KAFKA_CLIENT_SECURITY_PROTOCOL".to_string(),
                "KAFKA_CLIENT_SECURITY_PROTOCOL".to_string(),
            ),
        ];
        for d in std::iter::once(&children.producer).chain(&children.consumers) {
            let mut got = env_from_secret(d, "kafka-client");
            got.sort();
            assert_eq!(got, expected, "{:?}", d.metadata.name);
            let from = d
                .spec
                .as_ref()
                .and_then(|s| s.template.spec.as_ref())
                .and_then(|p| p.containers[0].env_from.clone())
                .unwrap_or_default();
            assert!(
                from.iter().all(|f| f.secret_ref.is_none()),
                "no envFrom of a whole Secret: {from:?}"
            );
        }
        // Without a client-settings Secret in the spec, no such variables.
        let mut spec = reference_spec();
        spec.kafka.client_settings_secret_ref = None;
        let bare = build(&owner(), &spec, &WorkerImage::default(), &keys);
        assert_eq!(env_from_secret(&bare.producer, "kafka-client"), vec![]);
    }

    #[test]
    fn database_url_comes_only_from_the_secret() {
        let children = build(&owner(), &reference_spec(), &WorkerImage::default(), &[]);
        let container = &children
            .producer
            .spec
            .as_ref()
            .and_then(|s| s.template.spec.clone())
            .map(|p| p.containers[0].clone());
        let Some(container) = container else {
            panic!("no container")
        };
        let db = container
            .env
            .iter()
            .flatten()
            .find(|e| e.name == "DATABASE_URL");
        let secret = db
            .and_then(|e| e.value_from.as_ref())
            .and_then(|v| v.secret_key_ref.as_ref());
        assert_eq!(
            secret.map(|s| (s.name.as_str(), s.key.as_str())),
            Some(("outbox-postgres", "url"))
        );
        assert!(db.and_then(|e| e.value.as_ref()).is_none());
        let from = container.env_from.clone().unwrap_or_default();
        assert_eq!(
            from[0].config_map_ref.as_ref().map(|c| c.name.as_str()),
            Some("demo-config")
        );
        let data = children.config_map.data.unwrap_or_default();
        assert_eq!(data["KAFKA_TOPICS"], "shared-events");
        assert!(!data.values().any(|v| v.contains("postgres://")));
    }

    #[test]
    fn pods_are_locked_down_and_probed() {
        let children = build(&owner(), &reference_spec(), &WorkerImage::default(), &[]);
        let pod = children.producer.spec.and_then(|s| s.template.spec);
        let Some(pod) = pod else {
            panic!("no pod spec")
        };
        let c = &pod.containers[0];
        let sc = c.security_context.clone().unwrap_or_default();
        assert_eq!(sc.run_as_non_root, Some(true));
        assert_eq!(sc.read_only_root_filesystem, Some(true));
        assert_eq!(sc.allow_privilege_escalation, Some(false));
        assert_eq!(
            sc.capabilities.and_then(|c| c.drop),
            Some(vec!["ALL".to_string()])
        );
        let path = |p: &Option<Probe>| {
            p.as_ref()
                .and_then(|p| p.http_get.as_ref())
                .and_then(|h| h.path.clone())
        };
        // An outage of Kafka or PostgreSQL fails no liveness probe: a restart fixes
        // neither, and restarting producers would stop ingest.
        assert_eq!(path(&c.liveness_probe).as_deref(), Some("/livez"));
        assert_eq!(path(&c.readiness_probe).as_deref(), Some("/readyz"));
        for consumer in &children.consumers {
            let c = &consumer
                .spec
                .as_ref()
                .and_then(|s| s.template.spec.as_ref())
                .expect("consumer pod")
                .containers[0];
            assert_eq!(path(&c.liveness_probe).as_deref(), Some("/livez"));
            assert_eq!(path(&c.readiness_probe).as_deref(), Some("/readyz"));
        }
        assert_eq!(c.image.as_deref(), Some(default_image().as_str()));
    }

    #[test]
    fn every_child_is_controlled_by_the_system() {
        let children = build(&owner(), &reference_spec(), &WorkerImage::default(), &[]);
        let metas = [
            &children.config_map.metadata,
            &children.producer.metadata,
            &children.producer_service.metadata,
        ]
        .into_iter()
        .chain(children.consumers.iter().map(|d| &d.metadata))
        .chain(children.consumer_services.iter().map(|s| &s.metadata))
        .chain(children.budgets.iter().map(|b| &b.metadata));
        for m in metas {
            let refs = m.owner_references.clone().unwrap_or_default();
            assert_eq!(refs.len(), 1, "{:?}", m.name);
            assert_eq!(refs[0].controller, Some(true));
        }
    }

    #[test]
    fn config_change_changes_the_pod_template_hash() {
        let mut spec = reference_spec();
        let before = build(&owner(), &spec, &WorkerImage::default(), &[]);
        spec.kafka.bootstrap_servers = "other:9092".into();
        let after = build(&owner(), &spec, &WorkerImage::default(), &[]);
        let hash = |d: &Deployment| {
            d.spec
                .as_ref()
                .and_then(|s| s.template.metadata.as_ref())
                .and_then(|m| m.annotations.clone())
        };
        assert_ne!(hash(&before.producer), hash(&after.producer));
    }

    /// Image and pull policy of the producer and of every consumer group.
    fn images(children: &Children) -> Vec<(Option<String>, Option<String>)> {
        std::iter::once(&children.producer)
            .chain(&children.consumers)
            .map(|d| {
                let c = &d
                    .spec
                    .as_ref()
                    .and_then(|s| s.template.spec.as_ref())
                    .expect("pod spec")
                    .containers[0];
                (c.image.clone(), c.image_pull_policy.clone())
            })
            .collect()
    }

    #[test]
    fn a_spec_without_image_gets_the_operators_worker_image_and_one_with_an_image_keeps_it() {
        let configured = WorkerImage {
            image: "registry.example/outbox-worker:7".into(),
            pull_policy: Some("Always".into()),
        };
        let both = |image: &str, policy: Option<&str>| {
            vec![(Some(image.to_string()), policy.map(String::from)); 4]
        };
        let spec = reference_spec();
        assert_eq!(spec.image, None);
        assert_eq!(
            images(&build(&owner(), &spec, &configured, &[])),
            both("registry.example/outbox-worker:7", Some("Always"))
        );
        // The spec's own image, with the spec's pull policy (none: Kubernetes decides),
        // never the one configured for the operator's default image.
        let mut spec = reference_spec();
        spec.image = Some("example/own:1".into());
        assert_eq!(
            images(&build(&owner(), &spec, &configured, &[])),
            both("example/own:1", None)
        );
        // A role's image before the system's; the spec's pull policy before the default's.
        spec.producers.image = Some("example/producer:2".into());
        spec.image = None;
        spec.image_pull_policy = Some("Never".into());
        let got = images(&build(&owner(), &spec, &configured, &[]));
        assert_eq!(
            got[0],
            (Some("example/producer:2".into()), Some("Never".into()))
        );
        assert_eq!(
            got[1..],
            both("registry.example/outbox-worker:7", Some("Never"))[1..]
        );
    }

    fn pod_template(d: &Deployment) -> PodTemplateSpec {
        d.spec.clone().map(|s| s.template).unwrap_or_default()
    }

    fn pod_settings(json: serde_json::Value) -> PodSettings {
        serde_json::from_value(json).unwrap_or_else(|e| panic!("{e}"))
    }

    /// Pod settings with every field set.
    pub(crate) fn every_pod_setting() -> PodSettings {
        pod_settings(serde_json::json!({
            "metadata": {"labels": {"team": "payments"},
                         "annotations": {"sidecar.example/inject": "false"}},
            "nodeSelector": {"pool": "outbox"},
            "tolerations": [{"key": "dedicated", "operator": "Equal", "value": "outbox",
                             "effect": "NoSchedule"}],
            "affinity": {"nodeAffinity": {"requiredDuringSchedulingIgnoredDuringExecution": {
                "nodeSelectorTerms": [{"matchExpressions": [
                    {"key": "kubernetes.io/arch", "operator": "In", "values": ["amd64"]}]}]}}},
            "topologySpreadConstraints": [{"maxSkew": 1, "topologyKey": "topology.kubernetes.io/zone",
                                           "whenUnsatisfiable": "ScheduleAnyway"}],
            "priorityClassName": "outbox-critical",
            "imagePullSecrets": [{"name": "registry-credentials"}]
        }))
    }

    /// Asserts that each field of [`every_pod_setting`] is in `template`, and that its
    /// spread constraint selects the pods by `own` (the operator's pod labels).
    pub(crate) fn assert_every_pod_setting_in(
        template: &PodTemplateSpec,
        own: &BTreeMap<String, String>,
    ) {
        let meta = template.metadata.clone().unwrap_or_default();
        let labels = meta.labels.unwrap_or_default();
        assert_eq!(labels.get("team").map(String::as_str), Some("payments"));
        for (k, v) in own {
            assert_eq!(labels.get(k), Some(v), "operator label {k}");
        }
        let annotations = meta.annotations.unwrap_or_default();
        assert_eq!(
            annotations
                .get("sidecar.example/inject")
                .map(String::as_str),
            Some("false")
        );
        let pod = template.spec.clone().unwrap_or_default();
        let wanted = every_pod_setting();
        assert_eq!(
            pod.node_selector,
            Some(BTreeMap::from([("pool".to_string(), "outbox".to_string())]))
        );
        assert_eq!(pod.tolerations, wanted.tolerations);
        assert_eq!(pod.affinity, wanted.affinity);
        assert_eq!(pod.priority_class_name.as_deref(), Some("outbox-critical"));
        assert_eq!(
            pod.image_pull_secrets
                .unwrap_or_default()
                .iter()
                .map(|s| s.name.as_str())
                .collect::<Vec<_>>(),
            ["registry-credentials"]
        );
        let spread = pod.topology_spread_constraints.unwrap_or_default();
        assert_eq!(spread.len(), 1);
        assert_eq!(spread[0].topology_key, "topology.kubernetes.io/zone");
        assert_eq!(
            spread[0]
                .label_selector
                .as_ref()
                .and_then(|s| s.match_labels.as_ref()),
            Some(own),
            "a constraint without a selector counts this workload's pods"
        );
    }

    #[test]
    fn every_pod_setting_lands_in_the_producer_pod_template() {
        let mut spec = reference_spec();
        spec.producers.pod = every_pod_setting();
        let children = build(&owner(), &spec, &WorkerImage::default(), &[]);
        let own = labels(&owner(), outbox_contract::labels::PRODUCER, None);
        assert_every_pod_setting_in(&pod_template(&children.producer), &own);
        // The config hash annotation is still there beside the user's.
        let annotations = pod_template(&children.producer)
            .metadata
            .and_then(|m| m.annotations)
            .unwrap_or_default();
        assert!(annotations.contains_key(CONFIG_HASH_ANNOTATION));
        // Consumers got none of it.
        let consumer = pod_template(&children.consumers[0])
            .spec
            .unwrap_or_default();
        assert_eq!(consumer.priority_class_name, None);
        assert_eq!(consumer.tolerations, None);
    }

    #[test]
    fn every_consumers_wide_pod_setting_lands_in_each_groups_pod_template() {
        let mut spec = reference_spec();
        spec.consumers.pod = every_pod_setting();
        let children = build(&owner(), &spec, &WorkerImage::default(), &[]);
        for (deployment, group) in children.consumers.iter().zip(&spec.consumers.groups) {
            let own = labels(
                &owner(),
                outbox_contract::labels::CONSUMER,
                Some(&group.name),
            );
            assert_every_pod_setting_in(&pod_template(deployment), &own);
        }
        let producer = pod_template(&children.producer).spec.unwrap_or_default();
        assert_eq!(producer.priority_class_name, None);
    }

    #[test]
    fn a_groups_own_pod_settings_override_the_consumers_wide_ones_only_in_its_deployment() {
        let mut spec = reference_spec();
        spec.consumers.pod = pod_settings(serde_json::json!({
            "metadata": {"labels": {"team": "payments", "tier": "consumers"}},
            "nodeSelector": {"pool": "general"},
            "tolerations": [{"key": "dedicated", "operator": "Exists"}],
            "priorityClassName": "normal"
        }));
        spec.consumers.groups[1].pod = pod_settings(serde_json::json!({
            "metadata": {"labels": {"tier": "slow-consumers"}},
            "tolerations": [],
            "priorityClassName": "low"
        }));
        let children = build(&owner(), &spec, &WorkerImage::default(), &[]);
        let pod = |i: usize| pod_template(&children.consumers[i]);
        let label = |i: usize, key: &str| {
            pod(i)
                .metadata
                .and_then(|m| m.labels)
                .and_then(|l| l.get(key).cloned())
        };
        let spec_of = |i: usize| pod(i).spec.unwrap_or_default();
        // group-a: the consumers-wide settings.
        assert_eq!(label(0, "tier").as_deref(), Some("consumers"));
        assert_eq!(spec_of(0).priority_class_name.as_deref(), Some("normal"));
        assert_eq!(spec_of(0).tolerations.map(|t| t.len()), Some(1));
        // group-b: its own label value and class, its empty tolerations, the rest merged.
        assert_eq!(label(1, "tier").as_deref(), Some("slow-consumers"));
        assert_eq!(label(1, "team").as_deref(), Some("payments"));
        assert_eq!(spec_of(1).priority_class_name.as_deref(), Some("low"));
        assert_eq!(spec_of(1).tolerations, Some(Vec::new()));
        assert_eq!(
            spec_of(1).node_selector,
            Some(BTreeMap::from([(
                "pool".to_string(),
                "general".to_string()
            )]))
        );
    }

    #[test]
    fn a_users_pod_labels_and_annotations_never_replace_the_operators_own() {
        let mut spec = reference_spec();
        let mut evil = BTreeMap::new();
        for key in outbox_contract::labels::RESERVED {
            evil.insert(key.to_string(), "someone-else".to_string());
        }
        spec.producers.pod.metadata.labels = evil.clone();
        spec.consumers.pod.metadata.labels = evil;
        spec.producers.pod.metadata.annotations =
            BTreeMap::from([(CONFIG_HASH_ANNOTATION.to_string(), "stale".to_string())]);
        let children = build(&owner(), &spec, &WorkerImage::default(), &[]);
        let clean = build(&owner(), &reference_spec(), &WorkerImage::default(), &[]);
        let deployments = std::iter::once((&children.producer, &clean.producer))
            .chain(children.consumers.iter().zip(clean.consumers.iter()));
        for (with, without) in deployments {
            let selector = with.spec.as_ref().map(|s| s.selector.clone());
            assert_eq!(selector, without.spec.as_ref().map(|s| s.selector.clone()));
            let labels = pod_template(with).metadata.and_then(|m| m.labels);
            let own = pod_template(without).metadata.and_then(|m| m.labels);
            // Reserved keys the operator does not set on this pod (outbox.dev/group on
            // a producer, outbox.dev/loadtest) may stay as given: nothing selects them.
            for (key, value) in own.iter().flatten() {
                assert_eq!(
                    labels.as_ref().and_then(|l| l.get(key)),
                    Some(value),
                    "{key}"
                );
            }
        }
        let hash = |d: &Deployment| {
            pod_template(d)
                .metadata
                .and_then(|m| m.annotations)
                .and_then(|a| a.get(CONFIG_HASH_ANNOTATION).cloned())
        };
        assert_eq!(hash(&children.producer), hash(&clean.producer));
    }

    #[test]
    fn a_topology_spread_constraint_with_its_own_selector_keeps_it() {
        let mut spec = reference_spec();
        spec.producers.pod = pod_settings(serde_json::json!({
            "topologySpreadConstraints": [{"maxSkew": 2, "topologyKey": "kubernetes.io/hostname",
                "whenUnsatisfiable": "DoNotSchedule",
                "labelSelector": {"matchLabels": {"team": "payments"}}}]
        }));
        let children = build(&owner(), &spec, &WorkerImage::default(), &[]);
        let spread = pod_template(&children.producer)
            .spec
            .and_then(|p| p.topology_spread_constraints)
            .unwrap_or_default();
        assert_eq!(
            spread[0]
                .label_selector
                .as_ref()
                .and_then(|s| s.match_labels.clone()),
            Some(BTreeMap::from([(
                "team".to_string(),
                "payments".to_string()
            )]))
        );
    }

    #[test]
    fn without_pod_settings_the_pod_template_has_no_scheduling_fields() {
        let children = build(&owner(), &reference_spec(), &WorkerImage::default(), &[]);
        let pod = pod_template(&children.producer).spec.unwrap_or_default();
        assert_eq!(pod.node_selector, None);
        assert_eq!(pod.tolerations, None);
        assert_eq!(pod.affinity, None);
        assert_eq!(pod.topology_spread_constraints, None);
        assert_eq!(pod.priority_class_name, None);
        assert_eq!(pod.image_pull_secrets, None);
    }

    fn budget_summary(b: &PodDisruptionBudget) -> (String, Option<IntOrString>) {
        (
            b.metadata.name.clone().unwrap_or_default(),
            b.spec.as_ref().and_then(|s| s.max_unavailable.clone()),
        )
    }

    #[test]
    fn by_default_the_producers_and_each_group_get_a_budget_of_one_pod_at_a_time() {
        let children = build(&owner(), &reference_spec(), &WorkerImage::default(), &[]);
        let summary: Vec<_> = children.budgets.iter().map(budget_summary).collect();
        let one = Some(IntOrString::Int(1));
        assert_eq!(
            summary,
            [
                ("demo-producer".to_string(), one.clone()),
                ("demo-consumer-group-a".to_string(), one.clone()),
                ("demo-consumer-group-b".to_string(), one.clone()),
                ("demo-consumer-group-c".to_string(), one),
            ]
        );
        let workloads = std::iter::once(&children.producer).chain(children.consumers.iter());
        for (budget, deployment) in children.budgets.iter().zip(workloads) {
            let spec = budget.spec.clone().unwrap_or_default();
            assert_eq!(
                spec.selector,
                deployment.spec.as_ref().map(|s| s.selector.clone()),
                "a budget selects exactly its workload's pods"
            );
            assert_eq!(
                spec.unhealthy_pod_eviction_policy.as_deref(),
                Some("AlwaysAllow")
            );
            assert_eq!(budget.metadata.labels, deployment.metadata.labels);
            let refs = budget.metadata.owner_references.clone().unwrap_or_default();
            assert_eq!(refs, vec![owner().owner_ref]);
        }
    }

    #[test]
    fn switched_off_budgets_are_not_built_and_a_groups_own_budget_replaces_the_consumers_wide_one()
    {
        let mut spec = reference_spec();
        spec.producers.pod_disruption_budget.enabled = false;
        spec.consumers.pod_disruption_budget.max_unavailable = 2;
        spec.consumers.groups[1].pod_disruption_budget = Some(PodDisruptionBudgetSpec {
            enabled: false,
            max_unavailable: 1,
        });
        spec.consumers.groups[2].pod_disruption_budget = Some(PodDisruptionBudgetSpec {
            enabled: true,
            max_unavailable: 1,
        });
        let children = build(&owner(), &spec, &WorkerImage::default(), &[]);
        let summary: Vec<_> = children.budgets.iter().map(budget_summary).collect();
        assert_eq!(
            summary,
            [
                (
                    "demo-consumer-group-a".to_string(),
                    Some(IntOrString::Int(2))
                ),
                (
                    "demo-consumer-group-c".to_string(),
                    Some(IntOrString::Int(1))
                ),
            ]
        );
        spec.consumers.pod_disruption_budget.enabled = false;
        spec.consumers.groups[2].pod_disruption_budget = None;
        assert!(build(&owner(), &spec, &WorkerImage::default(), &[])
            .budgets
            .is_empty());
    }
}
