//! The `operator` binary: both controllers, `/metrics` and `/healthz`, until SIGTERM.

use std::net::SocketAddr;
use std::time::Duration;

use anyhow::Context as _;
use clap::{Parser, ValueEnum};
use std::sync::Arc;

use outbox_operator::leader::{Elector, LeaseSettings};
use outbox_operator::metrics::Metrics;
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

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
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

    let client = kube::Client::try_default()
        .await
        .context("connecting to Kubernetes (in-cluster config or KUBECONFIG)")?;
    let scope = match args.namespace {
        Some(ns) if !ns.is_empty() => Scope::Namespace(ns),
        _ => Scope::All,
    };
    let metrics = Metrics::default();
    let settings = Settings {
        loadtest_service_account: args.loadtest_service_account,
        status_refresh: Duration::from_secs(args.status_refresh_seconds.max(1)),
        stall_after: Duration::from_secs(args.delivery_stall_seconds.max(1)),
        topic_deletion_timeout: Duration::from_secs(args.topic_deletion_timeout_seconds),
    };
    let elector = match (args.leader_elect, args.leader_election_namespace) {
        (false, _) => None,
        (true, None) => anyhow::bail!(
            "--leader-elect needs --leader-election-namespace (or POD_NAMESPACE) for its Lease"
        ),
        (true, Some(namespace)) => {
            let identity = args
                .identity
                .or_else(|| std::env::var("HOSTNAME").ok())
                .unwrap_or_else(|| format!("outbox-operator-{}", std::process::id()));
            Some(Arc::new(Elector::new(
                client.clone(),
                LeaseSettings {
                    namespace,
                    name: args.leader_election_lease_name,
                    identity,
                    lease_duration: Duration::from_secs(args.leader_election_lease_seconds.max(2)),
                    renew_deadline: LeaseSettings::default_renew_deadline(Duration::from_secs(
                        args.leader_election_lease_seconds.max(2),
                    )),
                },
            )))
        }
    };
    let ctx = Context::new(client, metrics.clone(), settings).with_leader(elector.clone());

    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    let stopped = |mut rx: tokio::sync::watch::Receiver<bool>| async move {
        while !*rx.borrow_and_update() {
            if rx.changed().await.is_err() {
                break;
            }
        }
    };
    let server = tokio::spawn(server::serve(
        args.metrics_bind_address,
        metrics,
        stopped(stop_rx.clone()),
    ));
    tokio::spawn(async move {
        outbox_contract::termination::requested().await;
        let _ = stop_tx.send(true);
    });

    // With leader election: wait for the Lease (or a signal), and stop reconciling
    // when it is lost.
    let (lost_tx, lost_rx) = tokio::sync::watch::channel(false);
    if let Some(elector) = &elector {
        tokio::select! {
            _ = elector.acquire() => {}
            _ = stopped(stop_rx.clone()) => {
                server.abort();
                return Ok(());
            }
        }
        let keeper = elector.clone();
        tokio::spawn(async move {
            keeper.keep().await;
            let _ = lost_tx.send(true);
        });
    }
    let shutdown = {
        let stop = stopped(stop_rx);
        let lost = stopped(lost_rx.clone());
        async move {
            tokio::select! {
                _ = stop => {}
                _ = lost => {}
            }
        }
    };
    let result = run(ctx, scope, shutdown).await;
    if let Some(elector) = &elector {
        elector.release().await;
    }
    server.abort();
    result.context("running the controllers")?;
    if *lost_rx.borrow() {
        anyhow::bail!(
            "lost the leader-election Lease; exiting so that this replica restarts as a candidate"
        );
    }
    Ok(())
}
