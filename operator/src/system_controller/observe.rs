//! Observation: what the reconcile sees of the system after applying it, for its
//! status: pods ready, consumer lag, the backlog, who scales each group.

use std::collections::BTreeMap;

use k8s_openapi::api::apps::v1::Deployment;

use crate::backlog::{BacklogUnavailable, DatabaseSession};
use crate::context::Context;
use crate::crd::OutboxSystem;
use crate::kafka::KafkaAdmin;
use crate::system_status::{AutoscalingObservation, GroupObservation, Observation, TopicOutcome};
use crate::workloads;

use super::children::Applied;

/// What the reconcile observed: pods ready and wanted (an autoscaled group's replicas
/// as its Deployment has them), consumer lag (read by each group's Kafka group id,
/// shown under its declared name), the backlog, whether KEDA scales the groups that ask.
pub(super) async fn observe(
    ctx: &Context,
    system: &OutboxSystem,
    topic: &TopicOutcome,
    admin: Option<&KafkaAdmin>,
    database: &std::result::Result<DatabaseSession, BacklogUnavailable>,
    applied: &Applied,
) -> Observation {
    let spec = &system.spec;
    let kafka_group_ids: Vec<String> = spec
        .consumers
        .groups
        .iter()
        .map(|g| system.kafka_group_id(&g.name))
        .collect();
    let lags = match (admin, topic.observed.as_ref()) {
        (Some(admin), Some(found)) => {
            admin
                .consumer_lag(&spec.topic.name, found.partitions, &kafka_group_ids)
                .await
        }
        _ => BTreeMap::new(),
    };
    let ready = |d: &Deployment| {
        d.status
            .as_ref()
            .and_then(|s| s.ready_replicas)
            .unwrap_or(0)
    };
    let replicas = |d: &Deployment| d.spec.as_ref().and_then(|s| s.replicas);
    Observation {
        topic: topic.clone(),
        producers: (ready(&applied.producer), spec.producers.replicas),
        groups: spec
            .consumers
            .groups
            .iter()
            .zip(&applied.consumers)
            .zip(kafka_group_ids)
            .map(|((g, d), kafka_group_id)| GroupObservation {
                name: g.name.clone(),
                ready: ready(d),
                desired: replicas(d).unwrap_or(g.replicas),
                lag: lags.get(&kafka_group_id).copied().flatten(),
                kafka_group_id,
                autoscaling: g.autoscaling.as_ref().map(|a| a.mode),
            })
            .collect(),
        autoscaling: AutoscalingObservation {
            keda_groups: workloads::keda_groups(spec),
            keda: applied.keda.clone(),
        },
        backlog: match database {
            Ok(session) => session.backlog(ctx.settings.stall_after).await,
            Err(e) => Err(e.clone()),
        },
        stall_after: ctx.settings.stall_after,
    }
}
