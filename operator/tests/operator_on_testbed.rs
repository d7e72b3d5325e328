//! The operator against the testbed's real kube-apiserver (with kube-controller-manager
//! for garbage collection) and real Kafka. One namespace per test; the operator runs
//! in-process scoped to that namespace, or as the built binary for the restart test.

mod support;

use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::batch::v1::Job;
use k8s_openapi::api::core::v1::{ConfigMap, PodTemplateSpec, Secret, Service};
use k8s_openapi::api::policy::v1::PodDisruptionBudget;
use k8s_openapi::api::scheduling::v1::PriorityClass;
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use k8s_openapi::ByteString;
use kube::api::{DeleteParams, ListParams, Patch, PatchParams, PostParams};
use kube::{Api, ResourceExt};
use outbox_operator::crd::{LoadTest, LoadTestPhase, OutboxSystem};
use rdkafka::consumer::{BaseConsumer, Consumer};
use std::collections::BTreeMap;
use std::time::Duration;
use support::*;
use testbed_support::{delete_namespace, eventually, testbed, unique_name};

#[tokio::test]
async fn reference_system_gets_workloads_topic_and_status_and_partitions_only_grow() {
    let (client, ns) = setup("obs-ref").await;
    let _operator = start_operator(&client, &ns);
    let topic = unique_name("shared-events");
    let systems = create_system(&client, &ns, &reference_system(&topic)).await;
    let deployments: Api<Deployment> = Api::namespaced(client.clone(), &ns);

    // Deployments with the reference replicas and the worker contract's env.
    let producer = wait_present(&deployments, "outbox-producer").await;
    assert_eq!(producer.spec.as_ref().and_then(|s| s.replicas), Some(3));
    let env = env_of(&producer);
    assert_eq!(
        env.get("RELAY_ROWS_PER_READ").map(String::as_str),
        Some("10000")
    );
    assert_eq!(env.get("DATABASE_URL").map(String::as_str), Some("<from>"));
    assert_eq!(env.get("HTTP_PORT").map(String::as_str), Some("8080"));
    for (group, replicas) in [("group-a", 3), ("group-b", 2), ("group-c", 1)] {
        let name = format!("outbox-consumer-{group}");
        let d = eventually(&format!("Deployment {name}"), WAIT, || {
            let api = deployments.clone();
            let name = name.clone();
            async move { api.get_opt(&name).await.ok().flatten() }
        })
        .await;
        assert_eq!(
            d.spec.as_ref().and_then(|s| s.replicas),
            Some(replicas),
            "{name}"
        );
        let env = env_of(&d);
        assert_eq!(
            env.get("KAFKA_CONSUMER_GROUP").map(String::as_str),
            Some(group)
        );
        assert_eq!(
            env.get("KAFKA_CONSUMER_GROUP_ID"),
            Some(&format!("{ns}.outbox.{group}"))
        );
        assert_eq!(env.get("RETRY_MAX_RETRIES").map(String::as_str), Some("-1"));
        let owner = d.metadata.owner_references.clone().unwrap_or_default();
        assert_eq!(owner.first().map(|o| o.kind.as_str()), Some("OutboxSystem"));
    }
    let config_maps: Api<ConfigMap> = Api::namespaced(client.clone(), &ns);
    let config = config_maps
        .get("outbox-config")
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(
        config.data.unwrap_or_default().get("KAFKA_TOPICS"),
        Some(&topic)
    );
    let services: Api<Service> = Api::namespaced(client.clone(), &ns);
    for wanted in [
        "outbox-producer",
        "outbox-consumer-group-a",
        "outbox-consumer-group-b",
        "outbox-consumer-group-c",
    ] {
        let service = eventually(&format!("Service {wanted}"), WAIT, || {
            let api = services.clone();
            async move { api.get_opt(wanted).await.ok().flatten() }
        })
        .await;
        let headless = service.spec.and_then(|s| s.cluster_ip).as_deref() == Some("None");
        assert_eq!(headless, wanted != "outbox-producer", "{wanted}");
    }

    // The topic in the real Kafka, and the status saying so.
    eventually("6 partitions in Kafka", WAIT, || {
        let topic = topic.clone();
        async move { (kafka_partitions(&topic).await == Some(6)).then_some(()) }
    })
    .await;
    let system = eventually("status with TopicReady and 6 partitions", WAIT, || {
        let api = systems.clone();
        async move {
            let s = api.get("outbox").await.ok()?;
            let status = s.status.as_ref()?;
            let ok = status.topic.as_ref()?.partitions == Some(6)
                && condition(&s, "TopicReady")?.0 == "True"
                && status.observed_generation == s.metadata.generation;
            ok.then_some(s)
        }
    })
    .await;
    let (ready, reason, _) = condition(&system, "Ready").unwrap_or_default();
    assert_eq!(
        (ready.as_str(), reason.as_str()),
        ("False", "ProducersNotReady"),
        "no kubelet: no pod is ever ready"
    );
    let (status, _, message) = condition(&system, "ProducersReady").unwrap_or_default();
    assert_eq!(status, "False");
    assert!(message.contains("0/3"), "{message}");
    assert_eq!(
        condition(&system, "Degraded").map(|c| c.0),
        Some("False".into())
    );
    let status = system.status.clone().unwrap_or_default();
    assert_eq!(status.producers.map(|p| (p.ready, p.desired)), Some((0, 3)));
    let groups: Vec<(String, i32)> = status
        .groups
        .iter()
        .map(|g| (g.name.clone(), g.desired))
        .collect();
    assert_eq!(
        groups,
        [
            ("group-a".to_string(), 3),
            ("group-b".to_string(), 2),
            ("group-c".to_string(), 1)
        ]
    );
    eventually("lag 0 for every group of the empty topic", WAIT, || {
        let api = systems.clone();
        async move {
            let groups = api.get("outbox").await.ok()?.status?.groups;
            (groups.len() == 3 && groups.iter().all(|g| g.lag == Some(0))).then_some(())
        }
    })
    .await;
    let backlog = condition(&system, "BacklogObserved").unwrap_or_default();
    assert!(
        backlog.0 == "True" || backlog.1 == "BacklogViewMissing",
        "{backlog:?}"
    );

    // Settled: periodic re-reconciles (every 5 s here) leave the object untouched.
    let settled = systems
        .get("outbox")
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    tokio::time::sleep(Duration::from_secs(8)).await;
    let later = systems
        .get("outbox")
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(
        settled.resource_version(),
        later.resource_version(),
        "status churned without a change: {:?} then {:?}",
        settled.status,
        later.status
    );

    // Raise partitions to 8: Kafka follows.
    let raise = serde_json::json!({"spec": {"topic": {"partitions": 8}}});
    systems
        .patch("outbox", &PatchParams::default(), &Patch::Merge(&raise))
        .await
        .unwrap_or_else(|e| panic!("raising partitions: {e}"));
    eventually("8 partitions in Kafka", WAIT, || {
        let topic = topic.clone();
        async move { (kafka_partitions(&topic).await == Some(8)).then_some(()) }
    })
    .await;
    let raised = eventually("status with 8 partitions", WAIT, || {
        let api = systems.clone();
        async move {
            let topic = api.get("outbox").await.ok()?.status?.topic?;
            (topic.partitions == Some(8)).then_some(topic.last_partition_raise)
        }
    })
    .await
    .expect("the raise is recorded in status.topic.lastPartitionRaise");
    assert_eq!((raised.from, raised.to), (6, 8));

    // Lower them: the API server refuses, naming the field.
    let lower = serde_json::json!({"spec": {"topic": {"partitions": 4}}});
    let refused = systems
        .patch("outbox", &PatchParams::default(), &Patch::Merge(&lower))
        .await;
    let message = match refused {
        Err(kube::Error::Api(s)) => s.message,
        other => panic!("lowering partitions was not refused: {other:?}"),
    };
    assert!(message.contains("spec.topic.partitions"), "{message}");
    assert_eq!(kafka_partitions(&topic).await, Some(8));

    // Events tell what happened.
    let events: Api<k8s_openapi::api::events::v1::Event> = Api::namespaced(client.clone(), &ns);
    let reasons: Vec<String> = events
        .list(&ListParams::default())
        .await
        .unwrap_or_else(|e| panic!("{e}"))
        .into_iter()
        .filter(|e| e.regarding.as_ref().and_then(|r| r.kind.as_deref()) == Some("OutboxSystem"))
        .filter_map(|e| e.reason)
        .collect();
    for wanted in ["TopicCreated", "PartitionsRaised"] {
        assert!(
            reasons.iter().any(|r| r == wanted),
            "{wanted} not in {reasons:?}"
        );
    }
    let raise_event = events
        .list(&ListParams::default())
        .await
        .unwrap_or_else(|e| panic!("{e}"))
        .into_iter()
        .find(|e| e.reason.as_deref() == Some("PartitionsRaised"))
        .expect("a PartitionsRaised event");
    assert_eq!(raise_event.type_.as_deref(), Some("Warning"));
    let note = raise_event.note.unwrap_or_default();
    assert!(
        note.contains("out of order") && note.contains("drained"),
        "{note}"
    );

    // A removed consumer group loses its Deployment.
    let fewer = serde_json::json!({"spec": {"consumers": {"groups": [
        {"name": "group-a", "replicas": 3, "retry": {"maxRetries": -1}},
        {"name": "group-b", "replicas": 2, "retry": {"maxRetries": -1}}
    ]}}});
    systems
        .patch("outbox", &PatchParams::default(), &Patch::Merge(&fewer))
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    wait_gone(&deployments, "outbox-consumer-group-c").await;
    delete_namespace(&client, &ns).await;
}

#[tokio::test]
async fn spec_the_schema_cannot_catch_is_reported_and_not_retried_in_a_loop() {
    let (client, ns) = setup("obs-badname").await;
    let operator = start_operator(&client, &ns);
    let mut system = reference_system(&unique_name("badname-events"));
    let long_group = "g".repeat(40);
    system.metadata.name = Some("a-rather-long-outbox-system-name".into());
    system.spec.consumers.groups[0].name = long_group.clone();
    let systems = create_system(&client, &ns, &system).await;
    let message = wait_for_message(
        &systems,
        "a-rather-long-outbox-system-name",
        "Degraded",
        "InvalidSpec",
    )
    .await;
    assert!(
        message.contains("spec.consumers.groups[].name"),
        "{message}"
    );
    let deployments: Api<Deployment> = Api::namespaced(client.clone(), &ns);
    tokio::time::sleep(Duration::from_secs(5)).await;
    let children = deployments
        .list(&ListParams::default())
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    assert!(
        children.items.is_empty(),
        "nothing is built from an invalid spec"
    );
    let metrics = operator.metrics.encode().unwrap_or_default();
    let failures: f64 = metrics
        .lines()
        .filter(|l| {
            l.starts_with("outbox_operator_reconciliation_errors_total")
                && l.contains("invalid_spec")
        })
        .filter_map(|l| l.rsplit(" ").next()?.parse::<f64>().ok())
        .sum();
    assert!(
        (1.0..=3.0).contains(&failures),
        "invalid spec reconciled {failures} times in 5 s: {metrics}"
    );
    delete_namespace(&client, &ns).await;
}

