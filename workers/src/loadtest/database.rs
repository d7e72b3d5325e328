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

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tokio_postgres::error::SqlState;
use tokio_postgres::Client;

use super::error::{LoadTestError, Result};

/// Longest wait between two attempts.
const MAX_BACKOFF: Duration = Duration::from_secs(5);
const FIRST_BACKOFF: Duration = Duration::from_millis(250);

/// Interruptions of the database session over the run, for the status and the report.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct Interruptions {
    /// Outages ridden out (or the one that ended the run).
    pub count: u64,
    /// The longest, in seconds.
    pub longest_seconds: f64,
    /// Since when the current one lasts, if one does.
    pub ongoing_since: Option<Instant>,
}

/// A database session that reconnects (see the module documentation).
pub struct OutboxDb {
    url: String,
    client: Option<Client>,
    patience: Duration,
    backoff: Duration,
    interruptions: Arc<Mutex<Interruptions>>,
}

impl OutboxDb {
    /// Connects, waiting within `patience` for a database that is not up yet.
    pub async fn connect(url: &str, patience: Duration) -> Result<OutboxDb> {
        let mut db = OutboxDb {
            url: url.to_string(),
            client: None,
            patience,
            backoff: FIRST_BACKOFF,
            interruptions: Arc::default(),
        };
        db.session().await?;
        db.healthy();
        Ok(db)
    }

    /// The session, reconnecting first when it was lost.
    pub async fn session(&mut self) -> Result<&Client> {
        while self.client.as_ref().is_none_or(Client::is_closed) {
            self.client = None;
            match crate::db::connect(&self.url).await {
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
        let ended = self.update(|i| {
            let since = i.ongoing_since.take()?;
            let seconds = since.elapsed().as_secs_f64();
            i.longest_seconds = i.longest_seconds.max(seconds);
            Some(seconds)
        });
        if let Some(seconds) = ended {
            tracing::info!(
                seconds = format!("{seconds:.1}"),
                "outbox database back; verification goes on"
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
        let (since, new) = self.update(|i| match i.ongoing_since {
            Some(since) => (since, false),
            None => {
                let now = Instant::now();
                i.ongoing_since = Some(now);
                i.count += 1;
                (now, true)
            }
        });
        if new {
            tracing::warn!(
                patience_seconds = self.patience.as_secs(),
                error = %crate::error_chain(&error),
                "outbox database unreachable; reconnecting"
            );
        }
        let lasted = since.elapsed();
        if lasted >= self.patience {
            self.update(|i| i.longest_seconds = i.longest_seconds.max(lasted.as_secs_f64()));
            return Err(LoadTestError::DatabaseUnavailable {
                seconds: lasted.as_secs(),
                patience: self.patience.as_secs(),
                last: crate::error_chain(&error),
            });
        }
        tokio::time::sleep(self.backoff.min(self.patience - lasted)).await;
        self.backoff = (self.backoff * 2).min(MAX_BACKOFF);
        Ok(())
    }

    /// The patience per outage.
    pub fn patience(&self) -> Duration {
        self.patience
    }

    /// A view of the interruptions that stays readable while the session is in use.
    pub fn interruptions(&self) -> Arc<Mutex<Interruptions>> {
        self.interruptions.clone()
    }

    fn update<T>(&self, change: impl FnOnce(&mut Interruptions) -> T) -> T {
        let mut guard = self
            .interruptions
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        change(&mut guard)
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
            crate::Error::DbConnect { .. }
            | crate::Error::DbTimeout { .. }
            | crate::Error::Pool { .. } => true,
            crate::Error::Db { source, .. } => postgres_away(source),
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
            source: crate::Error::DbTimeout {
                url: "postgres://db".into(),
                timeout: Duration::from_secs(10),
            },
        }));
        assert!(!is_interruption(&LoadTestError::Ledger {
            context: "reading",
            source: crate::Error::Ledger("a newer format".into()),
        }));
    }
}
