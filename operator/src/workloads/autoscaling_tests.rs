//! Unit tests of autoscaled groups: their Deployments' replicas and KEDA ScaledObjects.

use k8s_openapi::api::apps::v1::Deployment;

use crate::crd::{AutoscalingMode, AutoscalingSpec, OutboxSystemSpec};
use crate::workloads::test_fixtures::*;
use crate::workloads::*;

/// The reference spec with group-a autoscaled 1..6 in `mode`.
fn autoscaled(mode: AutoscalingMode, lag_threshold: Option<i64>) -> OutboxSystemSpec {
    let mut spec = reference_spec();
    spec.consumers.groups[0].autoscaling = Some(AutoscalingSpec {
        mode,
        min_replicas: 2,
        max_replicas: 6,
        lag_threshold,
    });
    spec
}

fn replicas(d: &Deployment) -> Option<i32> {
    d.spec.as_ref().and_then(|s| s.replicas)
}

fn not_installed() -> Keda {
    keda(false, None)
}

#[test]
fn an_autoscaled_groups_deployment_has_no_replicas_and_a_fixed_group_keeps_them() {
    let spec = autoscaled(AutoscalingMode::Keda, None);
    let children = build(&owner(), &spec, &WorkerImage::default(), &[], &Keda::Usable);
    assert_eq!(replicas(&children.consumers[0]), None);
    assert_eq!(replicas(&children.consumers[1]), Some(2));
    assert_eq!(replicas(&children.consumers[2]), Some(1));
    assert_eq!(replicas(&children.producer), Some(3));
    // Not even `null`: server-side apply must not see the field at all.
    let json = serde_json::to_value(&children.consumers[0]).unwrap_or_default();
    assert!(json["spec"].get("replicas").is_none(), "{}", json["spec"]);
}

#[test]
fn the_scaled_object_targets_the_groups_deployment_between_min_and_max_on_its_lag() {
    let spec = autoscaled(AutoscalingMode::Keda, None);
    let children = build(&owner(), &spec, &WorkerImage::default(), &[], &Keda::Usable);
    assert_eq!(children.scaled_objects.len(), 1);
    let object = &children.scaled_objects[0];
    assert_eq!(
        object.metadata.name.as_deref(),
        Some("demo-consumer-group-a")
    );
    assert_eq!(object.metadata.namespace.as_deref(), Some("ns"));
    assert_eq!(
        object.metadata.owner_references,
        Some(vec![owner().owner_ref])
    );
    assert_eq!(
        object.metadata.labels.as_ref(),
        children.consumers[0].metadata.labels.as_ref()
    );
    assert_eq!(object.spec.scale_target_ref.name, "demo-consumer-group-a");
    assert_eq!(
        (object.spec.min_replica_count, object.spec.max_replica_count),
        (2, 6)
    );
    let [trigger] = &object.spec.triggers[..] else {
        panic!("one trigger wanted: {:?}", object.spec.triggers)
    };
    assert_eq!(trigger.type_, "kafka");
    let meta = |key: &str| trigger.metadata.get(key).map(String::as_str);
    // KEDA runs in its own namespace: a bare Service name is qualified.
    assert_eq!(meta("bootstrapServers"), Some("kafka.ns.svc:9092"));
    assert_eq!(meta("consumerGroup"), Some("ns.demo.group-a"));
    assert_eq!(meta("topic"), Some("shared-events"));
    assert_eq!(meta("lagThreshold"), Some("1000"));
    assert_eq!(meta("offsetResetPolicy"), Some("earliest"));
    let json = serde_json::to_value(object).unwrap_or_default();
    assert_eq!(json["apiVersion"], "keda.sh/v1alpha1");
    assert_eq!(json["kind"], "ScaledObject");
    assert_eq!(
        json["spec"]["scaleTargetRef"]["name"],
        "demo-consumer-group-a"
    );
    assert_eq!(json["spec"]["minReplicaCount"], 2);
}

#[test]
fn the_scaled_object_scales_on_the_groups_own_lag_threshold_and_recorded_group_id() {
    let spec = autoscaled(AutoscalingMode::Keda, Some(250));
    let mut owner = owner();
    owner
        .kafka_group_ids
        .insert("group-a".into(), "group-a".into());
    let children = build(&owner, &spec, &WorkerImage::default(), &[], &Keda::Usable);
    let metadata = &children.scaled_objects[0].spec.triggers[0].metadata;
    assert_eq!(metadata["lagThreshold"], "250");
    // The id the consumers use (here a group from before prefixed ids).
    assert_eq!(metadata["consumerGroup"], "group-a");
    let consumers_id = env_value(
        &children.consumers[0],
        outbox_contract::worker_env::names::KAFKA_CONSUMER_GROUP_ID,
    );
    assert_eq!(consumers_id.as_deref(), Some("group-a"));
}

#[test]
fn mode_external_makes_no_scaled_object_and_leaves_replicas_to_its_autoscaler() {
    let spec = autoscaled(AutoscalingMode::External, None);
    for keda in [Keda::Usable, not_installed()] {
        let children = build(&owner(), &spec, &WorkerImage::default(), &[], &keda);
        assert!(children.scaled_objects.is_empty(), "{keda:?}");
        assert_eq!(replicas(&children.consumers[0]), None, "{keda:?}");
    }
}

#[test]
fn without_keda_a_keda_group_runs_its_min_replicas_and_gets_no_scaled_object() {
    let spec = autoscaled(AutoscalingMode::Keda, None);
    let children = build(
        &owner(),
        &spec,
        &WorkerImage::default(),
        &[],
        &not_installed(),
    );
    assert!(children.scaled_objects.is_empty());
    assert_eq!(replicas(&children.consumers[0]), Some(2));
    assert_eq!(replicas(&children.consumers[1]), Some(2));
}

#[test]
fn keda_is_unusable_where_the_cluster_lacks_it_or_kafka_needs_tls_or_sasl() {
    assert_eq!(keda(true, None), Keda::Usable);
    assert_eq!(keda(true, Some("PLAINTEXT")), Keda::Usable);
    let Keda::Unusable { reason, problem } = not_installed() else {
        panic!("usable without the API")
    };
    assert_eq!(reason, KEDA_NOT_INSTALLED);
    assert!(problem.contains("keda.sh/v1alpha1"), "{problem}");
    assert!(!not_installed().served());
    let Keda::Unusable { reason, problem } = keda(true, Some("SASL_SSL")) else {
        panic!("usable with SASL_SSL")
    };
    assert_eq!(reason, KAFKA_SECURITY_NOT_SUPPORTED);
    // Served all the same: its ScaledObjects are still listed and pruned.
    assert!(keda(true, Some("SASL_SSL")).served());
    assert!(
        problem.contains("KAFKA_CLIENT_SECURITY_PROTOCOL=SASL_SSL"),
        "{problem}"
    );
}

#[test]
fn only_groups_in_mode_keda_are_keda_groups() {
    let mut spec = autoscaled(AutoscalingMode::Keda, None);
    spec.consumers.groups[1].autoscaling = Some(AutoscalingSpec {
        mode: AutoscalingMode::External,
        min_replicas: 1,
        max_replicas: 2,
        lag_threshold: None,
    });
    assert_eq!(keda_groups(&spec), [("group-a".to_string(), 2)]);
}
