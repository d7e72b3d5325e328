//! Desired child objects of an OutboxSystem (pure functions, no client): `build` makes
//! them all from the spec, each kind in a module of this folder: the ConfigMap with the
//! non-secret settings (`config_map`), the producer Deployment and one Deployment per
//! consumer group (`deployments`, their pods from `pod` and `env`, the image from
//! `worker_image`), their Services (`services`) and PodDisruptionBudgets (`budgets`);
//! every child carries the metadata of `metadata`. The names of the children and the
//! `Owner` they are built for are here. A group with `autoscaling` gets its replicas
//! from `autoscaling` and, in mode keda, a KEDA ScaledObject (`scaled_object`).

mod autoscaling;
mod budgets;
mod config_map;
mod deployments;
mod env;
mod metadata;
mod pod;
mod scaled_object;
mod services;
mod worker_image;

#[cfg(test)]
pub(crate) mod test_fixtures;
#[cfg(test)]
mod tests;

use std::collections::BTreeMap;

use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::{ConfigMap, Service};
use k8s_openapi::api::policy::v1::PodDisruptionBudget;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::OwnerReference;

use crate::crd::{OutboxSystem, OutboxSystemSpec};

pub use autoscaling::{
    consumer_replicas, keda, keda_groups, Keda, KAFKA_SECURITY_NOT_SUPPORTED, KEDA_NOT_INSTALLED,
};
pub use budgets::{budgets, pod_disruption_budget};
pub use config_map::config_map;
use config_map::hash_config;
pub use deployments::{consumer_deployment, producer_deployment};
pub use env::{client_settings_env, common_env, env_from, pod_name_env};
pub use metadata::{labels, worker_labels};
pub use outbox_contract::probes::{LIVENESS_PATH, READINESS_PATH};
pub use pod::{
    container_security_context, pod_security_context, with_pod_settings, worker_volumes,
    POSTGRES_CA_DIR,
};
pub use scaled_object::{scaled_object, ScaleTargetRef, ScaleTrigger, ScaledObject};
use services::service;
pub use worker_image::{default_image, WorkerImage};

/// Name of the worker binary in the image.
pub const WORKER_BINARY: &str = "outbox-worker";

/// Default worker image repository; the tag is the operator's version.
pub const DEFAULT_IMAGE_REPOSITORY: &str = "ghcr.io/outbox-dev/outbox-worker";

/// Pod-template annotation carrying a hash of the ConfigMap's data, so that a config
/// change rolls the pods.
pub const CONFIG_HASH_ANNOTATION: &str = "outbox.dev/config-hash";

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
    /// The KEDA ScaledObjects wanted: one per group with `autoscaling.mode: keda`, in
    /// spec order, while KEDA is usable. Any other ScaledObject of the system is to be
    /// deleted.
    pub scaled_objects: Vec<ScaledObject>,
}

/// Builds every child of `system`; workers whose spec names no image get `worker_image`;
/// `client_setting_keys` are the keys of the Kafka client-settings Secret; `keda`
/// whether KEDA can scale the groups that ask for it.
pub fn build(
    owner: &Owner,
    spec: &OutboxSystemSpec,
    worker_image: &WorkerImage,
    client_setting_keys: &[String],
    keda: &Keda,
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
            .map(|g| {
                let replicas = consumer_replicas(g, keda);
                consumer_deployment(
                    owner,
                    spec,
                    g,
                    replicas,
                    worker_image,
                    &config_hash,
                    &kafka_env,
                )
            })
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
        scaled_objects: match keda {
            Keda::Usable => spec
                .consumers
                .groups
                .iter()
                .filter_map(|g| scaled_object(owner, spec, g))
                .collect(),
            Keda::Unusable { .. } => Vec::new(),
        },
        config_map,
    }
}
