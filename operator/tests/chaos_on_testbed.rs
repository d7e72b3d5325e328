//! The fault matrix: the reference OutboxSystem as the chart runs it on the testbed's
//! node, one LoadTest per row, one real fault per row injected at a random moment of
//! the row's phase (while the runner sends, or while it verifies), and one table:
//! fault, phase, outcome, accepted, missing, duplicates, out of order, recovery time.
//!
//! Every row must end Succeeded and Verified with nothing missing and every message
//! accepted (success threshold 100 %); duplicates are counted and shown, never hidden.
//! Verification is the runner's own, exactly as in the reference run.
//!
//! `CHAOS_FAULTS` picks the rows: `all` (every fault in both phases; `make chaos`), or a
//! comma-separated list of `fault@phase` (phase `sending` or `verifying`). Unset, a
//! sample small enough for `make test` runs. `CHAOS_MESSAGES` sets the batched messages
//! per row (default 100,000; the sending rows add 1,000 sent one at a time, the
//! verifying rows leave them out so that verification starts with a backlog). The
//! table is printed and written to `$CARGO_TARGET_DIR/tmp/chaos-table.md`.
//!
//! Recovery time: from the end of the fault (the part restarted, the outage over, the
//! process killed) until every consumer group acknowledges messages again and, while
//! the runner sends, new messages are stored again; or until the run ends, if sooner.

mod cluster;

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::process::Command;
use std::time::{Duration, Instant};

use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::Pod;
use kube::api::{DeleteParams, ListParams, Patch, PatchParams, PostParams};
use kube::{Api, Client, ResourceExt};
use outbox_operator::crd::{LoadTest, LoadTestPhase, LoadTestStatus, OutboxSystem};
use testbed_support::{eventually, run, testbed, unique_name};

use cluster::*;

/// The faults, by the names `CHAOS_FAULTS` uses.
const FAULTS: &[&str] = &[
    "postgres-restart",
    "postgres-stop-60s",
    "kafka-restart",
    "kafka-stop-3m",
    "apiserver-restart",
    "kubelet-restart",
    "operator-killed",
    "consumer-killed",
    "consumer-deleted",
    "relay-leader-killed",
    "runner-killed",
    "producer-network-cut-30s",
    "rolling-update",
    "group-scaled-down",
    "group-scaled-up",
    "operator-upgraded",
];

/// The reference system's groups and their replicas, restored before every row.
const REFERENCE_GROUPS: [(&str, i32); 3] = [("group-a", 3), ("group-b", 2), ("group-c", 1)];

/// The rows `make test` runs: a process of each kind the data path depends on, and the
/// change users make most to a running system.
const SAMPLE: &str =
    "relay-leader-killed@sending,runner-killed@sending,postgres-restart@verifying,rolling-update@sending";

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Phase {
    Sending,
    Verifying,
}

impl Phase {
    fn parse(text: &str) -> Phase {
        match text {
            "sending" => Phase::Sending,
            "verifying" => Phase::Verifying,
            other => panic!("CHAOS_FAULTS: phase `{other}` is neither sending nor verifying"),
        }
    }

    fn name(self) -> &'static str {
        match self {
            Phase::Sending => "sending",
            Phase::Verifying => "verifying",
        }
    }

    fn of(phase: Option<LoadTestPhase>) -> Option<Phase> {
        match phase? {
            LoadTestPhase::Running => Some(Phase::Sending),
            LoadTestPhase::Verifying => Some(Phase::Verifying),
            _ => None,
        }
    }
}

/// The rows `CHAOS_FAULTS` asks for.
fn rows_asked() -> Vec<(String, Phase)> {
    let asked = std::env::var("CHAOS_FAULTS").unwrap_or_else(|_| SAMPLE.to_string());
    if asked.trim() == "all" {
        return FAULTS
            .iter()
            .flat_map(|f| {
                [
                    (f.to_string(), Phase::Sending),
                    (f.to_string(), Phase::Verifying),
                ]
            })
            .collect();
    }
    let rows: Vec<(String, Phase)> = asked
        .split(',')
        .filter(|s| !s.trim().is_empty())
        .map(|row| {
            let (fault, phase) = row.trim().split_once('@').unwrap_or_else(|| {
                panic!("CHAOS_FAULTS: `{row}` is not fault@phase (e.g. postgres-restart@sending)")
            });
            assert!(
                FAULTS.contains(&fault),
                "CHAOS_FAULTS: unknown fault `{fault}`; known: {}",
                FAULTS.join(", ")
            );
            (fault.to_string(), Phase::parse(phase))
        })
        .collect();
    // A selection of no row would pass having proved nothing.
    assert!(
        !rows.is_empty(),
        "CHAOS_FAULTS={asked:?} selects no row: name fault@phase rows, or `all`"
    );
    rows
}

