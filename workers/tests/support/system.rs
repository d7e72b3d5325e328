//! A whole outbox system as processes on the testbed, for the runner's tests: a topic
//! and a schema ([`Env`]), producers and consumer groups ([`Worker`]s), and the runner
//! processes run against them ([`Runs`]). Everything is stopped on drop, passed or failed.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

use serde_json::Value;
use testbed_support::{testbed, unique_name};

use super::{Env, Worker};

const BIN: &str = env!("CARGO_BIN_EXE_outbox-worker");

/// Runner processes with a log each, killed and reaped on drop.
pub struct Runs {
    children: Vec<(String, Child)>,
    /// Where their logs and reports are.
    pub logs: PathBuf,
}

impl Runs {
    fn new(name: &str) -> Self {
        let logs = std::env::temp_dir().join(unique_name(name));
        std::fs::create_dir_all(&logs).expect("a log directory");
        Runs {
            children: Vec::new(),
            logs,
        }
    }

    fn log_path(&self, label: &str) -> PathBuf {
        self.logs.join(format!("{label}.log"))
    }

    /// Starts `command` with its output in `<label>.log`; returns its index.
    pub fn spawn(&mut self, label: &str, mut command: Command) -> usize {
        let log = std::fs::File::create(self.log_path(label)).expect("a log file");
        let err = log.try_clone().expect("a log file");
        command
            .stdin(Stdio::null())
            .stdout(Stdio::from(log))
            .stderr(Stdio::from(err));
        if std::env::var_os("RUST_LOG").is_none() {
            command.env("RUST_LOG", "info");
        }
        let child = command
            .spawn()
            .unwrap_or_else(|e| panic!("starting {label}: {e}"));
        self.children.push((label.to_string(), child));
        self.children.len() - 1
    }

    /// SIGKILL to process `index`, and reaps it.
    pub fn kill(&mut self, index: usize) {
        let (_, child) = &mut self.children[index];
        let _ = child.kill();
        let _ = child.wait();
    }

