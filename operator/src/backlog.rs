//! The outbox backlog, read from the `outbox_backlog` view the workers' migrations create.

use std::time::Duration;

use crate::crd::BacklogStatus;

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

/// Reads `pending` and `oldest_age_seconds` from `outbox_backlog`.
pub async fn read_backlog(database_url: &str) -> Result<BacklogStatus, BacklogUnavailable> {
    let (client, connection) = tokio::time::timeout(
        DB_TIMEOUT,
        tokio_postgres::connect(database_url, tokio_postgres::NoTls),
    )
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
    let task = tokio::spawn(connection);
    let result = tokio::time::timeout(DB_TIMEOUT, query(&client)).await;
    drop(client);
    task.abort();
    result.map_err(|_| BacklogUnavailable {
        reason: "BacklogQueryFailed",
        message: format!(
            "outbox_backlog did not answer within {}s",
            DB_TIMEOUT.as_secs()
        ),
    })?
}

async fn query(client: &tokio_postgres::Client) -> Result<BacklogStatus, BacklogUnavailable> {
    // A large backlog makes the planner's estimate big enough to JIT-compile a query
    // that runs in milliseconds; compiling would cost more than running.
    let result = match client.batch_execute("SET jit = off").await {
        Ok(()) => client
            .query_one(
                "SELECT pending::bigint, oldest_age_seconds::double precision FROM outbox_backlog",
                &[],
            )
            .await,
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
    let pending: Option<i64> = row.try_get(0).ok().flatten();
    let oldest: Option<f64> = row.try_get(1).ok().flatten();
    Ok(BacklogStatus {
        pending: pending.unwrap_or(0),
        oldest_age_seconds: oldest,
    })
}