#[tokio::test]
async fn sample_manifests_are_accepted_by_the_api_server_as_written() {
    let (client, ns) = setup("manifests").await;
    let dry_run = PostParams {
        dry_run: true,
        ..PostParams::default()
    };
    let systems: Api<OutboxSystem> = Api::namespaced(client.clone(), &ns);
    for file in [
        "manifests/outbox-system.yaml",
        "manifests/outbox-system-autoscaling.yaml",
    ] {
        let system: OutboxSystem = parse_sample(file);
        systems
            .create(&dry_run, &system)
            .await
            .unwrap_or_else(|e| panic!("{file} refused: {e}"));
    }
    let loadtests: Api<LoadTest> = Api::namespaced(client.clone(), &ns);
    for file in [
        "manifests/loadtest-reference.yaml",
        "manifests/loadtest-small.yaml",
        "manifests/loadtest-rate.yaml",
        "manifests/loadtest-enqueue.yaml",
        "manifests/loadtest-parallel.yaml",
    ] {
        let lt: LoadTest = parse_sample(file);
        let created = loadtests
            .create(&dry_run, &lt)
            .await
            .unwrap_or_else(|e| panic!("{file} refused: {e}"));
        let messages: i64 = created
            .spec
            .scenarios
            .iter()
            .map(|s| s.offered_messages())
            .sum();
        assert!(messages > 0, "{file}");
    }
    delete_namespace(&client, &ns).await;
}

#[tokio::test]
async fn a_relay_setting_under_its_old_name_still_reaches_the_producers() {
    let (client, ns) = setup("obs-old-name").await;
    let _operator = start_operator(&client, &ns);
    let mut system = reference_system(&unique_name("old-name"));
    system.spec.producers.relay.rows_per_read = None;
    system.spec.producers.relay.rows_per_kafka_batch = Some(777);
    create_system(&client, &ns, &system).await;
    let deployments: Api<Deployment> = Api::namespaced(client.clone(), &ns);
    let producer = wait_present(&deployments, "outbox-producer").await;
    assert_eq!(
        env_of(&producer)
            .get("RELAY_ROWS_PER_READ")
            .map(String::as_str),
        Some("777")
    );
    delete_namespace(&client, &ns).await;
}

#[tokio::test]
async fn invalid_specs_are_refused_by_the_api_server_naming_the_field() {
    let (client, ns) = setup("obs-invalid").await;
    let api: Api<OutboxSystem> = Api::namespaced(client.clone(), &ns);
    let base = || {
        let mut v = serde_json::to_value(reference_system("invalid-topic")).unwrap_or_default();
        v["metadata"]["name"] = "bad".into();
        v
    };
    let cases: Vec<(&str, serde_json::Value, &str)> = vec![
        (
            "partitions 0",
            {
                let mut v = base();
                v["spec"]["topic"]["partitions"] = 0.into();
                v
            },
            "spec.topic.partitions",
        ),
        (
            "producer replicas -1",
            {
                let mut v = base();
                v["spec"]["producers"]["replicas"] = (-1).into();
                v
            },
            "spec.producers.replicas",
        ),
        (
            "group replicas -1",
            {
                let mut v = base();
                v["spec"]["consumers"]["groups"][0]["replicas"] = (-1).into();
                v
            },
            "spec.consumers.groups[0].replicas",
        ),
        (
            "maxRetries -2",
            {
                let mut v = base();
                v["spec"]["consumers"]["groups"][1]["retry"]["maxRetries"] = (-2).into();
                v
            },
            "spec.consumers.groups[1].retry.maxRetries",
        ),
        (
            "duplicate group names",
            {
                let mut v = base();
                v["spec"]["consumers"]["groups"][2]["name"] = "group-a".into();
                v
            },
            "spec.consumers.groups",
        ),
        (
            "a pod label the operator selects by",
            {
                let mut v = base();
                v["spec"]["consumers"]["groups"][0]["pod"] =
                    serde_json::json!({"metadata": {"labels": {"outbox.dev/group": "group-b"}}});
                v
            },
            "spec.consumers.groups[0].pod.metadata.labels",
        ),
        (
            "a relay read's size under both its name and its old name",
            {
                let mut v = base();
                v["spec"]["producers"]["relay"] =
                    serde_json::json!({"rowsPerRead": 100, "rowsPerKafkaBatch": 200});
                v
            },
            "rowsPerKafkaBatch is the old name of relay.rowsPerRead",
        ),
        (
            "a budget of 0 unavailable pods (a drain could never finish)",
            {
                let mut v = base();
                v["spec"]["producers"]["podDisruptionBudget"] =
                    serde_json::json!({"maxUnavailable": 0});
                v
            },
            "spec.producers.podDisruptionBudget.maxUnavailable",
        ),
    ];
    for (what, body, field) in cases {
        let system: OutboxSystem =
            serde_json::from_value(body).unwrap_or_else(|e| panic!("{what}: {e}"));
        match api.create(&PostParams::default(), &system).await {
            Err(kube::Error::Api(status)) => {
                assert_eq!(status.code, 422, "{what}: {status:?}");
                assert!(
                    status.message.contains(field),
                    "{what}: {:?} does not name {field}",
                    status.message
                );
                if what == "duplicate group names" {
                    assert!(
                        status.message.contains("group names must be unique"),
                        "{}",
                        status.message
                    );
                }
            }
            other => panic!("{what} was not refused: {other:?}"),
        }
    }
    let valid: OutboxSystem = serde_json::from_value(base()).unwrap_or_else(|e| panic!("{e}"));
    api.create(&PostParams::default(), &valid)
        .await
        .unwrap_or_else(|e| panic!("the valid base spec was refused: {e}"));
    let rename = serde_json::json!({"spec": {"topic": {"name": "other-topic"}}});
    match api
        .patch("bad", &PatchParams::default(), &Patch::Merge(&rename))
        .await
    {
        Err(kube::Error::Api(status)) => {
            assert!(
                status.message.contains("spec.topic.name is immutable"),
                "{}",
                status.message
            )
        }
        other => panic!("renaming the topic was not refused: {other:?}"),
    }
    delete_namespace(&client, &ns).await;
}

#[tokio::test]
async fn invalid_load_tests_are_refused_by_the_api_server_naming_the_rule() {
    let (client, ns) = setup("lt-invalid").await;
    let api: Api<LoadTest> = Api::namespaced(client.clone(), &ns);
    let base = || {
        let mut v = serde_json::to_value(parse_sample::<LoadTest>("manifests/loadtest-rate.yaml"))
            .unwrap_or_default();
        v["metadata"]["name"] = "bad".into();
        v
    };
    let cases: Vec<(&str, serde_json::Value, &str)> = vec![
        (
            "messages and an arrival rate",
            {
                let mut v = base();
                v["spec"]["scenarios"][0]["messages"] = 5.into();
                v
            },
            "exactly one of messages",
        ),
        (
            "neither messages nor an arrival rate",
            {
                let mut v = base();
                v["spec"]["scenarios"][0] = serde_json::json!({"name": "empty"});
                v
            },
            "exactly one of messages",
        ),
        (
            "a batching arrival rate",
            {
                let mut v = base();
                v["spec"]["scenarios"][0]["batching"] = true.into();
                v
            },
            "batching must be false",
        ),
        (
            "concurrency on an arrival rate",
            {
                let mut v = base();
                v["spec"]["scenarios"][0]["concurrency"] = 4.into();
                v
            },
            "arrivalRate.connections, not concurrency",
        ),
        (
            "an arrival rate via enqueue",
            {
                let mut v = base();
                v["spec"]["scenarios"][0]["via"] = "enqueue".into();
                v
            },
            "via enqueue sends as fast as its concurrency allows",
        ),
        (
            "501 connections",
            {
                let mut v = base();
                v["spec"]["scenarios"][0]["arrivalRate"]["connections"] = 501.into();
                v
            },
            "spec.scenarios[0].arrivalRate.connections",
        ),
        (
            "a rate of 0",
            {
                let mut v = base();
                v["spec"]["scenarios"][1]["arrivalRate"]["stages"][2]["ratePerSecond"] = 0.into();
                v
            },
            "spec.scenarios[1].arrivalRate.stages[2].ratePerSecond",
        ),
        (
            "the first scenario with the previous one",
            {
                let mut v = base();
                v["spec"]["scenarios"][0]["withPrevious"] = true.into();
                v
            },
            "the first scenario has no scenario before it",
        ),
        (
            "a latency limit without a percentile",
            {
                let mut v = base();
                v["spec"]["thresholds"]["requestLatencyMs"] = serde_json::json!({});
                v
            },
            "names at least one of p50, p95, p99",
        ),
        (
            "an achieved ratio above 1",
            {
                let mut v = base();
                v["spec"]["thresholds"]["minAchievedRatio"] = 1.5.into();
                v
            },
            "spec.thresholds.minAchievedRatio",
        ),
    ];
    for (what, body, says) in cases {
        let lt: LoadTest = serde_json::from_value(body).unwrap_or_else(|e| panic!("{what}: {e}"));
        match api.create(&PostParams::default(), &lt).await {
            Err(kube::Error::Api(status)) => {
                assert_eq!(status.code, 422, "{what}: {status:?}");
                assert!(
                    status.message.contains(says),
                    "{what}: {:?} does not say {says:?}",
                    status.message
                );
            }
            other => panic!("{what} was not refused: {other:?}"),
        }
    }
    delete_namespace(&client, &ns).await;
}

async fn delete_system_and_check_topic(policy: &str) -> (Option<usize>, String) {
    let (client, ns) = setup(&format!("obs-del-{}", policy.to_lowercase())).await;
    let _operator = start_operator(&client, &ns);
    let topic = unique_name("del-events");
    let mut system = reference_system(&topic);
    system.spec.topic.deletion_policy =
        serde_json::from_value(policy.into()).unwrap_or_else(|e| panic!("{e}"));
    let systems = create_system(&client, &ns, &system).await;
    let deployments: Api<Deployment> = Api::namespaced(client.clone(), &ns);
    eventually("topic created", WAIT, || {
        let topic = topic.clone();
        async move { kafka_partitions(&topic).await.map(|_| ()) }
    })
    .await;
    eventually("four Deployments", WAIT, || {
        let api = deployments.clone();
        async move { (api.list(&ListParams::default()).await.ok()?.items.len() == 4).then_some(()) }
    })
    .await;
    delete_and_wait(&systems, "outbox").await;
    // The topic per policy (checked before garbage collection, which is the
    // kube-controller-manager's job, not the operator's).
    let partitions = if policy == "Delete" {
        eventually("topic deleted", WAIT, || {
            let topic = topic.clone();
            async move { kafka_partitions(&topic).await.is_none().then_some(()) }
        })
        .await;
        None
    } else {
        kafka_partitions(&topic).await
    };
    eventually("Deployments garbage-collected", WAIT, || {
        let api = deployments.clone();
        async move {
            api.list(&ListParams::default())
                .await
                .ok()?
                .items
                .is_empty()
                .then_some(())
        }
    })
    .await;
    let config_maps: Api<ConfigMap> = Api::namespaced(client.clone(), &ns);
    wait_gone(&config_maps, "outbox-config").await;
    delete_namespace(&client, &ns).await;
    (partitions, topic)
}

#[tokio::test]
async fn deleting_a_system_whose_topic_never_existed_completes() {
    let (client, ns) = setup("obs-never").await;
    let _operator = start_operator(&client, &ns);
    let topic = unique_name("never-events");
    let mut system = reference_system(&topic);
    system.spec.paused = true; // apply never touches Kafka
    system.spec.topic.deletion_policy =
        serde_json::from_value("Delete".into()).unwrap_or_else(|e| panic!("{e}"));
    let systems = create_system(&client, &ns, &system).await;
    eventually("the topic finalizer added", WAIT, || {
        let api = systems.clone();
        async move {
            let s = api.get("outbox").await.ok()?;
            s.finalizers()
                .iter()
                .any(|f| f == "outbox.dev/topic")
                .then_some(())
        }
    })
    .await;
    assert_eq!(kafka_partitions(&topic).await, None);
    delete_and_wait(&systems, "outbox").await;
    delete_namespace(&client, &ns).await;
}

