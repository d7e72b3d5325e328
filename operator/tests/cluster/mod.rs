//! Helpers of the tests that run the operator as users do (the chart on the testbed's
//! node): namespaces with the testbed's Kafka and PostgreSQL as Services, the chart
//! installed and uninstalled, pods waited for, and container processes found.
#![allow(dead_code)]

use std::process::Command;
use std::time::Duration;

use k8s_openapi::api::core::v1::Pod;
use kube::api::{ListParams, Patch, PatchParams};
use kube::{Api, Client, ResourceExt};
use outbox_operator::crd::{LoadTest, LoadTestPhase};
use testbed_support::{create_namespace, eventually, testbed};

pub const POD_WAIT: Duration = Duration::from_secs(180);

/// Creates `system` in `namespace` as a user applies it; returns the namespace's pods.
pub async fn create_system(
    client: &Client,
    namespace: &str,
    system: &outbox_operator::crd::OutboxSystem,
) -> Api<Pod> {
    Api::<outbox_operator::crd::OutboxSystem>::namespaced(client.clone(), namespace)
        .create(&kube::api::PostParams::default(), system)
        .await
        .unwrap_or_else(|e| panic!("creating the OutboxSystem: {e}"));
    Api::namespaced(client.clone(), namespace)
}

/// Requests small enough that a second system (and its runners) fits on the 2-CPU
/// node beside the reference system of a test running in parallel: 10m CPU and 64Mi,
/// a 256Mi memory limit (9 pods of 100m each left a runner Pending past a test's
/// patience).
pub fn small_requests() -> k8s_openapi::api::core::v1::ResourceRequirements {
    serde_json::from_value(serde_json::json!({
        "requests": {"cpu": "10m", "memory": "64Mi"},
        "limits": {"memory": "256Mi"}
    }))
    .unwrap_or_else(|e| panic!("{e}"))
}

pub use testbed_support::run;

pub async fn client() -> Client {
    testbed()
        .kube_client()
        .await
        .unwrap_or_else(|e| panic!("{e}"))
}

/// A namespace holding the testbed's `outbox-kafka` and `outbox-postgres` Services, and
/// an `outbox-postgres` Secret whose URL (by Service name, as pods see it) uses a fresh
/// schema of its own. Returns the namespace and that schema's URL as the host sees it.
pub async fn namespace_with_host_services(client: &Client, prefix: &str) -> (String, String) {
    let ns = create_namespace(client, prefix).await;
    let host_services = testbed().node().host_services.display().to_string();
    run("kubectl", &["apply", "-n", &ns, "-f", &host_services]);
    let host_url = testbed()
        .fresh_schema(prefix)
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    let pod_url = as_pods_see_it(&host_url);
    let secret = serde_json::json!({
        "apiVersion": "v1", "kind": "Secret",
        "metadata": {"name": "outbox-postgres"},
        "stringData": {"url": pod_url}
    });
    let secrets: Api<k8s_openapi::api::core::v1::Secret> = Api::namespaced(client.clone(), &ns);
    secrets
        .patch(
            "outbox-postgres",
            &PatchParams::apply("cluster-tests").force(),
            &Patch::Apply(&secret),
        )
        .await
        .unwrap_or_else(|e| panic!("writing the Secret: {e}"));
    (ns, host_url)
}

/// The host's URL `postgres://u:p@127.0.0.1:PORT/db?...` with the Service name instead.
pub fn as_pods_see_it(host_url: &str) -> String {
    let (scheme_user, rest) = host_url
        .split_once('@')
        .unwrap_or_else(|| panic!("no @ in {host_url}"));
    let path = rest.find('/').map(|i| &rest[i..]).unwrap_or("");
    format!("{scheme_user}@outbox-postgres:5432{path}")
}

pub fn pod_is_ready(pod: &Pod) -> bool {
    pod.status
        .as_ref()
        .and_then(|s| s.conditions.as_ref())
        .is_some_and(|c| c.iter().any(|c| c.type_ == "Ready" && c.status == "True"))
        && pod.metadata.deletion_timestamp.is_none()
}

