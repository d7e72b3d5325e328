//! Reaching a system's Kafka with the operator's own client: the client-settings
//! Secret, the properties on the operator's allow list, and the cluster's `cluster.id`.

use std::collections::BTreeMap;

use k8s_openapi::api::core::v1::Secret;
use k8s_openapi::ByteString;
use kube::Api;
use tracing::warn;

use crate::context::Context;
use crate::crd::OutboxSystemSpec;
use crate::error::{Error, Result};
use crate::host_names::qualify_bootstrap_servers;
use crate::kafka::{self, client_config, KafkaAdmin};

/// The system's Kafka as reached at the start of a reconcile.
pub(super) enum KafkaReach {
    /// The admin client and the cluster's `cluster.id`.
    Reached {
        admin: KafkaAdmin,
        cluster_id: String,
    },
    /// What kept the operator from the cluster id (with the admin client, if it got
    /// that far).
    NotReached {
        admin: Option<KafkaAdmin>,
        reason: Option<&'static str>,
        message: String,
    },
}

impl KafkaReach {
    pub(super) fn cluster_id(&self) -> Option<&str> {
        match self {
            KafkaReach::Reached { cluster_id, .. } => Some(cluster_id),
            KafkaReach::NotReached { .. } => None,
        }
    }
}

/// Connects to the system's Kafka with the operator's own client (the client settings
/// on its allow list) and reads the cluster's id. Never fails: what went wrong is in
/// the answer.
pub(super) async fn connect_kafka(
    namespace: &str,
    spec: &OutboxSystemSpec,
    client_settings: &BTreeMap<String, ByteString>,
) -> KafkaReach {
    let not_reached = |admin, e: Error| KafkaReach::NotReached {
        admin,
        reason: topic_settings_error_reason(&e),
        message: e.to_string(),
    };
    let secret = spec
        .kafka
        .client_settings_secret_ref
        .as_ref()
        .map(|r| r.name.as_str())
        .unwrap_or_default();
    let properties = match operator_client_properties(
        namespace,
        secret,
        kafka::client_properties(client_settings),
    ) {
        Ok(properties) => properties,
        Err(e) => return not_reached(None, e),
    };
    let bootstrap = qualify_bootstrap_servers(&spec.kafka.bootstrap_servers, namespace);
    let admin = match KafkaAdmin::new(client_config(&bootstrap, &properties)) {
        Ok(admin) => admin,
        Err(e) => return not_reached(None, e),
    };
    match admin.cluster_id().await {
        Ok(cluster_id) => KafkaReach::Reached { admin, cluster_id },
        Err(e) => not_reached(Some(admin), e),
    }
}

/// The data of the Kafka client-settings Secret (empty without one; an error naming it
/// when it is missing).
pub(super) async fn read_client_settings(
    ctx: &Context,
    namespace: &str,
    spec: &OutboxSystemSpec,
) -> Result<BTreeMap<String, ByteString>> {
    let Some(secret_ref) = &spec.kafka.client_settings_secret_ref else {
        return Ok(BTreeMap::new());
    };
    let secrets: Api<Secret> = Api::namespaced(ctx.client.clone(), namespace);
    let secret = secrets
        .get_opt(&secret_ref.name)
        .await
        .map_err(Error::kube(format!("reading Secret {}", secret_ref.name)))?
        .ok_or_else(|| Error::Secret {
            namespace: namespace.to_string(),
            name: secret_ref.name.clone(),
            problem: "not found (spec.kafka.clientSettingsSecretRef)".into(),
        })?;
    Ok(secret.data.unwrap_or_default())
}

/// The properties of the operator's own Kafka client (pure): the accepted ones, or an
/// error naming every refused key when there is one (the operator does not connect with
/// a part of the settings).
fn operator_client_properties(
    namespace: &str,
    secret: &str,
    properties: kafka::ClientProperties,
) -> Result<BTreeMap<String, String>> {
    if properties.refused.is_empty() {
        return Ok(properties.accepted);
    }
    let refused = properties
        .refused
        .iter()
        .map(|r| format!("{} ({})", r.key, r.property))
        .collect::<Vec<_>>()
        .join(", ");
    warn!(secret, %refused, "Kafka client settings refused for the operator's own client");
    Err(Error::KafkaClientSettingRefused {
        namespace: namespace.to_string(),
        name: secret.to_string(),
        refused,
        accepted: kafka::OPERATOR_CLIENT_PROPERTIES.join(", "),
    })
}

/// The TopicReady reason of an error reading the Kafka client settings (pure).
fn topic_settings_error_reason(error: &Error) -> Option<&'static str> {
    match error {
        Error::Secret { .. } => Some("KafkaSettingsSecretMissing"),
        Error::KafkaClientSettingRefused { .. } => Some("KafkaClientSettingRefused"),
        _ => None,
    }
}

#[cfg(test)]
#[path = "kafka_reach_tests.rs"]
mod tests;
