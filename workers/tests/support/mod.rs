//! Helpers for the workers' integration tests: worker processes that are stopped on
//! drop, topics, HTTP sends and ledger checks against the testbed.
#![allow(dead_code)]

pub mod report;
pub mod system;
pub mod throwaway;

use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use outbox_workers::ledger::{self, GroupReport, IdSet};
use serde_json::{json, Value};
use testbed_support::process::signal;
use testbed_support::{free_port, kafka, testbed, unique_name};

/// How long a test waits for messages it reads back from a topic.
pub const READ_TIMEOUT: Duration = Duration::from_secs(90);

/// Where the brokers and the database of one test are.
#[derive(Debug, Clone)]
pub struct Env {
    pub bootstrap: String,
    /// A URL whose sessions use the test's own schema.
    pub database_url: String,
    pub topic: String,
}

impl Env {
    /// A fresh schema and a fresh topic with `partitions` on the shared testbed.
    pub async fn on_testbed(name: &str, partitions: i32) -> Env {
        let tb = testbed();
        let database_url = tb.fresh_schema(name).await.expect("fresh schema");
        let topic = unique_name(name);
        kafka::create_topic(&tb.kafka_bootstrap_servers, &topic, partitions, &[]).await;
        Env {
            bootstrap: tb.kafka_bootstrap_servers.clone(),
            database_url,
            topic,
        }
    }
}

/// A worker process (`outbox-worker <role>`), killed on drop.
pub struct Worker {
    pub name: String,
    pub port: u16,
    child: Option<Child>,
    pub log: PathBuf,
    /// What it was started with, to start it again (not for workers in a cgroup).
    launch: Option<Launch>,
}

/// A worker's role, test environment, name and extra settings.
#[derive(Clone)]
struct Launch {
    role: String,
    env: Env,
    name: String,
    extra: Vec<(String, String)>,
}

impl Worker {
    /// Starts `outbox-worker producer` for `env`.
    pub fn producer(env: &Env, name: &str, extra: &[(&str, &str)]) -> Worker {
        Worker::start("producer", env, name, extra)
    }

    /// Starts `outbox-worker consumer` in `group` for `env`.
    pub fn consumer(env: &Env, name: &str, group: &str, extra: &[(&str, &str)]) -> Worker {
        let mut all = vec![("KAFKA_CONSUMER_GROUP", group)];
        all.extend_from_slice(extra);
        Worker::start("consumer", env, name, &all)
    }

    /// Starts `outbox-worker producer` for `env` inside `cgroup` from its first
    /// instruction on (a shell joins the cgroup, then becomes the worker).
    pub fn producer_in(
        cgroup: &MemoryCgroup,
        env: &Env,
        name: &str,
        extra: &[(&str, &str)],
    ) -> Worker {
        Worker::spawn("producer", env, name, extra, Some(cgroup))
    }

    fn start(role: &str, env: &Env, name: &str, extra: &[(&str, &str)]) -> Worker {
        let mut worker = Worker::spawn(role, env, name, extra, None);
        worker.launch = Some(Launch {
            role: role.to_string(),
            env: env.clone(),
            name: name.to_string(),
            extra: extra
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
        });
        worker
    }

    /// Starts the worker again, with the same settings, when it stopped on its own
    /// (as its Deployment would); says how it had ended.
    pub fn start_again_if_exited(&mut self) -> Option<String> {
        let status = self.exited()?;
        let launch = self.launch.clone()?;
        let extra: Vec<(&str, &str)> = launch
            .extra
            .iter()
            .map(|(k, v)| (k.as_str(), v.as_str()))
            .collect();
        let previous = self.log.clone();
        *self = Worker::spawn(&launch.role, &launch.env, &launch.name, &extra, None);
        self.launch = Some(launch);
        Some(format!(
            "{} had exited ({status}; log {})",
            self.name,
            previous.display()
        ))
    }

