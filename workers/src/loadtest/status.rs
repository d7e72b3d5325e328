//! The LoadTest's status as the runner sees it, and writing it to the API server.
//!
//! The runner keeps its whole part of the status in memory and writes all of it each
//! time with server-side apply under its own field manager. The operator writes its
//! own fields (`jobName`, `observedGeneration`, the `Scheduled` condition) the same way
//! under its manager, and `conditions` is a list-map keyed by `type`, so neither side
//! overwrites the other's conditions (a JSON merge patch would replace the whole list).
//! The phase only moves forward: before each write the runner reads the current phase
//! and never writes a lower one.

use std::time::{Duration, Instant};

use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, Time};
use k8s_openapi::jiff::Timestamp;
use kube::api::{Patch, PatchParams};
use kube::Api;
use outbox_operator::crd::{LoadTest, LoadTestPhase, LoadTestStatus};
use serde_json::Value;

use super::error::{KubeContext, LoadTestError, Result};

/// Field manager of the runner's status writes.
pub const FIELD_MANAGER: &str = "outbox-loadtest-runner";
/// Condition: the run finished (sending and verification done, or the runner failed).
pub const COMPLETE: &str = "Complete";
/// Condition: every consumer group acknowledged every accepted message.
pub const VERIFIED: &str = "Verified";
/// Condition: a dependency is away and the runner waits for it.
pub const DEGRADED: &str = "Degraded";

/// Status fields the runner owns; everything else belongs to the operator.
const RUNNER_FIELDS: &[&str] = &[
    "phase",
    "runId",
    "startTime",
    "completionTime",
    "message",
    "acceptedMessages",
    "throughput",
    "scenarios",
    "groups",
    "endToEndLatency",
    "databaseOutages",
    "conditions",
];

/// The LoadTest the status goes to.
#[derive(Clone)]
pub struct Target {
    /// API of the LoadTest's namespace.
    pub api: Api<LoadTest>,
    /// LoadTest name.
    pub name: String,
    /// Its `metadata.generation`, stamped into conditions.
    pub generation: Option<i64>,
}

/// The runner's view of the status, and where (if anywhere) it is written.
pub struct StatusBook {
    target: Option<Target>,
    status: LoadTestStatus,
    last_write: Option<Instant>,
    min_interval: Duration,
}

impl StatusBook {
    /// Starts from `current` (the status found on the LoadTest, or empty).
    pub fn new(target: Option<Target>, current: LoadTestStatus, min_interval: Duration) -> Self {
        // Conditions of other writers are not ours to write.
        let mut status = current;
        status
            .conditions
            .retain(|c| c.type_ == COMPLETE || c.type_ == VERIFIED);
        StatusBook {
            target,
            status,
            last_write: None,
            min_interval,
        }
    }

    /// The current view.
    pub fn status(&self) -> &LoadTestStatus {
        &self.status
    }

    /// The current view, to update figures.
    pub fn status_mut(&mut self) -> &mut LoadTestStatus {
        &mut self.status
    }

    /// Current phase (Pending when unset).
    pub fn phase(&self) -> LoadTestPhase {
        self.status.phase.unwrap_or_default()
    }

    /// Moves the phase forward; a lower or equal phase is ignored.
    pub fn advance(&mut self, phase: LoadTestPhase) {
        self.status.phase = Some(forward(self.status.phase, phase));
    }

    /// Sets a condition, keeping its `lastTransitionTime` when its status is unchanged.
    pub fn set_condition(
        &mut self,
        type_: &str,
        ok: bool,
        reason: &str,
        message: impl Into<String>,
    ) {
        let generation = self.target.as_ref().and_then(|t| t.generation);
        set_condition(
            &mut self.status.conditions,
            type_,
            ok,
            reason,
            message.into(),
            generation,
            Timestamp::now(),
        );
    }

    /// Writes the status if the last write is at least the progress interval ago.
    pub async fn write_progress(&mut self) {
        if self
            .last_write
            .is_some_and(|t| t.elapsed() < self.min_interval)
        {
            return;
        }
        if let Err(e) = self.write().await {
            tracing::warn!(error = %crate::error_chain(&e), "could not write progress into the LoadTest status; going on");
        }
    }

    /// Writes the status now (a phase change or the final result), retrying briefly.
    pub async fn write_now(&mut self) -> Result<()> {
        let mut attempt = 0;
        loop {
            match self.write().await {
                Ok(()) => return Ok(()),
                Err(e) if attempt < 4 => {
                    attempt += 1;
                    tracing::warn!(error = %crate::error_chain(&e), attempt, "writing the LoadTest status failed; retrying");
                    tokio::time::sleep(Duration::from_millis(500 * attempt)).await;
                }
                Err(e) => return Err(e),
            }
        }
    }

