//! Helpers shared by the operator's testbed tests: CRD installation, a namespace per
//! test, the operator in-process or as a child process, and reads from Kafka.
//! (Shared by several test binaries, each of which uses some of it.)
#![allow(dead_code)]

use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::Secret;
use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use k8s_openapi::ByteString;
use kube::api::{DeleteParams, PostParams};
use kube::{Api, Client};
use outbox_operator::crd::{LoadTest, OutboxSystem};
use outbox_operator::metrics::Metrics;
use outbox_operator::{Context, Scope, Settings};
use std::collections::BTreeMap;
use std::net::TcpListener;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::Duration;
use testbed_support::{create_namespace, eventually, kafka, testbed};

pub const WAIT: Duration = Duration::from_secs(60);

/// A file of this clone (found at run time, see `testbed_support::repo_root`).
pub fn repo_file(path: &str) -> PathBuf {
    testbed_support::repo_root().join(path)
}

/// Installs the CRDs from `crds/` (server-side apply) and waits until they are Established.
pub async fn install_crds(client: &Client) {
    for file in ["crds/outboxsystem.yaml", "crds/loadtest.yaml"] {
        let text =
            std::fs::read_to_string(repo_file(file)).unwrap_or_else(|e| panic!("{file}: {e}"));
        let crd: CustomResourceDefinition =
            serde_yaml::from_str(&text).unwrap_or_else(|e| panic!("{file}: {e}"));
        testbed_support::apply_crd(client, &crd, "operator-tests").await;
    }
}

/// A client, the CRDs installed, and a fresh namespace holding the database Secret.
pub async fn setup(prefix: &str) -> (Client, String) {
    let client = testbed()
        .kube_client()
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    install_crds(&client).await;
    let namespace = create_namespace(&client, prefix).await;
    let secrets: Api<Secret> = Api::namespaced(client.clone(), &namespace);
    let secret = Secret {
        metadata: kube::api::ObjectMeta {
            name: Some("outbox-postgres".into()),
            ..Default::default()
        },
        data: Some(BTreeMap::from([(
            "url".to_string(),
            ByteString(
                testbed()
                    .fresh_schema(&prefix.replace('-', "_"))
                    .await
                    .unwrap_or_else(|e| panic!("a schema for {namespace}: {e}"))
                    .into_bytes(),
            ),
        )])),
        ..Default::default()
    };
    secrets
        .create(&PostParams::default(), &secret)
        .await
        .unwrap_or_else(|e| panic!("creating Secret: {e}"));
    // No pod may start here: these tests are about what the operator writes to the API
    // server (Deployments whose pods never become ready, runner Jobs that never run),
    // not about pods on the node, which would race them (a runner pod finishing, say).
    let quotas: Api<k8s_openapi::api::core::v1::ResourceQuota> =
        Api::namespaced(client.clone(), &namespace);
    let quota: k8s_openapi::api::core::v1::ResourceQuota = serde_json::from_value(
        serde_json::json!({"metadata": {"name": "no-pods"}, "spec": {"hard": {"pods": "0"}}}),
    )
    .unwrap_or_else(|e| panic!("{e}"));
    quotas
        .create(&PostParams::default(), &quota)
        .await
        .unwrap_or_else(|e| panic!("creating ResourceQuota: {e}"));
    // The load-test runner's ServiceAccount, as the chart creates it in
    // `loadtest.namespaces`.
    let accounts: Api<k8s_openapi::api::core::v1::ServiceAccount> =
        Api::namespaced(client.clone(), &namespace);
    let account: k8s_openapi::api::core::v1::ServiceAccount =
        serde_json::from_value(serde_json::json!({"metadata": {"name": "outbox-loadtest"}}))
            .unwrap_or_else(|e| panic!("{e}"));
    accounts
        .create(&PostParams::default(), &account)
        .await
        .unwrap_or_else(|e| panic!("creating ServiceAccount: {e}"));
    (client, namespace)
}

/// The database URL of `namespace`'s `outbox-postgres` Secret (each test namespace has a
/// schema of its own: one schema holds one system's outbox).
pub async fn namespace_database_url(client: &Client, namespace: &str) -> String {
    let secrets: Api<Secret> = Api::namespaced(client.clone(), namespace);
    let secret = secrets
        .get("outbox-postgres")
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    let bytes = secret
        .data
        .and_then(|mut d| d.remove("url"))
        .unwrap_or_else(|| panic!("no url in outbox-postgres"));
    String::from_utf8(bytes.0).unwrap_or_else(|e| panic!("{e}"))
}

