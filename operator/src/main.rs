//! The `operator` binary: both controllers, `/metrics` and `/healthz`, until SIGTERM.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context as _;
use clap::builder::NonEmptyStringValueParser;
use clap::{Parser, ValueEnum};
use tokio::sync::watch;

use outbox_operator::image_policy::ImagePolicy;
use outbox_operator::leader::{Elector, LeaseSettings};
use outbox_operator::metrics::Metrics;
use outbox_operator::workloads::{default_image, WorkerImage};
use outbox_operator::{run, server, Context, Scope, Settings};
use tracing_subscriber::EnvFilter;

/// Kubernetes operator for the transactional outbox pattern on Kafka and PostgreSQL.
#[derive(Debug, Parser)]
#[command(version, about)]
struct Args {
    /// Watch only this namespace (default: all namespaces).
    #[arg(long, env = "WATCH_NAMESPACE")]
    namespace: Option<String>,
    /// Address of the /metrics and /healthz server.
    #[arg(long, env = "METRICS_BIND_ADDRESS", default_value = "0.0.0.0:8080")]
    metrics_bind_address: SocketAddr,
    /// Log filter (tracing EnvFilter syntax, e.g. `info,outbox_operator=debug`).
    #[arg(long, env = "LOG_LEVEL", default_value = "info")]
    log_level: String,
    /// Log format.
    #[arg(long, env = "LOG_FORMAT", value_enum, default_value_t = LogFormat::Json)]
    log_format: LogFormat,
    /// ServiceAccount the load-test runner Jobs run as.
    #[arg(
        long,
        env = "LOADTEST_SERVICE_ACCOUNT",
        default_value = "outbox-loadtest"
    )]
    loadtest_service_account: String,
    /// Worker image of producers, consumers and load-test runners whose OutboxSystem or
    /// LoadTest names no `image`.
    #[arg(
        long,
        env = "WORKER_IMAGE",
        default_value_t = default_image(),
        value_parser = NonEmptyStringValueParser::new()
    )]
    worker_image: String,
    /// Pull policy for that worker image (default: Kubernetes' own); a spec's
    /// `imagePullPolicy` wins.
    #[arg(
        long,
        env = "WORKER_IMAGE_PULL_POLICY",
        value_parser = ["Always", "IfNotPresent", "Never"]
    )]
    worker_image_pull_policy: Option<String>,
    /// Comma-separated image repositories (or prefixes of them, on `/` boundaries) that
    /// an OutboxSystem's or LoadTest's `image` fields must name; empty: any image. An
    /// image outside the list is not run (condition and Event `ImageNotAllowed`).
    #[arg(long, env = "ALLOWED_IMAGE_REPOSITORIES", default_value = "")]
    allowed_image_repositories: String,
    /// Seconds between status refreshes of a healthy OutboxSystem (lag, backlog).
    #[arg(long, env = "STATUS_REFRESH_SECONDS", default_value_t = 30)]
    status_refresh_seconds: u64,
    /// Seconds the oldest pending outbox message may wait before the DeliveryStalled
    /// condition turns True.
    #[arg(long, env = "DELIVERY_STALL_SECONDS", default_value_t = 120)]
    delivery_stall_seconds: u64,
    /// Seconds the operator keeps trying to delete a `deletionPolicy: Delete` topic
    /// before it lets the OutboxSystem go and leaves the topic behind (Warning Event
    /// TopicLeftBehind).
    #[arg(long, env = "TOPIC_DELETION_TIMEOUT_SECONDS", default_value_t = 300)]
    topic_deletion_timeout_seconds: u64,
    /// Elect a leader through a Lease before reconciling (for more than one replica).
    #[arg(long, env = "LEADER_ELECT", default_value_t = false)]
    leader_elect: bool,
    /// Namespace of the leader-election Lease (default: the pod's namespace).
    #[arg(long, env = "POD_NAMESPACE")]
    leader_election_namespace: Option<String>,
    /// Name of the leader-election Lease.
    #[arg(
        long,
        env = "LEADER_ELECTION_LEASE_NAME",
        default_value = "outbox-operator"
    )]
    leader_election_lease_name: String,
    /// Seconds a leader's Lease stays valid without renewal.
    #[arg(long, env = "LEADER_ELECTION_LEASE_SECONDS", default_value_t = 15)]
    leader_election_lease_seconds: u64,
    /// This replica's identity in the Lease (default: the pod name, else the host name).
    #[arg(long, env = "POD_NAME")]
    identity: Option<String>,
}

