//! The OutboxSystem reconciler: read fresh -> gate (validate, topic and schema not
//! another system's, not paused) -> build the children (pure) and apply them -> topic
//! -> observe -> status; on deletion, the topic finalizer's cleanup. Each step is a
//! function, its decisions pure functions with unit tests.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;

use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::{ConfigMap, Secret, Service};
use k8s_openapi::api::policy::v1::PodDisruptionBudget;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, Time};
use k8s_openapi::jiff::Timestamp;
use k8s_openapi::ByteString;
use kube::api::{DeleteParams, ListParams, Patch, PatchParams};
use kube::runtime::controller::Action;
use kube::runtime::events::EventType;
use kube::runtime::finalizer::{finalizer, Event as Finalizer};
use kube::{Api, ResourceExt};
use tracing::{info, instrument, warn};

use crate::backlog::{BacklogUnavailable, DatabaseSession};
use crate::conditions;
use crate::context::{publish_event, Context};
use crate::crd::{
    DeletionPolicy, OutboxSystem, OutboxSystemSpec, OutboxSystemStatus, PartitionRaise, TopicStatus,
};
use crate::error::{Error, Result};
use crate::host_names::{qualify_bootstrap_servers, qualify_database_url};
use crate::image_policy::{self, ImagePolicy};
use crate::kafka::{self, client_config, plan_topic, KafkaAdmin, ObservedTopic, TopicPlan};
use crate::postgres_tls::{CaSource, TlsDefaults};
use crate::schema_owner::{self, Claim};
use crate::server_side_apply::{apply_status, server_side_apply};
use crate::system_status::{self, types, GroupObservation, Observation, TopicOutcome};
use crate::topic_ownership::{self, Ownership, TopicAuthority};
use crate::validation::validate;
use crate::workloads;

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
/// topic → observe → status. Each step is a function below.
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
    let (producer, consumers) = apply_children(&ctx, &system, &namespace, &setting_keys).await?;
    let (topic, admin) = topic_step(&ctx, &system, *kafka).await;
    let observation = observe(
        &ctx,
        &system,
        &topic,
        admin.as_ref(),
        &database,
        &producer,
        &consumers,
    )
    .await;
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

/// Whether the reconcile goes on: with the database session it opened (or why there is
/// none) and the Kafka it reached, or stopped with the action to take.
enum Gate {
    Go {
        database: std::result::Result<DatabaseSession, BacklogUnavailable>,
        kafka: Box<KafkaReach>,
        /// The Kafka client-settings Secret's data (empty without one).
        client_settings: BTreeMap<String, ByteString>,
    },
    Stop(Action),
}

/// The system's Kafka as reached at the start of a reconcile.
enum KafkaReach {
    /// The admin client and the cluster's `cluster.id`.
    Reached {
        admin: KafkaAdmin,
        cluster_id: String,
    },
    /// What kept the operator from the cluster id (with the admin client, if it got
    /// that far).
    NotReached {
        admin: Option<KafkaAdmin>,
        reason: Option<&'static str>,
        message: String,
    },
}

impl KafkaReach {
    fn cluster_id(&self) -> Option<&str> {
        match self {
            KafkaReach::Reached { cluster_id, .. } => Some(cluster_id),
            KafkaReach::NotReached { .. } => None,
        }
    }
}

/// Connects to the system's Kafka with the operator's own client (the client settings
/// on its allow list) and reads the cluster's id. Never fails: what went wrong is in
/// the answer.
async fn connect_kafka(
    namespace: &str,
    spec: &OutboxSystemSpec,
    client_settings: &BTreeMap<String, ByteString>,
) -> KafkaReach {
    let not_reached = |admin, e: Error| KafkaReach::NotReached {
        admin,
        reason: topic_settings_error_reason(&e),
        message: e.to_string(),
    };
    let secret = spec
        .kafka
        .client_settings_secret_ref
        .as_ref()
        .map(|r| r.name.as_str())
        .unwrap_or_default();
    let properties = match operator_client_properties(
        namespace,
        secret,
        kafka::client_properties(client_settings),
    ) {
        Ok(properties) => properties,
        Err(e) => return not_reached(None, e),
    };
    let bootstrap = qualify_bootstrap_servers(&spec.kafka.bootstrap_servers, namespace);
    let admin = match KafkaAdmin::new(client_config(&bootstrap, &properties)) {
        Ok(admin) => admin,
        Err(e) => return not_reached(None, e),
    };
    match admin.cluster_id().await {
        Ok(cluster_id) => KafkaReach::Reached { admin, cluster_id },
        Err(e) => not_reached(Some(admin), e),
    }
}

/// The checks before anything is applied, in order: a valid spec → reach Kafka → a
/// topic no other system holds on that cluster → open the database session and claim
/// the schema → not paused. A refusal (each built pure) is written into status with an
/// Event; a pause too.
async fn gate(
    ctx: &Context,
    system: &OutboxSystem,
    namespace: &str,
    current: &OutboxSystemStatus,
) -> Result<Gate> {
    if let Some(refusal) = invalid_spec(&system.name_any(), &system.spec) {
        let message = refusal.message.clone();
        report_refusal(ctx, system, current, refusal, Announce::Always).await?;
        return Err(Error::InvalidSpec(message));
    }
    if let Some(refusal) = image_not_allowed(&ctx.settings.image_policy, &system.spec) {
        let message = refusal.message.clone();
        warn!(%message, "image not allowed; nothing applied");
        report_refusal(ctx, system, current, refusal, Announce::WhenChanged).await?;
        return Err(Error::InvalidSpec(message));
    }
    let Some(client_settings) = client_settings(ctx, system, namespace, current).await? else {
        // Its workers could not start; those running are left as they are.
        return Ok(Gate::Stop(Action::requeue(std::time::Duration::from_secs(
            15,
        ))));
    };
    let kafka = connect_kafka(namespace, &system.spec, &client_settings).await;
    if let Some(other) = topic_taken_by(ctx, system, namespace, kafka.cluster_id()).await? {
        let refusal = topic_in_use(&system.spec, &other);
        report_refusal(ctx, system, current, refusal, Announce::WhenChanged).await?;
        return Ok(Gate::Stop(Action::requeue(std::time::Duration::from_secs(
            60,
        ))));
    }
    // One session for the schema claim and the backlog; unreachable, it is reported in
    // BacklogObserved and the workers check the claim themselves.
    let mut database = open_database(ctx, namespace, &system.spec).await;
    if let Ok(session) = database.as_mut() {
        if let Some(claim) = schema_taken_by(ctx, system, namespace, session).await {
            let refusal = schema_in_use(&claim);
            report_refusal(ctx, system, current, refusal, Announce::WhenChanged).await?;
            // Soon again: the holder's deletion is not an event of this system.
            return Ok(Gate::Stop(Action::requeue(std::time::Duration::from_secs(
                20,
            ))));
        }
    }
    if system.spec.paused {
        record_pause(ctx, system, namespace, current).await?;
        return Ok(Gate::Stop(Action::await_change()));
    }
    Ok(Gate::Go {
        database,
        kafka: Box::new(kafka),
        client_settings,
    })
}

/// The refusal of a spec that fails validation (pure, no client).
fn invalid_spec(name: &str, spec: &OutboxSystemSpec) -> Option<Refusal> {
    let problems = validate(name, spec);
    (!problems.is_empty()).then(|| Refusal {
        reason: "InvalidSpec",
        message: problems.join("; "),
        conditions: &[types::READY],
    })
}

/// The refusal of a spec naming an image outside the operator's allowed repositories
/// (pure): nothing of the system is applied.
fn image_not_allowed(policy: &ImagePolicy, spec: &OutboxSystemSpec) -> Option<Refusal> {
    let refused = image_policy::system_images_not_allowed(policy, spec);
    (!refused.is_empty()).then(|| Refusal {
        reason: image_policy::REASON,
        message: refused
            .into_iter()
            .map(|r| r.message)
            .collect::<Vec<_>>()
            .join("; "),
        conditions: &[types::READY],
    })
}

/// The refusal of a second system on the topic of another (`namespace/name`) on the
/// same Kafka cluster (pure): the later one is refused, so that neither consumes the
/// other's messages nor deletes the other's topic.
fn topic_in_use(spec: &OutboxSystemSpec, other: &str) -> Refusal {
    Refusal {
        reason: "TopicInUse",
        message: format!(
            "topic {} on {} is already used by OutboxSystem {other}: two systems on one topic consume each other's messages; give this one its own spec.topic.name",
            spec.topic.name, spec.kafka.bootstrap_servers
        ),
        conditions: &[types::READY, types::TOPIC_READY],
    }
}

/// The refusal of a system whose outbox schema another system holds (pure).
fn schema_in_use(claim: &Claim) -> Refusal {
    Refusal {
        reason: "DatabaseInUse",
        message: format!(
            "the outbox schema {} is held by OutboxSystem {}: two systems on one schema share the relay lock and the consumer ledgers; give this one its own database or schema (search_path in the URL of spec.database.urlSecretRef)",
            claim.schema, claim.holder
        ),
        conditions: &[types::READY],
    }
}