/// A delay in `0..max`, different on every call (the moment of each fault).
fn random_delay(max: Duration) -> Duration {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.subsec_nanos())
        .unwrap_or(0);
    let max_ms = max.as_millis().max(1) as u64;
    Duration::from_millis(u64::from(nanos).wrapping_mul(2_654_435_761) % max_ms)
}

/// A pod's network cut by DROP rules in its own network namespace; removed on drop.
struct NetworkCut {
    pid: u32,
}

impl NetworkCut {
    fn start(pid: u32) -> NetworkCut {
        for chain in ["INPUT", "OUTPUT"] {
            let pid = pid.to_string();
            run(
                "nsenter",
                &["-t", &pid, "-n", "iptables", "-I", chain, "1", "-j", "DROP"],
            );
        }
        NetworkCut { pid }
    }
}

impl Drop for NetworkCut {
    fn drop(&mut self) {
        for chain in ["INPUT", "OUTPUT"] {
            // The pod may be gone, and its namespace with it: nothing to undo then.
            let _ = Command::new("nsenter")
                .args([
                    "-t",
                    &self.pid.to_string(),
                    "-n",
                    "iptables",
                    "-D",
                    chain,
                    "-j",
                    "DROP",
                ])
                .output();
        }
    }
}

/// The reference system, installed once for every row.
struct Bench {
    client: Client,
    namespace: String,
    operator_namespace: String,
    release_name: String,
    db_url: String,
    pods: Api<Pod>,
    loadtests: Api<LoadTest>,
    _release: Release,
}

impl Bench {
    async fn set_up() -> Bench {
        let client = client().await;
        let (namespace, db_url) = namespace_with_host_services(&client, "chaos").await;
        let release = install_chart(&namespace);
        let text = std::fs::read_to_string(
            testbed_support::repo_root().join("manifests/outbox-system.yaml"),
        )
        .unwrap_or_else(|e| panic!("{e}"));
        let mut system: OutboxSystem =
            serde_yaml::from_str(&text).unwrap_or_else(|e| panic!("{e}"));
        system.spec.topic.name = unique_name("chaos-events");
        let pods = create_system(&client, &namespace, &system).await;
        ready_pods(&pods, "app.kubernetes.io/component=producer", 3).await;
        for (group, replicas) in [("group-a", 3), ("group-b", 2), ("group-c", 1)] {
            ready_pods(&pods, &format!("outbox.dev/group={group}"), replicas).await;
        }
        Bench {
            loadtests: Api::namespaced(client.clone(), &namespace),
            operator_namespace: release.namespace.clone(),
            release_name: release.name.clone(),
            client,
            namespace,
            db_url,
            pods,
            _release: release,
        }
    }

    /// Every pod of the system (and the operator) Ready again, between rows, the
    /// groups at their reference replicas (a row may have scaled one).
    async fn settle(&self) {
        for (group, replicas) in REFERENCE_GROUPS {
            self.set_replicas(group, replicas).await;
        }
        ready_pods(&self.pods, "app.kubernetes.io/component=producer", 3).await;
        for (group, replicas) in REFERENCE_GROUPS {
            ready_pods(
                &self.pods,
                &format!("outbox.dev/group={group}"),
                usize::try_from(replicas).unwrap_or(0),
            )
            .await;
        }
        let operator: Api<Pod> = Api::namespaced(self.client.clone(), &self.operator_namespace);
        ready_pods(&operator, "app.kubernetes.io/name=outbox-operator", 1).await;
    }

    /// A pod with `selector` in `namespace` whose container runs (to kill or delete).
    async fn running_pod(&self, selector: &str, namespace: &str) -> Pod {
        let pods: Api<Pod> = Api::namespaced(self.client.clone(), namespace);
        pods_where(&pods, selector, "a running pod", |list| {
            list.into_iter().find(pod_is_running)
        })
        .await
    }

