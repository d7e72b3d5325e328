//! Fixtures the unit tests of several modules share.

use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use k8s_openapi::jiff::Timestamp;

use crate::crd::OutboxSystem;

/// The reference system as `manifests/outbox-system.yaml` has it.
pub fn reference_system() -> OutboxSystem {
    serde_yaml::from_str(
        &std::fs::read_to_string(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/../manifests/outbox-system.yaml"
        ))
        .expect("the reference OutboxSystem"),
    )
    .expect("parses")
}

/// The reference system (`manifests/outbox-system.yaml`) as `namespace/name`,
/// created at second `created`.
pub fn system(namespace: &str, name: &str, created: i64) -> OutboxSystem {
    let mut system = reference_system();
    system.metadata.name = Some(name.into());
    system.metadata.namespace = Some(namespace.into());
    system.metadata.uid = Some(format!("uid-{namespace}-{name}"));
    system.metadata.creation_timestamp = Some(Time(
        Timestamp::from_second(created).unwrap_or(Timestamp::UNIX_EPOCH),
    ));
    system
}
