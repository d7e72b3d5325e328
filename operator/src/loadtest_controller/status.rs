//! Writing the operator's part of a LoadTest's status (server-side apply; the runner
//! writes its own part).

use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, Time};
use k8s_openapi::jiff::Timestamp;
use kube::{Api, ResourceExt};

use super::OperatorStatus;
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
