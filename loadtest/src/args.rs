//! Command-line settings of `outbox-worker loadtest`.
//!
//! In a Job the operator passes `--namespace` and `--name`: the runner reads the
//! LoadTest and its OutboxSystem from the API server, finds the producers through
//! EndpointSlices and writes the LoadTest's status. Outside Kubernetes the same settings
//! come from flags (`--producer-url`, `--group`, `--topic`, `--scenario`, ...);
//! `--namespace`/`--name` may be added to read the spec from and write the status to an
//! API server while the workers run as local processes.

use std::path::PathBuf;
use std::time::Duration;

use outbox_contract::crd::{LoadTestSpec, Scenario};

/// `outbox-worker loadtest`.
#[derive(clap::Args, Debug, Clone)]
pub struct LoadTestArgs {
    /// Namespace of the LoadTest to run (with --name).
    #[arg(long, env = "LOADTEST_NAMESPACE", requires = "name")]
    pub namespace: Option<String>,
    /// Name of the LoadTest to run (with --namespace): its spec defines the run, its
    /// status receives the results.
    #[arg(long, env = "LOADTEST_NAME", requires = "namespace")]
    pub name: Option<String>,
    /// Base URL of a producer (repeatable), e.g. `http://127.0.0.1:5301`. Without it the
    /// runner finds every ready producer pod through the OutboxSystem's EndpointSlices.
    #[arg(long = "producer-url", value_name = "URL")]
    pub producer_urls: Vec<String>,
    /// A consumer's metrics for the CPU accounting, as `GROUP=URL` (repeatable), e.g.
    /// `a=http://127.0.0.1:5401/metrics`. Without it, in a Job, the runner lists the
    /// system's consumer pods.
    #[arg(long = "consumer-metrics", value_name = "GROUP=URL")]
    pub consumer_metrics: Vec<String>,
    /// A component outside the system for the CPU accounting, as `COMPONENT=URL` of a
    /// Prometheus endpoint with `process_cpu_seconds_total` (repeatable; added to the
    /// LoadTest's `cpuSources`).
    #[arg(long = "cpu-source", value_name = "COMPONENT=URL")]
    pub cpu_sources: Vec<String>,
    /// Consumer group to verify (repeatable). Default: the OutboxSystem's groups.
    #[arg(long = "group", value_name = "GROUP")]
    pub groups: Vec<String>,
    /// Kafka topic of the messages. Default: the OutboxSystem's topic.
    #[arg(long)]
    pub topic: Option<String>,
    /// PostgreSQL URL of the outbox database (verification reads the ledger there).
    #[arg(long, env = "DATABASE_URL", hide_env_values = true)]
    pub database_url: String,
    /// A scenario `name:messages:batched|immediate[:concurrency]` (repeatable, run in
    /// order), e.g. `--scenario batch:30000:batched --scenario immediate:500:immediate`.
    /// Taken from the LoadTest when --name is given.
    #[arg(long = "scenario", value_name = "SCENARIO", value_parser = parse_scenario, conflicts_with = "name")]
    pub scenarios: Vec<Scenario>,
    /// A LoadTest manifest (or only its spec) whose scenarios, message size, keys,
    /// success threshold, verification timeout and thresholds the run takes (outside
    /// Kubernetes), e.g. `manifests/loadtest-rate.yaml`; the other flags override it.
    #[arg(long, value_name = "PATH", conflicts_with_all = ["name", "scenarios"])]
    pub spec: Option<PathBuf>,
    /// Payload bytes per message (default 256).
    #[arg(long, conflicts_with = "name")]
    pub message_size: Option<i32>,
    /// Distinct message keys (default 1000).
    #[arg(long, conflicts_with = "name")]
    pub keys: Option<i64>,
    /// Percentage of messages that must be accepted for the run to succeed (default 95).
    #[arg(long, conflicts_with = "name")]
    pub success_threshold: Option<f64>,
    /// How long to wait for every group to acknowledge everything, e.g. `600`, `90s`,
    /// `10m` (default 600 s).
    #[arg(long, value_parser = parse_duration, conflicts_with = "name")]
    pub verification_timeout: Option<Duration>,
    /// Write the JSON report here.
    #[arg(long, value_name = "PATH")]
    pub report: Option<PathBuf>,
    /// Write the HTML report here: one self-contained page (verdict, tables and charts
    /// of the run) that opens in a browser with no network.
    #[arg(long, value_name = "PATH")]
    pub html_report: Option<PathBuf>,
    /// Messages per request of a batching scenario.
    #[arg(long, default_value_t = 2000)]
    pub messages_per_request: usize,
    /// Requests in flight per producer when the scenario does not say (default: 2 for
    /// batching scenarios, 1 for immediate ones).
    #[arg(long)]
    pub concurrency: Option<usize>,
    /// How long a request answered 429 or 503 (nothing stored: backlog at its bound,
    /// producer busy or without its database) is sent again, waiting what
    /// `Retry-After` asks between tries, before its messages count as failed.
    #[arg(long, value_parser = parse_duration, default_value = "300s")]
    pub retry_patience: Duration,
    /// How long one request may take before it counts as failed (`timeout`).
    #[arg(long, value_parser = parse_duration, default_value = "60s")]
    pub request_timeout: Duration,
    /// How long an outage of the outbox database may last before it fails the run; the
    /// runner reconnects and reads again until then.
    #[arg(long, value_parser = parse_duration, default_value = "300s", env = "INFRASTRUCTURE_PATIENCE")]
    pub infrastructure_patience: Duration,
    /// Reuse a run id (local mode): messages the outbox already holds for this run are
    /// counted as accepted and only the remainder is sent. In a Job the run id is the
    /// LoadTest's uid.
    #[arg(long)]
    pub run_id: Option<String>,
    /// Time between samples of the time series (rates, latency, backlog, lag, each
    /// worker's memory and CPU) in the reports.
    #[arg(long, value_parser = parse_duration, default_value = "1s")]
    pub sample_interval: Duration,
    /// Runners sharing the run: the LoadTest's `spec.parallelism`, which the operator
    /// passes to the pods of its Indexed Job (it must agree with the spec).
    #[arg(long, requires = "name")]
    pub runners: Option<u32>,
    /// This runner's index among them: Kubernetes sets `JOB_COMPLETION_INDEX` in the
    /// pods of an Indexed Job.
    #[arg(long, env = "JOB_COMPLETION_INDEX", default_value_t = 0)]
    pub runner_index: u32,
    /// This runner's pod, for its line in `status.runners`.
    #[arg(long, env = "POD_NAME")]
    pub pod_name: Option<String>,
    /// Seconds between progress updates (log lines, LoadTest status).
    #[arg(long, value_parser = parse_duration, default_value = "5s")]
    pub progress_interval: Duration,
}

