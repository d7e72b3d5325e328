//! Where the CPU went during a run (`status.cpu`): every component's CPU counters are
//! read before the first send and again when verification has ended, and the
//! differences are the run's CPU time per component.
//!
//! - The runner reads its own time from `/proc/self/stat`, and the node's busy time
//!   from `/proc/stat`, which a container sees for the whole node.
//! - Producers and consumers (in a Job: the system's pods, listed at each reading)
//!   serve `outbox_cpu_seconds_total{part}` on `/metrics`
//!   (see `outbox_core::cpu`): a producer's `main` part is its HTTP ingest, `relay` and
//!   `kafka-client` are the relay, `other` is the rest of the process.
//! - Components outside the OutboxSystem (Kafka, PostgreSQL) come from the LoadTest's
//!   `cpuSources`: Prometheus endpoints whose `process_cpu_seconds_total` samples are
//!   summed.
//!
//! What the node spent beyond all of them is `rest of node`. A counter that went
//! down (its pod restarted) or appeared during the run counts from zero; a pod that
//! went away takes its time with it.

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use k8s_openapi::api::core::v1::Pod;
use kube::api::ListParams;
use kube::Api;
use outbox_contract::crd::{ComponentCpu, CpuAccounting};

use super::discover::Producer;

/// Clock ticks per second of `/proc/stat` (`USER_HZ`).
const TICKS_PER_SECOND: f64 = 100.0;
/// How long one metrics endpoint may take to answer.
const READ_TIMEOUT: Duration = Duration::from_secs(5);

/// The runner's own component.
pub const RUNNER: &str = "runner";
/// A producer's HTTP ingest.
pub const PRODUCER_HTTP: &str = "producer http";
/// The relay, with its Kafka client.
pub const RELAY: &str = "relay";
/// The rest of a producer process.
pub const PRODUCER_OTHER: &str = "producer other";
/// What the node spent beyond the named components.
pub const REST: &str = "rest of node";

/// The component of a consumer group's members.
pub fn consumers(group: &str) -> String {
    format!("consumers {group}")
}

/// What a metrics endpoint belongs to.
#[derive(Debug, Clone, PartialEq)]
pub enum Kind {
    /// A producer pod: its parts are split into HTTP, relay and other.
    Producer,
    /// A member of this consumer group.
    Consumer(String),
    /// A component named in `cpuSources`.
    External(String),
}

/// One metrics endpoint to read.
#[derive(Debug, Clone, PartialEq)]
pub struct Source {
    pub kind: Kind,
    /// The pod or URL, to tell instances of a component apart.
    pub instance: String,
    pub url: String,
}

impl Source {
    /// A producer's `/metrics`.
    pub fn producer(producer: &Producer) -> Source {
        Source {
            kind: Kind::Producer,
            instance: producer.name.clone(),
            url: format!("{}/metrics", producer.base_url),
        }
    }
}

/// Counters read at one moment: CPU seconds per (component, instance).
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Reading {
    /// The node's busy seconds since boot.
    pub node: Option<f64>,
    pub counters: BTreeMap<(String, String), f64>,
    /// Sources that did not answer, by component.
    pub unreadable: BTreeSet<String>,
}

/// The producer and consumer pods of `system` among `pods`, by their `/metrics` on
/// the first container port (pods without an IP yet are left out).
pub async fn worker_sources(pods: &Api<Pod>, system: &str) -> kube::Result<Vec<Source>> {
    use outbox_contract::labels;
    let list = pods
        .list(&ListParams::default().labels(&labels::workers_of(system)))
        .await?;
    Ok(list
        .items
        .iter()
        .filter_map(|pod| {
            let pod_labels = pod.metadata.labels.as_ref()?;
            let kind = match pod_labels.get(labels::COMPONENT)?.as_str() {
                labels::PRODUCER => Kind::Producer,
                labels::CONSUMER => Kind::Consumer(pod_labels.get(labels::GROUP)?.clone()),
                _ => return None,
            };
            let ip = pod.status.as_ref()?.pod_ip.as_ref()?;
            let port = pod
                .spec
                .as_ref()?
                .containers
                .first()?
                .ports
                .as_ref()?
                .first()?
                .container_port;
            Some(Source {
                kind,
                instance: pod.metadata.name.clone().unwrap_or_default(),
                url: format!("http://{ip}:{port}/metrics"),
            })
        })
        .collect())
}

