//! The system's ConfigMap: the non-secret settings every worker reads, and the hash of
//! them that rolls the pods when they change.

use std::collections::BTreeMap;
use std::hash::{DefaultHasher, Hash, Hasher};

use k8s_openapi::api::core::v1::ConfigMap;
use outbox_contract::worker_env::names;

use super::metadata::{labels, meta};
use super::{config_map_name, Owner};
use crate::crd::OutboxSystemSpec;

/// The non-secret settings every worker of the system reads (through `envFrom`).
pub fn config_map(owner: &Owner, spec: &OutboxSystemSpec) -> ConfigMap {
    let data = BTreeMap::from([
        (
            names::KAFKA_BOOTSTRAP_SERVERS.to_string(),
            spec.kafka.bootstrap_servers.clone(),
        ),
        (names::KAFKA_TOPICS.to_string(), spec.topic.name.clone()),
        // The workers check that their outbox schema is this system's (see
        // `schema_owner`).
        (
            names::OUTBOX_SYSTEM.to_string(),
            crate::schema_owner::system_id(&owner.namespace, &owner.name),
        ),
        (
            names::RUST_LOG.to_string(),
            spec.log_level.clone().unwrap_or_else(|| "info".to_string()),
        ),
    ]);
    ConfigMap {
        metadata: meta(
            owner,
            &config_map_name(&owner.name),
            labels(owner, "config", None),
        ),
        data: Some(data),
        ..ConfigMap::default()
    }
}

pub(super) fn hash_config(config_map: &ConfigMap) -> String {
    let mut hasher = DefaultHasher::new();
    config_map.data.hash(&mut hasher);
    format!("{:016x}", hasher.finish())
}
