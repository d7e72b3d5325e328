//! The chart's monitoring as users switch it on, with a real Prometheus: the PodMonitor
//! and ServiceMonitor select every worker pod and the operator, each serves metrics
//! `promtool check metrics` accepts, every query of both Grafana dashboards returns data
//! during a LoadTest, and the delivery-stalled alert fires while Kafka is stopped under
//! load and resolves once it is back.
//!
//! Prometheus is the testbed's (`testbed/monitor.sh`, built from its Go module), its
//! scrape config translated from the chart's rendered monitors as the Prometheus Operator
//! would. Needs the testbed with its node and the images imported (`make test`).

mod cluster;

use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use cluster::*;
use k8s_openapi::api::core::v1::Pod;
use kube::api::PostParams;
use kube::{Api, ResourceExt};
use outbox_operator::crd::{LoadTest, LoadTestPhase, OutboxSystem};
use serde_json::Value;
use testbed_support::{eventually, unique_name};

/// Scrape and rule evaluation interval of the test's Prometheus.
const INTERVAL: &str = "2s";
/// The stalled-delivery alert as the test sets it: oldest unrelayed row older than 20 s,
/// for 10 s. The producers read the backlog every 10 s.
const STALLED_AGE_SECONDS: u64 = 20;
const STALLED_FOR: &str = "10s";

/// The testbed's Prometheus, started for one release's monitors; stopped on drop.
struct Prometheus {
    base: String,
    http: reqwest::Client,
}

/// `testbed/monitor.sh ARGS` with the environment `envs`; its output.
fn monitor_sh(args: &[&str], envs: &[(&str, &str)]) -> String {
    let script = testbed_support::repo_root().join("testbed/monitor.sh");
    let script = script.display().to_string();
    let envs: Vec<String> = envs.iter().map(|(k, v)| format!("{k}={v}")).collect();
    let mut argv: Vec<&str> = envs.iter().map(String::as_str).collect();
    argv.push(&script);
    argv.extend_from_slice(args);
    run("env", &argv).trim().to_string()
}

impl Prometheus {
    /// Starts Prometheus for the monitors and rules of release `release` in `namespace`,
    /// rendered with `flags` (the same the release is installed with).
    fn start(release: &str, namespace: &str, flags: &[&str]) -> Prometheus {
        let mut args = vec!["up"];
        args.extend_from_slice(flags);
        monitor_sh(
            &args,
            &[
                ("MONITOR_RELEASE", release),
                ("MONITOR_NAMESPACE", namespace),
                ("MONITOR_INTERVAL", INTERVAL),
            ],
        );
        Prometheus {
            base: monitor_sh(&["url"], &[]),
            http: reqwest::Client::new(),
        }
    }

    /// `path` of the HTTP API: a POST of `form` (a query), or a GET without one.
    async fn get(&self, path: &str, form: &[(&str, &str)]) -> Value {
        let url = format!("{}{path}", self.base);
        let request = if form.is_empty() {
            self.http.get(url)
        } else {
            self.http.post(url).form(form)
        };
        let response = request
            .send()
            .await
            .unwrap_or_else(|e| panic!("{path}: {e}"));
        let status = response.status();
        let body: Value = response
            .json()
            .await
            .unwrap_or_else(|e| panic!("{path}: {e}"));
        assert!(status.is_success(), "{path} {form:?}: {status} {body}");
        body
    }

    /// The series an instant query returns now.
    async fn query(&self, query: &str) -> Vec<Value> {
        let body = self.get("/api/v1/query", &[("query", query)]).await;
        body["data"]["result"]
            .as_array()
            .cloned()
            .unwrap_or_default()
    }

    /// Waits until `query` returns a series (at most `timeout`).
    async fn wait_for_series(&self, what: &str, query: &str, timeout: Duration) {
        eventually(what, timeout, || async move {
            (!self.query(query).await.is_empty()).then_some(())
        })
        .await
    }

