//! Cleanup of a deleted system (the topic finalizer): its topic kept or deleted as its
//! `deletionPolicy` and the topic's ownership say, and given up on after a time.

use std::sync::Arc;

use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use k8s_openapi::jiff::Timestamp;
use kube::runtime::controller::Action;
use kube::runtime::events::EventType;
use kube::ResourceExt;
use tracing::{info, warn};

use super::kafka_reach::{connect_kafka, read_client_settings, KafkaReach};
use crate::context::{publish_event, Context};
use crate::crd::{DeletionPolicy, OutboxSystem};
use crate::error::{Error, Result};
use crate::topic_ownership;

/// Annotation that lets an OutboxSystem with `deletionPolicy: Delete` go at once,
/// leaving its topic in Kafka (for a Kafka that is gone for good).
pub const SKIP_TOPIC_DELETION_ANNOTATION: &str = "outbox.dev/skip-topic-deletion";

/// What came of deleting the topic on the cluster reached.
enum Deletion {
    Deleted,
    /// Kept: the cluster reached is not the one the operator created it on.
    Kept(String),
}

/// Deletes the system's topic through the Kafka client settings its spec names, when
/// the cluster reached is the one the operator created it on
/// ([`topic_ownership::may_delete`], pure).
async fn delete_topic(ctx: &Context, namespace: &str, system: &OutboxSystem) -> Result<Deletion> {
    let client_settings = read_client_settings(ctx, namespace, &system.spec).await?;
    let (admin, cluster_id) = match connect_kafka(namespace, &system.spec, &client_settings).await {
        KafkaReach::Reached { admin, cluster_id } => (admin, cluster_id),
        KafkaReach::NotReached { message, .. } => {
            return Err(Error::TopicNotReconciled {
                topic: system.spec.topic.name.clone(),
                message,
            })
        }
    };
    if let Err(kept) = topic_ownership::may_delete(system, &cluster_id) {
        return Ok(Deletion::Kept(kept));
    }
    admin.delete_topic(&system.spec.topic.name).await?;
    Ok(Deletion::Deleted)
}

/// Lets a deleted system go, as its steps: forget when its status was written → keep
/// the topic (deletionPolicy Retain, or a topic that existed before the system) or
/// delete it ([`delete_our_topic`]) → announce. Works even if Apply never ran.
pub(super) async fn cleanup(system: Arc<OutboxSystem>, ctx: Arc<Context>) -> Result<Action> {
    if let (Some(uid), Ok(mut writes)) = (system.uid(), ctx.status_writes.lock()) {
        writes.remove(&uid);
    }
    let topic = &system.spec.topic.name;
    let note = match system.spec.topic.deletion_policy {
        DeletionPolicy::Retain => {
            info!(topic = %topic, "keeping the topic (deletionPolicy Retain)");
            format!("kept topic {topic} (deletionPolicy Retain)")
        }
        DeletionPolicy::Delete => match topic_ownership::kept_on_any_cluster(&system) {
            Some(note) => {
                info!(topic = %topic, "{note}");
                note
            }
            None => return delete_our_topic(&ctx, &system).await,
        },
    };
    publish_event(
        &ctx,
        system.as_ref(),
        EventType::Normal,
        "TopicRetained",
        note,
    )
    .await;
    Ok(Action::await_change())
}

/// Deletes the topic the operator created for the system. When that fails, the
/// decision is [`after_failed_deletion`]'s (pure): retry (an error, so the finalizer
/// stays) until `topic_deletion_timeout` has passed since the deletion, then, or at
/// once with the skip annotation, let the system go and leave the topic behind.
async fn delete_our_topic(ctx: &Context, system: &OutboxSystem) -> Result<Action> {
    let namespace = system
        .namespace()
        .ok_or(Error::MissingObjectKey("metadata.namespace"))?;
    let topic = &system.spec.topic.name;
    let skip = skips_topic_deletion(system);
    let deleted = if skip {
        Err(format!("annotation {SKIP_TOPIC_DELETION_ANNOTATION}=true"))
    } else {
        delete_topic(ctx, &namespace, system)
            .await
            .map_err(|e| e.to_string())
    };
    let why = match deleted {
        Ok(Deletion::Deleted) => {
            info!(topic = %topic, "deleted the topic (deletionPolicy Delete)");
            let note = format!("deleted topic {topic} (deletionPolicy Delete)");
            publish_event(ctx, system, EventType::Normal, "TopicDeleted", note).await;
            return Ok(Action::await_change());
        }
        Ok(Deletion::Kept(note)) => {
            warn!(topic = %topic, "{note}");
            publish_event(ctx, system, EventType::Normal, "TopicRetained", note).await;
            return Ok(Action::await_change());
        }
        Err(why) => why,
    };
    let waited = seconds_since(
        system.metadata.deletion_timestamp.as_ref(),
        Timestamp::now(),
    );
    let limit = ctx.settings.topic_deletion_timeout.as_secs();
    match after_failed_deletion(topic, &why, skip, waited, limit) {
        FailedDeletion::Retry { note } => {
            publish_event(ctx, system, EventType::Warning, "TopicDeletionFailed", note).await;
            Err(Error::TopicNotReconciled {
                topic: topic.clone(),
                message: why,
            })
        }
        FailedDeletion::LeaveBehind { note } => {
            warn!(topic = %topic, "{note}");
            publish_event(ctx, system, EventType::Warning, "TopicLeftBehind", note).await;
            Ok(Action::await_change())
        }
    }
}

/// Whether the system carries `outbox.dev/skip-topic-deletion: "true"` (pure).
fn skips_topic_deletion(system: &OutboxSystem) -> bool {
    system
        .annotations()
        .get(SKIP_TOPIC_DELETION_ANNOTATION)
        .is_some_and(|v| v == "true")
}

/// Whole seconds from `since` to `now`; 0 without `since` or when it lies ahead (pure).
fn seconds_since(since: Option<&Time>, now: Timestamp) -> u64 {
    let seconds = since
        .map(|t| now.duration_since(t.0).as_secs())
        .unwrap_or(0);
    u64::try_from(seconds).unwrap_or(0)
}

/// What follows a failed deletion of the topic, with the note of its Warning Event.
#[derive(Debug, PartialEq)]
enum FailedDeletion {
    /// Try again: the deletion keeps the system until the topic is gone.
    Retry { note: String },
    /// Let the system go without its topic.
    LeaveBehind { note: String },
}

/// The decision after the topic could not be deleted (`why`), `waited` seconds after
/// the system's deletion, `limit` the seconds the operator keeps trying (pure): with
/// the skip annotation it gives up at once.
fn after_failed_deletion(
    topic: &str,
    why: &str,
    skip: bool,
    waited: u64,
    limit: u64,
) -> FailedDeletion {
    if !skip && waited < limit {
        return FailedDeletion::Retry {
            note: format!(
                "could not delete topic {topic} ({why}); retrying, and giving up after {limit} s (or now, with annotation {SKIP_TOPIC_DELETION_ANNOTATION}=true)"
            ),
        };
    }
    FailedDeletion::LeaveBehind {
        note: format!(
            "left topic {topic} behind ({why}{}): the OutboxSystem is deleted without it; delete the topic in Kafka yourself",
            if skip {
                String::new()
            } else {
                format!("; gave up after {waited} s")
            }
        ),
    }
}

#[cfg(test)]
#[path = "cleanup_tests.rs"]
mod tests;
