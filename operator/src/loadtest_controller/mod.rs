//! The LoadTest reconciler: exactly one runner Job per LoadTest, phase bookkeeping that
//! only moves forward; Kubernetes deletes the Job after its TTL. `reconcile` reads as
//! its steps, each a module of this folder: read the run and what it depends on
//! (`read`) → create the Job when due (`job`) → decide the status and its Events
//! (`decision`, pure, unit-tested in `decision_tests.rs`; a parallel run's ready
//! runners and start time: `runners`, pure, `runners_tests.rs`) → write it (`status`).

mod decision;
mod job;
mod read;
mod runners;
mod status;

use std::sync::Arc;
use std::time::Duration;

use k8s_openapi::jiff::Timestamp;
use kube::runtime::controller::Action;
use kube::ResourceExt;
use tracing::{instrument, warn};

use crate::context::{publish_event, Context};
use crate::crd::LoadTest;
use crate::error::{Error, Result};
use crate::image_policy;

use decision::{announcements, job_due, look_again, never_had_a_job};
pub use decision::{
    decide_status, image_not_allowed, job_state, operator_status, JobState, OperatorStatus,
    RunnerAccount,
};
use job::create_job;
use read::{read_fresh, read_system, runner_account_found, Fresh};
pub use runners::{runners_status, RunnersStatus};
use status::write_status;

/// Controller name in metrics.
pub const CONTROLLER: &str = "loadtest";

/// Condition types the operator writes on a LoadTest.
pub use outbox_contract::conditions::loadtest as types;

/// Reconciles one LoadTest as its steps: read it and its Job fresh → a finished run
/// is left as it is (Kubernetes deletes its Job after the TTL) → read what the run depends on
/// (the OutboxSystem, the runner's ServiceAccount) → create the one Job (built pure)
/// when due (`job_due`, pure) → decide the status from the Job's state
/// (`decide_status`, pure) and, with `parallelism` above 1, the runners ready and their
/// start time (`runners_status`, pure) → announce it (`announcements`, pure) → write it →
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
    let runners = runners_status(
        lt.spec.parallelism,
        &current,
        job.as_ref(),
        update.phase.is_finished(),
        Timestamp::now(),
    );
    let events = announcements(&current, &update, &lt.spec.system_ref.name)
        .into_iter()
        .chain(runners::announcement(&current, &runners));
    for event in events {
        publish_event(&ctx, &lt, event.type_, event.reason, event.note).await;
    }
    write_status(&ctx, &namespace, &lt, &current, &update, &runners).await?;
    if update.phase.is_finished() {
        return Ok(Action::await_change());
    }
    Ok(look_again(system.is_some(), job.is_some()))
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
