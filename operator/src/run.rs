//! Runs both controllers until shutdown.

use std::future::Future;
use std::sync::Arc;

use futures::StreamExt;
use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::batch::v1::Job;
use k8s_openapi::api::core::v1::{ConfigMap, Service};
use k8s_openapi::api::policy::v1::PodDisruptionBudget;
use kube::api::ListParams;
use kube::runtime::controller::Action;
use kube::runtime::reflector::ObjectRef;
use kube::runtime::{watcher, Controller};
use kube::{Api, Client, Resource, ResourceExt};
use tracing::{info, warn};

use crate::context::Context;
use crate::crd::{LoadTest, OutboxSystem};
use crate::error::{Error, Result};
use crate::{loadtest_controller, system_controller};

/// Which namespaces the operator watches.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Scope {
    /// Every namespace.
    All,
    /// One namespace.
    Namespace(String),
}

impl Scope {
    fn api<K>(&self, client: &Client) -> Api<K>
    where
        K: kube::Resource<Scope = k8s_openapi::NamespaceResourceScope>,
        K::DynamicType: Default,
    {
        match self {
            Scope::All => Api::all(client.clone()),
            Scope::Namespace(ns) => Api::namespaced(client.clone(), ns),
        }
    }
}

/// Fails with installation instructions when the CRDs are not installed.
pub async fn check_crds_installed(client: &Client, scope: &Scope) -> Result<()> {
    let systems: Api<OutboxSystem> = scope.api(client);
    let loadtests: Api<LoadTest> = scope.api(client);
    let probe = ListParams::default().limit(1);
    for result in [
        systems.list(&probe).await.map(|_| ()),
        loadtests.list(&probe).await.map(|_| ()),
    ] {
        if let Err(source) = result {
            let missing = matches!(&source, kube::Error::Api(s) if s.code == 404);
            let action = if missing {
                "the CRDs outboxsystems.outbox.dev and loadtests.outbox.dev are not installed; install them with `kubectl apply --server-side -f crds/` (or `helm install` the chart, which carries them)".to_string()
            } else {
                "checking that the CRDs are installed".to_string()
            };
            return Err(Error::Kube { action, source });
        }
    }
    Ok(())
}

