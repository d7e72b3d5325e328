//! Whose topic it is, on which Kafka cluster (pure): what the operator may do to a
//! system's topic on the cluster it reaches now, and whether it may delete it.
//!
//! `status.topic.createdByOperator` is recorded together with the Kafka cluster it
//! speaks of (`ownershipClusterId`, Kafka's `cluster.id`), not with the bootstrap
//! string: a system pointed at another cluster owns nothing there that it did not
//! create there. A record from before cluster ids were recorded is adopted for the
//! cluster reached now only while the spec is the one under which the operator last
//! found the topic ([`spec_unchanged_since_topic_found`]); otherwise it counts as a
//! record of an unknown cluster.

use crate::conditions;
use crate::crd::{OutboxSystem, TopicStatus};
use crate::system_status::types;

/// An ownership record to write into `status.topic`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Ownership {
    /// `createdByOperator` (None: a record from before it, left as it is).
    pub created_by_operator: Option<bool>,
    /// `ownershipClusterId`.
    pub cluster_id: String,
}

/// What the topic step may do on the cluster it reaches now.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TopicAuthority {
    /// Create or adjust the topic as the spec says; write `record` when Some (before
    /// a creation).
    Reconcile {
        /// The ownership record this look establishes, if any.
        record: Option<Ownership>,
    },
    /// Leave the topic as it is, neither changed nor (later) deleted: it was not made
    /// for this system on this cluster. `message` says why, for `TopicReady`.
    LeaveAlone {
        /// Why, and how to adopt the topic.
        message: String,
    },
}

/// Reason of `TopicReady` False for [`TopicAuthority::LeaveAlone`].
pub const TOPIC_ON_OTHER_CLUSTER: &str = "TopicOnOtherCluster";

/// What the operator may do to `system`'s topic on the Kafka cluster `cluster`, where
/// the topic exists or not (`exists`).
pub fn authority(system: &OutboxSystem, cluster: &str, exists: bool) -> TopicAuthority {
    let record = topic_record(system);
    let creating = || TopicAuthority::Reconcile {
        record: Some(Ownership {
            created_by_operator: Some(true),
            cluster_id: cluster.to_string(),
        }),
    };
    let Some(record) = record.filter(|t| has_record(t)) else {
        // First look: what is found now is recorded, on this cluster.
        return TopicAuthority::Reconcile {
            record: Some(Ownership {
                created_by_operator: Some(!exists),
                cluster_id: cluster.to_string(),
            }),
        };
    };
    match record.ownership_cluster_id.as_deref() {
        Some(recorded) if recorded == cluster => TopicAuthority::Reconcile { record: None },
        None if spec_unchanged_since_topic_found(system) => TopicAuthority::Reconcile {
            record: Some(Ownership {
                created_by_operator: record.created_by_operator,
                cluster_id: cluster.to_string(),
            }),
        },
        _ if !exists => creating(),
        recorded => TopicAuthority::LeaveAlone {
            message: left_alone(&system.spec.topic.name, cluster, recorded),
        },
    }
}

/// Whether the operator may delete `system`'s topic on the cluster `cluster` (the
/// deletion policy aside): Err with why it is kept.
pub fn may_delete(system: &OutboxSystem, cluster: &str) -> Result<(), String> {
    if let Some(kept) = kept_on_any_cluster(system) {
        return Err(kept);
    }
    let topic = &system.spec.topic.name;
    match topic_record(system).and_then(|t| t.ownership_cluster_id.as_deref()) {
        Some(recorded) if recorded == cluster => Ok(()),
        recorded => Err(format!(
            "kept topic {topic}: the Kafka reached now is cluster {cluster}, not cluster {} on which the operator created it (deletionPolicy Delete deletes only a topic the operator created on the cluster it reaches)",
            recorded.unwrap_or("(unknown)")
        )),
    }
}

