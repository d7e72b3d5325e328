//! Backpressure at ingest: when more messages wait in the outbox than
//! `MAX_BACKLOG_MESSAGES`, or the outbox table takes more than `MAX_BACKLOG_BYTES` on
//! disk, requests are answered 429 with `Retry-After` and store nothing, instead of
//! letting the outbox grow until the disk is full.
//!
//! The backlog is estimated once a second from two numbers, without counting rows:
//! the id sequence's last value less the relay watermark's id (ids come from one
//! sequence in blocks, so the estimate is off by at most the blocks of requests in
//! progress and, for messages sent alone, each producer's current block: see
//! `outbox::SingleIds`); between two readings, the messages this replica accepted are added, so a
//! burst cannot run past the bound within the second.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use crate::shutdown::{self, ShutdownSignal};

/// Messages allocated ids beyond the relay's watermark, and the outbox table's size on
/// disk (a file size PostgreSQL reads without touching the rows).
const ESTIMATE: &str = "SELECT GREATEST((SELECT last_value FROM outbox_message_id_seq) - wm_id, 0),
        pg_total_relation_size('outbox_messages')
    FROM outbox_relay_state";

/// How often the estimate is refreshed.
pub const INTERVAL: Duration = Duration::from_secs(1);

/// The bound and the latest estimate, shared by the request handlers.
#[derive(Debug, Default)]
pub struct BacklogBound {
    /// 0: no bound.
    limit: u64,
    /// Bytes of the outbox table on disk; 0: no bound.
    limit_bytes: u64,
    estimate: AtomicU64,
    /// The outbox table's size at the last reading.
    bytes: AtomicU64,
    /// Messages accepted here since the last reading.
    accepted_since: AtomicU64,
}

impl BacklogBound {
    /// A bound of `limit` messages and `limit_bytes` bytes of outbox table (0: none).
    pub fn new(limit: u64, limit_bytes: u64) -> Arc<BacklogBound> {
        Arc::new(BacklogBound {
            limit,
            limit_bytes,
            estimate: AtomicU64::new(0),
            bytes: AtomicU64::new(0),
            accepted_since: AtomicU64::new(0),
        })
    }

    /// Which bound the backlog is at or over, if any: messages first.
    pub fn exceeded(&self) -> Option<Exceeded> {
        let estimate = self
            .estimate
            .load(Ordering::Relaxed)
            .saturating_add(self.accepted_since.load(Ordering::Relaxed));
        if over(self.limit, estimate) {
            return Some(Exceeded::Messages {
                pending: estimate,
                limit: self.limit,
            });
        }
        let bytes = self.bytes.load(Ordering::Relaxed);
        over(self.limit_bytes, bytes).then_some(Exceeded::Bytes {
            bytes,
            limit: self.limit_bytes,
        })
    }

    /// `messages` were stored here: they count until the next reading sees them.
    pub fn accepted(&self, messages: u64) {
        if self.limit > 0 {
            self.accepted_since.fetch_add(messages, Ordering::Relaxed);
        }
    }

    /// Refreshes the estimate every [`INTERVAL`] until `shutdown`; does nothing without
    /// a bound. A failed reading keeps the last estimate (PostgreSQL being down already
    /// fails every request).
    pub async fn watch(
        self: Arc<Self>,
        pool: deadpool_postgres::Pool,
        mut shutdown: ShutdownSignal,
    ) {
        if self.limit == 0 && self.limit_bytes == 0 {
            return;
        }
        loop {
            let accepted_before = self.accepted_since.load(Ordering::Relaxed);
            let reading = async {
                let client = pool.get().await.ok()?;
                let row = client.query_one(ESTIMATE, &[]).await.ok()?;
                Some((
                    u64::try_from(row.get::<_, i64>(0)).ok()?,
                    u64::try_from(row.get::<_, i64>(1)).ok()?,
                ))
            };
            if let Ok(Some((estimate, bytes))) =
                tokio::time::timeout(Duration::from_secs(5), reading).await
            {
                let bytes_were = self.bytes.swap(bytes, Ordering::Relaxed);
                announce_crossing(
                    "the outbox table's size (MAX_BACKLOG_BYTES)",
                    bytes_were,
                    bytes,
                    self.limit_bytes,
                );
                // The reading includes what was accepted before it was taken.
                self.accepted_since
                    .fetch_sub(accepted_before, Ordering::Relaxed);
                let was = self.estimate.swap(estimate, Ordering::Relaxed);
                announce_crossing(
                    "the backlog (MAX_BACKLOG_MESSAGES)",
                    was,
                    estimate,
                    self.limit,
                );
            }
            tokio::select! {
                _ = tokio::time::sleep(INTERVAL) => {}
                _ = shutdown::wait(&mut shutdown) => return,
            }
        }
    }
}