    fn spawn(
        role: &str,
        env: &Env,
        name: &str,
        extra: &[(&str, &str)],
        cgroup: Option<&MemoryCgroup>,
    ) -> Worker {
        // An HTTP_PORT in `extra` (a worker started again where another was) wins.
        let port = extra
            .iter()
            .find(|(k, _)| *k == "HTTP_PORT")
            .and_then(|(_, v)| v.parse().ok())
            .unwrap_or_else(free_port);
        let dir = std::env::temp_dir().join("outbox-worker-tests");
        std::fs::create_dir_all(&dir).expect("log dir");
        let log = dir.join(format!("{}.log", unique_name(name)));
        let file = std::fs::File::create(&log).expect("log file");
        let err = file.try_clone().expect("log file");
        let binary = env!("CARGO_BIN_EXE_outbox-worker");
        let mut command = match cgroup {
            None => Command::new(binary),
            Some(cgroup) => {
                let mut sh = Command::new("sh");
                sh.arg("-c")
                    .arg(r#"echo $$ > "$0/cgroup.procs" && exec "$@""#)
                    .arg(&cgroup.dir)
                    .arg(binary);
                sh
            }
        };
        command
            .arg(role)
            .env_clear()
            .env("PATH", std::env::var("PATH").unwrap_or_default())
            .env("SERVICE_ID", name)
            .env("KAFKA_BOOTSTRAP_SERVERS", &env.bootstrap)
            .env("DATABASE_URL", &env.database_url)
            .env("KAFKA_TOPICS", &env.topic)
            .env("HTTP_PORT", port.to_string())
            .env("HTTP_ADDRESS", "127.0.0.1")
            .env("RUST_LOG", "info")
            .stdin(Stdio::null())
            .stdout(Stdio::from(file))
            .stderr(Stdio::from(err));
        for (k, v) in extra {
            command.env(k, v);
        }
        let child = command.spawn().expect("spawn outbox-worker");
        Worker {
            name: name.to_string(),
            port,
            child: Some(child),
            log,
            launch: None,
        }
    }

    pub fn url(&self, path: &str) -> String {
        format!("http://127.0.0.1:{}{path}", self.port)
    }

    /// Waits until `path` answers 200.
    pub async fn wait_healthy(&mut self, path: &str) {
        let url = self.url(path);
        let what = format!(
            "{} to answer 200 on {path} (log: {})",
            self.name,
            self.log.display()
        );
        let log = self.log.clone();
        let child = self.child.as_mut().expect("running");
        let client = reqwest::Client::new();
        let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
        loop {
            if let Ok(Some(status)) = child.try_wait() {
                panic!(
                    "{} exited with {status}; log:\n{}",
                    what,
                    std::fs::read_to_string(&log).unwrap_or_default()
                );
            }
            if let Ok(r) = client.get(&url).send().await {
                if r.status() == 200 {
                    return;
                }
            }
            if tokio::time::Instant::now() > deadline {
                panic!("timed out waiting for {what}");
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }

    /// The worker's `/metrics` text.
    pub async fn metrics(&self) -> String {
        reqwest::get(self.url("/metrics"))
            .await
            .expect("metrics")
            .text()
            .await
            .expect("metrics text")
    }

    /// The exit status, when the process has ended (a crash, an exit on error).
    pub fn exited(&mut self) -> Option<std::process::ExitStatus> {
        self.child
            .as_mut()
            .and_then(|c| c.try_wait().ok().flatten())
    }

    /// SIGKILL, no chance to clean up.
    pub fn kill9(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// SIGTERM and wait for a graceful exit; returns whether it exited successfully.
    pub fn terminate(&mut self) -> bool {
        let Some(mut child) = self.child.take() else {
            return false;
        };
        signal("TERM", child.id());
        for _ in 0..150 {
            if let Ok(Some(status)) = child.try_wait() {
                return status.success();
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        let _ = child.kill();
        let _ = child.wait();
        false
    }

    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }
}

impl Drop for Worker {
    fn drop(&mut self) {
        self.kill9();
        if std::thread::panicking() {
            // A failing test says what its workers were doing.
            let text = self.log_text();
            let lines: Vec<&str> = text.lines().collect();
            let tail = &lines[lines.len().saturating_sub(40)..];
            eprintln!(
                "--- last {} lines of {} ({}):\n{}",
                tail.len(),
                self.name,
                self.log.display(),
                tail.join("\n")
            );
        }
    }
}

/// Sends one message; returns its id.
pub async fn send_one(producer: &Worker, topic: &str, key: &str, message: &str) -> i64 {
    let response = reqwest::Client::new()
        .post(producer.url("/api/messages/send"))
        .json(&json!({"topic": topic, "message": message, "key": key}))
        .send()
        .await
        .expect("send");
    assert_eq!(
        response.status(),
        200,
        "send answered {}",
        response.text().await.unwrap_or_default()
    );
    let body: Value = response.json().await.expect("json");
    body["id"].as_i64().expect("id")
}

/// Sends a batch of `(key, message)`; returns the ids in order.
pub async fn send_batch(producer: &Worker, topic: &str, messages: &[(String, String)]) -> Vec<i64> {
    let body = json!({"messages": messages.iter().map(|(k, m)| json!({"topic": topic, "key": k, "message": m})).collect::<Vec<_>>()});
    let response = reqwest::Client::new()
        .post(producer.url("/api/messages/batch"))
        .json(&body)
        .send()
        .await
        .expect("batch");
    assert_eq!(
        response.status(),
        200,
        "batch answered {}",
        response.text().await.unwrap_or_default()
    );
    let body: Value = response.json().await.expect("json");
    body["ids"]
        .as_array()
        .expect("ids")
        .iter()
        .map(|v| v.as_i64().expect("id"))
        .collect()
}

/// Rows in the outbox table of `db`'s schema.
pub async fn outbox_rows(db: &tokio_postgres::Client) -> i64 {
    db.query_one("SELECT count(*) FROM outbox_messages", &[])
        .await
        .expect("count the outbox rows")
        .get(0)
}

/// Waits until `group` acknowledged every message of `expected` in the ledger at
/// `env.database_url`, then until the group has committed its offsets past the end of
/// `env.topic`: only then is every delivery recorded, so the duplicates the report
/// counts are all there will be.
pub async fn wait_acknowledged(
    env: &Env,
    group: &str,
    expected: &IdSet,
    timeout: Duration,
) -> GroupReport {
    wait_acknowledged_supervising(env, group, expected, timeout, &mut [])
        .await
        .0
}

/// [`wait_acknowledged`] while starting `workers` again that stop on their own, as
/// their Deployments would (a consumer whose Kafka client stays wedged after a broker
/// restart exits after a minute: `kafka_watchdog`). Also returns what was started again.
pub async fn wait_acknowledged_supervising(
    env: &Env,
    group: &str,
    expected: &IdSet,
    timeout: Duration,
    workers: &mut [&mut Worker],
) -> (GroupReport, Vec<String>) {
    let client = outbox_workers::db::connect(&env.database_url)
        .await
        .expect("connect");
    let deadline = tokio::time::Instant::now() + timeout;
    let mut last = None;
    let mut started_again = Vec::new();
    let mut supervise = |started_again: &mut Vec<String>| {
        for worker in workers.iter_mut() {
            started_again.extend(worker.start_again_if_exited());
        }
    };
    loop {
        supervise(&mut started_again);
        match ledger::group_report(&client, group, expected).await {
            Ok(report) if report.missing == 0 => break,
            Ok(report) => last = Some(report),
            Err(e) => eprintln!("group report: {e}"),
        }
        if tokio::time::Instant::now() >= deadline {
            panic!(
                "timed out after {timeout:?} waiting for group {group} to acknowledge {} messages; last report: {last:?}; started again: {started_again:?}",
                expected.len()
            );
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    // Redeliveries land until the group's offsets reach the end of the topic.
    while kafka::group_caught_up(&env.bootstrap, &env.topic, group).await != Some(true) {
        supervise(&mut started_again);
        if tokio::time::Instant::now() >= deadline {
            panic!(
                "group {group} acknowledged all {} messages but did not commit its offsets to the end of {} within {timeout:?}; started again: {started_again:?}",
                expected.len(),
                env.topic
            );
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let report = ledger::group_report(&client, group, expected)
        .await
        .expect("report");
    (report, started_again)
}

/// `len` pseudo-random lowercase letters (a fixed xorshift sequence): text that
/// PostgreSQL's compression cannot shrink much, so rows hold the bytes they claim.
pub fn incompressible_letters(len: usize) -> String {
    let mut seed = 0x9E37_79B9_7F4A_7C15u64;
    (0..len)
        .map(|_| {
            seed ^= seed << 13;
            seed ^= seed >> 7;
            seed ^= seed << 17;
            char::from(b'a' + (seed % 26) as u8)
        })
        .collect()
}

/// `n` messages over `keys` keys, numbered per key so order can be read off.
pub fn keyed_messages(prefix: &str, n: usize, keys: usize) -> Vec<(String, String)> {
    (0..n)
        .map(|i| {
            (
                format!("{prefix}-key-{}", i % keys),
                format!("{prefix}-{i}"),
            )
        })
        .collect()
}

/// A memory cgroup of our own (cgroup v1 or v2) with a hard limit, removed on drop
/// after killing whatever still runs in it. Processes join it by writing their pid to
/// `cgroup.procs` (see [`Worker::producer_in`]).
pub struct MemoryCgroup {
    pub dir: PathBuf,
    v2: bool,
}

impl MemoryCgroup {
    /// Creates a child of this process's own memory cgroup limited to `bytes`.
    pub fn new(name: &str, bytes: u64) -> MemoryCgroup {
        let own = std::fs::read_to_string("/proc/self/cgroup").expect("/proc/self/cgroup");
        let v1 = own.lines().find_map(|l| {
            let mut parts = l.splitn(3, ':');
            let (_, controllers, path) = (parts.next()?, parts.next()?, parts.next()?);
            controllers
                .split(',')
                .any(|c| c == "memory")
                .then(|| path.to_string())
        });
        let (base, v2) = match v1 {
            Some(path) => (
                PathBuf::from("/sys/fs/cgroup/memory").join(path.trim_start_matches('/')),
                false,
            ),
            None => {
                let path = own
                    .lines()
                    .find_map(|l| l.strip_prefix("0::"))
                    .expect("a cgroup v2 line in /proc/self/cgroup");
                (
                    PathBuf::from("/sys/fs/cgroup").join(path.trim_start_matches('/')),
                    true,
                )
            }
        };
        let dir = base.join(unique_name(name));
        std::fs::create_dir(&dir)
            .unwrap_or_else(|e| panic!("creating memory cgroup {}: {e}", dir.display()));
        let cgroup = MemoryCgroup { dir, v2 };
        let limit = if v2 {
            "memory.max"
        } else {
            "memory.limit_in_bytes"
        };
        std::fs::write(cgroup.dir.join(limit), bytes.to_string()).expect("set memory limit");
        if !v2 {
            // No swap either: the limit is the memory the processes may use.
            let _ = std::fs::write(
                cgroup.dir.join("memory.memsw.limit_in_bytes"),
                bytes.to_string(),
            );
        }
        cgroup
    }

    /// The most memory the cgroup's processes used at once, in bytes.
    pub fn peak_bytes(&self) -> u64 {
        let file = if self.v2 {
            "memory.peak"
        } else {
            "memory.max_usage_in_bytes"
        };
        std::fs::read_to_string(self.dir.join(file))
            .ok()
            .and_then(|s| s.trim().parse().ok())
            .unwrap_or(0)
    }

    /// Times the kernel killed a process of this cgroup for lack of memory.
    pub fn oom_kills(&self) -> u64 {
        let (file, key) = if self.v2 {
            ("memory.events", "oom_kill ")
        } else {
            ("memory.oom_control", "oom_kill ")
        };
        std::fs::read_to_string(self.dir.join(file))
            .unwrap_or_default()
            .lines()
            .find_map(|l| l.strip_prefix(key))
            .and_then(|n| n.trim().parse().ok())
            .unwrap_or(0)
    }
}

impl Drop for MemoryCgroup {
    fn drop(&mut self) {
        let pids = std::fs::read_to_string(self.dir.join("cgroup.procs")).unwrap_or_default();
        for pid in pids.lines() {
            if let Ok(pid) = pid.trim().parse() {
                signal("KILL", pid);
            }
        }
        for _ in 0..50 {
            if std::fs::remove_dir(&self.dir).is_ok() {
                return;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        eprintln!("could not remove cgroup {}", self.dir.display());
    }
}

/// A TCP proxy in front of PostgreSQL that, once armed, forwards the next `COMMIT` to
/// the server and then closes the client's connection without its answer: the commit
/// happens, and the client cannot know it did. Stops with the test's runtime.
pub struct CommitCutter {
    pub port: u16,
    armed: std::sync::Arc<std::sync::atomic::AtomicBool>,
    cuts: std::sync::Arc<std::sync::atomic::AtomicU64>,
}

impl CommitCutter {
    /// Proxies `127.0.0.1:<port>` to the PostgreSQL server of `database_url`.
    pub async fn start(database_url: &str) -> CommitCutter {
        use std::sync::atomic::{AtomicBool, AtomicU64};
        use std::sync::Arc;
        let config: tokio_postgres::Config = database_url.parse().expect("a PostgreSQL URL");
        let host = match config.get_hosts().first() {
            Some(tokio_postgres::config::Host::Tcp(h)) => h.clone(),
            other => panic!("a TCP host in the URL, not {other:?}"),
        };
        let upstream = format!(
            "{host}:{}",
            config.get_ports().first().copied().unwrap_or(5432)
        );
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let port = listener.local_addr().expect("address").port();
        let armed = Arc::new(AtomicBool::new(false));
        let cuts = Arc::new(AtomicU64::new(0));
        let (a, c) = (armed.clone(), cuts.clone());
        tokio::spawn(async move {
            while let Ok((client, _)) = listener.accept().await {
                let upstream = upstream.clone();
                let (armed, cuts) = (a.clone(), c.clone());
                tokio::spawn(async move {
                    let Ok(server) = tokio::net::TcpStream::connect(&upstream).await else {
                        return;
                    };
                    proxy_until_commit(client, server, armed, cuts).await;
                });
            }
        });
        CommitCutter { port, armed, cuts }
    }

    /// `database_url` with the proxy as its host and port.
    pub fn url(&self, database_url: &str) -> String {
        let config: tokio_postgres::Config = database_url.parse().expect("a PostgreSQL URL");
        let port = config.get_ports().first().copied().unwrap_or(5432);
        database_url.replacen(&format!(":{port}/"), &format!(":{}/", self.port), 1)
    }

    /// Cuts the next COMMIT that passes.
    pub fn arm(&self) {
        self.armed.store(true, std::sync::atomic::Ordering::SeqCst);
    }

    /// COMMITs cut so far.
    pub fn cuts(&self) -> u64 {
        self.cuts.load(std::sync::atomic::Ordering::SeqCst)
    }
}

async fn proxy_until_commit(
    client: tokio::net::TcpStream,
    server: tokio::net::TcpStream,
    armed: std::sync::Arc<std::sync::atomic::AtomicBool>,
    cuts: std::sync::Arc<std::sync::atomic::AtomicU64>,
) {
    use std::sync::atomic::{AtomicBool, Ordering};
    use std::sync::Arc;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    // A simple-protocol query message: 'Q', length 11, "COMMIT\0".
    const COMMIT: &[u8] = b"Q\0\0\0\x0bCOMMIT\0";
    let (mut client_read, mut client_write) = client.into_split();
    let (mut server_read, mut server_write) = server.into_split();
    let cut = Arc::new(AtomicBool::new(false));
    let replied = Arc::new(tokio::sync::Notify::new());
    // Server to client; once cut, the server's answers (to the COMMIT: the client
    // waits for each answer before it sends COMMIT) are read and dropped.
    let answers = {
        let (cut, replied) = (cut.clone(), replied.clone());
        tokio::spawn(async move {
            let mut buffer = vec![0u8; 64 * 1024];
            loop {
                let n = match server_read.read(&mut buffer).await {
                    Ok(0) | Err(_) => break,
                    Ok(n) => n,
                };
                if cut.load(Ordering::SeqCst) {
                    replied.notify_one();
                } else if client_write.write_all(&buffer[..n]).await.is_err() {
                    break;
                }
            }
        })
    };
    let mut buffer = vec![0u8; 64 * 1024];
    loop {
        let n = match client_read.read(&mut buffer).await {
            Ok(0) | Err(_) => break,
            Ok(n) => n,
        };
        let chunk = &buffer[..n];
        let commit = chunk.windows(COMMIT.len()).any(|w| w == COMMIT);
        if commit && armed.swap(false, Ordering::SeqCst) {
            // The server gets the COMMIT and answers it (it has committed then); the
            // client never hears back, and its connection ends after that answer.
            cut.store(true, Ordering::SeqCst);
            let _ = server_write.write_all(chunk).await;
            let _ = server_write.flush().await;
            let _ = tokio::time::timeout(Duration::from_secs(5), replied.notified()).await;
            cuts.fetch_add(1, Ordering::SeqCst);
            break;
        }
        if server_write.write_all(chunk).await.is_err() {
            break;
        }
    }
    answers.abort();
}
