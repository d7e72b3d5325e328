//! The outbox backlog, read from the `outbox_backlog` view the workers' migrations create.

use std::time::Duration;

use crate::crd::BacklogStatus;
use crate::postgres_tls::{self, TlsDefaults};

/// How long the operator waits for PostgreSQL before reporting it unreachable.
const DB_TIMEOUT: Duration = Duration::from_secs(5);

/// Why the backlog could not be read; reported in the BacklogObserved condition.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BacklogUnavailable {
    /// PascalCase reason.
    pub reason: &'static str,
    /// What went wrong.
    pub message: String,
}

/// One PostgreSQL session of a reconcile: the schema claim, then the backlog.
pub struct DatabaseSession {
    client: tokio_postgres::Client,
    connection: tokio::task::JoinHandle<()>,
}

impl Drop for DatabaseSession {
    fn drop(&mut self) {
        self.connection.abort();
    }
}

impl DatabaseSession {
    /// Connects with the URL's settings; `tls` carries the CA of
    /// `spec.database.caSecretRef`, when there is one (the URL's `sslmode` and
    /// `sslrootcert` apply as in the workers).
    pub async fn open(
        database_url: &str,
        tls: &TlsDefaults,
    ) -> Result<DatabaseSession, BacklogUnavailable> {
        let target = postgres_tls::parse(database_url, tls).map_err(|e| BacklogUnavailable {
            reason: "DatabaseSettingsInvalid",
            message: format!("the database URL cannot be used: {e}"),
        })?;
        let (client, connection) =
            tokio::time::timeout(DB_TIMEOUT, target.config.connect(target.tls))
                .await
                .map_err(|_| BacklogUnavailable {
                    reason: "DatabaseUnreachable",
                    message: format!(
                        "no connection to PostgreSQL within {}s",
                        DB_TIMEOUT.as_secs()
                    ),
                })?
                .map_err(|e| BacklogUnavailable {
                    reason: "DatabaseUnreachable",
                    message: format!("connecting to PostgreSQL: {e}"),
                })?;
        let connection = tokio::spawn(async move {
            let _ = connection.await;
        });
        Ok(DatabaseSession { client, connection })
    }

    /// The session, for the schema claim.
    pub fn client_mut(&mut self) -> &mut tokio_postgres::Client {
        &mut self.client
    }

    /// Reads `pending`, `oldest_age_seconds` and `quarantined` from `outbox_backlog`;
    /// when the oldest pending row is older than `stall_after`, also names the oldest
    /// open transaction (which the relay cannot read past).
    pub async fn backlog(
        &self,
        stall_after: Duration,
    ) -> Result<BacklogStatus, BacklogUnavailable> {
        tokio::time::timeout(DB_TIMEOUT, query(&self.client, stall_after))
            .await
            .map_err(|_| BacklogUnavailable {
                reason: "BacklogQueryFailed",
                message: format!(
                    "outbox_backlog did not answer within {}s",
                    DB_TIMEOUT.as_secs()
                ),
            })?
    }
}

async fn query(
    client: &tokio_postgres::Client,
    stall_after: Duration,
) -> Result<BacklogStatus, BacklogUnavailable> {
    // A large backlog makes the planner's estimate big enough to JIT-compile a query
    // that runs in milliseconds; compiling would cost more than running.
    let result = match client.batch_execute("SET jit = off").await {
        // Every column, by name: views of older workers lack the newer ones.
        Ok(()) => client.query_one("SELECT * FROM outbox_backlog", &[]).await,
        Err(e) => Err(e),
    };
    let row = result.map_err(|e| {
        let missing = e
            .code()
            .is_some_and(|c| *c == tokio_postgres::error::SqlState::UNDEFINED_TABLE);
        if missing {
            BacklogUnavailable {
                reason: "BacklogViewMissing",
                message: "the view outbox_backlog does not exist yet (the workers create it when they start)".into(),
            }
        } else {
            BacklogUnavailable {
                reason: "BacklogQueryFailed",
                message: format!("querying outbox_backlog: {e}"),
            }
        }
    })?;
    let pending: Option<i64> = row.try_get("pending").ok().flatten();
    let oldest: Option<f64> = row.try_get("oldest_age_seconds").ok().flatten();
    let quarantined: Option<i64> = row.try_get("quarantined").ok().flatten();
    let stalled = oldest.is_some_and(|age| age > stall_after.as_secs_f64());
    let oldest_transaction = if stalled {
        oldest_open_transaction(client).await
    } else {
        None
    };
    Ok(BacklogStatus {
        pending: pending.unwrap_or(0),
        oldest_age_seconds: oldest,
        quarantined: quarantined.unwrap_or(0),
        oldest_transaction,
    })
}

/// The oldest transaction holding a transaction id in this database, described with
/// what stays the same while it lasts (pid, user, application, start). Sessions of other
/// users are visible only with `pg_read_all_stats`; then this may find none.
async fn oldest_open_transaction(client: &tokio_postgres::Client) -> Option<String> {
    let row = client
        .query_opt(
            "SELECT pid, coalesce(usename, ''), coalesce(application_name, ''),
                    coalesce(state, ''),
                    to_char(xact_start AT TIME ZONE 'UTC', 'YYYY-MM-DD\"T\"HH24:MI:SS\"Z\"')
             FROM pg_stat_activity
             WHERE backend_xid IS NOT NULL AND pid <> pg_backend_pid()
               AND datname = current_database()
             ORDER BY age(backend_xid) DESC
             LIMIT 1",
            &[],
        )
        .await
        .ok()??;
    let pid: i32 = row.get(0);
    let user: String = row.get(1);
    let application: String = row.get(2);
    let state: String = row.get(3);
    let since: Option<String> = row.get(4);
    let application = if application.is_empty() {
        String::new()
    } else {
        format!(", application {application}")
    };
    Some(format!(
        "backend pid {pid} (user {user}{application}, {state}) in a transaction since {}",
        since.unwrap_or_else(|| "an unknown time".into())
    ))
}