#[derive(Debug, Clone, Copy, ValueEnum)]
enum LogFormat {
    Json,
    Text,
}

/// The operator's life as its steps: read the flags → logging → connect → scope and
/// settings (pure, from the flags) → the leader election, when asked for (its Lease
/// settings pure, from the flags) → serve `/metrics` and `/healthz`, and turn SIGTERM
/// into a stop → wait for the Lease → run both controllers until stopped (reconciles
/// under way finish, then the Lease is released) or the Lease is lost (they are
/// dropped at once, and the process exits with an error).
#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    init_logging(&args)?;
    let client = kube::Client::try_default()
        .await
        .context("connecting to Kubernetes (in-cluster config or KUBECONFIG)")?;
    let scope = scope(&args);
    let metrics = Metrics::default();
    let settings = settings(&args);
    let elector = lease_settings(&args)?.map(|lease| Arc::new(Elector::new(client.clone(), lease)));
    let ctx = Context::new(client, metrics.clone(), settings).with_leader(elector.clone());

    let (stop_tx, stop_rx) = watch::channel(false);
    let server = tokio::spawn(server::serve(
        args.metrics_bind_address,
        metrics,
        stopped(stop_rx.clone()),
    ));
    tokio::spawn(async move {
        outbox_contract::termination::requested().await;
        let _ = stop_tx.send(true);
    });

    // Without leader election `lost_tx` stays here unsent until main returns: the Lease
    // is never lost.
    let (lost_tx, lost_rx) = watch::channel(false);
    if let Some(elector) = &elector {
        if !lead(elector, &stop_rx, lost_tx).await {
            server.abort();
            return Ok(());
        }
    }
    // A stop lets the reconciles under way finish. A lost Lease drops them where they
    // are: the replica that took over may be acting already, so not one more write
    // goes out in this one's name (and no Kafka or API call under way delays the exit).
    let outcome = tokio::select! {
        result = run(ctx, scope, stopped(stop_rx)) => Some(result),
        () = stopped(lost_rx) => None,
    };
    let Some(result) = outcome else {
        server.abort();
        anyhow::bail!(
            "lost the leader-election Lease; dropped the reconciles under way and exiting so that this replica restarts as a candidate"
        );
    };
    if let Some(elector) = &elector {
        elector.release().await;
    }
    server.abort();
    result.context("running the controllers")?;
    Ok(())
}

/// JSON or text logs, filtered by `--log-level`.
fn init_logging(args: &Args) -> anyhow::Result<()> {
    let filter = EnvFilter::try_new(&args.log_level)
        .with_context(|| format!("invalid --log-level {:?}", args.log_level))?;
    match args.log_format {
        LogFormat::Json => tracing_subscriber::fmt()
            .json()
            .with_current_span(true)
            .with_env_filter(filter)
            .init(),
        LogFormat::Text => tracing_subscriber::fmt().with_env_filter(filter).init(),
    }
    Ok(())
}

/// The namespaces to watch (pure): one, or all when none or an empty one is given.
fn scope(args: &Args) -> Scope {
    match &args.namespace {
        Some(ns) if !ns.is_empty() => Scope::Namespace(ns.clone()),
        _ => Scope::All,
    }
}

