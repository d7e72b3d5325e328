//! A consumer group's autoscaling: its replicas follow its lag through KEDA, or through
//! an autoscaler of the user's own.

use kube::KubeSchema;
use serde::{Deserialize, Serialize};

/// Lag per replica at which KEDA adds a consumer, when `lagThreshold` is unset.
pub const DEFAULT_LAG_THRESHOLD: i64 = 1000;

/// Who scales an autoscaled group's Deployment.
#[derive(
    schemars::JsonSchema, Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, Default,
)]
#[serde(rename_all = "lowercase")]
pub enum AutoscalingMode {
    /// The operator applies a KEDA `ScaledObject` (keda.sh/v1alpha1) with a Kafka
    /// trigger on the group's lag; KEDA's HorizontalPodAutoscaler sets the replicas.
    #[default]
    Keda,
    /// The operator leaves the Deployment's replicas to an autoscaler of your own (a
    /// HorizontalPodAutoscaler, a ScaledObject you write) and makes none.
    External,
}

/// Autoscaling of one consumer group. Its Deployment is applied without
/// `spec.replicas`, so the autoscaler owns them and the operator never reverts them;
/// the group's `replicas` is then ignored.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
#[x_kube(validation = Rule::new("self.maxReplicas >= self.minReplicas").message("spec.consumers.groups[].autoscaling.maxReplicas must be at least minReplicas").field_path(".maxReplicas"))]
#[x_kube(validation = Rule::new("!has(self.lagThreshold) || !has(self.mode) || self.mode == 'keda'").message("spec.consumers.groups[].autoscaling.lagThreshold applies to mode keda only: with mode external your own autoscaler decides when to scale").field_path(".lagThreshold"))]
pub struct AutoscalingSpec {
    /// `keda` (default): the operator applies a KEDA ScaledObject for the group and,
    /// where KEDA is not installed, runs `minReplicas` and reports
    /// `AutoscalingUnavailable`; `external`: your own autoscaler sets the replicas.
    #[serde(default)]
    pub mode: AutoscalingMode,
    /// Fewest consumers of the group, at least 1 (default 1): a group never scales to
    /// zero, so its lag is always being worked off.
    #[serde(default = "default_min_replicas")]
    #[schemars(range(min = 1, max = 10000))]
    pub min_replicas: i32,
    /// Most consumers of the group; at least `minReplicas` and at most
    /// `spec.topic.partitions` (a consumer beyond the partition count gets no partition
    /// and only waits).
    #[schemars(range(min = 1, max = 10000))]
    pub max_replicas: i32,
    /// Mode keda only: the group's lag (messages not yet committed, summed over
    /// partitions) per consumer at which KEDA adds one (default 1000).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1))]
    pub lag_threshold: Option<i64>,
}

impl AutoscalingSpec {
    /// The lag per consumer KEDA scales on: `lagThreshold`, else the default.
    pub fn lag_threshold(&self) -> i64 {
        self.lag_threshold.unwrap_or(DEFAULT_LAG_THRESHOLD)
    }
}

fn default_min_replicas() -> i32 {
    1
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn autoscaling_defaults_to_keda_from_one_replica_on_a_lag_of_a_thousand() {
        let spec: AutoscalingSpec = serde_json::from_value(serde_json::json!({"maxReplicas": 6}))
            .unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(spec.mode, AutoscalingMode::Keda);
        assert_eq!(spec.min_replicas, 1);
        assert_eq!(spec.lag_threshold, None);
        assert_eq!(spec.lag_threshold(), 1000);
    }

    /// The CEL rules on a schema node, as one string.
    fn rules(node: &serde_json::Value) -> String {
        node["x-kubernetes-validations"].to_string()
    }

    #[test]
    fn the_schema_refuses_max_below_min_beyond_the_partitions_and_a_threshold_without_keda() {
        use kube::CustomResourceExt;
        let crd = serde_json::to_value(crate::crd::OutboxSystem::crd()).unwrap_or_default();
        let spec = &crd["spec"]["versions"][0]["schema"]["openAPIV3Schema"]["properties"]["spec"];
        let at_spec = rules(spec);
        assert!(
            at_spec.contains("self.consumers.groups.all(g, !has(g.autoscaling) || g.autoscaling.maxReplicas <= self.topic.partitions)"),
            "{at_spec}"
        );
        assert!(
            at_spec.contains("autoscaling.maxReplicas may not exceed spec.topic.partitions"),
            "{at_spec}"
        );
        let group = &spec["properties"]["consumers"]["properties"]["groups"]["items"];
        let autoscaling = &group["properties"]["autoscaling"];
        let own = rules(autoscaling);
        for rule in [
            "self.maxReplicas >= self.minReplicas",
            "maxReplicas must be at least minReplicas",
            "!has(self.lagThreshold) || !has(self.mode) || self.mode == 'keda'",
            "lagThreshold applies to mode keda only",
        ] {
            assert!(own.contains(rule), "{rule} not in {own}");
        }
        let fields = &autoscaling["properties"];
        assert_eq!(fields["minReplicas"]["minimum"].as_f64(), Some(1.0));
        assert_eq!(
            fields["mode"]["enum"],
            serde_json::json!(["keda", "external"])
        );
        // `lagThreshold` has no schema default: CEL must see whether it was written.
        assert!(fields["lagThreshold"].get("default").is_none());
        // Replicas may be left out of an autoscaled group.
        let required = group["required"].to_string();
        assert!(!required.contains("replicas"), "{required}");
    }

    #[test]
    fn modes_are_written_in_lower_case() {
        let spec: AutoscalingSpec = serde_json::from_value(
            serde_json::json!({"mode": "external", "minReplicas": 2, "maxReplicas": 4}),
        )
        .unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(spec.mode, AutoscalingMode::External);
        assert_eq!(
            serde_json::to_value(AutoscalingMode::Keda).unwrap_or_default(),
            "keda"
        );
    }
}
