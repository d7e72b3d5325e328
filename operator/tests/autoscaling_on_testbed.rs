//! Consumer groups that follow their lag through KEDA, against the testbed's real API
//! server: the CRD's rules refuse impossible bounds, a group runs its minimum and says
//! why where KEDA is not installed, and where the ScaledObject kind is served the
//! operator owns a ScaledObject per group, hands the replicas over at their current
//! count and never sets them back.
//!
//! KEDA itself (its operator and metrics server) does not run here: its CRD is applied
//! from its Go module, and the test scales the Deployment as KEDA's HPA would (through
//! the scale subresource). Needs the testbed (`make test`).

mod support;

use std::process::Command;
use std::time::Duration;

use k8s_openapi::api::apps::v1::Deployment;
use kube::api::{DynamicObject, Patch, PatchParams, PostParams};
use kube::core::{ApiResource, GroupVersionKind};
use kube::{Api, ResourceExt};
use outbox_operator::crd::OutboxSystem;
use support::*;
use testbed_support::{delete_namespace, eventually, run, testbed, unique_name};

/// KEDA's ScaledObject CRD applied to the testbed (from its Go module, cached by
/// `testbed/build.sh keda_crds`); deleted on drop, so that no other test meets it.
struct KedaCrd;

impl KedaCrd {
    fn apply() -> KedaCrd {
        let lib = testbed_support::repo_root().join("testbed/lib.sh");
        let script = format!(
            r#". "{}" && "$TESTBED_DIR/build.sh" keda_crds >&2 && echo "$KEDA_CRDS""#,
            lib.display()
        );
        let dir = run("bash", &["-c", &script]).trim().to_string();
        run("kubectl", &["apply", "--server-side", "-f", &dir]);
        run(
            "kubectl",
            &[
                "wait",
                "--for",
                "condition=Established",
                "--timeout",
                "60s",
                "crd/scaledobjects.keda.sh",
            ],
        );
        KedaCrd
    }
}

impl Drop for KedaCrd {
    fn drop(&mut self) {
        let _ = Command::new("kubectl")
            .args(["delete", "crd", "scaledobjects.keda.sh", "--wait=true"])
            .env("KUBECONFIG", &testbed().kubeconfig)
            .output();
    }
}

fn scaled_objects(client: &kube::Client, ns: &str) -> Api<DynamicObject> {
    let gvk = GroupVersionKind::gvk("keda.sh", "v1alpha1", "ScaledObject");
    Api::namespaced_with(client.clone(), ns, &ApiResource::from_gvk(&gvk))
}

async fn replicas(deployments: &Api<Deployment>, name: &str) -> Option<i32> {
    deployments.get(name).await.ok()?.spec?.replicas
}

/// Waits until Deployment `name` has `want` replicas.
async fn wait_replicas(deployments: &Api<Deployment>, name: &str, want: i32) {
    eventually(&format!("{name} at {want} replicas"), WAIT, || async move {
        (replicas(deployments, name).await == Some(want)).then_some(())
    })
    .await
}

/// The reference system with group-a autoscaled by `autoscaling` (JSON).
fn autoscaled(topic: &str, autoscaling: serde_json::Value) -> OutboxSystem {
    let mut v = serde_json::to_value(reference_system(topic)).unwrap_or_default();
    v["spec"]["consumers"]["groups"][0]["autoscaling"] = autoscaling;
    serde_json::from_value(v).unwrap_or_else(|e| panic!("{e}"))
}

#[tokio::test]
async fn autoscaling_bounds_are_refused_by_the_api_server_naming_the_rule() {
    let (client, ns) = setup("auto-invalid").await;
    let api: Api<OutboxSystem> = Api::namespaced(client.clone(), &ns);
    let dry = PostParams {
        dry_run: true,
        ..PostParams::default()
    };
    let refused = [
        (
            serde_json::json!({"minReplicas": 3, "maxReplicas": 2}),
            "maxReplicas must be at least minReplicas",
        ),
        (
            serde_json::json!({"maxReplicas": 7}),
            "may not exceed spec.topic.partitions",
        ),
        (
            serde_json::json!({"mode": "external", "maxReplicas": 4, "lagThreshold": 10}),
            "lagThreshold applies to mode keda only",
        ),
        (
            serde_json::json!({"minReplicas": 0, "maxReplicas": 2}),
            "minReplicas",
        ),
    ];
    for (autoscaling, message) in refused {
        let system = autoscaled("auto-invalid", autoscaling.clone());
        match api.create(&dry, &system).await {
            Err(kube::Error::Api(status)) => {
                assert_eq!(status.code, 422, "{autoscaling}: {status:?}");
                assert!(
                    status.message.contains(message),
                    "{autoscaling}: {:?} does not say {message:?}",
                    status.message
                );
            }
            other => panic!("{autoscaling} was not refused: {other:?}"),
        }
    }
    for accepted in [
        serde_json::json!({"mode": "external", "maxReplicas": 6}),
        serde_json::json!({"maxReplicas": 6, "lagThreshold": 50}),
        serde_json::Value::Null,
    ] {
        let system = autoscaled("auto-invalid", accepted.clone());
        api.create(&dry, &system)
            .await
            .unwrap_or_else(|e| panic!("{accepted} was refused: {e}"));
    }
    delete_namespace(&client, &ns).await;
}

