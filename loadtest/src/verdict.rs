//! Verification: waits until every consumer group acknowledged every accepted message
//! of the run, using the ledger's exact per-group report ([`ledger::group_report`]) over
//! the set of accepted ids.
//!
//! Also the one query of the outbox itself the runner makes, [`run_ids_by_scenario`]:
//! the ids of the run's messages, grouped by the scenario header. It scans
//! `outbox_messages` (seconds at 10M rows), so it is used only when the ids returned by
//! the producers are not the whole truth: when a rerun of the same run id resumes, and
//! when some request's fate was unknown (timeout, broken connection).

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use futures::{pin_mut, TryStreamExt};
use outbox_contract::crd::{GroupVerification, LatencyPercentiles};
use tokio_postgres::Client;

use super::database::OutboxDb;
use super::error::{DbContext, LoadTestError, Result};
use super::generator::{RUN_HEADER, SCENARIO_HEADER};
use super::measure::to_i64;
use outbox_core::ledger::{self, GroupReport, IdSet, LatencySummary};

/// The ids of the run's messages in the outbox, by scenario (scans the outbox; see the
/// module documentation); with `runner`, only those that runner of a shared run sent.
pub async fn run_ids_by_scenario(
    client: &Client,
    run_id: &str,
    runner: Option<u32>,
) -> Result<BTreeMap<String, IdSet>> {
    let exists: bool = client
        .query_one("SELECT to_regclass('outbox_messages') IS NOT NULL", &[])
        .await
        .db("looking for the outbox table")?
        .get(0);
    if !exists {
        return Ok(BTreeMap::new());
    }
    let runner_header = crate::segment::RUNNER_HEADER;
    let runner = runner.map(|r| r.to_string());
    let params: [&(dyn tokio_postgres::types::ToSql + Sync); 5] = [
        &SCENARIO_HEADER,
        &RUN_HEADER,
        &run_id,
        &runner_header,
        &runner,
    ];
    let rows = client
        .query_raw(
            "SELECT COALESCE(headers ->> $1, ''), id FROM outbox_messages \
             WHERE headers ->> $2 = $3 AND ($5::text IS NULL OR headers ->> $4 = $5)",
            params,
        )
        .await
        .db("finding the run's messages in the outbox")?;
    pin_mut!(rows);
    let mut by_scenario: BTreeMap<String, Vec<(i64, i64)>> = BTreeMap::new();
    while let Some(row) = rows.try_next().await.db("reading the run's messages")? {
        let scenario: String = row.get(0);
        let id: i64 = row.get(1);
        let ranges = by_scenario.entry(scenario).or_default();
        match ranges.last_mut() {
            Some(last) if last.1.checked_add(1) == Some(id) => last.1 = id,
            _ => ranges.push((id, id)),
        }
    }
    Ok(by_scenario
        .into_iter()
        .map(|(scenario, ranges)| (scenario, IdSet::from_ranges(ranges)))
        .collect())
}

/// Where verification stands, for progress reports.
#[derive(Debug, Clone)]
pub struct VerifyProgress {
    /// Per group, latest report.
    pub reports: Vec<GroupReport>,
    /// Time spent waiting.
    pub waited: Duration,
}

/// How verification ended.
#[derive(Debug, Clone)]
pub struct Verification {
    /// Per group, the final report.
    pub reports: Vec<GroupReport>,
    /// Time spent waiting.
    pub waited: Duration,
    /// True when the timeout ran out with messages still missing.
    pub timed_out: bool,
}

impl Verification {
    /// Verified: every group acknowledged every expected message, none out of order.
    pub fn verified(&self) -> bool {
        !self.reports.is_empty()
            && self
                .reports
                .iter()
                .all(|r| r.missing == 0 && r.out_of_order == 0)
    }

    /// Condition reason and message for `Verified`.
    pub fn condition(&self) -> (bool, &'static str, String) {
        verdict(&self.reports, self.waited, self.timed_out)
    }
}

/// The `Verified` condition for these reports (pure, unit-tested).
pub fn verdict(
    reports: &[GroupReport],
    waited: Duration,
    timed_out: bool,
) -> (bool, &'static str, String) {
    if reports.is_empty() {
        return (
            false,
            "NoConsumerGroups",
            "no consumer group to verify: the OutboxSystem declares none and no --group was given"
                .into(),
        );
    }
    let expected = reports.iter().map(|r| r.expected).max().unwrap_or(0);
    let missing: Vec<String> = reports
        .iter()
        .filter(|r| r.missing > 0)
        .map(|r| {
            let mut dead = String::new();
            if r.dead_lettered > 0 {
                dead += &format!(", {} dead-lettered", r.dead_lettered);
            }
            if r.abandoned > 0 {
                dead += &format!(
                    ", {} abandoned (the dead-letter topic refused them too)",
                    r.abandoned
                );
            }
            format!("{} missing {} of {}{dead}", r.group, r.missing, r.expected)
        })
        .collect();
    if !missing.is_empty() {
        let when = if timed_out {
            format!("after waiting {}s (verification timeout)", waited.as_secs())
        } else {
            format!("after {}s", waited.as_secs())
        };
        return (
            false,
            "MessagesMissing",
            format!("{} {when}", missing.join("; ")),
        );
    }
    let reordered: Vec<String> = reports
        .iter()
        .filter(|r| r.out_of_order > 0)
        .map(|r| {
            format!(
                "{} saw {} messages out of per-key order",
                r.group, r.out_of_order
            )
        })
        .collect();
    if !reordered.is_empty() {
        return (false, "OutOfOrder", reordered.join("; "));
    }
    let duplicates: u64 = reports.iter().map(|r| r.duplicates).sum();
    (
        true,
        "AllAcknowledged",
        format!(
            "all {} groups acknowledged all {expected} messages in per-key order ({duplicates} redeliveries counted as duplicates)",
            reports.len()
        ),
    )
}

