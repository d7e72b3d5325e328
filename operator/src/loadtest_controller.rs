//! The LoadTest reconciler: exactly one runner Job per LoadTest, phase bookkeeping that
//! only moves forward, and cleanup of the Job after the TTL.

use std::sync::Arc;
use std::time::Duration;

use k8s_openapi::api::batch::v1::Job;
use k8s_openapi::api::core::v1::{ConfigMap, ServiceAccount};
use k8s_openapi::api::rbac::v1::{Role, RoleBinding};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, Time};
use k8s_openapi::jiff::Timestamp;
use kube::runtime::controller::Action;
use kube::runtime::events::EventType;
use kube::{Api, Resource, ResourceExt};
use tracing::{info, instrument, warn};

use crate::conditions::{self, Desired};
use crate::context::{publish_event, Context};
use crate::crd::{LoadTest, LoadTestPhase, LoadTestStatus, OutboxSystem};
use crate::error::{Error, Result};
use crate::image_policy::{self, ImageNotAllowed};
use crate::runner_job::{
    job_name, report_config_map, report_writer_binding, report_writer_role, runner_job,
    RunnerParams,
};
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

/// Reconciles one LoadTest as its steps: read it and its Job fresh → a finished run
/// is left as it is (Kubernetes deletes its Job after the TTL) → read what the run depends on
/// (the OutboxSystem, the runner's ServiceAccount) → create the one Job (built pure)
/// when due (`job_due`, pure) → decide the status from the Job's state
/// (`decide_status`, pure) → announce it (`announcements`, pure) → write it →
/// look again later (`look_again`, pure) unless the run ended.
///
/// The controller in `run` calls it only while this replica may act
/// (`run::when_leading`, the leadership gate of both controllers).
#[instrument(skip_all, fields(loadtest = %cached.name_any(), namespace = cached.namespace().unwrap_or_default()))]
pub async fn reconcile(cached: Arc<LoadTest>, ctx: Arc<Context>) -> Result<Action> {
    let _timer = ctx.metrics.reconcile_started(CONTROLLER);
    let namespace = cached
        .namespace()
        .ok_or(Error::MissingObjectKey("metadata.namespace"))?;
    if cached.metadata.deletion_timestamp.is_some() {
        return Ok(Action::await_change());
    }
    let Some(fresh) = read_fresh(&ctx, &cached.name_any(), &namespace).await? else {
        return Ok(Action::await_change());
    };
    let Fresh {
        lt,
        current,
        mut job,
    } = fresh;
    if current.phase.unwrap_or_default().is_finished() {
        // Nothing moves a finished run; Kubernetes deletes its Job after the Job's own
        // ttlSecondsAfterFinished (the LoadTest's, set when the Job was made).
        return Ok(Action::await_change());
    }
    let system = read_system(&ctx, &lt, &namespace).await?;
    let account = RunnerAccount {
        name: &ctx.settings.loadtest_service_account,
        namespace: &namespace,
        found: runner_account_found(&ctx, &namespace, &current, job.is_some()).await?,
    };
    // Only a run that never had a Job is checked: one already running keeps its image.
    let image_refused = system
        .as_ref()
        .filter(|_| never_had_a_job(&current, job.is_some()))
        .and_then(|s| image_policy::runner_image_not_allowed(&ctx.settings.image_policy, &lt, s));
    let due = image_refused.is_none()
        && job_due(&current, job.is_some(), system.is_some(), account.found);
    if let (true, Some(system)) = (due, &system) {
        job = Some(create_job(&ctx, &lt, &namespace, system).await?);
    }
    let update = match &image_refused {
        Some(refusal) => {
            warn!(image = %refusal.image, field = %refusal.field, "runner image not allowed; no Job created");
            image_not_allowed(refusal)
        }
        None => decide_status(
            &current,
            system.is_some(),
            account,
            job.as_ref(),
            &lt.name_any(),
            &lt.spec.system_ref.name,
        ),
    };
    for event in announcements(&current, &update, &lt.spec.system_ref.name) {
        publish_event(&ctx, &lt, event.type_, event.reason, event.note).await;
    }
    write_status(&ctx, &namespace, &lt, &current, &update).await?;
    if update.phase.is_finished() {
        return Ok(Action::await_change());
    }
    Ok(look_again(system.is_some(), job.is_some()))
}

