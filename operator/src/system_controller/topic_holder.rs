//! One system per topic: the system that holds a topic on a Kafka cluster is the one
//! created first on it; a later one is refused.

use kube::api::ListParams;
use kube::{Api, ResourceExt};

use crate::context::Context;
use crate::crd::OutboxSystem;
use crate::error::{Error, Result};
use crate::host_names::qualify_bootstrap_servers;

/// The OutboxSystem (`namespace/name`) created before this one that uses the same topic
/// on the same Kafka cluster (`cluster_id`: this system's, when it could be read), if
/// any. Looks across all namespaces when the operator may, else in this one.
pub(super) async fn topic_taken_by(
    ctx: &Context,
    system: &OutboxSystem,
    namespace: &str,
    cluster_id: Option<&str>,
) -> Result<Option<String>> {
    let all: Api<OutboxSystem> = Api::all(ctx.client.clone());
    let others = match all.list(&ListParams::default()).await {
        Ok(list) => list.items,
        Err(kube::Error::Api(e)) if e.code == 403 => {
            let here: Api<OutboxSystem> = Api::namespaced(ctx.client.clone(), namespace);
            here.list(&ListParams::default())
                .await
                .map_err(Error::kube("listing OutboxSystems".to_string()))?
                .items
        }
        Err(e) => return Err(Error::kube("listing OutboxSystems".to_string())(e)),
    };
    Ok(first_on_topic(system, cluster_id, &others))
}

/// Among `others`, the system (`namespace/name`) that holds `system`'s topic (pure):
/// the one created first of those on the same topic of the same Kafka, when it was
/// created before `system` (ties broken by namespace and name); systems being deleted
/// do not count. The same Kafka is the same cluster id (`cluster_id`, this system's
/// now, against the other's `status.topic.clusterId`, its last look), however the
/// bootstrap servers are written; where either id is unknown, the same bootstrap
/// servers (qualified by each one's namespace).
fn first_on_topic(
    system: &OutboxSystem,
    cluster_id: Option<&str>,
    others: &[OutboxSystem],
) -> Option<String> {
    let bootstrap_of = |s: &OutboxSystem| {
        qualify_bootstrap_servers(
            &s.spec.kafka.bootstrap_servers,
            &s.namespace().unwrap_or_default(),
        )
    };
    let ours = bootstrap_of(system);
    let same_kafka = |other: &OutboxSystem| {
        let theirs = other
            .status
            .as_ref()
            .and_then(|s| s.topic.as_ref())
            .and_then(|t| t.cluster_id.as_deref());
        match (cluster_id, theirs) {
            (Some(ours), Some(theirs)) => ours == theirs,
            _ => bootstrap_of(other) == ours,
        }
    };
    let key = |s: &OutboxSystem| {
        (
            s.metadata.creation_timestamp.clone().map(|t| t.0),
            s.namespace().unwrap_or_default(),
            s.name_any(),
        )
    };
    others
        .iter()
        .filter(|o| o.uid() != system.uid() && o.metadata.deletion_timestamp.is_none())
        .filter(|o| o.spec.topic.name == system.spec.topic.name && same_kafka(o))
        .filter(|o| key(o) < key(system))
        .min_by_key(|o| key(o))
        .map(|o| format!("{}/{}", o.namespace().unwrap_or_default(), o.name_any()))
}

#[cfg(test)]
#[path = "topic_holder_tests.rs"]
mod tests;
