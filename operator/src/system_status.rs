//! Status of an OutboxSystem from what the reconcile observed (pure).

use crate::backlog::BacklogUnavailable;
use crate::conditions::Desired;
use crate::crd::{AutoscalingMode, BacklogStatus, GroupStatus, ReplicaStatus, TopicStatus};
use crate::kafka::ObservedTopic;
use crate::topic_ownership::TOPIC_ON_OTHER_CLUSTER;

/// Condition types of an OutboxSystem.
pub use outbox_contract::conditions::outbox_system as types;

/// What the reconcile found out about the topic.
#[derive(Debug, Clone, Default)]
pub struct TopicOutcome {
    /// Topic name from the spec.
    pub name: String,
    /// The topic as found in Kafka after the changes (None: missing or unknown).
    pub observed: Option<ObservedTopic>,
    /// Mismatches the operator does not fix.
    pub conflicts: Vec<String>,
    /// The Kafka error that stopped the topic step, if any.
    pub error: Option<String>,
    /// PascalCase reason of `error` (default `KafkaUnavailable`).
    pub error_reason: Option<&'static str>,
    /// `(from, to)` when this reconcile raised the partition count.
    pub raised: Option<(i32, i32)>,
    /// The ownership record this look establishes (the first look, a record from
    /// before cluster ids adopted, a creation on another cluster); None: the recorded
    /// one stands, or the operator could not look.
    pub ownership: Option<crate::topic_ownership::Ownership>,
    /// The `cluster.id` of the Kafka reached, when it could be read.
    pub cluster_id: Option<String>,
    /// Why the operator leaves the topic as it is (another cluster's topic), if it does.
    pub left_alone: Option<String>,
}

/// One consumer group as observed.
#[derive(Debug, Clone)]
pub struct GroupObservation {
    /// Group name, as declared.
    pub name: String,
    /// Its id in Kafka (`OutboxSystem::kafka_group_id`).
    pub kafka_group_id: String,
    /// Ready pods.
    pub ready: i32,
    /// Desired pods.
    pub desired: i32,
    /// Lag, when Kafka answered.
    pub lag: Option<i64>,
    /// Who scales it, when it is autoscaled.
    pub autoscaling: Option<AutoscalingMode>,
}

/// Whether KEDA scales the groups that ask for it.
#[derive(Debug, Clone)]
pub struct AutoscalingObservation {
    /// The groups with `autoscaling.mode: keda`, as (name, minReplicas), in spec order.
    pub keda_groups: Vec<(String, i32)>,
    /// Whether KEDA can scale them.
    pub keda: crate::workloads::Keda,
}

/// Everything the status is computed from.
#[derive(Debug, Clone)]
pub struct Observation {
    /// The topic step.
    pub topic: TopicOutcome,
    /// Ready and desired producer pods.
    pub producers: (i32, i32),
    /// Each consumer group, in spec order.
    pub groups: Vec<GroupObservation>,
    /// The backlog or why it is unknown.
    pub backlog: Result<BacklogStatus, BacklogUnavailable>,
    /// How long the oldest pending message may wait before delivery counts as stalled.
    pub stall_after: std::time::Duration,
    /// Whether KEDA scales the groups that ask for it.
    pub autoscaling: AutoscalingObservation,
}

/// Status fields other than conditions and observedGeneration.
#[derive(Debug, Clone, PartialEq)]
pub struct ComputedStatus {
    /// Conditions to write.
    pub conditions: Vec<Desired>,
    /// Topic status.
    pub topic: TopicStatus,
    /// Producer replicas.
    pub producers: ReplicaStatus,
    /// Group replicas and lag.
    pub groups: Vec<GroupStatus>,
    /// `k/n` groups fully ready.
    pub groups_summary: String,
    /// Backlog, when known.
    pub backlog: Option<BacklogStatus>,
}

