//! The OutboxSystem reconciler. `reconcile` reads as the pipeline's steps, each step a
//! module of this folder:
//!
//! 1. read the system fresh (`read_fresh`, here);
//! 2. `gate`: everything before anything is applied, in order: the spec valid and its
//!    images allowed, the Kafka client-settings Secret read, Kafka reached with the
//!    operator's own client and its `cluster.id` read (`kafka_reach`), the topic not
//!    another system's on that cluster (`topic_holder`), one database session that
//!    claims the outbox schema (`database`), not paused; a refusal is written into
//!    status and announced (`refusal`);
//! 3. `children`: built pure (`crate::workloads`), applied server-side, the keys of the
//!    system's ConfigMap the operator did not set removed, children no longer wanted
//!    deleted; the groups' KEDA ScaledObjects with them, once `autoscalers` found out
//!    whether KEDA can scale this system;
//! 4. `topic`: created or adjusted where the operator may (`crate::topic_ownership`);
//! 5. `observe`: pods ready, consumer lag, the backlog (on the gate's database session);
//! 6. `status`: computed pure (`crate::system_status`), its changed conditions
//!    announced as Events, written.
//!
//! On deletion the topic finalizer runs `cleanup`. Each step's decisions are pure
//! functions, unit-tested in `<step>_tests.rs` beside it.

mod autoscalers;
mod children;
mod cleanup;
mod database;
mod gate;
mod kafka_reach;
mod observe;
mod refusal;
mod replica_handover;
mod status;
mod topic;
mod topic_holder;

use std::sync::Arc;

use kube::runtime::controller::Action;
use kube::runtime::finalizer::{finalizer, Event as Finalizer};
use kube::{Api, ResourceExt};
use tracing::{instrument, warn};

use crate::context::Context;
use crate::crd::OutboxSystem;
use crate::error::{Error, Result};

use autoscalers::find_keda;
use children::apply_children;
use cleanup::cleanup;
use gate::{gate, Gate};
use observe::observe;
use status::write_status;
use topic::topic_step;

pub use cleanup::SKIP_TOPIC_DELETION_ANNOTATION;

/// Finalizer guarding the Kafka topic.
pub const TOPIC_FINALIZER: &str = "outbox.dev/topic";

/// Controller name in metrics.
pub const CONTROLLER: &str = "outboxsystem";

/// Reconciles one OutboxSystem through the topic finalizer: `apply` to a live system,
/// `cleanup` of a deleted one. The controller in `run` calls it only while this
/// replica may act (`run::when_leading`, the leadership gate of both controllers).
#[instrument(skip_all, fields(outboxsystem = %system.name_any(), namespace = system.namespace().unwrap_or_default()))]
pub async fn reconcile(system: Arc<OutboxSystem>, ctx: Arc<Context>) -> Result<Action> {
    let _timer = ctx.metrics.reconcile_started(CONTROLLER);
    let namespace = system
        .namespace()
        .ok_or(Error::MissingObjectKey("metadata.namespace"))?;
    let api: Api<OutboxSystem> = Api::namespaced(ctx.client.clone(), &namespace);
    finalizer(&api, TOPIC_FINALIZER, system, |event| async move {
        match event {
            Finalizer::Apply(system) => apply(system, ctx).await,
            Finalizer::Cleanup(system) => cleanup(system, ctx).await,
        }
    })
    .await
    .map_err(|e| Error::Finalizer {
        source: Box::new(e),
    })
}

/// Logs and counts a failed reconcile; waits for a spec change when a retry cannot
/// help, backs off otherwise.
pub fn error_policy(system: Arc<OutboxSystem>, error: &Error, ctx: Arc<Context>) -> Action {
    ctx.metrics.reconcile_failed(CONTROLLER, error);
    if error.is_permanent() {
        warn!(outboxsystem = %system.name_any(), %error, "reconcile failed; waiting for a spec change");
        Action::await_change()
    } else {
        warn!(outboxsystem = %system.name_any(), %error, "reconcile failed; retrying");
        Action::requeue(std::time::Duration::from_secs(15))
    }
}

/// Reconciles a live system as its steps: read it fresh → gate (validate, topic and
/// schema not another system's, not paused) → apply the children (built pure) → the
/// topic → observe → status. Each step is a module of this folder.
async fn apply(cached: Arc<OutboxSystem>, ctx: Arc<Context>) -> Result<Action> {
    let Some((system, namespace)) = read_fresh(&ctx, &cached).await? else {
        return Ok(Action::await_change());
    };
    let current = system.status.clone().unwrap_or_default();
    let (database, kafka, client_settings) = match gate(&ctx, &system, &namespace, &current).await?
    {
        Gate::Go {
            database,
            kafka,
            client_settings,
        } => (database, kafka, client_settings),
        Gate::Stop(action) => return Ok(action),
    };
    let setting_keys: Vec<String> = client_settings.keys().cloned().collect();
    let keda = find_keda(&ctx, &client_settings).await?;
    let applied = apply_children(&ctx, &system, &namespace, &setting_keys, keda).await?;
    let (topic, admin) = topic_step(&ctx, &system, *kafka).await;
    let observation = observe(&ctx, &system, &topic, admin.as_ref(), &database, &applied).await;
    write_status(&ctx, &system, &namespace, &current, &topic, &observation).await?;
    if let Some(error) = topic.error {
        // Status says what is wrong; back off through the error policy.
        return Err(Error::TopicNotReconciled {
            topic: system.spec.topic.name.clone(),
            message: error,
        });
    }
    Ok(Action::requeue(ctx.settings.status_refresh))
}

/// The system as the API server has it now (`None`: gone or being deleted, so nothing
/// to apply), with its namespace.
async fn read_fresh(
    ctx: &Context,
    cached: &OutboxSystem,
) -> Result<Option<(OutboxSystem, String)>> {
    let name = cached.name_any();
    let namespace = cached
        .namespace()
        .ok_or(Error::MissingObjectKey("metadata.namespace"))?;
    // The watch cache can lag behind this operator's own last status write; deciding on
    // a stale status would move lastTransitionTime and write again. Read it fresh.
    let api: Api<OutboxSystem> = Api::namespaced(ctx.client.clone(), &namespace);
    let Some(system) = api
        .get_opt(&name)
        .await
        .map_err(Error::kube(format!("reading OutboxSystem {name}")))?
    else {
        return Ok(None);
    };
    if system.metadata.deletion_timestamp.is_some() {
        // Cleanup runs on the next event.
        return Ok(None);
    }
    Ok(Some((system, namespace)))
}