/// Waits until `count` pods matching `selector` are Ready; returns them.
pub async fn ready_pods(pods: &Api<Pod>, selector: &str, count: usize) -> Vec<Pod> {
    pods_where(pods, selector, &format!("{count} Ready pods"), |list| {
        let ready: Vec<Pod> = list.into_iter().filter(pod_is_ready).collect();
        (ready.len() == count).then_some(ready)
    })
    .await
}

/// Waits until `pick` finds what it wants among the pods matching `selector`.
pub async fn pods_where<T>(
    pods: &Api<Pod>,
    selector: &str,
    what: &str,
    pick: impl Fn(Vec<Pod>) -> Option<T>,
) -> T {
    let pick = &pick;
    eventually(&format!("{what} with {selector}"), POD_WAIT, || {
        let pods = pods.clone();
        let selector = selector.to_string();
        async move {
            let list = pods
                .list(&ListParams::default().labels(&selector))
                .await
                .ok()?;
            pick(list.items)
        }
    })
    .await
}

pub fn pod_ip(pod: &Pod) -> String {
    pod.status
        .as_ref()
        .and_then(|s| s.pod_ip.clone())
        .unwrap_or_else(|| panic!("pod {} has no IP", pod.name_any()))
}

/// A minimal HTTP/1.1 request to `ip:port` (the host reaches pods over the node's
/// bridge); returns the status code and body.
pub async fn http(ip: &str, port: u16, method: &str, path: &str, body: &str) -> (u16, String) {
    http_with(ip, port, method, path, &[], body).await
}

/// [`http`] with extra request headers.
pub async fn http_with(
    ip: &str,
    port: u16,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: &str,
) -> (u16, String) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut stream = tokio::net::TcpStream::connect((ip, port))
        .await
        .unwrap_or_else(|e| panic!("connecting to {ip}:{port}: {e}"));
    let extra: String = headers
        .iter()
        .map(|(name, value)| format!("{name}: {value}\r\n"))
        .collect();
    let request = format!(
        "{method} {path} HTTP/1.1\r\nHost: {ip}\r\nContent-Type: application/json\r\nContent-Length: {}\r\n{extra}Connection: close\r\n\r\n{body}",
        body.len()
    );
    stream
        .write_all(request.as_bytes())
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    let mut response = String::new();
    stream
        .read_to_string(&mut response)
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    let code = response
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or(0);
    let body = response
        .split_once("\r\n\r\n")
        .map(|(_, b)| b.to_string())
        .unwrap_or_default();
    (code, body)
}

/// The chart's release; on drop (also when the test fails) helm uninstalls it, so its
/// cluster-scoped objects never linger, and both namespaces go.
pub struct Release {
    pub name: String,
    pub namespace: String,
    pub watched: String,
}

impl Drop for Release {
    fn drop(&mut self) {
        // The systems first, while the operator runs to take down their topics and
        // finalizers; one it could not finish is let go, so the namespace can go.
        let kubectl = |args: &[&str]| {
            Command::new("kubectl")
                .args(args)
                .env("KUBECONFIG", &testbed().kubeconfig)
                .output()
        };
        let _ = kubectl(&[
            "delete",
            "outboxsystems",
            "--all",
            "-n",
            &self.watched,
            "--timeout=60s",
        ]);
        if let Ok(left) = kubectl(&["get", "outboxsystems", "-n", &self.watched, "-o", "name"]) {
            for system in String::from_utf8_lossy(&left.stdout).lines() {
                let _ = kubectl(&[
                    "patch",
                    system,
                    "-n",
                    &self.watched,
                    "--type=merge",
                    "-p",
                    r#"{"metadata":{"finalizers":[]}}"#,
                ]);
            }
        }
        let _ = Command::new("helm")
            .args(["uninstall", &self.name, "-n", &self.namespace, "--wait"])
            .env("KUBECONFIG", &testbed().kubeconfig)
            .output();
        let _ = Command::new("kubectl")
            .args([
                "delete",
                "namespace",
                &self.namespace,
                &self.watched,
                "--wait=false",
            ])
            .env("KUBECONFIG", &testbed().kubeconfig)
            .output();
    }
}

/// helm installs the chart into a namespace of its own (as users do: `outbox-system`),
/// watching `watched`, where the OutboxSystem and its LoadTests live.
pub fn install_chart(watched: &str) -> Release {
    install_chart_with(watched, &[])
}

