//! Unit tests of which system holds a topic.

use crate::crd::{OutboxSystemStatus, TopicStatus};
use crate::test_fixtures::system;

use super::*;

#[test]
fn the_topic_belongs_to_the_system_created_first_on_the_same_kafka() {
    let me = system("team-a", "late", 300);
    let others = vec![
        me.clone(),
        system("team-a", "early", 200),
        system("team-a", "earliest", 100),
        system("team-a", "later", 400),
    ];
    assert_eq!(
        first_on_topic(&me, None, &others).as_deref(),
        Some("team-a/earliest")
    );
    // The first one is not refused: nobody came before it.
    assert_eq!(first_on_topic(&others[2], None, &others), None);
}

#[test]
fn other_topics_other_kafkas_and_systems_being_deleted_do_not_hold_the_topic() {
    let me = system("team-a", "me", 300);
    let mut other_topic = system("team-a", "other-topic", 100);
    other_topic.spec.topic.name = "other-events".into();
    // The same bare Service name in another namespace is another Kafka.
    let other_kafka = system("team-b", "other-kafka", 100);
    let mut leaving = system("team-a", "leaving", 100);
    leaving.metadata.deletion_timestamp = leaving.metadata.creation_timestamp.clone();
    let others = [me.clone(), other_topic, other_kafka, leaving];
    assert_eq!(first_on_topic(&me, None, &others), None);

    // One Kafka named in full from two namespaces is the same Kafka.
    let mut me = me;
    me.spec.kafka.bootstrap_servers = "kafka.shared.svc:9092".into();
    let mut elsewhere = system("team-b", "elsewhere", 100);
    elsewhere.spec.kafka.bootstrap_servers = "kafka.shared.svc:9092".into();
    assert_eq!(
        first_on_topic(&me, None, &[elsewhere]).as_deref(),
        Some("team-b/elsewhere")
    );
}

#[test]
fn systems_created_in_the_same_second_are_ordered_by_namespace_and_name() {
    let b = system("team-a", "b", 100);
    let a = system("team-a", "a", 100);
    let both = [a.clone(), b.clone()];
    assert_eq!(first_on_topic(&b, None, &both).as_deref(), Some("team-a/a"));
    assert_eq!(first_on_topic(&a, None, &both), None);
}

/// `system` as last seen by the operator on the Kafka cluster `cluster_id`.
fn seen_on(mut system: OutboxSystem, cluster_id: &str) -> OutboxSystem {
    system.status = Some(OutboxSystemStatus {
        topic: Some(TopicStatus {
            name: system.spec.topic.name.clone(),
            cluster_id: Some(cluster_id.into()),
            ..TopicStatus::default()
        }),
        ..OutboxSystemStatus::default()
    });
    system
}

#[test]
fn the_topic_in_use_check_compares_kafka_cluster_ids_not_bootstrap_strings() {
    let me = system("team-a", "me", 300);
    // One cluster written two ways: the same Kafka.
    let mut by_address = system("team-b", "by-address", 100);
    by_address.spec.kafka.bootstrap_servers = "10.0.0.7:9092".into();
    let by_address = seen_on(by_address, "cluster-a");
    assert_eq!(
        first_on_topic(&me, Some("cluster-a"), std::slice::from_ref(&by_address)).as_deref(),
        Some("team-b/by-address")
    );
    // The same string leading to two clusters (the other one last saw another):
    // not the same Kafka.
    let same_string = seen_on(system("team-a", "same-string", 100), "cluster-b");
    assert_eq!(first_on_topic(&me, Some("cluster-a"), &[same_string]), None);
    // Either id unknown: the bootstrap servers decide, as before.
    let unseen = system("team-a", "unseen", 100);
    assert_eq!(
        first_on_topic(&me, Some("cluster-a"), std::slice::from_ref(&unseen)).as_deref(),
        Some("team-a/unseen")
    );
    assert_eq!(first_on_topic(&me, None, &[by_address]), None);
}
