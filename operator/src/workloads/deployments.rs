//! The Deployments: the producers', and one per consumer group, each with its role's
//! settings in its environment.

use std::collections::BTreeMap;

use k8s_openapi::api::apps::v1::{Deployment, DeploymentSpec};
use k8s_openapi::api::core::v1::{
    Container, ContainerPort, EnvVar, PodSpec, PodTemplateSpec, ResourceRequirements,
};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{LabelSelector, ObjectMeta};
use outbox_contract::worker_env::{ConsumerSettings, ProducerSettings};

use super::env::{common_env, env_from, plain_env};
use super::metadata::{labels, meta};
use super::pod::{
    container_security_context, pod_security_context, probe, with_pod_settings, worker_volumes,
};
use super::{
    consumer_name, producer_name, Owner, WorkerImage, CONFIG_HASH_ANNOTATION, LIVENESS_PATH,
    READINESS_PATH, WORKER_BINARY,
};
use crate::crd::{ConsumerGroupSpec, OutboxSystemSpec, PodSettings};

struct PodParams<'a> {
    component: &'a str,
    group: Option<&'a str>,
    image: String,
    image_pull_policy: Option<String>,
    args: Vec<String>,
    env: Vec<EnvVar>,
    port: i32,
    resources: Option<ResourceRequirements>,
    /// None: left to an autoscaler (not sent, so server-side apply leaves it alone).
    replicas: Option<i32>,
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
            replicas: params.replicas,
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
            replicas: Some(spec.producers.replicas),
            name: producer_name(&owner.name),
            pod: spec.producers.pod.clone(),
        },
        config_hash,
    )
}

/// The Deployment of one consumer group, with `replicas` (None: without any, for the
/// group's autoscaler to set; [`super::consumer_replicas`]).
pub fn consumer_deployment(
    owner: &Owner,
    spec: &OutboxSystemSpec,
    group: &ConsumerGroupSpec,
    replicas: Option<i32>,
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
            replicas,
            name: consumer_name(&owner.name, &group.name),
            pod: spec.consumers.pod_of(group),
        },
        config_hash,
    )
}

#[cfg(test)]
#[path = "deployments_tests.rs"]
mod tests;