#[tokio::test]
async fn deleting_a_system_collects_its_children_and_retains_the_topic() {
    let (partitions, topic) = delete_system_and_check_topic("Retain").await;
    assert_eq!(partitions, Some(6), "topic {topic} should be kept");
}

#[tokio::test]
async fn deleting_a_system_with_delete_policy_deletes_the_topic() {
    let (partitions, topic) = delete_system_and_check_topic("Delete").await;
    assert_eq!(partitions, None, "topic {topic} should be gone");
}

#[tokio::test]
async fn deleting_a_system_whose_kafka_secret_is_gone_leaves_the_topic_and_finishes() {
    let (client, ns) = setup("obs-del-nosecret").await;
    let _operator = start_operator_with(
        &client,
        &ns,
        outbox_operator::Settings {
            status_refresh: Duration::from_secs(5),
            topic_deletion_timeout: Duration::from_secs(5),
            ..outbox_operator::Settings::default()
        },
    );
    let secrets: Api<Secret> = Api::namespaced(client.clone(), &ns);
    let secret: Secret = serde_json::from_value(serde_json::json!({
        "metadata": {"name": "kafka-client"},
        "stringData": {"KAFKA_CLIENT_SECURITY_PROTOCOL": "PLAINTEXT"}
    }))
    .unwrap_or_else(|e| panic!("{e}"));
    secrets
        .create(&PostParams::default(), &secret)
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    let topic = unique_name("orphan-events");
    let mut system = reference_system(&topic);
    system.spec.topic.deletion_policy =
        serde_json::from_value("Delete".into()).unwrap_or_else(|e| panic!("{e}"));
    system.spec.kafka.client_settings_secret_ref = Some(outbox_operator::crd::SecretRef {
        name: "kafka-client".into(),
    });
    let systems = create_system(&client, &ns, &system).await;
    eventually("topic created", WAIT, || {
        let topic = topic.clone();
        async move { kafka_partitions(&topic).await.map(|_| ()) }
    })
    .await;
    // As when a namespace is deleted: the Secret goes first, then the system.
    secrets
        .delete("kafka-client", &DeleteParams::default())
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    delete_and_wait(&systems, "outbox").await;
    let events: Api<k8s_openapi::api::events::v1::Event> = Api::namespaced(client.clone(), &ns);
    let note = tokio::time::timeout(Duration::from_secs(30), async {
        loop {
            let found = events
                .list(&ListParams::default())
                .await
                .ok()
                .and_then(|l| {
                    l.items
                        .into_iter()
                        .filter(|e| e.reason.as_deref() == Some("TopicLeftBehind"))
                        .filter_map(|e| e.note)
                        .find(|n| n.contains(&topic))
                });
            if let Some(note) = found {
                return note;
            }
            tokio::time::sleep(Duration::from_millis(500)).await;
        }
    })
    .await
    .unwrap_or_else(|_| panic!("no Warning TopicLeftBehind naming {topic} within 30 s"));
    assert!(note.contains("delete the topic"), "{note}");
    assert!(
        kafka_partitions(&topic).await.is_some(),
        "the topic is left, as the Event says"
    );
    let admin: rdkafka::admin::AdminClient<rdkafka::client::DefaultClientContext> = testbed()
        .kafka_config()
        .create()
        .unwrap_or_else(|e| panic!("{e}"));
    let _ = admin
        .delete_topics(&[topic.as_str()], &rdkafka::admin::AdminOptions::new())
        .await;
    delete_namespace(&client, &ns).await;
}

#[tokio::test]
async fn existing_topic_with_more_partitions_is_reported_as_a_conflict_not_ignored() {
    use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
    let (client, ns) = setup("obs-conflict").await;
    let topic = unique_name("conflict-events");
    let admin: AdminClient<rdkafka::client::DefaultClientContext> = testbed()
        .kafka_config()
        .create()
        .unwrap_or_else(|e| panic!("{e}"));
    let created = admin
        .create_topics(
            [&NewTopic::new(&topic, 8, TopicReplication::Fixed(1))],
            &AdminOptions::new(),
        )
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    assert!(created.iter().all(|r| r.is_ok()), "{created:?}");
    let _operator = start_operator(&client, &ns);
    let systems = create_system(&client, &ns, &reference_system(&topic)).await;
    let system = wait_for_reason(&systems, "outbox", "TopicReady", "TopicConflict").await;
    let (status, _, message) = condition(&system, "TopicReady").unwrap_or_default();
    assert_eq!(status, "False");
    assert!(message.contains("spec.topic.partitions is 6"), "{message}");
    assert!(message.contains("has 8 partitions"), "{message}");
    assert_eq!(
        condition(&system, "Degraded").map(|c| (c.0, c.1)),
        Some(("True".into(), "TopicConflict".into()))
    );
    assert_eq!(
        system
            .status
            .and_then(|s| s.topic)
            .and_then(|t| t.partitions),
        Some(8)
    );
    assert_eq!(
        kafka_partitions(&topic).await,
        Some(8),
        "the operator never shrinks a topic"
    );
    delete_namespace(&client, &ns).await;
}

#[tokio::test]
async fn unreachable_kafka_is_reported_as_degraded_while_the_workloads_are_still_applied() {
    let (client, ns) = setup("obs-nokafka").await;
    let _operator = start_operator(&client, &ns);
    let mut system = reference_system(&unique_name("nokafka-events"));
    system.spec.kafka.bootstrap_servers = "127.0.0.1:1".into();
    let systems = create_system(&client, &ns, &system).await;
    let s = wait_for_reason(&systems, "outbox", "Degraded", "KafkaUnavailable").await;
    assert_eq!(condition(&s, "Degraded").map(|c| c.0), Some("True".into()));
    assert_eq!(
        condition(&s, "TopicReady").map(|c| (c.0, c.1)),
        Some(("False".into(), "KafkaUnavailable".into()))
    );
    assert_eq!(
        s.status.and_then(|s| s.topic).and_then(|t| t.partitions),
        None
    );
    let deployments: Api<Deployment> = Api::namespaced(client.clone(), &ns);
    assert_eq!(
        deployments
            .list(&ListParams::default())
            .await
            .unwrap_or_else(|e| panic!("{e}"))
            .items
            .len(),
        4
    );
    delete_namespace(&client, &ns).await;
}

#[tokio::test]
async fn paused_system_is_left_as_it_is_until_unpaused() {
    let (client, ns) = setup("obs-paused").await;
    let _operator = start_operator(&client, &ns);
    let topic = unique_name("paused-events");
    let systems = create_system(&client, &ns, &reference_system(&topic)).await;
    let deployments: Api<Deployment> = Api::namespaced(client.clone(), &ns);
    let replicas = |want: i32| {
        let api = deployments.clone();
        move || {
            let api = api.clone();
            async move {
                let d = api.get_opt("outbox-producer").await.ok()??;
                (d.spec?.replicas == Some(want)).then_some(())
            }
        }
    };
    eventually("producer Deployment with 3 replicas", WAIT, replicas(3)).await;
    let pause = serde_json::json!({"spec": {"paused": true, "producers": {"replicas": 1}}});
    let paused = systems
        .patch("outbox", &PatchParams::default(), &Patch::Merge(&pause))
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    eventually("Paused condition for the new generation", WAIT, || {
        let api = systems.clone();
        let generation = paused.metadata.generation;
        async move {
            let s = api.get("outbox").await.ok()?;
            let status = s.status.as_ref()?;
            (condition(&s, "Paused")?.0 == "True" && status.observed_generation == generation)
                .then_some(())
        }
    })
    .await;
    tokio::time::sleep(Duration::from_secs(3)).await;
    eventually("producer Deployment still at 3 replicas", WAIT, replicas(3)).await;
    let resume = serde_json::json!({"spec": {"paused": false}});
    systems
        .patch("outbox", &PatchParams::default(), &Patch::Merge(&resume))
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    eventually(
        "producer Deployment scaled to 1 after unpausing",
        WAIT,
        replicas(1),
    )
    .await;
    delete_namespace(&client, &ns).await;
}

#[tokio::test]
async fn topic_config_from_the_spec_is_applied_and_updated_in_kafka() {
    let (client, ns) = setup("obs-config").await;
    let _operator = start_operator(&client, &ns);
    let topic = unique_name("config-events");
    let mut system = reference_system(&topic);
    system
        .spec
        .topic
        .config
        .insert("retention.ms".into(), "3600000".into());
    let systems = create_system(&client, &ns, &system).await;
    eventually("retention.ms 3600000 in Kafka", WAIT, || {
        let topic = topic.clone();
        async move {
            (kafka_topic_config(&topic, "retention.ms").await.as_deref() == Some("3600000"))
                .then_some(())
        }
    })
    .await;
    let change = serde_json::json!({"spec": {"topic": {"config": {"retention.ms": "7200000", "cleanup.policy": "delete"}}}});
    systems
        .patch("outbox", &PatchParams::default(), &Patch::Merge(&change))
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    eventually("retention.ms 7200000 in Kafka", WAIT, || {
        let topic = topic.clone();
        async move {
            (kafka_topic_config(&topic, "retention.ms").await.as_deref() == Some("7200000"))
                .then_some(())
        }
    })
    .await;
    delete_namespace(&client, &ns).await;
}

#[tokio::test]
async fn consumer_lag_in_status_follows_the_groups_committed_offsets() {
    use rdkafka::consumer::CommitMode;
    use rdkafka::producer::{BaseRecord, DefaultProducerContext, Producer, ThreadedProducer};
    use rdkafka::{Offset, TopicPartitionList};
    let (client, ns) = setup("obs-lag").await;
    let _operator = start_operator(&client, &ns);
    let topic = unique_name("lag-events");
    // Kafka's consumer groups are cluster-wide; the operator prefixes each with the
    // namespace and the system's name, and this test's namespace is its own.
    let system = reference_system(&topic);
    let group_a = system.spec.consumers.groups[0].name.clone();
    let kafka_group_a = outbox_operator::crd::kafka_group_id(&ns, "outbox", &group_a);
    let systems = create_system(&client, &ns, &system).await;
    eventually("topic created", WAIT, || {
        let topic = topic.clone();
        async move { (kafka_partitions(&topic).await == Some(6)).then_some(()) }
    })
    .await;

    // Ten messages into partition 0; group-a has committed offset 4 there, the others nothing.
    let config = testbed().kafka_config();
    let t = topic.clone();
    let group = kafka_group_a.clone();
    tokio::task::spawn_blocking(move || {
        let producer: ThreadedProducer<DefaultProducerContext> =
            config.create().unwrap_or_else(|e| panic!("{e}"));
        for i in 0..10 {
            let payload = format!("m{i}");
            producer
                .send(BaseRecord::<(), _>::to(&t).partition(0).payload(&payload))
                .unwrap_or_else(|(e, _)| panic!("{e}"));
        }
        producer
            .flush(Duration::from_secs(10))
            .unwrap_or_else(|e| panic!("{e}"));
        let mut group_config = testbed().kafka_config();
        group_config.set("group.id", &group);
        let consumer: BaseConsumer = group_config.create().unwrap_or_else(|e| panic!("{e}"));
        let mut offsets = TopicPartitionList::new();
        offsets
            .add_partition_offset(&t, 0, Offset::Offset(4))
            .unwrap_or_else(|e| panic!("{e}"));
        consumer
            .commit(&offsets, CommitMode::Sync)
            .unwrap_or_else(|e| panic!("{e}"));
    })
    .await
    .unwrap_or_else(|e| panic!("{e}"));

    let lags = eventually("lag 6 for group-a and 10 for the others", WAIT, || {
        let api = systems.clone();
        async move {
            let groups = api.get("outbox").await.ok()?.status?.groups;
            let lags: Vec<(String, Option<String>, Option<i64>)> = groups
                .into_iter()
                .map(|g| (g.name, g.kafka_group_id, g.lag))
                .collect();
            (lags.iter().map(|(_, _, l)| *l).collect::<Vec<_>>() == [Some(6), Some(10), Some(10)])
                .then_some(lags)
        }
    })
    .await;
    // Shown under its declared name, read by its Kafka group id.
    assert_eq!(lags[0].0, group_a);
    assert_eq!(lags[0].1.as_deref(), Some(kafka_group_a.as_str()));
    delete_namespace(&client, &ns).await;
}

