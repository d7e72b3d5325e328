//! Unit tests of the workers' environment.

use crate::workloads::test_fixtures::*;
use crate::workloads::*;

/// Each container's env entries that come from Secret `secret`: (name, key).
fn env_from_secret(d: &Deployment, secret: &str) -> Vec<(String, String)> {
    let container = d
        .spec
        .as_ref()
        .and_then(|s| s.template.spec.as_ref())
        .map(|p| p.containers[0].clone())
        .unwrap_or_default();
    container
        .env
        .iter()
        .flatten()
        .filter_map(|e| {
            let r = e.value_from.as_ref()?.secret_key_ref.as_ref()?;
            (r.name == secret && r.optional == Some(false)).then(|| (e.name.clone(), r.key.clone()))
        })
        .collect()
}

#[test]
fn only_the_kafka_client_keys_of_the_settings_secret_reach_the_workers_each_by_its_key() {
    let keys: Vec<String> = [
        "KAFKA_CLIENT_SECURITY_PROTOCOL",
        "KAFKA_CLIENT_SASL_PASSWORD",
        "LD_PRELOAD",
        "DATABASE_URL",
        "RUST_LOG",
        "KAFKA_CLIENT_",
        "kafka_client_sasl_username",
    ]
    .map(String::from)
    .to_vec();
    let children = build(
        &owner(),
        &reference_spec(),
        &WorkerImage::default(),
        &keys,
        &Keda::Usable,
    );
    let expected = vec![
        (
            "KAFKA_CLIENT_SASL_PASSWORD".to_string(),
            "KAFKA_CLIENT_SASL_PASSWORD".to_string(),
        ),
        (
            "KAFKA_CLIENT_SECURITY_PROTOCOL".to_string(),
            "KAFKA_CLIENT_SECURITY_PROTOCOL".to_string(),
        ),
    ];
    for d in std::iter::once(&children.producer).chain(&children.consumers) {
        let mut got = env_from_secret(d, "kafka-client");
        got.sort();
        assert_eq!(got, expected, "{:?}", d.metadata.name);
        let from = d
            .spec
            .as_ref()
            .and_then(|s| s.template.spec.as_ref())
            .and_then(|p| p.containers[0].env_from.clone())
            .unwrap_or_default();
        assert!(
            from.iter().all(|f| f.secret_ref.is_none()),
            "no envFrom of a whole Secret: {from:?}"
        );
    }
    // Without a client-settings Secret in the spec, no such variables.
    let mut spec = reference_spec();
    spec.kafka.client_settings_secret_ref = None;
    let bare = build(
        &owner(),
        &spec,
        &WorkerImage::default(),
        &keys,
        &Keda::Usable,
    );
    assert_eq!(env_from_secret(&bare.producer, "kafka-client"), vec![]);
}

#[test]
fn database_url_comes_only_from_the_secret() {
    let children = reference_children();
    let container = &children
        .producer
        .spec
        .as_ref()
        .and_then(|s| s.template.spec.clone())
        .map(|p| p.containers[0].clone());
    let Some(container) = container else {
        panic!("no container")
    };
    let db = container
        .env
        .iter()
        .flatten()
        .find(|e| e.name == "DATABASE_URL");
    let secret = db
        .and_then(|e| e.value_from.as_ref())
        .and_then(|v| v.secret_key_ref.as_ref());
    assert_eq!(
        secret.map(|s| (s.name.as_str(), s.key.as_str())),
        Some(("outbox-postgres", "url"))
    );
    assert!(db.and_then(|e| e.value.as_ref()).is_none());
    let from = container.env_from.clone().unwrap_or_default();
    assert_eq!(
        from[0].config_map_ref.as_ref().map(|c| c.name.as_str()),
        Some("demo-config")
    );
    let data = children.config_map.data.unwrap_or_default();
    assert_eq!(data["KAFKA_TOPICS"], "shared-events");
    assert!(!data.values().any(|v| v.contains("postgres://")));
}
