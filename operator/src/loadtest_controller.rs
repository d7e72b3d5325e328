//! The LoadTest reconciler: exactly one runner Job per LoadTest, phase bookkeeping that
//! only moves forward, and cleanup of the Job after the TTL.

use std::sync::Arc;
use std::time::Duration;

use k8s_openapi::api::batch::v1::Job;
use k8s_openapi::api::core::v1::ServiceAccount;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, Time};
use k8s_openapi::jiff::Timestamp;
use kube::api::DeleteParams;
use kube::runtime::controller::Action;
use kube::runtime::events::EventType;
use kube::{Api, Resource, ResourceExt};
use tracing::{info, instrument, warn};

use crate::conditions::{self, Desired};
use crate::context::{publish_event, Context};
use crate::crd::{LoadTest, LoadTestPhase, LoadTestStatus, OutboxSystem};
use crate::error::{Error, Result};
use crate::runner_job::{job_name, runner_job, RunnerParams};
use crate::server_side_apply::{apply_status, server_side_apply};

/// Controller name in metrics.
pub const CONTROLLER: &str = "loadtest";

/// Condition types the operator writes on a LoadTest.
pub use outbox_contract::conditions::loadtest as types;

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
/// OutboxSystem exists, `job` the state of the runner Job after this reconcile.
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
        JobState::Absent if !system_found => OperatorStatus {
            phase: current_phase,
            job_name: None,
            message: Some(format!("OutboxSystem {system} not found; no Job created")),
            conditions: vec![Desired::no(
                types::SCHEDULED,
                "SystemNotFound",
                format!(
                    "spec.systemRef.name: OutboxSystem {system} does not exist in this namespace"
                ),
            )],
            completed: false,
        },
        JobState::Absent if current.job_name.is_none() && !runner_account.found => {
            let message = format!(
                "ServiceAccount {} of the load-test runner does not exist in namespace {}: \
                 add the namespace to the chart's loadtest.namespaces (helm upgrade ... \
                 --set loadtest.namespaces={{...,{}}}) and create the LoadTest again",
                runner_account.name, runner_account.namespace, runner_account.namespace
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
        JobState::Absent => OperatorStatus {
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
        },
        JobState::Active => OperatorStatus {
            phase: current_phase,
            job_name: Some(job_name(loadtest)),
            message: None,
            conditions: vec![Desired::yes(
                types::SCHEDULED,
                "JobCreated",
                format!("runner Job {} created", job_name(loadtest)),
            )],
            completed: false,
        },
        JobState::Succeeded | JobState::Failed => {
            let (reason, message) = if job == JobState::Failed {
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
                    Desired::yes(
                        types::SCHEDULED,
                        "JobCreated",
                        format!("runner Job {} created", job_name(loadtest)),
                    ),
                    Desired::yes(types::COMPLETE, reason, message),
                ],
                completed: true,
            }
        }
    }
}

/// Seconds left before the Job of a finished run is deleted (None: no TTL or not finished).
pub fn ttl_remaining(
    status: &LoadTestStatus,
    ttl_seconds: Option<i64>,
    now: Timestamp,
) -> Option<i64> {
    let ttl = ttl_seconds?;
    if !status.phase.unwrap_or_default().is_finished() {
        return None;
    }
    let finished = status.completion_time.as_ref().map(|t| t.0).unwrap_or(now);
    let elapsed = now.as_second() - finished.as_second();
    Some((ttl - elapsed).max(0))
}

