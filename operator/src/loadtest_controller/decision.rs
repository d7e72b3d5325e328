//! What the LoadTest reconcile decides, each decision pure: the Job's state, whether
//! the Job is due, the operator's part of the status, the Events it is worth, when to
//! look again.

use std::time::Duration;

use k8s_openapi::api::batch::v1::Job;
use kube::runtime::controller::Action;
use kube::runtime::events::EventType;

use super::types;
use crate::conditions::{self, Desired};
use crate::crd::{LoadTestPhase, LoadTestStatus};
use crate::image_policy::{self, ImageNotAllowed};
use crate::runner_job::job_name;

/// How the runner Job ended, as far as Kubernetes knows.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum JobState {
    /// No Job.
    Absent,
    /// The Job exists and has not finished.
    Active,
    /// The Job's pod exited 0.
    Succeeded,
    /// The Job failed.
    Failed,
}

/// Reads a Job's state from its conditions.
pub fn job_state(job: Option<&Job>) -> JobState {
    let Some(job) = job else {
        return JobState::Absent;
    };
    let has = |t: &str| job_condition(job, t).is_some();
    if has("Failed") {
        JobState::Failed
    } else if has("Complete") {
        JobState::Succeeded
    } else {
        JobState::Active
    }
}

/// The runner's ServiceAccount in the LoadTest's namespace, and whether it exists.
#[derive(Debug, Clone, Copy)]
pub struct RunnerAccount<'a> {
    pub name: &'a str,
    pub namespace: &'a str,
    pub found: bool,
}

/// The Job's condition `type_` when it is True.
fn job_condition<'a>(
    job: &'a Job,
    type_: &str,
) -> Option<&'a k8s_openapi::api::batch::v1::JobCondition> {
    job.status
        .as_ref()?
        .conditions
        .as_ref()?
        .iter()
        .find(|c| c.type_ == type_ && c.status == "True")
}

/// Whether the Job failed with condition reason `reason`.
fn job_failed_for(job: Option<&Job>, reason: &str) -> bool {
    job.and_then(|j| job_condition(j, "Failed"))
        .is_some_and(|c| c.reason.as_deref() == Some(reason))
}

/// What the operator writes into a LoadTest's status (only its own fields).
#[derive(Debug, Clone, PartialEq)]
pub struct OperatorStatus {
    /// Phase to write: never lower than the current one.
    pub phase: LoadTestPhase,
    /// Name of the Job, once created.
    pub job_name: Option<String>,
    /// Message, when the operator has something to say.
    pub message: Option<String>,
    /// Conditions the operator sets.
    pub conditions: Vec<Desired>,
    /// Completion time to set when the operator ends the run.
    pub completed: bool,
}

/// The operator's part of the status (pure): `system_found` tells whether the
/// OutboxSystem exists, `job` the state of the runner Job after this reconcile. A
/// finished run keeps its phase; otherwise the Job's state decides, each case below.
pub fn operator_status(
    current: &LoadTestStatus,
    system_found: bool,
    runner_account: RunnerAccount<'_>,
    job: JobState,
    loadtest: &str,
    system: &str,
) -> OperatorStatus {
    let current_phase = current.phase.unwrap_or_default();
    if current_phase.is_finished() {
        return OperatorStatus {
            phase: current_phase,
            job_name: current.job_name.clone(),
            message: None,
            conditions: vec![],
            completed: false,
        };
    }
    match job {
        JobState::Absent if !system_found => system_missing(current_phase, system),
        JobState::Absent if current.job_name.is_none() && !runner_account.found => {
            runner_account_missing(runner_account)
        }
        JobState::Absent => job_lost(current, loadtest),
        JobState::Active => job_running(current_phase, loadtest),
        JobState::Succeeded | JobState::Failed => {
            job_ended_without_report(job == JobState::Failed, loadtest)
        }
    }
}