/// Computes conditions and status fields from an observation.
pub fn compute(obs: &Observation) -> ComputedStatus {
    let topic_condition = topic_condition(&obs.topic);
    let producers_condition = producers_condition(obs.producers);
    let consumers_condition = consumers_condition(&obs.groups);
    let ready_condition =
        ready_condition(&[&topic_condition, &producers_condition, &consumers_condition]);
    let (stalled_condition, quarantined_condition) = delivery_conditions(obs);
    let (p_ready, p_desired) = obs.producers;
    let ready_groups = obs.groups.iter().filter(|g| g.ready >= g.desired).count();
    ComputedStatus {
        conditions: vec![
            ready_condition,
            topic_condition,
            producers_condition,
            consumers_condition,
            degraded_condition(&obs.topic),
            backlog_condition(obs),
            stalled_condition,
            quarantined_condition,
            Desired::no(types::PAUSED, "Reconciling", "spec.paused is false"),
            autoscaling_condition(&obs.autoscaling),
        ],
        topic: TopicStatus {
            name: obs.topic.name.clone(),
            partitions: obs.topic.observed.as_ref().map(|t| t.partitions),
            replication_factor: obs.topic.observed.as_ref().map(|t| t.replication_factor),
            last_partition_raise: None,
            created_by_operator: None,
            ownership_cluster_id: None,
            cluster_id: None,
        },
        producers: ReplicaStatus::new(p_ready, p_desired),
        groups: obs
            .groups
            .iter()
            .map(|g| GroupStatus {
                name: g.name.clone(),
                kafka_group_id: Some(g.kafka_group_id.clone()),
                ready: g.ready,
                desired: g.desired,
                autoscaling: g.autoscaling,
                lag: g.lag,
            })
            .collect(),
        groups_summary: format!("{ready_groups}/{}", obs.groups.len()),
        backlog: obs.backlog.as_ref().ok().cloned(),
    }
}

/// TopicReady: an error, a conflict with the spec, the partitions found, or missing.
fn topic_condition(topic: &TopicOutcome) -> Desired {
    use types::TOPIC_READY;
    if let Some(error) = &topic.error {
        Desired::no(
            TOPIC_READY,
            topic.error_reason.unwrap_or("KafkaUnavailable"),
            error.clone(),
        )
    } else if let Some(message) = &topic.left_alone {
        Desired::no(TOPIC_READY, TOPIC_ON_OTHER_CLUSTER, message.clone())
    } else if !topic.conflicts.is_empty() {
        Desired::no(TOPIC_READY, "TopicConflict", topic.conflicts.join("; "))
    } else if let Some(found) = &topic.observed {
        Desired::yes(
            TOPIC_READY,
            "TopicReady",
            format!("topic {} has {} partitions", topic.name, found.partitions),
        )
    } else {
        Desired::no(
            TOPIC_READY,
            "TopicMissing",
            format!("topic {} is not in Kafka yet", topic.name),
        )
    }
}

/// ProducersReady from (ready, desired) pods.
fn producers_condition((ready, desired): (i32, i32)) -> Desired {
    let message = format!("{ready}/{desired} producer pods ready");
    if ready >= desired {
        Desired::yes(types::PRODUCERS_READY, "ReplicasReady", message)
    } else {
        Desired::no(types::PRODUCERS_READY, "ReplicasNotReady", message)
    }
}

/// ConsumersReady: every group has its pods ready, or which do not.
fn consumers_condition(groups: &[GroupObservation]) -> Desired {
    let not_ready: Vec<String> = groups
        .iter()
        .filter(|g| g.ready < g.desired)
        .map(|g| format!("{} {}/{}", g.name, g.ready, g.desired))
        .collect();
    if not_ready.is_empty() {
        Desired::yes(
            types::CONSUMERS_READY,
            "ReplicasReady",
            format!("all {} consumer groups ready", groups.len()),
        )
    } else {
        Desired::no(
            types::CONSUMERS_READY,
            "ReplicasNotReady",
            format!("pods ready per group: {}", not_ready.join(", ")),
        )
    }
}