/// [`install_chart`] with more helm flags (e.g. `--set`, `metrics.podMonitor.enabled=true`).
pub fn install_chart_with(watched: &str, flags: &[&str]) -> Release {
    let chart = testbed_support::repo_root().join("charts/outbox-operator");
    let chart = chart.display().to_string();
    let namespace = format!("{watched}-op");
    // helm installs the chart's CRDs only where none exist: on a testbed kept from an
    // earlier run they are brought up to date the way docs/upgrading.md says to upgrade.
    run(
        "kubectl",
        &[
            "apply",
            "--server-side",
            "--force-conflicts",
            "-f",
            &format!("{chart}/crds/"),
        ],
    );
    let watch = format!("watchNamespace={watched}");
    let loadtests = format!("loadtest.namespaces={{{watched}}}");
    let mut args = vec![
        "install",
        watched,
        &chart,
        "--namespace",
        &namespace,
        "--create-namespace",
        "--set",
        &watch,
        "--set",
        &loadtests,
        "--set",
        "logFormat=text",
        "--wait",
        "--timeout",
        "3m",
    ];
    args.extend_from_slice(flags);
    run("helm", &args);
    Release {
        name: watched.to_string(),
        namespace,
        watched: watched.to_string(),
    }
}

/// PID of the first container of `pod` on this machine, from the node's containerd.
pub fn container_pid(pod: &Pod) -> u32 {
    let id = pod
        .status
        .as_ref()
        .and_then(|s| s.container_statuses.as_ref())
        .and_then(|c| c.first())
        .and_then(|c| c.container_id.clone())
        .unwrap_or_else(|| panic!("pod {} has no container id", pod.name_any()));
    let id = id.trim_start_matches("containerd://");
    let address = testbed().node().containerd_address.display().to_string();
    let tasks = run(
        "ctr",
        &["--address", &address, "-n", "k8s.io", "tasks", "ls"],
    );
    tasks
        .lines()
        .find(|l| l.starts_with(id))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|pid| pid.parse().ok())
        .unwrap_or_else(|| panic!("no running task {id} in:\n{tasks}"))
}

pub fn restarts(pod: &Pod) -> i32 {
    pod.status
        .as_ref()
        .and_then(|s| s.container_statuses.as_ref())
        .and_then(|c| c.first())
        .map(|c| c.restart_count)
        .unwrap_or(0)
}

pub async fn pg(url: &str, sql: &str) -> Option<tokio_postgres::Row> {
    let (client, connection) = tokio_postgres::connect(url, tokio_postgres::NoTls)
        .await
        .ok()?;
    let task = tokio::spawn(connection);
    let row = client.query_opt(sql, &[]).await.ok().flatten();
    drop(client);
    let _ = task.await;
    row
}

/// Waits until every pod of the reference system (3 producers; groups a, b, c with 3,
/// 2 and 1 replicas) is Ready in the namespace of `pods`.
pub async fn reference_pods_ready(pods: &Api<Pod>) {
    ready_pods(pods, "app.kubernetes.io/component=producer", 3).await;
    for (group, replicas) in [("group-a", 3), ("group-b", 2), ("group-c", 1)] {
        ready_pods(pods, &format!("outbox.dev/group={group}"), replicas).await;
    }
}

pub async fn loadtest_phase(loadtests: &Api<LoadTest>, name: &str) -> Option<LoadTestPhase> {
    loadtests.get(name).await.ok()?.status?.phase
}

/// `testbed/part.sh ACTION PART`: real stops and starts of a testbed process.
pub fn part(action: &str, name: &str) {
    let script = testbed_support::repo_root().join("testbed/part.sh");
    let out = Command::new(&script)
        .args([action, name])
        .output()
        .unwrap_or_else(|e| panic!("running {}: {e}", script.display()));
    assert!(
        out.status.success(),
        "testbed/part.sh {action} {name} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// A testbed part stopped by the test; started again on drop (also when the test fails).
pub struct PartDown(&'static str);

impl PartDown {
    pub fn stop(name: &'static str) -> PartDown {
        part("stop", name);
        PartDown(name)
    }
}

impl Drop for PartDown {
    fn drop(&mut self) {
        part("start", self.0);
    }
}