/// Parses `name:messages:batched|immediate[:concurrency]`.
pub fn parse_scenario(text: &str) -> Result<Scenario, String> {
    let parts: Vec<&str> = text.split(':').collect();
    let usage = "expected name:messages:batched|immediate[:concurrency], e.g. batch:30000:batched";
    if !(3..=4).contains(&parts.len()) {
        return Err(format!("`{text}`: {usage}"));
    }
    let name = parts[0].trim();
    if name.is_empty() || name.len() > 63 {
        return Err(format!("`{text}`: the name must have 1 to 63 characters"));
    }
    let messages: i64 = parts[1]
        .trim()
        .replace('_', "")
        .parse()
        .map_err(|_| format!("`{text}`: `{}` is not a message count", parts[1]))?;
    if messages < 1 {
        return Err(format!("`{text}`: at least one message"));
    }
    let batching = match parts[2].trim() {
        "batched" | "batch" | "batching" | "true" => true,
        "immediate" | "single" | "false" => false,
        other => {
            return Err(format!(
                "`{text}`: `{other}` is neither batched nor immediate"
            ))
        }
    };
    let concurrency = match parts.get(3) {
        None => None,
        Some(c) => match c.trim().parse::<i32>() {
            Ok(n) if n >= 1 => Some(n),
            _ => {
                return Err(format!(
                    "`{text}`: concurrency `{c}` must be a positive number"
                ))
            }
        },
    };
    Ok(Scenario {
        name: name.to_string(),
        messages: Some(messages),
        batching,
        concurrency,
        ..Scenario::default()
    })
}

/// Reads a LoadTest manifest, or only its spec, from YAML (or JSON) text.
pub fn parse_spec(text: &str) -> Result<LoadTestSpec, String> {
    let value: serde_yaml::Value =
        serde_yaml::from_str(text).map_err(|e| format!("not YAML: {e}"))?;
    let spec = match value.get("spec") {
        Some(spec) if value.get("kind").is_some() => spec.clone(),
        _ => value,
    };
    serde_yaml::from_value(spec).map_err(|e| format!("not a LoadTest spec: {e}"))
}

