//! The data path on the testbed's real PostgreSQL and Kafka: producer processes, relay,
//! consumer processes and the acknowledgement ledger.

mod support;

use std::time::Duration;

use outbox_workers::ledger::IdSet;
use serde_json::Value;
use support::{keyed_messages, send_batch, send_one, wait_acknowledged, Env, Worker};
use testbed_support::unique_name;

const PRODUCER_HEALTH: &str = "/api/messages/health";
const CONSUMER_HEALTH: &str = "/api/consumer/health";

#[tokio::test]
async fn single_and_batch_sends_are_acknowledged_exactly_once() {
    let env = Env::on_testbed("single-batch", 3).await;
    let mut producer = Worker::producer(&env, "p1", &[]);
    producer.wait_healthy(PRODUCER_HEALTH).await;
    let group = unique_name("g");
    let mut consumer = Worker::consumer(&env, "c1", &group, &[]);
    consumer.wait_healthy(CONSUMER_HEALTH).await;

    let mut ids = Vec::new();
    for i in 0..5 {
        ids.push(send_one(&producer, &env.topic, "k", &format!("single-{i}")).await);
    }
    ids.extend(send_batch(&producer, &env.topic, &keyed_messages("b", 300, 7)).await);
    assert_eq!(ids.len(), 305);
    let unique: std::collections::HashSet<_> = ids.iter().collect();
    assert_eq!(unique.len(), 305, "every message gets its own id");

    let expected = IdSet::from_ids(ids);
    let report = wait_acknowledged(
        &env.database_url,
        &group,
        &expected,
        Duration::from_secs(60),
    )
    .await;
    assert_eq!(report.acknowledged, 305);
    assert_eq!(report.missing, 0);
    assert_eq!(report.duplicates, 0, "no redelivery in normal operation");
    assert_eq!(report.out_of_order, 0);
    let latency = report.latency.expect("latency recorded");
    assert_eq!(latency.count, 305);

    // A graceful stop finishes in-flight work and exits cleanly.
    assert!(
        consumer.terminate(),
        "consumer exits 0 on SIGTERM: {}",
        consumer.log_text()
    );
    assert!(
        producer.terminate(),
        "producer exits 0 on SIGTERM: {}",
        producer.log_text()
    );
}

#[tokio::test]
async fn three_groups_each_acknowledge_every_message() {
    let env = Env::on_testbed("three-groups", 3).await;
    let mut producer = Worker::producer(&env, "p1", &[]);
    producer.wait_healthy(PRODUCER_HEALTH).await;
    let groups: Vec<String> = (0..3).map(|i| unique_name(&format!("group-{i}"))).collect();
    let mut consumers: Vec<Worker> = groups
        .iter()
        .enumerate()
        .map(|(i, g)| Worker::consumer(&env, &format!("c{i}"), g, &[]))
        .collect();
    for c in &mut consumers {
        c.wait_healthy(CONSUMER_HEALTH).await;
    }
    let mut ids = send_batch(&producer, &env.topic, &keyed_messages("a", 400, 10)).await;
    ids.extend(send_batch(&producer, &env.topic, &keyed_messages("b", 400, 10)).await);
    let expected = IdSet::from_ids(ids);
    for group in &groups {
        let report =
            wait_acknowledged(&env.database_url, group, &expected, Duration::from_secs(60)).await;
        assert_eq!(
            (report.expected, report.acknowledged, report.missing),
            (800, 800, 0),
            "{report:?}"
        );
        assert_eq!(report.duplicates, 0, "{report:?}");
        assert_eq!(report.out_of_order, 0, "{report:?}");
    }
}

