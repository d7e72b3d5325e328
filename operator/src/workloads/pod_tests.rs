//! Unit tests of the worker pods: volumes, lock-down, probes, pod settings.

use super::*;
use crate::crd::SecretKeyRef;
use crate::workloads::test_fixtures::*;
use crate::workloads::*;

#[test]
fn the_postgres_ca_secret_is_mounted_read_only_into_every_worker_as_pgsslrootcert() {
    let mut spec = reference_spec();
    spec.database.ca_secret_ref = Some(SecretKeyRef {
        name: "pg-ca".into(),
        key: "root.pem".into(),
    });
    let children = build(&owner(), &spec, &WorkerImage::default(), &[], &Keda::Usable);
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
    let without = reference_children();
    assert_eq!(env_value(&without.producer, "PGSSLROOTCERT"), None);
}

#[test]
fn pods_are_locked_down_and_probed() {
    let children = reference_children();
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
fn every_pod_setting_lands_in_the_producer_pod_template() {
    let mut spec = reference_spec();
    spec.producers.pod = every_pod_setting();
    let children = build(&owner(), &spec, &WorkerImage::default(), &[], &Keda::Usable);
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
    let children = build(&owner(), &spec, &WorkerImage::default(), &[], &Keda::Usable);
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
    let children = build(&owner(), &spec, &WorkerImage::default(), &[], &Keda::Usable);
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
    let children = build(&owner(), &spec, &WorkerImage::default(), &[], &Keda::Usable);
    let clean = reference_children();
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
    let children = build(&owner(), &spec, &WorkerImage::default(), &[], &Keda::Usable);
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
    let children = reference_children();
    let pod = pod_template(&children.producer).spec.unwrap_or_default();
    assert_eq!(pod.node_selector, None);
    assert_eq!(pod.tolerations, None);
    assert_eq!(pod.affinity, None);
    assert_eq!(pod.topology_spread_constraints, None);
    assert_eq!(pod.priority_class_name, None);
    assert_eq!(pod.image_pull_secrets, None);
}
