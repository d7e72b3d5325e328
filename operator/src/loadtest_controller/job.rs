//! The one runner Job of a LoadTest, created with what the runner may write.

use k8s_openapi::api::batch::v1::Job;
use k8s_openapi::api::core::v1::ConfigMap;
use k8s_openapi::api::rbac::v1::{Role, RoleBinding};
use kube::runtime::events::EventType;
use kube::{Api, Resource, ResourceExt};
use tracing::info;

use crate::context::{publish_event, Context};
use crate::crd::{LoadTest, OutboxSystem};
use crate::error::{Error, Result};
use crate::runner_job::{
    job_name, report_config_map, report_writer_binding, report_writer_role, runner_job,
    RunnerParams,
};
use crate::server_side_apply::server_side_apply;

/// Creates the one runner Job (built pure by [`runner_job`]), after the report
/// ConfigMap and the runner's Role on it, and announces it.
/// Server-side apply with the operator's field manager is idempotent, and the
/// deterministic name means a second LoadTest run cannot exist.
pub(super) async fn create_job(
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
