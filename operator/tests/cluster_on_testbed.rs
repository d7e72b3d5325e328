//! The operator as users run it: on the testbed's node, pods from the locally built
//! images, the chart installed by helm, the reference OutboxSystem's pods Running and
//! Ready, a LoadTest run as the operator's Job, and faults injected while it runs.
//!
//! Needs the testbed with its node (`make test` brings it up) and the images imported
//! (`testbed/load-images.sh`, which `make test` runs after building).

mod cluster;

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use cluster::*;
use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::batch::v1::Job;
use k8s_openapi::api::core::v1::Pod;
use k8s_openapi::api::policy::v1::PodDisruptionBudget;
use kube::api::{DeleteParams, EvictParams, ListParams, Patch, PatchParams, PostParams};
use kube::{Api, ResourceExt};
use outbox_operator::crd::{LoadTest, LoadTestPhase, OutboxSystem};
use outbox_operator::workloads::default_image;
use rdkafka::consumer::{BaseConsumer, Consumer};
use testbed_support::{delete_namespace, eventually, kafka, testbed, unique_name};

#[tokio::test]
async fn a_pod_from_the_local_image_reaches_kafka_and_postgres_by_their_service_names() {
    let client = client().await;
    let node = testbed().node().name.clone();

    // The node is registered, Ready and schedulable.
    let nodes: Api<k8s_openapi::api::core::v1::Node> = Api::all(client.clone());
    let n = nodes.get(&node).await.unwrap_or_else(|e| panic!("{e}"));
    let ready = n
        .status
        .as_ref()
        .and_then(|s| s.conditions.as_ref())
        .is_some_and(|c| c.iter().any(|c| c.type_ == "Ready" && c.status == "True"));
    assert!(ready, "node {node} is not Ready: {:?}", n.status);
    assert!(
        n.spec
            .as_ref()
            .and_then(|s| s.taints.as_ref())
            .is_none_or(|t| t.is_empty()),
        "node {node} still has taints: {:?}",
        n.spec
    );

    let (ns, _) = namespace_with_host_services(&client, "node").await;
    let topic = unique_name("node-events");
    kafka::create_topic(&testbed().kafka_bootstrap_servers, &topic, 1, &[]).await;
    // The worker image as the operator runs it, with nothing but Service names in its
    // settings: DNS (CoreDNS), Service virtual IPs (kube-proxy) and the bridge carry it.
    let pod: Pod = serde_json::from_value(serde_json::json!({
        "metadata": {"name": "producer", "labels": {"app": "node-probe"}},
        "spec": {
            "securityContext": {"runAsNonRoot": true, "runAsUser": 65532, "runAsGroup": 65532},
            "containers": [{
                "name": "producer",
                "image": default_image(),
                "imagePullPolicy": "Never",
                "args": ["producer"],
                "env": [
                    {"name": "SERVICE_ID", "value": "node-probe"},
                    {"name": "KAFKA_BOOTSTRAP_SERVERS", "value": "outbox-kafka:9092"},
                    {"name": "KAFKA_TOPICS", "value": topic},
                    {"name": "HTTP_PORT", "value": "8080"},
                    {"name": "DATABASE_URL", "valueFrom": {"secretKeyRef": {"name": "outbox-postgres", "key": "url"}}}
                ],
                "ports": [{"name": "http", "containerPort": 8080}],
                "readinessProbe": {"httpGet": {"path": "/readyz", "port": "http"}, "periodSeconds": 1},
                "securityContext": {"allowPrivilegeEscalation": false, "readOnlyRootFilesystem": true,
                                    "capabilities": {"drop": ["ALL"]}}
            }]
        }
    }))
    .unwrap_or_else(|e| panic!("{e}"));
    let pods: Api<Pod> = Api::namespaced(client.clone(), &ns);
    pods.create(&PostParams::default(), &pod)
        .await
        .unwrap_or_else(|e| panic!("creating the pod: {e}"));
    // Ready means the producer reached PostgreSQL through outbox-postgres:5432.
    let running = ready_pods(&pods, "app=node-probe", 1).await;
    let ip = pod_ip(&running[0]);
    let body = serde_json::json!({"topic": topic, "message": "relayed-from-a-pod", "key": "k"});
    let (code, answer) = http(&ip, 8080, "POST", "/api/messages/send", &body.to_string()).await;
    assert!((200..300).contains(&code), "send answered {code}: {answer}");
    // The relay in the pod published it to Kafka through outbox-kafka:9092.
    let bootstrap = &testbed().kafka_bootstrap_servers;
    let read = kafka::read_topic(bootstrap, &topic, 1, Duration::from_secs(60)).await;
    assert_eq!(read[0].payload, "relayed-from-a-pod");

    delete_namespace(&client, &ns).await;
}