#[tokio::test]
async fn per_key_order_holds_with_three_producer_replicas_relaying() {
    let env = Env::on_testbed("key-order", 4).await;
    let mut producers: Vec<Worker> = (0..3)
        .map(|i| Worker::producer(&env, &format!("p{i}"), &[("RELAY_BATCH_SIZE", "50")]))
        .collect();
    for p in &mut producers {
        p.wait_healthy(PRODUCER_HEALTH).await;
    }
    let group = unique_name("g");
    let mut consumer = Worker::consumer(&env, "c1", &group, &[("CONSUMER_BATCH_SIZE", "37")]);
    consumer.wait_healthy(CONSUMER_HEALTH).await;

    // Every producer writes the same keys at once; each client sends its next request
    // only after the previous one was answered, so each key has a causal order.
    let mut tasks = Vec::new();
    for (i, p) in producers.iter().enumerate() {
        let url_port = p.port;
        let topic = env.topic.clone();
        tasks.push(tokio::spawn(async move {
            let worker_url = format!("http://127.0.0.1:{url_port}");
            let client = reqwest::Client::new();
            let mut ids = Vec::new();
            for round in 0..10 {
                let messages: Vec<Value> = (0..60)
                    .map(|j| serde_json::json!({"topic": topic, "key": format!("shared-{}", j % 6), "message": format!("p{i}-r{round}-{j}")}))
                    .collect();
                let r = client
                    .post(format!("{worker_url}/api/messages/batch"))
                    .json(&serde_json::json!({"messages": messages}))
                    .send()
                    .await
                    .expect("batch");
                assert_eq!(r.status(), 200);
                let body: Value = r.json().await.expect("json");
                ids.extend(body["ids"].as_array().expect("ids").iter().map(|v| v.as_i64().expect("id")));
                let r = client
                    .post(format!("{worker_url}/api/messages/send"))
                    .json(&serde_json::json!({"topic": topic, "key": "shared-0", "message": format!("p{i}-single-{round}")}))
                    .send()
                    .await
                    .expect("send");
                assert_eq!(r.status(), 200);
                let body: Value = r.json().await.expect("json");
                ids.push(body["id"].as_i64().expect("id"));
            }
            ids
        }));
    }
    let mut ids = Vec::new();
    for t in tasks {
        ids.extend(t.await.expect("sender"));
    }
    assert_eq!(ids.len(), 3 * 10 * 61);
    let expected = IdSet::from_ids(ids);
    let report = wait_acknowledged(
        &env.database_url,
        &group,
        &expected,
        Duration::from_secs(90),
    )
    .await;
    assert_eq!(report.missing, 0, "{report:?}");
    assert_eq!(report.out_of_order, 0, "{report:?}");
    assert_eq!(
        report.duplicates, 0,
        "one relay publishes at a time: {report:?}"
    );

    let client = outbox_workers::db::connect(&env.database_url)
        .await
        .expect("connect");
    let leader: Option<String> = client
        .query_one("SELECT leader FROM outbox_relay_state", &[])
        .await
        .expect("relay state")
        .get(0);
    assert!(leader.is_some_and(|l| l.starts_with('p')));
}