/// Waits until every group acknowledged all of `expected`, or `timeout` passes; calls
/// `progress` after each look (every `poll` at most). A group that has acknowledged
/// everything is not read again until the final look, which reads every group once
/// more (so its duplicate and reorder counts are current).
pub async fn wait_for_acknowledgements(
    db: &mut OutboxDb,
    groups: &[String],
    expected: &IdSet,
    timeout: Duration,
    poll: Duration,
    mut progress: impl FnMut(&VerifyProgress),
) -> Result<Verification> {
    let started = Instant::now();
    let mut latest: Vec<Option<GroupReport>> = vec![None; groups.len()];
    loop {
        for (group, slot) in groups.iter().zip(latest.iter_mut()) {
            if slot.as_ref().is_some_and(|r| r.missing == 0) {
                continue;
            }
            *slot = Some(crate::with_db!(db, |c| report(c, group, expected).await));
        }
        let reports: Vec<GroupReport> = latest.iter().flatten().cloned().collect();
        let waited = started.elapsed();
        progress(&VerifyProgress {
            reports: reports.clone(),
            waited,
        });
        let complete = reports.iter().all(|r| r.missing == 0);
        if complete || waited >= timeout {
            let reports = crate::with_db!(db, |c| ledger::group_reports(c, groups, expected)
                .await
                .map_err(|source| LoadTestError::Ledger {
                    context: "reading the acknowledgement ledger",
                    source,
                }));
            let complete = reports.iter().all(|r| r.missing == 0);
            return Ok(Verification {
                reports,
                waited,
                timed_out: !complete,
            });
        }
        let left = timeout.saturating_sub(waited);
        tokio::time::sleep(poll.min(left)).await;
    }
}

pub async fn report(client: &Client, group: &str, expected: &IdSet) -> Result<GroupReport> {
    ledger::group_report(client, group, expected)
        .await
        .map_err(|source| LoadTestError::Ledger {
            context: "reading the acknowledgement ledger",
            source,
        })
}

fn percentiles(l: &LatencySummary) -> LatencyPercentiles {
    LatencyPercentiles {
        p50: l.p50_ms,
        p90: l.p90_ms,
        p95: l.p95_ms,
        p99: l.p99_ms,
        p999: l.p999_ms,
        max: l.max_ms,
    }
}

/// The status entry for one group.
pub fn group_status(report: &GroupReport) -> GroupVerification {
    GroupVerification {
        group: report.group.clone(),
        expected: to_i64(report.expected),
        acknowledged: to_i64(report.acknowledged),
        missing: to_i64(report.missing),
        duplicates: to_i64(report.duplicates),
        out_of_order: to_i64(report.out_of_order),
        dead_lettered: to_i64(report.dead_lettered),
        abandoned: to_i64(report.abandoned),
        latency: report.latency.as_ref().map(percentiles),
    }
}

/// End-to-end latency over all groups: per percentile the slowest group's value (the
/// ledger keeps one histogram per group, so "every group had acknowledged by then").
pub fn overall_latency(reports: &[GroupReport]) -> Option<LatencyPercentiles> {
    reports
        .iter()
        .filter_map(|r| r.latency.as_ref().map(percentiles))
        .reduce(|a, b| LatencyPercentiles {
            p50: a.p50.max(b.p50),
            p90: a.p90.max(b.p90),
            p95: a.p95.max(b.p95),
            p99: a.p99.max(b.p99),
            p999: a.p999.max(b.p999),
            max: a.max.max(b.max),
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn report(group: &str, expected: u64, acknowledged: u64, out_of_order: u64) -> GroupReport {
        GroupReport {
            group: group.into(),
            expected,
            acknowledged,
            missing: expected - acknowledged,
            duplicates: 2,
            out_of_order,
            dead_lettered: 0,
            abandoned: 0,
            missing_sample: vec![],
            latency: None,
        }
    }

    #[test]
    fn verified_only_when_no_group_misses_anything() {
        let (ok, reason, message) = verdict(
            &[
                report("group-a", 100, 100, 0),
                report("group-b", 100, 100, 0),
            ],
            Duration::from_secs(3),
            false,
        );
        assert!(ok);
        assert_eq!(reason, "AllAcknowledged");
        assert!(message.contains("all 100 messages"), "{message}");
    }

    #[test]
    fn a_missing_group_names_its_count_and_the_timeout() {
        let (ok, reason, message) = verdict(
            &[report("group-a", 100, 100, 0), report("group-c", 100, 0, 0)],
            Duration::from_secs(30),
            true,
        );
        assert!(!ok);
        assert_eq!(reason, "MessagesMissing");
        assert!(message.contains("group-c missing 100 of 100"), "{message}");
        assert!(message.contains("verification timeout"), "{message}");
        assert!(!message.contains("group-a"), "{message}");
    }

    #[test]
    fn reordered_keys_fail_verification() {
        let (ok, reason, _) = verdict(&[report("group-a", 10, 10, 1)], Duration::ZERO, false);
        assert!(!ok);
        assert_eq!(reason, "OutOfOrder");
    }

    #[test]
    fn no_groups_cannot_be_verified() {
        let (ok, reason, _) = verdict(&[], Duration::ZERO, false);
        assert!(!ok);
        assert_eq!(reason, "NoConsumerGroups");
    }
}