/// Writes `Paused` into status, with an Event when the system was not paused before.
async fn record_pause(
    ctx: &Context,
    system: &OutboxSystem,
    namespace: &str,
    current: &OutboxSystemStatus,
) -> Result<()> {
    let conditions = conditions::merge(
        &current.conditions,
        &[conditions::Desired::yes(
            types::PAUSED,
            "Paused",
            "spec.paused is true: the operator leaves the topic and workloads as they are",
        )],
        system.metadata.generation,
        Timestamp::now(),
    );
    let was_paused =
        conditions::find(&current.conditions, types::PAUSED).is_some_and(|c| c.status == "True");
    let mut status = current.clone();
    status.observed_generation = system.metadata.generation;
    replace_conditions(&mut status.conditions, conditions);
    patch_status(ctx, namespace, &system.name_any(), &status).await?;
    if !was_paused {
        publish_event(
            ctx,
            system,
            EventType::Normal,
            "Paused",
            "reconciliation paused".into(),
        )
        .await;
    }
    Ok(())
}

/// The data of the Kafka client-settings Secret (empty without one); `None` while the
/// Secret is missing, after that is written into status (TopicReady and Ready False,
/// `KafkaSettingsSecretMissing`) and announced once: nothing is applied then, since the
/// workers' environment names the Secret's keys.
async fn client_settings(
    ctx: &Context,
    system: &OutboxSystem,
    namespace: &str,
    current: &OutboxSystemStatus,
) -> Result<Option<BTreeMap<String, ByteString>>> {
    match read_client_settings(ctx, namespace, &system.spec).await {
        Ok(data) => Ok(Some(data)),
        Err(error @ Error::Secret { .. }) => {
            let refusal = Refusal {
                reason: "KafkaSettingsSecretMissing",
                message: error.to_string(),
                conditions: &[types::READY, types::TOPIC_READY],
            };
            report_refusal(ctx, system, current, refusal, Announce::WhenChanged).await?;
            Ok(None)
        }
        Err(error) => Err(error),
    }
}

/// Builds the children (pure) and applies them; returns the Deployments as applied.
/// `client_setting_keys`: the keys of the Kafka client-settings Secret.
async fn apply_children(
    ctx: &Context,
    system: &OutboxSystem,
    namespace: &str,
    client_setting_keys: &[String],
) -> Result<(Deployment, Vec<Deployment>)> {
    let spec = &system.spec;
    let owner = workloads::owner_of(system).ok_or(Error::MissingObjectKey("metadata.uid"))?;
    let children = workloads::build(
        &owner,
        spec,
        &ctx.settings.worker_image,
        client_setting_keys,
    );
    let client = ctx.client.clone();
    let deployments: Api<Deployment> = Api::namespaced(client.clone(), namespace);
    let services: Api<Service> = Api::namespaced(client.clone(), namespace);
    let config_maps: Api<ConfigMap> = Api::namespaced(client.clone(), namespace);
    let applied = server_side_apply(&config_maps, &children.config_map).await?;
    remove_foreign_config_keys(ctx, system, &config_maps, &applied, &children.config_map).await?;
    let producer = server_side_apply(&deployments, &children.producer).await?;
    server_side_apply(&services, &children.producer_service).await?;
    let mut consumers = Vec::new();
    for deployment in &children.consumers {
        consumers.push(server_side_apply(&deployments, deployment).await?);
    }
    for service in &children.consumer_services {
        server_side_apply(&services, service).await?;
    }
    let budgets: Api<PodDisruptionBudget> = Api::namespaced(client.clone(), namespace);
    for budget in &children.budgets {
        server_side_apply(&budgets, budget).await?;
    }
    prune_removed_groups(ctx, system, namespace, spec).await?;
    prune_unwanted_budgets(ctx, system, namespace, &children.budgets).await?;

    Ok((producer, consumers))
}

/// Keys of the system's ConfigMap as applied that the operator did not set (pure):
/// `data` keys, then `binaryData` keys, each sorted.
fn foreign_config_keys(applied: &ConfigMap, desired: &ConfigMap) -> (Vec<String>, Vec<String>) {
    fn extra<V, W>(
        applied: &Option<BTreeMap<String, V>>,
        desired: &Option<BTreeMap<String, W>>,
    ) -> Vec<String> {
        applied
            .iter()
            .flatten()
            .map(|(key, _)| key)
            .filter(|key| !desired.as_ref().is_some_and(|d| d.contains_key(*key)))
            .cloned()
            .collect()
    }
    (
        extra(&applied.data, &desired.data),
        extra(&applied.binary_data, &desired.binary_data),
    )
}

/// The JSON merge patch that removes `data` keys `data` and `binaryData` keys `binary`
/// (pure).
fn removal_patch(data: &[String], binary: &[String]) -> serde_json::Value {
    let nulls = |keys: &[String]| {
        keys.iter()
            .map(|k| (k.clone(), serde_json::Value::Null))
            .collect::<serde_json::Map<_, _>>()
    };
    let mut patch = serde_json::Map::new();
    if !data.is_empty() {
        patch.insert("data".into(), nulls(data).into());
    }
    if !binary.is_empty() {
        patch.insert("binaryData".into(), nulls(binary).into());
    }
    patch.into()
}

/// Removes every key of the system's ConfigMap the operator did not set: the workers
/// import the whole ConfigMap as their environment, so a key added by anyone who may
/// patch ConfigMaps (`KAFKA_CLIENT_BOOTSTRAP_SERVERS`) would otherwise reach them at
/// their next start. Server-side apply alone keeps fields other managers own, hence
/// this patch after it; logged and announced with a Warning Event naming the keys.
async fn remove_foreign_config_keys(
    ctx: &Context,
    system: &OutboxSystem,
    config_maps: &Api<ConfigMap>,
    applied: &ConfigMap,
    desired: &ConfigMap,
) -> Result<()> {
    let (data, binary) = foreign_config_keys(applied, desired);
    if data.is_empty() && binary.is_empty() {
        return Ok(());
    }
    let name = desired.name_any();
    let keys = data
        .iter()
        .chain(&binary)
        .cloned()
        .collect::<Vec<_>>()
        .join(", ");
    warn!(config_map = %name, %keys, "removing keys the operator did not set");
    let params = PatchParams {
        field_manager: Some(crate::context::MANAGER.to_string()),
        ..PatchParams::default()
    };
    config_maps
        .patch(&name, &params, &Patch::Merge(removal_patch(&data, &binary)))
        .await
        .map_err(Error::kube(format!(
            "removing keys {keys} from ConfigMap {name}"
        )))?;
    publish_event(
        ctx,
        system,
        EventType::Warning,
        "ConfigKeysRemoved",
        format!("removed keys the operator did not set from ConfigMap {name}: {keys} (the operator owns every key of it)"),
    )
    .await;
    Ok(())
}

/// Reconciles the Kafka topic on the cluster reached; returns what happened and the
/// admin client, if any.
async fn topic_step(
    ctx: &Context,
    system: &OutboxSystem,
    kafka: KafkaReach,
) -> (TopicOutcome, Option<KafkaAdmin>) {
    match kafka {
        KafkaReach::Reached { admin, cluster_id } => {
            reconcile_topic(ctx, system, admin, cluster_id).await
        }
        KafkaReach::NotReached {
            admin,
            reason,
            message,
        } => (
            TopicOutcome {
                name: system.spec.topic.name.clone(),
                error_reason: reason,
                error: Some(message),
                ..TopicOutcome::default()
            },
            admin,
        ),
    }
}

/// The TopicReady reason of an error reading the Kafka client settings (pure).
fn topic_settings_error_reason(error: &Error) -> Option<&'static str> {
    match error {
        Error::Secret { .. } => Some("KafkaSettingsSecretMissing"),
        Error::KafkaClientSettingRefused { .. } => Some("KafkaClientSettingRefused"),
        _ => None,
    }
}

/// What the reconcile observed: pods ready, consumer lag (read by each group's Kafka
/// group id, shown under its declared name), the backlog.
async fn observe(
    ctx: &Context,
    system: &OutboxSystem,
    topic: &TopicOutcome,
    admin: Option<&KafkaAdmin>,
    database: &std::result::Result<DatabaseSession, BacklogUnavailable>,
    producer: &Deployment,
    consumers: &[Deployment],
) -> Observation {
    let spec = &system.spec;
    let kafka_group_ids: Vec<String> = spec
        .consumers
        .groups
        .iter()
        .map(|g| system.kafka_group_id(&g.name))
        .collect();
    let lags = match (admin, topic.observed.as_ref()) {
        (Some(admin), Some(found)) => {
            admin
                .consumer_lag(&spec.topic.name, found.partitions, &kafka_group_ids)
                .await
        }
        _ => BTreeMap::new(),
    };
    let ready = |d: &Deployment| {
        d.status
            .as_ref()
            .and_then(|s| s.ready_replicas)
            .unwrap_or(0)
    };
    Observation {
        topic: topic.clone(),
        producers: (ready(producer), spec.producers.replicas),
        groups: spec
            .consumers
            .groups
            .iter()
            .zip(consumers)
            .zip(kafka_group_ids)
            .map(|((g, d), kafka_group_id)| GroupObservation {
                name: g.name.clone(),
                ready: ready(d),
                desired: g.replicas,
                lag: lags.get(&kafka_group_id).copied().flatten(),
                kafka_group_id,
            })
            .collect(),
        backlog: match database {
            Ok(session) => session.backlog(ctx.settings.stall_after).await,
            Err(e) => Err(e.clone()),
        },
        stall_after: ctx.settings.stall_after,
    }
}

