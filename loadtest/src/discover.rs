//! Finding what the run needs on the API server: the LoadTest, its OutboxSystem, and
//! every ready producer pod behind the OutboxSystem's producer Service (through its
//! EndpointSlices, never the Service's single virtual address).

use k8s_openapi::api::discovery::v1::EndpointSlice;
use kube::api::ListParams;
use kube::{Api, Client};
use outbox_contract::crd::{LoadTest, OutboxSystem};

use super::error::{KubeContext, LoadTestError, Result};

/// A producer to send to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Producer {
    /// Pod name, or the URL when given by flag.
    pub name: String,
    /// Base URL without a trailing slash, e.g. `http://10.0.0.7:8080`.
    pub base_url: String,
}

impl Producer {
    /// A producer given by URL (local mode).
    pub fn from_url(url: &str) -> Self {
        let base_url = url.trim().trim_end_matches('/').to_string();
        let name = base_url
            .split_once("://")
            .map(|(_, rest)| rest.to_string())
            .unwrap_or_else(|| base_url.clone());
        Producer { name, base_url }
    }
}

/// Name of the Service (and Deployment) of an OutboxSystem's producers.
pub fn producer_service_name(system: &str) -> String {
    format!("{system}-producer")
}

/// Reads the LoadTest.
pub async fn load_test(client: &Client, namespace: &str, name: &str) -> Result<LoadTest> {
    Api::<LoadTest>::namespaced(client.clone(), namespace)
        .get(name)
        .await
        .kube(|| format!("reading LoadTest {namespace}/{name}"))
}

/// Reads the OutboxSystem a LoadTest refers to.
pub async fn outbox_system(client: &Client, namespace: &str, name: &str) -> Result<OutboxSystem> {
    Api::<OutboxSystem>::namespaced(client.clone(), namespace)
        .get(name)
        .await
        .kube(|| format!("reading OutboxSystem {namespace}/{name}"))
}

/// Every ready producer endpoint of OutboxSystem `system`, sorted by name.
pub async fn producers(
    client: &Client,
    namespace: &str,
    system: &str,
    default_port: i32,
) -> Result<Vec<Producer>> {
    let service = producer_service_name(system);
    let slices = Api::<EndpointSlice>::namespaced(client.clone(), namespace)
        .list(&ListParams::default().labels(&format!("kubernetes.io/service-name={service}")))
        .await
        .kube(|| format!("listing EndpointSlices of Service {namespace}/{service}"))?;
    let found = ready_endpoints(&slices.items, default_port);
    if found.is_empty() {
        return Err(LoadTestError::NoProducers {
            namespace: namespace.to_string(),
            service,
        });
    }
    Ok(found)
}

/// Waits until `desired` producers of `system` are ready (a Job may start while the
/// OutboxSystem's producers are still coming up), checking every two seconds for up to
/// `timeout`; then goes on with the ready ones, or fails if there are none.
pub async fn wait_for_producers(
    client: &Client,
    namespace: &str,
    system: &str,
    default_port: i32,
    desired: usize,
    timeout: std::time::Duration,
) -> Result<Vec<Producer>> {
    let deadline = tokio::time::Instant::now() + timeout;
    loop {
        let found = producers(client, namespace, system, default_port).await;
        let ready = found.as_ref().map(Vec::len).unwrap_or(0);
        if ready >= desired.max(1) || tokio::time::Instant::now() >= deadline {
            if let Ok(found) = &found {
                if found.len() < desired {
                    tracing::warn!(
                        ready = found.len(),
                        desired,
                        "not every producer is ready; driving the ready ones"
                    );
                }
            }
            return found;
        }
        tracing::info!(ready, desired, "waiting for the producers to be ready");
        tokio::time::sleep(std::time::Duration::from_secs(2)).await;
    }
}

/// The ready endpoints of `slices` as producers (pure, so it is unit-tested): one per
/// address of a ready endpoint, on the slice's `http` port (else its first port, else
/// `default_port`), deduplicated, sorted by name.
pub fn ready_endpoints(slices: &[EndpointSlice], default_port: i32) -> Vec<Producer> {
    let mut out: Vec<Producer> = Vec::new();
    for slice in slices {
        let ports = slice.ports.as_deref().unwrap_or_default();
        let port = ports
            .iter()
            .find(|p| p.name.as_deref() == Some("http"))
            .or_else(|| ports.first())
            .and_then(|p| p.port)
            .unwrap_or(default_port);
        let ipv6 = slice.address_type == "IPv6";
        for endpoint in &slice.endpoints {
            // `ready` absent means ready (the API's documented default).
            let ready = endpoint
                .conditions
                .as_ref()
                .and_then(|c| c.ready)
                .unwrap_or(true);
            if !ready {
                continue;
            }
            for address in &endpoint.addresses {
                let host = if ipv6 {
                    format!("[{address}]")
                } else {
                    address.clone()
                };
                let name = endpoint
                    .target_ref
                    .as_ref()
                    .and_then(|r| r.name.clone())
                    .unwrap_or_else(|| format!("{host}:{port}"));
                let producer = Producer {
                    name,
                    base_url: format!("http://{host}:{port}"),
                };
                if !out.iter().any(|p| p.base_url == producer.base_url) {
                    out.push(producer);
                }
            }
        }
    }
    out.sort_by(|a, b| a.name.cmp(&b.name));
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::api::core::v1::ObjectReference;
    use k8s_openapi::api::discovery::v1::{Endpoint, EndpointConditions, EndpointPort};

    fn endpoint(pod: &str, ip: &str, ready: Option<bool>) -> Endpoint {
        Endpoint {
            addresses: vec![ip.to_string()],
            conditions: Some(EndpointConditions {
                ready,
                ..Default::default()
            }),
            target_ref: Some(ObjectReference {
                name: Some(pod.to_string()),
                ..Default::default()
            }),
            ..Default::default()
        }
    }

    fn slice(endpoints: Vec<Endpoint>, port: Option<i32>) -> EndpointSlice {
        EndpointSlice {
            address_type: "IPv4".into(),
            endpoints,
            ports: port.map(|p| {
                vec![EndpointPort {
                    name: Some("http".into()),
                    port: Some(p),
                    ..Default::default()
                }]
            }),
            ..Default::default()
        }
    }

    #[test]
    fn every_ready_replica_across_slices_is_a_producer() {
        let slices = vec![
            slice(
                vec![
                    endpoint("sys-producer-b", "10.0.0.2", Some(true)),
                    endpoint("sys-producer-x", "10.0.0.9", Some(false)),
                ],
                Some(8080),
            ),
            slice(
                vec![endpoint("sys-producer-a", "10.0.0.1", None)],
                Some(8080),
            ),
        ];
        let found = ready_endpoints(&slices, 1);
        assert_eq!(
            found,
            vec![
                Producer {
                    name: "sys-producer-a".into(),
                    base_url: "http://10.0.0.1:8080".into()
                },
                Producer {
                    name: "sys-producer-b".into(),
                    base_url: "http://10.0.0.2:8080".into()
                },
            ]
        );
    }

    #[test]
    fn slices_without_ports_use_the_systems_port() {
        let found = ready_endpoints(
            &[slice(vec![endpoint("p", "10.0.0.1", Some(true))], None)],
            9090,
        );
        assert_eq!(found[0].base_url, "http://10.0.0.1:9090");
    }

    #[test]
    fn producer_urls_lose_their_trailing_slash() {
        let p = Producer::from_url("http://127.0.0.1:5301/");
        assert_eq!(p.base_url, "http://127.0.0.1:5301");
        assert_eq!(p.name, "127.0.0.1:5301");
    }
}