    /// Waits (at most 180 s) until alert `name` of namespace `ns` fires, returning it, or
    /// with `firing` false until it is gone (neither pending nor firing).
    async fn wait_for_alert(&self, name: &str, ns: &str, firing: bool) -> Option<Value> {
        let what = format!("{name} {}", if firing { "firing" } else { "resolved" });
        eventually(&what, Duration::from_secs(180), || async move {
            let alerts = self.alerts(name, ns).await;
            if firing {
                alerts
                    .into_iter()
                    .find(|a| a["state"] == "firing")
                    .map(Some)
            } else {
                alerts.is_empty().then_some(None)
            }
        })
        .await
    }

    /// The alerts named `name` of namespace `ns`, pending or firing.
    async fn alerts(&self, name: &str, ns: &str) -> Vec<Value> {
        let body = self.get("/api/v1/alerts", &[]).await;
        body["data"]["alerts"]
            .as_array()
            .into_iter()
            .flatten()
            .filter(|a| a["labels"]["alertname"] == name && a["labels"]["namespace"] == ns)
            .cloned()
            .collect()
    }
}

impl Drop for Prometheus {
    fn drop(&mut self) {
        let _ = Command::new(testbed_support::repo_root().join("testbed/monitor.sh"))
            .arg("down")
            .output();
    }
}

/// Each target query of a dashboard in the chart, as `(panel title, expr)`.
fn dashboard_queries(file: &str) -> Vec<(String, String)> {
    let root = testbed_support::repo_root();
    let dashboard = root.join("charts/outbox-operator/dashboards").join(file);
    let checker = root.join("scripts/dashboard-check.py");
    run(
        &checker.display().to_string(),
        &["--exprs", &dashboard.display().to_string()],
    )
    .lines()
    .map(|line| {
        let v: Value = serde_json::from_str(line).unwrap_or_else(|e| panic!("{line}: {e}"));
        (
            v["panel"].as_str().unwrap_or_default().to_string(),
            v["expr"].as_str().unwrap_or_default().to_string(),
        )
    })
    .collect()
}

/// An OpenMetrics exposition (what the workers and the operator serve, and Prometheus
/// scrapes) in the Prometheus text format that `promtool check metrics` reads: a
/// counter family `x` is named `x_total` there, and `# UNIT` and `# EOF` do not exist.
fn as_text_format(openmetrics: &str) -> String {
    let counters: std::collections::HashSet<&str> = openmetrics
        .lines()
        .filter_map(|l| l.strip_prefix("# TYPE ")?.strip_suffix(" counter"))
        .collect();
    openmetrics
        .lines()
        .filter(|l| !l.starts_with("# UNIT ") && *l != "# EOF")
        .map(|l| {
            for prefix in ["# HELP ", "# TYPE "] {
                if let Some((name, rest)) = l.strip_prefix(prefix).and_then(|r| r.split_once(' ')) {
                    if counters.contains(name) {
                        return format!("{prefix}{name}_total {rest}\n");
                    }
                }
            }
            format!("{l}\n")
        })
        .collect()
}