/// The reconciles' settings from the flags (pure); periods of at least a second.
fn settings(args: &Args) -> Settings {
    Settings {
        loadtest_service_account: args.loadtest_service_account.clone(),
        status_refresh: Duration::from_secs(args.status_refresh_seconds.max(1)),
        stall_after: Duration::from_secs(args.delivery_stall_seconds.max(1)),
        topic_deletion_timeout: Duration::from_secs(args.topic_deletion_timeout_seconds),
        worker_image: WorkerImage {
            image: args.worker_image.clone(),
            pull_policy: args.worker_image_pull_policy.clone(),
        },
        image_policy: ImagePolicy::from_list(&args.allowed_image_repositories),
    }
}

/// The leader election's Lease from the flags (pure but for the host name, read when
/// no identity is given): None without `--leader-elect`; an error when the Lease has no
/// namespace. The lease lasts at least 2 s; the renew deadline is client-go's share of it.
fn lease_settings(args: &Args) -> anyhow::Result<Option<LeaseSettings>> {
    if !args.leader_elect {
        return Ok(None);
    }
    let Some(namespace) = args.leader_election_namespace.clone() else {
        anyhow::bail!(
            "--leader-elect needs --leader-election-namespace (or POD_NAMESPACE) for its Lease"
        );
    };
    let identity = args
        .identity
        .clone()
        .or_else(|| std::env::var("HOSTNAME").ok())
        .unwrap_or_else(|| format!("outbox-operator-{}", std::process::id()));
    let lease_duration = Duration::from_secs(args.leader_election_lease_seconds.max(2));
    Ok(Some(LeaseSettings {
        namespace,
        name: args.leader_election_lease_name.clone(),
        identity,
        lease_duration,
        renew_deadline: LeaseSettings::default_renew_deadline(lease_duration),
    }))
}

/// Waits for the Lease (false: a stop came first), then keeps it in the background and
/// says on `lost_tx` when it is lost.
async fn lead(
    elector: &Arc<Elector>,
    stop_rx: &watch::Receiver<bool>,
    lost_tx: watch::Sender<bool>,
) -> bool {
    tokio::select! {
        _ = elector.acquire() => {}
        _ = stopped(stop_rx.clone()) => return false,
    }
    let keeper = elector.clone();
    tokio::spawn(async move {
        keeper.keep().await;
        let _ = lost_tx.send(true);
    });
    true
}

