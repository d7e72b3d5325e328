//! Unit tests of the operator's own Kafka client settings.

use std::collections::BTreeMap;

use super::*;

#[test]
fn a_client_setting_the_operators_client_refuses_stops_it_naming_key_and_property() {
    let secret = |keys: &[(&str, &str)]| {
        keys.iter()
            .map(|(k, v)| {
                (
                    k.to_string(),
                    k8s_openapi::ByteString(v.as_bytes().to_vec()),
                )
            })
            .collect::<BTreeMap<_, _>>()
    };
    let fine = secret(&[("KAFKA_CLIENT_SECURITY_PROTOCOL", "SSL")]);
    let accepted =
        operator_client_properties("ns", "kafka-client", kafka::client_properties(&fine))
            .unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(accepted["security.protocol"], "SSL");

    let hostile = secret(&[
        ("KAFKA_CLIENT_SECURITY_PROTOCOL", "SSL"),
        (
            "KAFKA_CLIENT_SSL_CA_LOCATION",
            "/var/run/secrets/kubernetes.io/serviceaccount/token",
        ),
    ]);
    let error =
        operator_client_properties("ns", "kafka-client", kafka::client_properties(&hostile))
            .expect_err("refused");
    assert_eq!(error.metric_label(), "kafka_client_setting_refused");
    let message = error.to_string();
    for part in [
        "ns/kafka-client",
        "spec.kafka.clientSettingsSecretRef",
        "KAFKA_CLIENT_SSL_CA_LOCATION (ssl.ca.location)",
        "ssl.ca.pem",
    ] {
        assert!(message.contains(part), "{part}: {message}");
    }
    assert!(
        !message.contains("serviceaccount/token"),
        "no values in the message: {message}"
    );
    assert_eq!(
        topic_settings_error_reason(&error),
        Some("KafkaClientSettingRefused")
    );
}
