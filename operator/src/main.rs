//! The `operator` binary: both controllers, `/metrics` and `/healthz`, until SIGTERM.

use std::net::SocketAddr;
use std::time::Duration;

use anyhow::Context as _;
use clap::{Parser, ValueEnum};
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
}

#[derive(Debug, Clone, Copy, ValueEnum)]
enum LogFormat {
    Json,
    Text,
}

async fn shutdown_signal() {
    let ctrl_c = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    #[cfg(unix)]
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut signal) => {
                signal.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    #[cfg(not(unix))]
    let term = std::future::pending::<()>();
    tokio::select! {
        _ = ctrl_c => {},
        _ = term => {},
    }
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
    };
    let ctx = Context::new(client, metrics.clone(), settings);

    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    let stopped = |mut rx: tokio::sync::watch::Receiver<bool>| async move {
        let _ = rx.wait_for(|s| *s).await;
    };
    let server = tokio::spawn(server::serve(
        args.metrics_bind_address,
        metrics,
        stopped(stop_rx.clone()),
    ));
    tokio::spawn(async move {
        shutdown_signal().await;
        let _ = stop_tx.send(true);
    });
    let result = run(ctx, scope, stopped(stop_rx)).await;
    server.abort();
    result.context("running the controllers")?;
    Ok(())
}
