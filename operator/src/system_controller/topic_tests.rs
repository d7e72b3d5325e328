//! Unit tests of how a change of the topic is announced.

use std::collections::BTreeMap;

use super::*;
use crate::test_fixtures::system;

fn observed(partitions: i32, config: &[(&str, &str)]) -> ObservedTopic {
    let config: BTreeMap<String, String> = config
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
    ObservedTopic {
        partitions,
        replication_factor: 1,
        dynamic_config: config.clone(),
        effective_config: config,
    }
}

#[test]
fn a_missing_topic_is_created_and_announced_with_its_partitions() {
    let spec = system("team-a", "outbox", 100).spec;
    let plan = plan_topic(&spec.topic, None);
    let change = topic_change(&spec, None, &plan).expect("a change");
    assert_eq!(change.type_, EventType::Normal);
    assert_eq!(change.reason, "TopicCreated");
    assert_eq!(change.note, "created topic shared-events with 6 partitions");
    assert_eq!(change.raised, None);
}

#[test]
fn raised_partitions_are_a_warning_about_key_order_naming_from_and_to() {
    let spec = system("team-a", "outbox", 100).spec;
    let found = observed(4, &[]);
    let plan = plan_topic(&spec.topic, Some(&found));
    let change = topic_change(&spec, Some(&found), &plan).expect("a change");
    assert_eq!(change.type_, EventType::Warning);
    assert_eq!(change.reason, "PartitionsRaised");
    assert_eq!(change.raised, Some((4, 6)));
    assert!(
        change
            .note
            .starts_with("raised topic shared-events from 4 to 6 partitions")
            && change.note.contains("per-key order"),
        "{}",
        change.note
    );
}

#[test]
fn changed_config_is_announced_naming_the_keys_and_a_matching_topic_not_at_all() {
    let mut spec = system("team-a", "outbox", 100).spec;
    spec.topic.config = [
        ("retention.ms".to_string(), "60000".to_string()),
        ("cleanup.policy".to_string(), "delete".to_string()),
    ]
    .into();
    let found = observed(6, &[("cleanup.policy", "compact")]);
    let plan = plan_topic(&spec.topic, Some(&found));
    let change = topic_change(&spec, Some(&found), &plan).expect("a change");
    assert_eq!(change.type_, EventType::Normal);
    assert_eq!(change.reason, "TopicConfigUpdated");
    assert_eq!(
        change.note,
        "set cleanup.policy, retention.ms on topic shared-events"
    );

    let matching = observed(
        6,
        &[("cleanup.policy", "delete"), ("retention.ms", "60000")],
    );
    let plan = plan_topic(&spec.topic, Some(&matching));
    assert_eq!(topic_change(&spec, Some(&matching), &plan), None);
}
