//! Handing a group's replicas over to its autoscaler without a dip. A Deployment the
//! operator applied with `replicas` and now applies without (its group became
//! autoscaled) would have the field removed, and Kubernetes would default it to 1 until
//! the autoscaler acts: a group of 6 consumers would drop to 1 under load. So first a
//! second field manager applies the current count, sharing the field; the operator's
//! own apply then lets go of it and the field stays, until the HPA changes it (the
//! Kubernetes documentation's way to transfer ownership of `replicas` to an HPA).

use k8s_openapi::api::apps::v1::Deployment;
use kube::api::{Patch, PatchParams};
use kube::Api;
use tracing::info;

use crate::context::MANAGER;
use crate::error::{Error, Result};

/// The field manager that keeps `replicas` while the operator lets go of it.
pub const HANDOVER_MANAGER: &str = "outbox-operator-replica-handover";

/// Whether `manager` owns `spec.replicas` of `deployment` through an apply (pure).
pub fn applies_replicas(deployment: &Deployment, manager: &str) -> bool {
    deployment
        .metadata
        .managed_fields
        .iter()
        .flatten()
        .filter(|entry| entry.manager.as_deref() == Some(manager))
        .filter(|entry| entry.operation.as_deref() == Some("Apply"))
        .filter_map(|entry| entry.fields_v1.as_ref())
        .any(|fields| fields.0["f:spec"]["f:replicas"].is_object())
}

/// Before Deployment `name` is applied without `replicas`: when the operator's apply
/// still owns them, [`HANDOVER_MANAGER`] applies the current count first.
pub async fn hand_over_replicas(api: &Api<Deployment>, name: &str) -> Result<()> {
    let Some(current) = api
        .get_opt(name)
        .await
        .map_err(Error::kube(format!("reading Deployment {name}")))?
    else {
        return Ok(());
    };
    let Some(replicas) = current.spec.as_ref().and_then(|s| s.replicas) else {
        return Ok(());
    };
    if !applies_replicas(&current, MANAGER) {
        return Ok(());
    }
    let body = serde_json::json!({
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": {"name": name},
        "spec": {"replicas": replicas},
    });
    api.patch(
        name,
        &PatchParams::apply(HANDOVER_MANAGER).force(),
        &Patch::Apply(&body),
    )
    .await
    .map_err(Error::kube(format!(
        "handing the replicas of Deployment {name} over"
    )))?;
    info!(deployment = %name, replicas, "replicas handed over to the group's autoscaler at their current count");
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::{FieldsV1, ManagedFieldsEntry};

    fn with_fields(entries: Vec<(&str, &str, serde_json::Value)>) -> Deployment {
        let mut d = Deployment::default();
        d.metadata.managed_fields = Some(
            entries
                .into_iter()
                .map(|(manager, operation, fields)| ManagedFieldsEntry {
                    manager: Some(manager.into()),
                    operation: Some(operation.into()),
                    fields_v1: Some(FieldsV1(fields)),
                    ..ManagedFieldsEntry::default()
                })
                .collect(),
        );
        d
    }

    #[test]
    fn the_operator_applying_replicas_is_seen_and_an_update_or_another_manager_is_not() {
        let replicas = serde_json::json!({"f:spec": {"f:replicas": {}, "f:template": {}}});
        let template = serde_json::json!({"f:spec": {"f:template": {}}});
        assert!(applies_replicas(
            &with_fields(vec![(MANAGER, "Apply", replicas.clone())]),
            MANAGER
        ));
        assert!(!applies_replicas(
            &with_fields(vec![(MANAGER, "Apply", template.clone())]),
            MANAGER
        ));
        assert!(!applies_replicas(
            &with_fields(vec![
                (MANAGER, "Apply", template),
                ("kube-controller-manager", "Update", replicas.clone())
            ]),
            MANAGER
        ));
        assert!(!applies_replicas(
            &with_fields(vec![(MANAGER, "Update", replicas)]),
            MANAGER
        ));
        assert!(!applies_replicas(&Deployment::default(), MANAGER));
    }
}
