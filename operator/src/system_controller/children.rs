//! The children: built pure (`workloads`), applied server-side, the system's ConfigMap
//! rid of keys the operator did not set, and the children no longer wanted deleted;
//! the groups' KEDA ScaledObjects through `autoscalers`.

use std::collections::{BTreeMap, BTreeSet};

use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::{ConfigMap, Service};
use k8s_openapi::api::policy::v1::PodDisruptionBudget;
use kube::api::{DeleteParams, ListParams, Patch, PatchParams};
use kube::runtime::events::EventType;
use kube::{Api, ResourceExt};
use tracing::{info, warn};

use super::autoscalers::apply_autoscalers;
use super::replica_handover::hand_over_replicas;
use crate::context::{publish_event, Context};
use crate::crd::{OutboxSystem, OutboxSystemSpec};
use crate::error::{Error, Result};
use crate::server_side_apply::server_side_apply;
use crate::workloads::{self, Keda};

/// What `apply_children` applied, for the observation.
pub(super) struct Applied {
    /// The producer Deployment as applied.
    pub producer: Deployment,
    /// Each group's Deployment as applied, in spec order.
    pub consumers: Vec<Deployment>,
    /// Whether KEDA could scale the groups that ask for it.
    pub keda: Keda,
}

/// Builds the children (pure) and applies them; returns the Deployments as applied.
/// `client_setting_keys`: the keys of the Kafka client-settings Secret; `keda`: whether
/// KEDA can scale the groups that ask for it (`autoscalers::find_keda`).
pub(super) async fn apply_children(
    ctx: &Context,
    system: &OutboxSystem,
    namespace: &str,
    client_setting_keys: &[String],
    keda: Keda,
) -> Result<Applied> {
    let spec = &system.spec;
    let owner = workloads::owner_of(system).ok_or(Error::MissingObjectKey("metadata.uid"))?;
    let children = workloads::build(
        &owner,
        spec,
        &ctx.settings.worker_image,
        client_setting_keys,
        &keda,
    );
    let client = ctx.client.clone();
    let deployments: Api<Deployment> = Api::namespaced(client.clone(), namespace);
    let services: Api<Service> = Api::namespaced(client.clone(), namespace);
    let config_maps: Api<ConfigMap> = Api::namespaced(client.clone(), namespace);
    let applied = server_side_apply(&config_maps, &children.config_map).await?;
    remove_foreign_config_keys(ctx, system, &config_maps, &applied, &children.config_map).await?;
    let producer = server_side_apply(&deployments, &children.producer).await?;
    server_side_apply(&services, &children.producer_service).await?;
    let mut consumers = Vec::new();
    for deployment in &children.consumers {
        if deployment
            .spec
            .as_ref()
            .is_some_and(|s| s.replicas.is_none())
        {
            let name = deployment.metadata.name.as_deref().unwrap_or_default();
            hand_over_replicas(&deployments, name).await?;
        }
        consumers.push(server_side_apply(&deployments, deployment).await?);
    }
    for service in &children.consumer_services {
        server_side_apply(&services, service).await?;
    }
    let budgets: Api<PodDisruptionBudget> = Api::namespaced(client.clone(), namespace);
    for budget in &children.budgets {
        server_side_apply(&budgets, budget).await?;
    }
    prune_removed_groups(ctx, system, namespace, spec).await?;
    prune_unwanted_budgets(ctx, system, namespace, &children.budgets).await?;
    apply_autoscalers(ctx, system, namespace, &keda, &children.scaled_objects).await?;
    Ok(Applied {
        producer,
        consumers,
        keda,
    })
}

/// Keys of the system's ConfigMap as applied that the operator did not set (pure):
/// `data` keys, then `binaryData` keys, each sorted.
fn foreign_config_keys(applied: &ConfigMap, desired: &ConfigMap) -> (Vec<String>, Vec<String>) {
    fn extra<V, W>(
        applied: &Option<BTreeMap<String, V>>,
        desired: &Option<BTreeMap<String, W>>,
    ) -> Vec<String> {
        applied
            .iter()
            .flatten()
            .map(|(key, _)| key)
            .filter(|key| !desired.as_ref().is_some_and(|d| d.contains_key(*key)))
            .cloned()
            .collect()
    }
    (
        extra(&applied.data, &desired.data),
        extra(&applied.binary_data, &desired.binary_data),
    )
}

/// The JSON merge patch that removes `data` keys `data` and `binaryData` keys `binary`
/// (pure).
fn removal_patch(data: &[String], binary: &[String]) -> serde_json::Value {
    let nulls = |keys: &[String]| {
        keys.iter()
            .map(|k| (k.clone(), serde_json::Value::Null))
            .collect::<serde_json::Map<_, _>>()
    };
    let mut patch = serde_json::Map::new();
    if !data.is_empty() {
        patch.insert("data".into(), nulls(data).into());
    }
    if !binary.is_empty() {
        patch.insert("binaryData".into(), nulls(binary).into());
    }
    patch.into()
}