#[tokio::test]
async fn outbox_backlog_is_read_from_the_database_the_secret_names() {
    let (client, ns) = setup("obs-backlog").await;
    // A schema of its own with the view the workers' migrations create.
    let url = testbed()
        .fresh_schema("backlog")
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    let (db, connection) = tokio_postgres::connect(&url, tokio_postgres::NoTls)
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    let connection = tokio::spawn(connection);
    db.batch_execute(
        "CREATE TABLE pending_rows (created_at timestamptz NOT NULL);
         INSERT INTO pending_rows SELECT now() - interval '300 seconds' FROM generate_series(1, 5);
         CREATE TABLE quarantined_rows (id bigint);
         INSERT INTO quarantined_rows VALUES (1), (2);
         CREATE VIEW outbox_backlog AS
           SELECT count(*)::bigint AS pending,
                  extract(epoch FROM now() - min(created_at))::double precision AS oldest_age_seconds,
                  (SELECT count(*) FROM quarantined_rows)::bigint AS quarantined
           FROM pending_rows;",
    )
    .await
    .unwrap_or_else(|e| panic!("{e}"));
    drop(db);
    let _ = connection.await;
    let secrets: Api<Secret> = Api::namespaced(client.clone(), &ns);
    let secret = Secret {
        metadata: kube::api::ObjectMeta {
            name: Some("backlog-db".into()),
            ..Default::default()
        },
        data: Some(BTreeMap::from([(
            "dsn".to_string(),
            ByteString(url.clone().into_bytes()),
        )])),
        ..Default::default()
    };
    secrets
        .create(&PostParams::default(), &secret)
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    let _operator = start_operator(&client, &ns);
    let mut system = reference_system(&unique_name("backlog-events"));
    system.spec.database.url_secret_ref.name = "backlog-db".into();
    system.spec.database.url_secret_ref.key = "dsn".into();
    let systems = create_system(&client, &ns, &system).await;
    let backlog = eventually("backlog in status", WAIT, || {
        let api = systems.clone();
        async move { api.get("outbox").await.ok()?.status?.backlog }
    })
    .await;
    assert_eq!(backlog.pending, 5);
    assert_eq!(backlog.quarantined, 2);
    let age = backlog.oldest_age_seconds.unwrap_or_default();
    assert!((299.0..900.0).contains(&age), "oldest age {age}");
    let s = systems
        .get("outbox")
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(
        condition(&s, "BacklogObserved").map(|c| c.0),
        Some("True".into())
    );
    let quarantined = condition(&s, "MessagesQuarantined").unwrap_or_default();
    assert_eq!(
        (quarantined.0.as_str(), quarantined.1.as_str()),
        ("True", "KafkaRefusedMessages")
    );
    assert!(quarantined.2.starts_with("2 message(s)"), "{quarantined:?}");
    // Rows wait past the threshold (120 s) and nothing holds them back: the relay is
    // not publishing.
    wait_for_reason(&systems, "outbox", "DeliveryStalled", "RelayNotPublishing").await;
    // Another client's open transaction that holds an id: named by its backend.
    let (foreign, foreign_connection) = tokio_postgres::connect(&url, tokio_postgres::NoTls)
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    let foreign_connection = tokio::spawn(foreign_connection);
    foreign
        .batch_execute("BEGIN; INSERT INTO quarantined_rows VALUES (3)")
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    let pid: i32 = foreign
        .query_one("SELECT pg_backend_pid()", &[])
        .await
        .unwrap_or_else(|e| panic!("{e}"))
        .get(0);
    let s = wait_for_reason(&systems, "outbox", "DeliveryStalled", "OpenTransaction").await;
    let stalled = condition(&s, "DeliveryStalled").unwrap_or_default();
    assert_eq!(stalled.0, "True");
    assert!(
        stalled.2.contains(&format!("backend pid {pid} "))
            && stalled.2.contains("idle in transaction"),
        "{stalled:?}"
    );
    drop(foreign);
    let _ = foreign_connection.await;
    wait_for_reason(&systems, "outbox", "DeliveryStalled", "RelayNotPublishing").await;

    // Point the Secret at a database that is not there: said in a condition, reconcile goes on.
    let broken = serde_json::json!({"stringData": {"dsn": "postgres://nobody@127.0.0.1:1/none?connect_timeout=2"}});
    secrets
        .patch(
            "backlog-db",
            &PatchParams::default(),
            &Patch::Merge(&broken),
        )
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    let s = wait_for_reason(&systems, "outbox", "BacklogObserved", "DatabaseUnreachable").await;
    let status = s.status.unwrap_or_default();
    assert_eq!(status.backlog, None, "an unknown backlog is left empty");
    assert!(
        status.topic.and_then(|t| t.partitions).is_some(),
        "the rest of the status is still written"
    );

    // TLS settings reach the operator's own connection: sslmode from the URL, the CA
    // from spec.database.caSecretRef (the testbed's PostgreSQL speaks no TLS).
    let joiner = if url.contains('?') { '&' } else { '?' };
    let tls_url =
        serde_json::json!({"stringData": {"dsn": format!("{url}{joiner}sslmode=verify-full")}});
    secrets
        .patch(
            "backlog-db",
            &PatchParams::default(),
            &Patch::Merge(&tls_url),
        )
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    let message = wait_for_message(
        &systems,
        "outbox",
        "BacklogObserved",
        "DatabaseSettingsInvalid",
    )
    .await;
    assert!(
        message.contains("verify-full") && message.contains("caSecretRef"),
        "{message}"
    );
    let with_ca = serde_json::json!({"spec": {"database": {"caSecretRef": {"name": "backlog-ca", "key": "ca.crt"}}}});
    systems
        .patch("outbox", &PatchParams::default(), &Patch::Merge(&with_ca))
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    let message = wait_for_message(
        &systems,
        "outbox",
        "BacklogObserved",
        "DatabaseSecretMissing",
    )
    .await;
    assert!(
        message.contains("backlog-ca") && message.contains("caSecretRef"),
        "{message}"
    );
    let ca_pem = testbed_support::tls::TestCa::new("a CA this PostgreSQL never heard of").pem();
    let ca_secret = Secret {
        metadata: kube::api::ObjectMeta {
            name: Some("backlog-ca".into()),
            ..Default::default()
        },
        string_data: Some(BTreeMap::from([("ca.crt".to_string(), ca_pem)])),
        ..Default::default()
    };
    secrets
        .create(&PostParams::default(), &ca_secret)
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    let message =
        wait_for_message(&systems, "outbox", "BacklogObserved", "DatabaseUnreachable").await;
    assert!(
        message.contains("TLS"),
        "the CA was read and TLS insisted on: {message}"
    );
    delete_namespace(&client, &ns).await;
}

#[tokio::test]
async fn kafka_client_settings_come_from_the_referenced_secret() {
    let (client, ns) = setup("obs-kafka-secret").await;
    let _operator = start_operator(&client, &ns);
    let topic = unique_name("secret-events");
    let mut system = reference_system(&topic);
    system.spec.kafka.client_settings_secret_ref = Some(outbox_operator::crd::SecretRef {
        name: "kafka-client".into(),
    });
    let systems = create_system(&client, &ns, &system).await;
    let message = wait_for_message(
        &systems,
        "outbox",
        "TopicReady",
        "KafkaSettingsSecretMissing",
    )
    .await;
    assert!(
        message.contains("spec.kafka.clientSettingsSecretRef"),
        "{message}"
    );
    assert_eq!(kafka_partitions(&topic).await, None);

    // The Secret appears with a librdkafka property: the topic gets created through it.
    let secrets: Api<Secret> = Api::namespaced(client.clone(), &ns);
    let secret: Secret = serde_json::from_value(serde_json::json!({
        "metadata": {"name": "kafka-client"},
        "stringData": {"KAFKA_CLIENT_SECURITY_PROTOCOL": "PLAINTEXT",
                       "LD_PRELOAD": "/tmp/evil.so"}
    }))
    .unwrap_or_else(|e| panic!("{e}"));
    secrets
        .create(&PostParams::default(), &secret)
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    eventually("topic created once the Secret exists", WAIT, || {
        let topic = topic.clone();
        async move { (kafka_partitions(&topic).await == Some(6)).then_some(()) }
    })
    .await;
    let deployments: Api<Deployment> = Api::namespaced(client.clone(), &ns);
    let producer = deployments
        .get("outbox-producer")
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    let container = producer
        .spec
        .and_then(|s| s.template.spec)
        .map(|p| p.containers[0].clone())
        .unwrap_or_default();
    assert!(
        container
            .env_from
            .iter()
            .flatten()
            .all(|e| e.secret_ref.is_none()),
        "no Secret imported whole: {:?}",
        container.env_from
    );
    let from_secret: Vec<(String, String)> = container
        .env
        .iter()
        .flatten()
        .filter_map(|e| {
            let r = e.value_from.as_ref()?.secret_key_ref.as_ref()?;
            (r.name == "kafka-client").then(|| (e.name.clone(), r.key.clone()))
        })
        .collect();
    assert_eq!(
        from_secret,
        [(
            "KAFKA_CLIENT_SECURITY_PROTOCOL".to_string(),
            "KAFKA_CLIENT_SECURITY_PROTOCOL".to_string()
        )],
        "only the KAFKA_CLIENT_* keys, not LD_PRELOAD"
    );

    // A property that would make the operator's own client load a file: refused, named.
    secrets
        .patch(
            "kafka-client",
            &PatchParams::default(),
            &Patch::Merge(serde_json::json!({
                "stringData": {"KAFKA_CLIENT_SSL_CA_LOCATION": "/var/run/secrets/kubernetes.io/serviceaccount/token"}
            })),
        )
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    let message = wait_for_message(
        &systems,
        "outbox",
        "TopicReady",
        "KafkaClientSettingRefused",
    )
    .await;
    assert!(
        message.contains("KAFKA_CLIENT_SSL_CA_LOCATION (ssl.ca.location)")
            && !message.contains("serviceaccount/token"),
        "{message}"
    );
    // The workers still get it: the settings are the system's, for its own pods.
    eventually("the producers get the new key", WAIT, || {
        let deployments = deployments.clone();
        async move {
            let d = deployments.get("outbox-producer").await.ok()?;
            env_of(&d)
                .contains_key("KAFKA_CLIENT_SSL_CA_LOCATION")
                .then_some(())
        }
    })
    .await;
    delete_namespace(&client, &ns).await;
}