/// No Job and no OutboxSystem: the run waits, not scheduled.
fn system_missing(phase: LoadTestPhase, system: &str) -> OperatorStatus {
    OperatorStatus {
        phase,
        job_name: None,
        message: Some(format!("OutboxSystem {system} not found; no Job created")),
        conditions: vec![Desired::no(
            types::SCHEDULED,
            "SystemNotFound",
            format!("spec.systemRef.name: OutboxSystem {system} does not exist in this namespace"),
        )],
        completed: false,
    }
}

/// No Job was ever made and the runner's ServiceAccount is missing: the run fails,
/// saying how to add the namespace.
fn runner_account_missing(account: RunnerAccount<'_>) -> OperatorStatus {
    let message = format!(
        "ServiceAccount {} of the load-test runner does not exist in namespace {}: \
         add the namespace to the chart's loadtest.namespaces (helm upgrade ... \
         --set loadtest.namespaces={{...,{}}}) and create the LoadTest again",
        account.name, account.namespace, account.namespace
    );
    OperatorStatus {
        phase: LoadTestPhase::Failed,
        job_name: None,
        message: Some(message.clone()),
        conditions: vec![
            Desired::no(types::SCHEDULED, "RunnerAccountMissing", message.clone()),
            Desired::yes(types::COMPLETE, "RunnerAccountMissing", message),
        ],
        completed: true,
    }
}

/// The run's runner image is outside the operator's allowed repositories: no Job is
/// made and the run fails, naming the image and the list.
pub fn image_not_allowed(refusal: &ImageNotAllowed) -> OperatorStatus {
    let message = refusal.message.clone();
    OperatorStatus {
        phase: LoadTestPhase::Failed,
        job_name: None,
        message: Some(message.clone()),
        conditions: vec![
            Desired::no(types::SCHEDULED, image_policy::REASON, message.clone()),
            Desired::yes(types::COMPLETE, image_policy::REASON, message),
        ],
        completed: true,
    }
}

/// The Job was made and is gone before the runner reported: the run fails.
fn job_lost(current: &LoadTestStatus, loadtest: &str) -> OperatorStatus {
    OperatorStatus {
        phase: LoadTestPhase::Failed,
        job_name: current.job_name.clone(),
        message: Some(format!(
            "the runner Job {} disappeared before the run finished",
            job_name(loadtest)
        )),
        conditions: vec![Desired::yes(
            types::COMPLETE,
            "JobLost",
            "the runner Job was deleted before the runner reported a result",
        )],
        completed: true,
    }
}

/// The Job runs: the runner's phase stands.
fn job_running(phase: LoadTestPhase, loadtest: &str) -> OperatorStatus {
    OperatorStatus {
        phase,
        job_name: Some(job_name(loadtest)),
        message: None,
        conditions: vec![job_created(loadtest)],
        completed: false,
    }
}

/// The Job ended (`failed`, or exited 0) while the run had not finished, so the runner
/// did not report: the run fails.
fn job_ended_without_report(failed: bool, loadtest: &str) -> OperatorStatus {
    let (reason, message) = if failed {
        (
            "JobFailed",
            format!(
                "the runner Job {} failed before the runner reported a result",
                job_name(loadtest)
            ),
        )
    } else {
        (
            "RunnerDidNotReport",
            format!(
                "the runner Job {} exited without reporting a result",
                job_name(loadtest)
            ),
        )
    };
    OperatorStatus {
        phase: LoadTestPhase::Failed,
        job_name: Some(job_name(loadtest)),
        message: Some(message.clone()),
        conditions: vec![
            job_created(loadtest),
            Desired::yes(types::COMPLETE, reason, message),
        ],
        completed: true,
    }
}

/// `Scheduled` True: the Job was created.
fn job_created(loadtest: &str) -> Desired {
    Desired::yes(
        types::SCHEDULED,
        "JobCreated",
        format!("runner Job {} created", job_name(loadtest)),
    )
}

