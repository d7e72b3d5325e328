//! The gate: the checks before anything of a system is applied, and whether the
//! reconcile goes on past them (or stops, with the refusal or pause written).

use std::collections::BTreeMap;

use k8s_openapi::jiff::Timestamp;
use k8s_openapi::ByteString;
use kube::runtime::controller::Action;
use kube::runtime::events::EventType;
use kube::ResourceExt;
use tracing::warn;

use super::database::{open_database, schema_taken_by};
use super::kafka_reach::{connect_kafka, read_client_settings, KafkaReach};
use super::refusal::{
    image_not_allowed, invalid_spec, report_refusal, schema_in_use, topic_in_use, Announce, Refusal,
};
use super::status::{patch_status, replace_conditions};
use super::topic_holder::topic_taken_by;
use crate::backlog::{BacklogUnavailable, DatabaseSession};
use crate::conditions;
use crate::context::{publish_event, Context};
use crate::crd::{OutboxSystem, OutboxSystemStatus};
use crate::error::{Error, Result};
use crate::system_status::types;

/// Whether the reconcile goes on: with the database session it opened (or why there is
/// none) and the Kafka it reached, or stopped with the action to take.
pub(super) enum Gate {
    Go {
        database: std::result::Result<DatabaseSession, BacklogUnavailable>,
        kafka: Box<KafkaReach>,
        /// The Kafka client-settings Secret's data (empty without one).
        client_settings: BTreeMap<String, ByteString>,
    },
    Stop(Action),
}

/// The checks before anything is applied, in order: a valid spec → reach Kafka → a
/// topic no other system holds on that cluster → open the database session and claim
/// the schema → not paused. A refusal (each built pure) is written into status with an
/// Event; a pause too.
pub(super) async fn gate(
    ctx: &Context,
    system: &OutboxSystem,
    namespace: &str,
    current: &OutboxSystemStatus,
) -> Result<Gate> {
    if let Some(refusal) = invalid_spec(&system.name_any(), &system.spec) {
        let message = refusal.message.clone();
        report_refusal(ctx, system, current, refusal, Announce::Always).await?;
        return Err(Error::InvalidSpec(message));
    }
    if let Some(refusal) = image_not_allowed(&ctx.settings.image_policy, &system.spec) {
        let message = refusal.message.clone();
        warn!(%message, "image not allowed; nothing applied");
        report_refusal(ctx, system, current, refusal, Announce::WhenChanged).await?;
        return Err(Error::InvalidSpec(message));
    }
    let Some(client_settings) = client_settings(ctx, system, namespace, current).await? else {
        // Its workers could not start; those running are left as they are.
        return Ok(Gate::Stop(Action::requeue(std::time::Duration::from_secs(
            15,
        ))));
    };
    let kafka = connect_kafka(namespace, &system.spec, &client_settings).await;
    if let Some(other) = topic_taken_by(ctx, system, namespace, kafka.cluster_id()).await? {
        let refusal = topic_in_use(&system.spec, &other);
        report_refusal(ctx, system, current, refusal, Announce::WhenChanged).await?;
        return Ok(Gate::Stop(Action::requeue(std::time::Duration::from_secs(
            60,
        ))));
    }
    // One session for the schema claim and the backlog; unreachable, it is reported in
    // BacklogObserved and the workers check the claim themselves.
    let mut database = open_database(ctx, namespace, &system.spec).await;
    if let Ok(session) = database.as_mut() {
        if let Some(claim) = schema_taken_by(ctx, system, namespace, session).await {
            let refusal = schema_in_use(&claim);
            report_refusal(ctx, system, current, refusal, Announce::WhenChanged).await?;
            // Soon again: the holder's deletion is not an event of this system.
            return Ok(Gate::Stop(Action::requeue(std::time::Duration::from_secs(
                20,
            ))));
        }
    }
    if system.spec.paused {
        record_pause(ctx, system, namespace, current).await?;
        return Ok(Gate::Stop(Action::await_change()));
    }
    Ok(Gate::Go {
        database,
        kafka: Box::new(kafka),
        client_settings,
    })
}

/// Writes `Paused` into status, with an Event when the system was not paused before.
async fn record_pause(
    ctx: &Context,
    system: &OutboxSystem,
    namespace: &str,
    current: &OutboxSystemStatus,
) -> Result<()> {
    let conditions = conditions::merge(
        &current.conditions,
        &[conditions::Desired::yes(
            types::PAUSED,
            "Paused",
            "spec.paused is true: the operator leaves the topic and workloads as they are",
        )],
        system.metadata.generation,
        Timestamp::now(),
    );
    let was_paused =
        conditions::find(&current.conditions, types::PAUSED).is_some_and(|c| c.status == "True");
    let mut status = current.clone();
    status.observed_generation = system.metadata.generation;
    replace_conditions(&mut status.conditions, conditions);
    patch_status(ctx, namespace, &system.name_any(), &status).await?;
    if !was_paused {
        publish_event(
            ctx,
            system,
            EventType::Normal,
            "Paused",
            "reconciliation paused".into(),
        )
        .await;
    }
    Ok(())
}

/// The data of the Kafka client-settings Secret (empty without one); `None` while the
/// Secret is missing, after that is written into status (TopicReady and Ready False,
/// `KafkaSettingsSecretMissing`) and announced once: nothing is applied then, since the
/// workers' environment names the Secret's keys.
async fn client_settings(
    ctx: &Context,
    system: &OutboxSystem,
    namespace: &str,
    current: &OutboxSystemStatus,
) -> Result<Option<BTreeMap<String, ByteString>>> {
    match read_client_settings(ctx, namespace, &system.spec).await {
        Ok(data) => Ok(Some(data)),
        Err(error @ Error::Secret { .. }) => {
            let refusal = Refusal {
                reason: "KafkaSettingsSecretMissing",
                message: error.to_string(),
                conditions: &[types::READY, types::TOPIC_READY],
            };
            report_refusal(ctx, system, current, refusal, Announce::WhenChanged).await?;
            Ok(None)
        }
        Err(error) => Err(error),
    }
}