/// Reconciles one LoadTest. The controller in `run` calls it only while this replica
/// may act (`run::when_leading`, the leadership gate of both controllers).
#[instrument(skip_all, fields(loadtest = %cached.name_any(), namespace = cached.namespace().unwrap_or_default()))]
pub async fn reconcile(cached: Arc<LoadTest>, ctx: Arc<Context>) -> Result<Action> {
    let _timer = ctx.metrics.reconcile_started(CONTROLLER);
    let name = cached.name_any();
    let namespace = cached
        .namespace()
        .ok_or(Error::MissingObjectKey("metadata.namespace"))?;
    if cached.metadata.deletion_timestamp.is_some() {
        return Ok(Action::await_change());
    }
    let loadtests: Api<LoadTest> = Api::namespaced(ctx.client.clone(), &namespace);
    let jobs: Api<Job> = Api::namespaced(ctx.client.clone(), &namespace);
    // The cache may lag behind the runner's last status write: decide on a fresh read.
    let Some(lt) = loadtests
        .get_opt(&name)
        .await
        .map_err(Error::kube(format!("reading LoadTest {name}")))?
    else {
        return Ok(Action::await_change());
    };
    let current = lt.status.clone().unwrap_or_default();
    let phase = current.phase.unwrap_or_default();
    let job_key = job_name(&name);
    let mut job = jobs
        .get_opt(&job_key)
        .await
        .map_err(Error::kube(format!("reading Job {job_key}")))?;

    if phase.is_finished() {
        return finish(&ctx, &lt, &jobs, job.as_ref(), &current).await;
    }

    let system_name = lt.spec.system_ref.name.clone();
    let systems: Api<OutboxSystem> = Api::namespaced(ctx.client.clone(), &namespace);
    let system = systems
        .get_opt(&system_name)
        .await
        .map_err(Error::kube(format!("reading OutboxSystem {system_name}")))?;

    // The runner's ServiceAccount exists only where the chart made it: elsewhere the
    // Job could never start a pod, and would wait for ever.
    let account_name = ctx.settings.loadtest_service_account.clone();
    let account_found = if job.is_none() && current.job_name.is_none() {
        let accounts: Api<ServiceAccount> = Api::namespaced(ctx.client.clone(), &namespace);
        accounts
            .get_opt(&account_name)
            .await
            .map_err(Error::kube(format!(
                "reading ServiceAccount {account_name}"
            )))?
            .is_some()
    } else {
        true
    };
    let runner_account = RunnerAccount {
        name: &account_name,
        namespace: &namespace,
        found: account_found,
    };

    // Create the one Job, only while the run has not started.
    if job.is_none()
        && phase == LoadTestPhase::Pending
        && current.job_name.is_none()
        && account_found
    {
        if let Some(system) = &system {
            let owner_ref = lt
                .controller_owner_ref(&())
                .ok_or(Error::MissingObjectKey("metadata.uid"))?;
            let params = RunnerParams {
                name: &name,
                namespace: &namespace,
                owner_ref,
                service_account: &ctx.settings.loadtest_service_account,
            };
            let desired = runner_job(&params, &lt, system);
            job = Some(create_job(&jobs, &desired).await?);
            info!(job = %job_key, "created the runner Job");
            publish_event(
                &ctx,
                &lt,
                EventType::Normal,
                "JobCreated",
                format!("created runner Job {job_key}"),
            )
            .await;
        }
    }

    let state = job_state(job.as_ref());
    let mut update = operator_status(
        &current,
        system.is_some(),
        runner_account,
        state,
        &name,
        &system_name,
    );
    if state == JobState::Failed && job_failed_for(job.as_ref(), "DeadlineExceeded") {
        let deadline = job
            .as_ref()
            .and_then(|j| j.spec.as_ref()?.active_deadline_seconds)
            .unwrap_or_default();
        if let Some(message) = update.message.as_mut() {
            message.push_str(&format!(
                ": it ran past its deadline of {deadline} s (activeDeadlineSeconds, from the messages and verificationTimeoutSeconds)"
            ));
        }
    }
    let previously =
        conditions::find(&current.conditions, types::SCHEDULED).map(|c| c.reason.clone());
    if update
        .conditions
        .iter()
        .any(|c| c.reason == "SystemNotFound")
        && previously.as_deref() != Some("SystemNotFound")
    {
        publish_event(
            &ctx,
            &lt,
            EventType::Warning,
            "SystemNotFound",
            format!("OutboxSystem {system_name} not found; no Job created"),
        )
        .await;
    }
    if update.phase == LoadTestPhase::Failed {
        publish_event(
            &ctx,
            &lt,
            EventType::Warning,
            "RunFailed",
            update.message.clone().unwrap_or_default(),
        )
        .await;
    }
    write_status(&loadtests, &lt, &current, &update).await?;

    if update.phase.is_finished() {
        return finish(&ctx, &lt, &jobs, job.as_ref(), &current).await;
    }
    if system.is_none() && job.is_none() {
        return Ok(Action::requeue(Duration::from_secs(15)));
    }
    // Job status changes arrive through `.owns()`; look again now and then anyway.
    Ok(Action::requeue(Duration::from_secs(60)))
}