/// AutoscalingUnavailable: True while groups with `autoscaling.mode: keda` cannot be
/// scaled by KEDA, naming them, what is wrong and how to fix it; they run their
/// `minReplicas` meanwhile. The message names nothing that changes while it lasts.
fn autoscaling_condition(autoscaling: &AutoscalingObservation) -> Desired {
    use crate::workloads::Keda;
    use types::AUTOSCALING_UNAVAILABLE;
    let groups = &autoscaling.keda_groups;
    if groups.is_empty() {
        return Desired::no(
            AUTOSCALING_UNAVAILABLE,
            "NoKedaGroups",
            "no consumer group has autoscaling.mode keda",
        );
    }
    let names = groups
        .iter()
        .map(|(name, _)| name.as_str())
        .collect::<Vec<_>>()
        .join(", ");
    match &autoscaling.keda {
        Keda::Usable => Desired::no(
            AUTOSCALING_UNAVAILABLE,
            "KedaScaling",
            format!("KEDA scales consumer groups {names} on their lag"),
        ),
        Keda::Unusable { reason, problem } => {
            let minimums = groups
                .iter()
                .map(|(name, min)| format!("{name} {min}"))
                .collect::<Vec<_>>()
                .join(", ");
            let fix = if !autoscaling.keda.served() {
                "install KEDA (https://keda.sh/docs/deploy/) or set autoscaling.mode: external and scale them with an autoscaler of your own"
            } else {
                "set autoscaling.mode: external and scale them with an autoscaler of your own (e.g. a ScaledObject with a TriggerAuthentication)"
            };
            Desired::yes(
                AUTOSCALING_UNAVAILABLE,
                *reason,
                format!(
                    "consumer groups {names} have autoscaling.mode keda, but {problem}: they run their minReplicas ({minimums}) until then; {fix}"
                ),
            )
        }
    }
}

/// Ready: all `parts` are, or the reason of the first that is not and every message.
fn ready_condition(parts: &[&Desired]) -> Desired {
    let failing: Vec<&&Desired> = parts.iter().filter(|c| !c.status).collect();
    match failing.first() {
        None => Desired::yes(
            types::READY,
            "AllReady",
            "topic, producers and consumers are ready",
        ),
        Some(first) => Desired::no(
            types::READY,
            format!("{}NotReady", first.type_.trim_end_matches("Ready")),
            failing
                .iter()
                .map(|c| c.message.as_str())
                .collect::<Vec<_>>()
                .join("; "),
        ),
    }
}

/// Degraded: a Kafka error or a topic conflict needs a human.
fn degraded_condition(topic: &TopicOutcome) -> Desired {
    use types::DEGRADED;
    if let Some(error) = &topic.error {
        Desired::yes(
            DEGRADED,
            topic.error_reason.unwrap_or("KafkaUnavailable"),
            error.clone(),
        )
    } else if let Some(message) = &topic.left_alone {
        Desired::yes(DEGRADED, TOPIC_ON_OTHER_CLUSTER, message.clone())
    } else if !topic.conflicts.is_empty() {
        Desired::yes(DEGRADED, "TopicConflict", topic.conflicts.join("; "))
    } else {
        Desired::no(DEGRADED, "AsExpected", "no conflicts or errors")
    }
}

/// BacklogObserved: whether the backlog view could be read.
fn backlog_condition(obs: &Observation) -> Desired {
    match &obs.backlog {
        Ok(_) => Desired::yes(
            types::BACKLOG_OBSERVED,
            "BacklogRead",
            "status.backlog is read from the outbox_backlog view",
        ),
        Err(e) => Desired::no(types::BACKLOG_OBSERVED, e.reason, e.message.clone()),
    }
}