#[tokio::test]
async fn bad_requests_get_a_4xx_naming_the_problem_and_store_nothing() {
    let env = Env::on_testbed("bad-input", 1).await;
    let mut producer = Worker::producer(&env, "p1", &[("MAX_BODY_BYTES", "2000")]);
    producer.wait_healthy(PRODUCER_HEALTH).await;
    let client = reqwest::Client::new();
    let topic = env.topic.as_str();
    let big = "x".repeat(3000);
    let cases: Vec<(&str, &str, String, u16, &str)> = vec![
        ("/api/messages/send", "application/json", "{\"topic\": ".into(), 400, "malformed JSON"),
        ("/api/messages/send", "application/json", "not json".into(), 400, "malformed JSON"),
        ("/api/messages/send", "application/json", format!("{{\"topic\":\"{topic}\"}}"), 400, "message"),
        ("/api/messages/send", "application/json", "{\"message\":\"m\"}".into(), 400, "topic"),
        ("/api/messages/send", "application/json", format!("{{\"topic\":\"{topic}\",\"message\":5}}"), 400, "message"),
        ("/api/messages/send", "application/json", format!("{{\"topic\":\"{topic}\",\"message\":\"m\",\"key\":[1]}}"), 400, "key"),
        ("/api/messages/send", "application/json", format!("{{\"topic\":\"{topic}\",\"message\":\"m\",\"headers\":{{\"a\":1}}}}"), 400, "headers"),
        ("/api/messages/send", "application/json", "{\"topic\":\"nope\",\"message\":\"m\"}".into(), 400, "unknown topic `nope`"),
        ("/api/messages/send", "text/plain", format!("{{\"topic\":\"{topic}\",\"message\":\"m\"}}"), 415, "Content-Type"),
        ("/api/messages/send", "application/json", format!("{{\"topic\":\"{topic}\",\"message\":\"{big}\"}}"), 413, "MAX_BODY_BYTES"),
        ("/api/messages/batch", "application/json", "{\"messages\":[]}".into(), 400, "empty"),
        ("/api/messages/batch", "application/json", format!("{{\"messages\":[{{\"topic\":\"{topic}\",\"message\":\"ok\"}},{{\"topic\":\"nope\",\"message\":\"m\"}}]}}"), 400, "messages[1].topic"),
        ("/api/messages/batch", "application/json", format!("{{\"messages\":[{{\"topic\":\"{topic}\",\"message\":\"ok\"}},{{\"topic\":\"{topic}\"}}]}}"), 400, "messages[1]"),
    ];
    for (path, content_type, body, status, needle) in &cases {
        let response = client
            .post(producer.url(path))
            .header("content-type", *content_type)
            .body(body.clone())
            .send()
            .await
            .expect("request");
        let got = response.status().as_u16();
        let text = response.text().await.unwrap_or_default();
        assert_eq!(got, *status, "{path} {body:.80}: {text}");
        let json: Value = serde_json::from_str(&text)
            .unwrap_or_else(|_| panic!("JSON error body for {body:.80}: {text}"));
        let error = json["error"].as_str().unwrap_or_default();
        assert!(
            error.contains(needle),
            "error for {body:.80} should mention {needle:?}: {error}"
        );
    }
    let db = outbox_workers::db::connect(&env.database_url)
        .await
        .expect("connect");
    let stored: i64 = db
        .query_one("SELECT count(*) FROM outbox_messages", &[])
        .await
        .expect("count")
        .get(0);
    assert_eq!(stored, 0, "bad requests store nothing");
}

#[tokio::test]
async fn a_consumer_killed_mid_stream_and_restarted_misses_nothing() {
    let env = Env::on_testbed("kill-consumer", 3).await;
    let mut producer = Worker::producer(&env, "p1", &[]);
    producer.wait_healthy(PRODUCER_HEALTH).await;
    let group = unique_name("g");
    let mut consumer = Worker::consumer(&env, "c1", &group, &[("CONSUMER_BATCH_SIZE", "100")]);
    consumer.wait_healthy(CONSUMER_HEALTH).await;
    let mut ids = Vec::new();
    for round in 0..20 {
        ids.extend(
            send_batch(
                &producer,
                &env.topic,
                &keyed_messages(&format!("r{round}"), 250, 13),
            )
            .await,
        );
        if round == 8 {
            consumer.kill9();
        }
    }
    let db = outbox_workers::db::connect(&env.database_url)
        .await
        .expect("connect");
    let expected = IdSet::from_ids(ids);
    let before = outbox_workers::ledger::group_report(&db, &group, &expected)
        .await
        .expect("report");
    assert!(
        before.missing > 0,
        "the consumer was killed before it had seen everything"
    );
    let mut restarted =
        Worker::consumer(&env, "c1-again", &group, &[("CONSUMER_BATCH_SIZE", "100")]);
    restarted.wait_healthy(CONSUMER_HEALTH).await;
    let report = wait_acknowledged(
        &env.database_url,
        &group,
        &expected,
        Duration::from_secs(90),
    )
    .await;
    assert_eq!(
        (report.expected, report.acknowledged, report.missing),
        (5000, 5000, 0),
        "{report:?}"
    );
    assert_eq!(report.out_of_order, 0, "{report:?}");
    eprintln!(
        "duplicates after kill -9 of a consumer: {}",
        report.duplicates
    );
}