/// A LoadTest as the API server has it now, with its status and its runner Job.
struct Fresh {
    lt: LoadTest,
    current: LoadTestStatus,
    job: Option<Job>,
}

/// Reads the LoadTest `name` and its Job (`None`: the LoadTest is gone). The cache may
/// lag behind the runner's last status write: the reconcile decides on a fresh read.
async fn read_fresh(ctx: &Context, name: &str, namespace: &str) -> Result<Option<Fresh>> {
    let loadtests: Api<LoadTest> = Api::namespaced(ctx.client.clone(), namespace);
    let jobs: Api<Job> = Api::namespaced(ctx.client.clone(), namespace);
    let Some(lt) = loadtests
        .get_opt(name)
        .await
        .map_err(Error::kube(format!("reading LoadTest {name}")))?
    else {
        return Ok(None);
    };
    let current = lt.status.clone().unwrap_or_default();
    let job_key = job_name(name);
    let job = jobs
        .get_opt(&job_key)
        .await
        .map_err(Error::kube(format!("reading Job {job_key}")))?;
    Ok(Some(Fresh { lt, current, job }))
}

/// The OutboxSystem the LoadTest names, if it exists.
async fn read_system(
    ctx: &Context,
    lt: &LoadTest,
    namespace: &str,
) -> Result<Option<OutboxSystem>> {
    let system_name = &lt.spec.system_ref.name;
    let systems: Api<OutboxSystem> = Api::namespaced(ctx.client.clone(), namespace);
    systems
        .get_opt(system_name)
        .await
        .map_err(Error::kube(format!("reading OutboxSystem {system_name}")))
}

/// Whether the runner's ServiceAccount exists. It exists only where the chart made it:
/// elsewhere the Job could never start a pod, and would wait for ever. Looked up only
/// while the run never had a Job (else taken as found).
async fn runner_account_found(
    ctx: &Context,
    namespace: &str,
    current: &LoadTestStatus,
    job_exists: bool,
) -> Result<bool> {
    if !never_had_a_job(current, job_exists) {
        return Ok(true);
    }
    let account_name = &ctx.settings.loadtest_service_account;
    let accounts: Api<ServiceAccount> = Api::namespaced(ctx.client.clone(), namespace);
    Ok(accounts
        .get_opt(account_name)
        .await
        .map_err(Error::kube(format!(
            "reading ServiceAccount {account_name}"
        )))?
        .is_some())
}

/// No Job now, and none recorded in the status (pure).
fn never_had_a_job(current: &LoadTestStatus, job_exists: bool) -> bool {
    !job_exists && current.job_name.is_none()
}

