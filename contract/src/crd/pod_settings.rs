//! Pod settings a real cluster needs: where the pods of a workload may run (node
//! selector, tolerations, affinity, topology spread, priority), how their images are
//! pulled, and the labels and annotations they carry. One type for every workload the
//! operator builds (producers, each consumer group, the load-test runner), after the
//! k6-operator's `Pod`, with k8s-openapi's own types for each field.

use std::collections::BTreeMap;

use k8s_openapi::api::core::v1::{
    Affinity, LocalObjectReference, Toleration, TopologySpreadConstraint,
};
use kube::KubeSchema;
use serde::{Deserialize, Serialize};

/// Scheduling and metadata of a workload's pods. Every field is optional; an absent
/// field leaves the pod as the operator builds it.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq, Default)]
#[serde(rename_all = "camelCase")]
pub struct PodSettings {
    /// Labels and annotations added to the pods (not to the Deployment or Job itself).
    #[serde(default, skip_serializing_if = "PodMetadata::is_empty")]
    pub metadata: PodMetadata,
    /// Node labels a node must carry for the pods to be scheduled there (the pod's
    /// `nodeSelector`).
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub node_selector: BTreeMap<String, String>,
    /// Taints the pods tolerate (the pod's `tolerations`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 64))]
    pub tolerations: Option<Vec<Toleration>>,
    /// Node affinity and pod (anti-)affinity of the pods (the pod's `affinity`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub affinity: Option<Affinity>,
    /// How the pods spread over zones, nodes or other topology domains (the pod's
    /// `topologySpreadConstraints`). A constraint without `labelSelector` gets the
    /// workload's own pod labels as its selector, so it counts exactly the pods of that
    /// producer set or consumer group.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 16))]
    pub topology_spread_constraints: Option<Vec<TopologySpreadConstraint>>,
    /// PriorityClass of the pods (the pod's `priorityClassName`); the class must exist.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 253))]
    pub priority_class_name: Option<String>,
    /// Secrets in the same namespace holding registry credentials for pulling the
    /// worker image (the pod's `imagePullSecrets`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 16))]
    pub image_pull_secrets: Option<Vec<LocalObjectReference>>,
}

/// Labels and annotations a user adds to pods.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq, Default)]
#[serde(rename_all = "camelCase")]
#[x_kube(validation = Rule::new("!has(self.labels) || !['app.kubernetes.io/name', 'app.kubernetes.io/instance', 'app.kubernetes.io/managed-by', 'app.kubernetes.io/component', 'outbox.dev/system', 'outbox.dev/group', 'outbox.dev/loadtest'].exists(k, k in self.labels)").message("metadata.labels may not set the operator's own labels (app.kubernetes.io/name, app.kubernetes.io/instance, app.kubernetes.io/managed-by, app.kubernetes.io/component, outbox.dev/system, outbox.dev/group, outbox.dev/loadtest): workloads, budgets and the load-test runner select pods by them").field_path(".labels"))]
pub struct PodMetadata {
    /// Labels added to the pods. The operator's own labels (`app.kubernetes.io/name`,
    /// `instance`, `managed-by`, `component`, `outbox.dev/system`, `outbox.dev/group`,
    /// `outbox.dev/loadtest`) are refused: selectors depend on them.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub labels: BTreeMap<String, String>,
    /// Annotations added to the pods (e.g. for a service mesh or a log shipper). Where
    /// one has the key of an annotation the operator sets itself
    /// (`outbox.dev/config-hash`), the operator's value is kept.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub annotations: BTreeMap<String, String>,
}

impl PodMetadata {
    /// No labels and no annotations.
    pub fn is_empty(&self) -> bool {
        self.labels.is_empty() && self.annotations.is_empty()
    }
}

