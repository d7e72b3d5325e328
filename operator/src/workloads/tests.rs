//! Unit tests of `build`: every child, named, labelled and owned as it should be.

use super::*;
use crate::workloads::test_fixtures::*;

#[test]
fn every_child_carries_the_label_the_operators_watches_select_by() {
    let children = reference_children();
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
    let children = reference_children();
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
    let children = build(
        &owner,
        &system.spec,
        &WorkerImage::default(),
        &[],
        &Keda::Usable,
    );
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
fn every_child_is_controlled_by_the_system() {
    let children = reference_children();
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
    let before = build(&owner(), &spec, &WorkerImage::default(), &[], &Keda::Usable);
    spec.kafka.bootstrap_servers = "other:9092".into();
    let after = build(&owner(), &spec, &WorkerImage::default(), &[], &Keda::Usable);
    let hash = |d: &Deployment| {
        d.spec
            .as_ref()
            .and_then(|s| s.template.metadata.as_ref())
            .and_then(|m| m.annotations.clone())
    };
    assert_ne!(hash(&before.producer), hash(&after.producer));
}