/// Reads every source, the runner and the node now.
pub async fn read(http: &reqwest::Client, sources: &[Source]) -> Reading {
    let mut reading = Reading {
        node: std::fs::read_to_string("/proc/stat")
            .ok()
            .and_then(|t| node_busy_seconds(&t)),
        ..Reading::default()
    };
    if let Some(runner) = outbox_core::cpu::this_process_total() {
        reading
            .counters
            .insert((RUNNER.to_string(), "self".to_string()), runner);
    }
    let answers = futures::future::join_all(sources.iter().map(|s| fetch(http, &s.url))).await;
    for (source, answer) in sources.iter().zip(answers) {
        let components = answer.map(|text| components_of(&source.kind, &text));
        match components {
            Some(components) if !components.is_empty() => {
                for (component, seconds) in components {
                    *reading
                        .counters
                        .entry((component, source.instance.clone()))
                        .or_default() += seconds;
                }
            }
            _ => {
                reading.unreadable.insert(component_name(&source.kind));
            }
        }
    }
    reading
}

async fn fetch(http: &reqwest::Client, url: &str) -> Option<String> {
    let response = http.get(url).timeout(READ_TIMEOUT).send().await.ok()?;
    if !response.status().is_success() {
        return None;
    }
    response.text().await.ok()
}

fn component_name(kind: &Kind) -> String {
    match kind {
        Kind::Producer => "producer".to_string(),
        Kind::Consumer(group) => consumers(group),
        Kind::External(component) => component.clone(),
    }
}

/// The CPU seconds a metrics text reports, by component (empty: nothing usable).
pub fn components_of(kind: &Kind, text: &str) -> BTreeMap<String, f64> {
    let parts = outbox_core::cpu::parse_exposition(text);
    let mut out = BTreeMap::new();
    match kind {
        Kind::Producer => {
            for (part, seconds) in parts {
                let component = match part.as_str() {
                    "main" => PRODUCER_HTTP,
                    "relay" | "kafka-client" => RELAY,
                    _ => PRODUCER_OTHER,
                };
                *out.entry(component.to_string()).or_default() += seconds;
            }
        }
        Kind::Consumer(group) => {
            if !parts.is_empty() {
                out.insert(consumers(group), parts.values().sum());
            }
        }
        Kind::External(component) => {
            let found = samples(text, "process_cpu_seconds_total");
            if !found.is_empty() {
                out.insert(component.clone(), found.iter().sum());
            }
        }
    }
    out
}

/// Values of every sample of `metric` in a Prometheus text exposition.
pub fn samples(text: &str, metric: &str) -> Vec<f64> {
    outbox_core::cpu::samples(text, metric)
        .into_iter()
        .map(|(_, value)| value)
        .collect()
}

/// Busy seconds of all CPUs from `/proc/stat`'s first line: user, nice, system, irq,
/// softirq and steal (guest time is already in user).
pub fn node_busy_seconds(proc_stat: &str) -> Option<f64> {
    let line = proc_stat.lines().find(|l| l.starts_with("cpu "))?;
    let fields: Vec<u64> = line
        .split_whitespace()
        .skip(1)
        .map(|f| f.parse().ok())
        .collect::<Option<_>>()?;
    let field = |i: usize| fields.get(i).copied().unwrap_or(0);
    if fields.len() < 4 {
        return None;
    }
    let busy = field(0) + field(1) + field(2) + field(5) + field(6) + field(7);
    Some(busy as f64 / TICKS_PER_SECOND)
}

/// The run's CPU time per component between two readings, and per message that every
/// group acknowledged.
pub fn account(
    before: &Reading,
    after: &Reading,
    window: Duration,
    messages: u64,
) -> CpuAccounting {
    let mut by_component: BTreeMap<String, f64> = BTreeMap::new();
    for (key, &now) in &after.counters {
        let spent = match before.counters.get(key) {
            Some(&then) if now >= then => now - then,
            // Restarted or new during the run: its whole counter is in the window.
            _ => now,
        };
        *by_component.entry(key.0.clone()).or_default() += spent;
    }
    let named: f64 = by_component.values().sum();
    let node = match (before.node, after.node) {
        (Some(then), Some(now)) if now >= then => Some(now - then),
        _ => None,
    };
    if let Some(node) = node {
        by_component.insert(REST.to_string(), (node - named).max(0.0));
    }
    let mut components: Vec<ComponentCpu> = by_component
        .into_iter()
        .map(|(component, seconds)| ComponentCpu {
            component,
            seconds: round(seconds),
        })
        .collect();
    components.sort_by(|a, b| b.seconds.total_cmp(&a.seconds));
    let total = node.unwrap_or(named);
    CpuAccounting {
        window_seconds: round(window.as_secs_f64()),
        node_seconds: node.map(round),
        components,
        micros_per_message: (messages > 0).then(|| round(total * 1e6 / messages as f64)),
        unreadable: before
            .unreadable
            .union(&after.unreadable)
            .cloned()
            .collect(),
    }
}

