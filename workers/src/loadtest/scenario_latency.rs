//! End-to-end latency of one scenario on its own: a scenario sent one message at a
//! time after others (the reference run's `immediate` after `batch`) would otherwise
//! measure how long its messages queued behind the earlier backlog. So before it is
//! sent, the runner waits until every group acknowledged everything sent so far, and
//! reads each group's ledger chunk that the new ids will share with the old ones
//! ([`open`]). After verification the scenario's latency per group is the histograms
//! of the chunks its ids touch, less that reading ([`close`]): exactly the
//! acknowledgements since, which are the scenario's own when nothing else writes to
//! the outbox meanwhile.

use std::time::Duration;

use hdrhistogram::Histogram;
use outbox_contract::crd::GroupLatency;

use super::database::OutboxDb;
use super::error::{LoadTestError, Result};
use super::measure::to_i64;
use super::verify;
use crate::ledger::{self, IdSet};
use crate::shutdown::{self, ShutdownSignal};

/// How often the drain looks at the ledger.
const DRAIN_POLL: Duration = Duration::from_secs(1);

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

/// Waits (up to `timeout`) until every group acknowledged `earlier`, then reads each
/// group's chunk holding the last of them.
pub async fn open(
    db: &mut OutboxDb,
    groups: &[String],
    earlier: &IdSet,
    timeout: Duration,
    shutdown: &mut ShutdownSignal,
) -> Result<Window> {
    let wait = verify::wait_for_acknowledgements(db, groups, earlier, timeout, DRAIN_POLL, |_| {});
    let drained = tokio::select! {
        done = wait => !done?.timed_out,
        _ = shutdown::wait(shutdown) => return Err(LoadTestError::Interrupted),
    };
    let mut baselines = Vec::with_capacity(groups.len());
    let last = earlier.ranges().last().map(|(_, high)| *high);
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

fn ledger_error(source: crate::Error) -> LoadTestError {
    LoadTestError::Ledger {
        context: "reading the acknowledgement ledger's latency",
        source,
    }
}