impl PodSettings {
    /// These settings as defaults with `own` over them, field by field: maps
    /// (`nodeSelector`, `metadata.labels`, `metadata.annotations`) are merged key by key,
    /// `own`'s value winning where both have a key; every other field (the lists
    /// `tolerations`, `topologySpreadConstraints`, `imagePullSecrets`, and `affinity`,
    /// `priorityClassName`) is `own`'s when `own` sets it, even to an empty list, and
    /// these defaults' otherwise.
    pub fn overridden_by(&self, own: &PodSettings) -> PodSettings {
        fn merged(
            base: &BTreeMap<String, String>,
            own: &BTreeMap<String, String>,
        ) -> BTreeMap<String, String> {
            let mut map = base.clone();
            map.extend(own.iter().map(|(k, v)| (k.clone(), v.clone())));
            map
        }
        fn either<T: Clone>(base: &Option<T>, own: &Option<T>) -> Option<T> {
            own.as_ref().or(base.as_ref()).cloned()
        }
        PodSettings {
            metadata: PodMetadata {
                labels: merged(&self.metadata.labels, &own.metadata.labels),
                annotations: merged(&self.metadata.annotations, &own.metadata.annotations),
            },
            node_selector: merged(&self.node_selector, &own.node_selector),
            tolerations: either(&self.tolerations, &own.tolerations),
            affinity: either(&self.affinity, &own.affinity),
            topology_spread_constraints: either(
                &self.topology_spread_constraints,
                &own.topology_spread_constraints,
            ),
            priority_class_name: either(&self.priority_class_name, &own.priority_class_name),
            image_pull_secrets: either(&self.image_pull_secrets, &own.image_pull_secrets),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn settings(json: serde_json::Value) -> PodSettings {
        serde_json::from_value(json).unwrap_or_else(|e| panic!("{e}"))
    }

    #[test]
    fn a_groups_maps_are_merged_key_by_key_over_the_defaults_its_own_value_winning() {
        let defaults = settings(serde_json::json!({
            "metadata": {"labels": {"team": "payments", "tier": "backend"},
                         "annotations": {"mesh": "on"}},
            "nodeSelector": {"pool": "general", "arch": "amd64"}
        }));
        let group = settings(serde_json::json!({
            "metadata": {"labels": {"tier": "consumers"}, "annotations": {"logs": "json"}},
            "nodeSelector": {"pool": "consumers"}
        }));
        let merged = defaults.overridden_by(&group);
        let map = |pairs: &[(&str, &str)]| -> BTreeMap<String, String> {
            pairs
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect()
        };
        assert_eq!(
            merged.metadata.labels,
            map(&[("team", "payments"), ("tier", "consumers")])
        );
        assert_eq!(
            merged.metadata.annotations,
            map(&[("logs", "json"), ("mesh", "on")])
        );
        assert_eq!(
            merged.node_selector,
            map(&[("arch", "amd64"), ("pool", "consumers")])
        );
    }

    #[test]
    fn a_groups_lists_and_scalars_replace_the_defaults_whole_and_an_empty_list_clears_them() {
        let defaults = settings(serde_json::json!({
            "tolerations": [{"key": "dedicated", "operator": "Exists"},
                            {"key": "spot", "operator": "Exists"}],
            "imagePullSecrets": [{"name": "registry"}],
            "topologySpreadConstraints": [{"maxSkew": 1, "topologyKey": "zone",
                                           "whenUnsatisfiable": "ScheduleAnyway"}],
            "priorityClassName": "normal",
            "affinity": {"nodeAffinity": {"preferredDuringSchedulingIgnoredDuringExecution": [
                {"weight": 1, "preference": {"matchExpressions": [
                    {"key": "pool", "operator": "In", "values": ["a"]}]}}]}}
        }));
        let group = settings(serde_json::json!({
            "tolerations": [{"key": "gpu", "operator": "Exists"}],
            "imagePullSecrets": [],
            "priorityClassName": "critical"
        }));
        let merged = defaults.overridden_by(&group);
        let keys: Vec<Option<String>> = merged
            .tolerations
            .iter()
            .flatten()
            .map(|t| t.key.clone())
            .collect();
        assert_eq!(keys, [Some("gpu".to_string())]);
        assert_eq!(merged.image_pull_secrets, Some(Vec::new()));
        assert_eq!(merged.priority_class_name.as_deref(), Some("critical"));
        // What the group leaves out comes from the defaults.
        assert_eq!(
            merged.topology_spread_constraints,
            defaults.topology_spread_constraints
        );
        assert_eq!(merged.affinity, defaults.affinity);
    }

    #[test]
    fn no_group_settings_leave_the_defaults_and_no_defaults_leave_the_group_settings() {
        let some = settings(serde_json::json!({
            "metadata": {"labels": {"team": "payments"}},
            "tolerations": [{"key": "dedicated", "operator": "Exists"}],
            "priorityClassName": "normal"
        }));
        assert_eq!(some.overridden_by(&PodSettings::default()), some);
        assert_eq!(PodSettings::default().overridden_by(&some), some);
    }

    #[test]
    fn absent_settings_serialise_to_nothing() {
        assert_eq!(
            serde_json::to_value(PodSettings::default()).ok(),
            Some(serde_json::json!({}))
        );
    }
}