/// Writes the status as its steps: compute it from the observation (pure,
/// `system_status::compute`) → merge the conditions → announce the changed ones
/// ([`conditions_to_announce`], pure) → assemble the status ([`next_status`], pure)
/// → write it when it changed enough ([`status_needs_write`]).
async fn write_status(
    ctx: &Context,
    system: &OutboxSystem,
    namespace: &str,
    current: &OutboxSystemStatus,
    topic: &TopicOutcome,
    observation: &Observation,
) -> Result<()> {
    let now = Timestamp::now();
    let computed = system_status::compute(observation);
    let new_conditions = conditions::merge(
        &current.conditions,
        &computed.conditions,
        system.metadata.generation,
        now,
    );
    for (type_, changed) in conditions_to_announce(&current.conditions, &new_conditions) {
        let note = format!("{}={}: {}", changed.type_, changed.status, changed.message);
        publish_event(ctx, system, type_, &changed.reason, note).await;
    }
    let generation = system.metadata.generation;
    let status = next_status(generation, current, topic, computed, new_conditions, now);
    if status_needs_write(ctx, system, &status) {
        patch_status(ctx, namespace, &system.name_any(), &status).await?;
        if let (Some(uid), Ok(mut writes)) = (system.uid(), ctx.status_writes.lock()) {
            writes.insert(uid, std::time::Instant::now());
        }
    }
    Ok(())
}

/// The conditions whose change is news, with the type of their Event (pure): a
/// Warning for a bad state (False, or `Degraded` True), Normal otherwise. A good state
/// seen for the first time is not news, nor is `Paused` seen for the first time.
fn conditions_to_announce<'a>(
    before: &[Condition],
    after: &'a [Condition],
) -> Vec<(EventType, &'a Condition)> {
    conditions::changed(before, after)
        .into_iter()
        .filter_map(|changed| {
            let good = (changed.status == "True") != (changed.type_ == types::DEGRADED);
            let first = conditions::find(before, &changed.type_).is_none();
            if first && (good || changed.type_ == types::PAUSED) {
                return None;
            }
            let type_ = if good {
                EventType::Normal
            } else {
                EventType::Warning
            };
            Some((type_, changed))
        })
        .collect()
}

/// The status to write (pure): the computed fields and `conditions`, with what
/// `status.topic` keeps across reconciles ([`topic_record`]).
fn next_status(
    generation: Option<i64>,
    current: &OutboxSystemStatus,
    topic: &TopicOutcome,
    computed: system_status::ComputedStatus,
    conditions: Vec<Condition>,
    now: Timestamp,
) -> OutboxSystemStatus {
    OutboxSystemStatus {
        observed_generation: generation,
        conditions,
        topic: Some(topic_record(
            current.topic.as_ref(),
            topic,
            computed.topic,
            now,
        )),
        producers: Some(computed.producers),
        groups: computed.groups,
        groups_summary: Some(computed.groups_summary),
        backlog: computed.backlog,
    }
}

/// `status.topic` (pure): the computed fields, and what the operator remembers.
/// `createdByOperator` and `ownershipClusterId` change only with an ownership record
/// this look established (`topic.ownership`, decided by
/// [`topic_ownership::authority`]); `clusterId` is the cluster of the last look that
/// reached one. `lastPartitionRaise` is this reconcile's raise (at `now`), else the
/// last one.
fn topic_record(
    current: Option<&TopicStatus>,
    topic: &TopicOutcome,
    computed: TopicStatus,
    now: Timestamp,
) -> TopicStatus {
    let (created_by_operator, ownership_cluster_id) = match &topic.ownership {
        Some(record) => (record.created_by_operator, Some(record.cluster_id.clone())),
        None => (
            current.and_then(|t| t.created_by_operator),
            current.and_then(|t| t.ownership_cluster_id.clone()),
        ),
    };
    TopicStatus {
        created_by_operator,
        ownership_cluster_id,
        cluster_id: topic
            .cluster_id
            .clone()
            .or_else(|| current.and_then(|t| t.cluster_id.clone())),
        last_partition_raise: topic
            .raised
            .map(|(from, to)| PartitionRaise {
                from,
                to,
                time: Time(now),
            })
            .or_else(|| current.and_then(|t| t.last_partition_raise.clone())),
        ..computed
    }
}

/// Significant changes are written at once; changes of lag and backlog alone at most
/// once per refresh period.
fn status_needs_write(ctx: &Context, system: &OutboxSystem, status: &OutboxSystemStatus) -> bool {
    let Some(current) = system.status.as_ref() else {
        return true;
    };
    if current == status {
        return false;
    }
    if system_status::without_gauges(current) != system_status::without_gauges(status) {
        return true;
    }
    let last = system
        .uid()
        .and_then(|uid| ctx.status_writes.lock().ok()?.get(&uid).copied());
    last.is_none_or(|at| at.elapsed() >= ctx.settings.status_refresh)
}

fn replace_conditions(current: &mut Vec<Condition>, updated: Vec<Condition>) {
    for condition in updated {
        match current.iter_mut().find(|c| c.type_ == condition.type_) {
            Some(slot) => *slot = condition,
            None => current.push(condition),
        }
    }
}

async fn patch_status(
    ctx: &Context,
    namespace: &str,
    name: &str,
    status: &OutboxSystemStatus,
) -> Result<()> {
    let api: Api<OutboxSystem> = Api::namespaced(ctx.client.clone(), namespace);
    apply_status(&api, name, status).await
}

/// Whether `meta` names `system` as its controller.
fn controlled_by(
    system: &OutboxSystem,
    meta: &k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta,
) -> bool {
    let uid = system.uid();
    meta.owner_references
        .iter()
        .flatten()
        .any(|r| Some(&r.uid) == uid.as_ref() && r.controller == Some(true))
}

/// Deletes the system's PodDisruptionBudgets that are not `wanted`: those of groups no
/// longer in the spec and those switched off (`podDisruptionBudget.enabled: false`).
async fn prune_unwanted_budgets(
    ctx: &Context,
    system: &OutboxSystem,
    namespace: &str,
    wanted: &[PodDisruptionBudget],
) -> Result<()> {
    let selector =
        ListParams::default().labels(&outbox_contract::labels::workers_of(&system.name_any()));
    let budgets: Api<PodDisruptionBudget> = Api::namespaced(ctx.client.clone(), namespace);
    let found = budgets
        .list(&selector)
        .await
        .map_err(Error::kube("listing PodDisruptionBudgets"))?
        .items;
    for child in unwanted_children(system, &found, wanted) {
        info!(budget = %child, "deleting a PodDisruptionBudget no longer wanted");
        budgets
            .delete(&child, &DeleteParams::background())
            .await
            .map_err(Error::kube(format!("deleting PodDisruptionBudget {child}")))?;
        publish_event(
            ctx,
            system,
            EventType::Normal,
            "PodDisruptionBudgetRemoved",
            format!("deleted PodDisruptionBudget {child}"),
        )
        .await;
    }
    Ok(())
}

/// Names of the objects in `found` that `system` controls and that are not `wanted`
/// (pure): what pruning deletes. An object of the same name that another owner
/// controls, or nobody, is left alone.
fn unwanted_children<K: kube::Resource>(
    system: &OutboxSystem,
    found: &[K],
    wanted: &[K],
) -> Vec<String> {
    let wanted: BTreeSet<String> = wanted.iter().map(|k| k.name_any()).collect();
    found
        .iter()
        .filter(|k| controlled_by(system, k.meta()))
        .map(|k| k.name_any())
        .filter(|name| !wanted.contains(name))
        .collect()
}

/// Deletes consumer Deployments and Services of groups no longer in the spec.
async fn prune_removed_groups(
    ctx: &Context,
    system: &OutboxSystem,
    namespace: &str,
    spec: &OutboxSystemSpec,
) -> Result<()> {
    let name = system.name_any();
    let wanted: BTreeSet<String> = spec
        .consumers
        .groups
        .iter()
        .map(|g| workloads::consumer_name(&name, &g.name))
        .collect();
    let selector = ListParams::default().labels(&outbox_contract::labels::consumers_of(&name));
    let deployments: Api<Deployment> = Api::namespaced(ctx.client.clone(), namespace);
    for d in deployments
        .list(&selector)
        .await
        .map_err(Error::kube("listing consumer Deployments"))?
    {
        let child = d.name_any();
        if !wanted.contains(&child) && controlled_by(system, &d.metadata) {
            info!(deployment = %child, "deleting the Deployment of a removed consumer group");
            deployments
                .delete(&child, &DeleteParams::background())
                .await
                .map_err(Error::kube(format!("deleting Deployment {child}")))?;
            publish_event(
                ctx,
                system,
                EventType::Normal,
                "ConsumerGroupRemoved",
                format!("deleted Deployment {child}"),
            )
            .await;
        }
    }
    let services: Api<Service> = Api::namespaced(ctx.client.clone(), namespace);
    for s in services
        .list(&selector)
        .await
        .map_err(Error::kube("listing consumer Services"))?
    {
        let child = s.name_any();
        if !wanted.contains(&child) && controlled_by(system, &s.metadata) {
            services
                .delete(&child, &DeleteParams::background())
                .await
                .map_err(Error::kube(format!("deleting Service {child}")))?;
        }
    }
    Ok(())
}