/// Requests and rows an attacker or a broken client would send, against a producer pod
/// at `ip` of a system on `topic` whose database is `db_url`: each request is refused
/// with a 4xx naming the problem; the poison rows are quarantined; the header-heavy
/// rows written straight into the table are relayed and acknowledged like any other.
async fn hostile_sweep(ip: &str, topic: &str, db_url: &str) {
    let send = "/api/messages/send";
    let batch = "/api/messages/batch";
    let letters = |seed: usize, len: usize| -> String {
        (0..len)
            .map(|i| char::from(b'a' + ((i * 7919 + seed * 104_729) % 26) as u8))
            .collect()
    };
    let heavy_headers: serde_json::Map<String, serde_json::Value> = (0..9)
        .map(|h| (format!("h{h}"), letters(h, 110_000).into()))
        .collect();
    let many_headers: serde_json::Map<String, serde_json::Value> =
        (0..65).map(|h| (format!("h{h}"), "".into())).collect();
    let json = |v: serde_json::Value| v.to_string();
    // Path, request headers, body, the status expected, a word the answer must hold.
    type Case<'a> = (&'a str, Vec<(&'a str, &'a str)>, String, u16, &'a str);
    let cases: Vec<Case> = vec![
        (send, vec![], "{\"topic\": ".into(), 400, "malformed JSON"),
        (
            send,
            vec![],
            json(serde_json::json!({"topic": topic, "message": "", "headers": heavy_headers})),
            413,
            "headers",
        ),
        (
            send,
            vec![],
            json(serde_json::json!({"topic": topic, "message": "m", "headers": many_headers})),
            413,
            "65 headers",
        ),
        (
            send,
            vec![],
            json(
                serde_json::json!({"topic": topic, "message": "m", "headers": {"outbox-id": "1"}}),
            ),
            400,
            "reserved",
        ),
        (
            send,
            vec![],
            json(serde_json::json!({"topic": "someone-elses", "message": "m"})),
            400,
            "unknown topic",
        ),
        (
            send,
            vec![],
            json(serde_json::json!({"topic": topic, "message": "x".repeat(1_500_000)})),
            413,
            "bytes",
        ),
        (
            send,
            vec![("Idempotency-Key", "sweep-key")],
            json(serde_json::json!({"topic": topic, "message": "another client's"})),
            422,
            "sweep-key",
        ),
    ];
    // The key is first used by a valid request: the reuse above must not replay it.
    let (code, answer) = http_with(
        ip,
        8080,
        "POST",
        send,
        &[("Idempotency-Key", "sweep-key")],
        &json(serde_json::json!({"topic": topic, "message": "the first client's"})),
    )
    .await;
    assert_eq!(code, 200, "{answer}");
    for (path, headers, body, want, needle) in &cases {
        let (code, answer) = http_with(ip, 8080, "POST", path, headers, body).await;
        assert_eq!(code, *want, "{path} {body:.100}: {answer}");
        assert!(
            answer.contains(needle),
            "{path} {body:.100}: {answer} should name {needle:?}"
        );
    }
    // Eight concurrent 29 MB batches of valid messages (33 of 900 KB each).
    let big = json(serde_json::json!({"messages": (0..33)
        .map(|i| serde_json::json!({"topic": topic, "message": letters(i, 900_000)}))
        .collect::<Vec<_>>()}));
    let answers =
        futures::future::join_all((0..8).map(|_| http(ip, 8080, "POST", batch, &big))).await;
    for (code, answer) in answers {
        assert!(
            matches!(code, 413 | 429),
            "a 29 MB batch: {code} {answer:.200}"
        );
        assert!(
            answer.contains("MAX_BODY_BYTES") || answer.contains("BODY_MEMORY_KBYTES"),
            "{answer:.300}"
        );
    }
    // Rows written straight into the table: too large for Kafka, for a topic the
    // system does not serve, and 60 of 990 KB, nearly all headers.
    let poison = pg(
        db_url,
        &format!(
            "WITH ins AS (
               INSERT INTO outbox_messages (id, topic, key, payload)
               VALUES (nextval('outbox_message_id_seq'), '{topic}', 'sweep', repeat('x', 1500000)),
                      (nextval('outbox_message_id_seq'), 'not-this-systems-topic', 'sweep', 'm')
               RETURNING 1)
             SELECT count(*) FROM ins"
        ),
    )
    .await
    .expect("inserting the poison rows");
    assert_eq!(poison.get::<_, i64>(0), 2);
    let heavy = pg(
        db_url,
        &format!(
            "WITH ins AS (
               INSERT INTO outbox_messages (id, topic, key, payload, headers)
               SELECT nextval('outbox_message_id_seq'), '{topic}', 'heavy-' || n, '',
                      jsonb_build_object('h0', repeat(md5(n::text), 6000),
                                         'h1', repeat(md5((n + 1)::text), 6000),
                                         'h2', repeat(md5((n + 2)::text), 6000),
                                         'h3', repeat(md5((n + 3)::text), 6000),
                                         'h4', repeat(md5((n + 4)::text), 6000))
               FROM generate_series(1, 60) AS n
               RETURNING 1)
             SELECT count(*) FROM ins"
        ),
    )
    .await
    .expect("inserting the header-heavy rows");
    assert_eq!(heavy.get::<_, i64>(0), 60);
}

async fn group_members(group: &str) -> usize {
    let group = group.to_string();
    tokio::task::spawn_blocking(move || {
        let consumer: BaseConsumer = testbed().kafka_config().create().ok()?;
        let list = consumer
            .fetch_group_list(Some(&group), Duration::from_secs(10))
            .ok()?;
        list.groups().first().map(|g| g.members().len())
    })
    .await
    .ok()
    .flatten()
    .unwrap_or(0)
}