#[tokio::test]
async fn groups_follow_their_autoscaler_keda_or_not_and_their_replicas_are_never_set_back() {
    let (client, ns) = setup("auto").await;
    let _operator = start_operator(&client, &ns);
    let deployments: Api<Deployment> = Api::namespaced(client.clone(), &ns);
    let group_a = "outbox-consumer-group-a";

    // Without KEDA: group-a runs its minimum, and the system says why.
    let system = autoscaled(
        &unique_name("auto-events"),
        serde_json::json!({"minReplicas": 2, "maxReplicas": 6, "lagThreshold": 500}),
    );
    let systems = create_system(&client, &ns, &system).await;
    let s = wait_for_reason(
        &systems,
        "outbox",
        "AutoscalingUnavailable",
        "KedaNotInstalled",
    )
    .await;
    let (status, _, message) = condition(&s, "AutoscalingUnavailable").unwrap_or_default();
    assert_eq!(status, "True");
    assert!(message.contains("group-a"), "{message}");
    wait_replicas(&deployments, group_a, 2).await;

    // KEDA's kind served: a ScaledObject for group-a, the replicas handed over at 2.
    let _keda = KedaCrd::apply();
    let objects = scaled_objects(&client, &ns);
    let touch = serde_json::json!({"metadata": {"annotations": {"test/touch": "1"}}});
    systems
        .patch("outbox", &PatchParams::default(), &Patch::Merge(&touch))
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    let scaled = wait_present(&objects, group_a).await;
    let spec = &scaled.data["spec"];
    assert_eq!(spec["scaleTargetRef"]["name"], group_a, "{spec:#}");
    assert_eq!(
        (
            spec["minReplicaCount"].as_i64(),
            spec["maxReplicaCount"].as_i64()
        ),
        (Some(2), Some(6))
    );
    let trigger = &spec["triggers"][0];
    assert_eq!(trigger["type"], "kafka", "{trigger:#}");
    assert_eq!(
        trigger["metadata"]["topic"],
        system.spec.topic.name.as_str()
    );
    assert_eq!(trigger["metadata"]["lagThreshold"], "500", "{trigger:#}");
    assert_eq!(
        trigger["metadata"]["bootstrapServers"],
        testbed().kafka_bootstrap_servers.as_str()
    );
    assert!(
        scaled
            .owner_references()
            .iter()
            .any(|o| o.kind == "OutboxSystem"),
        "{:?}",
        scaled.owner_references()
    );
    let s = wait_for_reason(&systems, "outbox", "AutoscalingUnavailable", "KedaScaling").await;
    assert_eq!(
        condition(&s, "AutoscalingUnavailable").map(|c| c.0),
        Some("False".into())
    );
    // Handed over: still 2, not Kubernetes' default of 1.
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert_eq!(replicas(&deployments, group_a).await, Some(2));

    // The autoscaler scales (as KEDA's HPA does, through the scale subresource) and the
    // operator does not set it back, through reconciles.
    let scale = serde_json::json!({"spec": {"replicas": 5}});
    deployments
        .patch_scale(group_a, &PatchParams::default(), &Patch::Merge(&scale))
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    for round in 2..4 {
        let touch =
            serde_json::json!({"metadata": {"annotations": {"test/touch": round.to_string()}}});
        systems
            .patch("outbox", &PatchParams::default(), &Patch::Merge(&touch))
            .await
            .unwrap_or_else(|e| panic!("{e}"));
        tokio::time::sleep(Duration::from_secs(6)).await;
        assert_eq!(
            replicas(&deployments, group_a).await,
            Some(5),
            "set back after round {round}"
        );
    }
    // A fixed group beside it keeps its own count.
    assert_eq!(
        replicas(&deployments, "outbox-consumer-group-b").await,
        Some(2)
    );

    // Autoscaling removed: the ScaledObject goes, the spec's replicas come back.
    let fixed = serde_json::json!({"spec": {"consumers": {"groups": [
        {"name": "group-a", "replicas": 3, "autoscaling": null},
        {"name": "group-b", "replicas": 2},
        {"name": "group-c", "replicas": 1}]}}});
    systems
        .patch("outbox", &PatchParams::default(), &Patch::Merge(&fixed))
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    wait_gone(&objects, group_a).await;
    wait_replicas(&deployments, group_a, 3).await;
    delete_and_wait(&systems, "outbox").await;
    delete_namespace(&client, &ns).await;
}