fn round(x: f64) -> f64 {
    (x * 100.0).round() / 100.0
}

#[cfg(test)]
mod tests {
    use super::*;

    fn reading(node: Option<f64>, counters: &[(&str, &str, f64)]) -> Reading {
        Reading {
            node,
            counters: counters
                .iter()
                .map(|(c, i, s)| ((c.to_string(), i.to_string()), *s))
                .collect(),
            unreadable: BTreeSet::new(),
        }
    }

    #[test]
    fn each_component_gets_its_instances_differences_and_the_node_the_rest() {
        let before = reading(
            Some(1000.0),
            &[
                ("relay", "p1", 10.0),
                ("relay", "p2", 20.0),
                ("consumers a", "c1", 5.0),
                ("runner", "self", 1.0),
            ],
        );
        let after = reading(
            Some(1100.0),
            &[
                ("relay", "p1", 30.0),
                // p2 restarted: its counter began again at zero.
                ("relay", "p2", 4.0),
                ("consumers a", "c1", 15.0),
                // c2 started during the run.
                ("consumers a", "c2", 6.0),
                ("runner", "self", 3.0),
            ],
        );
        let cpu = account(&before, &after, Duration::from_secs(60), 1_000_000);
        let seconds: BTreeMap<&str, f64> = cpu
            .components
            .iter()
            .map(|c| (c.component.as_str(), c.seconds))
            .collect();
        assert_eq!(seconds["relay"], 24.0);
        assert_eq!(seconds["consumers a"], 16.0);
        assert_eq!(seconds["runner"], 2.0);
        assert_eq!(seconds[REST], 100.0 - 42.0);
        assert_eq!(cpu.node_seconds, Some(100.0));
        // 100 CPU seconds for a million messages.
        assert_eq!(cpu.micros_per_message, Some(100.0));
        assert_eq!(cpu.components[0].component, REST, "largest first");
        assert_eq!(cpu.window_seconds, 60.0);
    }

    #[test]
    fn without_the_node_the_components_sum_is_the_total() {
        let before = reading(None, &[("relay", "p1", 1.0)]);
        let after = reading(None, &[("relay", "p1", 3.0)]);
        let cpu = account(&before, &after, Duration::from_secs(1), 1000);
        assert_eq!(cpu.node_seconds, None);
        assert!(cpu.components.iter().all(|c| c.component != REST));
        assert_eq!(cpu.micros_per_message, Some(2000.0));
        assert_eq!(
            account(&before, &after, Duration::ZERO, 0).micros_per_message,
            None
        );
    }

    #[test]
    fn a_producers_parts_map_to_http_relay_and_other() {
        let text = "# TYPE outbox_cpu_seconds counter\n\
            outbox_cpu_seconds_total{part=\"kafka-client\"} 2.5\n\
            outbox_cpu_seconds_total{part=\"main\"} 10.0\n\
            outbox_cpu_seconds_total{part=\"other\"} 0.5\n\
            outbox_cpu_seconds_total{part=\"relay\"} 4.0\n\
            # EOF\n";
        let out = components_of(&Kind::Producer, text);
        assert_eq!(out[PRODUCER_HTTP], 10.0);
        assert_eq!(out[RELAY], 6.5);
        assert_eq!(out[PRODUCER_OTHER], 0.5);
        let consumer = components_of(&Kind::Consumer("b".into()), text);
        assert_eq!(consumer["consumers b"], 17.0);
    }

    #[test]
    fn external_sources_sum_process_cpu_seconds_and_other_text_is_unusable() {
        let text = "process_cpu_seconds_total{pid=\"1\"} 3.5\nprocess_cpu_seconds_total 1.5\nprocess_cpu_seconds_totally 9\n";
        assert_eq!(samples(text, "process_cpu_seconds_total"), vec![3.5, 1.5]);
        let out = components_of(&Kind::External("kafka".into()), text);
        assert_eq!(out["kafka"], 5.0);
        assert!(components_of(&Kind::External("kafka".into()), "<html>").is_empty());
        assert!(components_of(&Kind::Producer, "up 1\n").is_empty());
    }

    #[test]
    fn the_nodes_busy_time_leaves_out_idle_and_iowait() {
        let stat = "cpu  100 20 30 5000 400 6 7 8 0 0\ncpu0 50 10 15 2500 200 3 3 4 0 0\n";
        // user + nice + system + irq + softirq + steal = 171 ticks.
        assert_eq!(node_busy_seconds(stat), Some(1.71));
        assert_eq!(node_busy_seconds("intr 1 2 3"), None);
    }
}