/// Whether this reconcile creates the runner Job (pure): only while the run has not
/// started (Pending, never had a Job; a Job that vanished is not made again), and only
/// with its OutboxSystem and the runner's ServiceAccount there.
fn job_due(
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

/// Creates the one runner Job (built pure by [`runner_job`]), after the report
/// ConfigMap and the runner's Role on it, and announces it.
/// Server-side apply with the operator's field manager is idempotent, and the
/// deterministic name means a second LoadTest run cannot exist.
async fn create_job(
    ctx: &Context,
    lt: &LoadTest,
    namespace: &str,
    system: &OutboxSystem,
) -> Result<Job> {
    let name = lt.name_any();
    let owner_ref = lt
        .controller_owner_ref(&())
        .ok_or(Error::MissingObjectKey("metadata.uid"))?;
    let params = RunnerParams {
        name: &name,
        namespace,
        owner_ref,
        service_account: &ctx.settings.loadtest_service_account,
        worker_image: &ctx.settings.worker_image,
    };
    // What the runner may write, before it runs: its report ConfigMap, empty, and the
    // Role that lets it get and patch that one ConfigMap.
    let config_maps: Api<ConfigMap> = Api::namespaced(ctx.client.clone(), namespace);
    server_side_apply(&config_maps, &report_config_map(&params)).await?;
    let roles: Api<Role> = Api::namespaced(ctx.client.clone(), namespace);
    server_side_apply(&roles, &report_writer_role(&params)).await?;
    let bindings: Api<RoleBinding> = Api::namespaced(ctx.client.clone(), namespace);
    server_side_apply(&bindings, &report_writer_binding(&params)).await?;
    let desired = runner_job(&params, lt, system);
    let jobs: Api<Job> = Api::namespaced(ctx.client.clone(), namespace);
    let job = server_side_apply(&jobs, &desired).await?;
    let job_key = job_name(&name);
    info!(job = %job_key, "created the runner Job");
    publish_event(
        ctx,
        lt,
        EventType::Normal,
        "JobCreated",
        format!("created runner Job {job_key}"),
    )
    .await;
    Ok(job)
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
struct Announcement {
    type_: EventType,
    reason: &'static str,
    note: String,
}

/// The Events a status update is worth (pure): `SystemNotFound` when the OutboxSystem
/// is found missing (once: not while `Scheduled` already says so), `RunFailed` when the
/// update fails the run.
fn announcements(
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
fn look_again(system_found: bool, job_exists: bool) -> Action {
    if !system_found && !job_exists {
        Action::requeue(Duration::from_secs(15))
    } else {
        Action::requeue(Duration::from_secs(60))
    }
}

/// Writes the operator's part of the status, unless it says nothing new.
async fn write_status(
    ctx: &Context,
    namespace: &str,
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
    let api: Api<LoadTest> = Api::namespaced(ctx.client.clone(), namespace);
    apply_status(&api, &lt.name_any(), &status).await
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
    fn a_runner_image_outside_the_allowed_repositories_fails_the_run_naming_image_and_list() {
        let refusal = crate::image_policy::ImagePolicy::from_list("registry.example/team/")
            .check("spec.image", "evil.example/runner:1")
            .expect("refused");
        let s = image_not_allowed(&refusal);
        assert_eq!(s.phase, LoadTestPhase::Failed);
        assert!(s.completed);
        assert_eq!(s.job_name, None);
        for type_ in [types::SCHEDULED, types::COMPLETE] {
            let c = s
                .conditions
                .iter()
                .find(|c| c.type_ == type_)
                .unwrap_or_else(|| panic!("a {type_} condition"));
            assert_eq!(c.reason, "ImageNotAllowed");
            assert!(
                c.message.contains("evil.example/runner:1")
                    && c.message.contains("registry.example/team/"),
                "{}",
                c.message
            );
        }
        let events = announcements(&status(None), &s, "demo");
        assert!(
            events
                .iter()
                .any(|e| e.reason == "ImageNotAllowed" && e.type_ == EventType::Warning),
            "{events:?}"
        );
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
    fn a_job_that_vanished_after_it_was_made_fails_the_run_as_lost() {
        let mut current = status(Some(LoadTestPhase::Running));
        current.job_name = Some("lt-run".into());
        let s = operator_status(
            &current,
            true,
            account(true),
            JobState::Absent,
            "lt",
            "demo",
        );
        assert_eq!(s.phase, LoadTestPhase::Failed);
        assert!(s.completed);
        assert_eq!(s.job_name.as_deref(), Some("lt-run"));
        assert_eq!(s.conditions.len(), 1);
        assert_eq!(s.conditions[0].type_, types::COMPLETE);
        assert_eq!(s.conditions[0].reason, "JobLost");
        assert!(s.message.is_some_and(|m| m.contains("lt-run disappeared")));
    }

    #[test]
    fn a_job_that_exited_0_without_a_report_fails_the_run() {
        let s = operator_status(
            &status(Some(LoadTestPhase::Running)),
            true,
            account(true),
            JobState::Succeeded,
            "lt",
            "demo",
        );
        assert_eq!(s.phase, LoadTestPhase::Failed);
        let reasons: Vec<_> = s.conditions.iter().map(|c| (c.type_, &*c.reason)).collect();
        assert_eq!(
            reasons,
            [
                (types::SCHEDULED, "JobCreated"),
                (types::COMPLETE, "RunnerDidNotReport")
            ]
        );
    }

    fn failed_job(reason: &str, deadline: Option<i64>) -> Job {
        use k8s_openapi::api::batch::v1::{JobCondition, JobSpec, JobStatus};
        Job {
            spec: Some(JobSpec {
                active_deadline_seconds: deadline,
                ..JobSpec::default()
            }),
            status: Some(JobStatus {
                conditions: Some(vec![JobCondition {
                    type_: "Failed".into(),
                    status: "True".into(),
                    reason: Some(reason.into()),
                    ..JobCondition::default()
                }]),
                ..JobStatus::default()
            }),
            ..Job::default()
        }
    }

    #[test]
    fn a_job_past_its_deadline_fails_the_run_naming_the_deadline() {
        let running = status(Some(LoadTestPhase::Running));
        let job = failed_job("DeadlineExceeded", Some(12_345));
        let s = decide_status(&running, true, account(true), Some(&job), "lt", "demo");
        assert_eq!(s.phase, LoadTestPhase::Failed);
        let message = s.message.expect("a message");
        assert!(
            message.starts_with("the runner Job lt-run failed before the runner reported")
                && message.ends_with(
                    ": it ran past its deadline of 12345 s (activeDeadlineSeconds, from the messages and verificationTimeoutSeconds)"
                ),
            "{message}"
        );
        // Failed for another reason: no deadline in the message.
        let job = failed_job("BackoffLimitExceeded", Some(12_345));
        let s = decide_status(&running, true, account(true), Some(&job), "lt", "demo");
        assert!(s.message.is_some_and(|m| !m.contains("deadline")));
    }

    #[test]
    fn the_job_is_made_only_for_a_pending_run_that_never_had_one_with_system_and_account() {
        let pending = status(None);
        assert!(job_due(&pending, false, true, true));
        assert!(!job_due(&pending, true, true, true), "a Job exists");
        assert!(!job_due(&pending, false, false, true), "no OutboxSystem");
        assert!(!job_due(&pending, false, true, false), "no ServiceAccount");
        let running = status(Some(LoadTestPhase::Running));
        assert!(!job_due(&running, false, true, true), "the run started");
        let mut vanished = status(None);
        vanished.job_name = Some("lt-run".into());
        assert!(
            !job_due(&vanished, false, true, true),
            "a Job that vanished is not made again"
        );
    }

    #[test]
    fn a_missing_system_is_announced_once_and_a_failed_run_with_its_message() {
        let waiting = operator_status(
            &status(None),
            false,
            account(true),
            JobState::Absent,
            "lt",
            "demo",
        );
        assert_eq!(
            announcements(&status(None), &waiting, "demo"),
            [Announcement {
                type_: EventType::Warning,
                reason: "SystemNotFound",
                note: "OutboxSystem demo not found; no Job created".into(),
            }]
        );
        // The status already says so: no second Event.
        let mut said = status(None);
        said.conditions = conditions::merge(&[], &waiting.conditions, None, Timestamp::UNIX_EPOCH);
        assert!(announcements(&said, &waiting, "demo").is_empty());

        let failed = operator_status(
            &status(Some(LoadTestPhase::Running)),
            true,
            account(true),
            JobState::Failed,
            "lt",
            "demo",
        );
        let events = announcements(&status(Some(LoadTestPhase::Running)), &failed, "demo");
        assert_eq!(events.len(), 1);
        assert_eq!(events[0].reason, "RunFailed");
        assert_eq!(events[0].type_, EventType::Warning);
        assert_eq!(Some(&events[0].note), failed.message.as_ref());

        let active = operator_status(
            &status(Some(LoadTestPhase::Running)),
            true,
            account(true),
            JobState::Active,
            "lt",
            "demo",
        );
        assert!(announcements(&status(None), &active, "demo").is_empty());
    }

    #[test]
    fn a_run_waiting_for_its_system_is_looked_at_sooner() {
        assert_eq!(
            look_again(false, false),
            Action::requeue(Duration::from_secs(15))
        );
        assert_eq!(
            look_again(true, false),
            Action::requeue(Duration::from_secs(60))
        );
        assert_eq!(
            look_again(false, true),
            Action::requeue(Duration::from_secs(60))
        );
    }
}
