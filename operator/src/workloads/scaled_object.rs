//! The KEDA `ScaledObject` (keda.sh/v1alpha1) of a consumer group with
//! `autoscaling.mode: keda`: KEDA's Kafka trigger on the group's lag, scaling the
//! group's Deployment between `minReplicas` and `maxReplicas`. Only the fields the
//! operator sets are typed here; KEDA's own are left to KEDA.

use std::collections::BTreeMap;

use kube::CustomResource;
use serde::{Deserialize, Serialize};

use super::metadata::{labels, meta};
use super::{consumer_name, Owner};
use crate::crd::{AutoscalingMode, AutoscalingSpec, ConsumerGroupSpec, OutboxSystemSpec};
use crate::host_names::qualify_bootstrap_servers;

/// What the operator sets of a KEDA ScaledObject.
#[derive(CustomResource, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[kube(
    group = "keda.sh",
    version = "v1alpha1",
    kind = "ScaledObject",
    plural = "scaledobjects",
    namespaced,
    schema = "disabled"
)]
#[serde(rename_all = "camelCase")]
pub struct ScaledObjectSpec {
    /// The Deployment KEDA scales.
    pub scale_target_ref: ScaleTargetRef,
    /// Fewest replicas.
    pub min_replica_count: i32,
    /// Most replicas.
    pub max_replica_count: i32,
    /// What KEDA scales on: here one Kafka trigger.
    pub triggers: Vec<ScaleTrigger>,
}

/// A workload in the ScaledObject's namespace (a Deployment when only `name` is given).
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq)]
pub struct ScaleTargetRef {
    /// Name of the Deployment.
    pub name: String,
}

/// One KEDA trigger.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq)]
pub struct ScaleTrigger {
    /// The scaler, here `kafka`.
    #[serde(rename = "type")]
    pub type_: String,
    /// The scaler's settings, every value a string.
    pub metadata: BTreeMap<String, String>,
}

/// The ScaledObject of `group`, named like its Deployment and labelled like it; `None`
/// unless the group is autoscaled in mode keda.
pub fn scaled_object(
    owner: &Owner,
    spec: &OutboxSystemSpec,
    group: &ConsumerGroupSpec,
) -> Option<ScaledObject> {
    let autoscaling = group
        .autoscaling
        .as_ref()
        .filter(|a| a.mode == AutoscalingMode::Keda)?;
    let name = consumer_name(&owner.name, &group.name);
    let mut object = ScaledObject::new(
        &name,
        ScaledObjectSpec {
            scale_target_ref: ScaleTargetRef { name: name.clone() },
            min_replica_count: autoscaling.min_replicas,
            max_replica_count: autoscaling.max_replicas,
            triggers: vec![kafka_trigger(owner, spec, group, autoscaling)],
        },
    );
    object.metadata = meta(
        owner,
        &name,
        labels(owner, outbox_contract::labels::CONSUMER, Some(&group.name)),
    );
    Some(object)
}

/// KEDA's Kafka trigger on the group's lag: the brokers as the system's pods reach them
/// (a bare Service name qualified with the namespace, since KEDA runs elsewhere), the
/// group's Kafka id, the topic, and where a group without offsets starts (the
/// consumers' own `auto.offset.reset`).
fn kafka_trigger(
    owner: &Owner,
    spec: &OutboxSystemSpec,
    group: &ConsumerGroupSpec,
    autoscaling: &AutoscalingSpec,
) -> ScaleTrigger {
    let metadata = [
        (
            "bootstrapServers",
            qualify_bootstrap_servers(&spec.kafka.bootstrap_servers, &owner.namespace),
        ),
        ("consumerGroup", owner.kafka_group_id(&group.name)),
        ("topic", spec.topic.name.clone()),
        ("lagThreshold", autoscaling.lag_threshold().to_string()),
        ("offsetResetPolicy", "earliest".to_string()),
    ];
    ScaleTrigger {
        type_: "kafka".to_string(),
        metadata: metadata
            .into_iter()
            .map(|(key, value)| (key.to_string(), value))
            .collect(),
    }
}