#[tokio::test]
async fn loadtest_for_a_missing_system_gets_system_not_found_and_no_job_until_it_exists() {
    let (client, ns) = setup("lt-missing").await;
    let _operator = start_operator(&client, &ns);
    let loadtests: Api<LoadTest> = Api::namespaced(client.clone(), &ns);
    loadtests
        .create(
            &PostParams::default(),
            &small_loadtest("orphan", "no-such-system"),
        )
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    let lt = eventually("SystemNotFound condition", WAIT, || {
        let api = loadtests.clone();
        async move {
            let lt = api.get("orphan").await.ok()?;
            let found = lt.status.as_ref()?.conditions.iter().any(|c| {
                c.type_ == "Scheduled" && c.status == "False" && c.reason == "SystemNotFound"
            });
            found.then_some(lt)
        }
    })
    .await;
    let message = lt.status.and_then(|s| s.message).unwrap_or_default();
    assert!(message.contains("no-such-system"), "{message}");
    let jobs: Api<Job> = Api::namespaced(client.clone(), &ns);
    assert!(jobs
        .list(&ListParams::default())
        .await
        .unwrap_or_else(|e| panic!("{e}"))
        .items
        .is_empty());

    // The system appears: the LoadTest gets its one Job without waiting for a retry.
    let mut system = reference_system(&unique_name("late-events"));
    system.metadata.name = Some("no-such-system".into());
    create_system(&client, &ns, &system).await;
    eventually(
        "the Job once the system exists",
        Duration::from_secs(10),
        || {
            let api = jobs.clone();
            async move { api.get_opt("orphan-run").await.ok().flatten() }
        },
    )
    .await;
    eventually("Scheduled True", WAIT, || {
        let api = loadtests.clone();
        async move {
            let lt = api.get("orphan").await.ok()?;
            let status = lt.status?;
            let scheduled = status
                .conditions
                .iter()
                .any(|c| c.type_ == "Scheduled" && c.status == "True" && c.reason == "JobCreated");
            (scheduled && status.message.is_none()).then_some(())
        }
    })
    .await;
    delete_namespace(&client, &ns).await;
}

#[tokio::test]
async fn a_loadtest_where_the_runner_account_is_missing_fails_at_once_saying_what_to_do() {
    let (client, ns) = setup("lt-noaccount").await;
    // A namespace the chart's loadtest.namespaces did not list: no runner account.
    let accounts: Api<k8s_openapi::api::core::v1::ServiceAccount> =
        Api::namespaced(client.clone(), &ns);
    accounts
        .delete("outbox-loadtest", &DeleteParams::default())
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    let _operator = start_operator(&client, &ns);
    create_system(
        &client,
        &ns,
        &reference_system(&unique_name("noaccount-events")),
    )
    .await;
    let loadtests: Api<LoadTest> = Api::namespaced(client.clone(), &ns);
    loadtests
        .create(
            &PostParams::default(),
            &small_loadtest("stranded", "outbox"),
        )
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    let status = wait_failed(&loadtests, "stranded").await;
    let complete = status
        .conditions
        .iter()
        .find(|c| c.type_ == "Complete")
        .unwrap_or_else(|| panic!("no Complete condition: {status:?}"));
    assert_eq!(complete.reason, "RunnerAccountMissing", "{status:?}");
    assert!(
        complete.message.contains("loadtest.namespaces"),
        "{}",
        complete.message
    );
    let jobs: Api<Job> = Api::namespaced(client.clone(), &ns);
    assert!(
        jobs.list(&ListParams::default())
            .await
            .unwrap_or_else(|e| panic!("{e}"))
            .items
            .is_empty(),
        "no Job that could never start a pod"
    );
    delete_namespace(&client, &ns).await;
}

#[tokio::test]
async fn images_outside_the_allowed_repositories_are_not_run_and_the_refusal_names_image_and_list()
{
    let (client, ns) = setup("image-policy").await;
    let _operator = start_operator_with(
        &client,
        &ns,
        outbox_operator::Settings {
            status_refresh: Duration::from_secs(5),
            image_policy: outbox_operator::image_policy::ImagePolicy::from_list(
                "registry.example/team/",
            ),
            ..outbox_operator::Settings::default()
        },
    );
    let evil = "registry.example/team-evil/worker:1";
    // A system naming an image beside the allowed prefix: refused, nothing applied.
    let mut refused = reference_system(&unique_name("evil-events"));
    refused.metadata.name = Some("evil".into());
    refused.spec.producers.image = Some(evil.into());
    let systems = create_system(&client, &ns, &refused).await;
    let message = wait_for_message(&systems, "evil", "Ready", "ImageNotAllowed").await;
    assert!(
        message.contains(evil)
            && message.contains("spec.producers.image")
            && message.contains("registry.example/team/"),
        "{message}"
    );
    let deployments: Api<Deployment> = Api::namespaced(client.clone(), &ns);
    assert_no_workloads(&deployments, "evil").await;
    assert_eq!(
        Api::<ConfigMap>::namespaced(client.clone(), &ns)
            .get_opt("evil-config")
            .await
            .unwrap_or_else(|e| panic!("{e}")),
        None,
        "nothing of a refused system is applied"
    );

    // A LoadTest naming such a runner image against an admitted system: fails, no Job.
    let mut admitted = reference_system(&unique_name("good-events"));
    admitted.spec.image = Some("registry.example/team/worker:1".into());
    create_system(&client, &ns, &admitted).await;
    let loadtests: Api<LoadTest> = Api::namespaced(client.clone(), &ns);
    let mut lt = small_loadtest("evil-runner", "outbox");
    lt.spec.image = Some(evil.into());
    loadtests
        .create(&PostParams::default(), &lt)
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    let status = wait_failed(&loadtests, "evil-runner").await;
    let scheduled = status
        .conditions
        .iter()
        .find(|c| c.type_ == "Scheduled")
        .unwrap_or_else(|| panic!("no Scheduled condition: {status:?}"));
    assert_eq!(
        (scheduled.status.as_str(), scheduled.reason.as_str()),
        ("False", "ImageNotAllowed"),
        "{status:?}"
    );
    assert!(scheduled.message.contains(evil), "{}", scheduled.message);
    let jobs: Api<Job> = Api::namespaced(client.clone(), &ns);
    assert!(
        jobs.list(&ListParams::default())
            .await
            .unwrap_or_else(|e| panic!("{e}"))
            .items
            .is_empty(),
        "no Job for a refused runner image"
    );
    let events: Api<k8s_openapi::api::events::v1::Event> = Api::namespaced(client.clone(), &ns);
    eventually("ImageNotAllowed Events", WAIT, || {
        let events = events.clone();
        async move {
            let list = events.list(&ListParams::default()).await.ok()?;
            let about = |kind: &str| {
                list.items.iter().any(|e| {
                    e.reason.as_deref() == Some("ImageNotAllowed")
                        && e.regarding.as_ref().and_then(|r| r.kind.as_deref()) == Some(kind)
                })
            };
            (about("OutboxSystem") && about("LoadTest")).then_some(())
        }
    })
    .await;
    delete_namespace(&client, &ns).await;
}

#[tokio::test]
async fn a_runner_may_write_only_its_own_report_and_keys_added_to_the_system_config_map_are_removed(
) {
    let (client, ns) = setup("shared-rbac").await;
    let _operator = start_operator(&client, &ns);
    create_system(&client, &ns, &reference_system(&unique_name("rbac-events"))).await;
    let config_maps: Api<ConfigMap> = Api::namespaced(client.clone(), &ns);
    let applied = wait_present(&config_maps, "outbox-config").await;
    let owned_keys: Vec<String> = applied.data.unwrap_or_default().into_keys().collect();

    // Someone who may patch ConfigMaps sends every worker to another broker...
    config_maps
        .patch(
            "outbox-config",
            &PatchParams::default(),
            &Patch::Merge(serde_json::json!({
                "data": {"KAFKA_CLIENT_BOOTSTRAP_SERVERS": "evil.example:9092"}
            })),
        )
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    // ... until the next reconcile, which removes the key and says so.
    eventually("the added key removed", WAIT, || {
        let config_maps = config_maps.clone();
        async move {
            let cm = config_maps.get("outbox-config").await.ok()?;
            (!cm.data?.contains_key("KAFKA_CLIENT_BOOTSTRAP_SERVERS")).then_some(())
        }
    })
    .await;
    let data = config_maps
        .get("outbox-config")
        .await
        .unwrap_or_else(|e| panic!("{e}"))
        .data
        .unwrap_or_default();
    assert_eq!(
        data.into_keys().collect::<Vec<_>>(),
        owned_keys,
        "the operator's own keys stay"
    );
    let events: Api<k8s_openapi::api::events::v1::Event> = Api::namespaced(client.clone(), &ns);
    eventually("a ConfigKeysRemoved Event naming the key", WAIT, || {
        let events = events.clone();
        async move {
            let list = events.list(&ListParams::default()).await.ok()?;
            list.items
                .iter()
                .any(|e| {
                    e.reason.as_deref() == Some("ConfigKeysRemoved")
                        && e.note
                            .as_deref()
                            .is_some_and(|n| n.contains("KAFKA_CLIENT_BOOTSTRAP_SERVERS"))
                })
                .then_some(())
        }
    })
    .await;

    // A LoadTest: its report ConfigMap exists, empty and owned by it, before its Job,
    // and its runner may get and patch that one ConfigMap and no other.
    let loadtests: Api<LoadTest> = Api::namespaced(client.clone(), &ns);
    let lt = loadtests
        .create(&PostParams::default(), &small_loadtest("rbac", "outbox"))
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    let jobs: Api<Job> = Api::namespaced(client.clone(), &ns);
    wait_present(&jobs, "rbac-run").await;
    let report = config_maps
        .get("rbac-report")
        .await
        .unwrap_or_else(|e| panic!("the report ConfigMap before the Job: {e}"));
    assert_eq!(report.data, None);
    let owner = report.metadata.owner_references.clone().unwrap_or_default();
    assert_eq!(
        owner
            .iter()
            .map(|o| (o.kind.as_str(), o.uid.as_str(), o.controller))
            .collect::<Vec<_>>(),
        [(
            "LoadTest",
            lt.uid().unwrap_or_default().as_str(),
            Some(true)
        )]
    );
    let runner = "outbox-loadtest";
    for (verb, name, want) in [
        ("get", Some("rbac-report"), true),
        ("patch", Some("rbac-report"), true),
        ("patch", Some("outbox-config"), false),
        ("update", Some("outbox-config"), false),
        ("delete", Some("rbac-report"), false),
        ("create", None, false),
        ("list", None, false),
    ] {
        assert_eq!(
            testbed_support::service_account_may(&client, &ns, runner, verb, "configmaps", name)
                .await,
            want,
            "the runner's {verb} on configmaps/{name:?}"
        );
    }
    delete_namespace(&client, &ns).await;
}