/// Resolves once `rx` says stop (or its sender is gone).
async fn stopped(mut rx: watch::Receiver<bool>) {
    while !*rx.borrow_and_update() {
        if rx.changed().await.is_err() {
            break;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The flags of a bare `operator` with leader election set by hand, so that the
    /// test's environment (POD_NAMESPACE, POD_NAME, ...) does not decide.
    fn args() -> Args {
        let mut args = Args::try_parse_from(["operator"]).expect("a bare operator parses");
        args.leader_elect = false;
        args.leader_election_namespace = None;
        args.identity = Some("replica-a".into());
        args.worker_image = default_image();
        args.worker_image_pull_policy = None;
        args.allowed_image_repositories = String::new();
        args
    }

    #[test]
    fn the_allowed_image_repositories_come_from_a_flag_or_its_env_and_default_to_any() {
        use clap::CommandFactory;
        let command = Args::command();
        let flag = command
            .get_arguments()
            .find(|a| a.get_id() == "allowed_image_repositories")
            .expect("--allowed-image-repositories");
        assert_eq!(
            flag.get_env(),
            Some(std::ffi::OsStr::new("ALLOWED_IMAGE_REPOSITORIES"))
        );
        assert_eq!(settings(&args()).image_policy, ImagePolicy::default());
        let a = Args::try_parse_from([
            "operator",
            "--allowed-image-repositories",
            "registry.example/team/,ghcr.io/outbox-dev/",
        ])
        .expect("valid flags");
        assert_eq!(
            settings(&a).image_policy.allowed_repositories,
            ["registry.example/team/", "ghcr.io/outbox-dev/"]
        );
    }

    #[test]
    fn the_worker_image_defaults_to_the_compiled_in_one_and_comes_from_the_flags() {
        use clap::CommandFactory;
        let command = Args::command();
        let flag = command
            .get_arguments()
            .find(|a| a.get_id() == "worker_image")
            .expect("--worker-image");
        assert_eq!(flag.get_env(), Some(std::ffi::OsStr::new("WORKER_IMAGE")));
        assert_eq!(flag.get_default_values(), [default_image().as_str()]);
        assert_eq!(settings(&args()).worker_image, WorkerImage::default());

        let a = Args::try_parse_from([
            "operator",
            "--worker-image",
            "registry.example/outbox-worker:7",
            "--worker-image-pull-policy",
            "Always",
        ])
        .expect("valid flags");
        let image = settings(&a).worker_image;
        assert_eq!(image.image, "registry.example/outbox-worker:7");
        assert_eq!(image.pull_policy.as_deref(), Some("Always"));
        for wrong in [
            ["--worker-image", ""],
            ["--worker-image-pull-policy", "Sometimes"],
        ] {
            let argv = std::iter::once("operator").chain(wrong);
            assert!(Args::try_parse_from(argv).is_err(), "{wrong:?}");
        }
    }

    #[test]
    fn an_empty_or_missing_namespace_watches_all_namespaces() {
        let mut a = args();
        a.namespace = None;
        assert_eq!(scope(&a), Scope::All);
        a.namespace = Some(String::new());
        assert_eq!(scope(&a), Scope::All);
        a.namespace = Some("team-a".into());
        assert_eq!(scope(&a), Scope::Namespace("team-a".into()));
    }

    #[test]
    fn settings_come_from_the_flags_with_periods_of_at_least_a_second() {
        let mut a = args();
        a.loadtest_service_account = "runner".into();
        a.status_refresh_seconds = 0;
        a.delivery_stall_seconds = 0;
        a.topic_deletion_timeout_seconds = 0;
        let s = settings(&a);
        assert_eq!(s.loadtest_service_account, "runner");
        assert_eq!(s.status_refresh, Duration::from_secs(1));
        assert_eq!(s.stall_after, Duration::from_secs(1));
        // No floor: 0 lets a topic that cannot be deleted go at once.
        assert_eq!(s.topic_deletion_timeout, Duration::ZERO);
        a.status_refresh_seconds = 45;
        assert_eq!(settings(&a).status_refresh, Duration::from_secs(45));
    }

    #[test]
    fn leader_election_needs_a_namespace_for_its_lease() {
        let mut a = args();
        assert!(lease_settings(&a).expect("no election").is_none());
        a.leader_elect = true;
        let error = lease_settings(&a).expect_err("no namespace").to_string();
        assert!(error.contains("POD_NAMESPACE"), "{error}");
    }

    #[test]
    fn the_lease_lasts_at_least_two_seconds_and_is_renewed_within_two_thirds() {
        let mut a = args();
        a.leader_elect = true;
        a.leader_election_namespace = Some("operators".into());
        a.leader_election_lease_name = "outbox-lease".into();
        a.leader_election_lease_seconds = 1;
        let lease = lease_settings(&a).expect("valid").expect("an election");
        assert_eq!(lease.namespace, "operators");
        assert_eq!(lease.name, "outbox-lease");
        assert_eq!(lease.identity, "replica-a");
        assert_eq!(lease.lease_duration, Duration::from_secs(2));
        assert_eq!(
            lease.renew_deadline,
            Duration::from_millis(1333) + Duration::from_nanos(333_333)
        );
        a.leader_election_lease_seconds = 15;
        let lease = lease_settings(&a).expect("valid").expect("an election");
        assert_eq!(lease.lease_duration, Duration::from_secs(15));
        assert_eq!(lease.renew_deadline, Duration::from_secs(10));
    }
}
