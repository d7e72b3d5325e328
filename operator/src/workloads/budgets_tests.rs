//! Unit tests of the PodDisruptionBudgets.

use super::*;
use crate::workloads::test_fixtures::*;
use crate::workloads::*;

fn budget_summary(b: &PodDisruptionBudget) -> (String, Option<IntOrString>) {
    (
        b.metadata.name.clone().unwrap_or_default(),
        b.spec.as_ref().and_then(|s| s.max_unavailable.clone()),
    )
}

#[test]
fn by_default_the_producers_and_each_group_get_a_budget_of_one_pod_at_a_time() {
    let children = reference_children();
    let summary: Vec<_> = children.budgets.iter().map(budget_summary).collect();
    let one = Some(IntOrString::Int(1));
    assert_eq!(
        summary,
        [
            ("demo-producer".to_string(), one.clone()),
            ("demo-consumer-group-a".to_string(), one.clone()),
            ("demo-consumer-group-b".to_string(), one.clone()),
            ("demo-consumer-group-c".to_string(), one),
        ]
    );
    let workloads = std::iter::once(&children.producer).chain(children.consumers.iter());
    for (budget, deployment) in children.budgets.iter().zip(workloads) {
        let spec = budget.spec.clone().unwrap_or_default();
        assert_eq!(
            spec.selector,
            deployment.spec.as_ref().map(|s| s.selector.clone()),
            "a budget selects exactly its workload's pods"
        );
        assert_eq!(
            spec.unhealthy_pod_eviction_policy.as_deref(),
            Some("AlwaysAllow")
        );
        assert_eq!(budget.metadata.labels, deployment.metadata.labels);
        let refs = budget.metadata.owner_references.clone().unwrap_or_default();
        assert_eq!(refs, vec![owner().owner_ref]);
    }
}

#[test]
fn switched_off_budgets_are_not_built_and_a_groups_own_budget_replaces_the_consumers_wide_one() {
    let mut spec = reference_spec();
    spec.producers.pod_disruption_budget.enabled = false;
    spec.consumers.pod_disruption_budget.max_unavailable = 2;
    spec.consumers.groups[1].pod_disruption_budget = Some(PodDisruptionBudgetSpec {
        enabled: false,
        max_unavailable: 1,
    });
    spec.consumers.groups[2].pod_disruption_budget = Some(PodDisruptionBudgetSpec {
        enabled: true,
        max_unavailable: 1,
    });
    let children = build(&owner(), &spec, &WorkerImage::default(), &[], &Keda::Usable);
    let summary: Vec<_> = children.budgets.iter().map(budget_summary).collect();
    assert_eq!(
        summary,
        [
            (
                "demo-consumer-group-a".to_string(),
                Some(IntOrString::Int(2))
            ),
            (
                "demo-consumer-group-c".to_string(),
                Some(IntOrString::Int(1))
            ),
        ]
    );
    spec.consumers.pod_disruption_budget.enabled = false;
    spec.consumers.groups[2].pod_disruption_budget = None;
    assert!(
        build(&owner(), &spec, &WorkerImage::default(), &[], &Keda::Usable)
            .budgets
            .is_empty()
    );
}