/// No Job now, and none recorded in the status (pure).
pub(super) fn never_had_a_job(current: &LoadTestStatus, job_exists: bool) -> bool {
    !job_exists && current.job_name.is_none()
}

/// Whether this reconcile creates the runner Job (pure): only while the run has not
/// started (Pending, never had a Job; a Job that vanished is not made again), and only
/// with its OutboxSystem and the runner's ServiceAccount there.
pub(super) fn job_due(
    current: &LoadTestStatus,
    job_exists: bool,
    system_found: bool,
    account_found: bool,
) -> bool {
    never_had_a_job(current, job_exists)
        && current.phase.unwrap_or_default() == LoadTestPhase::Pending
        && system_found
        && account_found
}

/// The operator's part of the status after this reconcile (pure): [`operator_status`]
/// from the Job's state; when the Job ran past its deadline, the message names it.
pub fn decide_status(
    current: &LoadTestStatus,
    system_found: bool,
    runner_account: RunnerAccount<'_>,
    job: Option<&Job>,
    loadtest: &str,
    system: &str,
) -> OperatorStatus {
    let state = job_state(job);
    let mut update = operator_status(
        current,
        system_found,
        runner_account,
        state,
        loadtest,
        system,
    );
    if let (Some(deadline), Some(message)) = (deadline_exceeded(job), update.message.as_mut()) {
        message.push_str(&format!(
            ": it ran past its deadline of {deadline} s (activeDeadlineSeconds, from the messages and verificationTimeoutSeconds)"
        ));
    }
    update
}

/// The Job's `activeDeadlineSeconds` (0 when unset) when it failed for running past it.
fn deadline_exceeded(job: Option<&Job>) -> Option<i64> {
    job_failed_for(job, "DeadlineExceeded").then(|| {
        job.and_then(|j| j.spec.as_ref()?.active_deadline_seconds)
            .unwrap_or_default()
    })
}

/// An Event to publish about the LoadTest.
#[derive(Debug, Clone, PartialEq)]
pub(super) struct Announcement {
    pub(super) type_: EventType,
    pub(super) reason: &'static str,
    pub(super) note: String,
}

/// The Events a status update is worth (pure): `SystemNotFound` when the OutboxSystem
/// is found missing (once: not while `Scheduled` already says so), `RunFailed` when the
/// update fails the run.
pub(super) fn announcements(
    current: &LoadTestStatus,
    update: &OperatorStatus,
    system: &str,
) -> Vec<Announcement> {
    let mut events = Vec::new();
    let previously =
        conditions::find(&current.conditions, types::SCHEDULED).map(|c| c.reason.as_str());
    if update
        .conditions
        .iter()
        .any(|c| c.reason == "SystemNotFound")
        && previously != Some("SystemNotFound")
    {
        events.push(Announcement {
            type_: EventType::Warning,
            reason: "SystemNotFound",
            note: format!("OutboxSystem {system} not found; no Job created"),
        });
    }
    if let Some(refused) = update
        .conditions
        .iter()
        .find(|c| c.reason == image_policy::REASON && c.type_ == types::SCHEDULED)
    {
        events.push(Announcement {
            type_: EventType::Warning,
            reason: image_policy::REASON,
            note: refused.message.clone(),
        });
    }
    if update.phase == LoadTestPhase::Failed {
        events.push(Announcement {
            type_: EventType::Warning,
            reason: "RunFailed",
            note: update.message.clone().unwrap_or_default(),
        });
    }
    events
}

/// When to look at an unfinished run again (pure): soon while it waits for its
/// OutboxSystem without a Job; now and then otherwise, though Job status changes
/// arrive through `.owns()`.
pub(super) fn look_again(system_found: bool, job_exists: bool) -> Action {
    if !system_found && !job_exists {
        Action::requeue(Duration::from_secs(15))
    } else {
        Action::requeue(Duration::from_secs(60))
    }
}

#[cfg(test)]
#[path = "decision_tests.rs"]
mod tests;