/// DeliveryStalled and MessagesQuarantined, from the backlog. Their messages name
/// nothing that changes while the situation lasts (ages are in status.backlog), so a
/// stall is written once, not at every refresh.
fn delivery_conditions(obs: &Observation) -> (Desired, Desired) {
    use types::*;
    let threshold = obs.stall_after.as_secs();
    let Ok(backlog) = &obs.backlog else {
        return (
            Desired::no(
                DELIVERY_STALLED,
                "BacklogUnknown",
                "the backlog could not be read (see BacklogObserved)",
            ),
            Desired::no(
                MESSAGES_QUARANTINED,
                "BacklogUnknown",
                "the backlog could not be read (see BacklogObserved)",
            ),
        );
    };
    let stalled = backlog
        .oldest_age_seconds
        .is_some_and(|age| age > obs.stall_after.as_secs_f64());
    let stalled = match (stalled, &backlog.oldest_transaction) {
        (false, _) => Desired::no(
            DELIVERY_STALLED,
            "Delivering",
            format!("no pending message is older than {threshold}s"),
        ),
        (true, Some(holder)) => Desired::yes(
            DELIVERY_STALLED,
            "OpenTransaction",
            format!(
                "the oldest pending message waits longer than {threshold}s (status.backlog.oldestAgeSeconds); {holder}: the relay publishes only rows written before the oldest running transaction, end it (or set idle_in_transaction_session_timeout for its role)"
            ),
        ),
        (true, None) => Desired::yes(
            DELIVERY_STALLED,
            "RelayNotPublishing",
            format!(
                "the oldest pending message waits longer than {threshold}s (status.backlog.oldestAgeSeconds) and no open transaction holds it back: see the producers' /api/messages/health (kafka, relayLeader) and outbox_relay_errors_total"
            ),
        ),
    };
    let quarantined = if backlog.quarantined > 0 {
        Desired::yes(
            MESSAGES_QUARANTINED,
            "KafkaRefusedMessages",
            format!(
                "{} message(s) the relay could not publish (refused by Kafka for good, or for a topic this system does not relay to) are in the outbox_quarantine table with the reason; they were not delivered",
                backlog.quarantined
            ),
        )
    } else {
        Desired::no(
            MESSAGES_QUARANTINED,
            "NoneQuarantined",
            "Kafka refused no message",
        )
    };
    (stalled, quarantined)
}

