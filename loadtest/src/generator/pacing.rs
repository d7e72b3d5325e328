//! An arrival-rate share (open model): each stage's arrivals start on schedule, one
//! message per request, whether or not earlier requests were answered; an arrival due
//! while every connection is busy is missed, so the offered rate holds when answers slow
//! down.

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use super::{ProducerDone, ProducerJob, WorkerDone, PRODUCER_UNREACHABLE};
use crate::measure::{ProducerOutcome, StageTally};

impl ProducerJob {
    /// Sends an arrival-rate share: each stage's arrivals start evenly spread over the
    /// stage, one message per request, whether or not earlier requests were answered;
    /// at most `concurrency` are in flight, and an arrival due while all are busy is
    /// missed (counted, never sent late).
    pub(super) async fn run_paced(self: Arc<Self>, started: Instant) -> ProducerDone {
        let connections = Arc::new(tokio::sync::Semaphore::new(self.concurrency.max(1)));
        let mut in_flight: tokio::task::JoinSet<(usize, WorkerDone, Duration)> =
            tokio::task::JoinSet::new();
        let mut stages: Vec<StageTally> = self
            .stages
            .iter()
            .map(|&(arrivals, _)| StageTally {
                offered: arrivals,
                ..StageTally::default()
            })
            .collect();
        let mut total = WorkerDone::default();
        let mut offset = 0u64;
        for (stage, &(arrivals, length)) in self.stages.iter().enumerate() {
            let stage_start = tokio::time::Instant::now();
            for k in 0..arrivals {
                let due = stage_start + length.mul_f64(k as f64 / arrivals as f64);
                tokio::time::sleep_until(due).await;
                let first = self.first_index + offset;
                offset += 1;
                self.counters.arrived.fetch_add(1, Ordering::Relaxed);
                if self.unreachable.load(Ordering::Relaxed) {
                    let mut done = WorkerDone::default();
                    done.tally.failed(1, PRODUCER_UNREACHABLE, None);
                    self.counters.failed.fetch_add(1, Ordering::Relaxed);
                    stages[stage].sent += 1;
                    self.collect_paced(Ok((stage, done, Duration::ZERO)), &mut stages, &mut total);
                    continue;
                }
                match connections.clone().try_acquire_owned() {
                    Ok(connection) => {
                        stages[stage].sent += 1;
                        let job = self.clone();
                        in_flight.spawn(async move {
                            let mut done = WorkerDone::default();
                            job.request(first, 1, &mut done).await;
                            drop(connection);
                            (stage, done, stage_start.elapsed())
                        });
                    }
                    Err(_) => {
                        stages[stage].missed += 1;
                        self.counters.missed.fetch_add(1, Ordering::Relaxed);
                    }
                }
                while let Some(joined) = in_flight.try_join_next() {
                    self.collect_paced(joined, &mut stages, &mut total);
                }
            }
            tokio::time::sleep_until(stage_start + length).await;
            stages[stage].lasted = stages[stage].lasted.max(length);
        }
        while let Some(joined) = in_flight.join_next().await {
            self.collect_paced(joined, &mut stages, &mut total);
        }
        self.paced_done(started, stages, total)
    }

    /// Counts a finished request of an arrival-rate share into its stage and the total.
    /// A stage lasts until its last answer, when that comes after its end.
    fn collect_paced(
        &self,
        joined: Result<(usize, WorkerDone, Duration), tokio::task::JoinError>,
        stages: &mut [StageTally],
        total: &mut WorkerDone,
    ) {
        match joined {
            Ok((stage, done, since_stage_start)) => {
                if let Some(s) = stages.get_mut(stage) {
                    s.tally.merge(&done.tally);
                    s.lasted = s.lasted.max(since_stage_start);
                }
                total.merge(done);
            }
            Err(e) => {
                tracing::error!(producer = %self.producer.name, error = %e, "request task failed")
            }
        }
    }

    /// What an arrival-rate share came to, per stage and in total; requests a crashed
    /// task never reported count as failed, of unknown fate.
    fn paced_done(
        &self,
        started: Instant,
        stages: Vec<StageTally>,
        mut total: WorkerDone,
    ) -> ProducerDone {
        let missed: u64 = stages.iter().map(|s| s.missed).sum();
        // Requests a crashed task never reported are failures of unknown fate.
        let unreported = self
            .share
            .saturating_sub(total.tally.accepted + total.tally.failed + missed);
        if unreported > 0 {
            total.tally.failed(unreported, "runnerPanic", None);
            total.uncertain += unreported;
        }
        ProducerDone {
            outcome: ProducerOutcome {
                producer: self.producer.name.clone(),
                messages: self.share,
                tally: total.tally,
                duration: started.elapsed(),
                stages,
            },
            ids: total.ids.finish(),
            uncertain: total.uncertain,
        }
    }
}
