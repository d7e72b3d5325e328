//! Fixtures of the unit tests of the children's builders (and of the runner Job's).

use std::collections::BTreeMap;

use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::PodTemplateSpec;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{ObjectMeta, OwnerReference};

use super::Owner;
use crate::crd::*;

pub(crate) fn reference_spec() -> OutboxSystemSpec {
    let group = |name: &str, replicas| ConsumerGroupSpec {
        name: name.to_string(),
        replicas,
        retry: RetrySpec::default(),
        dead_letter_topic: None,
        pod: PodSettings::default(),
        pod_disruption_budget: None,
        autoscaling: None,
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

pub(crate) fn owner() -> Owner {
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

pub(crate) fn env_value(d: &Deployment, name: &str) -> Option<String> {
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

pub(crate) fn pod_template(d: &Deployment) -> PodTemplateSpec {
    d.spec.clone().map(|s| s.template).unwrap_or_default()
}

pub(crate) fn pod_settings(json: serde_json::Value) -> PodSettings {
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

/// What [`super::build`] makes of the reference spec, with the default worker image, no
/// client settings and KEDA usable.
pub(crate) fn reference_children() -> super::Children {
    super::build(
        &owner(),
        &reference_spec(),
        &super::WorkerImage::default(),
        &[],
        &super::Keda::Usable,
    )
}
