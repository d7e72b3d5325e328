//! End-to-end latency of one scenario on its own: a scenario sent one message at a
//! time after others (the reference run's `immediate` after `batch`) would otherwise
//! measure how long its messages queued behind the earlier backlog. So before it is
//! sent, the runner waits until every group acknowledged everything sent so far, and
//! reads each group's ledger chunk that the new ids will share with the old ones
//! ([`open`]). After verification the scenario's latency per group is the histograms
//! of the chunks its ids touch, less that reading ([`close`]): exactly the
//! acknowledgements since, which are the scenario's own when nothing else writes to
//! the outbox meanwhile.

use std::time::{Duration, Instant};

use hdrhistogram::Histogram;
use outbox_contract::crd::GroupLatency;

use super::database::OutboxDb;
use super::error::{LoadTestError, Result};
use super::measure::to_i64;
use super::verdict;
use outbox_core::ledger::{self, IdSet};
use outbox_core::shutdown::{self, ShutdownSignal};

/// How often the drain looks at the ledger.
const DRAIN_POLL: Duration = Duration::from_secs(1);
/// How long the drain waits without any acknowledgement arriving before it gives up
/// (no consumer is running, or one is stuck): the scenario is then sent anyway, its
/// latency marked as not drained.
pub const DRAIN_STALL: Duration = Duration::from_secs(30);

/// A ledger chunk and its latency histogram as it was read.
type ChunkReading = (i64, Histogram<u64>);

/// The state of the ledger just before a scenario was sent.
#[derive(Debug, Clone)]
pub struct Window {
    /// Whether every group had acknowledged everything sent before.
    pub drained: bool,
    /// Per group, the chunk shared with earlier messages and its histogram then.
    baselines: Vec<(String, Option<ChunkReading>)>,
}

/// Waits until every group acknowledged `earlier` (for at most `timeout`, and while
/// acknowledgements keep arriving: [`DRAIN_STALL`]), then reads each group's chunk
/// holding the last of them.
pub async fn open(
    db: &mut OutboxDb,
    groups: &[String],
    earlier: &IdSet,
    timeout: Duration,
    shutdown: &mut ShutdownSignal,
) -> Result<Window> {
    let started = Instant::now();
    let mut progress = Progress::new(started);
    let drained = loop {
        let mut acknowledged = 0;
        let mut complete = true;
        for group in groups {
            let report = crate::with_db!(db, |c| verdict::report(c, group, earlier).await);
            acknowledged += report.acknowledged;
            complete &= report.missing == 0;
        }
        if complete {
            break true;
        }
        let now = Instant::now();
        if now - started >= timeout || progress.stalled(acknowledged, now) {
            break false;
        }
        tokio::select! {
            _ = tokio::time::sleep(DRAIN_POLL) => {}
            _ = shutdown::wait(shutdown) => return Err(LoadTestError::Interrupted),
        }
    };
    let mut baselines = Vec::with_capacity(groups.len());
    // Nothing sent before in this run: the highest id handed out so far (an earlier
    // run's) bounds the chunk the new ids may share with older acknowledgements.
    let last = match earlier.ranges().last() {
        Some((_, high)) => Some(*high),
        None => crate::with_db!(db, |c| highest_id_handed_out(c).await),
    };
    for group in groups {
        let baseline = match last {
            None => None,
            Some(id) => {
                let chunk = ledger::chunk_of(id);
                crate::with_db!(db, |c| ledger::chunk_latency(c, group, chunk)
                    .await
                    .map_err(ledger_error))
                .map(|h| (chunk, h))
            }
        };
        baselines.push((group.clone(), baseline));
    }
    Ok(Window { drained, baselines })
}

/// The last id of the last block of the outbox id sequence handed out to a producer
/// (`None` before the first).
async fn highest_id_handed_out(client: &tokio_postgres::Client) -> Result<Option<i64>> {
    use super::error::DbContext;
    let row = client
        .query_one(
            "SELECT CASE WHEN is_called THEN last_value + $1 - 1 END FROM outbox_message_id_seq",
            &[&outbox_core::schema::ID_BLOCK],
        )
        .await
        .db("reading the outbox id sequence")?;
    row.try_get(0).db("reading the outbox id sequence")
}

/// When acknowledgements last grew (pure: fed the count and the time).
#[derive(Debug, Clone, Copy)]
struct Progress {
    acknowledged: u64,
    since: Instant,
}

impl Progress {
    fn new(now: Instant) -> Progress {
        Progress {
            acknowledged: 0,
            since: now,
        }
    }

    /// True once `acknowledged` has not grown for [`DRAIN_STALL`].
    fn stalled(&mut self, acknowledged: u64, now: Instant) -> bool {
        if acknowledged > self.acknowledged {
            *self = Progress {
                acknowledged,
                since: now,
            };
        }
        now - self.since >= DRAIN_STALL
    }
}

/// The latency of `ids` per group, measured against `window`.
pub async fn close(db: &mut OutboxDb, window: &Window, ids: &IdSet) -> Result<Vec<GroupLatency>> {
    let mut out = Vec::with_capacity(window.baselines.len());
    for (group, baseline) in &window.baselines {
        let summary = crate::with_db!(db, |c| ledger::latency_since(
            c,
            group,
            ids,
            baseline.as_ref()
        )
        .await
        .map_err(ledger_error));
        if let Some(s) = summary {
            out.push(GroupLatency {
                group: group.clone(),
                count: to_i64(s.count),
                p50: s.p50_ms,
                p95: s.p95_ms,
                p99: s.p99_ms,
                max: s.max_ms,
            });
        }
    }
    Ok(out)
}

fn ledger_error(source: outbox_core::Error) -> LoadTestError {
    LoadTestError::Ledger {
        context: "reading the acknowledgement ledger's latency",
        source,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_drain_gives_up_only_after_a_stall_without_new_acknowledgements() {
        let t0 = Instant::now();
        let mut p = Progress::new(t0);
        assert!(!p.stalled(0, t0 + Duration::from_secs(29)));
        assert!(
            !p.stalled(10, t0 + Duration::from_secs(31)),
            "growth restarts the clock"
        );
        assert!(!p.stalled(10, t0 + Duration::from_secs(60)));
        assert!(p.stalled(10, t0 + Duration::from_secs(61)));
        // Nothing ever acknowledged (no consumer): 30 s.
        let mut idle = Progress::new(t0);
        assert!(idle.stalled(0, t0 + DRAIN_STALL));
    }
}
