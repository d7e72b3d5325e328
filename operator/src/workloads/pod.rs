//! What every worker pod is made of besides its environment: its volumes (a writable
//! `/tmp`, the PostgreSQL CA), the locked-down security contexts, the HTTP probes, and
//! the user's pod settings added to the operator's template.

use std::collections::BTreeMap;

use k8s_openapi::api::core::v1::{
    Capabilities, EmptyDirVolumeSource, HTTPGetAction, KeyToPath, PodSecurityContext,
    PodTemplateSpec, Probe, SeccompProfile, SecretVolumeSource, SecurityContext, Volume,
    VolumeMount,
};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::LabelSelector;
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;

use crate::crd::{OutboxSystemSpec, PodSettings};

/// Where `spec.database.caSecretRef` is mounted in every worker.
pub const POSTGRES_CA_DIR: &str = "/etc/outbox/postgres-ca";

pub(super) const POSTGRES_CA_FILE: &str = "ca.crt";

/// The volumes of every worker and their mounts: a writable `/tmp` (the root
/// filesystem is read-only) and, with `spec.database.caSecretRef`, the PostgreSQL CA.
pub fn worker_volumes(spec: &OutboxSystemSpec) -> (Vec<Volume>, Vec<VolumeMount>) {
    let mut volumes = vec![Volume {
        name: "tmp".to_string(),
        empty_dir: Some(EmptyDirVolumeSource::default()),
        ..Volume::default()
    }];
    let mut mounts = vec![VolumeMount {
        name: "tmp".to_string(),
        mount_path: "/tmp".to_string(),
        ..VolumeMount::default()
    }];
    if let Some(ca) = &spec.database.ca_secret_ref {
        volumes.push(Volume {
            name: "postgres-ca".to_string(),
            secret: Some(SecretVolumeSource {
                secret_name: Some(ca.name.clone()),
                items: Some(vec![KeyToPath {
                    key: ca.key.clone(),
                    path: POSTGRES_CA_FILE.to_string(),
                    mode: None,
                }]),
                default_mode: Some(0o444),
                optional: Some(false),
            }),
            ..Volume::default()
        });
        mounts.push(VolumeMount {
            name: "postgres-ca".to_string(),
            mount_path: POSTGRES_CA_DIR.to_string(),
            read_only: Some(true),
            ..VolumeMount::default()
        });
    }
    (volumes, mounts)
}

/// The locked-down container security context every worker runs with.
pub fn container_security_context() -> SecurityContext {
    SecurityContext {
        allow_privilege_escalation: Some(false),
        read_only_root_filesystem: Some(true),
        run_as_non_root: Some(true),
        capabilities: Some(Capabilities {
            drop: Some(vec!["ALL".to_string()]),
            add: None,
        }),
        ..SecurityContext::default()
    }
}

/// The pod security context every worker runs with.
pub fn pod_security_context() -> PodSecurityContext {
    PodSecurityContext {
        run_as_non_root: Some(true),
        run_as_user: Some(65532),
        run_as_group: Some(65532),
        seccomp_profile: Some(SeccompProfile {
            type_: "RuntimeDefault".to_string(),
            localhost_profile: None,
        }),
        ..PodSecurityContext::default()
    }
}

/// An HTTP probe on the container's named port `http`.
pub(super) fn probe(path: &str, initial_delay: i32, failure_threshold: i32) -> Probe {
    Probe {
        http_get: Some(HTTPGetAction {
            path: Some(path.to_string()),
            port: IntOrString::String("http".to_string()),
            ..HTTPGetAction::default()
        }),
        initial_delay_seconds: Some(initial_delay),
        period_seconds: Some(10),
        timeout_seconds: Some(2),
        failure_threshold: Some(failure_threshold),
        ..Probe::default()
    }
}

/// The pod template `operator` built, with the user's `settings` added: their labels
/// and annotations under the operator's own (the operator's value wins on a shared key:
/// selectors and the config-hash rollout depend on them), and each scheduling field
/// set. A topology spread constraint without a `labelSelector` gets the operator's pod
/// labels, so that it counts exactly the pods of this workload.
pub fn with_pod_settings(operator: PodTemplateSpec, settings: &PodSettings) -> PodTemplateSpec {
    let mut metadata = operator.metadata.unwrap_or_default();
    let own_labels = metadata.labels.clone().unwrap_or_default();
    let under = |user: &BTreeMap<String, String>, own: Option<BTreeMap<String, String>>| {
        let mut map = user.clone();
        map.extend(own.unwrap_or_default());
        (!map.is_empty()).then_some(map)
    };
    metadata.labels = under(&settings.metadata.labels, metadata.labels.take());
    metadata.annotations = under(&settings.metadata.annotations, metadata.annotations.take());
    let mut pod = operator.spec.unwrap_or_default();
    if !settings.node_selector.is_empty() {
        pod.node_selector = Some(settings.node_selector.clone());
    }
    pod.tolerations = settings.tolerations.clone();
    pod.affinity = settings.affinity.clone();
    pod.topology_spread_constraints = settings.topology_spread_constraints.clone().map(|list| {
        list.into_iter()
            .map(|mut constraint| {
                constraint
                    .label_selector
                    .get_or_insert_with(|| LabelSelector {
                        match_labels: Some(own_labels.clone()),
                        match_expressions: None,
                    });
                constraint
            })
            .collect()
    });
    pod.priority_class_name = settings.priority_class_name.clone();
    pod.image_pull_secrets = settings.image_pull_secrets.clone();
    PodTemplateSpec {
        metadata: Some(metadata),
        spec: Some(pod),
    }
}

#[cfg(test)]
#[path = "pod_tests.rs"]
mod tests;
