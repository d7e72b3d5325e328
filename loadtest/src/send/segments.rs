//! Sending in a shared run (`spec.parallelism` above 1): this runner's segment of each
//! group of scenarios in step with the others (`shared_run`), and runner 0's merge of
//! every segment into one result per scenario.

use super::*;
use crate::measure::ScenarioOutcome;
use crate::shared_run::SentSegment;
use outbox_contract::crd::RunnerState;

/// Sends this runner's segment of every scenario in a shared run, group by group in
/// step with the others (`shared_run`): wait until every runner sent the groups
/// before (runner 0: drain the backlog first, as alone) → send the segment → leave it
/// for runner 0 → runner 0: wait for every segment of the group, merge them and
/// record one result per scenario, as a run alone records its own.
pub(super) async fn send_segments(
    sending: Sending<'_>,
    shape: &MessageShape,
    book: &mut StatusBook,
    db: &mut OutboxDb,
    shutdown: &mut ShutdownSignal,
    run: &mut SharedRun,
) -> Result<SentAll> {
    let plan = sending.plan;
    let merges = plan.segment.merges();
    let mut own = sending.resume.segment.clone();
    let mut sent = SentAll::default();
    let mut attempt = Attempt::default();
    let groups = together(&plan.scenarios);
    for (g, group) in groups.iter().enumerate() {
        let todo = pending(sending, group, &mut sent.expected);
        if merges && recorded(book.status(), group) {
            // An earlier attempt of runner 0 merged and recorded this group: its
            // results (their latency included) stay; its ids are still expected.
            expect_recorded(db, plan, group, &mut sent).await?;
            run.publish(RunnerState::Waiting, g + 1, accepted_in(&own), None)
                .await?;
            continue;
        }
        let whole: Vec<ScenarioSend> = group
            .iter()
            .map(|s| scenario_send(sending.args, plan, s, 0))
            .collect();
        let window = if merges {
            latency_window(db, plan, book, &whole, &mut sent, shutdown).await?
        } else {
            run.wait_for_group(g, true, shutdown).await?;
            None
        };
        let cpu = if merges {
            SendingCpu::open(plan, sending.http, &whole).await
        } else {
            SendingCpu { before: None }
        };
        run.publish(RunnerState::Sending, g, accepted_in(&own), None)
            .await?;
        if !todo.is_empty() {
            let group_now = (g, todo.as_slice());
            send_own(sending, shape, book, shutdown, run, group_now, &mut own).await?;
        }
        let last = g + 1 == groups.len();
        let state = if last && !merges {
            RunnerState::Sent
        } else {
            RunnerState::Waiting
        };
        run.publish(state, g + 1, accepted_in(&own), None).await?;
        if merges {
            run.wait_for_group(g + 1, false, shutdown).await?;
            let merged = merge_group(run, db, plan, group).await?;
            let sending_cpu = cpu.close(plan, sending.http, &merged).await;
            attempt.add(record_sent(
                book,
                &whole,
                (merged, sending_cpu),
                window.as_ref(),
                &mut sent,
            ));
            book.write_now().await?;
        }
    }
    if merges {
        run.publish(RunnerState::Sent, groups.len(), accepted_in(&own), None)
            .await?;
    }
    attempt.into_status(book.status_mut());
    Ok(sent)
}

/// This runner's segment of the scenarios `todo` of group `g`, sent with progress in
/// its line, and left in the report ConfigMap for runner 0.
async fn send_own(
    sending: Sending<'_>,
    shape: &MessageShape,
    book: &mut StatusBook,
    shutdown: &mut ShutdownSignal,
    run: &mut SharedRun,
    (g, todo): (usize, &[ScenarioSend]),
    own: &mut SegmentReport,
) -> Result<()> {
    let own_before = own
        .scenarios
        .iter()
        .filter(|(name, _)| !todo.iter().any(|t| &t.name == *name))
        .map(|(_, s)| s.outcome.accepted())
        .sum();
    let together = Together {
        run: &mut *run,
        group: g,
        own_before,
    };
    let results = send_with_progress(
        sending.http,
        sending.plan,
        shape,
        todo,
        book,
        sending.display,
        sending.live,
        shutdown,
        Some(together),
    )
    .await?;
    for (send, result) in todo.iter().zip(results) {
        own.scenarios.insert(
            send.name.clone(),
            SentSegment {
                outcome: result.outcome,
                uncertain: result.uncertain,
            },
        );
    }
    own.cpu_seconds = outbox_core::cpu::this_process_total();
    run.store(own).await
}