#[tokio::test]
async fn the_chart_runs_the_reference_system_in_pods_and_a_loadtest_job_ends_verified_through_faults(
) {
    let client = client().await;
    let (ns, db_url) = namespace_with_host_services(&client, "e2e").await;
    let release = install_chart(&ns);
    let operator_pods: Api<Pod> = Api::namespaced(client.clone(), &release.namespace);
    let operator = ready_pods(&operator_pods, "app.kubernetes.io/name=outbox-operator", 1).await;
    let pods: Api<Pod> = Api::namespaced(client.clone(), &ns);
    let operator_account = operator[0]
        .spec
        .as_ref()
        .and_then(|s| s.service_account_name.clone())
        .expect("the operator pod's ServiceAccount");
    check_permissions_against_the_security_doc(
        &client,
        &[
            ("operator", &release.namespace, &operator_account),
            ("runner", &ns, "outbox-loadtest"),
        ],
        &[
            ("watched", &ns),
            ("release", &release.namespace),
            ("loadtest", &ns),
        ],
        false, // the chart's default
    )
    .await;

    // The reference OutboxSystem as manifests/ has it, on a topic of this test's own.
    let mut system: OutboxSystem = testbed_support::manifest("manifests/outbox-system.yaml");
    assert_eq!(system.spec.kafka.bootstrap_servers, "outbox-kafka:9092");
    let topic = unique_name("e2e-events");
    system.spec.topic.name = topic.clone();
    create_system(&client, &ns, &system).await;
    let systems: Api<OutboxSystem> = Api::namespaced(client.clone(), &ns);

    // Every pod Running and Ready; status counts them and says Ready.
    reference_pods_ready(&pods).await;
    let ready = eventually(
        "the OutboxSystem Ready=True with 3/3 producers and every group full",
        POD_WAIT,
        || {
            let systems = systems.clone();
            async move {
                let s = systems.get("outbox").await.ok()?;
                let status = s.status.clone()?;
                let ready = status
                    .conditions
                    .iter()
                    .any(|c| c.type_ == "Ready" && c.status == "True");
                let producers = status
                    .producers
                    .as_ref()
                    .is_some_and(|p| p.ready == 3 && p.desired == 3);
                let groups =
                    status.groups.len() == 3 && status.groups.iter().all(|g| g.ready == g.desired);
                (ready && producers && groups).then_some(status)
            }
        },
    )
    .await;
    let desired: BTreeMap<String, i32> = ready
        .groups
        .iter()
        .map(|g| (g.name.clone(), g.desired))
        .collect();
    assert_eq!(
        desired,
        BTreeMap::from([
            ("group-a".into(), 3),
            ("group-b".into(), 2),
            ("group-c".into(), 1)
        ])
    );

    // Scaling a group in the spec scales its Deployment; the new pod joins the group.
    let mut groups = system.spec.consumers.groups.clone();
    let group_c = groups
        .iter_mut()
        .find(|g| g.name == "group-c")
        .unwrap_or_else(|| panic!("the reference system has no group-c"));
    group_c.replicas = 2;
    systems
        .patch(
            "outbox",
            &PatchParams::default(),
            &Patch::Merge(serde_json::json!({"spec": {"consumers": {"groups": groups}}})),
        )
        .await
        .unwrap_or_else(|e| panic!("scaling group-c: {e}"));
    let deployments: Api<Deployment> = Api::namespaced(client.clone(), &ns);
    eventually(
        "Deployment outbox-consumer-group-c at 2 replicas",
        POD_WAIT,
        || {
            let deployments = deployments.clone();
            async move {
                let d = deployments.get("outbox-consumer-group-c").await.ok()?;
                (d.spec?.replicas == Some(2)).then_some(())
            }
        },
    )
    .await;
    ready_pods(&pods, "outbox.dev/group=group-c", 2).await;
    eventually(
        "both group-c pods to be members of the Kafka group",
        POD_WAIT,
        || {
            // The group's Kafka id is prefixed with its namespace and system.
            let group = outbox_contract::crd::kafka_group_id(&ns, "outbox", "group-c");
            async move { (group_members(&group).await == 2).then_some(()) }
        },
    )
    .await;

    // A LoadTest big enough that the faults below land while it runs. A producer pod
    // is deleted while the runner sends to it: its requests go to the producer Service
    // instead, under the same idempotency keys, so every message is still accepted.
    let mut lt: LoadTest = testbed_support::manifest("manifests/loadtest-small.yaml");
    lt.metadata.name = Some("chaos".into());
    lt.spec.scenarios[0].messages = Some(500_000);
    // And the runner as an application, enqueueing in its own transactions from its pod
    // (the sample comparing both paths has such a scenario).
    let both: LoadTest = testbed_support::manifest("manifests/loadtest-enqueue.yaml");
    let enqueue = both.spec.scenarios[1].clone();
    assert_eq!(enqueue.via, outbox_operator::crd::Via::Enqueue);
    lt.spec.scenarios.push(outbox_operator::crd::Scenario {
        messages: Some(5_000),
        ..enqueue
    });
    lt.spec.success_threshold = 100.0;
    lt.spec.verification_timeout_seconds = 600;
    // Kafka and PostgreSQL are host processes here: the testbed's exporter serves their
    // CPU time through the outbox-testbed-cpu Service, as the demo uses it.
    lt.spec.cpu_sources = ["kafka", "postgresql"]
        .map(|c| outbox_operator::crd::CpuSource {
            component: c.into(),
            url: format!("http://outbox-testbed-cpu:9100/{c}"),
        })
        .to_vec();
    let loadtests: Api<LoadTest> = Api::namespaced(client.clone(), &ns);
    loadtests
        .create(&PostParams::default(), &lt)
        .await
        .unwrap_or_else(|e| panic!("creating the LoadTest: {e}"));

    // First the producer pod holding relay leadership, as soon as the relay has a
    // backlog: another producer's relay must take over from the watermark.
    let (leader, pending) = eventually(
        "a relay backlog of 10,000 rows while the LoadTest runs",
        Duration::from_secs(300),
        || {
            let loadtests = loadtests.clone();
            let url = db_url.clone();
            async move {
                let phase = loadtest_phase(&loadtests, "chaos").await?;
                assert!(
                    !matches!(phase, LoadTestPhase::Succeeded | LoadTestPhase::Failed),
                    "the LoadTest ended before the relay ever had a backlog of 10,000 rows"
                );
                let row = pg(
                    &url,
                    "SELECT s.leader, b.pending FROM outbox_relay_state s, outbox_backlog b",
                )
                .await?;
                let pending: i64 = row.get(1);
                (pending >= 10_000).then_some((row.get::<_, Option<String>>(0)?, pending))
            }
        },
    )
    .await;
    pods.delete(&leader, &DeleteParams::default())
        .await
        .unwrap_or_else(|e| panic!("deleting the relay leader {leader} ({pending} pending): {e}"));

    // Then the operator pod, a consumer pod, and another consumer's process killed with
    // SIGKILL from the host.
    run(
        "kubectl",
        &[
            "-n",
            &release.namespace,
            "delete",
            "pod",
            "-l",
            "app.kubernetes.io/name=outbox-operator",
            "--wait=false",
        ],
    );
    let group_a = ready_pods(&pods, "outbox.dev/group=group-a", 3).await;
    pods.delete(&group_a[0].name_any(), &DeleteParams::default())
        .await
        .unwrap_or_else(|e| panic!("deleting a group-a pod: {e}"));
    let group_b = ready_pods(&pods, "outbox.dev/group=group-b", 2).await;
    let victim = group_b[0].clone();
    let pid = container_pid(&victim);
    run("kill", &["-9", &pid.to_string()]);
    eventually(
        "the killed group-b container to be restarted",
        POD_WAIT,
        || {
            let pods = pods.clone();
            let name = victim.name_any();
            let before = restarts(&victim);
            async move { (restarts(&pods.get(&name).await.ok()?) > before).then_some(()) }
        },
    )
    .await;
    let phase = loadtest_phase(&loadtests, "chaos").await;
    assert!(
        !matches!(
            phase,
            Some(LoadTestPhase::Succeeded | LoadTestPhase::Failed)
        ),
        "the LoadTest ended before the faults were all in: {phase:?}; raise its size"
    );

    // The run ends Verified with nothing missing, and there was only ever one Job.
    let done = eventually("the LoadTest to finish", Duration::from_secs(900), || {
        let loadtests = loadtests.clone();
        async move {
            let lt = loadtests.get("chaos").await.ok()?;
            let phase = lt.status.as_ref()?.phase?;
            matches!(phase, LoadTestPhase::Succeeded | LoadTestPhase::Failed).then_some(lt)
        }
    })
    .await;
    let status = done.status.clone().unwrap_or_default();
    assert_eq!(status.phase, Some(LoadTestPhase::Succeeded), "{status:#?}");
    assert_eq!(
        status.accepted_messages,
        Some(500_000 + lt.spec.scenarios[1].offered_messages() + 5_000),
        "every message accepted, the deleted producer's share through the Service: {status:#?}"
    );
    let verified = status.conditions.iter().find(|c| c.type_ == "Verified");
    assert_eq!(
        verified.map(|c| c.status.as_str()),
        Some("True"),
        "{status:#?}"
    );
    assert_eq!(status.groups.len(), 3, "{status:#?}");
    for g in &status.groups {
        assert_eq!(g.missing, 0, "group {} lost messages: {status:#?}", g.group);
        assert_eq!(g.acknowledged, g.expected, "group {}: {status:#?}", g.group);
        assert!(g.expected > 0, "{status:#?}");
    }
    // The report reached its ConfigMap, which is all of ConfigMaps the runner may write,
    // before the run was seen finished: the status names it from the first look.
    assert_eq!(
        status.report_config_map.as_deref(),
        Some("chaos-report"),
        "{status:#?}"
    );
    let config_maps: Api<k8s_openapi::api::core::v1::ConfigMap> =
        Api::namespaced(client.clone(), &ns);
    let report = config_maps
        .get("chaos-report")
        .await
        .unwrap_or_else(|e| panic!("the report ConfigMap: {e}"));
    assert!(
        report
            .data
            .as_ref()
            .and_then(|d| d.get("report.html"))
            .is_some_and(|html| html.contains("<html")),
        "the runner wrote its report through its Role on that one name"
    );
    let system_config = format!("{}-config", system.name_any());
    for (verb, name, want) in [
        ("get", Some("chaos-report"), true),
        ("patch", Some("chaos-report"), true),
        ("patch", Some(system_config.as_str()), false),
        ("update", Some(system_config.as_str()), false),
        ("create", None, false),
    ] {
        assert_eq!(
            testbed_support::service_account_may(
                &client,
                &ns,
                "outbox-loadtest",
                verb,
                "configmaps",
                name
            )
            .await,
            want,
            "the runner's {verb} on configmaps/{name:?}"
        );
    }
    // Where the CPU went, every component found from inside the runner's pod: the
    // producer pods (EndpointSlices), the consumer pods (listed by label), the host's
    // Kafka and PostgreSQL (cpuSources), and the node's busy time from /proc/stat.
    let cpu = status.cpu.clone().expect("status.cpu");
    let seconds = |component: &str| {
        cpu.components
            .iter()
            .find(|c| c.component == component)
            .map(|c| c.seconds)
            .unwrap_or_else(|| panic!("no CPU time for {component}: {cpu:#?}"))
    };
    for component in ["producer http", "relay", "kafka", "postgresql", "runner"] {
        assert!(seconds(component) > 0.0, "{component}: {cpu:#?}");
    }
    // Both ways into the outbox side by side: the batch over HTTP, the enqueue scenario
    // through the database from the runner's pod, each with its CPU while sending.
    for (name, stored_by) in [
        ("batch", None),
        ("enqueue-batch", Some("database (outbox_enqueue)")),
    ] {
        let s = status
            .scenarios
            .iter()
            .find(|s| s.name == name)
            .unwrap_or_else(|| panic!("no scenario {name}: {status:#?}"));
        if let Some(stored_by) = stored_by {
            assert_eq!(s.per_producer[0].producer, stored_by, "{s:#?}");
            assert_eq!(s.accepted, 5_000, "{s:#?}");
        }
        let per_message = s
            .sending_cpu
            .as_ref()
            .and_then(|c| c.micros_per_message)
            .unwrap_or_else(|| panic!("{name}: no CPU while sending: {s:#?}"));
        eprintln!("{name}: {per_message:.1} CPU-µs per message stored while sending");
    }
    for g in &system.spec.consumers.groups {
        assert!(seconds(&format!("consumers {}", g.name)) > 0.0, "{cpu:#?}");
    }
    assert!(cpu.unreadable.is_empty(), "{cpu:#?}");
    assert!(cpu.node_seconds.is_some_and(|n| n > 0.0), "{cpu:#?}");
    let jobs: Api<Job> = Api::namespaced(client.clone(), &ns);
    let all = jobs
        .list(&ListParams::default())
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(
        all.items.iter().map(|j| j.name_any()).collect::<Vec<_>>(),
        vec!["chaos-run".to_string()]
    );
    // The operator came back as a new pod.
    ready_pods(&operator_pods, "app.kubernetes.io/name=outbox-operator", 1).await;

    // Kafka paused for a minute: ingest goes on, no pod is restarted (no probe asks
    // Kafka), and everything stored meanwhile reaches every group once it is back.
    let selector = format!(
        "outbox.dev/system={},app.kubernetes.io/component in (producer,consumer)",
        system.name_any()
    );
    let restart_counts = |pods: Vec<Pod>| -> BTreeMap<String, i32> {
        pods.iter().map(|p| (p.name_any(), restarts(p))).collect()
    };
    let list = |pods: Api<Pod>, selector: String| async move {
        pods.list(&ListParams::default().labels(&selector))
            .await
            .unwrap_or_else(|e| panic!("{e}"))
            .items
            .into_iter()
            .filter(|p| p.status.as_ref().and_then(|s| s.phase.as_deref()) == Some("Running"))
            .collect::<Vec<_>>()
    };
    let before = restart_counts(list(pods.clone(), selector.clone()).await);
    let producer = ready_pods(&pods, "app.kubernetes.io/component=producer", 3).await;
    let ip = pod_ip(&producer[0]);
    let mut sent = 0;
    {
        let _paused = KafkaPause::start();
        // Hostile traffic while Kafka is away, as after any outage: each answer a 4xx
        // naming the problem, each poison row set aside, and no pod restarted (the
        // restart counts are compared below).
        hostile_sweep(&ip, &topic, &db_url).await;
        let started = std::time::Instant::now();
        while started.elapsed() < Duration::from_secs(60) {
            let body = serde_json::json!({"topic": topic, "message": format!("during-outage-{sent}"), "key": "outage"});
            let (code, answer) =
                http(&ip, 8080, "POST", "/api/messages/send", &body.to_string()).await;
            assert_eq!(code, 200, "a send while Kafka is paused: {answer}");
            sent += 1;
            tokio::time::sleep(Duration::from_millis(500)).await;
        }
        let during = restart_counts(list(pods.clone(), selector.clone()).await);
        assert_eq!(during, before, "pods restarted while Kafka was paused");
    }
    eventually(
        "every group to acknowledge every stored message after the pause",
        Duration::from_secs(240),
        || {
            let db_url = db_url.clone();
            async move {
                // Quarantined rows (the sweep's poison) are kept, never delivered.
                let row = pg(
                    &db_url,
                    "SELECT (SELECT count(*) FROM outbox_messages
                             WHERE (txid, id) NOT IN (SELECT txid, id FROM outbox_quarantine))::bigint,
                            (SELECT min(a) FROM (SELECT sum(acked)::bigint AS a FROM outbox_ack_chunks
                                                 GROUP BY group_name) g)::bigint,
                            (SELECT count(DISTINCT group_name) FROM outbox_ack_chunks)::bigint",
                )
                .await?;
                let (stored, least_acked, groups): (i64, Option<i64>, i64) =
                    (row.get(0), row.get(1), row.get(2));
                (groups == 3 && least_acked == Some(stored)).then_some(())
            }
        },
    )
    .await;
    let after = restart_counts(list(pods.clone(), selector).await);
    assert_eq!(after, before, "pods restarted after Kafka's pause");
    eprintln!("{sent} sends accepted while Kafka was paused for 60 s; no pod restarted");
}

