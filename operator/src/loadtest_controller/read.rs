//! What a LoadTest reconcile reads: the LoadTest and its Job fresh, its OutboxSystem,
//! and whether the runner's ServiceAccount is there.

use k8s_openapi::api::batch::v1::Job;
use k8s_openapi::api::core::v1::ServiceAccount;
use kube::Api;

use super::decision::never_had_a_job;
use crate::context::Context;
use crate::crd::{LoadTest, LoadTestStatus, OutboxSystem};
use crate::error::{Error, Result};
use crate::runner_job::job_name;

/// A LoadTest as the API server has it now, with its status and its runner Job.
pub(super) struct Fresh {
    pub(super) lt: LoadTest,
    pub(super) current: LoadTestStatus,
    pub(super) job: Option<Job>,
}

/// Reads the LoadTest `name` and its Job (`None`: the LoadTest is gone). The cache may
/// lag behind the runner's last status write: the reconcile decides on a fresh read.
pub(super) async fn read_fresh(
    ctx: &Context,
    name: &str,
    namespace: &str,
) -> Result<Option<Fresh>> {
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
pub(super) async fn read_system(
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
pub(super) async fn runner_account_found(
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
