//! The groups' autoscalers: whether KEDA can scale this system (API discovery, once per
//! reconcile, and the Kafka settings its trigger would need), the KEDA ScaledObjects
//! applied server-side, and those no longer wanted deleted.

use std::collections::BTreeMap;

use k8s_openapi::ByteString;
use kube::api::{DeleteParams, ListParams};
use kube::runtime::events::EventType;
use kube::{Api, Resource, ResourceExt};
use tracing::{info, warn};

use super::children::unwanted_children;
use crate::context::{publish_event, Context};
use crate::crd::OutboxSystem;
use crate::error::{Error, Result};
use crate::server_side_apply::server_side_apply;
use crate::workloads::{self, Keda, ScaledObject};

/// The client-settings key whose value says whether Kafka is reached over TLS or SASL.
const SECURITY_PROTOCOL_KEY: &str = "KAFKA_CLIENT_SECURITY_PROTOCOL";

/// Whether KEDA can scale this system's groups: the API server asked once whether it
/// serves keda.sh/v1alpha1 ScaledObjects, and the client settings' security protocol
/// ([`workloads::keda`]).
pub(super) async fn find_keda(
    ctx: &Context,
    client_settings: &BTreeMap<String, ByteString>,
) -> Result<Keda> {
    let served = scaled_objects_served(&ctx.client).await?;
    let protocol = client_settings
        .get(SECURITY_PROTOCOL_KEY)
        .map(|v| String::from_utf8_lossy(&v.0).into_owned());
    Ok(workloads::keda(served, protocol.as_deref()))
}

/// Whether the API server serves ScaledObjects in keda.sh/v1alpha1 (discovery: a 404
/// for the group version means it does not).
async fn scaled_objects_served(client: &kube::Client) -> Result<bool> {
    let group_version = ScaledObject::api_version(&());
    match client.list_api_group_resources(&group_version).await {
        Ok(list) => Ok(list
            .resources
            .iter()
            .any(|r| r.name == ScaledObject::plural(&()))),
        Err(kube::Error::Api(status)) if status.code == 404 => Ok(false),
        Err(source) => Err(Error::Kube {
            action: format!("discovering {group_version}"),
            source,
        }),
    }
}

/// Applies the `wanted` ScaledObjects and deletes the system's others (groups removed,
/// no longer autoscaled, or switched to mode external). Without KEDA there are none to
/// apply and none can exist, so nothing is asked.
pub(super) async fn apply_autoscalers(
    ctx: &Context,
    system: &OutboxSystem,
    namespace: &str,
    keda: &Keda,
    wanted: &[ScaledObject],
) -> Result<()> {
    if !keda.served() {
        return Ok(());
    }
    let api: Api<ScaledObject> = Api::namespaced(ctx.client.clone(), namespace);
    for object in wanted {
        server_side_apply(&api, object).await?;
    }
    let selector =
        ListParams::default().labels(&outbox_contract::labels::consumers_of(&system.name_any()));
    let found = match api.list_metadata(&selector).await {
        Ok(list) => list.items,
        // An operator whose RBAC predates autoscaling, on a cluster with KEDA: a system
        // that wants no ScaledObject is not held up by it.
        Err(kube::Error::Api(status)) if status.code == 403 && wanted.is_empty() => {
            warn!(outboxsystem = %system.name_any(), "may not list ScaledObjects (the chart's RBAC grants it): none pruned");
            return Ok(());
        }
        Err(source) => {
            return Err(Error::Kube {
                action: "listing ScaledObjects".to_string(),
                source,
            })
        }
    };
    for child in unwanted_children(system, &found, wanted) {
        info!(outboxsystem = %system.name_any(), scaled_object = %child, "deleting a ScaledObject no longer wanted");
        api.delete(&child, &DeleteParams::background())
            .await
            .map_err(Error::kube(format!("deleting ScaledObject {child}")))?;
        publish_event(
            ctx,
            system,
            EventType::Normal,
            "ScaledObjectRemoved",
            format!("deleted ScaledObject {child}: its group is no longer autoscaled by KEDA"),
        )
        .await;
    }
    Ok(())
}