/// A Secret `name` in `namespace` with the URL of another fresh schema.
pub async fn create_database_secret(client: &Client, namespace: &str, name: &str) {
    let url = testbed()
        .fresh_schema(&name.replace('-', "_"))
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    let secrets: Api<Secret> = Api::namespaced(client.clone(), namespace);
    let secret = Secret {
        metadata: kube::api::ObjectMeta {
            name: Some(name.into()),
            ..Default::default()
        },
        data: Some(BTreeMap::from([(
            "url".to_string(),
            ByteString(url.into_bytes()),
        )])),
        ..Default::default()
    };
    secrets
        .create(&PostParams::default(), &secret)
        .await
        .unwrap_or_else(|e| panic!("creating Secret {name}: {e}"));
}

/// The operator running in this test's runtime, stopped when dropped.
pub struct InProcessOperator {
    task: tokio::task::JoinHandle<()>,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    /// The in-process operator's metrics.
    pub metrics: Metrics,
}

impl Drop for InProcessOperator {
    fn drop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        self.task.abort();
    }
}

pub fn start_operator(client: &Client, namespace: &str) -> InProcessOperator {
    start_operator_with(
        client,
        namespace,
        Settings {
            status_refresh: Duration::from_secs(5),
            ..Settings::default()
        },
    )
}

/// The operator in this test's runtime with `settings`.
pub fn start_operator_with(
    client: &Client,
    namespace: &str,
    settings: Settings,
) -> InProcessOperator {
    let metrics = Metrics::default();
    let ctx = Context::new(client.clone(), metrics.clone(), settings);
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let scope = Scope::Namespace(namespace.to_string());
    let task = tokio::spawn(async move {
        let shutdown = async move {
            let _ = stopped.await;
        };
        if let Err(e) = outbox_operator::run(ctx, scope, shutdown).await {
            panic!("operator stopped with an error: {e}");
        }
    });
    InProcessOperator {
        task,
        stop: Some(stop),
        metrics,
    }
}

/// The operator binary as a child process, killed when dropped (also on test failure).
pub struct OperatorProcess {
    child: Child,
    metrics_port: u16,
    log: PathBuf,
}

impl OperatorProcess {
    pub fn spawn(namespace: &str, log_name: &str) -> Self {
        Self::spawn_with(namespace, log_name, &[])
    }

    pub fn spawn_with(namespace: &str, log_name: &str, extra_args: &[&str]) -> Self {
        let metrics_port = TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .map(|a| a.port())
            .unwrap_or_else(|e| panic!("finding a free port: {e}"));
        let log = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join(format!("{log_name}.log"));
        let out = std::fs::File::create(&log).unwrap_or_else(|e| panic!("{}: {e}", log.display()));
        let err = out.try_clone().unwrap_or_else(|e| panic!("{e}"));
        let mut command = Command::new(env!("CARGO_BIN_EXE_operator"));
        // A replica's identity is also its Events' reporting instance, as POD_NAME is
        // both in a pod.
        if let Some(at) = extra_args.iter().position(|a| *a == "--identity") {
            if let Some(identity) = extra_args.get(at + 1) {
                command.env("POD_NAME", identity);
            }
        }
        let child = command
            .args(["--namespace", namespace])
            .args([
                "--metrics-bind-address",
                &format!("127.0.0.1:{metrics_port}"),
            ])
            .args(["--status-refresh-seconds", "5"])
            .args(extra_args)
            .env("KUBECONFIG", &testbed().kubeconfig)
            .env("LOG_LEVEL", "info")
            .stdin(Stdio::null())
            .stdout(out)
            .stderr(err)
            .spawn()
            .unwrap_or_else(|e| panic!("spawning the operator binary: {e}"));
        OperatorProcess {
            child,
            metrics_port,
            log,
        }
    }

    /// A replica `identity` that runs for the Lease `outbox-operator` in `namespace`,
    /// lasting 3 s (so that a test sees a take-over within seconds).
    pub fn spawn_elected(namespace: &str, identity: &str) -> Self {
        Self::spawn_with(
            namespace,
            &format!("{namespace}-{identity}"),
            &[
                "--leader-elect",
                "--leader-election-namespace",
                namespace,
                "--leader-election-lease-seconds",
                "3",
                "--identity",
                identity,
            ],
        )
    }

