//! Backpressure at ingest: when more messages wait in the outbox than
//! `MAX_BACKLOG_MESSAGES`, requests are answered 429 with `Retry-After` and store
//! nothing, instead of letting the outbox grow until the disk is full.
//!
//! The backlog is estimated once a second from two numbers, without counting rows:
//! the id sequence's last value less the relay watermark's id (ids come from one
//! sequence in blocks, so the estimate is off by at most the blocks of requests in
//! progress); between two readings, the messages this replica accepted are added, so a
//! burst cannot run past the bound within the second.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use crate::shutdown::{self, ShutdownSignal};

/// Messages allocated ids beyond the relay's watermark.
const ESTIMATE: &str = "SELECT GREATEST((SELECT last_value FROM outbox_message_id_seq) - wm_id, 0)
    FROM outbox_relay_state";

/// How often the estimate is refreshed.
pub const INTERVAL: Duration = Duration::from_secs(1);

/// The bound and the latest estimate, shared by the request handlers.
#[derive(Debug, Default)]
pub struct BacklogBound {
    /// 0: no bound.
    limit: u64,
    estimate: AtomicU64,
    /// Messages accepted here since the last reading.
    accepted_since: AtomicU64,
}

impl BacklogBound {
    /// A bound of `limit` messages (0: none).
    pub fn new(limit: u64) -> Arc<BacklogBound> {
        Arc::new(BacklogBound {
            limit,
            estimate: AtomicU64::new(0),
            accepted_since: AtomicU64::new(0),
        })
    }

    /// The bound, 0 for none.
    pub fn limit(&self) -> u64 {
        self.limit
    }

    /// The estimated backlog when it is at or over the bound.
    pub fn exceeded(&self) -> Option<u64> {
        let estimate = self
            .estimate
            .load(Ordering::Relaxed)
            .saturating_add(self.accepted_since.load(Ordering::Relaxed));
        over(self.limit, estimate).then_some(estimate)
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
        if self.limit == 0 {
            return;
        }
        loop {
            let accepted_before = self.accepted_since.load(Ordering::Relaxed);
            let reading = async {
                let client = pool.get().await.ok()?;
                let row = client.query_one(ESTIMATE, &[]).await.ok()?;
                u64::try_from(row.get::<_, i64>(0)).ok()
            };
            if let Ok(Some(estimate)) = tokio::time::timeout(Duration::from_secs(5), reading).await
            {
                // The reading includes what was accepted before it was taken.
                self.accepted_since
                    .fetch_sub(accepted_before, Ordering::Relaxed);
                let was = self.estimate.swap(estimate, Ordering::Relaxed);
                if over(self.limit, estimate) != over(self.limit, was) {
                    if over(self.limit, estimate) {
                        tracing::warn!(backlog = estimate, limit = self.limit, "backlog at its bound: refusing new messages with 429 until the relay catches up");
                    } else {
                        tracing::info!(
                            backlog = estimate,
                            limit = self.limit,
                            "backlog below its bound again: accepting messages"
                        );
                    }
                }
            }
            tokio::select! {
                _ = tokio::time::sleep(INTERVAL) => {}
                _ = shutdown::wait(&mut shutdown) => return,
            }
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
        let bound = BacklogBound::new(1_000);
        bound.estimate.store(400, Ordering::Relaxed);
        bound.accepted(500);
        assert_eq!(bound.exceeded(), None);
        bound.accepted(100);
        assert_eq!(bound.exceeded(), Some(1_000));
    }

    #[test]
    fn no_bound_never_refuses() {
        let bound = BacklogBound::new(0);
        bound.estimate.store(u64::MAX, Ordering::Relaxed);
        assert_eq!(bound.exceeded(), None);
    }

    #[test]
    fn a_backlog_at_the_bound_refuses_and_below_it_accepts() {
        let bound = BacklogBound::new(1_000);
        bound.estimate.store(999, Ordering::Relaxed);
        assert_eq!(bound.exceeded(), None);
        bound.estimate.store(1_000, Ordering::Relaxed);
        assert_eq!(bound.exceeded(), Some(1_000));
    }
}