    /// Waits for process `index` to exit, killing it after `timeout`.
    pub async fn wait(&mut self, index: usize, timeout: Duration) -> ExitStatus {
        let deadline = Instant::now() + timeout;
        loop {
            let (label, child) = &mut self.children[index];
            if let Some(status) = child.try_wait().expect("polling a child") {
                return status;
            }
            if Instant::now() >= deadline {
                let label = label.clone();
                self.kill(index);
                panic!(
                    "{label} did not finish within {timeout:?}:\n{}",
                    self.log_tail(&label)
                );
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }

    /// The last 60 lines of process `label`'s log.
    pub fn log_tail(&self, label: &str) -> String {
        let text = std::fs::read_to_string(self.log_path(label)).unwrap_or_default();
        let lines: Vec<&str> = text.lines().collect();
        lines[lines.len().saturating_sub(60)..].join("\n")
    }
}

impl Drop for Runs {
    fn drop(&mut self) {
        for (_, child) in &mut self.children {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// One consumer group: its Kafka group id and its members.
pub struct Group {
    pub name: String,
    pub members: Vec<Worker>,
}

/// A topic, a schema, and running producers and consumer groups.
pub struct System {
    pub env: Env,
    pub producers: Vec<Worker>,
    pub groups: Vec<Group>,
    pub runs: Runs,
}

impl System {
    /// Creates the topic (3 partitions) and schema, starts `producers` producers and the
    /// groups `(suffix, replicas)`, and returns once every process answers its health
    /// check.
    pub async fn start(name: &str, producers: usize, groups: &[(&str, usize)]) -> System {
        System::start_with(name, producers, groups, &[]).await
    }

    /// [`System::start`] with `producer_env` set on every producer.
    pub async fn start_with(
        name: &str,
        producers: usize,
        groups: &[(&str, usize)],
        producer_env: &[(&str, &str)],
    ) -> System {
        let env = Env::on_testbed(name, 3).await;
        let mut extra = vec![("RELAY_LINGER_MS", "20")];
        extra.extend_from_slice(producer_env);
        let mut started: Vec<Worker> = (0..producers)
            .map(|i| Worker::producer(&env, &format!("{name}-producer-{i}"), &extra))
            .collect();
        // Producers first: they create the schema before the consumers look for it.
        for producer in &mut started {
            producer.wait_healthy("/api/messages/health").await;
        }
        let mut system = System {
            env,
            producers: started,
            groups: Vec::new(),
            runs: Runs::new(name),
        };
        for (suffix, replicas) in groups {
            let group = unique_name(&format!("{name}-{suffix}"));
            let mut members: Vec<Worker> = (0..*replicas)
                .map(|r| {
                    Worker::consumer(&system.env, &format!("{name}-{suffix}-{r}"), &group, &[])
                })
                .collect();
            for member in &mut members {
                member.wait_healthy("/api/consumer/health").await;
            }
            system.groups.push(Group {
                name: group,
                members,
            });
        }
        system
    }

    /// The producers' base URLs.
    pub fn producer_urls(&self) -> Vec<String> {
        self.producers.iter().map(|p| p.url("")).collect()
    }

    pub fn group_names(&self) -> Vec<String> {
        self.groups.iter().map(|g| g.name.clone()).collect()
    }

    /// `outbox-worker loadtest` against this system, with its report at `report`.
    pub fn runner(&self, report: &Path, extra: &[&str]) -> Command {
        let mut c = Command::new(BIN);
        c.arg("loadtest")
            .arg("--topic")
            .arg(&self.env.topic)
            .arg("--database-url")
            .arg(&self.env.database_url)
            .arg("--report")
            .arg(report)
            .arg("--progress-interval")
            .arg("2s")
            .env_remove("DATABASE_URL")
            .env_remove("LOADTEST_NAMESPACE")
            .env_remove("LOADTEST_NAME");
        for url in self.producer_urls() {
            c.arg("--producer-url").arg(url);
        }
        for group in &self.groups {
            c.arg("--group").arg(&group.name);
            for member in &group.members {
                c.arg("--consumer-metrics").arg(format!(
                    "{}={}",
                    group.name,
                    member.url("/metrics")
                ));
            }
        }
        c.args(extra);
        c
    }

    /// `outbox-worker loadtest --namespace <ns> --name <lt>` as the operator's Job runs
    /// it: the database URL in the environment, everything else from the API server.
    pub fn job_runner(&self, namespace: &str, name: &str, report: &Path) -> Command {
        let mut c = Command::new(BIN);
        c.args(["loadtest", "--namespace", namespace, "--name", name])
            .arg("--report")
            .arg(report)
            .args(["--progress-interval", "2s"])
            .env("DATABASE_URL", &self.env.database_url)
            .env("KAFKA_BOOTSTRAP_SERVERS", &self.env.bootstrap)
            .env("KUBECONFIG", &testbed().kubeconfig)
            .env_remove("LOADTEST_NAMESPACE")
            .env_remove("LOADTEST_NAME");
        c
    }

    /// Runs the runner to its end; returns its exit status and report.
    pub async fn run(
        &mut self,
        label: &str,
        extra: &[&str],
        timeout: Duration,
    ) -> (ExitStatus, Value) {
        let report = self.runs.logs.join(format!("{label}-report.json"));
        let runner = self.runner(&report, extra);
        let index = self.runs.spawn(label, runner);
        let status = self.runs.wait(index, timeout).await;
        let text = std::fs::read_to_string(&report).unwrap_or_else(|e| {
            panic!(
                "{label} wrote no report ({e}); exit {status}:\n{}",
                self.runs.log_tail(label)
            )
        });
        let report: Value = serde_json::from_str(&text).expect("the report is JSON");
        (status, report)
    }

    /// Runs the runner on the LoadTest spec `yaml` (`--spec`) with `extra` flags.
    pub async fn run_spec(
        &mut self,
        yaml: &str,
        extra: &[&str],
        timeout: Duration,
    ) -> (ExitStatus, Value) {
        let path = self.runs.logs.join("runner-spec.yaml");
        std::fs::write(&path, yaml).expect("write the spec");
        let path = path.display().to_string();
        let mut args = vec!["--spec", path.as_str()];
        args.extend_from_slice(extra);
        self.run("runner", &args, timeout).await
    }
}