/// The ids of `group`'s messages, every runner's, as the outbox has them, into what
/// verification expects.
async fn expect_recorded(
    db: &mut OutboxDb,
    plan: &Plan,
    group: &[&Scenario],
    sent: &mut SentAll,
) -> Result<()> {
    let found = crate::with_db!(db, |c| verdict::run_ids_by_scenario(c, &plan.run_id, None)
        .await);
    for scenario in group {
        if let Some(ids) = found.get(&scenario.name) {
            sent.expected = sent.expected.union(ids);
        }
    }
    Ok(())
}

/// Whether the status records a result for every scenario of `group`.
fn recorded(status: &LoadTestStatus, group: &[&Scenario]) -> bool {
    group
        .iter()
        .all(|s| status.scenarios.iter().any(|r| r.name == s.name))
}

/// Messages a segment got accepted over its scenarios.
fn accepted_in(segment: &SegmentReport) -> u64 {
    segment
        .scenarios
        .values()
        .map(|s| s.outcome.accepted())
        .sum()
}

/// One result per scenario of `group` from every runner's segment (runner 0): the
/// outcomes merged (`measure`), the ids every runner's accepted messages got, read from
/// the outbox. Fewer ids there than the runners had accepted means relayed rows were
/// deleted before they were read: the run cannot be verified exactly, and says why.
async fn merge_group(
    run: &SharedRun,
    db: &mut OutboxDb,
    plan: &Plan,
    group: &[&Scenario],
) -> Result<Vec<generator::Sent>> {
    let segments = run.segments().await?;
    let found = crate::with_db!(db, |c| verdict::run_ids_by_scenario(c, &plan.run_id, None)
        .await);
    let mut merged = Vec::with_capacity(group.len());
    for scenario in group {
        let parts: Vec<&SentSegment> = segments
            .values()
            .filter_map(|s| s.scenarios.get(&scenario.name))
            .collect();
        let missing: Vec<u32> = (0..plan.segment.runners)
            .filter(|i| {
                !segments
                    .get(i)
                    .is_some_and(|s| s.scenarios.contains_key(&scenario.name))
            })
            .collect();
        if !missing.is_empty() {
            return Err(LoadTestError::Segments(format!(
                "scenario {}: runner(s) {missing:?} said they sent their segment but left none in the report ConfigMap",
                scenario.name
            )));
        }
        let outcomes: Vec<_> = parts.iter().map(|p| p.outcome.clone()).collect();
        let Some(outcome) = ScenarioOutcome::merged(&outcomes) else {
            continue;
        };
        let ids = found.get(&scenario.name).cloned().unwrap_or_default();
        if ids.len() < outcome.accepted() {
            return Err(LoadTestError::Segments(format!(
                "scenario {}: the outbox holds {} of the {} messages the runners had accepted; relayed rows were deleted before runner 0 read them (spec.retention.relayedSeconds of the OutboxSystem must outlast a group of scenarios)",
                scenario.name,
                ids.len(),
                outcome.accepted()
            )));
        }
        merged.push(generator::Sent {
            outcome,
            ids,
            uncertain: parts.iter().map(|p| p.uncertain).sum(),
        });
    }
    Ok(merged)
}

/// A group sent in a shared run: this runner's place, the group, and what its segment
/// got accepted in the groups before.
pub(super) struct Together<'a> {
    pub(super) run: &'a mut SharedRun,
    pub(super) group: usize,
    pub(super) own_before: u64,
}

impl Together<'_> {
    /// The run's accepted messages apart from this group's own sending: this runner's
    /// earlier groups and every other runner's line.
    pub(super) fn base(&self) -> i64 {
        measure::to_i64(self.own_before + self.run.others_accepted())
    }
}
