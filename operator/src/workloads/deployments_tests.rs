//! Unit tests of the Deployments' role settings.

use crate::workloads::test_fixtures::*;
use crate::workloads::*;

#[test]
fn producers_keep_relayed_rows_an_hour_and_ledger_data_a_week_unless_told() {
    let mut spec = reference_spec();
    let children = build(&owner(), &spec, &WorkerImage::default(), &[], &Keda::Usable);
    let p = &children.producer;
    assert_eq!(env_value(p, "RETENTION_SECONDS").as_deref(), Some("3600"));
    assert_eq!(
        env_value(p, "LEDGER_RETENTION_SECONDS").as_deref(),
        Some("604800")
    );
    assert_eq!(
        env_value(p, "MAX_BACKLOG_MESSAGES").as_deref(),
        Some("20000000")
    );
    spec.retention.relayed_seconds = 0;
    let children = build(&owner(), &spec, &WorkerImage::default(), &[], &Keda::Usable);
    assert_eq!(
        env_value(&children.producer, "RETENTION_SECONDS").as_deref(),
        Some("0")
    );
}

#[test]
fn consumer_env_carries_group_and_retry_policy() {
    let children = reference_children();
    let b = &children.consumers[1];
    assert_eq!(
        env_value(b, "KAFKA_CONSUMER_GROUP").as_deref(),
        Some("group-b")
    );
    assert_eq!(
        env_value(b, "KAFKA_CONSUMER_GROUP_ID").as_deref(),
        Some("ns.demo.group-b")
    );
    assert_eq!(env_value(b, "RETRY_MAX_RETRIES").as_deref(), Some("-1"));
    assert_eq!(env_value(b, "HTTP_PORT").as_deref(), Some("8080"));
    assert_eq!(env_value(b, "DEAD_LETTER_TOPIC"), None);
    let args = b
        .spec
        .as_ref()
        .and_then(|s| s.template.spec.as_ref())
        .map(|p| p.containers[0].args.clone());
    assert_eq!(args, Some(Some(vec!["consumer".to_string()])));
}