#[tokio::test]
async fn finished_loadtest_keeps_its_phase_and_results_and_loses_its_job_after_the_ttl() {
    let (client, ns) = setup("lt-ttl").await;
    let _operator = start_operator(&client, &ns);
    create_system(&client, &ns, &reference_system(&unique_name("ttl-events"))).await;
    let loadtests: Api<LoadTest> = Api::namespaced(client.clone(), &ns);
    let mut lt = small_loadtest("short", "outbox");
    lt.spec.ttl_seconds_after_finished = Some(3);
    // No node carries this label, so the runner's pod stays Pending: the report below is
    // the only one written. A real runner scheduled on the node would write its own
    // phase over it, and the Job's deadline would then end it Failed, as it should.
    lt.spec
        .runner
        .pod
        .node_selector
        .insert("outbox.dev/test-no-such-node".into(), "true".into());
    loadtests
        .create(&PostParams::default(), &lt)
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    let jobs: Api<Job> = Api::namespaced(client.clone(), &ns);
    wait_present(&jobs, "short-run").await;

    // The runner's final report, written the way the runner writes it (its own manager).
    let now = k8s_openapi::jiff::Timestamp::now().to_string();
    let report = serde_json::json!({
        "apiVersion": "outbox.dev/v1alpha1",
        "kind": "LoadTest",
        "status": {
            "phase": "Succeeded",
            "completionTime": now,
            "acceptedMessages": 30500,
            "throughput": 12345.0,
            "conditions": [
                {"type": "Complete", "status": "True", "reason": "Finished", "message": "done", "lastTransitionTime": now},
                {"type": "Verified", "status": "True", "reason": "AllAcknowledged", "message": "ok", "lastTransitionTime": now}
            ]
        }
    });
    loadtests
        .patch_status(
            "short",
            &PatchParams::apply("test-runner").force(),
            &Patch::Apply(&report),
        )
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    // The Job ends as a runner's does once it reported (here: its deadline cut short),
    // and Kubernetes deletes it after its own ttlSecondsAfterFinished, which the
    // operator took from the LoadTest.
    let job = jobs
        .get("short-run")
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(
        job.spec.as_ref().and_then(|s| s.ttl_seconds_after_finished),
        Some(3)
    );
    jobs.patch(
        "short-run",
        &PatchParams::default(),
        &Patch::Merge(serde_json::json!({"spec": {"activeDeadlineSeconds": 1}})),
    )
    .await
    .unwrap_or_else(|e| panic!("{e}"));
    wait_gone(&jobs, "short-run").await;
    tokio::time::sleep(Duration::from_secs(3)).await;
    let jobs_left = jobs
        .list(&ListParams::default())
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    assert!(
        jobs_left.items.is_empty(),
        "no second Job after the first was cleaned up"
    );
    let status = loadtests
        .get("short")
        .await
        .unwrap_or_else(|e| panic!("{e}"))
        .status
        .unwrap_or_default();
    assert_eq!(
        status.phase,
        Some(LoadTestPhase::Succeeded),
        "the operator never moves a finished phase"
    );
    assert_eq!(status.accepted_messages, Some(30500));
    let types: Vec<&str> = status.conditions.iter().map(|c| c.type_.as_str()).collect();
    for wanted in ["Scheduled", "Complete", "Verified"] {
        assert!(types.contains(&wanted), "{wanted} missing from {types:?}");
    }
    delete_namespace(&client, &ns).await;
}

#[tokio::test]
async fn loadtest_gets_exactly_one_job_across_operator_restarts_and_status_does_not_flap() {
    let (client, ns) = setup("lt-restart").await;
    let mut operator = OperatorProcess::spawn(&ns, &format!("{ns}-operator-1"));
    let topic = unique_name("lt-events");
    create_system(&client, &ns, &reference_system(&topic)).await;
    let loadtests: Api<LoadTest> = Api::namespaced(client.clone(), &ns);
    loadtests
        .create(&PostParams::default(), &small_loadtest("small", "outbox"))
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    let jobs: Api<Job> = Api::namespaced(client.clone(), &ns);
    let job = wait_present(&jobs, "small-run").await;
    let args = job
        .spec
        .as_ref()
        .and_then(|s| s.template.spec.as_ref())
        .and_then(|p| p.containers[0].args.clone());
    assert_eq!(
        args,
        Some(
            ["loadtest", "--namespace", ns.as_str(), "--name", "small"]
                .map(String::from)
                .to_vec()
        )
    );
    assert_eq!(
        job.owner_references().first().map(|o| o.kind.as_str()),
        Some("LoadTest")
    );
    let before = eventually("phase Pending with jobName", WAIT, || {
        let api = loadtests.clone();
        async move {
            let lt = api.get("small").await.ok()?;
            let status = lt.status.clone()?;
            (status.phase == Some(LoadTestPhase::Pending)
                && status.job_name.as_deref() == Some("small-run"))
            .then_some(status)
        }
    })
    .await;
    let health = eventually("/healthz", WAIT, || operator.get("/healthz")).await;
    assert!(health.ends_with("ok"), "{health}");

    // Restart: kill the process, start a new one, make it reconcile the LoadTest again.
    drop(operator);
    operator = OperatorProcess::spawn(&ns, &format!("{ns}-operator-2"));
    let poke = serde_json::json!({"metadata": {"annotations": {"test/poke": "1"}}});
    loadtests
        .patch("small", &PatchParams::default(), &Patch::Merge(&poke))
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    eventually(
        "the restarted operator reconciled LoadTests",
        WAIT,
        || async { operator.reconciled_loadtests().await.then_some(()) },
    )
    .await;
    tokio::time::sleep(Duration::from_secs(3)).await;
    let all_jobs = jobs
        .list(&ListParams::default())
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    let names: Vec<String> = all_jobs.iter().map(|j| j.name_any()).collect();
    assert_eq!(names, ["small-run"], "exactly one Job");
    assert_eq!(
        all_jobs.items[0].uid(),
        job.uid(),
        "the same Job, not a new one"
    );
    let after = loadtests
        .get("small")
        .await
        .unwrap_or_else(|e| panic!("{e}"))
        .status
        .unwrap_or_default();
    assert_eq!(after.phase, Some(LoadTestPhase::Pending));
    assert_eq!(
        after.conditions, before.conditions,
        "conditions did not flap across the restart"
    );
    drop(operator);
    delete_namespace(&client, &ns).await;
}

#[tokio::test]
async fn only_the_lease_holder_reconciles_another_replica_takes_over_when_it_dies_and_sigterm_releases_the_lease(
) {
    let (client, ns) = setup("leader").await;
    let a = OperatorProcess::spawn_elected(&ns, "replica-a");
    let holder = || lease_holder(&client, &ns);
    let first = eventually("replica-a holds the Lease", WAIT, || async {
        holder().await.filter(|h| h == "replica-a")
    })
    .await;
    assert_eq!(first, "replica-a");
    let b = OperatorProcess::spawn_elected(&ns, "replica-b");
    let loadtests: Api<LoadTest> = Api::namespaced(client.clone(), &ns);
    loadtests
        .create(
            &PostParams::default(),
            &small_loadtest("probe", "no-such-system"),
        )
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    eventually("the leader reconciles", WAIT, || async {
        a.reconciled_loadtests().await.then_some(())
    })
    .await;
    eventually("/healthz of the waiting replica", WAIT, || {
        b.get("/healthz")
    })
    .await;
    assert!(
        !b.reconciled_loadtests().await,
        "the replica without the Lease must not reconcile"
    );

    drop(a); // SIGKILL: no release, the Lease has to expire
    eventually("replica-b takes the Lease over", WAIT, || async {
        holder().await.filter(|h| h == "replica-b")
    })
    .await;
    eventually("the new leader reconciles", WAIT, || async {
        b.reconciled_loadtests().await.then_some(())
    })
    .await;

    // SIGTERM: a clean exit that hands the Lease back at once.
    let mut b = b;
    let exit = b.terminate().await;
    assert!(
        exit.is_some_and(|s| s.success()),
        "exit on SIGTERM: {exit:?}"
    );
    assert_eq!(holder().await, None, "the Lease is released on shutdown");
    delete_namespace(&client, &ns).await;
}

