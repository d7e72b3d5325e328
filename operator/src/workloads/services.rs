//! The Services: the producers' (load-balanced), each consumer group's (headless).

use std::collections::BTreeMap;

use k8s_openapi::api::core::v1::{Service, ServicePort, ServiceSpec};
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;

use super::metadata::meta;
use super::Owner;

pub(super) fn service(
    owner: &Owner,
    name: &str,
    labels: BTreeMap<String, String>,
    port: i32,
    headless: bool,
) -> Service {
    Service {
        metadata: meta(owner, name, labels.clone()),
        spec: Some(ServiceSpec {
            selector: Some(labels),
            cluster_ip: headless.then(|| "None".to_string()),
            ports: Some(vec![ServicePort {
                name: Some("http".to_string()),
                port,
                target_port: Some(IntOrString::String("http".to_string())),
                protocol: Some("TCP".to_string()),
                ..ServicePort::default()
            }]),
            ..ServiceSpec::default()
        }),
        status: None,
    }
}
