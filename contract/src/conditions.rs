//! Status conditions: the types each writer uses, by resource, and merging them so that
//! `lastTransitionTime` moves only when a condition's status really changes (the
//! operator and the load-test runner both write conditions this way).

use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, Time};
use k8s_openapi::jiff::Timestamp;

/// Conditions of an OutboxSystem (all written by the operator).
pub mod outbox_system {
    /// Topic, producers and consumers are all ready.
    pub const READY: &str = "Ready";
    /// The topic exists in Kafka as the spec says.
    pub const TOPIC_READY: &str = "TopicReady";
    /// Every producer pod is ready.
    pub const PRODUCERS_READY: &str = "ProducersReady";
    /// Every consumer pod of every group is ready.
    pub const CONSUMERS_READY: &str = "ConsumersReady";
    /// Something needs a human: a conflict, an invalid spec, an unreachable dependency.
    pub const DEGRADED: &str = "Degraded";
    /// The outbox backlog could be read from PostgreSQL.
    pub const BACKLOG_OBSERVED: &str = "BacklogObserved";
    /// The oldest pending message waits longer than the stall threshold.
    pub const DELIVERY_STALLED: &str = "DeliveryStalled";
    /// Kafka refused messages for good; the relay moved them to `outbox_quarantine`.
    pub const MESSAGES_QUARANTINED: &str = "MessagesQuarantined";
    /// Reconciliation is paused by `spec.paused`.
    pub const PAUSED: &str = "Paused";
    /// Groups with `autoscaling.mode: keda` cannot be scaled by KEDA (not installed,
    /// or Kafka settings its trigger does not take): they run `minReplicas`.
    pub const AUTOSCALING_UNAVAILABLE: &str = "AutoscalingUnavailable";
}

/// Conditions of a LoadTest.
pub mod loadtest {
    /// The runner Job exists (True) or could not be created (False). Operator.
    pub const SCHEDULED: &str = "Scheduled";
    /// The run is over. Runner; operator when the Job failed before the runner reported.
    pub const COMPLETE: &str = "Complete";
    /// Every consumer group acknowledged every accepted message. Runner.
    pub const VERIFIED: &str = "Verified";
    /// A dependency is away and the runner waits for it. Runner.
    pub const DEGRADED: &str = "Degraded";
    /// Every threshold of the spec (and the arrival-rate defaults) held. Runner.
    pub const THRESHOLDS_MET: &str = "ThresholdsMet";
}

/// A condition as the reconciler wants it, before timestamps.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Desired {
    /// Condition type, e.g. `Ready`.
    pub type_: &'static str,
    /// True or false.
    pub status: bool,
    /// PascalCase reason.
    pub reason: String,
    /// Human-readable message.
    pub message: String,
}

impl Desired {
    /// A condition with status True.
    pub fn yes(type_: &'static str, reason: impl Into<String>, message: impl Into<String>) -> Self {
        Desired {
            type_,
            status: true,
            reason: reason.into(),
            message: message.into(),
        }
    }

    /// A condition with status False.
    pub fn no(type_: &'static str, reason: impl Into<String>, message: impl Into<String>) -> Self {
        Desired {
            type_,
            status: false,
            reason: reason.into(),
            message: message.into(),
        }
    }
}

fn status_str(status: bool) -> &'static str {
    if status {
        "True"
    } else {
        "False"
    }
}

/// Builds the conditions to write: each desired condition keeps the
/// `lastTransitionTime` of the current one of the same type when its status did not
/// change, and gets `now` otherwise. Conditions of other types are left out (the
/// caller owns only the types it passes).
pub fn merge(
    current: &[Condition],
    desired: &[Desired],
    generation: Option<i64>,
    now: Timestamp,
) -> Vec<Condition> {
    desired
        .iter()
        .map(|d| {
            let status = status_str(d.status);
            let last_transition_time = current
                .iter()
                .find(|c| c.type_ == d.type_ && c.status == status)
                .map(|c| c.last_transition_time.clone())
                .unwrap_or(Time(now));
            Condition {
                type_: d.type_.to_string(),
                status: status.to_string(),
                reason: d.reason.clone(),
                message: d.message.clone(),
                observed_generation: generation,
                last_transition_time,
            }
        })
        .collect()
}

/// The condition of `type_` in `conditions`, if any.
pub fn find<'a>(conditions: &'a [Condition], type_: &str) -> Option<&'a Condition> {
    conditions.iter().find(|c| c.type_ == type_)
}

/// Types whose status, reason or message differ between `before` and `after`.
pub fn changed<'a>(before: &[Condition], after: &'a [Condition]) -> Vec<&'a Condition> {
    after
        .iter()
        .filter(|a| {
            find(before, &a.type_)
                .map(|b| b.status != a.status || b.reason != a.reason)
                .unwrap_or(true)
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(seconds: i64) -> Timestamp {
        Timestamp::from_second(seconds).unwrap_or(Timestamp::UNIX_EPOCH)
    }

    #[test]
    fn transition_time_stays_when_status_is_unchanged() {
        let first = merge(
            &[],
            &[Desired::no("Ready", "Waiting", "0/3")],
            Some(1),
            at(100),
        );
        let second = merge(
            &first,
            &[Desired::no("Ready", "Waiting", "1/3")],
            Some(2),
            at(200),
        );
        assert_eq!(second[0].last_transition_time, Time(at(100)));
        assert_eq!(second[0].message, "1/3");
        assert_eq!(second[0].observed_generation, Some(2));
    }

    #[test]
    fn transition_time_moves_when_status_flips() {
        let first = merge(&[], &[Desired::no("Ready", "Waiting", "")], None, at(100));
        let second = merge(
            &first,
            &[Desired::yes("Ready", "AllReady", "")],
            None,
            at(200),
        );
        assert_eq!(second[0].last_transition_time, Time(at(200)));
        assert_eq!(second[0].status, "True");
        assert_eq!(changed(&first, &second).len(), 1);
        assert!(changed(&second, &second).is_empty());
    }
}
