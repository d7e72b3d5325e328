//! Connects integration tests to the testbed's real components.
//!
//! `make testbed-up` (or `make test`, which brings the testbed up and down around the
//! test run) writes `.testbed/env`; this crate reads it once per test binary. Nothing
//! here stands in for a component: a test that needs the testbed fails with a message
//! saying how to start it when it is not running.

pub mod kafka;
pub mod process;
pub mod tls;

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::OnceLock;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// Where the testbed's real components listen, as written by `testbed/up.sh`.
#[derive(Debug, Clone)]
pub struct Testbed {
    /// Admin kubeconfig for the testbed's kube-apiserver.
    pub kubeconfig: PathBuf,
    /// `host:port` of the single KRaft broker.
    pub kafka_bootstrap_servers: String,
    /// `postgres://` URL of the `outbox` database (owner `outbox`, may create databases).
    pub database_url: String,
    /// The testbed's state directory (`.testbed/`), holding logs and the env file.
    pub state_dir: PathBuf,
    /// The node, when the testbed runs one (`TESTBED_NODE=1`, the default).
    pub node: Option<Node>,
}

/// The testbed's node: kubelet, containerd, kube-proxy and CoreDNS on this machine.
#[derive(Debug, Clone)]
pub struct Node {
    /// The Node object's name.
    pub name: String,
    /// containerd's socket (for `ctr --address`).
    pub containerd_address: PathBuf,
    /// Services, EndpointSlices and Secret that give pods Kafka (`outbox-kafka:9092`) and
    /// PostgreSQL (`outbox-postgres:5432`) under the names the samples use.
    pub host_services: PathBuf,
}

