//! The PodDisruptionBudgets: the producers' and each consumer group's, where enabled.

use std::collections::BTreeMap;

use k8s_openapi::api::policy::v1::{PodDisruptionBudget, PodDisruptionBudgetSpec as BudgetSpec};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::LabelSelector;
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;

use super::metadata::{labels, meta};
use super::{consumer_name, producer_name, Owner};
use crate::crd::{OutboxSystemSpec, PodDisruptionBudgetSpec};

/// The PodDisruptionBudgets of the producers and of each group whose budget is enabled.
pub fn budgets(owner: &Owner, spec: &OutboxSystemSpec) -> Vec<PodDisruptionBudget> {
    let producers = (
        producer_name(&owner.name),
        labels(owner, outbox_contract::labels::PRODUCER, None),
        spec.producers.pod_disruption_budget.clone(),
    );
    let groups = spec.consumers.groups.iter().map(|g| {
        (
            consumer_name(&owner.name, &g.name),
            labels(owner, outbox_contract::labels::CONSUMER, Some(&g.name)),
            spec.consumers.pod_disruption_budget_of(g),
        )
    });
    std::iter::once(producers)
        .chain(groups)
        .filter(|(_, _, budget)| budget.enabled)
        .map(|(name, labels, budget)| pod_disruption_budget(owner, &name, labels, &budget))
        .collect()
}

/// A PodDisruptionBudget named like its workload, selecting exactly the workload's pods
/// (its Deployment's selector): at most `maxUnavailable` of them evicted at once, and a
/// pod that is not ready always evictable (it serves nothing; a crash-looping pod must
/// not block a node drain).
pub fn pod_disruption_budget(
    owner: &Owner,
    name: &str,
    labels: BTreeMap<String, String>,
    budget: &PodDisruptionBudgetSpec,
) -> PodDisruptionBudget {
    PodDisruptionBudget {
        metadata: meta(owner, name, labels.clone()),
        spec: Some(BudgetSpec {
            max_unavailable: Some(IntOrString::Int(budget.max_unavailable)),
            selector: Some(LabelSelector {
                match_labels: Some(labels),
                match_expressions: None,
            }),
            unhealthy_pod_eviction_policy: Some("AlwaysAllow".to_string()),
            ..BudgetSpec::default()
        }),
        status: None,
    }
}

#[cfg(test)]
#[path = "budgets_tests.rs"]
mod tests;