#[tokio::test]
async fn evicting_every_group_a_pod_at_once_takes_only_what_the_budget_allows_and_the_run_ends_verified(
) {
    let client = client().await;
    let (ns, _db_url) = namespace_with_host_services(&client, "evict").await;
    let _release = install_chart(&ns);
    let mut system: OutboxSystem = testbed_support::manifest("manifests/outbox-system.yaml");
    system.spec.topic.name = unique_name("evict-events");
    // The budget is under test, not throughput.
    system.spec.producers.resources = Some(small_requests());
    system.spec.consumers.resources = Some(small_requests());
    let pods = create_system(&client, &ns, &system).await;
    reference_pods_ready(&pods).await;

    // group-a's budget as the disruption controller sees it: 3 healthy, 1 may go.
    let budgets: Api<PodDisruptionBudget> = Api::namespaced(client.clone(), &ns);
    let budget = "outbox-consumer-group-a";
    eventually(
        "group-a's budget to allow one disruption of 3 healthy pods",
        POD_WAIT,
        || {
            let budgets = budgets.clone();
            async move {
                let pdb = budgets.get(budget).await.ok()?;
                let status = pdb.status?;
                let current = status.observed_generation == pdb.metadata.generation;
                (current && status.current_healthy == 3 && status.disruptions_allowed == 1)
                    .then_some(())
            }
        },
    )
    .await;

    // A small LoadTest; once it runs, every group-a pod is evicted at the same moment.
    let mut lt: LoadTest = testbed_support::manifest("manifests/loadtest-small.yaml");
    lt.metadata.name = Some("evicted".into());
    lt.spec.scenarios[0].messages = Some(200_000);
    lt.spec.success_threshold = 100.0;
    let loadtests: Api<LoadTest> = Api::namespaced(client.clone(), &ns);
    loadtests
        .create(&PostParams::default(), &lt)
        .await
        .unwrap_or_else(|e| panic!("creating the LoadTest: {e}"));
    eventually("the LoadTest to run", POD_WAIT, || {
        let loadtests = loadtests.clone();
        async move {
            let phase = loadtest_phase(&loadtests, "evicted").await?;
            assert!(
                !phase.is_finished(),
                "the LoadTest ended before the evictions: raise its size"
            );
            matches!(phase, LoadTestPhase::Running | LoadTestPhase::Verifying).then_some(())
        }
    })
    .await;
    let group_a = ready_pods(&pods, "outbox.dev/group=group-a", 3).await;
    let budget_before = budgets.get(budget).await.ok().and_then(|b| b.status);
    let evict = EvictParams::default();
    // A refused eviction answers 429; kube's default client would retry it until the
    // budget allows it again (as a drain does), hiding the refusal.
    let evicting: Api<Pod> = Api::namespaced(
        testbed()
            .kube_client_without_retries()
            .await
            .unwrap_or_else(|e| panic!("{e}")),
        &ns,
    );
    let answers = futures::future::join_all(group_a.iter().map(|p| {
        let pods = evicting.clone();
        let name = p.name_any();
        let evict = &evict;
        async move { pods.evict(&name, evict).await }
    }))
    .await;
    let mut evicted = Vec::new();
    let mut refused = 0;
    for (pod, answer) in group_a.iter().zip(answers) {
        match answer {
            Ok(_) => evicted.push(pod.name_any()),
            Err(kube::Error::Api(status)) if status.code == 429 => refused += 1,
            Err(other) => panic!("evicting {}: {other}", pod.name_any()),
        }
    }
    assert_eq!(
        (evicted.len(), refused),
        (1, 2),
        "maxUnavailable 1: one eviction allowed, the others refused with 429 (the budget \
         before: {budget_before:?}; the pods: {:?})",
        group_a
            .iter()
            .map(|p| (
                p.name_any(),
                p.status.as_ref().and_then(|s| s.conditions.clone())
            ))
            .collect::<Vec<_>>()
    );
    let phase = loadtest_phase(&loadtests, "evicted").await;
    assert!(
        phase.is_some_and(|p| !p.is_finished()),
        "the LoadTest ended before the evictions were answered ({phase:?}): raise its size"
    );
    for pod in &group_a {
        let name = pod.name_any();
        let now = pods.get_opt(&name).await.unwrap_or_else(|e| panic!("{e}"));
        let going = now.is_none_or(|p| p.metadata.deletion_timestamp.is_some());
        assert_eq!(going, evicted.contains(&name), "{name}");
    }

    // The evicted member is replaced, and the run ends Verified with nothing missing.
    let done = eventually("the LoadTest to finish", Duration::from_secs(600), || {
        let loadtests = loadtests.clone();
        async move {
            let lt = loadtests.get("evicted").await.ok()?;
            lt.status.as_ref()?.phase?.is_finished().then_some(lt)
        }
    })
    .await;
    let status = done.status.unwrap_or_default();
    assert_eq!(status.phase, Some(LoadTestPhase::Succeeded), "{status:#?}");
    let verified = status.conditions.iter().find(|c| c.type_ == "Verified");
    assert_eq!(
        verified.map(|c| c.status.as_str()),
        Some("True"),
        "{status:#?}"
    );
    for g in &status.groups {
        assert_eq!(g.missing, 0, "group {} lost messages: {status:#?}", g.group);
    }
    ready_pods(&pods, "outbox.dev/group=group-a", 3).await;
}