    /// Injects `fault` (into LoadTest `name`'s system); returns when the fault is over
    /// (the part back, the outage lifted, the process killed), with a note.
    async fn inject(&self, fault: &str, name: &str) -> String {
        let ns = self.namespace.clone();
        match fault {
            "postgres-restart" => blocking(|| part("restart", "postgres")).await,
            "postgres-stop-60s" => outage("postgres", Duration::from_secs(60)).await,
            "kafka-restart" => blocking(|| part("restart", "kafka")).await,
            "kafka-stop-3m" => outage("kafka", Duration::from_secs(180)).await,
            "apiserver-restart" => blocking(|| part("restart", "kube-apiserver")).await,
            "kubelet-restart" => blocking(|| part("restart", "kubelet")).await,
            "operator-killed" => {
                let ns = self.operator_namespace.clone();
                let pod = self
                    .running_pod("app.kubernetes.io/name=outbox-operator", &ns)
                    .await;
                kill9(&pod)
            }
            "consumer-killed" => kill9(&self.running_pod("outbox.dev/group=group-a", &ns).await),
            "consumer-deleted" => {
                let pod = self.running_pod("outbox.dev/group=group-b", &ns).await;
                self.pods
                    .delete(&pod.name_any(), &DeleteParams::default())
                    .await
                    .unwrap_or_else(|e| panic!("deleting {}: {e}", pod.name_any()));
                format!("deleted {}", pod.name_any())
            }
            "relay-leader-killed" => kill9(&self.relay_leader().await),
            "runner-killed" => {
                let selector = format!("job-name={}", outbox_operator::runner_job::job_name(name));
                kill9(&self.running_pod(&selector, &ns).await)
            }
            "rolling-update" => self.roll_every_worker().await,
            "group-scaled-down" => self.scale_group("group-a", 1).await,
            "group-scaled-up" => self.scale_group("group-a", 5).await,
            "operator-upgraded" => self.upgrade_operator().await,
            "producer-network-cut-30s" => {
                let pod = self.relay_leader().await;
                let cut = NetworkCut::start(container_pid(&pod));
                tokio::time::sleep(Duration::from_secs(30)).await;
                drop(cut);
                format!("cut {} (the relay leader) off for 30 s", pod.name_any())
            }
            other => panic!("no injection for fault {other}"),
        }
    }

    fn systems(&self) -> Api<OutboxSystem> {
        Api::namespaced(self.client.clone(), &self.namespace)
    }

    /// Sets a group's replicas in the OutboxSystem (as a user edits it); returns the
    /// replicas it had.
    async fn set_replicas(&self, group: &str, replicas: i32) -> i32 {
        let systems = self.systems();
        let mut system = systems
            .get("outbox")
            .await
            .unwrap_or_else(|e| panic!("reading the OutboxSystem: {e}"));
        let spec = system
            .spec
            .consumers
            .groups
            .iter_mut()
            .find(|g| g.name == group)
            .unwrap_or_else(|| panic!("no group {group} in the reference system"));
        let before = spec.replicas;
        if before != replicas {
            spec.replicas = replicas;
            systems
                .replace("outbox", &PostParams::default(), &system)
                .await
                .unwrap_or_else(|e| panic!("setting {group} to {replicas} replicas: {e}"));
        }
        before
    }

    /// A group's replicas changed mid-run as a user changes them; over when exactly
    /// that many of its pods are Ready and none other is left.
    async fn scale_group(&self, group: &str, replicas: i32) -> String {
        let started = Instant::now();
        let before = self.set_replicas(group, replicas).await;
        let selector = format!("outbox.dev/group={group}");
        let count = usize::try_from(replicas).unwrap_or(0);
        pods_where(
            &self.pods,
            &selector,
            &format!("exactly {count} pods"),
            |list| {
                let ready = list.iter().filter(|p| pod_is_ready(p)).count();
                (ready == count && list.len() == count).then_some(())
            },
        )
        .await;
        format!(
            "{group} {before} → {replicas} replicas in the OutboxSystem, {:.0} s until its pods were exactly those",
            started.elapsed().as_secs_f64()
        )
    }