    pub async fn get(&self, path: &str) -> Option<String> {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let mut stream = tokio::net::TcpStream::connect(("127.0.0.1", self.metrics_port))
            .await
            .ok()?;
        let request =
            format!("GET {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n");
        stream.write_all(request.as_bytes()).await.ok()?;
        let mut body = String::new();
        stream.read_to_string(&mut body).await.ok()?;
        body.starts_with("HTTP/1.1 200").then_some(body)
    }

    /// Sends SIGTERM and waits for the process to exit; None if it did not within 20 s.
    pub async fn terminate(&mut self) -> Option<std::process::ExitStatus> {
        let pid = self.child.id().to_string();
        let sent = Command::new("kill").args(["-TERM", &pid]).status().ok()?;
        assert!(sent.success(), "kill -TERM {pid} failed");
        for _ in 0..100 {
            if let Ok(Some(status)) = self.child.try_wait() {
                return Some(status);
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
        None
    }

    /// Sends `signal` (`STOP`, `CONT`, ...) to the process.
    pub fn signal(&self, signal: &str) {
        let pid = self.child.id();
        assert!(
            testbed_support::process::signal(signal, pid),
            "kill -{signal} {pid} failed"
        );
    }

    /// The last `lines` lines of the process's log, for a failure message.
    pub fn log_tail(&self, lines: usize) -> String {
        let text = std::fs::read_to_string(&self.log).unwrap_or_default();
        let all: Vec<&str> = text.lines().collect();
        format!(
            "--- last {lines} lines of {} ---\n{}",
            self.log.display(),
            all[all.len().saturating_sub(lines)..].join("\n")
        )
    }

    /// The exit status, once the process has exited.
    pub fn exited(&mut self) -> Option<std::process::ExitStatus> {
        self.child.try_wait().ok().flatten()
    }

    /// LoadTest reconciles this process started, from its own /metrics (None when it
    /// does not answer).
    pub async fn loadtest_reconciliations(&self) -> Option<u64> {
        let metrics = self.get("/metrics").await?;
        metrics.lines().find_map(|l| {
            l.strip_prefix("outbox_operator_reconciliations_total{controller=\"loadtest\"} ")?
                .trim()
                .parse::<f64>()
                .ok()
                .map(|v| v as u64)
        })
    }

    /// Whether this process has reconciled a LoadTest, from its own /metrics.
    pub async fn reconciled_loadtests(&self) -> bool {
        self.get("/metrics").await.is_some_and(|metrics| {
            metrics.lines().any(|l| {
                l.starts_with("outbox_operator_reconciliations_total{controller=\"loadtest\"}")
                    && !l.ends_with(" 0")
            })
        })
    }
}

impl Drop for OperatorProcess {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The reference OutboxSystem from `manifests/`, pointed at the testbed's Kafka with a
/// topic of its own.
pub fn reference_system(topic: &str) -> OutboxSystem {
    let mut system: OutboxSystem = testbed_support::manifest("manifests/outbox-system.yaml");
    system.spec.kafka.bootstrap_servers = testbed().kafka_bootstrap_servers.clone();
    system.spec.topic.name = topic.to_string();
    system
}

pub async fn create_system(
    client: &Client,
    namespace: &str,
    system: &OutboxSystem,
) -> Api<OutboxSystem> {
    let api: Api<OutboxSystem> = Api::namespaced(client.clone(), namespace);
    api.create(&PostParams::default(), system)
        .await
        .unwrap_or_else(|e| panic!("creating the OutboxSystem: {e}"));
    api
}

/// Who holds the operator's Lease in `namespace` now (None: no Lease, or released).
pub async fn lease_holder(client: &Client, namespace: &str) -> Option<String> {
    let leases: Api<k8s_openapi::api::coordination::v1::Lease> =
        Api::namespaced(client.clone(), namespace);
    let lease = leases.get_opt("outbox-operator").await.ok()??;
    lease.spec?.holder_identity
}

/// Partitions of `topic` in the testbed's Kafka (None: no such topic).
pub async fn kafka_partitions(topic: &str) -> Option<usize> {
    kafka::partitions(&testbed().kafka_bootstrap_servers, topic).await
}

pub fn env_of(d: &Deployment) -> BTreeMap<String, String> {
    d.spec
        .as_ref()
        .and_then(|s| s.template.spec.as_ref())
        .map(|p| {
            p.containers[0]
                .env
                .iter()
                .flatten()
                .map(|e| {
                    (
                        e.name.clone(),
                        e.value.clone().unwrap_or_else(|| "<from>".into()),
                    )
                })
                .collect()
        })
        .unwrap_or_default()
}

pub fn condition(system: &OutboxSystem, type_: &str) -> Option<(String, String, String)> {
    system
        .status
        .as_ref()?
        .conditions
        .iter()
        .find(|c| c.type_ == type_)
        .map(|c| (c.status.clone(), c.reason.clone(), c.message.clone()))
}

/// Waits until the OutboxSystem `name` has a condition `type_` with `reason`, and returns
/// the OutboxSystem as read then.
pub async fn wait_for_reason(
    systems: &Api<OutboxSystem>,
    name: &str,
    type_: &str,
    reason: &str,
) -> OutboxSystem {
    eventually(
        &format!("{name}: {type_} with reason {reason}"),
        WAIT,
        || {
            let api = systems.clone();
            async move {
                let s = api.get(name).await.ok()?;
                (condition(&s, type_)?.1 == reason).then_some(s)
            }
        },
    )
    .await
}

/// Waits until `name`'s condition `type_` has `reason`, and returns its message.
pub async fn wait_for_message(
    systems: &Api<OutboxSystem>,
    name: &str,
    type_: &str,
    reason: &str,
) -> String {
    let s = wait_for_reason(systems, name, type_, reason).await;
    condition(&s, type_).map(|c| c.2).unwrap_or_default()
}

/// Waits until `name` exists in `api`, and returns it.
pub async fn wait_present<K>(api: &Api<K>, name: &str) -> K
where
    K: kube::Resource + Clone + serde::de::DeserializeOwned + std::fmt::Debug,
{
    eventually(
        &format!("{} {name} to exist", std::any::type_name::<K>()),
        WAIT,
        || {
            let api = api.clone();
            async move { api.get_opt(name).await.ok().flatten() }
        },
    )
    .await
}

/// Deletes the OutboxSystem `name` and waits until it is gone (its finalizer done).
pub async fn delete_and_wait(systems: &Api<OutboxSystem>, name: &str) {
    systems
        .delete(name, &DeleteParams::default())
        .await
        .unwrap_or_else(|e| panic!("deleting OutboxSystem {name}: {e}"));
    wait_gone(systems, name).await;
}

/// Waits until `name` no longer exists in `api`.
pub async fn wait_gone<K>(api: &Api<K>, name: &str)
where
    K: kube::Resource + Clone + serde::de::DeserializeOwned + std::fmt::Debug,
{
    eventually(
        &format!("{} {name} to be gone", std::any::type_name::<K>()),
        WAIT,
        || {
            let api = api.clone();
            async move { api.get_opt(name).await.ok()?.is_none().then_some(()) }
        },
    )
    .await
}

/// True when every field of `part` is in `whole` with the same value (numbers compared
/// as numbers).
pub fn is_subset(part: &serde_json::Value, whole: &serde_json::Value) -> bool {
    use serde_json::Value;
    match (part, whole) {
        (Value::Object(p), Value::Object(w)) => p
            .iter()
            .all(|(k, v)| w.get(k).is_some_and(|wv| is_subset(v, wv))),
        (Value::Array(p), Value::Array(w)) => {
            p.len() == w.len() && p.iter().zip(w).all(|(a, b)| is_subset(a, b))
        }
        (Value::Number(a), Value::Number(b)) => a.as_f64() == b.as_f64(),
        (a, b) => a == b,
    }
}

/// Parses a sample into its Rust type, failing if any field of the file would be lost.
pub fn parse_sample<K: serde::de::DeserializeOwned + serde::Serialize>(file: &str) -> K {
    let raw: serde_json::Value = testbed_support::manifest(file);
    let typed: K = testbed_support::manifest(file);
    let back = serde_json::to_value(&typed).unwrap_or_default();
    assert!(
        is_subset(&raw, &back),
        "{file} has fields the CRD types do not know"
    );
    typed
}

/// The value of `key` in the config of `topic`, as the testbed's Kafka reports it.
pub async fn kafka_topic_config(topic: &str, key: &str) -> Option<String> {
    kafka::topic_config(&testbed().kafka_bootstrap_servers, topic, key).await
}

pub fn small_loadtest(name: &str, system: &str) -> LoadTest {
    let mut lt: LoadTest = testbed_support::manifest("manifests/loadtest-small.yaml");
    lt.metadata.name = Some(name.to_string());
    lt.spec.system_ref.name = system.to_string();
    lt
}
