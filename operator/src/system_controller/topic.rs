//! The topic: created or adjusted on the Kafka cluster reached, where the operator may
//! change it there (`topic_ownership`), each change announced and read back.

use kube::api::{Patch, PatchParams};
use kube::runtime::events::EventType;
use kube::{Api, ResourceExt};
use tracing::{info, warn};

use super::kafka_reach::KafkaReach;
use crate::context::{publish_event, Context};
use crate::crd::{OutboxSystem, OutboxSystemSpec};
use crate::error::{Error, Result};
use crate::kafka::{plan_topic, KafkaAdmin, ObservedTopic, TopicPlan};
use crate::system_status::TopicOutcome;
use crate::topic_ownership::{self, Ownership, TopicAuthority};

/// Reconciles the Kafka topic on the cluster reached; returns what happened and the
/// admin client, if any.
pub(super) async fn topic_step(
    ctx: &Context,
    system: &OutboxSystem,
    kafka: KafkaReach,
) -> (TopicOutcome, Option<KafkaAdmin>) {
    match kafka {
        KafkaReach::Reached { admin, cluster_id } => {
            reconcile_topic(ctx, system, admin, cluster_id).await
        }
        KafkaReach::NotReached {
            admin,
            reason,
            message,
        } => (
            TopicOutcome {
                name: system.spec.topic.name.clone(),
                error_reason: reason,
                error: Some(message),
                ..TopicOutcome::default()
            },
            admin,
        ),
    }
}

/// Creates or adjusts the topic as its steps: describe → may the operator change it
/// on this cluster ([`topic_ownership::authority`], pure) → plan (pure, `plan_topic`)
/// → change it ([`change_topic`]: a creation recorded before it happens) → announce
/// the change (built pure by [`topic_change`]) → read it back. Never fails the
/// reconcile on a Kafka problem, which goes into the outcome instead.
async fn reconcile_topic(
    ctx: &Context,
    system: &OutboxSystem,
    admin: KafkaAdmin,
    cluster_id: String,
) -> (TopicOutcome, Option<KafkaAdmin>) {
    let spec = &system.spec;
    let mut outcome = TopicOutcome {
        name: spec.topic.name.clone(),
        cluster_id: Some(cluster_id.clone()),
        ..TopicOutcome::default()
    };
    let observed = match admin.describe_topic(&spec.topic).await {
        Ok(observed) => observed,
        Err(e) => {
            outcome.error = Some(e.to_string());
            return (outcome, Some(admin));
        }
    };
    outcome.observed = observed.clone();
    let record = match topic_ownership::authority(system, &cluster_id, observed.is_some()) {
        TopicAuthority::Reconcile { record } => record,
        TopicAuthority::LeaveAlone { message } => {
            warn!(topic = %spec.topic.name, cluster = %cluster_id, "{message}");
            outcome.left_alone = Some(message);
            return (outcome, Some(admin));
        }
    };
    let plan = plan_topic(&spec.topic, observed.as_ref());
    outcome.conflicts = plan.conflicts.clone();
    outcome.ownership = if plan.create {
        Some(Ownership {
            created_by_operator: Some(true),
            cluster_id: cluster_id.clone(),
        })
    } else {
        record
    };
    let Some(change) = topic_change(spec, observed.as_ref(), &plan) else {
        return (outcome, Some(admin));
    };
    if let Err(error) =
        change_topic(ctx, system, &cluster_id, &admin, observed.as_ref(), &plan).await
    {
        outcome.error = Some(error);
        return (outcome, Some(admin));
    }
    outcome.raised = change.raised;
    announce_topic_change(ctx, system, &spec.topic.name, change).await;
    finish_topic(admin, spec, outcome).await
}

/// Carries out `plan`. A creation is recorded in status before the topic exists, so
/// that no failure after it can make a later look mistake the topic for one that was
/// there before. A failure to apply is announced with a Warning Event.
async fn change_topic(
    ctx: &Context,
    system: &OutboxSystem,
    cluster_id: &str,
    admin: &KafkaAdmin,
    observed: Option<&ObservedTopic>,
    plan: &TopicPlan,
) -> std::result::Result<(), String> {
    let spec = &system.spec;
    if plan.create {
        record_topic_created(ctx, system, &spec.topic.name, cluster_id)
            .await
            .map_err(|e| e.to_string())?;
    }
    if let Err(e) = admin.apply_plan(&spec.topic, observed, plan).await {
        publish_event(
            ctx,
            system,
            EventType::Warning,
            "TopicUpdateFailed",
            e.to_string(),
        )
        .await;
        return Err(e.to_string());
    }
    Ok(())
}

