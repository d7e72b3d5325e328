//! Verification: the run marked Verifying, then the ledger watched until every group
//! acknowledged every accepted message or the timeout ran out, with progress.

use std::time::Duration;

use outbox_contract::crd::LoadTestPhase;

use super::database::OutboxDb;
use super::progress::{self, Display};
use super::status::{StatusBook, COMPLETE, VERIFIED};
use super::{verdict, LoadTestError, Plan, Result};
use outbox_core::ledger::IdSet;
use outbox_core::shutdown::{self, ShutdownSignal};

/// How often verification looks at the ledger.
const VERIFY_POLL: Duration = Duration::from_secs(2);

/// Marks the run Verifying.
pub(super) async fn start_verification(
    plan: &Plan,
    book: &mut StatusBook,
    expected: &IdSet,
) -> Result<()> {
    book.advance(LoadTestPhase::Verifying);
    book.set_condition(
        COMPLETE,
        false,
        "Verifying",
        "every scenario is sent; waiting for the consumer groups",
    );
    book.set_condition(
        VERIFIED,
        false,
        "Verifying",
        format!(
            "waiting up to {}s for {} groups to acknowledge {} messages",
            plan.verification_timeout.as_secs(),
            plan.groups.len(),
            expected.len()
        ),
    );
    book.status_mut().message = Some(format!(
        "verifying {} messages in {} groups",
        expected.len(),
        plan.groups.len()
    ));
    book.write_now().await?;
    tracing::info!(
        messages = expected.len(),
        groups = plan.groups.len(),
        timeout_seconds = plan.verification_timeout.as_secs(),
        "every scenario sent; verifying"
    );
    Ok(())
}

/// Waits for the acknowledgements while showing progress and writing it into the status.
pub(super) async fn verify_with_progress(
    db: &mut OutboxDb,
    plan: &Plan,
    expected: &IdSet,
    book: &mut StatusBook,
    display: &Display,
    shutdown: &mut ShutdownSignal,
) -> Result<verdict::Verification> {
    let bars: std::sync::Mutex<Vec<progress::Bar>> = std::sync::Mutex::new(
        plan.groups
            .iter()
            .map(|g| display.bar(g, expected.len()))
            .collect(),
    );
    let latest: std::sync::Mutex<Option<verdict::VerifyProgress>> = std::sync::Mutex::new(None);
    let wait = verdict::wait_for_acknowledgements(
        db,
        &plan.groups,
        expected,
        plan.verification_timeout,
        VERIFY_POLL,
        |p| {
            if let Ok(mut bars) = bars.lock() {
                for (bar, r) in bars.iter_mut().zip(&p.reports) {
                    bar.set(
                        r.acknowledged,
                        &format!("missing {} duplicates {}", r.missing, r.duplicates),
                    );
                }
            }
            if let Ok(mut latest) = latest.lock() {
                *latest = Some(p.clone());
            }
        },
    );
    tokio::pin!(wait);
    let mut tick = tokio::time::interval(Duration::from_secs(2));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
    let verification = loop {
        tokio::select! {
            done = &mut wait => break done?,
            _ = tick.tick() => {
                let outage = book.reflect_outages();
                // Progress into the status from the last look at the ledger.
                let last = latest.lock().ok().and_then(|l| l.clone());
                if let Some(message) = outage {
                    book.status_mut().message = Some(message);
                    book.write_progress().await;
                } else if let Some(p) = last {
                    let groups = p.reports.iter().map(verdict::group_status).collect();
                    let summary: Vec<String> = p.reports.iter().map(|r| format!("{} {}/{}", r.group, r.acknowledged, r.expected)).collect();
                    let status = book.status_mut();
                    status.groups = groups;
                    status.message = Some(format!("verifying ({}s): {}", p.waited.as_secs(), summary.join(", ")));
                    book.write_progress().await;
                }
            }
            _ = shutdown::wait(shutdown) => return Err(LoadTestError::Interrupted),
        }
    };
    book.reflect_outages();
    if let Ok(mut bars) = bars.lock() {
        for (bar, r) in bars.iter_mut().zip(&verification.reports) {
            bar.finish(
                r.acknowledged,
                &format!(
                    "missing {} duplicates {} out of order {}",
                    r.missing, r.duplicates, r.out_of_order
                ),
            );
        }
    }
    Ok(verification)
}