/// Removes every key of the system's ConfigMap the operator did not set: the workers
/// import the whole ConfigMap as their environment, so a key added by anyone who may
/// patch ConfigMaps (`KAFKA_CLIENT_BOOTSTRAP_SERVERS`) would otherwise reach them at
/// their next start. Server-side apply alone keeps fields other managers own, hence
/// this patch after it; logged and announced with a Warning Event naming the keys.
async fn remove_foreign_config_keys(
    ctx: &Context,
    system: &OutboxSystem,
    config_maps: &Api<ConfigMap>,
    applied: &ConfigMap,
    desired: &ConfigMap,
) -> Result<()> {
    let (data, binary) = foreign_config_keys(applied, desired);
    if data.is_empty() && binary.is_empty() {
        return Ok(());
    }
    let name = desired.name_any();
    let keys = data
        .iter()
        .chain(&binary)
        .cloned()
        .collect::<Vec<_>>()
        .join(", ");
    warn!(config_map = %name, %keys, "removing keys the operator did not set");
    let params = PatchParams {
        field_manager: Some(crate::context::MANAGER.to_string()),
        ..PatchParams::default()
    };
    config_maps
        .patch(&name, &params, &Patch::Merge(removal_patch(&data, &binary)))
        .await
        .map_err(Error::kube(format!(
            "removing keys {keys} from ConfigMap {name}"
        )))?;
    publish_event(
        ctx,
        system,
        EventType::Warning,
        "ConfigKeysRemoved",
        format!("removed keys the operator did not set from ConfigMap {name}: {keys} (the operator owns every key of it)"),
    )
    .await;
    Ok(())
}

/// Whether `meta` names `system` as its controller.
fn controlled_by(
    system: &OutboxSystem,
    meta: &k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta,
) -> bool {
    let uid = system.uid();
    meta.owner_references
        .iter()
        .flatten()
        .any(|r| Some(&r.uid) == uid.as_ref() && r.controller == Some(true))
}

/// Deletes the system's PodDisruptionBudgets that are not `wanted`: those of groups no
/// longer in the spec and those switched off (`podDisruptionBudget.enabled: false`).
async fn prune_unwanted_budgets(
    ctx: &Context,
    system: &OutboxSystem,
    namespace: &str,
    wanted: &[PodDisruptionBudget],
) -> Result<()> {
    let selector =
        ListParams::default().labels(&outbox_contract::labels::workers_of(&system.name_any()));
    let budgets: Api<PodDisruptionBudget> = Api::namespaced(ctx.client.clone(), namespace);
    let found = budgets
        .list(&selector)
        .await
        .map_err(Error::kube("listing PodDisruptionBudgets"))?
        .items;
    for child in unwanted_children(system, &found, wanted) {
        info!(budget = %child, "deleting a PodDisruptionBudget no longer wanted");
        budgets
            .delete(&child, &DeleteParams::background())
            .await
            .map_err(Error::kube(format!("deleting PodDisruptionBudget {child}")))?;
        publish_event(
            ctx,
            system,
            EventType::Normal,
            "PodDisruptionBudgetRemoved",
            format!("deleted PodDisruptionBudget {child}"),
        )
        .await;
    }
    Ok(())
}

/// Names of the objects in `found` that `system` controls and that are not `wanted`
/// (pure): what pruning deletes. An object of the same name that another owner
/// controls, or nobody, is left alone.
pub(super) fn unwanted_children<K: kube::Resource, W: kube::Resource>(
    system: &OutboxSystem,
    found: &[K],
    wanted: &[W],
) -> Vec<String> {
    let wanted: BTreeSet<String> = wanted.iter().map(|k| k.name_any()).collect();
    found
        .iter()
        .filter(|k| controlled_by(system, k.meta()))
        .map(|k| k.name_any())
        .filter(|name| !wanted.contains(name))
        .collect()
}

/// Deletes consumer Deployments and Services of groups no longer in the spec.
async fn prune_removed_groups(
    ctx: &Context,
    system: &OutboxSystem,
    namespace: &str,
    spec: &OutboxSystemSpec,
) -> Result<()> {
    let name = system.name_any();
    let wanted: BTreeSet<String> = spec
        .consumers
        .groups
        .iter()
        .map(|g| workloads::consumer_name(&name, &g.name))
        .collect();
    let selector = ListParams::default().labels(&outbox_contract::labels::consumers_of(&name));
    let deployments: Api<Deployment> = Api::namespaced(ctx.client.clone(), namespace);
    for d in deployments
        .list(&selector)
        .await
        .map_err(Error::kube("listing consumer Deployments"))?
    {
        let child = d.name_any();
        if !wanted.contains(&child) && controlled_by(system, &d.metadata) {
            info!(deployment = %child, "deleting the Deployment of a removed consumer group");
            deployments
                .delete(&child, &DeleteParams::background())
                .await
                .map_err(Error::kube(format!("deleting Deployment {child}")))?;
            publish_event(
                ctx,
                system,
                EventType::Normal,
                "ConsumerGroupRemoved",
                format!("deleted Deployment {child}"),
            )
            .await;
        }
    }
    let services: Api<Service> = Api::namespaced(ctx.client.clone(), namespace);
    for s in services
        .list(&selector)
        .await
        .map_err(Error::kube("listing consumer Services"))?
    {
        let child = s.name_any();
        if !wanted.contains(&child) && controlled_by(system, &s.metadata) {
            services
                .delete(&child, &DeleteParams::background())
                .await
                .map_err(Error::kube(format!("deleting Service {child}")))?;
        }
    }
    Ok(())
}

#[cfg(test)]
#[path = "children_tests.rs"]
mod tests;
