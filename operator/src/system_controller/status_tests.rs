//! Unit tests of the status: which condition changes are news, what `status.topic` keeps.

use crate::topic_ownership::Ownership;

use super::*;

/// Conditions as merged at second 0 from `(type, status, reason)`.
fn conditions_of(desired: &[(&'static str, bool, &str)]) -> Vec<Condition> {
    let desired: Vec<conditions::Desired> = desired
        .iter()
        .map(|&(type_, status, reason)| conditions::Desired {
            type_,
            status,
            reason: reason.into(),
            message: format!("{reason} message"),
        })
        .collect();
    conditions::merge(&[], &desired, Some(1), Timestamp::UNIX_EPOCH)
}

fn announced(before: &[Condition], after: &[Condition]) -> Vec<(EventType, String)> {
    conditions_to_announce(before, after)
        .into_iter()
        .map(|(type_, c)| (type_, format!("{}={} {}", c.type_, c.status, c.reason)))
        .collect()
}

#[test]
fn a_first_good_state_is_not_news_a_first_bad_one_is() {
    let after = conditions_of(&[
        (types::READY, true, "AllReady"),
        (types::PAUSED, false, "NotPaused"),
        (types::DEGRADED, true, "TopicConflict"),
        (types::TOPIC_READY, false, "TopicConflict"),
    ]);
    assert_eq!(
        announced(&[], &after),
        [
            (
                EventType::Warning,
                "Degraded=True TopicConflict".to_string()
            ),
            (
                EventType::Warning,
                "TopicReady=False TopicConflict".to_string()
            ),
        ]
    );
}

#[test]
fn changes_are_announced_as_warnings_when_bad_and_normal_when_good_and_sameness_not_at_all() {
    let before = conditions_of(&[
        (types::READY, true, "AllReady"),
        (types::DEGRADED, true, "TopicConflict"),
        (types::PRODUCERS_READY, true, "ReplicasReady"),
    ]);
    let after = conditions_of(&[
        (types::READY, false, "ProducersNotReady"),
        (types::DEGRADED, false, "Healthy"),
        (types::PRODUCERS_READY, true, "ReplicasReady"),
    ]);
    assert_eq!(
        announced(&before, &after),
        [
            (
                EventType::Warning,
                "Ready=False ProducersNotReady".to_string()
            ),
            (EventType::Normal, "Degraded=False Healthy".to_string()),
        ]
    );
}

#[test]
fn keda_missing_is_a_warning_when_it_starts_and_normal_news_when_keda_arrives() {
    let none = conditions_of(&[(types::AUTOSCALING_UNAVAILABLE, false, "NoKedaGroups")]);
    let missing = conditions_of(&[(types::AUTOSCALING_UNAVAILABLE, true, "KedaNotInstalled")]);
    let scaling = conditions_of(&[(types::AUTOSCALING_UNAVAILABLE, false, "KedaScaling")]);
    assert!(announced(&[], &none).is_empty());
    assert_eq!(
        announced(&none, &missing),
        [(
            EventType::Warning,
            "AutoscalingUnavailable=True KedaNotInstalled".to_string()
        )]
    );
    assert_eq!(
        announced(&[], &missing),
        [(
            EventType::Warning,
            "AutoscalingUnavailable=True KedaNotInstalled".to_string()
        )]
    );
    assert_eq!(
        announced(&missing, &scaling),
        [(
            EventType::Normal,
            "AutoscalingUnavailable=False KedaScaling".to_string()
        )]
    );
}

#[test]
fn the_topic_record_keeps_who_created_it_on_which_cluster_and_the_last_raise() {
    let at = |s| Timestamp::from_second(s).unwrap_or(Timestamp::UNIX_EPOCH);
    let computed = TopicStatus {
        name: "shared-events".into(),
        partitions: Some(6),
        ..TopicStatus::default()
    };
    let created = TopicOutcome {
        ownership: Some(Ownership {
            created_by_operator: Some(true),
            cluster_id: "cluster-a".into(),
        }),
        cluster_id: Some("cluster-a".into()),
        ..TopicOutcome::default()
    };
    // First look: the outcome says who made the topic, on which cluster.
    let first = topic_record(None, &created, computed.clone(), at(10));
    assert_eq!(first.created_by_operator, Some(true));
    assert_eq!(first.ownership_cluster_id.as_deref(), Some("cluster-a"));
    assert_eq!(first.cluster_id.as_deref(), Some("cluster-a"));
    assert_eq!(first.partitions, Some(6));
    assert_eq!(first.last_partition_raise, None);
    // Later looks without a record of their own keep the first, whatever they
    // see; the cluster of the last look is kept when a look reached none.
    let found = TopicOutcome {
        raised: Some((6, 8)),
        cluster_id: Some("cluster-b".into()),
        ..TopicOutcome::default()
    };
    let raised = topic_record(Some(&first), &found, computed.clone(), at(20));
    assert_eq!(raised.created_by_operator, Some(true));
    assert_eq!(raised.ownership_cluster_id.as_deref(), Some("cluster-a"));
    assert_eq!(raised.cluster_id.as_deref(), Some("cluster-b"));
    assert_eq!(
        raised.last_partition_raise,
        Some(PartitionRaise {
            from: 6,
            to: 8,
            time: Time(at(20)),
        })
    );
    let later = topic_record(
        Some(&raised),
        &TopicOutcome::default(),
        computed.clone(),
        at(30),
    );
    assert_eq!(later.last_partition_raise, raised.last_partition_raise);
    assert_eq!(later.cluster_id.as_deref(), Some("cluster-b"));
    // A record from before createdByOperator, adopted: still None, now of a cluster.
    let legacy = TopicStatus {
        created_by_operator: None,
        ..computed.clone()
    };
    let adopted = TopicOutcome {
        ownership: Some(Ownership {
            created_by_operator: None,
            cluster_id: "cluster-a".into(),
        }),
        ..TopicOutcome::default()
    };
    let record = topic_record(Some(&legacy), &adopted, computed, at(40));
    assert_eq!(record.created_by_operator, None);
    assert_eq!(record.ownership_cluster_id.as_deref(), Some("cluster-a"));
}
