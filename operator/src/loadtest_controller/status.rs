//! Writing the operator's part of a LoadTest's status (server-side apply; the runner
//! writes its own part). The operator's fields: `phase`, `observedGeneration`,
//! `conditions` (its own types), `jobName`, `message`, `completionTime` when it ends
//! the run, and with `parallelism` above 1 `runnersReady` and `startAt`, which no
//! runner writes. A field the operator alone set and leaves out of a later apply is
//! removed: so `startAt`, once set, is in each apply after.

use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, Time};
use k8s_openapi::jiff::Timestamp;
use kube::{Api, ResourceExt};

use super::{OperatorStatus, RunnersStatus};
use crate::conditions;
use crate::context::Context;
use crate::crd::{LoadTest, LoadTestStatus};
use crate::error::{Error, Result};
use crate::server_side_apply::apply_status;

/// Writes the operator's part of the status, unless it says nothing new.
pub(super) async fn write_status(
    ctx: &Context,
    namespace: &str,
    lt: &LoadTest,
    current: &LoadTestStatus,
    update: &OperatorStatus,
    runners: &RunnersStatus,
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
        && current.runners_ready == runners.ready
        && current.start_at == runners.start_at
        && !update.completed;
    if unchanged {
        return Ok(());
    }
    let status = apply_body(
        lt.metadata.generation,
        update,
        runners,
        &conditions,
        Timestamp::now(),
    )?;
    let api: Api<LoadTest> = Api::namespaced(ctx.client.clone(), namespace);
    apply_status(&api, &lt.name_any(), &status).await
}

/// The operator's fields of the status as it applies them (pure); `now` is the
/// completion time when the update ends the run.
fn apply_body(
    generation: Option<i64>,
    update: &OperatorStatus,
    runners: &RunnersStatus,
    conditions: &[Condition],
    now: Timestamp,
) -> Result<serde_json::Value> {
    let serialize = |what: &str, time: &Time| {
        serde_json::to_value(time).map_err(|source| Error::Serialize {
            what: what.into(),
            source,
        })
    };
    let mut status = serde_json::json!({
        "phase": update.phase,
        "observedGeneration": generation,
        "conditions": conditions,
    });
    if let Some(job) = &update.job_name {
        status["jobName"] = job.clone().into();
    }
    if let Some(message) = &update.message {
        status["message"] = message.clone().into();
    }
    if let Some(ready) = &runners.ready {
        status["runnersReady"] = ready.clone().into();
    }
    if let Some(start_at) = &runners.start_at {
        status["startAt"] = serialize("startAt", start_at)?;
    }
    if update.completed {
        status["completionTime"] = serialize("completionTime", &Time(now))?;
    }
    Ok(status)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::crd::LoadTestPhase;

    fn running() -> OperatorStatus {
        OperatorStatus {
            phase: LoadTestPhase::Running,
            job_name: Some("lt-run".into()),
            message: None,
            conditions: vec![],
            completed: false,
        }
    }

    fn keys(body: &serde_json::Value) -> Vec<&str> {
        body.as_object()
            .map(|m| m.keys().map(String::as_str).collect())
            .unwrap_or_default()
    }

    #[test]
    fn the_apply_carries_runners_ready_and_the_start_time_but_never_the_runners_lines() {
        let runners = RunnersStatus {
            ready: Some("3/3".into()),
            start_at: Some(Time(Timestamp::UNIX_EPOCH)),
        };
        let body = apply_body(Some(1), &running(), &runners, &[], Timestamp::UNIX_EPOCH)
            .unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(body["runnersReady"], "3/3");
        assert_eq!(body["startAt"], "1970-01-01T00:00:00Z");
        let mut fields = keys(&body);
        fields.sort_unstable();
        assert_eq!(
            fields,
            [
                "conditions",
                "jobName",
                "observedGeneration",
                "phase",
                "runnersReady",
                "startAt"
            ],
            "no runner-owned field such as runners"
        );
    }

    #[test]
    fn a_run_of_one_runner_applies_neither_runners_ready_nor_a_start_time() {
        let body = apply_body(
            Some(1),
            &running(),
            &RunnersStatus::default(),
            &[],
            Timestamp::UNIX_EPOCH,
        )
        .unwrap_or_else(|e| panic!("{e}"));
        assert!(body.get("runnersReady").is_none() && body.get("startAt").is_none());
    }
}
