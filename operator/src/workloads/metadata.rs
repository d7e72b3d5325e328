//! The metadata every child carries: its name and namespace, the labels its pods are
//! selected by, and the system as its controller.

use std::collections::BTreeMap;

use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;

use super::{Owner, WORKER_BINARY};

/// Labels of a child (and the selector of its pods).
pub fn labels(owner: &Owner, component: &str, group: Option<&str>) -> BTreeMap<String, String> {
    let mut labels = worker_labels(&owner.name, component);
    if let Some(group) = group {
        labels.insert(
            outbox_contract::labels::GROUP.to_string(),
            group.to_string(),
        );
    }
    labels
}

/// The labels every worker pod of OutboxSystem `system` in role `component` carries
/// (the load-test runner's too).
pub fn worker_labels(system: &str, component: &str) -> BTreeMap<String, String> {
    BTreeMap::from([
        (
            outbox_contract::labels::NAME.to_string(),
            WORKER_BINARY.to_string(),
        ),
        (
            outbox_contract::labels::INSTANCE.to_string(),
            system.to_string(),
        ),
        (
            outbox_contract::labels::MANAGED_BY.to_string(),
            outbox_contract::labels::OPERATOR.to_string(),
        ),
        (
            outbox_contract::labels::COMPONENT.to_string(),
            component.to_string(),
        ),
        (
            outbox_contract::labels::SYSTEM.to_string(),
            system.to_string(),
        ),
    ])
}

pub(super) fn meta(owner: &Owner, name: &str, labels: BTreeMap<String, String>) -> ObjectMeta {
    ObjectMeta {
        name: Some(name.to_string()),
        namespace: Some(owner.namespace.clone()),
        labels: Some(labels),
        owner_references: Some(vec![owner.owner_ref.clone()]),
        ..ObjectMeta::default()
    }
}
