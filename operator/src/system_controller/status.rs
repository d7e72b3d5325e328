//! The status: computed from the observation (pure, `system_status`), its changed
//! conditions announced as Events, written when it changed enough.

use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, Time};
use k8s_openapi::jiff::Timestamp;
use kube::runtime::events::EventType;
use kube::{Api, ResourceExt};

use crate::conditions;
use crate::context::{publish_event, Context};
use crate::crd::{OutboxSystem, OutboxSystemStatus, PartitionRaise, TopicStatus};
use crate::error::Result;
use crate::server_side_apply::apply_status;
use crate::system_status::{self, types, Observation, TopicOutcome};

/// Writes the status as its steps: compute it from the observation (pure,
/// `system_status::compute`) → merge the conditions → announce the changed ones
/// ([`conditions_to_announce`], pure) → assemble the status ([`next_status`], pure)
/// → write it when it changed enough ([`status_needs_write`]).
pub(super) async fn write_status(
    ctx: &Context,
    system: &OutboxSystem,
    namespace: &str,
    current: &OutboxSystemStatus,
    topic: &TopicOutcome,
    observation: &Observation,
) -> Result<()> {
    let now = Timestamp::now();
    let computed = system_status::compute(observation);
    let new_conditions = conditions::merge(
        &current.conditions,
        &computed.conditions,
        system.metadata.generation,
        now,
    );
    for (type_, changed) in conditions_to_announce(&current.conditions, &new_conditions) {
        let note = format!("{}={}: {}", changed.type_, changed.status, changed.message);
        publish_event(ctx, system, type_, &changed.reason, note).await;
    }
    let generation = system.metadata.generation;
    let status = next_status(generation, current, topic, computed, new_conditions, now);
    if status_needs_write(ctx, system, &status) {
        patch_status(ctx, namespace, &system.name_any(), &status).await?;
        if let (Some(uid), Ok(mut writes)) = (system.uid(), ctx.status_writes.lock()) {
            writes.insert(uid, std::time::Instant::now());
        }
    }
    Ok(())
}

/// The conditions whose change is news, with the type of their Event (pure): a
/// Warning for a bad state (False, or `Degraded` or `AutoscalingUnavailable` True),
/// Normal otherwise. A good state
/// seen for the first time is not news, nor is `Paused` seen for the first time.
fn conditions_to_announce<'a>(
    before: &[Condition],
    after: &'a [Condition],
) -> Vec<(EventType, &'a Condition)> {
    conditions::changed(before, after)
        .into_iter()
        .filter_map(|changed| {
            let bad_when_true =
                [types::DEGRADED, types::AUTOSCALING_UNAVAILABLE].contains(&changed.type_.as_str());
            let good = (changed.status == "True") != bad_when_true;
            let first = conditions::find(before, &changed.type_).is_none();
            if first && (good || changed.type_ == types::PAUSED) {
                return None;
            }
            let type_ = if good {
                EventType::Normal
            } else {
                EventType::Warning
            };
            Some((type_, changed))
        })
        .collect()
}

/// The status to write (pure): the computed fields and `conditions`, with what
/// `status.topic` keeps across reconciles ([`topic_record`]).
fn next_status(
    generation: Option<i64>,
    current: &OutboxSystemStatus,
    topic: &TopicOutcome,
    computed: system_status::ComputedStatus,
    conditions: Vec<Condition>,
    now: Timestamp,
) -> OutboxSystemStatus {
    OutboxSystemStatus {
        observed_generation: generation,
        conditions,
        topic: Some(topic_record(
            current.topic.as_ref(),
            topic,
            computed.topic,
            now,
        )),
        producers: Some(computed.producers),
        groups: computed.groups,
        groups_summary: Some(computed.groups_summary),
        backlog: computed.backlog,
    }
}

/// `status.topic` (pure): the computed fields, and what the operator remembers.
/// `createdByOperator` and `ownershipClusterId` change only with an ownership record
/// this look established (`topic.ownership`, decided by
/// [`topic_ownership::authority`](crate::topic_ownership::authority)); `clusterId` is
/// the cluster of the last look that reached one. `lastPartitionRaise` is this
/// reconcile's raise (at `now`), else the last one.
fn topic_record(
    current: Option<&TopicStatus>,
    topic: &TopicOutcome,
    computed: TopicStatus,
    now: Timestamp,
) -> TopicStatus {
    let (created_by_operator, ownership_cluster_id) = match &topic.ownership {
        Some(record) => (record.created_by_operator, Some(record.cluster_id.clone())),
        None => (
            current.and_then(|t| t.created_by_operator),
            current.and_then(|t| t.ownership_cluster_id.clone()),
        ),
    };
    TopicStatus {
        created_by_operator,
        ownership_cluster_id,
        cluster_id: topic
            .cluster_id
            .clone()
            .or_else(|| current.and_then(|t| t.cluster_id.clone())),
        last_partition_raise: topic
            .raised
            .map(|(from, to)| PartitionRaise {
                from,
                to,
                time: Time(now),
            })
            .or_else(|| current.and_then(|t| t.last_partition_raise.clone())),
        ..computed
    }
}

/// Significant changes are written at once; changes of lag and backlog alone at most
/// once per refresh period.
fn status_needs_write(ctx: &Context, system: &OutboxSystem, status: &OutboxSystemStatus) -> bool {
    let Some(current) = system.status.as_ref() else {
        return true;
    };
    if current == status {
        return false;
    }
    if system_status::without_gauges(current) != system_status::without_gauges(status) {
        return true;
    }
    let last = system
        .uid()
        .and_then(|uid| ctx.status_writes.lock().ok()?.get(&uid).copied());
    last.is_none_or(|at| at.elapsed() >= ctx.settings.status_refresh)
}

pub(super) fn replace_conditions(current: &mut Vec<Condition>, updated: Vec<Condition>) {
    for condition in updated {
        match current.iter_mut().find(|c| c.type_ == condition.type_) {
            Some(slot) => *slot = condition,
            None => current.push(condition),
        }
    }
}

pub(super) async fn patch_status(
    ctx: &Context,
    namespace: &str,
    name: &str,
    status: &OutboxSystemStatus,
) -> Result<()> {
    let api: Api<OutboxSystem> = Api::namespaced(ctx.client.clone(), namespace);
    apply_status(&api, name, status).await
}

#[cfg(test)]
#[path = "status_tests.rs"]
mod tests;
