//! The runner's session on the outbox database, which outlives PostgreSQL restarts.
//!
//! The system under test rides out a database restart or failover; the proof must too.
//! A lost session, a refused connection or a server shutting down is an interruption:
//! the runner reconnects with backoff and tries the same read again, for at most
//! `--infrastructure-patience` (300 s by default) per outage. Only an outage longer than
//! that fails the run, naming the database and how long it was gone. Errors the server
//! answers (a missing table, a bad query) are not retried.
//!
//! Call sites read through [`with_db!`](crate::with_db): one statement, retried whole.

use std::time::Duration;

use tokio_postgres::error::SqlState;
use tokio_postgres::Client;

use super::error::{LoadTestError, Result};
use super::outage::{self, Board};

/// Longest wait between two attempts.
const MAX_BACKOFF: Duration = Duration::from_secs(5);
const FIRST_BACKOFF: Duration = Duration::from_millis(250);

/// A database session that reconnects (see the module documentation).
pub struct OutboxDb {
    url: String,
    client: Option<Client>,
    patience: Duration,
    backoff: Duration,
    board: Board,
}

impl OutboxDb {
    /// Connects, waiting within `patience` for a database that is not up yet; outages
    /// go on `board` as [`outage::DATABASE`].
    pub async fn connect(url: &str, patience: Duration, board: Board) -> Result<OutboxDb> {
        let mut db = OutboxDb {
            url: url.to_string(),
            client: None,
            patience,
            backoff: FIRST_BACKOFF,
            board,
        };
        db.session().await?;
        db.healthy();
        Ok(db)
    }

    /// The session, reconnecting first when it was lost.
    pub async fn session(&mut self) -> Result<&Client> {
        while self.client.as_ref().is_none_or(Client::is_closed) {
            self.client = None;
            match outbox_core::db::connect(&self.url).await {
                Ok(client) => self.client = Some(client),
                Err(source) => {
                    self.failed(LoadTestError::Ledger {
                        context: "connecting to the outbox database",
                        source,
                    })
                    .await?
                }
            }
        }
        self.client
            .as_ref()
            .ok_or_else(|| LoadTestError::Settings("no database session".into()))
    }

    /// A statement succeeded: an ongoing outage is over.
    pub fn healthy(&mut self) {
        self.backoff = FIRST_BACKOFF;
        if let Some(lasted) = self.board.answered(outage::DATABASE) {
            tracing::info!(
                seconds = format!("{:.1}", lasted.as_secs_f64()),
                "outbox database back; the run goes on"
            );
        }
    }

    /// A statement failed with `error`: `Ok` after a pause when it is an interruption
    /// within the patience (the caller tries again), the error otherwise.
    pub async fn failed(&mut self, error: LoadTestError) -> Result<()> {
        if !is_interruption(&error) {
            return Err(error);
        }
        self.client = None;
        let (lasted, new) = self.board.failed(outage::DATABASE);
        if new {
            tracing::warn!(
                patience_seconds = self.patience.as_secs(),
                error = %outbox_core::error_chain(&error),
                "outbox database unreachable; reconnecting"
            );
        }
        if lasted >= self.patience {
            return Err(LoadTestError::DatabaseUnavailable {
                seconds: lasted.as_secs(),
                patience: self.patience.as_secs(),
                last: outbox_core::error_chain(&error),
            });
        }
        tokio::time::sleep(self.backoff.min(self.patience - lasted)).await;
        self.backoff = (self.backoff * 2).min(MAX_BACKOFF);
        Ok(())
    }
}

/// Runs `$read` (an expression using the session `$client`) until it succeeds, an
/// error that is no interruption comes, or an outage outlasts the patience.
#[macro_export]
macro_rules! with_db {
    ($db:expr, |$client:ident| $read:expr) => {
        loop {
            let $client = $db.session().await?;
            match $read {
                Ok(value) => {
                    $db.healthy();
                    break value;
                }
                Err(error) => $db.failed(error).await?,
            }
        }
    };
}

/// Whether `error` is the database being away rather than refusing the statement.
pub fn is_interruption(error: &LoadTestError) -> bool {
    match error {
        LoadTestError::Ledger { source, .. } => match source {
            outbox_core::Error::DbConnect { .. }
            | outbox_core::Error::DbTimeout { .. }
            | outbox_core::Error::Pool { .. } => true,
            outbox_core::Error::Db { source, .. } => postgres_away(source),
            _ => false,
        },
        LoadTestError::Db { source, .. } => postgres_away(source),
        _ => false,
    }
}

/// A lost connection, or the server shutting down or starting (class 08 and 57P0x).
fn postgres_away(error: &tokio_postgres::Error) -> bool {
    if error.is_closed() {
        return true;
    }
    match error.code() {
        // No server answer at all: the socket failed.
        None => true,
        Some(code) => {
            code.code().starts_with("08")
                || [
                    SqlState::ADMIN_SHUTDOWN,
                    SqlState::CRASH_SHUTDOWN,
                    SqlState::CANNOT_CONNECT_NOW,
                ]
                .contains(code)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn settings_and_report_errors_are_not_interruptions() {
        assert!(!is_interruption(&LoadTestError::Settings("x".into())));
        assert!(!is_interruption(&LoadTestError::Interrupted));
        assert!(is_interruption(&LoadTestError::Ledger {
            context: "connecting",
            source: outbox_core::Error::DbTimeout {
                url: "postgres://db".into(),
                timeout: Duration::from_secs(10),
            },
        }));
        assert!(!is_interruption(&LoadTestError::Ledger {
            context: "reading",
            source: outbox_core::Error::Ledger("a newer format".into()),
        }));
    }
}
