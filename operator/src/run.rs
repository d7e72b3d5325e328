//! Runs both controllers until shutdown.

use std::future::Future;
use std::sync::Arc;

use futures::StreamExt;
use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::batch::v1::Job;
use k8s_openapi::api::core::v1::{ConfigMap, Service};
use kube::api::ListParams;
use kube::runtime::reflector::ObjectRef;
use kube::runtime::{watcher, Controller};
use kube::{Api, Client, ResourceExt};
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

/// Runs the OutboxSystem and LoadTest controllers until `shutdown` resolves.
pub async fn run(
    ctx: Context,
    scope: Scope,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<()> {
    check_crds_installed(&ctx.client, &scope).await?;
    let ctx = Arc::new(ctx);
    let client = ctx.client.clone();
    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    let wait = |mut rx: tokio::sync::watch::Receiver<bool>| async move {
        while !*rx.borrow_and_update() {
            if rx.changed().await.is_err() {
                break;
            }
        }
    };
    let config = watcher::Config::default().any_semantic();

    let systems = Controller::new(scope.api::<OutboxSystem>(&client), config.clone())
        .owns(scope.api::<Deployment>(&client), config.clone())
        .owns(scope.api::<Service>(&client), config.clone())
        .owns(scope.api::<ConfigMap>(&client), config.clone())
        .graceful_shutdown_on(wait(stop_rx.clone()))
        .run(
            system_controller::reconcile,
            system_controller::error_policy,
            ctx.clone(),
        )
        .for_each(|result| async move {
            match result {
                Ok((object, _)) => tracing::debug!(outboxsystem = %object.name, "reconciled"),
                Err(error) => tracing::debug!(%error, "OutboxSystem controller"),
            }
        });
    let loadtest_controller = Controller::new(scope.api::<LoadTest>(&client), config.clone());
    let loadtest_store = loadtest_controller.store();
    let loadtests = loadtest_controller
        .owns(scope.api::<Job>(&client), config.clone())
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
        .graceful_shutdown_on(wait(stop_rx))
        .run(
            loadtest_controller::reconcile,
            loadtest_controller::error_policy,
            ctx,
        )
        .for_each(|result| async move {
            match result {
                Ok((object, _)) => tracing::debug!(loadtest = %object.name, "reconciled"),
                Err(error) => tracing::debug!(%error, "LoadTest controller"),
            }
        });
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