/// The status without the fields that move all the time (lag, backlog): a change in
/// those alone is written at most once per refresh period, so that the status write
/// (which triggers the next reconcile) cannot turn into a loop.
pub fn without_gauges(status: &crate::crd::OutboxSystemStatus) -> crate::crd::OutboxSystemStatus {
    let mut status = status.clone();
    // Known or unknown still counts; only the values are gauges.
    if let Some(backlog) = status.backlog.as_mut() {
        backlog.pending = 0;
        backlog.oldest_age_seconds = None;
    }
    for group in &mut status.groups {
        group.lag = group.lag.map(|_| 0);
    }
    status
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::BTreeMap;

    fn observation() -> Observation {
        Observation {
            topic: TopicOutcome {
                name: "events".into(),
                observed: Some(ObservedTopic {
                    partitions: 6,
                    replication_factor: 1,
                    dynamic_config: BTreeMap::new(),
                    effective_config: BTreeMap::new(),
                }),
                conflicts: vec![],
                error: None,
                error_reason: None,
                raised: None,
                ..TopicOutcome::default()
            },
            producers: (3, 3),
            groups: vec![GroupObservation {
                name: "group-a".into(),
                kafka_group_id: "ns.outbox.group-a".into(),
                ready: 3,
                desired: 3,
                lag: Some(0),
                autoscaling: None,
            }],
            backlog: Ok(BacklogStatus::default()),
            stall_after: std::time::Duration::from_secs(120),
            autoscaling: AutoscalingObservation {
                keda_groups: Vec::new(),
                keda: crate::workloads::Keda::Usable,
            },
        }
    }

    fn condition<'a>(s: &'a ComputedStatus, t: &str) -> &'a Desired {
        s.conditions
            .iter()
            .find(|c| c.type_ == t)
            .unwrap_or_else(|| panic!("no {t}"))
    }

    #[test]
    fn everything_ready_means_ready_and_not_degraded() {
        let s = compute(&observation());
        assert!(condition(&s, types::READY).status);
        assert!(!condition(&s, types::DEGRADED).status);
        assert_eq!(s.topic.partitions, Some(6));
        assert_eq!(s.producers.summary, "3/3");
        assert_eq!(s.groups_summary, "1/1");
    }

    #[test]
    fn pods_not_ready_make_ready_false_with_counts() {
        let mut obs = observation();
        obs.producers = (0, 3);
        obs.groups[0].ready = 1;
        let s = compute(&obs);
        let ready = condition(&s, types::READY);
        assert!(!ready.status);
        assert_eq!(ready.reason, "ProducersNotReady");
        assert!(
            ready.message.contains("0/3 producer pods"),
            "{}",
            ready.message
        );
        assert!(condition(&s, types::CONSUMERS_READY)
            .message
            .contains("group-a 1/3"));
        assert_eq!(s.groups_summary, "0/1");
    }

    #[test]
    fn a_group_is_shown_under_its_declared_name_with_its_kafka_group_id_beside() {
        let mut obs = observation();
        obs.groups[0].ready = 1;
        let s = compute(&obs);
        assert_eq!(s.groups[0].name, "group-a");
        assert_eq!(
            s.groups[0].kafka_group_id.as_deref(),
            Some("ns.outbox.group-a")
        );
        let consumers = &condition(&s, types::CONSUMERS_READY).message;
        assert!(
            consumers.contains("group-a 1/3") && !consumers.contains("ns.outbox"),
            "{consumers}"
        );
    }

    #[test]
    fn topic_conflict_is_reported_as_degraded() {
        let mut obs = observation();
        obs.topic.conflicts = vec!["spec.topic.partitions is 4 but ...".into()];
        let s = compute(&obs);
        assert_eq!(condition(&s, types::TOPIC_READY).reason, "TopicConflict");
        assert!(condition(&s, types::DEGRADED).status);
        assert_eq!(condition(&s, types::READY).reason, "TopicNotReady");
    }

    #[test]
    fn a_topic_left_alone_on_another_cluster_is_not_ready_and_degraded() {
        let mut obs = observation();
        obs.topic.left_alone = Some("topic events on Kafka cluster b was not created ...".into());
        let s = compute(&obs);
        let topic = condition(&s, types::TOPIC_READY);
        assert!(!topic.status);
        assert_eq!(topic.reason, TOPIC_ON_OTHER_CLUSTER);
        assert!(condition(&s, types::DEGRADED).status);
        assert_eq!(
            condition(&s, types::DEGRADED).reason,
            TOPIC_ON_OTHER_CLUSTER
        );
        assert_eq!(condition(&s, types::READY).reason, "TopicNotReady");
    }

    fn autoscaling(obs: &Observation) -> Desired {
        let computed = compute(obs);
        let found = computed
            .conditions
            .into_iter()
            .find(|c| c.type_ == types::AUTOSCALING_UNAVAILABLE);
        found.unwrap_or_else(|| panic!("no AutoscalingUnavailable"))
    }

    #[test]
    fn without_keda_the_keda_groups_are_named_with_their_minimum_and_the_fix() {
        let mut obs = observation();
        obs.autoscaling = AutoscalingObservation {
            keda_groups: vec![("group-a".into(), 1), ("group-b".into(), 2)],
            keda: crate::workloads::keda(false, None),
        };
        let condition = autoscaling(&obs);
        assert!(condition.status);
        assert_eq!(condition.reason, crate::workloads::KEDA_NOT_INSTALLED);
        for part in [
            "group-a, group-b",
            "group-a 1, group-b 2",
            "install KEDA",
            "autoscaling.mode: external",
        ] {
            assert!(condition.message.contains(part), "{part}: {condition:?}");
        }
        // It says what is missing; the rest of the system is still Ready.
        let ready = compute(&obs)
            .conditions
            .into_iter()
            .find(|c| c.type_ == types::READY);
        assert!(ready.is_some_and(|r| r.status));
    }

    #[test]
    fn autoscaling_is_available_when_keda_scales_the_groups_or_none_asks_for_it() {
        let mut obs = observation();
        let none = autoscaling(&obs);
        assert_eq!((none.status, none.reason.as_str()), (false, "NoKedaGroups"));
        obs.autoscaling.keda_groups = vec![("group-a".into(), 1)];
        let scaling = autoscaling(&obs);
        assert_eq!(
            (scaling.status, scaling.reason.as_str()),
            (false, "KedaScaling")
        );
        obs.autoscaling.keda = crate::workloads::keda(true, Some("SSL"));
        let refused = autoscaling(&obs);
        assert!(refused.status);
        assert!(
            refused
                .message
                .contains("KAFKA_CLIENT_SECURITY_PROTOCOL=SSL"),
            "{refused:?}"
        );
    }

    #[test]
    fn a_groups_status_shows_its_autoscaling_mode_and_the_deployments_replicas() {
        let mut obs = observation();
        obs.groups[0].autoscaling = Some(AutoscalingMode::Keda);
        obs.groups[0].desired = 5;
        let group = &compute(&obs).groups[0];
        assert_eq!(group.autoscaling, Some(AutoscalingMode::Keda));
        assert_eq!(group.desired, 5);
    }

    #[test]
    fn gauges_alone_do_not_make_a_significant_change() {
        let mut a = crate::crd::OutboxSystemStatus {
            groups: vec![GroupStatus {
                name: "g".into(),
                kafka_group_id: None,
                ready: 1,
                desired: 1,
                autoscaling: None,
                lag: Some(5),
            }],
            backlog: Some(BacklogStatus {
                pending: 3,
                oldest_age_seconds: Some(1.0),
                ..BacklogStatus::default()
            }),
            ..Default::default()
        };
        let mut b = a.clone();
        b.groups[0].lag = Some(9);
        b.backlog = Some(BacklogStatus {
            pending: 4,
            oldest_age_seconds: Some(2.5),
            ..BacklogStatus::default()
        });
        assert_eq!(without_gauges(&a), without_gauges(&b));
        b.groups[0].lag = None;
        assert_ne!(
            without_gauges(&a),
            without_gauges(&b),
            "lag becoming unknown is news"
        );
        b.groups[0].lag = Some(1);
        a.groups[0].ready = 0;
        assert_ne!(without_gauges(&a), without_gauges(&b));
    }

    #[test]
    fn an_old_pending_message_is_a_stall_naming_the_open_transaction_when_there_is_one() {
        let mut obs = observation();
        let stalled = |obs: &Observation| {
            let s = compute(obs);
            let c = condition(&s, types::DELIVERY_STALLED).clone();
            (c.status, c.reason.clone(), c.message.clone())
        };
        obs.backlog = Ok(BacklogStatus {
            pending: 10,
            oldest_age_seconds: Some(119.0),
            ..BacklogStatus::default()
        });
        assert!(!stalled(&obs).0);
        obs.backlog = Ok(BacklogStatus {
            pending: 10,
            oldest_age_seconds: Some(121.0),
            ..BacklogStatus::default()
        });
        let (status, reason, message) = stalled(&obs);
        assert_eq!((status, reason.as_str()), (true, "RelayNotPublishing"));
        assert!(message.contains("120s"), "{message}");
        obs.backlog = Ok(BacklogStatus {
            pending: 10,
            oldest_age_seconds: Some(500.0),
            oldest_transaction: Some("backend pid 42 (user app, idle in transaction) in a transaction since 2026-11-29T16:00:00Z".into()),
            ..BacklogStatus::default()
        });
        let (status, reason, message) = stalled(&obs);
        assert_eq!((status, reason.as_str()), (true, "OpenTransaction"));
        assert!(message.contains("backend pid 42"), "{message}");
        // The message does not move with the age: a stall is written once.
        obs.backlog = Ok(BacklogStatus {
            pending: 10,
            oldest_age_seconds: Some(900.0),
            oldest_transaction: Some("backend pid 42 (user app, idle in transaction) in a transaction since 2026-11-29T16:00:00Z".into()),
            ..BacklogStatus::default()
        });
        assert_eq!(stalled(&obs).2, message);
    }

    #[test]
    fn quarantined_messages_are_a_condition_with_their_count() {
        let mut obs = observation();
        let s = compute(&obs);
        assert!(!condition(&s, types::MESSAGES_QUARANTINED).status);
        obs.backlog = Ok(BacklogStatus {
            quarantined: 2,
            ..BacklogStatus::default()
        });
        let s = compute(&obs);
        let c = condition(&s, types::MESSAGES_QUARANTINED);
        assert_eq!(
            (c.status, c.reason.as_str()),
            (true, "KafkaRefusedMessages")
        );
        assert!(c.message.starts_with("2 message(s)"), "{}", c.message);
    }

    #[test]
    fn unknown_backlog_is_said_and_left_empty() {
        let mut obs = observation();
        obs.backlog = Err(BacklogUnavailable {
            reason: "BacklogViewMissing",
            message: "the view outbox_backlog does not exist yet".into(),
        });
        let s = compute(&obs);
        assert!(s.backlog.is_none());
        let c = condition(&s, types::BACKLOG_OBSERVED);
        assert!(!c.status);
        assert_eq!(c.reason, "BacklogViewMissing");
        assert!(
            condition(&s, types::READY).status,
            "backlog does not gate readiness"
        );
    }
}