#[tokio::test]
async fn a_loadtest_shared_by_three_runner_pods_gives_the_result_of_one_and_survives_a_killed_runner(
) {
    let client = client().await;
    let (ns, _db_url) = namespace_with_host_services(&client, "shared").await;
    let _release = install_chart(&ns);
    let mut system: OutboxSystem = testbed_support::manifest("manifests/outbox-system.yaml");
    system.spec.topic.name = unique_name("shared-events");
    // Small requests, so that this system and its runners fit beside the others'.
    system.spec.producers.resources = Some(small_requests());
    system.spec.consumers.resources = Some(small_requests());
    let pods = create_system(&client, &ns, &system).await;
    reference_pods_ready(&pods).await;
    let loadtests: Api<LoadTest> = Api::namespaced(client.clone(), &ns);
    let loadtest = |name: &str, parallelism: i32| {
        let mut lt: LoadTest = testbed_support::manifest("manifests/loadtest-small.yaml");
        lt.metadata.name = Some(name.into());
        lt.spec.scenarios[0].messages = Some(150_000);
        lt.spec.success_threshold = 100.0;
        lt.spec.parallelism = parallelism;
        lt.spec.runner.resources = Some(small_requests());
        lt
    };
    let finished = |name: &'static str| {
        let loadtests = loadtests.clone();
        eventually(name, Duration::from_secs(600), move || {
            let loadtests = loadtests.clone();
            async move {
                let lt = loadtests.get(name).await.ok()?;
                lt.status.as_ref()?.phase?.is_finished().then_some(lt)
            }
        })
    };

    // One runner: the figures to compare with.
    loadtests
        .create(&PostParams::default(), &loadtest("alone", 1))
        .await
        .unwrap_or_else(|e| panic!("creating the LoadTest: {e}"));
    let alone = finished("alone").await.status.unwrap_or_default();
    assert_eq!(alone.phase, Some(LoadTestPhase::Succeeded), "{alone:#?}");
    assert!(
        alone.runners.is_empty(),
        "one runner writes no runner lines"
    );

    // Three runners; runner 1 is killed while it sends its segment of the batch.
    loadtests
        .create(&PostParams::default(), &loadtest("shared", 3))
        .await
        .unwrap_or_else(|e| panic!("creating the LoadTest: {e}"));
    let jobs: Api<Job> = Api::namespaced(client.clone(), &ns);
    let job = eventually("the shared run's Job", POD_WAIT, || {
        let jobs = jobs.clone();
        async move { jobs.get("shared-run").await.ok() }
    })
    .await;
    let spec = job.spec.unwrap_or_default();
    assert_eq!(
        (
            spec.completion_mode.as_deref(),
            spec.completions,
            spec.parallelism
        ),
        (Some("Indexed"), Some(3), Some(3)),
        "one Indexed Job with a pod per runner"
    );
    let (victim, ready) = eventually("runner 1 to send its segment", POD_WAIT, || {
        let (loadtests, pods) = (loadtests.clone(), pods.clone());
        async move {
            let lt = loadtests.get("shared").await.ok()?;
            let status = lt.status?;
            assert!(
                !status.phase.is_some_and(|p| p.is_finished()),
                "the run ended before runner 1 was killed: raise its size ({status:#?})"
            );
            let line = status.runners.iter().find(|l| l.index == 1)?;
            let sending =
                line.state == outbox_operator::crd::RunnerState::Sending && line.groups_sent == 0;
            if !sending {
                return None;
            }
            let selector = "batch.kubernetes.io/job-completion-index=1,outbox.dev/loadtest=shared";
            let found = pods
                .list(&ListParams::default().labels(selector))
                .await
                .ok()?;
            let pod = found
                .items
                .into_iter()
                .find(|p| p.status.as_ref().and_then(|s| s.phase.as_deref()) == Some("Running"))?;
            Some((pod, status.runners_ready))
        }
    })
    .await;
    assert_eq!(
        ready.as_deref(),
        Some("3/3"),
        "the RUNNERS column while every runner sends"
    );
    let killed = victim.name_any();
    pods.delete(
        &killed,
        &DeleteParams {
            grace_period_seconds: Some(0),
            ..DeleteParams::default()
        },
    )
    .await
    .unwrap_or_else(|e| panic!("killing runner 1 ({killed}): {e}"));
    eprintln!("killed runner 1 ({killed}) while it sent its segment of the batch");

    let shared = finished("shared").await.status.unwrap_or_default();
    eprintln!(
        "one runner: {:?} accepted, {:?} msg/s; three runners: {:?} accepted, {:?} msg/s; lines {:?}",
        alone.accepted_messages,
        alone.throughput,
        shared.accepted_messages,
        shared.throughput,
        shared
            .runners
            .iter()
            .map(|l| (l.index, l.pod.clone(), l.messages, l.accepted))
            .collect::<Vec<_>>()
    );
    assert_eq!(shared.phase, Some(LoadTestPhase::Succeeded), "{shared:#?}");
    let verified = shared.conditions.iter().find(|c| c.type_ == "Verified");
    assert_eq!(
        verified.map(|c| c.status.as_str()),
        Some("True"),
        "{shared:#?}"
    );
    assert!(shared.start_at.is_some(), "the operator set one start time");
    let by_scenario = |s: &outbox_operator::crd::LoadTestStatus| {
        s.scenarios
            .iter()
            .map(|r| (r.name.clone(), r.messages, r.accepted))
            .collect::<Vec<_>>()
    };
    assert_eq!(
        by_scenario(&shared),
        by_scenario(&alone),
        "the same totals as one runner"
    );
    assert_eq!(shared.accepted_messages, alone.accepted_messages);
    let groups = |s: &outbox_operator::crd::LoadTestStatus| {
        s.groups
            .iter()
            .map(|g| (g.group.clone(), g.acknowledged, g.missing, g.out_of_order))
            .collect::<Vec<_>>()
    };
    assert_eq!(groups(&shared), groups(&alone), "the same verification");
    for g in &shared.groups {
        assert_eq!((g.missing, g.out_of_order), (0, 0), "{shared:#?}");
    }
    let mut lines: Vec<(i32, outbox_operator::crd::RunnerState)> =
        shared.runners.iter().map(|l| (l.index, l.state)).collect();
    lines.sort_by_key(|(index, _)| *index);
    use outbox_operator::crd::RunnerState::Sent;
    assert_eq!(lines, vec![(0, Sent), (1, Sent), (2, Sent)], "{shared:#?}");
    let replaced = shared.runners.iter().find(|l| l.index == 1);
    assert_ne!(
        replaced.and_then(|l| l.pod.as_deref()),
        Some(killed.as_str()),
        "runner 1's line comes from the pod that replaced the killed one"
    );
    let segment_messages: i64 = shared.runners.iter().map(|l| l.messages).sum();
    assert_eq!(
        Some(segment_messages),
        alone.accepted_messages,
        "the segments add up"
    );
    // The request-latency histograms of the three segments were merged: the immediate
    // scenario has percentiles over all its requests.
    // The report ConfigMap holds the page, with a row per runner pod, and no segment
    // is left behind in it.
    let config_maps: Api<k8s_openapi::api::core::v1::ConfigMap> =
        Api::namespaced(client.clone(), &ns);
    let report = config_maps
        .get("shared-report")
        .await
        .unwrap_or_else(|e| panic!("the report ConfigMap: {e}"))
        .data
        .unwrap_or_default();
    let keys: Vec<&String> = report.keys().collect();
    assert_eq!(keys, vec!["report.html"], "only the report is left");
    assert!(
        report["report.html"].contains("<h2>Runner pods</h2>"),
        "the report lists the runner pods"
    );
    let immediate = shared
        .scenarios
        .iter()
        .find(|s| !s.per_producer.is_empty() && s.name == "immediate");
    assert!(
        immediate.and_then(|s| s.latency.as_ref()).is_some(),
        "{shared:#?}"
    );
}