    /// A change to every worker's pod template (an annotation in the producers' and
    /// the consumers' `pod` settings, which rolls them as a change of resources or an
    /// environment setting does); over when every Deployment has rolled out.
    async fn roll_every_worker(&self) -> String {
        let started = Instant::now();
        let stamp = unique_name("roll");
        let annotation = "chaos.outbox.dev/rolled";
        let pod = serde_json::json!({"metadata": {"annotations": {annotation: stamp}}});
        self.systems()
            .patch(
                "outbox",
                &PatchParams::default(),
                &Patch::Merge(serde_json::json!({"spec": {"producers": {"pod": pod}, "consumers": {"pod": pod}}})),
            )
            .await
            .unwrap_or_else(|e| panic!("changing the workers' pod template: {e}"));
        let deployments: Api<Deployment> = Api::namespaced(self.client.clone(), &self.namespace);
        let rolled = eventually(
            "every worker Deployment rolled out",
            Duration::from_secs(600),
            || {
                let deployments = deployments.clone();
                let stamp = stamp.clone();
                async move {
                    let list = deployments.list(&ListParams::default()).await.ok()?;
                    let done = list.items.iter().all(|d| {
                        let spec = d.spec.as_ref();
                        let wanted = spec.and_then(|s| s.replicas).unwrap_or(1);
                        let carries = spec
                            .and_then(|s| s.template.metadata.as_ref())
                            .and_then(|m| m.annotations.as_ref())
                            .and_then(|a| a.get(annotation))
                            == Some(&stamp);
                        let status = d.status.clone().unwrap_or_default();
                        carries
                            && status.observed_generation >= d.metadata.generation
                            && status.updated_replicas == Some(wanted)
                            && status.ready_replicas == Some(wanted)
                            && status.replicas == Some(wanted)
                    });
                    (done && list.items.len() == 4).then_some(list.items.len())
                }
            },
        )
        .await;
        format!(
            "rolled {rolled} Deployments (3 producers, 6 consumers) in {:.0} s",
            started.elapsed().as_secs_f64()
        )
    }

    /// `helm upgrade` of the operator to a build under another image tag (the node's
    /// image tagged anew, as a release would publish it), as users upgrade; over when
    /// helm's `--wait` saw every operator pod of the new tag Ready. The system's
    /// Deployments must not change: an upgrade of the operator alone rolls no worker.
    async fn upgrade_operator(&self) -> String {
        let started = Instant::now();
        let operator: Api<Pod> = Api::namespaced(self.client.clone(), &self.operator_namespace);
        let pod = self
            .running_pod(
                "app.kubernetes.io/name=outbox-operator",
                &self.operator_namespace,
            )
            .await;
        let image = pod
            .spec
            .as_ref()
            .and_then(|s| s.containers.first())
            .and_then(|c| c.image.clone())
            .unwrap_or_else(|| panic!("operator pod {} has no image", pod.name_any()));
        let (repository, tag) = image
            .rsplit_once(':')
            .unwrap_or_else(|| panic!("operator image {image} has no tag"));
        let new_tag = format!(
            "{}-{}",
            tag.split('-').next().unwrap_or(tag),
            unique_name("upgrade")
        );
        let address = testbed().node().containerd_address.display().to_string();
        run(
            "ctr",
            &[
                "--address",
                &address,
                "-n",
                "k8s.io",
                "images",
                "tag",
                "--force",
                &image,
                &format!("{repository}:{new_tag}"),
            ],
        );
        let deployments: Api<Deployment> = Api::namespaced(self.client.clone(), &self.namespace);
        let generations = || async {
            let list = deployments
                .list(&ListParams::default())
                .await
                .unwrap_or_else(|e| panic!("listing the system's Deployments: {e}"));
            list.items
                .iter()
                .map(|d| (d.name_any(), d.metadata.generation))
                .collect::<BTreeMap<_, _>>()
        };
        let before = generations().await;
        let chart = testbed_support::repo_root().join("charts/outbox-operator");
        let set_tag = format!("image.tag={new_tag}");
        run(
            "helm",
            &[
                "upgrade",
                &self.release_name,
                &chart.display().to_string(),
                "--namespace",
                &self.operator_namespace,
                "--reuse-values",
                "--set",
                &set_tag,
                "--wait",
                "--timeout",
                "3m",
            ],
        );
        let wanted = format!("{repository}:{new_tag}");
        let pods = pods_where(
            &operator,
            "app.kubernetes.io/name=outbox-operator",
            "every operator pod on the new tag",
            |list| {
                let all_new = !list.is_empty()
                    && list.iter().all(|p| {
                        p.spec
                            .as_ref()
                            .and_then(|s| s.containers.first())
                            .and_then(|c| c.image.as_deref())
                            == Some(wanted.as_str())
                            && pod_is_ready(p)
                    });
                all_new.then_some(list.len())
            },
        )
        .await;
        // The new operator has reconciled the system by now or soon; it must leave
        // the workers' Deployments as they were.
        tokio::time::sleep(Duration::from_secs(5)).await;
        let after = generations().await;
        assert_eq!(
            before, after,
            "upgrading the operator changed the system's Deployments"
        );
        format!(
            "helm upgrade to {new_tag}: {pods} operator pod(s) replaced in {:.0} s; the system's {} Deployments unchanged",
            started.elapsed().as_secs_f64(),
            after.len()
        )
    }