/// Why the testbed could not be used.
#[derive(Debug, thiserror::Error)]
pub enum TestbedError {
    #[error("the testbed is not running: {path} not found. Run `make testbed-up` first (or `make test`, which does it)")]
    NotRunning { path: PathBuf },
    #[error("reading {path}: {source}")]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{path} has no `{key}`: rerun `make testbed-up`")]
    MissingKey { path: PathBuf, key: &'static str },
    #[error("loading the testbed kubeconfig: {0}")]
    Kubeconfig(#[from] kube::config::KubeconfigError),
    #[error("building a Kubernetes client: {0}")]
    KubeClient(#[from] kube::Error),
    #[error("connecting to the testbed's PostgreSQL: {0}")]
    Postgres(#[from] tokio_postgres::Error),
}

impl Testbed {
    /// Reads the env file at `path` (`export KEY='value'` lines).
    pub fn from_env_file(path: &Path) -> Result<Self, TestbedError> {
        let text = std::fs::read_to_string(path).map_err(|source| {
            if source.kind() == std::io::ErrorKind::NotFound {
                TestbedError::NotRunning {
                    path: path.to_path_buf(),
                }
            } else {
                TestbedError::Read {
                    path: path.to_path_buf(),
                    source,
                }
            }
        })?;
        let vars = parse_env_file(&text);
        let get = |key: &'static str| {
            vars.get(key).cloned().ok_or(TestbedError::MissingKey {
                path: path.to_path_buf(),
                key,
            })
        };
        Ok(Testbed {
            kubeconfig: PathBuf::from(get("KUBECONFIG")?),
            kafka_bootstrap_servers: get("KAFKA_BOOTSTRAP_SERVERS")?,
            database_url: get("DATABASE_URL")?,
            state_dir: PathBuf::from(get("TESTBED_STATE_DIR")?),
            node: match vars.get("TESTBED_NODE").map(String::as_str) {
                Some("1") => Some(Node {
                    name: get("TESTBED_NODE_NAME")?,
                    containerd_address: PathBuf::from(get("CONTAINERD_ADDRESS")?),
                    host_services: PathBuf::from(get("TESTBED_HOST_SERVICES")?),
                }),
                _ => None,
            },
        })
    }

    /// A client for the testbed's kube-apiserver, as the admin user.
    pub async fn kube_client(&self) -> Result<kube::Client, TestbedError> {
        self.admin_client(true).await
    }

    /// The admin client without kube's retries of 429, 503 and 504 answers, for a test
    /// that must see them (an eviction a PodDisruptionBudget refuses answers 429, and the
    /// default client would retry it until the budget allows it again).
    pub async fn kube_client_without_retries(&self) -> Result<kube::Client, TestbedError> {
        self.admin_client(false).await
    }

    async fn admin_client(&self, default_retry: bool) -> Result<kube::Client, TestbedError> {
        let kubeconfig = kube::config::Kubeconfig::read_from(&self.kubeconfig)?;
        let mut config =
            kube::Config::from_custom_kubeconfig(kubeconfig, &Default::default()).await?;
        config.default_retry = default_retry;
        Ok(kube::Client::try_from(config)?)
    }

    /// A fresh PostgreSQL schema for one test, and a database URL whose connections use
    /// it as their `search_path`, so tests never see each other's tables.
    pub async fn fresh_schema(&self, prefix: &str) -> Result<String, TestbedError> {
        let schema = unique_name(prefix).replace('-', "_");
        let (client, connection) =
            tokio_postgres::connect(&self.database_url, tokio_postgres::NoTls).await?;
        let task = tokio::spawn(connection);
        client
            .batch_execute(&format!("CREATE SCHEMA \"{schema}\""))
            .await?;
        drop(client);
        let _ = task.await;
        let sep = if self.database_url.contains('?') {
            '&'
        } else {
            '?'
        };
        Ok(format!(
            "{}{sep}options=-csearch_path%3D{schema}",
            self.database_url
        ))
    }

    /// The node; panics saying how to get one when the testbed runs without it, so a
    /// test that needs pods never passes without them.
    pub fn node(&self) -> &Node {
        self.node.as_ref().unwrap_or_else(|| {
            panic!("this test runs pods and the testbed has no node: run `make testbed-up` as root without TESTBED_NODE=0")
        })
    }

    /// An rdkafka client config pointing at the testbed broker.
    pub fn kafka_config(&self) -> rdkafka::ClientConfig {
        let mut config = rdkafka::ClientConfig::new();
        config.set("bootstrap.servers", &self.kafka_bootstrap_servers);
        config
    }
}

/// The testbed this test binary uses, read once from `$TESTBED_ENV` or `<repo>/.testbed/env`.
///
/// Panics with a message saying how to start the testbed when it is not running:
/// integration tests must never pass silently without their real components.
pub fn testbed() -> &'static Testbed {
    static TESTBED: OnceLock<Testbed> = OnceLock::new();
    TESTBED.get_or_init(|| match Testbed::from_env_file(&env_file_path()) {
        Ok(testbed) => testbed,
        Err(e) => panic!("{e}"),
    })
}

/// The env file this test binary reads.
pub fn env_file_path() -> PathBuf {
    if let Some(path) = std::env::var_os("TESTBED_ENV") {
        return PathBuf::from(path);
    }
    repo_root().join(".testbed").join("env")
}

/// The workspace root (the directory holding `testbed/`).
///
/// Found at run time from the directory `cargo test` runs the test in (its package),
/// never from a path compiled in: one cargo target directory may serve several clones
/// (CI keeps it in a cache outside the clone), and a compiled-in path would point a test
/// at another clone's testbed.
pub fn repo_root() -> PathBuf {
    let start = std::env::var_os("CARGO_MANIFEST_DIR")
        .map(PathBuf::from)
        .or_else(|| std::env::current_dir().ok())
        .unwrap_or_else(|| PathBuf::from("."));
    start
        .ancestors()
        .find(|dir| dir.join("testbed").join("versions.env").is_file())
        .map(Path::to_path_buf)
        .unwrap_or(start)
}

/// A YAML file of the repository (`manifests/outbox-system.yaml`, ...) as its type.
pub fn manifest<K: serde::de::DeserializeOwned>(file: &str) -> K {
    let path = repo_root().join(file);
    let text = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    serde_yaml::from_str(&text).unwrap_or_else(|e| panic!("{file}: {e}"))
}

/// A loopback port nothing listens on now, and that this process has not handed out
/// before: the kernel may give the same free port to two binds in a row, and two
/// workers started one after the other would then race for it (seen in CI: a consumer
/// exited on "Address already in use" while its twin answered its health checks).
pub fn free_port() -> u16 {
    use std::collections::HashSet;
    use std::sync::Mutex;
    static HANDED_OUT: Mutex<Option<HashSet<u16>>> = Mutex::new(None);
    loop {
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .map(|a| a.port())
            .unwrap_or_else(|e| panic!("no free loopback port: {e}"));
        let mut handed_out = HANDED_OUT.lock().unwrap_or_else(|e| e.into_inner());
        if handed_out.get_or_insert_with(HashSet::new).insert(port) {
            return port;
        }
    }
}

/// Two passwords holding every character RFC 3986 reserves, marked `Zq` at both ends:
/// raw (all but `@` and `%`, which tokio-postgres reads as the end of the credentials
/// and as an escape) and percent-encoded (all of them), for tests of URL handling.
pub fn passwords_with_every_reserved_character() -> [String; 2] {
    let reserved = ":/?#[]@!$&'()*+,;=%";
    let raw: String = reserved
        .chars()
        .filter(|c| !matches!(c, '@' | '%'))
        .collect();
    let encoded: String = reserved
        .chars()
        .map(|c| format!("%{:02X}", c as u32))
        .collect();
    [format!("Zq{raw}Zq"), format!("Zq{encoded}Zq")]
}

/// A name unique to this test run: `prefix-<pid>-<seconds>-<counter>`, lower case, valid
/// as a Kubernetes name, a Kafka topic, a consumer group and (with `_`) a SQL identifier.
pub fn unique_name(prefix: &str) -> String {
    static COUNTER: AtomicU32 = AtomicU32::new(0);
    let n = COUNTER.fetch_add(1, Ordering::Relaxed);
    let secs = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs() % 100_000)
        .unwrap_or(0);
    format!("{prefix}-{}-{secs}-{n}", std::process::id()).to_lowercase()
}

/// Polls `check` every 200 ms until it returns `Some`, or gives up after `timeout`
/// and panics with `what`, the thing the test was waiting for.
pub async fn eventually<T, F, Fut>(what: &str, timeout: Duration, mut check: F) -> T
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Option<T>>,
{
    let deadline = tokio::time::Instant::now() + timeout;
    loop {
        if let Some(value) = check().await {
            return value;
        }
        if tokio::time::Instant::now() >= deadline {
            panic!("timed out after {timeout:?} waiting for {what}");
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// Creates a namespace named after `prefix` (see [`unique_name`]) and returns its name.
pub async fn create_namespace(client: &kube::Client, prefix: &str) -> String {
    use k8s_openapi::api::core::v1::Namespace;
    use kube::api::{Api, ObjectMeta, PostParams};
    let name = unique_name(prefix);
    let namespace = Namespace {
        metadata: ObjectMeta {
            name: Some(name.clone()),
            ..Default::default()
        },
        ..Default::default()
    };
    Api::<Namespace>::all(client.clone())
        .create(&PostParams::default(), &namespace)
        .await
        .unwrap_or_else(|e| panic!("creating namespace {name}: {e}"));
    name
}

/// Whether ServiceAccount `account` of `namespace` may `verb` the core `resource` named
/// `name` there, as the API server answers a SubjectAccessReview (what `kubectl auth
/// can-i <verb> <resource>/<name> --as system:serviceaccount:<namespace>:<account>`
/// asks).
pub async fn service_account_may(
    client: &kube::Client,
    namespace: &str,
    account: &str,
    verb: &str,
    resource: &str,
    name: Option<&str>,
) -> bool {
    use k8s_openapi::api::authorization::v1::{
        ResourceAttributes, SubjectAccessReview, SubjectAccessReviewSpec,
    };
    use kube::api::{Api, PostParams};
    let review = SubjectAccessReview {
        spec: SubjectAccessReviewSpec {
            user: Some(format!("system:serviceaccount:{namespace}:{account}")),
            groups: Some(vec![
                "system:serviceaccounts".into(),
                format!("system:serviceaccounts:{namespace}"),
                "system:authenticated".into(),
            ]),
            resource_attributes: Some(ResourceAttributes {
                namespace: Some(namespace.to_string()),
                verb: Some(verb.to_string()),
                group: Some(String::new()),
                resource: Some(resource.to_string()),
                name: name.map(str::to_string),
                ..ResourceAttributes::default()
            }),
            ..SubjectAccessReviewSpec::default()
        },
        ..SubjectAccessReview::default()
    };
    Api::<SubjectAccessReview>::all(client.clone())
        .create(&PostParams::default(), &review)
        .await
        .unwrap_or_else(|e| panic!("a SubjectAccessReview: {e}"))
        .status
        .is_some_and(|s| s.allowed)
}

/// Deletes `namespace` and everything in it, without waiting (a test's last step; a
/// namespace already gone is not an error).
pub async fn delete_namespace(client: &kube::Client, namespace: &str) {
    use k8s_openapi::api::core::v1::Namespace;
    use kube::api::{Api, DeleteParams};
    let _ = Api::<Namespace>::all(client.clone())
        .delete(namespace, &DeleteParams::default())
        .await;
}

/// Applies `crd` (server-side apply, field manager `manager`) and waits until the API
/// server reports it Established, so its resources can be served at once.
pub async fn apply_crd(
    client: &kube::Client,
    crd: &k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition,
    manager: &str,
) {
    use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
    use kube::api::{Api, Patch, PatchParams};
    let crds: Api<CustomResourceDefinition> = Api::all(client.clone());
    let name = crd.metadata.name.clone().unwrap_or_default();
    crds.patch(
        &name,
        &PatchParams::apply(manager).force(),
        &Patch::Apply(crd),
    )
    .await
    .unwrap_or_else(|e| panic!("applying the CRD {name}: {e}"));
    eventually(
        &format!("the CRD {name} to be Established"),
        Duration::from_secs(60),
        || {
            let crds = crds.clone();
            let name = name.clone();
            async move {
                let crd = crds.get(&name).await.ok()?;
                let established = crd
                    .status?
                    .conditions?
                    .iter()
                    .any(|c| c.type_ == "Established" && c.status == "True");
                established.then_some(())
            }
        },
    )
    .await;
}

fn parse_env_file(text: &str) -> HashMap<String, String> {
    text.lines()
        .filter_map(|line| line.trim().strip_prefix("export "))
        .filter_map(|assignment| assignment.split_once('='))
        .map(|(key, value)| {
            let value = value.trim();
            let unquoted = value
                .strip_prefix('\'')
                .and_then(|v| v.strip_suffix('\''))
                .unwrap_or(value);
            (key.trim().to_string(), unquoted.to_string())
        })
        .collect()
}

/// Roles a test created on the testbed's PostgreSQL, dropped with what they own (and
/// their rights on the database) when the guard goes, passed or failed: roles belong to
/// the whole cluster and outlive the test's schema.
pub struct DropRoles {
    pub names: Vec<String>,
}

impl Drop for DropRoles {
    fn drop(&mut self) {
        let (url, names) = (
            testbed().database_url.clone(),
            std::mem::take(&mut self.names),
        );
        // A runtime of its own: the guard may go inside or outside one.
        let _ = std::thread::spawn(move || {
            let Ok(runtime) = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
            else {
                return;
            };
            runtime.block_on(async {
                let Ok((db, connection)) =
                    tokio_postgres::connect(&url, tokio_postgres::NoTls).await
                else {
                    return;
                };
                let task = tokio::spawn(connection);
                for name in names {
                    // DROP OWNED needs membership in the role, which CREATEROLE alone
                    // does not give; each statement on its own, whatever the last did.
                    for sql in [
                        format!("GRANT \"{name}\" TO CURRENT_USER"),
                        format!("DROP OWNED BY \"{name}\" CASCADE"),
                        format!("DROP ROLE IF EXISTS \"{name}\""),
                    ] {
                        if let Err(e) = db.batch_execute(&sql).await {
                            let why = e
                                .as_db_error()
                                .map(|d| d.message().to_string())
                                .unwrap_or_else(|| e.to_string());
                            eprintln!("dropping the test's role {name}: {sql}: {why}");
                        }
                    }
                }
                drop(db);
                let _ = task.await;
            });
        })
        .join();
    }
}

/// Runs a command from the testbed's PATH (kubectl, helm); panics with its stderr.
pub fn run(program: &str, args: &[&str]) -> String {
    let out = std::process::Command::new(program)
        .args(args)
        .env("KUBECONFIG", &testbed().kubeconfig)
        .output()
        .unwrap_or_else(|e| panic!("running {program}: {e} (is the testbed's PATH set?)"));
    assert!(
        out.status.success(),
        "{program} {} failed: {}",
        args.join(" "),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn env_file_values_are_unquoted() {
        let vars = parse_env_file(
            "# comment\nexport KUBECONFIG='/x/kubeconfig'\nexport DATABASE_URL=postgres://a@b/c\n",
        );
        assert_eq!(vars["KUBECONFIG"], "/x/kubeconfig");
        assert_eq!(vars["DATABASE_URL"], "postgres://a@b/c");
        assert_eq!(vars.len(), 2);
    }

    #[test]
    fn missing_env_file_says_how_to_start_the_testbed() {
        let err = Testbed::from_env_file(Path::new("/nonexistent/.testbed/env")).unwrap_err();
        assert!(err.to_string().contains("make testbed-up"), "{err}");
    }

    #[test]
    fn free_ports_are_never_handed_out_twice() {
        let ports: Vec<u16> = (0..500).map(|_| free_port()).collect();
        let distinct: std::collections::HashSet<u16> = ports.iter().copied().collect();
        assert_eq!(distinct.len(), ports.len());
    }

    #[test]
    fn unique_names_differ_and_are_valid_kubernetes_names() {
        let a = unique_name("Smoke");
        let b = unique_name("Smoke");
        assert_ne!(a, b);
        assert!(a
            .chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-'));
    }
}