#[tokio::test]
async fn a_paused_leader_stops_acting_before_a_new_leader_starts() {
    let (client, ns) = setup("paused").await;
    let mut a = OperatorProcess::spawn_elected(&ns, "replica-a");
    let holder = || lease_holder(&client, &ns);
    eventually("replica-a holds the Lease", WAIT, || async {
        holder().await.filter(|h| h == "replica-a")
    })
    .await;
    let b = OperatorProcess::spawn_elected(&ns, "replica-b");
    let loadtests: Api<LoadTest> = Api::namespaced(client.clone(), &ns);
    loadtests
        .create(
            &PostParams::default(),
            &small_loadtest("first", "no-such-system"),
        )
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    let before = eventually("the leader reconciles", WAIT, || async {
        a.loadtest_reconciliations().await.filter(|n| *n > 0)
    })
    .await;

    // Frozen (as a node that stalls): it cannot renew, replica-b takes over.
    a.signal("STOP");
    let resumed = {
        struct Resume<'a>(&'a OperatorProcess);
        impl Drop for Resume<'_> {
            fn drop(&mut self) {
                self.0.signal("CONT");
            }
        }
        Resume(&a)
    };
    loadtests
        .create(
            &PostParams::default(),
            &small_loadtest("second", "no-such-system"),
        )
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    eventually("replica-b takes the Lease over", WAIT, || async {
        holder().await.filter(|h| h == "replica-b")
    })
    .await;
    eventually("the new leader reconciles", WAIT, || async {
        b.reconciled_loadtests().await.then_some(())
    })
    .await;

    // Running again, with "second" waiting in its watch: it must not act on it, and
    // must give up.
    drop(resumed);
    let deadline = std::time::Instant::now() + Duration::from_secs(15);
    let exit = loop {
        if let Some(status) = a.exited() {
            break status;
        }
        if let Some(n) = a.loadtest_reconciliations().await {
            assert_eq!(n, before, "the paused leader reconciled after it ran again");
        }
        assert!(
            std::time::Instant::now() < deadline,
            "the paused leader did not give up within 15 s of running again\n{}",
            a.log_tail(40)
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert!(
        !exit.success(),
        "it exits saying it lost the Lease: {exit:?}"
    );
    assert_eq!(holder().await.as_deref(), Some("replica-b"));
    // Every Event about "second" (created while replica-a was frozen) came from
    // replica-b: replica-a never acted on it.
    let events: Api<k8s_openapi::api::events::v1::Event> = Api::namespaced(client.clone(), &ns);
    let reporters = eventually("an Event about the second LoadTest", WAIT, || {
        let events = events.clone();
        async move {
            let reporters: Vec<String> = events
                .list(&ListParams::default())
                .await
                .ok()?
                .into_iter()
                .filter(|e| e.regarding.as_ref().and_then(|r| r.name.as_deref()) == Some("second"))
                .filter_map(|e| e.reporting_instance)
                .collect();
            (!reporters.is_empty()).then_some(reporters)
        }
    })
    .await;
    assert!(
        reporters.iter().all(|r| r == "replica-b"),
        "Events about the second LoadTest from {reporters:?}"
    );
    delete_namespace(&client, &ns).await;
}

/// A leader that loses the Lease while one of its reconciles waits on Kafka (a broker
/// that accepts connections and never answers) drops that reconcile and exits: the
/// replica that took over may be acting already, so nothing more is written in the old
/// leader's name, however long the reconcile would still have taken.
#[tokio::test]
async fn a_leader_that_loses_the_lease_mid_reconcile_writes_nothing_more() {
    use k8s_openapi::api::coordination::v1::Lease;
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::MicroTime;
    let (client, ns) = setup("lost-mid").await;
    // The kernel completes the handshakes (its backlog); nothing ever reads or answers.
    let silent = std::net::TcpListener::bind("127.0.0.1:0").unwrap_or_else(|e| panic!("{e}"));
    let silent_broker = silent
        .local_addr()
        .unwrap_or_else(|e| panic!("{e}"))
        .to_string();
    let mut a = OperatorProcess::spawn_elected(&ns, "replica-a");
    eventually("replica-a holds the Lease", WAIT, || async {
        lease_holder(&client, &ns)
            .await
            .filter(|h| h == "replica-a")
    })
    .await;
    let leases: Api<Lease> = Api::namespaced(client.clone(), &ns);
    let mut system = reference_system(&unique_name("lost-mid"));
    system.spec.kafka.bootstrap_servers = silent_broker;
    let systems = create_system(&client, &ns, &system).await;
    let deployments: Api<Deployment> = Api::namespaced(client.clone(), &ns);
    // Its finalizer written, the next reconcile asks the silent broker for its cluster
    // id (for up to 10 s) before it applies anything.
    eventually("replica-a writes the topic finalizer", WAIT, || {
        let systems = systems.clone();
        let name = system.name_any();
        async move {
            let s = systems.get(&name).await.ok()?;
            (!s.finalizers().is_empty()).then_some(())
        }
    })
    .await;
    let events: Api<k8s_openapi::api::events::v1::Event> = Api::namespaced(client.clone(), &ns);
    let written_by_a = || async {
        let version = systems
            .get(&system.name_any())
            .await
            .unwrap_or_else(|e| panic!("{e}"))
            .resource_version();
        let events = events
            .list(&ListParams::default())
            .await
            .unwrap_or_else(|e| panic!("{e}"))
            .items
            .into_iter()
            .filter(|e| e.reporting_instance.as_deref() == Some("replica-a"))
            .count();
        (version, events)
    };

    // Taken over, as a replica that found the Lease expired would take it.
    let before = written_by_a().await;
    let mut lease = leases
        .get("outbox-operator")
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    let now = MicroTime(k8s_openapi::jiff::Timestamp::now());
    if let Some(spec) = lease.spec.as_mut() {
        spec.holder_identity = Some("replica-b".into());
        spec.acquire_time = Some(now.clone());
        spec.renew_time = Some(now);
    }
    leases
        .replace("outbox-operator", &PostParams::default(), &lease)
        .await
        .unwrap_or_else(|e| panic!("taking the Lease over: {e}"));

    let exit = eventually("replica-a gives up", WAIT, || {
        let exited = a.exited();
        async move { exited }
    })
    .await;
    assert!(
        !exit.success(),
        "it exits saying it lost the Lease: {exit:?}"
    );
    assert_eq!(
        written_by_a().await,
        before,
        "replica-a wrote the OutboxSystem or an Event after it lost the Lease (resourceVersion, Events)\n{}",
        a.log_tail(40)
    );
    assert!(
        deployments
            .get_opt("outbox-producer")
            .await
            .unwrap_or_else(|e| panic!("{e}"))
            .is_none(),
        "replica-a applied the children after it lost the Lease\n{}",
        a.log_tail(40)
    );
    drop(silent);
    delete_namespace(&client, &ns).await;
}

#[tokio::test]
async fn systems_cannot_share_a_topic_and_only_a_topic_the_operator_created_is_deleted() {
    use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
    let (client, ns) = setup("obs-collide").await;
    let _operator = start_operator(&client, &ns);
    let delete_policy = |mut s: OutboxSystem, name: &str| {
        s.metadata.name = Some(name.into());
        s.spec.topic.deletion_policy =
            serde_json::from_value("Delete".into()).unwrap_or_else(|e| panic!("{e}"));
        s
    };
    // The first system creates its topic.
    let topic = unique_name("shared-events");
    let systems = create_system(
        &client,
        &ns,
        &delete_policy(reference_system(&topic), "outbox"),
    )
    .await;
    let first = eventually("the first system to create its topic", WAIT, || {
        let api = systems.clone();
        async move {
            let s = api.get("outbox").await.ok()?;
            (s.status.as_ref()?.topic.as_ref()?.partitions == Some(6)).then_some(s)
        }
    })
    .await;
    assert_eq!(
        first
            .status
            .and_then(|s| s.topic)
            .and_then(|t| t.created_by_operator),
        Some(true)
    );
    // A second system on the same topic is refused, naming the first.
    create_system(
        &client,
        &ns,
        &delete_policy(reference_system(&topic), "second"),
    )
    .await;
    let second = wait_for_reason(&systems, "second", "Degraded", "TopicInUse").await;
    let (_, _, message) = condition(&second, "Degraded").unwrap_or_default();
    assert!(message.contains(&format!("{ns}/outbox")), "{message}");
    let deployments: Api<Deployment> = Api::namespaced(client.clone(), &ns);
    assert_no_workloads(&deployments, "second").await;
    // Deleting it leaves the first system's topic.
    delete_and_wait(&systems, "second").await;
    assert_eq!(
        kafka_partitions(&topic).await,
        Some(6),
        "the first system's topic stays"
    );

    // A topic that was there before: kept when its system is deleted, even with Delete.
    let existing = unique_name("existing-events");
    let admin: AdminClient<rdkafka::client::DefaultClientContext> = testbed()
        .kafka_config()
        .create()
        .unwrap_or_else(|e| panic!("{e}"));
    admin
        .create_topics(
            [&NewTopic::new(&existing, 6, TopicReplication::Fixed(1))],
            &AdminOptions::new(),
        )
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    // (A database schema of its own: one schema holds one system's outbox.)
    create_database_secret(&client, &ns, "third-postgres").await;
    let mut third = delete_policy(reference_system(&existing), "third");
    third.spec.database.url_secret_ref.name = "third-postgres".into();
    create_system(&client, &ns, &third).await;
    let third = eventually("the third system to find its topic", WAIT, || {
        let api = systems.clone();
        async move {
            let s = api.get("third").await.ok()?;
            s.status
                .as_ref()?
                .topic
                .as_ref()?
                .created_by_operator
                .map(|c| (c, s.clone()))
        }
    })
    .await;
    assert!(
        !third.0,
        "the operator found the topic, it did not create it"
    );
    delete_and_wait(&systems, "third").await;
    assert_eq!(
        kafka_partitions(&existing).await,
        Some(6),
        "a topic it did not create is kept"
    );

    // The first system created its topic: deleting it deletes the topic.
    delete_and_wait(&systems, "outbox").await;
    eventually("the first system's topic deleted", WAIT, || {
        let topic = topic.clone();
        async move { kafka_partitions(&topic).await.is_none().then_some(()) }
    })
    .await;
    let _ = admin
        .delete_topics(&[existing.as_str()], &AdminOptions::new())
        .await;
    delete_namespace(&client, &ns).await;
}

/// The system that holds the outbox schema `database_url` leads to.
async fn schema_owner(database_url: &str) -> Option<String> {
    let (db, connection) = tokio_postgres::connect(database_url, tokio_postgres::NoTls)
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    let connection = tokio::spawn(connection);
    let owner = db
        .query_opt("SELECT system FROM outbox_owner", &[])
        .await
        .ok()
        .flatten()
        .map(|row| row.get(0));
    drop(db);
    let _ = connection.await;
    owner
}

#[tokio::test]
async fn a_second_system_on_the_same_database_schema_is_refused_until_the_first_is_gone() {
    let (client, ns) = setup("obs-db-collide").await;
    let _operator = start_operator(&client, &ns);
    let named = |name: &str| {
        let mut s = reference_system(&unique_name(name));
        s.metadata.name = Some(name.into());
        s
    };
    let deployments: Api<Deployment> = Api::namespaced(client.clone(), &ns);
    let systems = create_system(&client, &ns, &named("first")).await;
    wait_present(&deployments, "first-producer").await;
    let database_url = namespace_database_url(&client, &ns).await;
    assert_eq!(
        schema_owner(&database_url).await,
        Some(format!("{ns}/first")),
        "the first system holds the schema"
    );

    // Another topic, the same database and schema: refused, naming the first.
    create_system(&client, &ns, &named("second")).await;
    let second = wait_for_reason(&systems, "second", "Degraded", "DatabaseInUse").await;
    let (_, _, message) = condition(&second, "Degraded").unwrap_or_default();
    assert!(message.contains(&format!("{ns}/first")), "{message}");
    assert!(message.contains("spec.database.urlSecretRef"), "{message}");
    let ready = condition(&second, "Ready").unwrap_or_default();
    assert_eq!(
        (ready.0.as_str(), ready.1.as_str()),
        ("False", "DatabaseInUse")
    );
    assert_no_workloads(&deployments, "second").await;

    // The first goes: the second takes the schema over and is reconciled.
    delete_and_wait(&systems, "first").await;
    wait_present(&deployments, "second-producer").await;
    assert_eq!(
        schema_owner(&database_url).await,
        Some(format!("{ns}/second"))
    );
    let config = Api::<ConfigMap>::namespaced(client.clone(), &ns)
        .get("second-config")
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(
        config
            .data
            .unwrap_or_default()
            .get("OUTBOX_SYSTEM")
            .map(String::as_str),
        Some(format!("{ns}/second").as_str()),
        "the workers learn which system they serve, to check the claim themselves"
    );
    delete_namespace(&client, &ns).await;
}

/// A system the operator refused has no Deployments.
async fn assert_no_workloads(deployments: &Api<Deployment>, system: &str) {
    let children = deployments
        .list(&ListParams::default().labels(&format!("outbox.dev/system={system}")))
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    assert!(
        children.items.is_empty(),
        "the refused system {system} got no workloads"
    );
}

/// Pod settings with a field of each kind: maps, lists and a class name.
fn pod_settings(priority_class: &str) -> serde_json::Value {
    serde_json::json!({
        "metadata": {"labels": {"team": "payments"},
                     "annotations": {"example.com/owner": "outbox-tests"}},
        "nodeSelector": {"pool": "outbox"},
        "tolerations": [{"key": "dedicated", "operator": "Equal", "value": "outbox",
                         "effect": "NoSchedule"}],
        "priorityClassName": priority_class,
        "imagePullSecrets": [{"name": "registry-credentials"}]
    })
}

/// Asserts that every field of [`pod_settings`] is in `template` (of `what`).
fn assert_pod_settings(template: &PodTemplateSpec, priority_class: &str, team: &str, what: &str) {
    let meta = template.metadata.clone().unwrap_or_default();
    let labels = meta.labels.unwrap_or_default();
    assert_eq!(labels.get("team").map(String::as_str), Some(team), "{what}");
    let annotations = meta.annotations.unwrap_or_default();
    assert_eq!(
        annotations.get("example.com/owner").map(String::as_str),
        Some("outbox-tests"),
        "{what}"
    );
    let pod = template.spec.clone().unwrap_or_default();
    assert_eq!(
        pod.node_selector,
        Some(BTreeMap::from([("pool".to_string(), "outbox".to_string())])),
        "{what}"
    );
    let tolerations: Vec<_> = pod
        .tolerations
        .iter()
        .flatten()
        .map(|t| {
            (
                t.key.clone(),
                t.operator.clone(),
                t.value.clone(),
                t.effect.clone(),
            )
        })
        .collect();
    assert_eq!(
        tolerations,
        [(
            Some("dedicated".to_string()),
            Some("Equal".to_string()),
            Some("outbox".to_string()),
            Some("NoSchedule".to_string())
        )],
        "{what}"
    );
    assert_eq!(
        pod.priority_class_name.as_deref(),
        Some(priority_class),
        "{what}"
    );
    let secrets: Vec<String> = pod
        .image_pull_secrets
        .iter()
        .flatten()
        .map(|s| s.name.clone())
        .collect();
    assert_eq!(secrets, ["registry-credentials"], "{what}");
}

/// A PriorityClass of one test; deleted at the end of the test, and when dropped
/// (also when the test fails) through kubectl, best effort.
struct TestPriorityClass {
    name: String,
    deleted: bool,
}

impl TestPriorityClass {
    async fn create(client: &kube::Client) -> TestPriorityClass {
        let name = unique_name("outbox-tests-priority");
        let classes: Api<PriorityClass> = Api::all(client.clone());
        let class: PriorityClass = serde_json::from_value(serde_json::json!({
            "metadata": {"name": name},
            "value": 1000,
            "description": "outbox operator tests: pod settings"
        }))
        .unwrap_or_else(|e| panic!("{e}"));
        classes
            .create(&PostParams::default(), &class)
            .await
            .unwrap_or_else(|e| panic!("creating PriorityClass {name}: {e}"));
        TestPriorityClass {
            name,
            deleted: false,
        }
    }

    async fn delete(mut self, client: &kube::Client) {
        let classes: Api<PriorityClass> = Api::all(client.clone());
        classes
            .delete(&self.name, &DeleteParams::default())
            .await
            .unwrap_or_else(|e| panic!("deleting PriorityClass {}: {e}", self.name));
        self.deleted = true;
    }
}

impl Drop for TestPriorityClass {
    fn drop(&mut self) {
        if self.deleted {
            return;
        }
        let _ = std::process::Command::new("kubectl")
            .args([
                "delete",
                "priorityclass",
                &self.name,
                "--ignore-not-found",
                "--wait=false",
            ])
            .env("KUBECONFIG", &testbed().kubeconfig)
            .output();
    }
}

#[tokio::test]
async fn pod_settings_in_the_spec_reach_the_deployments_and_the_runner_jobs_pod_templates() {
    let (client, ns) = setup("obs-pods").await;
    let class = TestPriorityClass::create(&client).await;
    let _operator = start_operator(&client, &ns);
    let mut system = reference_system(&unique_name("pods-events"));
    let settings: outbox_operator::crd::PodSettings =
        serde_json::from_value(pod_settings(&class.name)).unwrap_or_else(|e| panic!("{e}"));
    system.spec.producers.pod = settings.clone();
    system.spec.consumers.pod = settings.clone();
    // group-b overrides one label: merged over the consumers-wide settings.
    system.spec.consumers.groups[1].pod.metadata.labels =
        BTreeMap::from([("team".to_string(), "ledger".to_string())]);
    create_system(&client, &ns, &system).await;
    let deployments: Api<Deployment> = Api::namespaced(client.clone(), &ns);
    for (name, team) in [
        ("outbox-producer", "payments"),
        ("outbox-consumer-group-a", "payments"),
        ("outbox-consumer-group-b", "ledger"),
        ("outbox-consumer-group-c", "payments"),
    ] {
        let d = wait_present(&deployments, name).await;
        let spec = d.spec.clone().unwrap_or_default();
        assert_pod_settings(&spec.template, &class.name, team, name);
        // The operator's selector labels are on the pods whatever the user added.
        let selector = spec.selector.match_labels.unwrap_or_default();
        let pod_labels = spec
            .template
            .metadata
            .and_then(|m| m.labels)
            .unwrap_or_default();
        for (k, v) in &selector {
            assert_eq!(pod_labels.get(k), Some(v), "{name}: {k}");
        }
    }

    let loadtests: Api<LoadTest> = Api::namespaced(client.clone(), &ns);
    let mut lt = small_loadtest("placed", "outbox");
    lt.spec.runner.pod = settings;
    loadtests
        .create(&PostParams::default(), &lt)
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    let jobs: Api<Job> = Api::namespaced(client.clone(), &ns);
    let job = wait_present(&jobs, "placed-run").await;
    let template = job.spec.map(|s| s.template).unwrap_or_default();
    assert_pod_settings(&template, &class.name, "payments", "the runner Job");
    let resources = template
        .spec
        .and_then(|p| p.containers.first().and_then(|c| c.resources.clone()))
        .unwrap_or_default();
    assert_eq!(
        resources
            .limits
            .unwrap_or_default()
            .get("memory")
            .map(|q| q.0.as_str()),
        Some("256Mi"),
        "the runner's default memory limit"
    );
    delete_namespace(&client, &ns).await;
    class.delete(&client).await;
}

#[tokio::test]
async fn each_producer_set_and_group_gets_an_owned_budget_that_goes_when_switched_off_or_removed() {
    let (client, ns) = setup("obs-pdb").await;
    let _operator = start_operator(&client, &ns);
    let system = reference_system(&unique_name("pdb-events"));
    let systems = create_system(&client, &ns, &system).await;
    let budgets: Api<PodDisruptionBudget> = Api::namespaced(client.clone(), &ns);
    let deployments: Api<Deployment> = Api::namespaced(client.clone(), &ns);
    let owner = systems
        .get("outbox")
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    for name in [
        "outbox-producer",
        "outbox-consumer-group-a",
        "outbox-consumer-group-b",
        "outbox-consumer-group-c",
    ] {
        let budget = wait_present(&budgets, name).await;
        let spec = budget.spec.clone().unwrap_or_default();
        assert_eq!(
            spec.max_unavailable,
            Some(IntOrString::Int(1)),
            "{name}: one pod at a time"
        );
        let deployment = wait_present(&deployments, name).await;
        assert_eq!(
            spec.selector,
            deployment.spec.map(|s| s.selector),
            "{name} selects exactly its workload's pods"
        );
        let refs = budget.metadata.owner_references.unwrap_or_default();
        assert_eq!(refs.len(), 1, "{name}: {refs:?}");
        assert_eq!(
            (
                refs[0].kind.as_str(),
                Some(refs[0].uid.as_str()),
                refs[0].controller
            ),
            ("OutboxSystem", owner.metadata.uid.as_deref(), Some(true)),
            "{name}"
        );
    }

    // Switched off for the producers and for group-b alone: those two go, the others stay.
    let off = serde_json::json!({"spec": {
        "producers": {"podDisruptionBudget": {"enabled": false}},
        "consumers": {"groups": [
            {"name": "group-a", "replicas": 3, "retry": {"maxRetries": -1}},
            {"name": "group-b", "replicas": 2, "retry": {"maxRetries": -1},
             "podDisruptionBudget": {"enabled": false}},
            {"name": "group-c", "replicas": 1, "retry": {"maxRetries": -1}}
        ]}
    }});
    systems
        .patch("outbox", &PatchParams::default(), &Patch::Merge(&off))
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    wait_gone(&budgets, "outbox-producer").await;
    wait_gone(&budgets, "outbox-consumer-group-b").await;
    for kept in ["outbox-consumer-group-a", "outbox-consumer-group-c"] {
        assert!(
            budgets.get_opt(kept).await.ok().flatten().is_some(),
            "{kept} was deleted with the others"
        );
    }

    // A group removed from the spec loses its budget with its Deployment; switched on
    // again, the producers' budget comes back.
    let fewer = serde_json::json!({"spec": {
        "producers": {"podDisruptionBudget": {"enabled": true}},
        "consumers": {"groups": [
            {"name": "group-a", "replicas": 3, "retry": {"maxRetries": -1}},
            {"name": "group-b", "replicas": 2, "retry": {"maxRetries": -1},
             "podDisruptionBudget": {"enabled": false}}
        ]}
    }});
    systems
        .patch("outbox", &PatchParams::default(), &Patch::Merge(&fewer))
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    wait_gone(&budgets, "outbox-consumer-group-c").await;
    wait_present(&budgets, "outbox-producer").await;
    assert!(budgets
        .get_opt("outbox-consumer-group-a")
        .await
        .ok()
        .flatten()
        .is_some());
    delete_namespace(&client, &ns).await;
}

#[tokio::test]
async fn a_topic_recorded_on_another_kafka_cluster_is_neither_changed_nor_deleted() {
    let (client, ns) = setup("obs-cluster").await;
    let _operator = start_operator(&client, &ns);
    let topic = unique_name("cluster-events");
    let mut system = reference_system(&topic);
    system.spec.topic.deletion_policy =
        serde_json::from_value("Delete".into()).unwrap_or_else(|e| panic!("{e}"));
    let systems = create_system(&client, &ns, &system).await;
    // Created, and recorded on the testbed's cluster.
    let cluster = eventually("the topic recorded with its cluster id", WAIT, || {
        let api = systems.clone();
        async move {
            let topic = api.get("outbox").await.ok()?.status?.topic?;
            (topic.created_by_operator == Some(true) && topic.partitions == Some(6))
                .then_some(())?;
            let owner = topic.ownership_cluster_id?;
            (topic.cluster_id.as_deref() == Some(owner.as_str())).then_some(owner)
        }
    })
    .await;
    // The testbed has one Kafka: a record of another cluster stands for a system that
    // was created on one cluster and now reaches another, where the topic exists.
    let elsewhere =
        serde_json::json!({"status": {"topic": {"ownershipClusterId": "another-cluster"}}});
    let left_alone = eventually("TopicReady False with TopicOnOtherCluster", WAIT, || {
        let api = systems.clone();
        let patch = elsewhere.clone();
        async move {
            let s = api.get("outbox").await.ok()?;
            let recorded = s
                .status
                .as_ref()?
                .topic
                .as_ref()?
                .ownership_cluster_id
                .clone();
            if recorded.as_deref() != Some("another-cluster") {
                // Written again until no status write of the operator's overtakes it.
                api.patch_status("outbox", &PatchParams::default(), &Patch::Merge(&patch))
                    .await
                    .ok()?;
                return None;
            }
            let (status, reason, message) = condition(&s, "TopicReady")?;
            (status == "False" && reason == "TopicOnOtherCluster").then_some(message)
        }
    })
    .await;
    assert!(
        left_alone.contains(&format!("on Kafka cluster {cluster}"))
            && left_alone.contains("record is of cluster another-cluster"),
        "{left_alone}"
    );
    // A raise of the partitions is not carried out on that topic.
    systems
        .patch(
            "outbox",
            &PatchParams::default(),
            &Patch::Merge(serde_json::json!({"spec": {"topic": {"partitions": 8}}})),
        )
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    wait_for_reason(&systems, "outbox", "Degraded", "TopicOnOtherCluster").await;
    tokio::time::sleep(Duration::from_secs(5)).await;
    assert_eq!(
        kafka_partitions(&topic).await,
        Some(6),
        "the topic was changed"
    );
    // Deleting the system keeps the topic, deletionPolicy Delete notwithstanding.
    delete_and_wait(&systems, "outbox").await;
    assert_eq!(
        kafka_partitions(&topic).await,
        Some(6),
        "the topic was deleted"
    );
    delete_namespace(&client, &ns).await;
}

#[tokio::test]
async fn a_second_system_naming_the_same_kafka_cluster_differently_is_refused_its_topic() {
    let (client, ns) = setup("obs-samecluster").await;
    let _operator = start_operator(&client, &ns);
    let topic = unique_name("named-twice");
    let systems = create_system(&client, &ns, &reference_system(&topic)).await;
    eventually("the first system's cluster id in status", WAIT, || {
        let api = systems.clone();
        async move { api.get("outbox").await.ok()?.status?.topic?.cluster_id }
    })
    .await;
    // The same broker listed twice: another bootstrap string, the same cluster.
    let bootstrap = &testbed().kafka_bootstrap_servers;
    let mut second = reference_system(&topic);
    second.metadata.name = Some("second".into());
    second.spec.kafka.bootstrap_servers = format!("{bootstrap},{bootstrap}");
    create_system(&client, &ns, &second).await;
    let refused = wait_for_reason(&systems, "second", "Degraded", "TopicInUse").await;
    let (_, _, message) = condition(&refused, "Degraded").unwrap_or_default();
    assert!(message.contains(&format!("{ns}/outbox")), "{message}");
    let deployments: Api<Deployment> = Api::namespaced(client.clone(), &ns);
    assert_no_workloads(&deployments, "second").await;
    delete_namespace(&client, &ns).await;
}

/// Waits until the LoadTest `name` has failed; returns its status.
async fn wait_failed(
    loadtests: &Api<LoadTest>,
    name: &str,
) -> outbox_operator::crd::LoadTestStatus {
    eventually(&format!("the LoadTest {name} to fail"), WAIT, || {
        let api = loadtests.clone();
        async move {
            let status = api.get(name).await.ok()?.status?;
            (status.phase == Some(LoadTestPhase::Failed)).then_some(status)
        }
    })
    .await
}