    /// The producer pod that leads the relay.
    async fn relay_leader(&self) -> Pod {
        let leader = eventually("a relay leader", Duration::from_secs(60), || {
            let url = self.db_url.clone();
            async move {
                pg(&url, "SELECT leader FROM outbox_relay_state")
                    .await?
                    .get::<_, Option<String>>(0)
            }
        })
        .await;
        self.pods
            .get(&leader)
            .await
            .unwrap_or_else(|e| panic!("the relay leader {leader}: {e}"))
    }

    /// Messages stored, and acknowledged per group, from the ledger (None while
    /// PostgreSQL does not answer).
    async fn flow(&self) -> Option<(i64, BTreeMap<String, i64>)> {
        let (client, connection) = tokio_postgres::connect(&self.db_url, tokio_postgres::NoTls)
            .await
            .ok()?;
        let task = tokio::spawn(connection);
        let stored = client
            .query_one(
                "SELECT coalesce(max(id), 0)::bigint FROM outbox_messages",
                &[],
            )
            .await
            .ok()?
            .get(0);
        let acked = client
            .query(
                "SELECT group_name, sum(acked)::bigint FROM outbox_ack_chunks GROUP BY group_name",
                &[],
            )
            .await
            .ok()?
            .iter()
            .map(|r| {
                (
                    r.get::<_, String>(0),
                    r.get::<_, Option<i64>>(1).unwrap_or(0),
                )
            })
            .collect();
        drop(client);
        let _ = task.await;
        Some((stored, acked))
    }
}

fn pod_is_running(pod: &Pod) -> bool {
    pod.status.as_ref().and_then(|s| s.phase.as_deref()) == Some("Running")
        && pod.metadata.deletion_timestamp.is_none()
        && pod
            .status
            .as_ref()
            .and_then(|s| s.container_statuses.as_ref())
            .and_then(|c| c.first())
            .is_some_and(|c| c.state.as_ref().is_some_and(|s| s.running.is_some()))
}

async fn blocking(f: impl FnOnce() + Send + 'static) -> String {
    tokio::task::spawn_blocking(f)
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    String::new()
}

/// Stops testbed part `name` for `down`, then starts it again.
async fn outage(name: &'static str, down: Duration) -> String {
    let stopped = tokio::task::spawn_blocking(move || PartDown::stop(name))
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    tokio::time::sleep(down).await;
    tokio::task::spawn_blocking(move || drop(stopped))
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    String::new()
}

fn kill9(pod: &Pod) -> String {
    let pid = container_pid(pod);
    run("kill", &["-9", &pid.to_string()]);
    format!("SIGKILL {}", pod.name_any())
}

/// One row of the table.
struct Row {
    fault: String,
    planned: Phase,
    landed: Option<Phase>,
    status: LoadTestStatus,
    recovery: Option<Duration>,
    seconds: u64,
    note: String,
}

impl Row {
    fn verified(&self) -> bool {
        self.status.phase == Some(LoadTestPhase::Succeeded)
            && self
                .status
                .conditions
                .iter()
                .any(|c| c.type_ == "Verified" && c.status == "True")
    }

