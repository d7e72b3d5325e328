//! Retention: relayed outbox rows and old ledger data are deleted a slice at a time, so the
//! database does not grow by every message ever sent (a reference run adds 10,000,000
//! rows).
//!
//! Relayed rows are found by the primary key alone: every round records where the
//! watermark is (a "mark"), and rows at or below the newest mark older than the
//! retention are deleted. That is an index range scan from the start of the table,
//! with no scan of the rows that are kept. One producer replica at a time does it
//! (an advisory lock); the others skip the round.

use std::time::Duration;

use tokio_postgres::Client;

use crate::error::{DbContext, Result};
use crate::metrics::ProducerMetrics;
use crate::shutdown::{self, ShutdownSignal};

/// What is kept, and how often it is enforced.
#[derive(Debug, Clone)]
pub struct RetentionSettings {
    /// Relayed rows are kept this long after they were relayed; zero keeps them all.
    pub relayed: Duration,
    /// Acknowledgement ledger data untouched for this long is deleted; zero keeps it.
    pub ledger: Duration,
    /// Time between rounds.
    pub interval: Duration,
    /// Rows deleted per statement: a slice.
    pub slice_rows: i64,
}

const TRY_LOCK: &str =
    "SELECT pg_try_advisory_lock(hashtext(current_schema() || '.outbox-retention'))";
const UNLOCK: &str = "SELECT pg_advisory_unlock(hashtext(current_schema() || '.outbox-retention'))";

const MARK: &str = "INSERT INTO outbox_retention_marks (wm_txid, wm_id)
    SELECT wm_txid, wm_id FROM outbox_relay_state";

const DUE_MARK: &str = "SELECT wm_txid::text, wm_id FROM outbox_retention_marks
    WHERE at <= now() - make_interval(secs => $1::double precision)
    ORDER BY at DESC, seq DESC LIMIT 1";

const DELETE_RELAYED: &str = "DELETE FROM outbox_messages WHERE (txid, id) IN (
        SELECT txid, id FROM outbox_messages
        WHERE (txid, id) <= ($1::text::xid8, $2::bigint)
        ORDER BY txid, id LIMIT $3)";

const FORGET_MARKS: &str = "DELETE FROM outbox_retention_marks
    WHERE at < (SELECT max(at) FROM outbox_retention_marks
                WHERE at <= now() - make_interval(secs => $1::double precision))";

const DELETE_LEDGER: &str = "WITH chunks AS (
        DELETE FROM outbox_ack_chunks
        WHERE updated_at < now() - make_interval(secs => $1::double precision)),
    anomalies AS (
        DELETE FROM outbox_ack_anomalies
        WHERE recorded_at < now() - make_interval(secs => $1::double precision)),
    key_order AS (
        DELETE FROM outbox_ack_key_order
        WHERE updated_at < now() - make_interval(secs => $1::double precision))
    SELECT 1";

/// Idempotency keys are kept as long as the rows they stored, and never longer than
/// [`KEY_MAX_AGE`].
const DELETE_KEYS: &str = "DELETE FROM outbox_idempotency
    WHERE created_at < now() - make_interval(secs => $1::double precision)";

/// The longest an idempotency key is kept, also when relayed rows are kept forever:
/// a key is there for a client's retries of one request, which end within minutes,
/// not for every request ever made (the table would grow with every keyed request).
pub const KEY_MAX_AGE: Duration = Duration::from_secs(24 * 3600);

/// How long idempotency keys are kept under `settings`.
fn key_age(settings: &RetentionSettings) -> Duration {
    if settings.relayed.is_zero() {
        KEY_MAX_AGE
    } else {
        settings.relayed.min(KEY_MAX_AGE)
    }
}

/// Runs rounds until shutdown; errors are logged and the next round tries again.
pub async fn run(
    database_url: String,
    settings: RetentionSettings,
    metrics: ProducerMetrics,
    mut shutdown: ShutdownSignal,
) {
    if settings.relayed.is_zero() && settings.ledger.is_zero() {
        tracing::info!(
            key_max_age_seconds = KEY_MAX_AGE.as_secs(),
            "retention off: relayed rows and ledger data are kept; idempotency keys are not"
        );
    }
    let mut client: Option<Client> = None;
    loop {
        if client.as_ref().is_none_or(Client::is_closed) {
            client = crate::db::connect(&database_url).await.ok();
        }
        if let Some(db) = &client {
            match round(db, &settings, &metrics, &mut shutdown).await {
                Ok(0) => {}
                Ok(deleted) => tracing::info!(deleted, "retention: deleted relayed outbox rows"),
                Err(e) => {
                    tracing::warn!(error = %crate::error_chain(&e), "retention round failed; trying again later")
                }
            }
        }
        tokio::select! {
            _ = tokio::time::sleep(settings.interval) => {}
            _ = shutdown::wait(&mut shutdown) => return,
        }
    }
}

/// One round, if no other replica runs one: returns the relayed rows deleted.
pub async fn round(
    db: &Client,
    settings: &RetentionSettings,
    metrics: &ProducerMetrics,
    shutdown: &mut ShutdownSignal,
) -> Result<u64> {
    let locked: bool = db
        .query_one(TRY_LOCK, &[])
        .await
        .db("taking the retention lock")?
        .get(0);
    if !locked {
        return Ok(0);
    }
    let result = locked_round(db, settings, metrics, shutdown).await;
    let _ = db.query_one(UNLOCK, &[]).await;
    if result.is_ok() {
        metrics.retention_rounds.inc();
    }
    result
}

async fn locked_round(
    db: &Client,
    settings: &RetentionSettings,
    metrics: &ProducerMetrics,
    shutdown: &mut ShutdownSignal,
) -> Result<u64> {
    let mut deleted = 0;
    if !settings.ledger.is_zero() {
        db.execute(DELETE_LEDGER, &[&settings.ledger.as_secs_f64()])
            .await
            .db("deleting old ledger data")?;
    }
    db.execute(DELETE_KEYS, &[&key_age(settings).as_secs_f64()])
        .await
        .db("deleting old idempotency keys")?;
    if settings.relayed.is_zero() {
        return Ok(0);
    }
    db.execute(MARK, &[]).await.db("marking the watermark")?;
    let keep = settings.relayed.as_secs_f64();
    let due = db
        .query_opt(DUE_MARK, &[&keep])
        .await
        .db("finding rows relayed long enough ago")?;
    if let Some(mark) = due {
        let txid: String = mark.get(0);
        let id: i64 = mark.get(1);
        loop {
            let n = db
                .execute(DELETE_RELAYED, &[&txid, &id, &settings.slice_rows])
                .await
                .db("deleting relayed rows")?;
            deleted += n;
            metrics.retention_deleted.inc_by(n);
            if n < settings.slice_rows as u64 || *shutdown.borrow() {
                break;
            }
        }
        db.execute(FORGET_MARKS, &[&keep])
            .await
            .db("forgetting used marks")?;
    }
    Ok(deleted)
}
