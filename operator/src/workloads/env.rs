//! The workers' environment: what every role gets, the Kafka client settings one
//! variable per key, and the system's ConfigMap through `envFrom`.

use k8s_openapi::api::core::v1::{
    ConfigMapEnvSource, EnvFromSource, EnvVar, EnvVarSource, ObjectFieldSelector, SecretKeySelector,
};
use outbox_contract::worker_env::names;

use super::config_map_name;
use super::pod::{POSTGRES_CA_DIR, POSTGRES_CA_FILE};
use crate::crd::OutboxSystemSpec;

pub(super) fn plain_env(name: &str, value: impl Into<String>) -> EnvVar {
    EnvVar {
        name: name.to_string(),
        value: Some(value.into()),
        value_from: None,
    }
}

/// Environment variable `name` holding the pod's own name (the downward API).
pub fn pod_name_env(name: &str) -> EnvVar {
    EnvVar {
        name: name.to_string(),
        value: None,
        value_from: Some(EnvVarSource {
            field_ref: Some(ObjectFieldSelector {
                field_path: "metadata.name".to_string(),
                api_version: None,
            }),
            ..EnvVarSource::default()
        }),
    }
}

/// Environment shared by every role: pod name as SERVICE_ID, the database URL from the
/// referenced Secret key, the HTTP port, and the mounted PostgreSQL CA when there is one.
pub fn common_env(spec: &OutboxSystemSpec, port: i32) -> Vec<EnvVar> {
    let mut env = vec![
        pod_name_env(names::SERVICE_ID),
        EnvVar {
            name: names::DATABASE_URL.to_string(),
            value: None,
            value_from: Some(EnvVarSource {
                secret_key_ref: Some(SecretKeySelector {
                    name: spec.database.url_secret_ref.name.clone(),
                    key: spec.database.url_secret_ref.key.clone(),
                    optional: Some(false),
                }),
                ..EnvVarSource::default()
            }),
        },
        plain_env(names::HTTP_PORT, port.to_string()),
    ];
    if spec.database.ca_secret_ref.is_some() {
        env.push(plain_env(
            names::PGSSLROOTCERT,
            format!("{POSTGRES_CA_DIR}/{POSTGRES_CA_FILE}"),
        ));
    }
    env
}

/// The Kafka client settings of producers and consumers: one variable per
/// `KAFKA_CLIENT_*` key of the client-settings Secret (`client_setting_keys`), each
/// through a `secretKeyRef` to its key. Not `envFrom`, which would import every key of
/// the Secret (`LD_PRELOAD`, `DATABASE_URL`, ...): its `prefix` adds a prefix and does
/// not filter. The value never leaves the Secret; a key added later reaches the pods
/// at the operator's next reconcile, which rolls them.
pub fn client_settings_env(spec: &OutboxSystemSpec, client_setting_keys: &[String]) -> Vec<EnvVar> {
    let Some(secret) = &spec.kafka.client_settings_secret_ref else {
        return Vec::new();
    };
    client_setting_keys
        .iter()
        .filter(|key| outbox_contract::worker_env::kafka_client_property(key).is_some())
        .map(|key| EnvVar {
            name: key.clone(),
            value: None,
            value_from: Some(EnvVarSource {
                secret_key_ref: Some(SecretKeySelector {
                    name: secret.name.clone(),
                    key: key.clone(),
                    optional: Some(false),
                }),
                ..EnvVarSource::default()
            }),
        })
        .collect()
}

/// `envFrom`: the system's ConfigMap, whose every key the operator sets.
pub fn env_from(system: &str) -> Vec<EnvFromSource> {
    vec![EnvFromSource {
        config_map_ref: Some(ConfigMapEnvSource {
            name: config_map_name(system),
            optional: Some(false),
        }),
        ..EnvFromSource::default()
    }]
}

#[cfg(test)]
#[path = "env_tests.rs"]
mod tests;