/// Why `system`'s topic is kept whichever cluster the operator reaches (pure), if
/// its record alone decides: the operator never looked, found the topic there
/// before, or holds a record from before cluster ids that it could not tie to a
/// cluster. None: the record claims the topic, on `ownershipClusterId`.
pub fn kept_on_any_cluster(system: &OutboxSystem) -> Option<String> {
    let topic = &system.spec.topic.name;
    let Some(record) = topic_record(system).filter(|t| has_record(t)) else {
        return Some(format!(
            "kept topic {topic}: the operator never looked at it for this OutboxSystem"
        ));
    };
    if !record
        .created_by_operator
        .unwrap_or(record.partitions.is_some())
    {
        return Some(format!(
            "kept topic {topic}: it existed before this OutboxSystem (deletionPolicy Delete deletes only a topic the operator created for it)"
        ));
    }
    if record.ownership_cluster_id.is_none() {
        return Some(format!(
            "kept topic {topic}: its record is from before the operator recorded Kafka cluster ids and was never tied to a cluster"
        ));
    }
    None
}

/// Whether a record from before cluster ids may be taken for the cluster reached now:
/// the last look that found the topic (`TopicReady` True, or False with a conflict)
/// was made at the current generation, so `spec.kafka` is the one it was made with.
pub fn spec_unchanged_since_topic_found(system: &OutboxSystem) -> bool {
    let Some(generation) = system.metadata.generation else {
        return false;
    };
    let conditions = system
        .status
        .as_ref()
        .map(|s| s.conditions.as_slice())
        .unwrap_or_default();
    conditions::find(conditions, types::TOPIC_READY).is_some_and(|c| {
        c.observed_generation == Some(generation)
            && matches!(c.reason.as_str(), "TopicReady" | "TopicConflict")
    })
}

fn topic_record(system: &OutboxSystem) -> Option<&TopicStatus> {
    system.status.as_ref().and_then(|s| s.topic.as_ref())
}

/// Whether `topic` records anything about ownership: a first look that saw the topic
/// or recorded who made it.
fn has_record(topic: &TopicStatus) -> bool {
    topic.created_by_operator.is_some()
        || topic.partitions.is_some()
        || topic.ownership_cluster_id.is_some()
}

fn left_alone(topic: &str, cluster: &str, recorded: Option<&str>) -> String {
    let recorded = match recorded {
        Some(id) => format!("cluster {id}"),
        None => "a Kafka cluster from before the operator recorded cluster ids (spec.kafka may have changed since)".to_string(),
    };
    format!(
        "topic {topic} on Kafka cluster {cluster} was not created for this OutboxSystem, whose topic record is of {recorded}: the operator neither changes nor deletes it; to adopt it, clear the record (kubectl patch outboxsystem <name> --subresource=status --type=merge -p '{{\"status\":{{\"topic\":null}}}}')"
    )
}

