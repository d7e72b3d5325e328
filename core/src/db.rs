//! PostgreSQL connections: single sessions, pools and start-up checks.

use std::sync::Arc;
use std::time::Duration;

use futures::StreamExt;
use outbox_contract::postgres_tls::{self, TlsDefaults};
use tokio::sync::Notify;
use tokio_postgres::{AsyncMessage, Client};

use crate::error::{Error, Result};
use crate::redact::redact_url;

/// How long a connection attempt may take before it counts as unreachable.
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);

/// Opens one session; its connection is driven by a spawned task that ends with it.
pub async fn connect(database_url: &str) -> Result<Client> {
    connect_with_notifications(database_url, None).await
}

/// Opens one session whose `NOTIFY`s (after a `LISTEN`) wake `wake`.
pub async fn connect_with_notifications(
    database_url: &str,
    wake: Option<Arc<Notify>>,
) -> Result<Client> {
    let (config, tls) = parse_url(database_url)?;
    let attempt = tokio::time::timeout(CONNECT_TIMEOUT, config.connect(tls)).await;
    let (client, mut connection) = match attempt {
        Err(_) => {
            return Err(Error::DbTimeout {
                url: redact_url(database_url),
                timeout: CONNECT_TIMEOUT,
            })
        }
        Ok(Err(source)) => {
            return Err(Error::DbConnect {
                url: redact_url(database_url),
                source,
            })
        }
        Ok(Ok(pair)) => pair,
    };
    tokio::spawn(async move {
        let mut messages = futures::stream::poll_fn(move |cx| connection.poll_message(cx));
        while let Some(message) = messages.next().await {
            match message {
                Ok(AsyncMessage::Notification(_)) => {
                    if let Some(wake) = &wake {
                        wake.notify_one();
                    }
                }
                Ok(AsyncMessage::Notice(notice)) => {
                    tracing::debug!(%notice, "PostgreSQL notice");
                }
                Ok(_) => {}
                Err(e) => {
                    tracing::debug!(error = %e, "PostgreSQL session ended");
                    break;
                }
            }
        }
    });
    Ok(client)
}

/// A pool of sessions for request handlers; connections open lazily.
pub fn pool(database_url: &str, size: usize) -> Result<deadpool_postgres::Pool> {
    let (config, tls) = parse_url(database_url)?;
    let manager = deadpool_postgres::Manager::from_config(
        config,
        tls,
        deadpool_postgres::ManagerConfig {
            recycling_method: deadpool_postgres::RecyclingMethod::Fast,
        },
    );
    deadpool_postgres::Pool::builder(manager)
        .max_size(size)
        .runtime(deadpool_postgres::Runtime::Tokio1)
        .wait_timeout(Some(Duration::from_secs(10)))
        .create_timeout(Some(CONNECT_TIMEOUT))
        .recycle_timeout(Some(Duration::from_secs(5)))
        .build()
        .map_err(|e| Error::Config(format!("building the PostgreSQL pool: {e}")))
}

/// The URL's settings with ours added, and the TLS connector its `sslmode` and CA
/// (in the URL, or `PGSSLMODE`/`PGSSLROOTCERT`) call for.
fn parse_url(
    database_url: &str,
) -> Result<(tokio_postgres::Config, postgres_tls::MakeRustlsConnect)> {
    let target = postgres_tls::parse(database_url, &TlsDefaults::from_env()).map_err(|e| {
        Error::Config(format!(
            "DATABASE_URL {}: {}",
            redact_url(database_url),
            crate::error_chain(&e)
        ))
    })?;
    let mut config = target.config;
    config.connect_timeout(CONNECT_TIMEOUT);
    config.keepalives_idle(Duration::from_secs(10));
    config.tcp_user_timeout(Duration::from_secs(15));
    // Ours first: `-c` options in the URL come later and win.
    let options = match config.get_options() {
        Some(theirs) if !theirs.trim().is_empty() => format!("{SESSION_OPTIONS} {theirs}"),
        _ => SESSION_OPTIONS.to_string(),
    };
    config.options(&options);
    Ok((config, target.tls))
}

/// Server-side settings of every worker session:
/// - a transaction left idle for a minute is ended (an open transaction holds back the
///   relay, which reads only rows written before the oldest running one);
/// - the server probes an idle connection after 5 s and gives up after 3 unanswered
///   probes 2 s apart, and after 15 s of unacknowledged sends: the session of a leader
///   whose node or network died (the relay lock is a session lock) ends in seconds, not
///   after the kernel's two hours.
pub const SESSION_OPTIONS: &str = "-c idle_in_transaction_session_timeout=60000 \
     -c tcp_keepalives_idle=5 -c tcp_keepalives_interval=2 -c tcp_keepalives_count=3 \
     -c tcp_user_timeout=15000";

/// Connects and migrates the schema, retrying with backoff for as long as PostgreSQL
/// is unreachable (a worker waits for its database instead of crash-looping). Returns
/// `None` when `shutdown` comes first; a setting that cannot work fails at once.
/// With `system` (`OUTBOX_SYSTEM`), it also waits while the schema is another
/// system's (see `schema::claim`).
pub async fn wait_and_migrate(
    database_url: &str,
    system: Option<&str>,
    shutdown: &mut crate::shutdown::ShutdownSignal,
) -> Result<Option<Client>> {
    let mut backoff = Duration::from_millis(500);
    let mut attempt = 1u32;
    loop {
        let outcome = async {
            let mut client = connect(database_url).await?;
            crate::schema::migrate(&mut client).await?;
            if let Some(system) = system {
                crate::schema::claim(&mut client, system).await?;
            }
            Ok::<_, Error>(client)
        }
        .await;
        match outcome {
            Ok(client) => {
                if attempt > 1 {
                    tracing::info!(attempt, "PostgreSQL reachable; schema migrated and ours");
                }
                return Ok(Some(client));
            }
            Err(e @ Error::Config(_)) => return Err(e),
            Err(e) => {
                tracing::warn!(error = %crate::error_chain(&e), attempt, retry_in = ?backoff, "PostgreSQL not ready; waiting for it");
            }
        }
        tokio::select! {
            _ = tokio::time::sleep(backoff) => {}
            _ = crate::shutdown::wait(shutdown) => return Ok(None),
        }
        backoff = (backoff * 2).min(Duration::from_secs(10));
        attempt += 1;
    }
}
