//! Throwaway Kafka brokers and PostgreSQL servers for tests that stop and restart them,
//! started the way `testbed/up.sh` starts the shared ones (Debian's PostgreSQL binaries
//! as the `postgres` user, the cached Kafka jars), on loopback ports of their own.
//! Everything they start is stopped on drop, also when the test fails.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use testbed_support::tls::ServerTls;
use testbed_support::{free_port, repo_root, unique_name};

use super::signal;

fn versions_value(name: &str) -> String {
    let text = std::fs::read_to_string(repo_root().join("testbed").join("versions.env"))
        .expect("testbed/versions.env");
    text.lines()
        .find_map(|l| l.strip_prefix(&format!("{name}=")))
        .map(|v| v.trim().trim_matches('"').to_string())
        .unwrap_or_else(|| panic!("{name} not in testbed/versions.env"))
}

fn scratch_dir(prefix: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(unique_name(prefix));
    std::fs::create_dir_all(&dir).expect("scratch dir");
    dir
}

fn run(command: &mut Command) {
    let output = command.output().expect("run command");
    assert!(
        output.status.success(),
        "{command:?} failed: {}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
}

fn as_postgres(program: &Path) -> Command {
    let is_root = Command::new("id")
        .arg("-u")
        .output()
        .map(|o| o.stdout.starts_with(b"0"))
        .unwrap_or(false);
    if is_root {
        let mut c = Command::new("runuser");
        c.arg("-u").arg("postgres").arg("--").arg(program);
        c
    } else {
        Command::new(program)
    }
}

/// A PostgreSQL server of one test; `stop` and `start` it at will.
pub struct ThrowawayPostgres {
    dir: PathBuf,
    bin: PathBuf,
    pub port: u16,
}

impl ThrowawayPostgres {
    pub fn start() -> ThrowawayPostgres {
        ThrowawayPostgres::start_with(None)
    }

    /// A server that takes TLS connections only (`hostssl`; plain TCP is rejected).
    pub fn start_tls(tls: &ServerTls) -> ThrowawayPostgres {
        ThrowawayPostgres::start_with(Some(tls))
    }

    fn start_with(tls: Option<&ServerTls>) -> ThrowawayPostgres {
        let bin = PathBuf::from(format!(
            "/usr/lib/postgresql/{}/bin",
            versions_value("PG_MAJOR")
        ));
        let dir = scratch_dir("pg");
        let _ = Command::new("chown")
            .arg("-R")
            .arg("postgres:postgres")
            .arg(&dir)
            .status();
        let data = dir.join("data");
        run(as_postgres(&bin.join("initdb")).arg("-D").arg(&data).args([
            "-U",
            "postgres",
            "--auth=trust",
            "-E",
            "UTF8",
            "--locale=C.UTF-8",
        ]));
        let port = free_port();
        let conf = format!(
            "listen_addresses = '127.0.0.1,127.0.0.2'\nport = {port}\nunix_socket_directories = '{}'\nfsync = off\nmax_connections = 50\n",
            dir.display()
        );
        let conf_path = data.join("postgresql.conf");
        let mut existing = std::fs::read_to_string(&conf_path).expect("postgresql.conf");
        existing.push_str(&conf);
        std::fs::write(&conf_path, existing).expect("write postgresql.conf");
        // Trust the whole loopback net: a second address lets a test cut one client's
        // path to the server (see `PacketDrop`) and leave the others'.
        let hba_path = data.join("pg_hba.conf");
        let mut hba = std::fs::read_to_string(&hba_path).expect("pg_hba.conf");
        hba.push_str("\nhost all all 127.0.0.0/8 trust\n");
        if let Some(tls) = tls {
            // TLS over TCP or nothing; the socket stays open for psql below.
            hba = "local all all trust\nhostssl all all 127.0.0.0/8 trust\nhostnossl all all 0.0.0.0/0 reject\n".to_string();
            std::fs::write(data.join("server.crt"), &tls.cert_pem).expect("server.crt");
            std::fs::write(data.join("server.key"), &tls.key_pem).expect("server.key");
            let _ = Command::new("chown")
                .arg("postgres:postgres")
                .arg(data.join("server.crt"))
                .arg(data.join("server.key"))
                .status();
            use std::os::unix::fs::PermissionsExt;
            std::fs::set_permissions(
                data.join("server.key"),
                std::fs::Permissions::from_mode(0o600),
            )
            .expect("server.key mode");
            let mut conf = std::fs::read_to_string(&conf_path).expect("postgresql.conf");
            conf.push_str("ssl = on\nssl_cert_file = 'server.crt'\nssl_key_file = 'server.key'\n");
            std::fs::write(&conf_path, conf).expect("write postgresql.conf");
        }
        std::fs::write(&hba_path, hba).expect("write pg_hba.conf");
        let pg = ThrowawayPostgres { dir, bin, port };
        pg.start_again();
        run(as_postgres(&pg.bin.join("psql"))
            .args(["-h"])
            .arg(&pg.dir)
            .args([
                "-p",
                &port.to_string(),
                "-U",
                "postgres",
                "-d",
                "postgres",
                "-qAt",
                "-v",
                "ON_ERROR_STOP=1",
            ])
            .args(["-c", "CREATE ROLE outbox LOGIN PASSWORD 'outbox' CREATEDB"])
            .args(["-c", "CREATE DATABASE outbox OWNER outbox"]));
        pg
    }

    pub fn url(&self) -> String {
        self.url_at("127.0.0.1")
    }

    /// The URL through another loopback address the server listens on (127.0.0.2).
    pub fn url_at(&self, address: &str) -> String {
        format!("postgres://outbox:outbox@{address}:{}/outbox", self.port)
    }

    fn pg_ctl(&self, args: &[&str]) -> Command {
        let mut c = as_postgres(&self.bin.join("pg_ctl"));
        c.arg("-D").arg(self.dir.join("data")).args(args);
        c
    }

    /// Writes `contents` to a file of this server's scratch folder (removed with it).
    pub fn scratch_file(&self, name: &str, contents: &str) -> PathBuf {
        let path = self.dir.join(name);
        std::fs::write(&path, contents).expect("scratch file");
        path
    }

    /// Stops the server (fast shutdown: sessions are cut).
    pub fn stop(&self) {
        run(&mut self.pg_ctl(&["-m", "fast", "-w", "stop"]));
    }

    /// Starts it again on the same port and data.
    pub fn start_again(&self) {
        let mut command = self.pg_ctl(&["-l"]);
        command
            .arg(self.dir.join("postgres.log"))
            .args(["-w", "-t", "60", "start"]);
        run(&mut command);
    }
}

impl Drop for ThrowawayPostgres {
    fn drop(&mut self) {
        let _ = self
            .pg_ctl(&["-m", "immediate", "-w", "stop"])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// A single-node KRaft broker of one test; `stop` and `start` it at will.
pub struct ThrowawayKafka {
    dir: PathBuf,
    lib: PathBuf,
    pub port: u16,
    child: Option<Child>,
}

impl ThrowawayKafka {
    pub fn start() -> ThrowawayKafka {
        let cache = std::env::var_os("OUTBOX_TESTBED_CACHE")
            .map(PathBuf::from)
            .unwrap_or_else(|| {
                std::env::var_os("XDG_CACHE_HOME")
                    .map(PathBuf::from)
                    .unwrap_or_else(|| {
                        PathBuf::from(std::env::var("HOME").unwrap_or_default()).join(".cache")
                    })
                    .join("outbox-testbed")
            });
        let lib = cache
            .join(format!("kafka-{}", versions_value("KAFKA_VERSION")))
            .join("lib");
        assert!(
            lib.is_dir(),
            "Kafka jars not found in {} (run `make testbed-up` once)",
            lib.display()
        );
        let dir = scratch_dir("kafka");
        let port = free_port();
        let controller = free_port();
        let properties = format!(
            "process.roles=broker,controller\nnode.id=1\ncontroller.quorum.voters=1@127.0.0.1:{controller}\n\
             listeners=PLAINTEXT://127.0.0.1:{port},CONTROLLER://127.0.0.1:{controller}\n\
             advertised.listeners=PLAINTEXT://127.0.0.1:{port}\n\
             listener.security.protocol.map=PLAINTEXT:PLAINTEXT,CONTROLLER:PLAINTEXT\n\
             controller.listener.names=CONTROLLER\ninter.broker.listener.name=PLAINTEXT\n\
             log.dirs={}\nnum.partitions=1\nauto.create.topics.enable=false\n\
             offsets.topic.replication.factor=1\noffsets.topic.num.partitions=3\n\
             transaction.state.log.replication.factor=1\ntransaction.state.log.min.isr=1\n\
             group.initial.rebalance.delay.ms=0\n",
            dir.join("data").display()
        );
        std::fs::write(dir.join("server.properties"), properties).expect("server.properties");
        std::fs::write(dir.join("log4j.properties"), "log4j.rootLogger=WARN, stdout\nlog4j.appender.stdout=org.apache.log4j.ConsoleAppender\nlog4j.appender.stdout.layout=org.apache.log4j.PatternLayout\nlog4j.appender.stdout.layout.ConversionPattern=[%d] %p %m (%c)%n\n").expect("log4j");
        let mut kafka = ThrowawayKafka {
            dir,
            lib,
            port,
            child: None,
        };
        let cluster_id = {
            let out = kafka
                .java()
                .arg("kafka.tools.StorageTool")
                .arg("random-uuid")
                .output()
                .expect("random-uuid");
            String::from_utf8_lossy(&out.stdout).trim().to_string()
        };
        run(kafka
            .java()
            .args(["kafka.tools.StorageTool", "format", "-t", &cluster_id, "-c"])
            .arg(kafka.dir.join("server.properties")));
        kafka.start_again();
        kafka
    }

    fn java(&self) -> Command {
        let mut c = Command::new("java");
        c.args([
            "-Xms128m",
            "-Xmx512m",
            "-XX:+UseSerialGC",
            "-Djava.awt.headless=true",
        ])
        .arg(format!(
            "-Dlog4j.configuration=file:{}",
            self.dir.join("log4j.properties").display()
        ))
        .arg("-cp")
        .arg(format!("{}/*", self.lib.display()));
        c
    }

    pub fn bootstrap(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }

    /// Starts the broker (again) and waits until it answers metadata requests.
    pub fn start_again(&mut self) {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.dir.join("kafka.log"))
            .expect("log");
        let err = log.try_clone().expect("log");
        let child = self
            .java()
            .arg("kafka.Kafka")
            .arg(self.dir.join("server.properties"))
            .stdin(Stdio::null())
            .stdout(Stdio::from(log))
            .stderr(Stdio::from(err))
            .spawn()
            .expect("start kafka");
        self.child = Some(child);
        let config = outbox_workers::kafka::client_config(&self.bootstrap(), &Default::default());
        for _ in 0..120 {
            if outbox_workers::kafka::check_topics(&config, &[], Duration::from_secs(1)).is_ok() {
                return;
            }
            std::thread::sleep(Duration::from_millis(500));
        }
        panic!(
            "throwaway Kafka did not start; log in {}",
            self.dir.join("kafka.log").display()
        );
    }

    /// Freezes the broker (SIGSTOP) while the guard lives: connections stay open and
    /// nothing is answered, as a broker stalled in a long pause; SIGCONT on drop.
    pub fn freeze(&self) -> Frozen {
        let pid = self.child.as_ref().expect("the broker runs").id();
        assert!(signal("STOP", pid), "kill -STOP {pid} failed");
        Frozen { pid }
    }

    /// Stops the broker gracefully (SIGTERM) and waits for it to exit.
    pub fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            signal("TERM", child.id());
            for _ in 0..300 {
                if let Ok(Some(_)) = child.try_wait() {
                    return;
                }
                std::thread::sleep(Duration::from_millis(100));
            }
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

impl Drop for ThrowawayKafka {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// A frozen broker ([`ThrowawayKafka::freeze`]), thawed on drop.
pub struct Frozen {
    pid: u32,
}

impl Drop for Frozen {
    fn drop(&mut self) {
        signal("CONT", self.pid);
    }
}

/// Every packet to and from `address:port` dropped (not refused, not reset) while this
/// lives: a network cut as a dead node or a broken switch makes it. Loopback only, a
/// port of this test's own server; the iptables rules go when it is dropped.
pub struct PacketDrop {
    rules: Vec<Vec<String>>,
}

impl PacketDrop {
    pub fn start(address: &str, port: u16) -> PacketDrop {
        assert!(address.starts_with("127."), "only loopback traffic is cut");
        let tag = unique_name("outbox-test-cut");
        let port = port.to_string();
        let rule = |direction: [&str; 4]| -> Vec<String> {
            let mut r: Vec<String> = ["OUTPUT", "-o", "lo", "-p", "tcp"]
                .iter()
                .chain(direction.iter())
                .map(|s| s.to_string())
                .collect();
            r.extend(["-m", "comment", "--comment", &tag, "-j", "DROP"].map(String::from));
            r
        };
        let rules = vec![
            rule(["-d", address, "--dport", &port]),
            rule(["-s", address, "--sport", &port]),
        ];
        let mut cut = PacketDrop { rules: Vec::new() };
        for r in rules {
            let status = Command::new("iptables")
                .arg("-I")
                .args(&r)
                .status()
                .expect("run iptables");
            assert!(status.success(), "iptables -I {} failed", r.join(" "));
            cut.rules.push(r);
        }
        cut
    }
}

impl Drop for PacketDrop {
    fn drop(&mut self) {
        for r in &self.rules {
            let _ = Command::new("iptables").arg("-D").args(r).status();
        }
    }
}