/// The data of the Kafka client-settings Secret (empty without one; an error naming it
/// when it is missing).
async fn read_client_settings(
    ctx: &Context,
    namespace: &str,
    spec: &OutboxSystemSpec,
) -> Result<BTreeMap<String, ByteString>> {
    let Some(secret_ref) = &spec.kafka.client_settings_secret_ref else {
        return Ok(BTreeMap::new());
    };
    let secrets: Api<Secret> = Api::namespaced(ctx.client.clone(), namespace);
    let secret = secrets
        .get_opt(&secret_ref.name)
        .await
        .map_err(Error::kube(format!("reading Secret {}", secret_ref.name)))?
        .ok_or_else(|| Error::Secret {
            namespace: namespace.to_string(),
            name: secret_ref.name.clone(),
            problem: "not found (spec.kafka.clientSettingsSecretRef)".into(),
        })?;
    Ok(secret.data.unwrap_or_default())
}

/// The properties of the operator's own Kafka client (pure): the accepted ones, or an
/// error naming every refused key when there is one (the operator does not connect with
/// a part of the settings).
fn operator_client_properties(
    namespace: &str,
    secret: &str,
    properties: kafka::ClientProperties,
) -> Result<BTreeMap<String, String>> {
    if properties.refused.is_empty() {
        return Ok(properties.accepted);
    }
    let refused = properties
        .refused
        .iter()
        .map(|r| format!("{} ({})", r.key, r.property))
        .collect::<Vec<_>>()
        .join(", ");
    warn!(secret, %refused, "Kafka client settings refused for the operator's own client");
    Err(Error::KafkaClientSettingRefused {
        namespace: namespace.to_string(),
        name: secret.to_string(),
        refused,
        accepted: kafka::OPERATOR_CLIENT_PROPERTIES.join(", "),
    })
}

/// Creates or adjusts the topic as its steps: describe → may the operator change it
/// on this cluster ([`topic_ownership::authority`], pure) → plan (pure, `plan_topic`)
/// → change it ([`change_topic`]: a creation recorded before it happens) → announce
/// the change (built pure by [`topic_change`]) → read it back. Never fails the
/// reconcile on a Kafka problem, which goes into the outcome instead.
async fn reconcile_topic(
    ctx: &Context,
    system: &OutboxSystem,
    admin: KafkaAdmin,
    cluster_id: String,
) -> (TopicOutcome, Option<KafkaAdmin>) {
    let spec = &system.spec;
    let mut outcome = TopicOutcome {
        name: spec.topic.name.clone(),
        cluster_id: Some(cluster_id.clone()),
        ..TopicOutcome::default()
    };
    let observed = match admin.describe_topic(&spec.topic).await {
        Ok(observed) => observed,
        Err(e) => {
            outcome.error = Some(e.to_string());
            return (outcome, Some(admin));
        }
    };
    outcome.observed = observed.clone();
    let record = match topic_ownership::authority(system, &cluster_id, observed.is_some()) {
        TopicAuthority::Reconcile { record } => record,
        TopicAuthority::LeaveAlone { message } => {
            warn!(topic = %spec.topic.name, cluster = %cluster_id, "{message}");
            outcome.left_alone = Some(message);
            return (outcome, Some(admin));
        }
    };
    let plan = plan_topic(&spec.topic, observed.as_ref());
    outcome.conflicts = plan.conflicts.clone();
    outcome.ownership = if plan.create {
        Some(Ownership {
            created_by_operator: Some(true),
            cluster_id: cluster_id.clone(),
        })
    } else {
        record
    };
    let Some(change) = topic_change(spec, observed.as_ref(), &plan) else {
        return (outcome, Some(admin));
    };
    if let Err(error) =
        change_topic(ctx, system, &cluster_id, &admin, observed.as_ref(), &plan).await
    {
        outcome.error = Some(error);
        return (outcome, Some(admin));
    }
    outcome.raised = change.raised;
    announce_topic_change(ctx, system, &spec.topic.name, change).await;
    finish_topic(admin, spec, outcome).await
}

/// Carries out `plan`. A creation is recorded in status before the topic exists, so
/// that no failure after it can make a later look mistake the topic for one that was
/// there before. A failure to apply is announced with a Warning Event.
async fn change_topic(
    ctx: &Context,
    system: &OutboxSystem,
    cluster_id: &str,
    admin: &KafkaAdmin,
    observed: Option<&ObservedTopic>,
    plan: &TopicPlan,
) -> std::result::Result<(), String> {
    let spec = &system.spec;
    if plan.create {
        record_topic_created(ctx, system, &spec.topic.name, cluster_id)
            .await
            .map_err(|e| e.to_string())?;
    }
    if let Err(e) = admin.apply_plan(&spec.topic, observed, plan).await {
        publish_event(
            ctx,
            system,
            EventType::Warning,
            "TopicUpdateFailed",
            e.to_string(),
        )
        .await;
        return Err(e.to_string());
    }
    Ok(())
}

/// What a change of the topic is announced as.
#[derive(Debug, Clone, PartialEq)]
struct TopicChange {
    type_: EventType,
    reason: &'static str,
    note: String,
    /// `(from, to)` when the partitions are raised.
    raised: Option<(i32, i32)>,
}

/// The change `plan` makes to the topic, as it is announced (pure): None when it
/// changes nothing; else a creation, a raise of the partitions (a Warning: per-key
/// order), or new config values, in that order of precedence.
fn topic_change(
    spec: &OutboxSystemSpec,
    observed: Option<&ObservedTopic>,
    plan: &TopicPlan,
) -> Option<TopicChange> {
    let topic = &spec.topic.name;
    if plan.create {
        return Some(TopicChange {
            type_: EventType::Normal,
            reason: "TopicCreated",
            note: format!(
                "created topic {topic} with {} partitions",
                spec.topic.partitions
            ),
            raised: None,
        });
    }
    if let Some(to) = plan.raise_partitions_to {
        let from = observed.map_or(0, |o| o.partitions);
        return Some(TopicChange {
            type_: EventType::Warning,
            reason: "PartitionsRaised",
            note: partition_raise_warning(topic, from, to),
            raised: Some((from, to)),
        });
    }
    (!plan.config_changes.is_empty()).then(|| TopicChange {
        type_: EventType::Normal,
        reason: "TopicConfigUpdated",
        note: format!(
            "set {} on topic {topic}",
            plan.config_changes
                .keys()
                .cloned()
                .collect::<Vec<_>>()
                .join(", ")
        ),
        raised: None,
    })
}

/// Logs and publishes a change of the topic.
async fn announce_topic_change(
    ctx: &Context,
    system: &OutboxSystem,
    topic: &str,
    change: TopicChange,
) {
    match change.raised {
        Some((from, to)) => warn!(topic = %topic, from, to, "{}", change.note),
        None => info!(topic = %topic, reason = change.reason, "{}", change.note),
    }
    publish_event(ctx, system, change.type_, change.reason, change.note).await;
}

/// Reads the topic back after a change.
async fn finish_topic(
    admin: KafkaAdmin,
    spec: &OutboxSystemSpec,
    mut outcome: TopicOutcome,
) -> (TopicOutcome, Option<KafkaAdmin>) {
    match admin.describe_topic(&spec.topic).await {
        Ok(after) => {
            outcome.conflicts = plan_topic(&spec.topic, after.as_ref()).conflicts;
            outcome.observed = after;
        }
        Err(e) => outcome.error = Some(e.to_string()),
    }
    (outcome, Some(admin))
}

/// What a raise of the partition count does to per-key order, for the Warning Event.
fn partition_raise_warning(topic: &str, from: i32, to: i32) -> String {
    format!(
        "raised topic {topic} from {from} to {to} partitions: Kafka now maps keys to partitions anew, so \
         a key's messages written before and after may be consumed by different members and out \
         of order while any are in flight; raise partitions on a drained system (backlog 0, \
         consumer lag 0) to keep per-key order"
    )
}

/// A session on the system's database: the URL and CA from the Secrets the spec names.
async fn open_database(
    ctx: &Context,
    namespace: &str,
    spec: &OutboxSystemSpec,
) -> Result<DatabaseSession, BacklogUnavailable> {
    let url = secret_value(
        ctx,
        namespace,
        &spec.database.url_secret_ref,
        "urlSecretRef",
    )
    .await?;
    let url = String::from_utf8_lossy(&url).into_owned();
    let ca = match &spec.database.ca_secret_ref {
        Some(ca) => Some(CaSource::Pem(
            secret_value(ctx, namespace, ca, "caSecretRef").await?,
        )),
        None => None,
    };
    let tls = TlsDefaults { sslmode: None, ca };
    DatabaseSession::open(&qualify_database_url(&url, namespace), &tls).await
}

/// The claim of another system on this system's outbox schema, while that system
/// exists; a claim whose holder is gone is taken over (with an Event).
async fn schema_taken_by(
    ctx: &Context,
    system: &OutboxSystem,
    namespace: &str,
    session: &mut DatabaseSession,
) -> Option<Claim> {
    let me = schema_owner::system_id(namespace, &system.name_any());
    let claim = match schema_owner::claim(session.client_mut(), &me).await {
        Ok(claim) => claim,
        Err(e) => {
            // Reported through the backlog read that follows on the same session.
            tracing::warn!(error = %e, "could not claim the outbox schema");
            return None;
        }
    };
    if claim.holder == me {
        return None;
    }
    // A holder recorded by hand in another form is not one this operator can look up:
    // it stands.
    let Some((holder_namespace, holder_name)) = claim.holder.split_once('/') else {
        return Some(claim);
    };
    let holders: Api<OutboxSystem> = Api::namespaced(ctx.client.clone(), holder_namespace);
    match holders.get_opt(holder_name).await {
        Ok(None) => {}
        // Alive, or out of this operator's sight (then assumed alive).
        Ok(Some(_)) | Err(_) => return Some(claim),
    }
    match schema_owner::take_over(session.client_mut(), &claim.holder, &me).await {
        Ok(true) => {
            publish_event(
                ctx,
                system,
                EventType::Normal,
                "DatabaseTakenOver",
                format!(
                    "the outbox schema {} was held by OutboxSystem {}, which no longer exists; it is this system's now",
                    claim.schema, claim.holder
                ),
            )
            .await;
            None
        }
        // Another system took it first; the next reconcile names it.
        Ok(false) => Some(claim),
        Err(e) => {
            tracing::warn!(error = %e, "could not take over the outbox schema");
            Some(claim)
        }
    }
}

