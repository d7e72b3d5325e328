//! Who sets a consumer group's replicas (pure): the spec's fixed `replicas`, an
//! autoscaler (KEDA or the user's own), or, where KEDA cannot scale this system, the
//! operator at `minReplicas` so that the group still runs.

use crate::crd::{AutoscalingMode, ConsumerGroupSpec, OutboxSystemSpec};

/// Condition reason: the cluster serves no keda.sh/v1alpha1 ScaledObjects.
pub const KEDA_NOT_INSTALLED: &str = "KedaNotInstalled";
/// Condition reason: the Kafka client settings need what KEDA's trigger is not given.
pub const KAFKA_SECURITY_NOT_SUPPORTED: &str = "KafkaSecurityNotSupported";

/// Whether KEDA can scale this system's groups, found out once per reconcile.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Keda {
    /// The cluster serves ScaledObjects and KEDA's Kafka trigger can reach the brokers.
    Usable,
    /// KEDA cannot scale them: a PascalCase reason and what is wrong.
    Unusable {
        /// Condition reason, e.g. [`KEDA_NOT_INSTALLED`].
        reason: &'static str,
        /// What is wrong, for the condition's message.
        problem: String,
    },
}

impl Keda {
    /// Whether the cluster serves ScaledObjects at all (KEDA installed).
    pub fn served(&self) -> bool {
        !matches!(self, Keda::Unusable { reason, .. } if *reason == KEDA_NOT_INSTALLED)
    }
}

/// Whether KEDA can scale the groups (pure): `served` whether the API server serves
/// keda.sh/v1alpha1 ScaledObjects; `security_protocol` the value of the client-settings
/// key `KAFKA_CLIENT_SECURITY_PROTOCOL`, if any. The operator gives KEDA's Kafka trigger
/// no TriggerAuthentication, so any protocol but plaintext is not supported.
pub fn keda(served: bool, security_protocol: Option<&str>) -> Keda {
    if !served {
        return Keda::Unusable {
            reason: KEDA_NOT_INSTALLED,
            problem: "the cluster serves no keda.sh/v1alpha1 ScaledObjects (KEDA is not installed)"
                .to_string(),
        };
    }
    match security_protocol.map(str::trim) {
        Some(protocol) if !protocol.eq_ignore_ascii_case("plaintext") => Keda::Unusable {
            reason: KAFKA_SECURITY_NOT_SUPPORTED,
            problem: format!(
                "the Kafka client settings set KAFKA_CLIENT_SECURITY_PROTOCOL={protocol}, and the operator gives KEDA's Kafka trigger no TLS or SASL settings (no TriggerAuthentication)"
            ),
        },
        _ => Keda::Usable,
    }
}

/// The replicas the operator applies to `group`'s Deployment (pure): its fixed
/// `replicas`; none when an autoscaler owns them (mode external, or mode keda with KEDA
/// usable), so that server-side apply leaves them to it; `minReplicas` for mode keda
/// while KEDA cannot scale it.
pub fn consumer_replicas(group: &ConsumerGroupSpec, keda: &Keda) -> Option<i32> {
    let Some(autoscaling) = &group.autoscaling else {
        return Some(group.replicas);
    };
    match (autoscaling.mode, keda) {
        (AutoscalingMode::External, _) | (AutoscalingMode::Keda, Keda::Usable) => None,
        (AutoscalingMode::Keda, Keda::Unusable { .. }) => Some(autoscaling.min_replicas),
    }
}

/// The groups KEDA is to scale, as (name, minReplicas), in spec order.
pub fn keda_groups(spec: &OutboxSystemSpec) -> Vec<(String, i32)> {
    spec.consumers
        .groups
        .iter()
        .filter_map(|g| {
            let a = g.autoscaling.as_ref()?;
            (a.mode == AutoscalingMode::Keda).then(|| (g.name.clone(), a.min_replicas))
        })
        .collect()
}

#[cfg(test)]
#[path = "autoscaling_tests.rs"]
mod tests;