    fn sum(&self, figure: impl Fn(&outbox_operator::crd::GroupVerification) -> i64) -> i64 {
        self.status.groups.iter().map(figure).sum()
    }

    /// The highest figure of any group: a message the relay published twice is a
    /// duplicate in every group.
    fn most(&self, figure: impl Fn(&outbox_operator::crd::GroupVerification) -> i64) -> i64 {
        self.status.groups.iter().map(figure).max().unwrap_or(0)
    }

    fn line(&self) -> String {
        let outcome = if self.verified() {
            "Verified".to_string()
        } else {
            format!(
                "NOT verified ({:?}: {})",
                self.status.phase,
                self.status.message.clone().unwrap_or_default()
            )
        };
        let landed = match self.landed {
            Some(p) if p == self.planned => p.name().to_string(),
            Some(p) => format!("{} (planned {})", p.name(), self.planned.name()),
            None => format!("after the run (planned {})", self.planned.name()),
        };
        let recovery = self
            .recovery
            .map(|d| format!("{:.1} s", d.as_secs_f64()))
            .unwrap_or_else(|| "not seen".into());
        let outages: Vec<String> = self
            .status
            .outages
            .iter()
            .map(|o| format!("{} {}×≤{:.0}s", o.dependency, o.count, o.longest_seconds))
            .collect();
        let accepted = self.status.accepted_messages.unwrap_or(0);
        format!(
            "| {} | {} | {} | {} | {} | {} | {} | {} | {} s | {} |",
            self.fault,
            landed,
            outcome,
            accepted,
            self.sum(|g| g.missing),
            self.most(|g| g.duplicates),
            self.sum(|g| g.out_of_order),
            recovery,
            self.seconds,
            [self.note.clone(), outages.join(", ")]
                .into_iter()
                .filter(|s| !s.is_empty())
                .collect::<Vec<_>>()
                .join("; ")
        )
    }
}

const HEADER: &str = "| fault | injected while | outcome | accepted | missing | duplicates (most in a group) | out of order | recovery | run | notes |\n|---|---|---|---|---|---|---|---|---|---|";

/// Runs one row: a LoadTest, the fault at a random moment of `phase`, the result.
async fn run_row(bench: &Bench, index: usize, fault: &str, phase: Phase, messages: i64) -> Row {
    bench.settle().await;
    let name = format!("chaos-{index}");
    let mut lt: LoadTest = serde_yaml::from_str(
        &std::fs::read_to_string(
            testbed_support::repo_root().join("manifests/loadtest-small.yaml"),
        )
        .unwrap_or_else(|e| panic!("{e}")),
    )
    .unwrap_or_else(|e| panic!("{e}"));
    lt.metadata.name = Some(name.clone());
    lt.spec.scenarios[0].messages = Some(messages);
    lt.spec.scenarios[1].messages = Some(1_000);
    if phase == Phase::Verifying {
        // Without the one-at-a-time scenario after it, which gives the consumers time to
        // catch up, verification starts with their backlog and lasts long enough to hit.
        lt.spec.scenarios.truncate(1);
    }
    lt.spec.success_threshold = 100.0;
    lt.spec.verification_timeout_seconds = 1_200;
    let started = Instant::now();
    bench
        .loadtests
        .create(&PostParams::default(), &lt)
        .await
        .unwrap_or_else(|e| panic!("creating LoadTest {name}: {e}"));

    // The phase, then a random moment within its first seconds.
    let wanted = match phase {
        Phase::Sending => LoadTestPhase::Running,
        Phase::Verifying => LoadTestPhase::Verifying,
    };
    let loadtests = bench.loadtests.clone();
    eventually(
        &format!("LoadTest {name} in phase {wanted:?}"),
        Duration::from_secs(600),
        || {
            let loadtests = loadtests.clone();
            let name = name.clone();
            async move {
                let phase = loadtest_phase(&loadtests, &name).await?;
                (phase.rank() >= wanted.rank()).then_some(())
            }
        },
    )
    .await;
    // Sending lasts seconds; verification can be short when the consumers keep up.
    let delay = random_delay(match phase {
        Phase::Sending => Duration::from_secs(2),
        Phase::Verifying => Duration::from_millis(500),
    });
    tokio::time::sleep(delay).await;
    let landed = Phase::of(loadtest_phase(&bench.loadtests, &name).await);
    eprintln!(
        "[chaos] {fault} while {} ({:.1} s into it)",
        landed.map(Phase::name).unwrap_or("nothing"),
        delay.as_secs_f64()
    );
    let mut note = bench.inject(fault, &name).await;
    let fault_over = Instant::now();
    let before = bench.flow().await;

    // Recovery, while waiting for the end of the run.
    let mut recovery = None;
    let status = loop {
        let status = bench
            .loadtests
            .get(&name)
            .await
            .ok()
            .and_then(|lt| lt.status);
        let phase = status.as_ref().and_then(|s| s.phase);
        if recovery.is_none() {
            let flowing = match (&before, bench.flow().await) {
                (Some((stored0, acked0)), Some((stored, acked))) => {
                    let stores = phase != Some(LoadTestPhase::Running) || stored > *stored0;
                    let acks = ["group-a", "group-b", "group-c"].iter().all(|g| {
                        acked.get(*g).copied().unwrap_or(0) > acked0.get(*g).copied().unwrap_or(0)
                    });
                    stores && acks
                }
                // PostgreSQL was away when the fault ended: the first full look counts.
                (None, Some(_)) => false,
                _ => false,
            };
            if flowing || phase.is_some_and(|p| p.is_finished()) {
                recovery = Some(fault_over.elapsed());
            }
        }
        if let Some(status) = status.filter(|s| s.phase.is_some_and(|p| p.is_finished())) {
            break status;
        }
        assert!(
            started.elapsed() < Duration::from_secs(1_800),
            "LoadTest {name} ({fault}) did not finish within 30 minutes"
        );
        tokio::time::sleep(Duration::from_millis(500)).await;
    };
    if before.is_none() {
        note = [note, "ledger unreadable when the fault ended".into()].join("; ");
    }
    Row {
        fault: fault.to_string(),
        planned: phase,
        landed,
        status,
        recovery,
        seconds: started.elapsed().as_secs(),
        note: note.trim_start_matches("; ").to_string(),
    }
}

