//! The operator's part of a parallel run's status, pure: how many runner pods are
//! ready (`status.runnersReady`), and the one time they all start sending
//! (`status.startAt`), set once when every runner pod is ready.

use k8s_openapi::api::batch::v1::Job;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use k8s_openapi::jiff::Timestamp;
use kube::runtime::events::EventType;

use super::decision::Announcement;
use crate::crd::LoadTestStatus;

/// Seconds from the moment every runner pod is ready to the start time: long enough
/// for every runner to read it before it comes.
pub const START_DELAY_SECONDS: i64 = 2;

/// What the operator writes of a parallel run's status; both absent for a run of one
/// runner.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct RunnersStatus {
    /// `status.runnersReady`: runner pods ready over parallelism, e.g. `2/3`.
    pub ready: Option<String>,
    /// `status.startAt`: when every runner starts sending.
    pub start_at: Option<Time>,
}

/// The operator's part of a parallel run's status after this reconcile (pure), from
/// the runner pods the Job counts ready (`status.ready`) at `now`. While the run goes
/// on, `runnersReady` follows the Job; once it ends (`finished`: the status written now
/// ends it) the last count stands. `startAt` is set when the ready pods reach
/// `parallelism` and kept as it is from then on, also when a runner pod is replaced
/// later: every apply of the operator carries it, so it is never moved nor removed.
pub fn runners_status(
    parallelism: i32,
    current: &LoadTestStatus,
    job: Option<&Job>,
    finished: bool,
    now: Timestamp,
) -> RunnersStatus {
    if parallelism <= 1 {
        return RunnersStatus::default();
    }
    if finished {
        return RunnersStatus {
            ready: current.runners_ready.clone(),
            start_at: current.start_at.clone(),
        };
    }
    let ready = ready_pods(job);
    let start_at = match &current.start_at {
        Some(set) => Some(set.clone()),
        None if ready >= parallelism => Some(start_time(now)),
        None => None,
    };
    RunnersStatus {
        ready: Some(format!("{ready}/{parallelism}")),
        start_at,
    }
}

/// Runner pods the Job counts ready; none without a Job.
fn ready_pods(job: Option<&Job>) -> i32 {
    job.and_then(|j| j.status.as_ref()?.ready)
        .unwrap_or(0)
        .max(0)
}

/// [`START_DELAY_SECONDS`] after `now` at least, on a whole second: the field keeps
/// whole seconds, and a start time cut down to one would leave the runners less.
fn start_time(now: Timestamp) -> Time {
    let rounded_up = now.as_second() + i64::from(now.subsec_nanosecond() > 0);
    Time(Timestamp::from_second(rounded_up.saturating_add(START_DELAY_SECONDS)).unwrap_or(now))
}

/// The Event the operator's part of a parallel run is worth (pure): `RunnersReady`
/// when this reconcile sets the start time.
pub(super) fn announcement(
    current: &LoadTestStatus,
    update: &RunnersStatus,
) -> Option<Announcement> {
    if current.start_at.is_some() {
        return None;
    }
    let start_at = update.start_at.as_ref()?;
    Some(Announcement {
        type_: EventType::Normal,
        reason: "RunnersReady",
        note: format!(
            "every runner pod is ready ({}); they start sending at {}",
            update.ready.as_deref().unwrap_or_default(),
            start_at.0
        ),
    })
}

#[cfg(test)]
#[path = "runners_tests.rs"]
mod tests;