    async fn write(&mut self) -> Result<()> {
        self.last_write = Some(Instant::now());
        let Some(target) = &self.target else {
            return Ok(());
        };
        // Never move the phase back: someone (the operator) may have ended the run.
        let current = target
            .api
            .get_status(&target.name)
            .await
            .kube(|| format!("reading the status of LoadTest {}", target.name))?;
        let server_phase = current.status.and_then(|s| s.phase);
        self.status.phase = Some(forward(server_phase, self.phase()));
        let body = apply_body(&self.status).map_err(|source| LoadTestError::Json {
            context: "the LoadTest status",
            source,
        })?;
        target
            .api
            .patch_status(
                &target.name,
                &PatchParams::apply(FIELD_MANAGER).force(),
                &Patch::Apply(&body),
            )
            .await
            .kube(|| format!("writing the status of LoadTest {}", target.name))?;
        Ok(())
    }
}

/// The higher of two phases (unset counts as Pending).
pub fn forward(current: Option<LoadTestPhase>, next: LoadTestPhase) -> LoadTestPhase {
    match current {
        Some(c) if c.rank() >= next.rank() => c,
        _ => next,
    }
}

/// Sets condition `type_` in `conditions` (pure; see [`StatusBook::set_condition`]).
pub fn set_condition(
    conditions: &mut Vec<Condition>,
    type_: &str,
    ok: bool,
    reason: &str,
    message: String,
    generation: Option<i64>,
    now: Timestamp,
) {
    let status = if ok { "True" } else { "False" };
    let last_transition_time = conditions
        .iter()
        .find(|c| c.type_ == type_ && c.status == status)
        .map(|c| c.last_transition_time.clone())
        .unwrap_or(Time(now));
    conditions.retain(|c| c.type_ != type_);
    conditions.push(Condition {
        type_: type_.to_string(),
        status: status.to_string(),
        reason: reason.to_string(),
        message,
        observed_generation: generation,
        last_transition_time,
    });
    conditions.sort_by(|a, b| a.type_.cmp(&b.type_));
}

/// The server-side apply body for the runner's fields of `status`.
pub fn apply_body(status: &LoadTestStatus) -> serde_json::Result<Value> {
    let mut value = serde_json::to_value(status)?;
    if let Some(map) = value.as_object_mut() {
        map.retain(|k, _| RUNNER_FIELDS.contains(&k.as_str()));
    }
    Ok(serde_json::json!({
        "apiVersion": "outbox.dev/v1alpha1",
        "kind": "LoadTest",
        "status": value,
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_phase_never_moves_back() {
        assert_eq!(
            forward(None, LoadTestPhase::Running),
            LoadTestPhase::Running
        );
        assert_eq!(
            forward(Some(LoadTestPhase::Verifying), LoadTestPhase::Running),
            LoadTestPhase::Verifying
        );
        assert_eq!(
            forward(Some(LoadTestPhase::Failed), LoadTestPhase::Succeeded),
            LoadTestPhase::Failed
        );
        assert_eq!(
            forward(Some(LoadTestPhase::Verifying), LoadTestPhase::Succeeded),
            LoadTestPhase::Succeeded
        );
    }

    #[test]
    fn a_condition_keeps_its_transition_time_until_its_status_changes() {
        let t0 = Timestamp::from_second(1_000).unwrap_or(Timestamp::UNIX_EPOCH);
        let t1 = Timestamp::from_second(2_000).unwrap_or(Timestamp::UNIX_EPOCH);
        let mut c = Vec::new();
        set_condition(
            &mut c,
            VERIFIED,
            false,
            "Verifying",
            "waiting".into(),
            Some(1),
            t0,
        );
        set_condition(
            &mut c,
            VERIFIED,
            false,
            "MessagesMissing",
            "group-c missing 5".into(),
            Some(1),
            t1,
        );
        assert_eq!(c.len(), 1);
        assert_eq!(c[0].last_transition_time, Time(t0));
        assert_eq!(c[0].reason, "MessagesMissing");
        set_condition(
            &mut c,
            VERIFIED,
            true,
            "AllAcknowledged",
            "ok".into(),
            Some(1),
            t1,
        );
        assert_eq!(c[0].last_transition_time, Time(t1));
        assert_eq!(c[0].status, "True");
    }

    #[test]
    fn the_apply_body_carries_only_the_runners_fields() {
        let status = LoadTestStatus {
            phase: Some(LoadTestPhase::Running),
            run_id: Some("r".into()),
            job_name: Some("lt-runner".into()),
            observed_generation: Some(3),
            ..Default::default()
        };
        let body = apply_body(&status).expect("serialisable");
        let s = &body["status"];
        assert_eq!(s["phase"], "Running");
        assert_eq!(s["runId"], "r");
        assert!(s.get("jobName").is_none());
        assert!(s.get("observedGeneration").is_none());
        assert_eq!(body["kind"], "LoadTest");
    }
}