#[cfg(test)]
mod tests {
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, Time};
    use k8s_openapi::jiff::Timestamp;

    use super::*;
    use crate::crd::OutboxSystemStatus;

    const A: &str = "cluster-a";
    const B: &str = "cluster-b";

    /// The reference system at generation 3 with `topic` recorded and, when `found_at`
    /// is Some, a `TopicReady` condition with that reason and generation.
    fn system(topic: Option<TopicStatus>, found_at: Option<(&str, i64)>) -> OutboxSystem {
        let mut system = crate::test_fixtures::reference_system();
        system.metadata.generation = Some(3);
        let conditions = found_at
            .map(|(reason, generation)| {
                vec![Condition {
                    type_: types::TOPIC_READY.into(),
                    status: (reason == "TopicReady").to_string(),
                    reason: reason.into(),
                    message: String::new(),
                    observed_generation: Some(generation),
                    last_transition_time: Time(Timestamp::UNIX_EPOCH),
                }]
            })
            .unwrap_or_default();
        system.status = Some(OutboxSystemStatus {
            topic,
            conditions,
            ..OutboxSystemStatus::default()
        });
        system
    }

    fn record(created: Option<bool>, cluster: Option<&str>) -> Option<TopicStatus> {
        Some(TopicStatus {
            name: "shared-events".into(),
            partitions: Some(6),
            created_by_operator: created,
            ownership_cluster_id: cluster.map(String::from),
            ..TopicStatus::default()
        })
    }

    fn reconcile(created: Option<bool>, cluster: &str) -> TopicAuthority {
        TopicAuthority::Reconcile {
            record: Some(Ownership {
                created_by_operator: created,
                cluster_id: cluster.into(),
            }),
        }
    }

    #[test]
    fn the_first_look_records_who_made_the_topic_on_the_cluster_reached() {
        let new = system(None, None);
        assert_eq!(authority(&new, A, false), reconcile(Some(true), A));
        assert_eq!(authority(&new, A, true), reconcile(Some(false), A));
    }

    #[test]
    fn a_topic_created_on_the_cluster_reached_is_altered_and_deleted() {
        let ours = system(record(Some(true), Some(A)), Some(("TopicReady", 3)));
        assert_eq!(
            authority(&ours, A, true),
            TopicAuthority::Reconcile { record: None }
        );
        assert_eq!(may_delete(&ours, A), Ok(()));
    }

    #[test]
    fn a_topic_on_another_cluster_is_neither_altered_nor_deleted() {
        // Created on A; spec.kafka now leads to B, where a topic of that name exists.
        let moved = system(record(Some(true), Some(A)), Some(("TopicReady", 3)));
        let TopicAuthority::LeaveAlone { message } = authority(&moved, B, true) else {
            panic!("a topic on another cluster is altered");
        };
        assert!(
            message.contains("on Kafka cluster cluster-b")
                && message.contains("record is of cluster cluster-a"),
            "{message}"
        );
        let kept = may_delete(&moved, B).expect_err("deleted on another cluster");
        assert!(
            kept.contains("cluster cluster-b, not cluster cluster-a"),
            "{kept}"
        );
    }

    #[test]
    fn a_missing_topic_on_another_cluster_is_created_and_then_owned_there() {
        let moved = system(record(Some(false), Some(A)), Some(("TopicReady", 3)));
        assert_eq!(authority(&moved, B, false), reconcile(Some(true), B));
    }

    #[test]
    fn a_topic_found_before_the_system_is_altered_but_never_deleted() {
        let found = system(record(Some(false), Some(A)), Some(("TopicReady", 3)));
        assert_eq!(
            authority(&found, A, true),
            TopicAuthority::Reconcile { record: None }
        );
        let kept = may_delete(&found, A).expect_err("deleted a topic found in Kafka");
        assert!(kept.contains("existed before"), "{kept}");
        assert!(may_delete(&system(None, None), A).is_err(), "never looked");
    }

    #[test]
    fn a_record_from_before_cluster_ids_is_adopted_only_while_the_spec_is_unchanged() {
        // Found at this generation: spec.kafka is the one it was found with.
        for reason in ["TopicReady", "TopicConflict"] {
            let legacy = system(record(Some(true), None), Some((reason, 3)));
            assert_eq!(
                authority(&legacy, A, true),
                reconcile(Some(true), A),
                "{reason}"
            );
        }
        // Recorded before createdByOperator too: adopted, and still None.
        let older = system(record(None, None), Some(("TopicReady", 3)));
        assert_eq!(authority(&older, A, true), reconcile(None, A));
        // The spec changed since (maybe spec.kafka), or the last look found no topic:
        // a record of an unknown cluster.
        for found_at in [
            Some(("TopicReady", 2)),
            Some(("TopicMissing", 3)),
            Some(("TopicInUse", 3)),
            None,
        ] {
            let legacy = system(record(Some(true), None), found_at);
            assert!(
                matches!(
                    authority(&legacy, B, true),
                    TopicAuthority::LeaveAlone { .. }
                ),
                "{found_at:?}"
            );
            assert_eq!(authority(&legacy, B, false), reconcile(Some(true), B));
        }
        // Never adopted: not deleted.
        let legacy = system(record(Some(true), None), Some(("TopicReady", 2)));
        assert!(may_delete(&legacy, A).is_err());
    }
}