/// Creates the Job if absent: server-side apply with the operator's field manager is
/// idempotent, and the deterministic name means a second LoadTest run cannot exist.
async fn create_job(jobs: &Api<Job>, job: &Job) -> Result<Job> {
    server_side_apply(jobs, job).await
}

async fn write_status(
    api: &Api<LoadTest>,
    lt: &LoadTest,
    current: &LoadTestStatus,
    update: &OperatorStatus,
) -> Result<()> {
    let conditions: Vec<Condition> = conditions::merge(
        &current.conditions,
        &update.conditions,
        lt.metadata.generation,
        Timestamp::now(),
    );
    let unchanged = current.phase.unwrap_or_default() == update.phase
        && current.phase.is_some()
        && current.job_name == update.job_name
        && current.observed_generation == lt.metadata.generation
        && update
            .message
            .as_ref()
            .is_none_or(|m| current.message.as_ref() == Some(m))
        && conditions::changed(&current.conditions, &conditions).is_empty()
        && !update.completed;
    if unchanged {
        return Ok(());
    }
    let mut status = serde_json::json!({
        "phase": update.phase,
        "observedGeneration": lt.metadata.generation,
        "conditions": conditions,
    });
    if let Some(job) = &update.job_name {
        status["jobName"] = job.clone().into();
    }
    if let Some(message) = &update.message {
        status["message"] = message.clone().into();
    }
    if update.completed {
        status["completionTime"] =
            serde_json::to_value(Time(Timestamp::now())).map_err(|source| Error::Serialize {
                what: "completionTime".into(),
                source,
            })?;
    }
    apply_status(api, &lt.name_any(), &status).await
}

/// After the run: delete the Job (and its pods) once the TTL has passed.
async fn finish(
    ctx: &Context,
    lt: &LoadTest,
    jobs: &Api<Job>,
    job: Option<&Job>,
    status: &LoadTestStatus,
) -> Result<Action> {
    let Some(job) = job else {
        return Ok(Action::await_change());
    };
    match ttl_remaining(status, lt.spec.ttl_seconds_after_finished, Timestamp::now()) {
        None => Ok(Action::await_change()),
        Some(0) => {
            let job_key = job.name_any();
            jobs.delete(&job_key, &DeleteParams::background())
                .await
                .map_err(Error::kube(format!("deleting Job {job_key}")))?;
            info!(job = %job_key, "deleted the runner Job after ttlSecondsAfterFinished");
            publish_event(
                ctx,
                lt,
                EventType::Normal,
                "JobDeleted",
                format!("deleted runner Job {job_key} after ttlSecondsAfterFinished"),
            )
            .await;
            Ok(Action::await_change())
        }
        Some(left) => Ok(Action::requeue(Duration::from_secs(
            u64::try_from(left).unwrap_or(1).max(1),
        ))),
    }
}