/// The testbed's Kafka broker stopped (SIGSTOP to its process group: connections stay
/// open, nothing answers) until dropped.
struct KafkaPause {
    group: String,
}

impl KafkaPause {
    fn start() -> KafkaPause {
        let pidfile = testbed().state_dir.join("run/kafka.pid");
        let pid = std::fs::read_to_string(&pidfile)
            .unwrap_or_else(|e| panic!("{}: {e}", pidfile.display()))
            .trim()
            .to_string();
        let group = format!("-{pid}");
        run("kill", &["-STOP", "--", &group]);
        KafkaPause { group }
    }
}

impl Drop for KafkaPause {
    fn drop(&mut self) {
        let _ = std::process::Command::new("kill")
            .args(["-CONT", "--", &self.group])
            .status();
    }
}

/// Every verb the API server allows each account on each resource the table of
/// docs/security.md names (and on pods, Secrets and Leases), in each scope, against the
/// table: allowed exactly where a row says so.
async fn check_permissions_against_the_security_doc(
    client: &kube::Client,
    accounts: &[(&str, &str, &str)],
    scopes: &[(&str, &str)],
    leader_election: bool,
) {
    use k8s_openapi::api::authorization::v1::{
        ResourceAttributes, SubjectAccessReview, SubjectAccessReviewSpec,
    };
    let doc = std::fs::read_to_string(testbed_support::repo_root().join("docs/security.md"))
        .unwrap_or_else(|e| panic!("{e}"));
    let table = doc
        .split("<!-- rbac:start -->")
        .nth(1)
        .and_then(|t| t.split("<!-- rbac:end -->").next())
        .expect("the rbac table of docs/security.md");
    // (account, scope, group, resource) -> verbs
    let mut allowed: BTreeMap<(String, String, String, String), Vec<String>> = BTreeMap::new();
    let mut universe_extra: Vec<(String, String)> = Vec::new();
    for line in table
        .lines()
        .filter(|l| l.starts_with("| ") && !l.starts_with("| account"))
    {
        let cells: Vec<&str> = line.trim_matches('|').split('|').map(str::trim).collect();
        let [account, scope, group, resources, verbs, ..] = cells[..] else {
            panic!("a row of the rbac table without six cells: {line}");
        };
        if scope.contains("leaderElection.enabled") && !leader_election {
            continue;
        }
        let scope = scope.split([',', ' ']).next().unwrap_or(scope);
        let group = if group == "core" { "" } else { group };
        for resource in resources.split(',').map(str::trim) {
            // `configmaps (one: ...)`: a Role on named objects only, so asked without a
            // name (as here) it allows nothing; the names are checked where they exist.
            if let Some((resource, _names)) = resource.split_once(" (") {
                universe_extra.push((group.to_string(), resource.to_string()));
                continue;
            }
            allowed.insert(
                (account.into(), scope.into(), group.into(), resource.into()),
                verbs.split(',').map(|v| v.trim().to_string()).collect(),
            );
        }
    }
    let mut universe: BTreeSet<(String, String)> = allowed
        .keys()
        .map(|(_, _, g, r)| (g.clone(), r.clone()))
        .collect();
    universe.extend(universe_extra);
    for (g, r) in [
        ("", "pods"),
        ("", "secrets"),
        ("coordination.k8s.io", "leases"),
    ] {
        universe.insert((g.into(), r.into()));
    }
    const VERBS: [&str; 8] = [
        "get",
        "list",
        "watch",
        "create",
        "update",
        "patch",
        "delete",
        "deletecollection",
    ];
    let reviews: Api<SubjectAccessReview> = Api::all(client.clone());
    let mut wrong = Vec::new();
    let mut asked = 0;
    for (account, account_ns, account_name) in accounts {
        for (scope, namespace) in scopes {
            for (group, resource) in &universe {
                let (resource_name, subresource) = match resource.split_once('/') {
                    Some((r, sub)) => (r, Some(sub.to_string())),
                    None => (resource.as_str(), None),
                };
                let expected = allowed
                    .get(&(
                        account.to_string(),
                        scope.to_string(),
                        group.clone(),
                        resource.clone(),
                    ))
                    .cloned()
                    .unwrap_or_default();
                for verb in VERBS {
                    // A scope shared by several names (watched = loadtest here) allows
                    // what any of them allows.
                    let also = scopes
                        .iter()
                        .filter(|(s, n)| n == namespace && s != scope)
                        .filter_map(|(s, _)| {
                            allowed.get(&(
                                account.to_string(),
                                s.to_string(),
                                group.clone(),
                                resource.clone(),
                            ))
                        })
                        .any(|v| v.iter().any(|x| x == verb));
                    let want = expected.iter().any(|v| v == verb) || also;
                    let review = SubjectAccessReview {
                        spec: SubjectAccessReviewSpec {
                            user: Some(format!(
                                "system:serviceaccount:{account_ns}:{account_name}"
                            )),
                            groups: Some(vec![
                                "system:serviceaccounts".into(),
                                format!("system:serviceaccounts:{account_ns}"),
                                "system:authenticated".into(),
                            ]),
                            resource_attributes: Some(ResourceAttributes {
                                namespace: Some(namespace.to_string()),
                                verb: Some(verb.into()),
                                group: Some(group.clone()),
                                resource: Some(resource_name.into()),
                                subresource: subresource.clone(),
                                ..ResourceAttributes::default()
                            }),
                            ..SubjectAccessReviewSpec::default()
                        },
                        ..SubjectAccessReview::default()
                    };
                    let answer = reviews
                        .create(&PostParams::default(), &review)
                        .await
                        .unwrap_or_else(|e| panic!("a SubjectAccessReview: {e}"));
                    asked += 1;
                    let got = answer.status.map(|s| s.allowed).unwrap_or(false);
                    if got != want {
                        wrong.push(format!(
                            "{account} {verb} {group}/{resource} in {namespace} ({scope}): allowed={got}, docs/security.md says {want}"
                        ));
                    }
                }
            }
        }
    }
    assert!(
        wrong.is_empty(),
        "permissions differ from the table of docs/security.md:\n{}",
        wrong.join("\n")
    );
    eprintln!("{asked} permission checks match the table of docs/security.md");
}