#[tokio::test]
async fn every_fault_during_a_load_test_ends_verified_with_nothing_missing() {
    let rows = rows_asked();
    let messages: i64 = std::env::var("CHAOS_MESSAGES")
        .ok()
        .and_then(|m| m.parse().ok())
        .unwrap_or(100_000);
    let bench = Bench::set_up().await;
    let mut table = format!(
        "{} batched messages per row, and 1,000 sent one at a time after them in the sending rows; the reference system (3 producers; groups a=3, b=2, c=1)\n\n{HEADER}\n",
        messages
    );
    let mut results = Vec::new();
    let mut index = 0;
    for (fault, phase) in &rows {
        // A fault that landed after the run proves nothing: the row runs again, larger.
        let mut size = messages;
        let mut missed = Vec::new();
        let row = loop {
            let mut row = run_row(&bench, index, fault, *phase, size).await;
            index += 1;
            if row.landed == Some(*phase) || missed.len() == 2 {
                if !missed.is_empty() {
                    let again = format!(
                        "{size} batched messages, after the fault missed the phase at {}",
                        missed.join(", ")
                    );
                    row.note = [row.note.clone(), again]
                        .into_iter()
                        .filter(|s| !s.is_empty())
                        .collect::<Vec<_>>()
                        .join("; ");
                }
                break row;
            }
            eprintln!(
                "[chaos] {fault} missed the {} phase at {size} messages; again with twice as many",
                phase.name()
            );
            missed.push(size.to_string());
            size *= 2;
        };
        let line = row.line();
        eprintln!("{line}");
        let _ = writeln!(table, "{line}");
        results.push(row);
    }
    let out = std::path::Path::new(env!("CARGO_TARGET_TMPDIR")).join("chaos-table.md");
    let _ = std::fs::write(&out, &table);
    eprintln!("\n{table}\n(written to {})", out.display());

    for row in &results {
        assert!(row.verified(), "{}:\n{table}", row.fault);
        assert_eq!(row.sum(|g| g.missing), 0, "{}:\n{table}", row.fault);
        assert_eq!(
            row.landed,
            Some(row.planned),
            "{}: the fault did not land in its phase; raise CHAOS_MESSAGES:\n{table}",
            row.fault
        );
    }
}
