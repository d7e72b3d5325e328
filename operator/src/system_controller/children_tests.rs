//! Unit tests of the children's cleanup: foreign ConfigMap keys, unwanted budgets.

use super::*;
use crate::test_fixtures::system;

#[test]
fn keys_someone_else_added_to_the_systems_config_map_are_found_and_removed_by_name() {
    let desired = ConfigMap {
        data: Some(BTreeMap::from([
            (
                "KAFKA_BOOTSTRAP_SERVERS".to_string(),
                "kafka:9092".to_string(),
            ),
            ("KAFKA_TOPICS".to_string(), "events".to_string()),
        ])),
        ..ConfigMap::default()
    };
    assert_eq!(foreign_config_keys(&desired, &desired), (vec![], vec![]));
    let mut applied = desired.clone();
    if let Some(data) = applied.data.as_mut() {
        data.insert(
            "KAFKA_CLIENT_BOOTSTRAP_SERVERS".to_string(),
            "evil:9092".to_string(),
        );
        data.insert("LD_PRELOAD".to_string(), "/tmp/x.so".to_string());
    }
    applied.binary_data = Some(BTreeMap::from([(
        "blob".to_string(),
        k8s_openapi::ByteString(vec![1]),
    )]));
    let (data, binary) = foreign_config_keys(&applied, &desired);
    assert_eq!(data, ["KAFKA_CLIENT_BOOTSTRAP_SERVERS", "LD_PRELOAD"]);
    assert_eq!(binary, ["blob"]);
    assert_eq!(
        removal_patch(&data, &binary),
        serde_json::json!({
            "data": {"KAFKA_CLIENT_BOOTSTRAP_SERVERS": null, "LD_PRELOAD": null},
            "binaryData": {"blob": null}
        })
    );
}

#[test]
fn switched_off_and_removed_groups_budgets_are_pruned_and_others_owners_left_alone() {
    use kube::Resource;
    let ours = system("ns", "outbox", 1);
    let other = system("ns", "other", 1);
    let owner = workloads::owner_of(&ours).expect("the fixture has a name and uid");
    let found = workloads::budgets(&owner, &ours.spec);
    // Switched off for the producers, group-c removed from the spec: wanted are
    // group-a's and group-b's.
    let mut spec = ours.spec.clone();
    spec.producers.pod_disruption_budget.enabled = false;
    spec.consumers.groups.retain(|g| g.name != "group-c");
    let wanted = workloads::budgets(&owner, &spec);
    // A budget of the same name that another system controls is not ours to delete.
    let mut foreign = found[0].clone();
    foreign.metadata.name = Some("outbox-consumer-group-x".into());
    foreign.metadata.owner_references = other.controller_owner_ref(&()).map(|r| vec![r]);
    let mut all = found.clone();
    all.push(foreign);
    assert_eq!(
        unwanted_children(&ours, &all, &wanted),
        ["outbox-producer", "outbox-consumer-group-c"]
    );
    assert!(unwanted_children(&ours, &found, &found).is_empty());
}