/// Runs the OutboxSystem and LoadTest controllers until `shutdown` resolves: check the
/// CRDs → start both controllers, each reconcile behind the leadership gate
/// (`when_leading`) → stop both on `shutdown`.
pub async fn run(
    ctx: Context,
    scope: Scope,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<()> {
    check_crds_installed(&ctx.client, &scope).await?;
    let ctx = Arc::new(ctx);
    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    let systems = outbox_system_controller(&scope, ctx.clone(), stopped(stop_rx.clone()));
    let loadtests = load_test_controller(&scope, ctx, stopped(stop_rx));
    tokio::spawn(async move {
        shutdown.await;
        info!("shutting down the controllers");
        if stop_tx.send(true).is_err() {
            warn!("controllers already stopped");
        }
    });
    info!(?scope, "controllers running");
    futures::join!(systems, loadtests);
    info!("controllers stopped");
    Ok(())
}

/// Resolves once `rx` says stop (or its sender is gone).
async fn stopped(mut rx: tokio::sync::watch::Receiver<bool>) {
    while !*rx.borrow_and_update() {
        if rx.changed().await.is_err() {
            break;
        }
    }
}

/// The leadership gate of both controllers, held here once: while leader election says
/// this replica's leadership has lapsed (a renewal missed its deadline), another
/// replica may lead by now and the process is on its way out, so `reconcile` is not
/// run and the object waits for a change. Otherwise `reconcile` runs.
async fn when_leading<K, F, Fut>(object: Arc<K>, ctx: Arc<Context>, reconcile: F) -> Result<Action>
where
    K: Resource<DynamicType = ()>,
    F: FnOnce(Arc<K>, Arc<Context>) -> Fut,
    Fut: Future<Output = Result<Action>>,
{
    if !ctx.may_act() {
        warn!(
            kind = %K::kind(&()),
            name = %object.name_any(),
            namespace = object.namespace().unwrap_or_default(),
            "not leading any more; not reconciling"
        );
        return Ok(Action::await_change());
    }
    reconcile(object, ctx).await
}

/// The watch on a kind of children: only objects the operator made (its label), so that
/// on a big cluster the API server sends neither the other Deployments, Services,
/// ConfigMaps and Jobs nor their changes (and `owns` watches metadata only).
fn children_watch() -> watcher::Config {
    watcher::Config::default()
        .any_semantic()
        .labels(&outbox_contract::labels::operator_children())
}

/// The OutboxSystem controller: reconciles on changes of the systems and of the
/// Deployments, Services, ConfigMaps and PodDisruptionBudgets they own.
fn outbox_system_controller(
    scope: &Scope,
    ctx: Arc<Context>,
    stop: impl Future<Output = ()> + Send + Sync + 'static,
) -> impl Future<Output = ()> {
    let client = ctx.client.clone();
    let config = watcher::Config::default().any_semantic();
    Controller::new(scope.api::<OutboxSystem>(&client), config)
        .owns(scope.api::<Deployment>(&client), children_watch())
        .owns(scope.api::<Service>(&client), children_watch())
        .owns(scope.api::<ConfigMap>(&client), children_watch())
        .owns(scope.api::<PodDisruptionBudget>(&client), children_watch())
        .graceful_shutdown_on(stop)
        .run(
            |system, ctx| when_leading(system, ctx, system_controller::reconcile),
            system_controller::error_policy,
            ctx,
        )
        .for_each(|result| async move {
            match result {
                Ok((object, _)) => tracing::debug!(outboxsystem = %object.name, "reconciled"),
                Err(error) => tracing::debug!(%error, "OutboxSystem controller"),
            }
        })
}

/// The LoadTest controller: reconciles on changes of the LoadTests and their Jobs, and
/// of the OutboxSystem a LoadTest names. Its store of LoadTests also serves their
/// results on `/metrics`. The Jobs' watch is of metadata only, yet the API server sends
/// it every change of a Job, of its status too (each moves `resourceVersion`), and no
/// predicate filters them out: so a Job's `status.ready` changing wakes its LoadTest,
/// whose `runnersReady` and `startAt` follow it.
fn load_test_controller(
    scope: &Scope,
    ctx: Arc<Context>,
    stop: impl Future<Output = ()> + Send + Sync + 'static,
) -> impl Future<Output = ()> {
    let client = ctx.client.clone();
    let config = watcher::Config::default().any_semantic();
    let controller = Controller::new(scope.api::<LoadTest>(&client), config.clone());
    let loadtest_store = controller.store();
    ctx.metrics.serve_loadtests(loadtest_store.clone());
    controller
        .owns(scope.api::<Job>(&client), children_watch())
        // A LoadTest waiting for its OutboxSystem starts as soon as the system appears.
        .watches(scope.api::<OutboxSystem>(&client), config, move |system| {
            let namespace = system.namespace();
            let name = system.name_any();
            loadtest_store
                .state()
                .into_iter()
                .filter(|lt| lt.namespace() == namespace && lt.spec.system_ref.name == name)
                .map(|lt| ObjectRef::from_obj(&*lt))
                .collect::<Vec<_>>()
        })
        .graceful_shutdown_on(stop)
        .run(
            |loadtest, ctx| when_leading(loadtest, ctx, loadtest_controller::reconcile),
            loadtest_controller::error_policy,
            ctx,
        )
        .for_each(|result| async move {
            match result {
                Ok((object, _)) => tracing::debug!(loadtest = %object.name, "reconciled"),
                Err(error) => tracing::debug!(%error, "LoadTest controller"),
            }
        })
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicBool, Ordering};
    use std::time::Duration;

    use k8s_openapi::api::core::v1::ConfigMap;
    use kube::api::ObjectMeta;

    use super::*;
    use crate::leader::{Elector, LeaseSettings};
    use crate::metrics::Metrics;
    use crate::Settings;

    /// A context whose client points at nothing: the gate must decide without it.
    fn context(elect: bool) -> Arc<Context> {
        let config = kube::Config::new("http://127.0.0.1:9".parse().expect("a URL"));
        let client = Client::try_from(config).expect("a client");
        let elector = elect.then(|| {
            Arc::new(Elector::new(
                client.clone(),
                LeaseSettings {
                    namespace: "operators".into(),
                    name: "outbox-operator".into(),
                    identity: "replica-a".into(),
                    lease_duration: Duration::from_secs(15),
                    renew_deadline: Duration::from_secs(10),
                },
            ))
        });
        Arc::new(Context::new(client, Metrics::default(), Settings::default()).with_leader(elector))
    }

    fn object() -> Arc<ConfigMap> {
        Arc::new(ConfigMap {
            metadata: ObjectMeta {
                name: Some("demo".into()),
                namespace: Some("team-a".into()),
                ..ObjectMeta::default()
            },
            ..ConfigMap::default()
        })
    }

    /// Runs `when_leading` with a reconcile that records that it ran.
    async fn gate(ctx: Arc<Context>) -> (Action, bool) {
        let ran = Arc::new(AtomicBool::new(false));
        let flag = ran.clone();
        let action = when_leading(object(), ctx, |_, _| async move {
            flag.store(true, Ordering::SeqCst);
            Ok(Action::requeue(Duration::from_secs(7)))
        })
        .await
        .expect("the gate itself never fails");
        (action, ran.load(Ordering::SeqCst))
    }

    #[tokio::test]
    async fn a_replica_that_does_not_lead_does_not_reconcile_and_waits_for_a_change() {
        // A candidate that never held the Lease, as one whose renewal missed its deadline.
        let (action, ran) = gate(context(true)).await;
        assert!(!ran, "the reconcile ran without leadership");
        assert_eq!(action, Action::await_change());
    }

    #[tokio::test]
    async fn without_leader_election_every_reconcile_runs_and_keeps_its_action() {
        let (action, ran) = gate(context(false)).await;
        assert!(ran);
        assert_eq!(action, Action::requeue(Duration::from_secs(7)));
    }
}