#[tokio::test]
async fn a_relay_killed_mid_batch_is_resumed_by_another_replica_without_loss() {
    let env = Env::on_testbed("kill-relay", 3).await;
    // Small relay batches so the kill lands between confirmed batches and mid-batch.
    let mut first = Worker::producer(&env, "p1", &[("RELAY_BATCH_SIZE", "200")]);
    first.wait_healthy(PRODUCER_HEALTH).await;
    let db = outbox_workers::db::connect(&env.database_url)
        .await
        .expect("connect");
    // The second replica starts behind the first, so the first leads.
    let mut second = Worker::producer(&env, "p2", &[("RELAY_BATCH_SIZE", "200")]);
    second.wait_healthy(PRODUCER_HEALTH).await;
    // Messages go in through the second replica while the first relays them; the
    // leader is killed while rows are still arriving and being published.
    let mut ids = Vec::new();
    for round in 0..20 {
        ids.extend(
            send_batch(
                &second,
                &env.topic,
                &keyed_messages(&format!("r{round}"), 500, 11),
            )
            .await,
        );
        if round == 4 {
            testbed_support::eventually(
                "the first relay to publish",
                Duration::from_secs(30),
                || async {
                    let row = db
                        .query_one("SELECT published, leader FROM outbox_relay_state", &[])
                        .await
                        .ok()?;
                    let (published, leader): (i64, Option<String>) = (row.get(0), row.get(1));
                    (published > 0 && leader.as_deref() == Some("p1")).then_some(())
                },
            )
            .await;
            first.kill9();
        }
    }
    let group = unique_name("g");
    let mut consumer = Worker::consumer(&env, "c1", &group, &[]);
    consumer.wait_healthy(CONSUMER_HEALTH).await;
    let expected = IdSet::from_ids(ids);
    let report = wait_acknowledged(
        &env.database_url,
        &group,
        &expected,
        Duration::from_secs(120),
    )
    .await;
    assert_eq!(
        (report.acknowledged, report.missing),
        (10_000, 0),
        "{report:?}"
    );
    assert_eq!(report.out_of_order, 0, "{report:?}");
    let leader: Option<String> = db
        .query_one("SELECT leader FROM outbox_relay_state", &[])
        .await
        .expect("state")
        .get(0);
    assert_eq!(
        leader.as_deref(),
        Some("p2"),
        "the surviving replica took over the relay"
    );
    let backlog: i64 = db
        .query_one("SELECT pending FROM outbox_backlog", &[])
        .await
        .expect("backlog")
        .get(0);
    assert_eq!(backlog, 0);
    eprintln!(
        "duplicates after kill -9 of the relay: {}",
        report.duplicates
    );
}

#[tokio::test]
async fn producers_starting_at_once_all_migrate_the_same_fresh_schema() {
    let url = testbed_support::testbed()
        .fresh_schema("migrate-race")
        .await
        .expect("fresh schema");
    // Eight first-time starters at once, as when a Deployment's replicas start together.
    let starters = (0..8).map(|_| outbox_workers::ledger::connect_and_migrate(&url));
    let results = futures::future::join_all(starters).await;
    for (i, result) in results.iter().enumerate() {
        assert!(
            result.is_ok(),
            "starter {i} failed to migrate: {:?}",
            result.as_ref().err()
        );
    }
    let client = results
        .into_iter()
        .next()
        .expect("eight results")
        .expect("client");
    let applied: i64 = client
        .query_one("SELECT count(*) FROM outbox_schema_migrations", &[])
        .await
        .expect("count migrations")
        .get(0);
    assert!(applied >= 1, "migrations recorded once each");
    let versions_distinct: bool = client
        .query_one(
            "SELECT count(*) = count(DISTINCT version) FROM outbox_schema_migrations",
            &[],
        )
        .await
        .expect("distinct versions")
        .get(0);
    assert!(versions_distinct);
}