/// Logs and counts a failed reconcile and backs off.
pub fn error_policy(lt: Arc<LoadTest>, error: &Error, ctx: Arc<Context>) -> Action {
    ctx.metrics.reconcile_failed(CONTROLLER, error);
    warn!(loadtest = %lt.name_any(), %error, "reconcile failed");
    if error.is_permanent() {
        Action::await_change()
    } else {
        Action::requeue(Duration::from_secs(15))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn account(found: bool) -> RunnerAccount<'static> {
        RunnerAccount {
            name: "outbox-loadtest",
            namespace: "team-a",
            found,
        }
    }

    #[test]
    fn a_namespace_without_the_runner_account_fails_the_run_saying_what_to_do() {
        let s = operator_status(
            &status(None),
            true,
            account(false),
            JobState::Absent,
            "lt",
            "demo",
        );
        assert_eq!(s.phase, LoadTestPhase::Failed);
        assert!(s.completed);
        let complete = s
            .conditions
            .iter()
            .find(|c| c.type_ == types::COMPLETE)
            .expect("a Complete condition");
        assert_eq!(complete.reason, "RunnerAccountMissing");
        assert!(
            complete.message.contains("outbox-loadtest")
                && complete.message.contains("loadtest.namespaces"),
            "{}",
            complete.message
        );
    }

    #[test]
    fn the_job_deadline_grows_with_the_messages_and_the_verification_timeout() {
        let reference: crate::crd::LoadTest = serde_yaml::from_str(
            &std::fs::read_to_string(concat!(
                env!("CARGO_MANIFEST_DIR"),
                "/../manifests/loadtest-reference.yaml"
            ))
            .expect("the reference LoadTest"),
        )
        .expect("parses");
        // 10,005,000 messages: 10,005 s at 1,000 msg/s, plus start, verification, and
        // the patience with producers and with the database.
        assert_eq!(
            crate::runner_job::deadline_seconds(&reference.spec),
            600 + 10_005 + reference.spec.verification_timeout_seconds + 300 + 300
        );
        let mut empty = reference.spec.clone();
        empty.scenarios.clear();
        empty.verification_timeout_seconds = 600;
        assert_eq!(
            crate::runner_job::deadline_seconds(&empty),
            600 + 600 + 300 + 300
        );
        // Arrival-rate scenarios take their stages' time, whatever the rate.
        let rate: crate::crd::LoadTest = serde_yaml::from_str(
            &std::fs::read_to_string(concat!(
                env!("CARGO_MANIFEST_DIR"),
                "/../manifests/loadtest-rate.yaml"
            ))
            .expect("the rate LoadTest"),
        )
        .expect("parses");
        assert_eq!(
            crate::runner_job::deadline_seconds(&rate.spec),
            600 + 60 + 60 + rate.spec.verification_timeout_seconds + 300 + 300
        );
    }

    fn status(phase: Option<LoadTestPhase>) -> LoadTestStatus {
        LoadTestStatus {
            phase,
            ..LoadTestStatus::default()
        }
    }

    #[test]
    fn missing_system_gives_system_not_found_and_no_job() {
        let s = operator_status(
            &status(None),
            false,
            account(true),
            JobState::Absent,
            "lt",
            "demo",
        );
        assert_eq!(s.conditions[0].reason, "SystemNotFound");
        assert!(!s.conditions[0].status);
        assert!(s.conditions[0].message.contains("spec.systemRef.name"));
        assert_eq!(s.job_name, None);
    }

    #[test]
    fn active_job_keeps_the_runner_phase() {
        let s = operator_status(
            &status(Some(LoadTestPhase::Verifying)),
            true,
            account(true),
            JobState::Active,
            "lt",
            "demo",
        );
        assert_eq!(s.phase, LoadTestPhase::Verifying);
        assert_eq!(s.job_name.as_deref(), Some("lt-run"));
    }

    #[test]
    fn failed_job_before_a_report_fails_the_run() {
        let s = operator_status(
            &status(Some(LoadTestPhase::Running)),
            true,
            account(true),
            JobState::Failed,
            "lt",
            "demo",
        );
        assert_eq!(s.phase, LoadTestPhase::Failed);
        assert!(s.completed);
        assert!(s
            .conditions
            .iter()
            .any(|c| c.type_ == types::COMPLETE && c.reason == "JobFailed"));
    }

    #[test]
    fn finished_phase_is_never_moved() {
        let s = operator_status(
            &status(Some(LoadTestPhase::Succeeded)),
            false,
            account(true),
            JobState::Failed,
            "lt",
            "demo",
        );
        assert_eq!(s.phase, LoadTestPhase::Succeeded);
        assert!(s.conditions.is_empty());
    }

    #[test]
    fn ttl_counts_from_completion() {
        let done = LoadTestStatus {
            phase: Some(LoadTestPhase::Succeeded),
            completion_time: Some(Time(
                Timestamp::from_second(1000).unwrap_or(Timestamp::UNIX_EPOCH),
            )),
            ..LoadTestStatus::default()
        };
        let at = |s| Timestamp::from_second(s).unwrap_or(Timestamp::UNIX_EPOCH);
        assert_eq!(ttl_remaining(&done, Some(60), at(1030)), Some(30));
        assert_eq!(ttl_remaining(&done, Some(60), at(2000)), Some(0));
        assert_eq!(ttl_remaining(&done, None, at(2000)), None);
        assert_eq!(
            ttl_remaining(&status(Some(LoadTestPhase::Running)), Some(1), at(2000)),
            None
        );
    }
}
