//! Fixtures the unit tests of several modules share.

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