/// The value of `secret_ref` (`spec.database.<field>`), or why it cannot be had.
async fn secret_value(
    ctx: &Context,
    namespace: &str,
    secret_ref: &crate::crd::SecretKeyRef,
    field: &str,
) -> Result<Vec<u8>, BacklogUnavailable> {
    let secrets: Api<Secret> = Api::namespaced(ctx.client.clone(), namespace);
    let secret = match secrets.get_opt(&secret_ref.name).await {
        Ok(Some(secret)) => secret,
        Ok(None) => {
            return Err(BacklogUnavailable {
                reason: "DatabaseSecretMissing",
                message: format!(
                    "Secret {} (spec.database.{field}) not found",
                    secret_ref.name
                ),
            })
        }
        Err(e) => {
            return Err(BacklogUnavailable {
                reason: "DatabaseSecretUnreadable",
                message: format!("reading Secret {}: {e}", secret_ref.name),
            })
        }
    };
    secret
        .data
        .and_then(|mut d| d.remove(&secret_ref.key))
        .map(|v| v.0)
        .ok_or_else(|| BacklogUnavailable {
            reason: "DatabaseSecretMissing",
            message: format!(
                "Secret {} has no key {} (spec.database.{field})",
                secret_ref.name, secret_ref.key
            ),
        })
}

/// Why the operator will not reconcile a system: `conditions` turn False and
/// `Degraded` True, all with `reason` and `message`.
#[derive(Debug)]
struct Refusal {
    reason: &'static str,
    message: String,
    conditions: &'static [&'static str],
}

/// When [`report_refusal`] writes and announces.
#[derive(PartialEq)]
enum Announce {
    Always,
    /// Only when the conditions do not say it yet (a refusal that is re-checked on
    /// every requeue).
    WhenChanged,
}

/// Writes a refusal into status and announces it with a Warning Event.
async fn report_refusal(
    ctx: &Context,
    system: &OutboxSystem,
    current: &OutboxSystemStatus,
    refusal: Refusal,
    announce: Announce,
) -> Result<()> {
    let desired = refusal_conditions(&refusal);
    let merged = conditions::merge(
        &current.conditions,
        &desired,
        system.metadata.generation,
        Timestamp::now(),
    );
    if announce == Announce::WhenChanged && already_said(&current.conditions, &merged) {
        return Ok(());
    }
    let mut status = current.clone();
    status.observed_generation = system.metadata.generation;
    replace_conditions(&mut status.conditions, merged);
    let namespace = system.namespace().unwrap_or_default();
    patch_status(ctx, &namespace, &system.name_any(), &status).await?;
    publish_event(
        ctx,
        system,
        EventType::Warning,
        refusal.reason,
        refusal.message,
    )
    .await;
    Ok(())
}

/// Whether `current` already holds each of `merged` as it is (pure). The refusal owns
/// only its own condition types; a system that ran before it was refused has others
/// too, which must not make every requeue write the status and publish the Warning
/// again.
fn already_said(current: &[Condition], merged: &[Condition]) -> bool {
    merged
        .iter()
        .all(|m| conditions::find(current, &m.type_) == Some(m))
}

/// The conditions a refusal sets (pure): its `conditions` False and `Degraded` True,
/// all with its reason and message.
fn refusal_conditions(refusal: &Refusal) -> Vec<conditions::Desired> {
    let mut desired: Vec<conditions::Desired> = refusal
        .conditions
        .iter()
        .map(|t| conditions::Desired::no(t, refusal.reason, refusal.message.clone()))
        .collect();
    desired.push(conditions::Desired::yes(
        types::DEGRADED,
        refusal.reason,
        refusal.message.clone(),
    ));
    desired
}

/// The OutboxSystem (`namespace/name`) created before this one that uses the same topic
/// on the same Kafka cluster (`cluster_id`: this system's, when it could be read), if
/// any. Looks across all namespaces when the operator may, else in this one.
async fn topic_taken_by(
    ctx: &Context,
    system: &OutboxSystem,
    namespace: &str,
    cluster_id: Option<&str>,
) -> Result<Option<String>> {
    let all: Api<OutboxSystem> = Api::all(ctx.client.clone());
    let others = match all.list(&ListParams::default()).await {
        Ok(list) => list.items,
        Err(kube::Error::Api(e)) if e.code == 403 => {
            let here: Api<OutboxSystem> = Api::namespaced(ctx.client.clone(), namespace);
            here.list(&ListParams::default())
                .await
                .map_err(Error::kube("listing OutboxSystems".to_string()))?
                .items
        }
        Err(e) => return Err(Error::kube("listing OutboxSystems".to_string())(e)),
    };
    Ok(first_on_topic(system, cluster_id, &others))
}

/// Among `others`, the system (`namespace/name`) that holds `system`'s topic (pure):
/// the one created first of those on the same topic of the same Kafka, when it was
/// created before `system` (ties broken by namespace and name); systems being deleted
/// do not count. The same Kafka is the same cluster id (`cluster_id`, this system's
/// now, against the other's `status.topic.clusterId`, its last look), however the
/// bootstrap servers are written; where either id is unknown, the same bootstrap
/// servers (qualified by each one's namespace).
fn first_on_topic(
    system: &OutboxSystem,
    cluster_id: Option<&str>,
    others: &[OutboxSystem],
) -> Option<String> {
    let bootstrap_of = |s: &OutboxSystem| {
        qualify_bootstrap_servers(
            &s.spec.kafka.bootstrap_servers,
            &s.namespace().unwrap_or_default(),
        )
    };
    let ours = bootstrap_of(system);
    let same_kafka = |other: &OutboxSystem| {
        let theirs = other
            .status
            .as_ref()
            .and_then(|s| s.topic.as_ref())
            .and_then(|t| t.cluster_id.as_deref());
        match (cluster_id, theirs) {
            (Some(ours), Some(theirs)) => ours == theirs,
            _ => bootstrap_of(other) == ours,
        }
    };
    let key = |s: &OutboxSystem| {
        (
            s.metadata.creation_timestamp.clone().map(|t| t.0),
            s.namespace().unwrap_or_default(),
            s.name_any(),
        )
    };
    others
        .iter()
        .filter(|o| o.uid() != system.uid() && o.metadata.deletion_timestamp.is_none())
        .filter(|o| o.spec.topic.name == system.spec.topic.name && same_kafka(o))
        .filter(|o| key(o) < key(system))
        .min_by_key(|o| key(o))
        .map(|o| format!("{}/{}", o.namespace().unwrap_or_default(), o.name_any()))
}

/// Marks `status.topic.createdByOperator` on `cluster_id` before the operator creates
/// the topic there.
async fn record_topic_created(
    ctx: &Context,
    system: &OutboxSystem,
    topic: &str,
    cluster_id: &str,
) -> Result<()> {
    let name = system.name_any();
    let api: Api<OutboxSystem> =
        Api::namespaced(ctx.client.clone(), &system.namespace().unwrap_or_default());
    let patch = serde_json::json!({"status": {"topic": {
        "name": topic,
        "createdByOperator": true,
        "ownershipClusterId": cluster_id,
    }}});
    api.patch_status(&name, &PatchParams::default(), &Patch::Merge(&patch))
        .await
        .map_err(Error::kube(format!(
            "recording that topic {topic} is created for {name}"
        )))?;
    Ok(())
}

/// Annotation that lets an OutboxSystem with `deletionPolicy: Delete` go at once,
/// leaving its topic in Kafka (for a Kafka that is gone for good).
pub const SKIP_TOPIC_DELETION_ANNOTATION: &str = "outbox.dev/skip-topic-deletion";

/// What came of deleting the topic on the cluster reached.
enum Deletion {
    Deleted,
    /// Kept: the cluster reached is not the one the operator created it on.
    Kept(String),
}

/// Deletes the system's topic through the Kafka client settings its spec names, when
/// the cluster reached is the one the operator created it on
/// ([`topic_ownership::may_delete`], pure).
async fn delete_topic(ctx: &Context, namespace: &str, system: &OutboxSystem) -> Result<Deletion> {
    let client_settings = read_client_settings(ctx, namespace, &system.spec).await?;
    let (admin, cluster_id) = match connect_kafka(namespace, &system.spec, &client_settings).await {
        KafkaReach::Reached { admin, cluster_id } => (admin, cluster_id),
        KafkaReach::NotReached { message, .. } => {
            return Err(Error::TopicNotReconciled {
                topic: system.spec.topic.name.clone(),
                message,
            })
        }
    };
    if let Err(kept) = topic_ownership::may_delete(system, &cluster_id) {
        return Ok(Deletion::Kept(kept));
    }
    admin.delete_topic(&system.spec.topic.name).await?;
    Ok(Deletion::Deleted)
}