/// What a change of the topic is announced as.
#[derive(Debug, Clone, PartialEq)]
struct TopicChange {
    type_: EventType,
    reason: &'static str,
    note: String,
    /// `(from, to)` when the partitions are raised.
    raised: Option<(i32, i32)>,
}

/// The change `plan` makes to the topic, as it is announced (pure): None when it
/// changes nothing; else a creation, a raise of the partitions (a Warning: per-key
/// order), or new config values, in that order of precedence.
fn topic_change(
    spec: &OutboxSystemSpec,
    observed: Option<&ObservedTopic>,
    plan: &TopicPlan,
) -> Option<TopicChange> {
    let topic = &spec.topic.name;
    if plan.create {
        return Some(TopicChange {
            type_: EventType::Normal,
            reason: "TopicCreated",
            note: format!(
                "created topic {topic} with {} partitions",
                spec.topic.partitions
            ),
            raised: None,
        });
    }
    if let Some(to) = plan.raise_partitions_to {
        let from = observed.map_or(0, |o| o.partitions);
        return Some(TopicChange {
            type_: EventType::Warning,
            reason: "PartitionsRaised",
            note: partition_raise_warning(topic, from, to),
            raised: Some((from, to)),
        });
    }
    (!plan.config_changes.is_empty()).then(|| TopicChange {
        type_: EventType::Normal,
        reason: "TopicConfigUpdated",
        note: format!(
            "set {} on topic {topic}",
            plan.config_changes
                .keys()
                .cloned()
                .collect::<Vec<_>>()
                .join(", ")
        ),
        raised: None,
    })
}

/// Logs and publishes a change of the topic.
async fn announce_topic_change(
    ctx: &Context,
    system: &OutboxSystem,
    topic: &str,
    change: TopicChange,
) {
    match change.raised {
        Some((from, to)) => warn!(topic = %topic, from, to, "{}", change.note),
        None => info!(topic = %topic, reason = change.reason, "{}", change.note),
    }
    publish_event(ctx, system, change.type_, change.reason, change.note).await;
}

/// Reads the topic back after a change.
async fn finish_topic(
    admin: KafkaAdmin,
    spec: &OutboxSystemSpec,
    mut outcome: TopicOutcome,
) -> (TopicOutcome, Option<KafkaAdmin>) {
    match admin.describe_topic(&spec.topic).await {
        Ok(after) => {
            outcome.conflicts = plan_topic(&spec.topic, after.as_ref()).conflicts;
            outcome.observed = after;
        }
        Err(e) => outcome.error = Some(e.to_string()),
    }
    (outcome, Some(admin))
}

/// What a raise of the partition count does to per-key order, for the Warning Event.
fn partition_raise_warning(topic: &str, from: i32, to: i32) -> String {
    format!(
        "raised topic {topic} from {from} to {to} partitions: Kafka now maps keys to partitions anew, so \
         a key's messages written before and after may be consumed by different members and out \
         of order while any are in flight; raise partitions on a drained system (backlog 0, \
         consumer lag 0) to keep per-key order"
    )
}

/// Marks `status.topic.createdByOperator` on `cluster_id` before the operator creates
/// the topic there.
async fn record_topic_created(
    ctx: &Context,
    system: &OutboxSystem,
    topic: &str,
    cluster_id: &str,
) -> Result<()> {
    let name = system.name_any();
    let api: Api<OutboxSystem> =
        Api::namespaced(ctx.client.clone(), &system.namespace().unwrap_or_default());
    let patch = serde_json::json!({"status": {"topic": {
        "name": topic,
        "createdByOperator": true,
        "ownershipClusterId": cluster_id,
    }}});
    api.patch_status(&name, &PatchParams::default(), &Patch::Merge(&patch))
        .await
        .map_err(Error::kube(format!(
            "recording that topic {topic} is created for {name}"
        )))?;
    Ok(())
}

#[cfg(test)]
#[path = "topic_tests.rs"]
mod tests;
