//! Refusals: why the operator will not reconcile a system (an invalid spec, an image
//! outside the allowed repositories, a topic or schema another system holds, a missing
//! Secret), each built pure, and how one is written into status and announced.

use k8s_openapi::apimachinery::pkg::apis::meta::v1::Condition;
use k8s_openapi::jiff::Timestamp;
use kube::runtime::events::EventType;
use kube::ResourceExt;

use super::status::{patch_status, replace_conditions};
use crate::conditions;
use crate::context::{publish_event, Context};
use crate::crd::{OutboxSystem, OutboxSystemSpec, OutboxSystemStatus};
use crate::error::Result;
use crate::image_policy::{self, ImagePolicy};
use crate::schema_owner::Claim;
use crate::system_status::types;
use crate::validation::validate;

/// Why the operator will not reconcile a system: `conditions` turn False and
/// `Degraded` True, all with `reason` and `message`.
#[derive(Debug)]
pub(super) struct Refusal {
    pub(super) reason: &'static str,
    pub(super) message: String,
    pub(super) conditions: &'static [&'static str],
}

/// The refusal of a spec that fails validation (pure, no client).
pub(super) fn invalid_spec(name: &str, spec: &OutboxSystemSpec) -> Option<Refusal> {
    let problems = validate(name, spec);
    (!problems.is_empty()).then(|| Refusal {
        reason: "InvalidSpec",
        message: problems.join("; "),
        conditions: &[types::READY],
    })
}

/// The refusal of a spec naming an image outside the operator's allowed repositories
/// (pure): nothing of the system is applied.
pub(super) fn image_not_allowed(policy: &ImagePolicy, spec: &OutboxSystemSpec) -> Option<Refusal> {
    let refused = image_policy::system_images_not_allowed(policy, spec);
    (!refused.is_empty()).then(|| Refusal {
        reason: image_policy::REASON,
        message: refused
            .into_iter()
            .map(|r| r.message)
            .collect::<Vec<_>>()
            .join("; "),
        conditions: &[types::READY],
    })
}

/// The refusal of a second system on the topic of another (`namespace/name`) on the
/// same Kafka cluster (pure): the later one is refused, so that neither consumes the
/// other's messages nor deletes the other's topic.
pub(super) fn topic_in_use(spec: &OutboxSystemSpec, other: &str) -> Refusal {
    Refusal {
        reason: "TopicInUse",
        message: format!(
            "topic {} on {} is already used by OutboxSystem {other}: two systems on one topic consume each other's messages; give this one its own spec.topic.name",
            spec.topic.name, spec.kafka.bootstrap_servers
        ),
        conditions: &[types::READY, types::TOPIC_READY],
    }
}

/// The refusal of a system whose outbox schema another system holds (pure).
pub(super) fn schema_in_use(claim: &Claim) -> Refusal {
    Refusal {
        reason: "DatabaseInUse",
        message: format!(
            "the outbox schema {} is held by OutboxSystem {}: two systems on one schema share the relay lock and the consumer ledgers; give this one its own database or schema (search_path in the URL of spec.database.urlSecretRef)",
            claim.schema, claim.holder
        ),
        conditions: &[types::READY],
    }
}

/// When [`report_refusal`] writes and announces.
#[derive(PartialEq)]
pub(super) enum Announce {
    Always,
    /// Only when the conditions do not say it yet (a refusal that is re-checked on
    /// every requeue).
    WhenChanged,
}

/// Writes a refusal into status and announces it with a Warning Event.
pub(super) async fn report_refusal(
    ctx: &Context,
    system: &OutboxSystem,
    current: &OutboxSystemStatus,
    refusal: Refusal,
    announce: Announce,
) -> Result<()> {
    let desired = refusal_conditions(&refusal);
    let merged = conditions::merge(
        &current.conditions,
        &desired,
        system.metadata.generation,
        Timestamp::now(),
    );
    if announce == Announce::WhenChanged && already_said(&current.conditions, &merged) {
        return Ok(());
    }
    let mut status = current.clone();
    status.observed_generation = system.metadata.generation;
    replace_conditions(&mut status.conditions, merged);
    let namespace = system.namespace().unwrap_or_default();
    patch_status(ctx, &namespace, &system.name_any(), &status).await?;
    publish_event(
        ctx,
        system,
        EventType::Warning,
        refusal.reason,
        refusal.message,
    )
    .await;
    Ok(())
}

/// Whether `current` already holds each of `merged` as it is (pure). The refusal owns
/// only its own condition types; a system that ran before it was refused has others
/// too, which must not make every requeue write the status and publish the Warning
/// again.
fn already_said(current: &[Condition], merged: &[Condition]) -> bool {
    merged
        .iter()
        .all(|m| conditions::find(current, &m.type_) == Some(m))
}

/// The conditions a refusal sets (pure): its `conditions` False and `Degraded` True,
/// all with its reason and message.
fn refusal_conditions(refusal: &Refusal) -> Vec<conditions::Desired> {
    let mut desired: Vec<conditions::Desired> = refusal
        .conditions
        .iter()
        .map(|t| conditions::Desired::no(t, refusal.reason, refusal.message.clone()))
        .collect();
    desired.push(conditions::Desired::yes(
        types::DEGRADED,
        refusal.reason,
        refusal.message.clone(),
    ));
    desired
}

#[cfg(test)]
#[path = "refusal_tests.rs"]
mod tests;