/// Logs when a reading of `what` crosses its bound, either way.
fn announce_crossing(what: &str, was: u64, now: u64, limit: u64) {
    match (over(limit, was), over(limit, now)) {
        (false, true) => tracing::warn!(
            reading = now,
            limit,
            "{what} at its bound: refusing new messages with 429 until it is below again"
        ),
        (true, false) => tracing::info!(
            reading = now,
            limit,
            "{what} below its bound again: accepting messages"
        ),
        _ => {}
    }
}

/// The bound a backlog is at or over.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Exceeded {
    /// About `pending` messages wait, at or over `MAX_BACKLOG_MESSAGES`.
    Messages { pending: u64, limit: u64 },
    /// The outbox table takes `bytes` on disk, at or over `MAX_BACKLOG_BYTES`.
    Bytes { bytes: u64, limit: u64 },
}

impl std::fmt::Display for Exceeded {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Exceeded::Messages { pending, limit } => write!(
                f,
                "about {pending} messages wait to be relayed to Kafka, at or over MAX_BACKLOG_MESSAGES ({limit})"
            ),
            Exceeded::Bytes { bytes, limit } => write!(
                f,
                "the outbox table takes {bytes} bytes on disk, at or over MAX_BACKLOG_BYTES ({limit}): relayed rows are deleted by retention"
            ),
        }
    }
}

fn over(limit: u64, estimate: u64) -> bool {
    limit > 0 && estimate >= limit
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn messages_accepted_since_the_last_reading_count_toward_the_bound() {
        let bound = BacklogBound::new(1_000, 0);
        bound.estimate.store(400, Ordering::Relaxed);
        bound.accepted(500);
        assert_eq!(bound.exceeded(), None);
        bound.accepted(100);
        assert_eq!(
            bound.exceeded(),
            Some(Exceeded::Messages {
                pending: 1_000,
                limit: 1_000
            })
        );
    }

    #[test]
    fn no_bound_never_refuses() {
        let bound = BacklogBound::new(0, 0);
        bound.estimate.store(u64::MAX, Ordering::Relaxed);
        assert_eq!(bound.exceeded(), None);
    }

    #[test]
    fn a_backlog_at_the_bound_refuses_and_below_it_accepts() {
        let bound = BacklogBound::new(1_000, 0);
        bound.estimate.store(999, Ordering::Relaxed);
        assert_eq!(bound.exceeded(), None);
        bound.estimate.store(1_000, Ordering::Relaxed);
        assert_eq!(
            bound.exceeded(),
            Some(Exceeded::Messages {
                pending: 1_000,
                limit: 1_000
            })
        );
    }

    #[test]
    fn an_outbox_table_at_its_size_bound_refuses_naming_that_bound() {
        let bound = BacklogBound::new(1_000, 1 << 30);
        bound.bytes.store((1 << 30) - 1, Ordering::Relaxed);
        assert_eq!(bound.exceeded(), None);
        bound.bytes.store(1 << 30, Ordering::Relaxed);
        let exceeded = bound.exceeded().expect("at the size bound");
        assert!(
            exceeded
                .to_string()
                .contains("MAX_BACKLOG_BYTES (1073741824)"),
            "{exceeded}"
        );
        // The message bound is named first when both are crossed.
        bound.estimate.store(5_000, Ordering::Relaxed);
        assert!(matches!(bound.exceeded(), Some(Exceeded::Messages { .. })));
        // Without a size bound the table's size never refuses.
        let unbounded = BacklogBound::new(0, 0);
        unbounded.bytes.store(u64::MAX, Ordering::Relaxed);
        assert_eq!(unbounded.exceeded(), None);
    }
}