/// Lets a deleted system go, as its steps: forget when its status was written → keep
/// the topic (deletionPolicy Retain, or a topic that existed before the system) or
/// delete it ([`delete_our_topic`]) → announce. Works even if Apply never ran.
async fn cleanup(system: Arc<OutboxSystem>, ctx: Arc<Context>) -> Result<Action> {
    if let (Some(uid), Ok(mut writes)) = (system.uid(), ctx.status_writes.lock()) {
        writes.remove(&uid);
    }
    let topic = &system.spec.topic.name;
    let note = match system.spec.topic.deletion_policy {
        DeletionPolicy::Retain => {
            info!(topic = %topic, "keeping the topic (deletionPolicy Retain)");
            format!("kept topic {topic} (deletionPolicy Retain)")
        }
        DeletionPolicy::Delete => match topic_ownership::kept_on_any_cluster(&system) {
            Some(note) => {
                info!(topic = %topic, "{note}");
                note
            }
            None => return delete_our_topic(&ctx, &system).await,
        },
    };
    publish_event(
        &ctx,
        system.as_ref(),
        EventType::Normal,
        "TopicRetained",
        note,
    )
    .await;
    Ok(Action::await_change())
}

/// Deletes the topic the operator created for the system. When that fails, the
/// decision is [`after_failed_deletion`]'s (pure): retry (an error, so the finalizer
/// stays) until `topic_deletion_timeout` has passed since the deletion, then, or at
/// once with the skip annotation, let the system go and leave the topic behind.
async fn delete_our_topic(ctx: &Context, system: &OutboxSystem) -> Result<Action> {
    let namespace = system
        .namespace()
        .ok_or(Error::MissingObjectKey("metadata.namespace"))?;
    let topic = &system.spec.topic.name;
    let skip = skips_topic_deletion(system);
    let deleted = if skip {
        Err(format!("annotation {SKIP_TOPIC_DELETION_ANNOTATION}=true"))
    } else {
        delete_topic(ctx, &namespace, system)
            .await
            .map_err(|e| e.to_string())
    };
    let why = match deleted {
        Ok(Deletion::Deleted) => {
            info!(topic = %topic, "deleted the topic (deletionPolicy Delete)");
            let note = format!("deleted topic {topic} (deletionPolicy Delete)");
            publish_event(ctx, system, EventType::Normal, "TopicDeleted", note).await;
            return Ok(Action::await_change());
        }
        Ok(Deletion::Kept(note)) => {
            warn!(topic = %topic, "{note}");
            publish_event(ctx, system, EventType::Normal, "TopicRetained", note).await;
            return Ok(Action::await_change());
        }
        Err(why) => why,
    };
    let waited = seconds_since(
        system.metadata.deletion_timestamp.as_ref(),
        Timestamp::now(),
    );
    let limit = ctx.settings.topic_deletion_timeout.as_secs();
    match after_failed_deletion(topic, &why, skip, waited, limit) {
        FailedDeletion::Retry { note } => {
            publish_event(ctx, system, EventType::Warning, "TopicDeletionFailed", note).await;
            Err(Error::TopicNotReconciled {
                topic: topic.clone(),
                message: why,
            })
        }
        FailedDeletion::LeaveBehind { note } => {
            warn!(topic = %topic, "{note}");
            publish_event(ctx, system, EventType::Warning, "TopicLeftBehind", note).await;
            Ok(Action::await_change())
        }
    }
}

/// Whether the system carries `outbox.dev/skip-topic-deletion: "true"` (pure).
fn skips_topic_deletion(system: &OutboxSystem) -> bool {
    system
        .annotations()
        .get(SKIP_TOPIC_DELETION_ANNOTATION)
        .is_some_and(|v| v == "true")
}

/// Whole seconds from `since` to `now`; 0 without `since` or when it lies ahead (pure).
fn seconds_since(since: Option<&Time>, now: Timestamp) -> u64 {
    let seconds = since
        .map(|t| now.duration_since(t.0).as_secs())
        .unwrap_or(0);
    u64::try_from(seconds).unwrap_or(0)
}

/// What follows a failed deletion of the topic, with the note of its Warning Event.
#[derive(Debug, PartialEq)]
enum FailedDeletion {
    /// Try again: the deletion keeps the system until the topic is gone.
    Retry { note: String },
    /// Let the system go without its topic.
    LeaveBehind { note: String },
}