/// Parses `90`, `90s`, `1500ms`, `10m`, `1h`.
pub fn parse_duration(text: &str) -> Result<Duration, String> {
    let t = text.trim();
    let (number, unit) = match t.find(|c: char| !c.is_ascii_digit() && c != '.') {
        Some(i) => t.split_at(i),
        None => (t, "s"),
    };
    let value: f64 = number
        .parse()
        .map_err(|_| format!("`{text}` is not a duration (e.g. 90s, 10m)"))?;
    let seconds = match unit {
        "ms" => value / 1000.0,
        "s" => value,
        "m" => value * 60.0,
        "h" => value * 3600.0,
        _ => return Err(format!("`{text}`: unknown unit `{unit}` (ms, s, m, h)")),
    };
    Duration::try_from_secs_f64(seconds).map_err(|_| format!("`{text}` is out of range"))
}

/// The runner's flags as a command line would give them (tests).
#[cfg(test)]
pub fn from_flags(flags: &[&str]) -> LoadTestArgs {
    use clap::Parser;
    #[derive(clap::Parser)]
    struct Cli {
        #[command(flatten)]
        args: LoadTestArgs,
    }
    let line = ["loadtest", "--database-url", "postgres://localhost/outbox"];
    Cli::try_parse_from(line.iter().chain(flags))
        .expect("valid flags")
        .args
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn scenarios_parse_from_name_count_and_mode() {
        let s = parse_scenario("batch:10_000_000:batched").expect("valid");
        assert_eq!(
            (s.name.as_str(), s.messages, s.batching),
            ("batch", Some(10_000_000), true)
        );
        assert_eq!(s.concurrency, None);
        let s = parse_scenario("immediate:500:immediate:8").expect("valid");
        assert_eq!(
            (s.messages, s.batching, s.concurrency),
            (Some(500), false, Some(8))
        );
    }

    #[test]
    fn bad_scenarios_say_what_is_wrong() {
        assert!(parse_scenario("batch:30000")
            .unwrap_err()
            .contains("expected"));
        assert!(parse_scenario("batch:many:batched")
            .unwrap_err()
            .contains("message count"));
        assert!(parse_scenario("batch:0:batched")
            .unwrap_err()
            .contains("at least one"));
        assert!(parse_scenario("batch:5:sometimes")
            .unwrap_err()
            .contains("neither"));
    }

    #[test]
    fn a_spec_comes_from_a_whole_manifest_or_from_the_spec_alone() {
        let manifest = "apiVersion: outbox.dev/v1alpha1\nkind: LoadTest\nmetadata: {name: rate}\nspec:\n  systemRef: {name: outbox}\n  scenarios:\n  - name: steady\n    arrivalRate:\n      connections: 20\n      stages: [{ratePerSecond: 200, durationSeconds: 10}]\n  thresholds:\n    requestLatencyMs: {p95: 1}\n";
        let spec = parse_spec(manifest).expect("manifest");
        let rate = spec.scenarios[0].arrival_rate.as_ref().expect("a rate");
        assert_eq!(
            (rate.connections, rate.stages[0].rate_per_second),
            (20, 200)
        );
        assert_eq!(spec.scenarios[0].offered_messages(), 2000);
        assert_eq!(
            spec.thresholds
                .and_then(|t| t.request_latency_ms)
                .and_then(|l| l.p95),
            Some(1.0)
        );
        let bare = parse_spec(
            "systemRef: {name: outbox}\nscenarios: [{name: b, messages: 5, batching: true}]\n",
        )
        .expect("bare spec");
        assert_eq!(bare.scenarios[0].messages, Some(5));
        assert_eq!(bare.message_size, 256, "defaults apply");
        assert!(parse_spec("kind: LoadTest\nspec: {scenarios: 3}\n")
            .unwrap_err()
            .contains("not a LoadTest spec"));
    }

    #[test]
    fn the_reports_go_where_the_flags_say() {
        use clap::{CommandFactory, Parser};
        #[derive(clap::Parser)]
        struct Cli {
            #[command(flatten)]
            args: LoadTestArgs,
        }
        Cli::command().debug_assert();
        let cli = Cli::try_parse_from([
            "loadtest",
            "--database-url",
            "postgres://localhost/outbox",
            "--report",
            "run.json",
            "--html-report",
            "run.html",
        ])
        .expect("valid flags");
        assert_eq!(cli.args.report, Some(PathBuf::from("run.json")));
        assert_eq!(cli.args.html_report, Some(PathBuf::from("run.html")));
    }

    #[test]
    fn durations_take_units_and_default_to_seconds() {
        assert_eq!(parse_duration("90"), Ok(Duration::from_secs(90)));
        assert_eq!(parse_duration("90s"), Ok(Duration::from_secs(90)));
        assert_eq!(parse_duration("10m"), Ok(Duration::from_secs(600)));
        assert_eq!(parse_duration("250ms"), Ok(Duration::from_millis(250)));
        assert!(parse_duration("5 parsecs").is_err());
    }
}