/// `promtool check metrics` on what `ip:port/metrics` serves: its problems, if any.
async fn promtool_problems(ip: &str, port: u16) -> String {
    let (code, text) = http(ip, port, "GET", "/metrics", "").await;
    assert_eq!(code, 200, "{ip}:{port}/metrics: {text}");
    let text = as_text_format(&text);
    let mut child = Command::new(testbed_support::repo_root().join("testbed/monitor.sh"))
        .args(["promtool", "check", "metrics"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("{e}"));
    use std::io::Write as _;
    child
        .stdin
        .take()
        .map(|mut stdin| stdin.write_all(text.as_bytes()))
        .transpose()
        .unwrap_or_else(|e| panic!("{e}"));
    let out = child.wait_with_output().unwrap_or_else(|e| panic!("{e}"));
    if out.status.success() {
        String::new()
    } else {
        format!(
            "{ip}:{port}: {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        )
    }
}

fn http_port(pod: &Pod) -> u16 {
    pod.spec
        .as_ref()
        .and_then(|s| s.containers.first())
        .and_then(|c| c.ports.as_ref())
        .and_then(|p| p.iter().find(|p| p.name.as_deref() == Some("http")))
        .and_then(|p| u16::try_from(p.container_port).ok())
        .unwrap_or_else(|| panic!("pod {} has no http port", pod.name_any()))
}

#[tokio::test]
async fn prometheus_scrapes_every_pod_each_dashboard_query_returns_data_and_stalled_delivery_alerts(
) {
    let client = client().await;
    let (ns, _) = namespace_with_host_services(&client, "mon").await;
    let release_ns = format!("{ns}-op");
    let stalled_age =
        format!("metrics.prometheusRule.deliveryStalled.ageSeconds={STALLED_AGE_SECONDS}");
    let stalled_for = format!("metrics.prometheusRule.deliveryStalled.for={STALLED_FOR}");
    let watch = format!("watchNamespace={ns}");
    let prometheus = Prometheus::start(
        &ns,
        &release_ns,
        &[
            "--set",
            &watch,
            "--set",
            &stalled_age,
            "--set",
            &stalled_for,
        ],
    );
    // As a user switches it on; the CRDs are there (monitor.sh applied them).
    let _release = install_chart_with(
        &ns,
        &[
            "--set",
            "metrics.podMonitor.enabled=true",
            "--set",
            "metrics.serviceMonitor.enabled=true",
            "--set",
            "metrics.prometheusRule.enabled=true",
            "--set",
            "metrics.dashboards.enabled=true",
            "--set",
            &stalled_age,
            "--set",
            &stalled_for,
        ],
    );
    for kind in ["podmonitor", "servicemonitor", "prometheusrule"] {
        let names = run("kubectl", &["get", kind, "-n", &release_ns, "-o", "name"]);
        assert_eq!(names.lines().count(), 1, "{kind}: {names}");
    }
    let dashboards = run(
        "kubectl",
        &[
            "get",
            "configmap",
            "-n",
            &release_ns,
            "-l",
            "grafana_dashboard=1",
            "-o",
            "name",
        ],
    );
    assert_eq!(dashboards.lines().count(), 2, "{dashboards}");

    // A small system: 2 producers, groups a and b with one consumer each.
    let mut system: OutboxSystem = testbed_support::manifest("manifests/outbox-system.yaml");
    system.spec.topic.name = unique_name("mon-events");
    system.spec.producers.replicas = 2;
    system.spec.consumers.groups.truncate(2);
    for group in &mut system.spec.consumers.groups {
        group.replicas = 1;
    }
    let pods = create_system(&client, &ns, &system).await;
    let producers = ready_pods(&pods, "app.kubernetes.io/component=producer", 2).await;
    let consumers = ready_pods(&pods, "app.kubernetes.io/component=consumer", 2).await;

    // Every worker pod and the operator are scraped, with the labels the rules use.
    // (A query that counts them returns one series only once all 4 are up.)
    let up = format!("count(up{{namespace=\"{ns}\", system=\"outbox\"}} == 1) == 4");
    prometheus
        .wait_for_series("Prometheus scraping the 4 worker pods", &up, POD_WAIT)
        .await;
    let groups = prometheus
        .query(&format!(
            "count by (group) (outbox_consumer_lag{{namespace=\"{ns}\", component=\"consumer\"}})"
        ))
        .await;
    assert_eq!(groups.len(), 2, "a lag series per group: {groups:?}");
    let operator_up =
        format!("up{{namespace=\"{release_ns}\", service=\"{ns}-outbox-operator-metrics\"}} == 1");
    prometheus
        .wait_for_series("Prometheus scraping the operator", &operator_up, POD_WAIT)
        .await;

    // Every pod's metrics pass promtool's checks.
    let operator_pods: Api<Pod> = Api::namespaced(client.clone(), &release_ns);
    let operator = ready_pods(&operator_pods, "app.kubernetes.io/name=outbox-operator", 1).await;
    let mut problems = String::new();
    for pod in producers.iter().chain(&consumers) {
        problems += &promtool_problems(&pod_ip(pod), http_port(pod)).await;
    }
    problems += &promtool_problems(&pod_ip(&operator[0]), 8080).await;
    assert!(problems.is_empty(), "promtool check metrics:\n{problems}");

    // The small LoadTest, run as the operator's Job.
    let lt: LoadTest = testbed_support::manifest("manifests/loadtest-small.yaml");
    let loadtests: Api<LoadTest> = Api::namespaced(client.clone(), &ns);
    loadtests
        .create(&PostParams::default(), &lt)
        .await
        .unwrap_or_else(|e| panic!("creating the LoadTest: {e}"));
    let phase = eventually("the LoadTest finished", Duration::from_secs(300), || {
        let loadtests = loadtests.clone();
        async move {
            loadtest_phase(&loadtests, "small")
                .await
                .filter(|p| matches!(p, LoadTestPhase::Succeeded | LoadTestPhase::Failed))
        }
    })
    .await;
    assert_eq!(phase, LoadTestPhase::Succeeded);
    // The operator's result series are scraped (the dashboards' load-test panels need them).
    let verified =
        format!("outbox_loadtest_verified{{namespace=\"{ns}\", loadtest=\"small\"}} == 1");
    prometheus
        .wait_for_series(
            "outbox_loadtest_verified scraped",
            &verified,
            Duration::from_secs(60),
        )
        .await;

    // Every query of both dashboards returns data, with the variables set as a user
    // picking this system and this LoadTest would.
    let mut empty = Vec::new();
    let mut asked = 0;
    for file in ["outbox-system.json", "outbox-loadtests.json"] {
        for (panel, expr) in dashboard_queries(file) {
            let query = expr
                .replace("$__rate_interval", "1m")
                .replace("$namespace", &ns)
                .replace("$system", "outbox")
                .replace("$loadtest", "small");
            asked += 1;
            if prometheus.query(&query).await.is_empty() {
                empty.push(format!("{file} / {panel}: {query}"));
            }
        }
    }
    assert!(asked > 40, "only {asked} dashboard queries found");
    assert!(
        empty.is_empty(),
        "{} of {asked} dashboard queries returned nothing:\n{}",
        empty.len(),
        empty.join("\n")
    );
    eprintln!("every one of {asked} dashboard queries returned data");

    // Healthy so far: no alert of ours fires for this namespace.
    let firing = prometheus
        .query(&format!(
            "ALERTS{{alertstate=\"firing\", namespace=\"{ns}\"}}"
        ))
        .await;
    assert!(
        firing.is_empty(),
        "alerts firing on a healthy system: {firing:#?}"
    );

    // Kafka stopped while messages keep arriving: delivery stalls, the alert fires.
    let producer = (pod_ip(&producers[0]), http_port(&producers[0]));
    let topic = system.spec.topic.name.clone();
    let sending = tokio::spawn(async move {
        loop {
            let body = format!(r#"{{"topic":"{topic}","message":"while kafka is away"}}"#);
            let _ = http(&producer.0, producer.1, "POST", "/api/messages/send", &body).await;
            tokio::time::sleep(Duration::from_millis(500)).await;
        }
    });
    let kafka_down = tokio::task::spawn_blocking(|| PartDown::stop("kafka"))
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    let stopped = Instant::now();
    let fired = prometheus
        .wait_for_alert("OutboxDeliveryStalled", &ns, true)
        .await
        .unwrap_or_default();
    let fired_after = stopped.elapsed();
    assert_eq!(fired["labels"]["system"], "outbox", "{fired:#}");
    assert_eq!(fired["labels"]["severity"], "critical", "{fired:#}");
    let summary = fired["annotations"]["summary"].as_str().unwrap_or_default();
    assert!(
        summary.starts_with(&format!(
            "Outbox {ns}/outbox: the oldest message not yet relayed"
        )),
        "{fired:#}"
    );
    // Its threshold and `for:`, plus the 10 s backlog reading, a scrape and an evaluation.
    assert!(
        fired_after >= Duration::from_secs(STALLED_AGE_SECONDS),
        "fired {fired_after:?} after Kafka stopped, before the oldest row could be {STALLED_AGE_SECONDS} s old"
    );
    eprintln!("OutboxDeliveryStalled fired {fired_after:.1?} after Kafka stopped");

    // Kafka back: the backlog drains and the alert resolves.
    sending.abort();
    tokio::task::spawn_blocking(move || drop(kafka_down))
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    let back = Instant::now();
    prometheus
        .wait_for_alert("OutboxDeliveryStalled", &ns, false)
        .await;
    eprintln!(
        "OutboxDeliveryStalled resolved {:.1?} after Kafka was back",
        back.elapsed()
    );
}