/// The decision after the topic could not be deleted (`why`), `waited` seconds after
/// the system's deletion, `limit` the seconds the operator keeps trying (pure): with
/// the skip annotation it gives up at once.
fn after_failed_deletion(
    topic: &str,
    why: &str,
    skip: bool,
    waited: u64,
    limit: u64,
) -> FailedDeletion {
    if !skip && waited < limit {
        return FailedDeletion::Retry {
            note: format!(
                "could not delete topic {topic} ({why}); retrying, and giving up after {limit} s (or now, with annotation {SKIP_TOPIC_DELETION_ANNOTATION}=true)"
            ),
        };
    }
    FailedDeletion::LeaveBehind {
        note: format!(
            "left topic {topic} behind ({why}{}): the OutboxSystem is deleted without it; delete the topic in Kafka yourself",
            if skip {
                String::new()
            } else {
                format!("; gave up after {waited} s")
            }
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The reference system (`manifests/outbox-system.yaml`) as `namespace/name`,
    /// created at second `created`.
    fn system(namespace: &str, name: &str, created: i64) -> OutboxSystem {
        let mut system = crate::test_fixtures::reference_system();
        system.metadata.name = Some(name.into());
        system.metadata.namespace = Some(namespace.into());
        system.metadata.uid = Some(format!("uid-{namespace}-{name}"));
        system.metadata.creation_timestamp = Some(Time(
            Timestamp::from_second(created).unwrap_or(Timestamp::UNIX_EPOCH),
        ));
        system
    }

    #[test]
    fn the_topic_belongs_to_the_system_created_first_on_the_same_kafka() {
        let me = system("team-a", "late", 300);
        let others = vec![
            me.clone(),
            system("team-a", "early", 200),
            system("team-a", "earliest", 100),
            system("team-a", "later", 400),
        ];
        assert_eq!(
            first_on_topic(&me, None, &others).as_deref(),
            Some("team-a/earliest")
        );
        // The first one is not refused: nobody came before it.
        assert_eq!(first_on_topic(&others[2], None, &others), None);
    }

    #[test]
    fn other_topics_other_kafkas_and_systems_being_deleted_do_not_hold_the_topic() {
        let me = system("team-a", "me", 300);
        let mut other_topic = system("team-a", "other-topic", 100);
        other_topic.spec.topic.name = "other-events".into();
        // The same bare Service name in another namespace is another Kafka.
        let other_kafka = system("team-b", "other-kafka", 100);
        let mut leaving = system("team-a", "leaving", 100);
        leaving.metadata.deletion_timestamp = leaving.metadata.creation_timestamp.clone();
        let others = [me.clone(), other_topic, other_kafka, leaving];
        assert_eq!(first_on_topic(&me, None, &others), None);

        // One Kafka named in full from two namespaces is the same Kafka.
        let mut me = me;
        me.spec.kafka.bootstrap_servers = "kafka.shared.svc:9092".into();
        let mut elsewhere = system("team-b", "elsewhere", 100);
        elsewhere.spec.kafka.bootstrap_servers = "kafka.shared.svc:9092".into();
        assert_eq!(
            first_on_topic(&me, None, &[elsewhere]).as_deref(),
            Some("team-b/elsewhere")
        );
    }

    #[test]
    fn systems_created_in_the_same_second_are_ordered_by_namespace_and_name() {
        let b = system("team-a", "b", 100);
        let a = system("team-a", "a", 100);
        let both = [a.clone(), b.clone()];
        assert_eq!(first_on_topic(&b, None, &both).as_deref(), Some("team-a/a"));
        assert_eq!(first_on_topic(&a, None, &both), None);
    }

    /// `system` as last seen by the operator on the Kafka cluster `cluster_id`.
    fn seen_on(mut system: OutboxSystem, cluster_id: &str) -> OutboxSystem {
        system.status = Some(OutboxSystemStatus {
            topic: Some(TopicStatus {
                name: system.spec.topic.name.clone(),
                cluster_id: Some(cluster_id.into()),
                ..TopicStatus::default()
            }),
            ..OutboxSystemStatus::default()
        });
        system
    }

    #[test]
    fn the_topic_in_use_check_compares_kafka_cluster_ids_not_bootstrap_strings() {
        let me = system("team-a", "me", 300);
        // One cluster written two ways: the same Kafka.
        let mut by_address = system("team-b", "by-address", 100);
        by_address.spec.kafka.bootstrap_servers = "10.0.0.7:9092".into();
        let by_address = seen_on(by_address, "cluster-a");
        assert_eq!(
            first_on_topic(&me, Some("cluster-a"), std::slice::from_ref(&by_address)).as_deref(),
            Some("team-b/by-address")
        );
        // The same string leading to two clusters (the other one last saw another):
        // not the same Kafka.
        let same_string = seen_on(system("team-a", "same-string", 100), "cluster-b");
        assert_eq!(first_on_topic(&me, Some("cluster-a"), &[same_string]), None);
        // Either id unknown: the bootstrap servers decide, as before.
        let unseen = system("team-a", "unseen", 100);
        assert_eq!(
            first_on_topic(&me, Some("cluster-a"), std::slice::from_ref(&unseen)).as_deref(),
            Some("team-a/unseen")
        );
        assert_eq!(first_on_topic(&me, None, &[by_address]), None);
    }

    #[test]
    fn a_valid_spec_passes_and_an_invalid_one_is_refused_naming_every_problem() {
        let valid = system("team-a", "outbox", 100);
        assert!(invalid_spec("outbox", &valid.spec).is_none());
        let mut spec = valid.spec;
        let topic = spec.topic.name.clone();
        spec.consumers.groups[0].dead_letter_topic = Some(topic);
        let refusal = invalid_spec("9-starts-with-a-digit", &spec).expect("refused");
        assert_eq!(refusal.reason, "InvalidSpec");
        assert_eq!(refusal.conditions, [types::READY]);
        assert!(
            refusal
                .message
                .contains("must start with a letter: it prefixes Service names; ")
                && refusal.message.contains("deadLetterTopic must differ"),
            "{}",
            refusal.message
        );
    }

    #[test]
    fn a_system_naming_an_image_outside_the_allowed_repositories_is_refused_naming_it_and_the_list()
    {
        let mut spec = system("team-a", "outbox", 100).spec;
        let policy = ImagePolicy::from_list("registry.example/team/");
        assert!(image_not_allowed(&policy, &spec).is_none());
        spec.producers.image = Some("registry.example/team-evil/worker:1".into());
        let refusal = image_not_allowed(&policy, &spec).expect("refused");
        assert_eq!(refusal.reason, "ImageNotAllowed");
        assert_eq!(refusal.conditions, [types::READY]);
        for part in [
            "spec.producers.image",
            "registry.example/team-evil/worker:1",
            "registry.example/team/",
        ] {
            assert!(
                refusal.message.contains(part),
                "{part}: {}",
                refusal.message
            );
        }
        assert!(image_not_allowed(&ImagePolicy::default(), &spec).is_none());
    }

    #[test]
    fn a_client_setting_the_operators_client_refuses_stops_it_naming_key_and_property() {
        let secret = |keys: &[(&str, &str)]| {
            keys.iter()
                .map(|(k, v)| {
                    (
                        k.to_string(),
                        k8s_openapi::ByteString(v.as_bytes().to_vec()),
                    )
                })
                .collect::<BTreeMap<_, _>>()
        };
        let fine = secret(&[("KAFKA_CLIENT_SECURITY_PROTOCOL", "SSL")]);
        let accepted =
            operator_client_properties("ns", "kafka-client", kafka::client_properties(&fine))
                .unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(accepted["security.protocol"], "SSL");

        let hostile = secret(&[
            ("KAFKA_CLIENT_SECURITY_PROTOCOL", "SSL"),
            (
                "KAFKA_CLIENT_SSL_CA_LOCATION",
                "/var/run/secrets/kubernetes.io/serviceaccount/token",
            ),
        ]);
        let error =
            operator_client_properties("ns", "kafka-client", kafka::client_properties(&hostile))
                .expect_err("refused");
        assert_eq!(error.metric_label(), "kafka_client_setting_refused");
        let message = error.to_string();
        for part in [
            "ns/kafka-client",
            "spec.kafka.clientSettingsSecretRef",
            "KAFKA_CLIENT_SSL_CA_LOCATION (ssl.ca.location)",
            "ssl.ca.pem",
        ] {
            assert!(message.contains(part), "{part}: {message}");
        }
        assert!(
            !message.contains("serviceaccount/token"),
            "no values in the message: {message}"
        );
        assert_eq!(
            topic_settings_error_reason(&error),
            Some("KafkaClientSettingRefused")
        );
    }

    #[test]
    fn keys_someone_else_added_to_the_systems_config_map_are_found_and_removed_by_name() {
        let desired = ConfigMap {
            data: Some(BTreeMap::from([
                (
                    "KAFKA_BOOTSTRAP_SERVERS".to_string(),
                    "kafka:9092".to_string(),
                ),
                ("KAFKA_TOPICS".to_string(), "events".to_string()),
            ])),
            ..ConfigMap::default()
        };
        assert_eq!(foreign_config_keys(&desired, &desired), (vec![], vec![]));
        let mut applied = desired.clone();
        if let Some(data) = applied.data.as_mut() {
            data.insert(
                "KAFKA_CLIENT_BOOTSTRAP_SERVERS".to_string(),
                "evil:9092".to_string(),
            );
            data.insert("LD_PRELOAD".to_string(), "/tmp/x.so".to_string());
        }
        applied.binary_data = Some(BTreeMap::from([(
            "blob".to_string(),
            k8s_openapi::ByteString(vec![1]),
        )]));
        let (data, binary) = foreign_config_keys(&applied, &desired);
        assert_eq!(data, ["KAFKA_CLIENT_BOOTSTRAP_SERVERS", "LD_PRELOAD"]);
        assert_eq!(binary, ["blob"]);
        assert_eq!(
            removal_patch(&data, &binary),
            serde_json::json!({
                "data": {"KAFKA_CLIENT_BOOTSTRAP_SERVERS": null, "LD_PRELOAD": null},
                "binaryData": {"blob": null}
            })
        );
    }

    #[test]
    fn a_refusal_already_in_the_status_is_not_written_or_announced_again() {
        let spec = system("team-a", "late", 300).spec;
        let refusal = topic_in_use(&spec, "team-a/early");
        let at = Timestamp::from_second(1_000).unwrap_or(Timestamp::UNIX_EPOCH);
        let said = conditions::merge(&[], &refusal_conditions(&refusal), Some(2), at);
        // The system ran before it was refused: its status has other conditions too.
        let mut current = vec![Condition {
            type_: types::PRODUCERS_READY.to_string(),
            status: "True".into(),
            reason: "Ready".into(),
            message: "every producer is ready".into(),
            observed_generation: Some(2),
            last_transition_time: Time(at),
        }];
        replace_conditions(&mut current, said);
        let later = Timestamp::from_second(2_000).unwrap_or(Timestamp::UNIX_EPOCH);
        let again = conditions::merge(&current, &refusal_conditions(&refusal), Some(2), later);
        assert!(
            already_said(&current, &again),
            "the same refusal is news again"
        );
        let other = topic_in_use(&spec, "team-b/other");
        let changed = conditions::merge(&current, &refusal_conditions(&other), Some(2), later);
        assert!(!already_said(&current, &changed), "a new holder is news");
        let newer = conditions::merge(&current, &refusal_conditions(&refusal), Some(3), later);
        assert!(
            !already_said(&current, &newer),
            "a new generation is recorded"
        );
    }

    #[test]
    fn a_refusal_turns_its_conditions_false_and_degraded_true() {
        let spec = system("team-a", "late", 300).spec;
        let refusal = topic_in_use(&spec, "team-a/early");
        assert!(
            refusal
                .message
                .contains("topic shared-events on outbox-kafka:9092")
                && refusal.message.contains("OutboxSystem team-a/early"),
            "{}",
            refusal.message
        );
        let set: Vec<_> = refusal_conditions(&refusal)
            .into_iter()
            .map(|c| (c.type_, c.status, c.reason, c.message == refusal.message))
            .collect();
        assert_eq!(
            set,
            [
                (types::READY, false, "TopicInUse".to_string(), true),
                (types::TOPIC_READY, false, "TopicInUse".to_string(), true),
                (types::DEGRADED, true, "TopicInUse".to_string(), true),
            ]
        );
        let claim = Claim {
            holder: "team-b/first".into(),
            schema: "outbox.public".into(),
        };
        let refusal = schema_in_use(&claim);
        assert_eq!(refusal.reason, "DatabaseInUse");
        assert_eq!(refusal.conditions, [types::READY]);
        assert!(refusal
            .message
            .contains("outbox.public is held by OutboxSystem team-b/first"));
    }

    fn observed(partitions: i32, config: &[(&str, &str)]) -> ObservedTopic {
        let config: BTreeMap<String, String> = config
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        ObservedTopic {
            partitions,
            replication_factor: 1,
            dynamic_config: config.clone(),
            effective_config: config,
        }
    }

    #[test]
    fn a_missing_topic_is_created_and_announced_with_its_partitions() {
        let spec = system("team-a", "outbox", 100).spec;
        let plan = plan_topic(&spec.topic, None);
        let change = topic_change(&spec, None, &plan).expect("a change");
        assert_eq!(change.type_, EventType::Normal);
        assert_eq!(change.reason, "TopicCreated");
        assert_eq!(change.note, "created topic shared-events with 6 partitions");
        assert_eq!(change.raised, None);
    }

    #[test]
    fn raised_partitions_are_a_warning_about_key_order_naming_from_and_to() {
        let spec = system("team-a", "outbox", 100).spec;
        let found = observed(4, &[]);
        let plan = plan_topic(&spec.topic, Some(&found));
        let change = topic_change(&spec, Some(&found), &plan).expect("a change");
        assert_eq!(change.type_, EventType::Warning);
        assert_eq!(change.reason, "PartitionsRaised");
        assert_eq!(change.raised, Some((4, 6)));
        assert!(
            change
                .note
                .starts_with("raised topic shared-events from 4 to 6 partitions")
                && change.note.contains("per-key order"),
            "{}",
            change.note
        );
    }

    #[test]
    fn changed_config_is_announced_naming_the_keys_and_a_matching_topic_not_at_all() {
        let mut spec = system("team-a", "outbox", 100).spec;
        spec.topic.config = [
            ("retention.ms".to_string(), "60000".to_string()),
            ("cleanup.policy".to_string(), "delete".to_string()),
        ]
        .into();
        let found = observed(6, &[("cleanup.policy", "compact")]);
        let plan = plan_topic(&spec.topic, Some(&found));
        let change = topic_change(&spec, Some(&found), &plan).expect("a change");
        assert_eq!(change.type_, EventType::Normal);
        assert_eq!(change.reason, "TopicConfigUpdated");
        assert_eq!(
            change.note,
            "set cleanup.policy, retention.ms on topic shared-events"
        );

        let matching = observed(
            6,
            &[("cleanup.policy", "delete"), ("retention.ms", "60000")],
        );
        let plan = plan_topic(&spec.topic, Some(&matching));
        assert_eq!(topic_change(&spec, Some(&matching), &plan), None);
    }

    #[test]
    fn a_failed_topic_deletion_is_retried_until_the_limit_then_the_topic_is_left_behind() {
        assert_eq!(
            after_failed_deletion("events", "broker down", false, 299, 300),
            FailedDeletion::Retry {
                note: "could not delete topic events (broker down); retrying, and giving up after 300 s (or now, with annotation outbox.dev/skip-topic-deletion=true)".into()
            }
        );
        assert_eq!(
            after_failed_deletion("events", "broker down", false, 300, 300),
            FailedDeletion::LeaveBehind {
                note: "left topic events behind (broker down; gave up after 300 s): the OutboxSystem is deleted without it; delete the topic in Kafka yourself".into()
            }
        );
    }

    #[test]
    fn the_skip_annotation_leaves_the_topic_behind_at_once() {
        let mut system = system("team-a", "outbox", 100);
        assert!(!skips_topic_deletion(&system));
        system.metadata.annotations = Some(
            [(
                SKIP_TOPIC_DELETION_ANNOTATION.to_string(),
                "yes".to_string(),
            )]
            .into(),
        );
        assert!(!skips_topic_deletion(&system), "only \"true\" skips");
        system.metadata.annotations = Some(
            [(
                SKIP_TOPIC_DELETION_ANNOTATION.to_string(),
                "true".to_string(),
            )]
            .into(),
        );
        assert!(skips_topic_deletion(&system));
        let why = format!("annotation {SKIP_TOPIC_DELETION_ANNOTATION}=true");
        assert_eq!(
            after_failed_deletion("events", &why, true, 0, 300),
            FailedDeletion::LeaveBehind {
                note: "left topic events behind (annotation outbox.dev/skip-topic-deletion=true): the OutboxSystem is deleted without it; delete the topic in Kafka yourself".into()
            }
        );
    }

    #[test]
    fn the_time_since_deletion_is_whole_seconds_and_never_negative() {
        let at = |s| Timestamp::from_second(s).unwrap_or(Timestamp::UNIX_EPOCH);
        assert_eq!(seconds_since(Some(&Time(at(1000))), at(1090)), 90);
        assert_eq!(seconds_since(Some(&Time(at(1000))), at(990)), 0);
        assert_eq!(seconds_since(None, at(1090)), 0);
    }

    /// Conditions as merged at second 0 from `(type, status, reason)`.
    fn conditions_of(desired: &[(&'static str, bool, &str)]) -> Vec<Condition> {
        let desired: Vec<conditions::Desired> = desired
            .iter()
            .map(|&(type_, status, reason)| conditions::Desired {
                type_,
                status,
                reason: reason.into(),
                message: format!("{reason} message"),
            })
            .collect();
        conditions::merge(&[], &desired, Some(1), Timestamp::UNIX_EPOCH)
    }

    fn announced(before: &[Condition], after: &[Condition]) -> Vec<(EventType, String)> {
        conditions_to_announce(before, after)
            .into_iter()
            .map(|(type_, c)| (type_, format!("{}={} {}", c.type_, c.status, c.reason)))
            .collect()
    }

    #[test]
    fn a_first_good_state_is_not_news_a_first_bad_one_is() {
        let after = conditions_of(&[
            (types::READY, true, "AllReady"),
            (types::PAUSED, false, "NotPaused"),
            (types::DEGRADED, true, "TopicConflict"),
            (types::TOPIC_READY, false, "TopicConflict"),
        ]);
        assert_eq!(
            announced(&[], &after),
            [
                (
                    EventType::Warning,
                    "Degraded=True TopicConflict".to_string()
                ),
                (
                    EventType::Warning,
                    "TopicReady=False TopicConflict".to_string()
                ),
            ]
        );
    }

    #[test]
    fn changes_are_announced_as_warnings_when_bad_and_normal_when_good_and_sameness_not_at_all() {
        let before = conditions_of(&[
            (types::READY, true, "AllReady"),
            (types::DEGRADED, true, "TopicConflict"),
            (types::PRODUCERS_READY, true, "ReplicasReady"),
        ]);
        let after = conditions_of(&[
            (types::READY, false, "ProducersNotReady"),
            (types::DEGRADED, false, "Healthy"),
            (types::PRODUCERS_READY, true, "ReplicasReady"),
        ]);
        assert_eq!(
            announced(&before, &after),
            [
                (
                    EventType::Warning,
                    "Ready=False ProducersNotReady".to_string()
                ),
                (EventType::Normal, "Degraded=False Healthy".to_string()),
            ]
        );
    }

    #[test]
    fn the_topic_record_keeps_who_created_it_on_which_cluster_and_the_last_raise() {
        let at = |s| Timestamp::from_second(s).unwrap_or(Timestamp::UNIX_EPOCH);
        let computed = TopicStatus {
            name: "shared-events".into(),
            partitions: Some(6),
            ..TopicStatus::default()
        };
        let created = TopicOutcome {
            ownership: Some(Ownership {
                created_by_operator: Some(true),
                cluster_id: "cluster-a".into(),
            }),
            cluster_id: Some("cluster-a".into()),
            ..TopicOutcome::default()
        };
        // First look: the outcome says who made the topic, on which cluster.
        let first = topic_record(None, &created, computed.clone(), at(10));
        assert_eq!(first.created_by_operator, Some(true));
        assert_eq!(first.ownership_cluster_id.as_deref(), Some("cluster-a"));
        assert_eq!(first.cluster_id.as_deref(), Some("cluster-a"));
        assert_eq!(first.partitions, Some(6));
        assert_eq!(first.last_partition_raise, None);
        // Later looks without a record of their own keep the first, whatever they
        // see; the cluster of the last look is kept when a look reached none.
        let found = TopicOutcome {
            raised: Some((6, 8)),
            cluster_id: Some("cluster-b".into()),
            ..TopicOutcome::default()
        };
        let raised = topic_record(Some(&first), &found, computed.clone(), at(20));
        assert_eq!(raised.created_by_operator, Some(true));
        assert_eq!(raised.ownership_cluster_id.as_deref(), Some("cluster-a"));
        assert_eq!(raised.cluster_id.as_deref(), Some("cluster-b"));
        assert_eq!(
            raised.last_partition_raise,
            Some(PartitionRaise {
                from: 6,
                to: 8,
                time: Time(at(20)),
            })
        );
        let later = topic_record(
            Some(&raised),
            &TopicOutcome::default(),
            computed.clone(),
            at(30),
        );
        assert_eq!(later.last_partition_raise, raised.last_partition_raise);
        assert_eq!(later.cluster_id.as_deref(), Some("cluster-b"));
        // A record from before createdByOperator, adopted: still None, now of a cluster.
        let legacy = TopicStatus {
            created_by_operator: None,
            ..computed.clone()
        };
        let adopted = TopicOutcome {
            ownership: Some(Ownership {
                created_by_operator: None,
                cluster_id: "cluster-a".into(),
            }),
            ..TopicOutcome::default()
        };
        let record = topic_record(Some(&legacy), &adopted, computed, at(40));
        assert_eq!(record.created_by_operator, None);
        assert_eq!(record.ownership_cluster_id.as_deref(), Some("cluster-a"));
    }

    #[test]
    fn switched_off_and_removed_groups_budgets_are_pruned_and_others_owners_left_alone() {
        use kube::Resource;
        let ours = system("ns", "outbox", 1);
        let other = system("ns", "other", 1);
        let owner = workloads::owner_of(&ours).expect("the fixture has a name and uid");
        let found = workloads::budgets(&owner, &ours.spec);
        // Switched off for the producers, group-c removed from the spec: wanted are
        // group-a's and group-b's.
        let mut spec = ours.spec.clone();
        spec.producers.pod_disruption_budget.enabled = false;
        spec.consumers.groups.retain(|g| g.name != "group-c");
        let wanted = workloads::budgets(&owner, &spec);
        // A budget of the same name that another system controls is not ours to delete.
        let mut foreign = found[0].clone();
        foreign.metadata.name = Some("outbox-consumer-group-x".into());
        foreign.metadata.owner_references = other.controller_owner_ref(&()).map(|r| vec![r]);
        let mut all = found.clone();
        all.push(foreign);
        assert_eq!(
            unwanted_children(&ours, &all, &wanted),
            ["outbox-producer", "outbox-consumer-group-c"]
        );
        assert!(unwanted_children(&ours, &found, &found).is_empty());
    }
}
