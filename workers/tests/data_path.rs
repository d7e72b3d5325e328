//! The data path on the testbed's real PostgreSQL and Kafka: producer processes, relay,
//! consumer processes and the acknowledgement ledger.

mod support;

use std::time::Duration;

use outbox_workers::ledger::IdSet;
use serde_json::Value;
use support::{keyed_messages, send_batch, send_one, wait_acknowledged, Env, Worker, READ_TIMEOUT};
use testbed_support::kafka::{read_topic, TopicMessage};
use testbed_support::{kafka, unique_name};

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
    let report = wait_acknowledged(&env, &group, &expected, Duration::from_secs(60)).await;
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
        let report = wait_acknowledged(&env, group, &expected, Duration::from_secs(60)).await;
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
        .map(|i| {
            Worker::producer(
                &env,
                &format!("p{i}"),
                &[("RELAY_ROWS_PER_KAFKA_BATCH", "50")],
            )
        })
        .collect();
    for p in &mut producers {
        p.wait_healthy(PRODUCER_HEALTH).await;
    }
    let group = unique_name("g");
    let mut consumer = Worker::consumer(
        &env,
        "c1",
        &group,
        &[("CONSUMER_ACKS_PER_TRANSACTION", "37")],
    );
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
    let report = wait_acknowledged(&env, &group, &expected, Duration::from_secs(90)).await;
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
    let mut producer = Worker::producer(
        &env,
        "p1",
        &[("MAX_BODY_BYTES", "2000"), ("MAX_BATCH_MESSAGES", "3")],
    );
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
        ("/api/messages/batch", "application/json", format!("{{\"messages\":[{m},{m},{m},{m}]}}", m = format!("{{\"topic\":\"{topic}\",\"message\":\"m\"}}")), 413, "4 messages in one batch; at most 3 per request (MAX_BATCH_MESSAGES)"),
        // Header names the system writes cannot be forged by a client.
        ("/api/messages/send", "application/json", format!("{{\"topic\":\"{topic}\",\"message\":\"m\",\"headers\":{{\"outbox-id\":\"7\"}}}}"), 400, "headers.outbox-id: header names starting with `outbox-` are reserved"),
        ("/api/messages/send", "application/json", format!("{{\"topic\":\"{topic}\",\"message\":\"m\",\"headers\":{{\"Outbox-Txid\":\"1\"}}}}"), 400, "reserved"),
        ("/api/messages/batch", "application/json", format!("{{\"messages\":[{{\"topic\":\"{topic}\",\"message\":\"ok\"}},{{\"topic\":\"{topic}\",\"message\":\"m\",\"headers\":{{\"outbox-created-at-us\":\"1\"}}}}]}}"), 400, "messages[1].headers.outbox-created-at-us"),
        // Headers are metadata: their count and bytes are capped at ingest.
        ("/api/messages/send", "application/json", format!("{{\"topic\":\"{topic}\",\"message\":\"\",\"headers\":{{{}}}}}", (0..65).map(|i| format!("\"h{i}\":\"\"")).collect::<Vec<_>>().join(",")), 413, "headers: 65 headers; at most 64 per message"),
        ("/api/messages/batch", "application/json", format!("{{\"messages\":[{{\"topic\":\"{topic}\",\"message\":\"ok\"}},{{\"topic\":\"{topic}\",\"message\":\"\",\"headers\":{{{}}}}}]}}", (0..100).map(|i| format!("\"h{i}\":\"\"")).collect::<Vec<_>>().join(",")), 413, "messages[1].headers: 100 headers"),
        // NUL is valid JSON but PostgreSQL text cannot hold it: 400, not 503 forever.
        ("/api/messages/send", "application/json", format!("{{\"topic\":\"{topic}\",\"message\":\"a\\u0000b\"}}"), 400, "message: contains a NUL character"),
        ("/api/messages/send", "application/json", format!("{{\"topic\":\"{topic}\",\"message\":\"m\",\"key\":\"k\\u0000\"}}"), 400, "key: contains a NUL character"),
        ("/api/messages/send", "application/json", format!("{{\"topic\":\"{topic}\",\"message\":\"m\",\"headers\":{{\"h\":\"\\u0000\"}}}}"), 400, "headers.h: contains a NUL character"),
        ("/api/messages/send", "application/json", format!("{{\"topic\":\"{topic}\",\"message\":\"m\",\"headers\":{{\"h\\u0000\":\"v\"}}}}"), 400, "contains a NUL character"),
        ("/api/messages/batch", "application/json", format!("{{\"messages\":[{{\"topic\":\"{topic}\",\"message\":\"ok\"}},{{\"topic\":\"{topic}\",\"message\":\"\\u0000\"}}]}}"), 400, "messages[1].message: contains a NUL character"),
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
    let stored = support::outbox_rows(&db).await;
    assert_eq!(stored, 0, "bad requests store nothing");
}

#[tokio::test]
async fn a_consumer_killed_mid_stream_and_restarted_misses_nothing() {
    let env = Env::on_testbed("kill-consumer", 3).await;
    let mut producer = Worker::producer(&env, "p1", &[]);
    producer.wait_healthy(PRODUCER_HEALTH).await;
    let group = unique_name("g");
    let mut consumer = Worker::consumer(
        &env,
        "c1",
        &group,
        &[("CONSUMER_ACKS_PER_TRANSACTION", "100")],
    );
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
    let mut restarted = Worker::consumer(
        &env,
        "c1-again",
        &group,
        &[("CONSUMER_ACKS_PER_TRANSACTION", "100")],
    );
    restarted.wait_healthy(CONSUMER_HEALTH).await;
    let report = wait_acknowledged(&env, &group, &expected, Duration::from_secs(90)).await;
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
async fn a_relay_killed_mid_read_is_resumed_by_another_replica_without_loss() {
    let env = Env::on_testbed("kill-relay", 3).await;
    // Small relay batches so the kill lands between confirmed batches and mid-batch.
    let mut first = Worker::producer(&env, "p1", &[("RELAY_ROWS_PER_KAFKA_BATCH", "200")]);
    first.wait_healthy(PRODUCER_HEALTH).await;
    let db = outbox_workers::db::connect(&env.database_url)
        .await
        .expect("connect");
    // The second replica starts behind the first, so the first leads.
    let mut second = Worker::producer(&env, "p2", &[("RELAY_ROWS_PER_KAFKA_BATCH", "200")]);
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
    let report = wait_acknowledged(&env, &group, &expected, Duration::from_secs(120)).await;
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

/// A system with a dead-letter topic and a producer, a group not started yet, and a
/// session on a database whose ledger refuses that group's acknowledgements (until the
/// trigger `refuse_acks` is dropped).
struct RefusedAcks {
    env: Env,
    dead_letters: String,
    producer: Worker,
    group: String,
    db: tokio_postgres::Client,
}

impl RefusedAcks {
    async fn start(name: &str, partitions: i32) -> RefusedAcks {
        let env = Env::on_testbed(name, partitions).await;
        let dead_letters = format!("{}-dlt", env.topic);
        kafka::create_topic(&env.bootstrap, &dead_letters, 1, &[]).await;
        let mut producer = Worker::producer(&env, "p1", &[]);
        producer.wait_healthy(PRODUCER_HEALTH).await;
        let group = unique_name("g");
        let db = outbox_workers::db::connect(&env.database_url)
            .await
            .expect("connect");
        db.batch_execute(&format!(
            "CREATE FUNCTION refuse_acks() RETURNS trigger LANGUAGE plpgsql AS
               $$ BEGIN RAISE EXCEPTION 'acknowledgements refused by the test'; END $$;
             CREATE TRIGGER refuse_acks BEFORE INSERT OR UPDATE ON outbox_ack_chunks
               FOR EACH ROW WHEN (NEW.group_name = '{group}') EXECUTE FUNCTION refuse_acks();"
        ))
        .await
        .expect("install the refusing trigger");
        RefusedAcks {
            env,
            dead_letters,
            producer,
            group,
            db,
        }
    }
}

fn headers_only(messages: Vec<TopicMessage>) -> Vec<std::collections::HashMap<String, String>> {
    messages.into_iter().map(|m| m.headers).collect()
}

#[tokio::test]
async fn messages_whose_acknowledgement_keeps_failing_go_to_the_dead_letter_topic_after_the_last_try(
) {
    // The ledger refuses this group's acknowledgements, as a broken database would.
    let RefusedAcks {
        env,
        dead_letters,
        producer,
        group,
        db,
    } = RefusedAcks::start("dead-letter", 2).await;
    let mut consumer = Worker::consumer(
        &env,
        "c1",
        &group,
        &[
            ("RETRY_MAX_RETRIES", "2"),
            ("RETRY_BACKOFF_MS", "10"),
            ("RETRY_MAX_BACKOFF_MS", "50"),
            ("DEAD_LETTER_TOPIC", &dead_letters),
        ],
    );
    consumer.wait_healthy(CONSUMER_HEALTH).await;

    let ids = send_batch(&producer, &env.topic, &keyed_messages("d", 50, 5)).await;
    // Two messages that did not come through the outbox (no id header).
    let raw: rdkafka::producer::FutureProducer =
        outbox_workers::kafka::client_config(&env.bootstrap, &Default::default())
            .create()
            .expect("raw producer");
    for i in 0..2 {
        let payload = format!("foreign-{i}");
        raw.send(
            rdkafka::producer::FutureRecord::<str, str>::to(&env.topic).payload(&payload),
            Duration::from_secs(10),
        )
        .await
        .expect("produce a message without an id header");
    }

    let letters = headers_only(read_topic(&env.bootstrap, &dead_letters, 52, READ_TIMEOUT).await);
    let reason = |h: &std::collections::HashMap<String, String>| {
        h.get(outbox_workers::headers::DEAD_LETTER_REASON)
            .cloned()
            .unwrap_or_default()
    };
    let mut lettered_ids: Vec<i64> = letters
        .iter()
        .filter_map(|h| h.get(outbox_workers::headers::MESSAGE_ID)?.parse().ok())
        .collect();
    lettered_ids.sort_unstable();
    let mut sent = ids.clone();
    sent.sort_unstable();
    assert_eq!(
        lettered_ids, sent,
        "every outbox message is dead-lettered once"
    );
    for h in &letters {
        assert_eq!(
            h.get(outbox_workers::headers::DEAD_LETTER_GROUP),
            Some(&group),
            "{h:?}"
        );
        if h.contains_key(outbox_workers::headers::MESSAGE_ID) {
            assert!(
                reason(h).contains("acknowledgement failed 3 times")
                    && reason(h).contains("acknowledgements refused by the test"),
                "{h:?}"
            );
        } else {
            assert_eq!(reason(h), "no valid outbox message id header", "{h:?}");
        }
    }
    let foreign = letters
        .iter()
        .filter(|h| !h.contains_key(outbox_workers::headers::MESSAGE_ID))
        .count();
    assert_eq!(foreign, 2);

    // The ledger says why they are not acknowledged; the metrics count them.
    let expected = IdSet::from_ids(ids);
    let report = testbed_support::eventually(
        "dead letters in the ledger",
        Duration::from_secs(30),
        || {
            let db = &db;
            let group = &group;
            let expected = &expected;
            async move {
                let r = outbox_workers::ledger::group_report(db, group, expected)
                    .await
                    .ok()?;
                (r.dead_lettered == 50).then_some(r)
            }
        },
    )
    .await;
    assert_eq!((report.acknowledged, report.missing), (0, 50), "{report:?}");
    let metrics = consumer.metrics().await;
    assert!(
        metrics.contains("outbox_consumer_dead_lettered_total 52"),
        "{metrics}"
    );
    assert!(consumer.terminate(), "{}", consumer.log_text());
}

/// The acknowledgement of message `id` of key 42, published in order `(txid, id)`.
fn key_42_ack(id: i64, txid: u64) -> outbox_workers::consumer::ledger::Ack {
    outbox_workers::consumer::ledger::Ack {
        id,
        partition: 0,
        offset: id,
        key_hash: Some(42),
        order: Some((txid, id)),
        created_at_us: None,
    }
}

/// A session on a fresh schema of the testbed's database, migrated.
async fn migrated_schema(name: &str) -> tokio_postgres::Client {
    let url = testbed_support::testbed()
        .fresh_schema(name)
        .await
        .expect("fresh schema");
    outbox_workers::ledger::connect_and_migrate(&url)
        .await
        .expect("migrate")
}

#[tokio::test]
async fn the_backlog_view_counts_rows_behind_the_watermark_and_the_age_of_the_oldest() {
    let client = migrated_schema("backlog-view").await;
    // Three rows accepted two minutes ago, in three transactions, none relayed yet.
    for id in 1..=3i64 {
        client
            .execute(
                "INSERT INTO outbox_messages (id, topic, payload, created_at)
                 VALUES ($1, 't', 'p', now() - interval '120 seconds')",
                &[&id],
            )
            .await
            .expect("insert a row");
    }
    let read = || async {
        let row = client
            .query_one(
                "SELECT pending, oldest_age_seconds FROM outbox_backlog",
                &[],
            )
            .await
            .expect("read the backlog view");
        (row.get::<_, i64>(0), row.get::<_, f64>(1))
    };
    let (pending, age) = read().await;
    assert_eq!(pending, 3);
    assert!((119.0..200.0).contains(&age), "oldest age {age}");
    // The relay's watermark moves past the first two rows, then past the last.
    let advance_to = |id: i64| {
        let client = &client;
        async move {
            client
                .execute(
                    "UPDATE outbox_relay_state SET (wm_txid, wm_id) =
                       (SELECT txid, id FROM outbox_messages WHERE id = $1)",
                    &[&id],
                )
                .await
                .expect("advance the watermark");
        }
    };
    advance_to(2).await;
    assert_eq!(read().await.0, 1);
    advance_to(3).await;
    assert_eq!(read().await, (0, 0.0), "nothing pending, no age");

    // A large backlog is not counted row by row (that scan cost seconds of CPU per
    // reading at millions of rows): past 10,000 rows it is the id sequence's last value
    // less the watermark, exact while ids are dense.
    client
        .batch_execute(
            "INSERT INTO outbox_messages (id, topic, payload)
               SELECT g, 't', 'p' FROM generate_series(4, 25003) AS g;
             SELECT setval('outbox_message_id_seq', 25003);",
        )
        .await
        .expect("25,000 rows behind the watermark");
    assert_eq!(read().await.0, 25_000);
    // Ids taken by transactions that rolled back leave the sequence far ahead of the
    // rows: a small backlog is still counted exactly, so "drained" means drained.
    advance_to(25_000).await;
    client
        .batch_execute("SELECT setval('outbox_message_id_seq', 900000)")
        .await
        .expect("a gap in the ids");
    assert_eq!(read().await.0, 3, "rows 25,001 to 25,003 are pending");
    advance_to(25_003).await;
    assert_eq!(read().await.0, 0);
}

#[tokio::test]
async fn reading_the_backlog_view_walks_the_index_from_the_watermark_and_compiles_nothing() {
    let client = migrated_schema("backlog-plan").await;
    // 30,000 rows, all relayed, as after a run; the table analyzed, as autovacuum does.
    client
        .batch_execute(
            "INSERT INTO outbox_messages (id, topic, payload)
               SELECT g, 't', 'p' FROM generate_series(1, 30000) AS g;
             SELECT setval('outbox_message_id_seq', 30000);
             UPDATE outbox_relay_state SET (wm_txid, wm_id) =
               (SELECT txid, id FROM outbox_messages WHERE id = 30000);
             ANALYZE outbox_messages;",
        )
        .await
        .expect("30,000 relayed rows");
    let jit_above_cost: f64 = client
        .query_one("SELECT current_setting('jit_above_cost')::float8", &[])
        .await
        .expect("jit_above_cost")
        .get(0);
    let explained: serde_json::Value = client
        .query_one(
            "EXPLAIN (ANALYZE, FORMAT JSON) SELECT pending, oldest_age_seconds FROM outbox_backlog",
            &[],
        )
        .await
        .expect("explain the backlog view")
        .get(0);
    let top = &explained[0];
    fn scans(node: &serde_json::Value, out: &mut Vec<(String, String)>) {
        if let Some(relation) = node["Relation Name"].as_str() {
            let kind = node["Node Type"].as_str().unwrap_or_default();
            out.push((kind.to_string(), relation.to_string()));
        }
        for child in node["Plans"].as_array().into_iter().flatten() {
            scans(child, out);
        }
    }
    let mut found = Vec::new();
    scans(&top["Plan"], &mut found);
    // Each producer reads the view every 10 s, the runner every second: a plan that
    // scanned the outbox, or cost enough to be JIT-compiled (140 ms of CPU a reading),
    // took seconds of the database's CPU in every minute of a run.
    assert!(
        found
            .iter()
            .any(|(_, relation)| relation == "outbox_messages")
            && !found.contains(&("Seq Scan".into(), "outbox_messages".into())),
        "the outbox is scanned, not walked from the watermark: {found:?}"
    );
    let cost = top["Plan"]["Total Cost"].as_f64().expect("a total cost");
    assert!(
        cost < jit_above_cost,
        "cost {cost} reaches jit_above_cost {jit_above_cost}"
    );
    assert!(top.get("JIT").is_none(), "JIT-compiled: {}", top["JIT"]);
}

#[tokio::test]
async fn what_kafka_cannot_take_is_refused_at_ingest_and_a_poison_row_is_quarantined_without_stopping_delivery(
) {
    let env = Env::on_testbed("oversized", 1).await;
    // A second topic that takes small messages only.
    let small = unique_name("oversized-small");
    kafka::create_topic(&env.bootstrap, &small, 1, &[("max.message.bytes", "20000")]).await;
    let topics = format!("{},{small}", env.topic);
    let mut producer = Worker::producer(&env, "p1", &[("KAFKA_TOPICS", &topics)]);
    producer.wait_healthy(PRODUCER_HEALTH).await;
    let group = unique_name("g");
    let mut consumer = Worker::consumer(&env, "c1", &group, &[("KAFKA_TOPICS", &topics)]);
    consumer.wait_healthy(CONSUMER_HEALTH).await;
    let client = reqwest::Client::new();

    // 1.5 MB fits the 32 MiB body limit but not the relay's message.max.bytes.
    let cases = [
        (env.topic.as_str(), 1_500_000, "message.max.bytes=1000000"),
        (small.as_str(), 30_000, "max.message.bytes=20000"),
    ];
    for (topic, size, needle) in cases {
        let response = client
            .post(producer.url("/api/messages/send"))
            .json(&serde_json::json!({"topic": topic, "message": "x".repeat(size)}))
            .send()
            .await
            .expect("send");
        let status = response.status().as_u16();
        let body: Value = response.json().await.expect("JSON error body");
        assert_eq!(status, 413, "{size} bytes to {topic}: {body}");
        let error = body["error"].as_str().unwrap_or_default();
        assert!(error.contains(needle), "{error}");
        assert_eq!(body["field"], "message", "{body}");
    }

    // An application writing the outbox table directly (the transactional outbox's
    // own path) bypasses ingest: the relay must not stall on what Kafka refuses.
    let db = outbox_workers::db::connect(&env.database_url)
        .await
        .expect("connect");
    let poison: String = (0..100_000u32)
        .map(|i| char::from(b'a' + (i.wrapping_mul(2_654_435_761) >> 27) as u8 % 26))
        .collect();
    let poison_id: i64 = db
        .query_one(
            "INSERT INTO outbox_messages (id, topic, key, payload)
             VALUES (nextval('outbox_message_id_seq'), $1, 'same-key', $2) RETURNING id",
            &[&small, &poison],
        )
        .await
        .expect("insert a row Kafka will refuse")
        .get(0);
    let next = send_one(&producer, &small, "same-key", "after the poison").await;
    let report = wait_acknowledged(
        &env,
        &group,
        &IdSet::from_ids(vec![next]),
        Duration::from_secs(60),
    )
    .await;
    assert_eq!(report.missing, 0, "{report:?}");

    let row = db
        .query_one(
            "SELECT id, topic, key, length(payload), error FROM outbox_quarantine",
            &[],
        )
        .await
        .expect("one quarantined row");
    assert_eq!(row.get::<_, i64>(0), poison_id);
    assert_eq!(row.get::<_, String>(1), small);
    assert_eq!(row.get::<_, Option<String>>(2).as_deref(), Some("same-key"));
    assert_eq!(row.get::<_, i32>(3), 100_000);
    let error: String = row.get(4);
    assert!(error.contains("too large"), "{error}");
    let metrics = producer.metrics().await;
    assert!(
        metrics.contains("outbox_relay_quarantined_total 1\n"),
        "{metrics}"
    );
    assert!(
        metrics.contains("# TYPE outbox_backlog_oldest_age_seconds gauge"),
        "{metrics}"
    );
    let backlog = db
        .query_one("SELECT pending, quarantined FROM outbox_backlog", &[])
        .await
        .expect("backlog");
    assert_eq!((backlog.get::<_, i64>(0), backlog.get::<_, i64>(1)), (0, 1));
    assert!(producer.terminate(), "{}", producer.log_text());
    assert!(consumer.terminate(), "{}", consumer.log_text());
}

#[tokio::test]
async fn a_row_for_a_topic_the_relay_does_not_serve_is_quarantined_without_stopping_delivery() {
    let env = Env::on_testbed("unserved", 1).await;
    // One topic Kafka has but this system does not relay to, one Kafka does not have.
    let elsewhere = unique_name("unserved-elsewhere");
    kafka::create_topic(&env.bootstrap, &elsewhere, 1, &[]).await;
    let missing = unique_name("unserved-missing");
    let db = outbox_workers::ledger::connect_and_migrate(&env.database_url)
        .await
        .expect("migrate");
    for topic in [&elsewhere, &missing] {
        db.execute(
            "INSERT INTO outbox_messages (id, topic, key, payload)
             VALUES (nextval('outbox_message_id_seq'), $1, 'k', 'written straight into the table')",
            &[topic],
        )
        .await
        .expect("insert a row for a topic the relay does not serve");
    }
    let mut producer = Worker::producer(&env, "p1", &[]);
    producer.wait_healthy(PRODUCER_HEALTH).await;
    let group = unique_name("g");
    let mut consumer = Worker::consumer(&env, "c1", &group, &[]);
    consumer.wait_healthy(CONSUMER_HEALTH).await;
    let next = send_one(&producer, &env.topic, "k", "after the unserved rows").await;
    let report = wait_acknowledged(
        &env,
        &group,
        &IdSet::from_ids(vec![next]),
        Duration::from_secs(60),
    )
    .await;
    assert_eq!(report.missing, 0, "{report:?}\n{}", producer.log_text());
    let rows = db
        .query(
            "SELECT topic, error FROM outbox_quarantine ORDER BY id",
            &[],
        )
        .await
        .expect("quarantined rows");
    let quarantined: Vec<(String, String)> = rows.iter().map(|r| (r.get(0), r.get(1))).collect();
    assert_eq!(quarantined.len(), 2, "{quarantined:?}");
    for ((topic, error), expected) in quarantined.iter().zip([&elsewhere, &missing]) {
        assert_eq!(topic, expected);
        assert!(
            error.contains(&format!(
                "topic `{expected}` is not one this system relays to"
            )) && error.contains(&env.topic),
            "{error}"
        );
    }
    assert_eq!(
        kafka::message_count(&env.bootstrap, &elsewhere).await,
        Some(0),
        "nothing reached the topic the system does not serve"
    );
    assert!(producer.terminate(), "{}", producer.log_text());
    assert!(consumer.terminate(), "{}", consumer.log_text());
}

#[tokio::test]
async fn only_the_message_that_fails_on_its_own_is_dead_lettered_not_its_ack_transaction() {
    let env = Env::on_testbed("isolate", 1).await;
    let dead_letters = format!("{}-dlt", env.topic);
    kafka::create_topic(&env.bootstrap, &dead_letters, 1, &[]).await;
    let mut producer = Worker::producer(&env, "p1", &[]);
    producer.wait_healthy(PRODUCER_HEALTH).await;
    let group = unique_name("g");
    // One consumer batch of 40 messages, one of which the ledger refuses to record.
    let mut consumer = Worker::consumer(
        &env,
        "c1",
        &group,
        &[
            ("RETRY_MAX_RETRIES", "2"),
            ("RETRY_BACKOFF_MS", "10"),
            ("RETRY_MAX_BACKOFF_MS", "50"),
            ("CONSUMER_TRANSACTION_LINGER_MS", "2000"),
            ("DEAD_LETTER_TOPIC", &dead_letters),
        ],
    );
    consumer.wait_healthy(CONSUMER_HEALTH).await;
    let db = outbox_workers::db::connect(&env.database_url)
        .await
        .expect("connect");
    // Ids are allocated in blocks: the next batch's 13th id is predictable only after
    // it is stored, so refuse by id with a trigger installed before sending, reading
    // the poison id from a table the test fills at once after.
    db.batch_execute(&format!(
        "CREATE TABLE poison (id bigint);
         CREATE FUNCTION refuse_poison() RETURNS trigger LANGUAGE plpgsql AS $$
         BEGIN
           IF EXISTS (SELECT 1 FROM poison p
                      WHERE p.id / {chunk} = NEW.chunk
                        AND get_bit(NEW.bits, (p.id % {chunk})::int) = 1) THEN
             RAISE EXCEPTION 'the test refuses message %', (SELECT id FROM poison);
           END IF;
           RETURN NEW;
         END $$;
         CREATE TRIGGER refuse_poison BEFORE INSERT OR UPDATE ON outbox_ack_chunks
           FOR EACH ROW WHEN (NEW.group_name = '{group}') EXECUTE FUNCTION refuse_poison();",
        chunk = outbox_workers::ledger::CHUNK_IDS
    ))
    .await
    .expect("install the refusing trigger");
    // Park the consumer's first ack transaction behind the poison row being known: hold the
    // table lock while sending, then name the poison and let go.
    let mut tx_client = outbox_workers::db::connect(&env.database_url)
        .await
        .expect("connect");
    let tx = tx_client.transaction().await.expect("begin");
    tx.batch_execute("LOCK TABLE poison IN ACCESS EXCLUSIVE MODE")
        .await
        .expect("lock");
    let ids = send_batch(&producer, &env.topic, &keyed_messages("iso", 40, 4)).await;
    let poison = ids[12];
    tx.execute("INSERT INTO poison VALUES ($1)", &[&poison])
        .await
        .expect("name the poison");
    tx.commit().await.expect("commit");

    let letters = headers_only(read_topic(&env.bootstrap, &dead_letters, 1, READ_TIMEOUT).await);
    assert_eq!(
        letters[0]
            .get(outbox_workers::headers::MESSAGE_ID)
            .and_then(|v| v.parse::<i64>().ok()),
        Some(poison),
        "{letters:?}"
    );
    let reason = letters[0]
        .get(outbox_workers::headers::DEAD_LETTER_REASON)
        .cloned()
        .unwrap_or_default();
    assert!(
        reason.contains("with its ack transaction and again alone")
            && reason.contains(&format!("the test refuses message {poison}")),
        "{reason}"
    );
    let healthy: Vec<i64> = ids.iter().copied().filter(|id| *id != poison).collect();
    let report = wait_acknowledged(
        &env,
        &group,
        &IdSet::from_ids(healthy),
        Duration::from_secs(60),
    )
    .await;
    assert_eq!((report.acknowledged, report.missing), (39, 0), "{report:?}");
    let all = outbox_workers::ledger::group_report(&db, &group, &IdSet::from_ids(ids))
        .await
        .expect("report");
    assert_eq!((all.missing, all.dead_lettered), (1, 1), "{all:?}");
    assert!(consumer.terminate(), "{}", consumer.log_text());
}

#[tokio::test]
async fn a_message_the_dead_letter_topic_cannot_take_is_recorded_as_abandoned_and_the_group_goes_on(
) {
    // Until told otherwise, the ledger refuses every acknowledgement of the group.
    let RefusedAcks {
        env,
        dead_letters,
        producer,
        group,
        db,
    } = RefusedAcks::start("abandon", 1).await;
    // 1.04 MB: the topic takes it (max.message.bytes 1048588), the dead-letter
    // producer (message.max.bytes 1000000) cannot.
    let id = 1i64 << 40;
    let payload = "x".repeat(1_040_000);
    let raw: rdkafka::producer::FutureProducer = outbox_workers::kafka::client_config(
        &env.bootstrap,
        &[("message.max.bytes".to_string(), "1100000".to_string())]
            .into_iter()
            .collect(),
    )
    .create()
    .expect("raw producer");
    let id_text = id.to_string();
    let now_us = (std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .expect("clock")
        .as_micros())
    .to_string();
    let headers = rdkafka::message::OwnedHeaders::new()
        .insert(rdkafka::message::Header {
            key: outbox_workers::headers::MESSAGE_ID,
            value: Some(&id_text),
        })
        .insert(rdkafka::message::Header {
            key: outbox_workers::headers::TRANSACTION_ID,
            value: Some("1"),
        })
        .insert(rdkafka::message::Header {
            key: outbox_workers::headers::CREATED_AT_MICROS,
            value: Some(&now_us),
        });
    raw.send(
        rdkafka::producer::FutureRecord::<str, str>::to(&env.topic)
            .key("big")
            .payload(&payload)
            .headers(headers),
        Duration::from_secs(10),
    )
    .await
    .expect("produce a 1.04 MB outbox message");
    let mut consumer = Worker::consumer(
        &env,
        "c1",
        &group,
        &[
            ("RETRY_MAX_RETRIES", "1"),
            ("RETRY_BACKOFF_MS", "10"),
            ("RETRY_MAX_BACKOFF_MS", "50"),
            ("DEAD_LETTER_TOPIC", &dead_letters),
        ],
    );
    consumer.wait_healthy(CONSUMER_HEALTH).await;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    loop {
        assert!(
            consumer.exited().is_none(),
            "the consumer ended on a message it could not dead-letter:\n{}",
            consumer.log_text()
        );
        let kinds: Vec<String> = db
            .query(
                "SELECT kind FROM outbox_ack_anomalies WHERE group_name = $1 AND id = $2",
                &[&group, &id],
            )
            .await
            .expect("anomalies")
            .iter()
            .map(|r| r.get(0))
            .collect();
        if !kinds.is_empty() {
            assert_eq!(kinds, ["abandoned"]);
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "no anomaly recorded:\n{}",
            consumer.log_text()
        );
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
    let report = outbox_workers::ledger::group_report(&db, &group, &IdSet::from_ids(vec![id]))
        .await
        .expect("report");
    assert_eq!((report.missing, report.abandoned), (1, 1), "{report:?}");
    // The group goes on past it: the next message is acknowledged, the big one is not
    // read again.
    db.batch_execute("DROP TRIGGER refuse_acks ON outbox_ack_chunks")
        .await
        .expect("drop the trigger");
    let next = send_one(&producer, &env.topic, "k", "after the abandoned one").await;
    let report = wait_acknowledged(
        &env,
        &group,
        &IdSet::from_ids(vec![next]),
        Duration::from_secs(60),
    )
    .await;
    assert_eq!(report.missing, 0, "{report:?}");
    assert!(consumer.exited().is_none(), "{}", consumer.log_text());
    let metrics = consumer.metrics().await;
    assert!(
        metrics.contains("outbox_consumer_abandoned_total 1\n"),
        "{metrics}"
    );
    assert!(consumer.terminate(), "{}", consumer.log_text());
}

#[tokio::test]
async fn messages_sent_alone_take_dense_ids_so_the_backlog_counts_messages_not_id_blocks() {
    const MESSAGES: usize = 200;
    let env = Env::on_testbed("dense-ids", 1).await;
    let mut producer = Worker::producer(&env, "p1", &[]);
    producer.wait_healthy(PRODUCER_HEALTH).await;
    let mut ids: Vec<i64> = futures::future::join_all((0..8).map(|lane| {
        let producer = &producer;
        let topic = env.topic.as_str();
        async move {
            let mut ids = Vec::new();
            for i in (lane..MESSAGES).step_by(8) {
                ids.push(send_one(producer, topic, &format!("k{}", i % 7), "alone").await);
            }
            ids
        }
    }))
    .await
    .into_iter()
    .flatten()
    .collect();
    ids.sort_unstable();
    ids.dedup();
    assert_eq!(ids.len(), MESSAGES);
    let block = outbox_workers::schema::ID_BLOCK;
    let span = ids[MESSAGES - 1] - ids[0] + 1;
    assert!(
        span <= MESSAGES as i64 + block,
        "{MESSAGES} messages sent alone spread over {span} ids"
    );
    // What the backlog estimate reads: the sequence's last value.
    let db = outbox_workers::db::connect(&env.database_url)
        .await
        .expect("connect");
    let last: i64 = db
        .query_one("SELECT last_value FROM outbox_message_id_seq", &[])
        .await
        .expect("sequence")
        .get(0);
    assert!(
        last - ids[0] < MESSAGES as i64 + block,
        "the sequence ran {} ids for {MESSAGES} messages",
        last - ids[0]
    );
    assert!(producer.terminate(), "{}", producer.log_text());
}

#[tokio::test]
async fn an_outbox_table_at_its_size_bound_is_answered_429_naming_the_bound_and_stores_nothing() {
    let env = Env::on_testbed("table-bytes", 1).await;
    // Any outbox table takes more than a byte, indexes alone.
    let mut producer = Worker::producer(&env, "p1", &[("MAX_BACKLOG_BYTES", "1")]);
    producer.wait_healthy(PRODUCER_HEALTH).await;
    let client = reqwest::Client::new();
    let body = serde_json::json!({"topic": env.topic, "message": "m"});
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    let (status, answer) = loop {
        let response = client
            .post(producer.url("/api/messages/send"))
            .json(&body)
            .send()
            .await
            .expect("send");
        let status = response.status().as_u16();
        let answer: Value = response.json().await.expect("JSON body");
        // Until the first reading of the table's size (every second) a send may pass.
        if status != 200 || tokio::time::Instant::now() > deadline {
            break (status, answer);
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    assert_eq!(status, 429, "{answer}");
    assert_eq!(answer["status"], "backlogged", "{answer}");
    let error = answer["error"].as_str().unwrap_or_default();
    assert!(
        error.contains("on disk, at or over MAX_BACKLOG_BYTES (1)")
            && error.contains("nothing was stored"),
        "{error}"
    );
    let db = outbox_workers::db::connect(&env.database_url)
        .await
        .expect("connect");
    let stored = support::outbox_rows(&db).await;
    assert!(
        stored <= 2,
        "only what came before the first reading: {stored}"
    );
    assert!(producer.terminate(), "{}", producer.log_text());
}

#[tokio::test]
async fn every_worker_session_ends_idle_transactions_and_probes_a_silent_peer() {
    let env = Env::on_testbed("session-settings", 1).await;
    let single = outbox_workers::db::connect(&env.database_url)
        .await
        .expect("connect");
    let pool = outbox_workers::db::pool(&env.database_url, 1).expect("pool");
    let pooled = pool.get().await.expect("pooled session");
    for (setting, expected) in [
        ("idle_in_transaction_session_timeout", "1min"),
        ("tcp_keepalives_idle", "5"),
        ("tcp_keepalives_interval", "2"),
        ("tcp_keepalives_count", "3"),
        ("tcp_user_timeout", "15000"),
    ] {
        for client in [&single, &**pooled] {
            let value: String = client
                .query_one(&format!("SHOW {setting}"), &[])
                .await
                .expect("show")
                .get(0);
            assert_eq!(value, expected, "{setting}");
        }
    }
    // The schema of the URL still applies, and a setting in the URL wins over ours.
    let url = format!(
        "{}%20-c%20idle_in_transaction_session_timeout%3D5000",
        env.database_url
    );
    let client = outbox_workers::db::connect(&url).await.expect("connect");
    let value: String = client
        .query_one("SHOW idle_in_transaction_session_timeout", &[])
        .await
        .expect("show")
        .get(0);
    assert_eq!(value, "5s");
    let search_path: String = client
        .query_one("SHOW search_path", &[])
        .await
        .expect("show")
        .get(0);
    // What the server then does with a transaction left idle is PostgreSQL's to prove,
    // not ours: the product's part is that every session carries the setting.
    assert!(!search_path.contains("public"), "{search_path}");
}

#[tokio::test]
async fn requests_beyond_the_concurrency_limit_are_told_to_come_back_not_queued() {
    let env = Env::on_testbed("busy", 1).await;
    let mut producer = Worker::producer(&env, "p1", &[("MAX_CONCURRENT_REQUESTS", "1")]);
    producer.wait_healthy("/readyz").await;
    // Hold the outbox table so that the first request waits inside the producer.
    let mut db = outbox_workers::db::connect(&env.database_url)
        .await
        .expect("connect");
    let tx = db.transaction().await.expect("begin");
    tx.batch_execute("LOCK TABLE outbox_messages IN ACCESS EXCLUSIVE MODE")
        .await
        .expect("lock");
    let first = {
        let url = producer.url("/api/messages/send");
        let topic = env.topic.clone();
        tokio::spawn(async move {
            reqwest::Client::new()
                .post(url)
                .json(&serde_json::json!({"topic": topic, "message": "first"}))
                .send()
                .await
                .map(|r| r.status().as_u16())
        })
    };
    // Only once the first request waits on the lock (and so holds the one permit) is
    // the second sent: were the second to arrive first, it would take the permit.
    let observer = outbox_workers::db::connect(&env.database_url)
        .await
        .expect("connect");
    testbed_support::eventually(
        "the first request waiting on the lock",
        Duration::from_secs(20),
        || async {
            let waiting: i64 = observer
                .query_one(
                    "SELECT count(*) FROM pg_stat_activity \
                     WHERE wait_event_type = 'Lock' AND query ILIKE '%INSERT INTO outbox_messages%'",
                    &[],
                )
                .await
                .ok()?
                .get(0);
            (waiting == 1).then_some(())
        },
    )
    .await;
    let busy = tokio::time::timeout(
        Duration::from_secs(10),
        reqwest::Client::new()
            .post(producer.url("/api/messages/send"))
            .json(&serde_json::json!({"topic": env.topic, "message": "second"}))
            .send(),
    )
    .await
    .expect("the second request is answered at once, not queued")
    .expect("answered");
    assert_eq!(busy.status(), 503);
    assert_eq!(
        busy.headers()
            .get("retry-after")
            .and_then(|v| v.to_str().ok()),
        Some("1")
    );
    let body: Value = busy.json().await.expect("JSON");
    assert_eq!(body["status"], "busy", "{body}");
    assert!(
        body["error"]
            .as_str()
            .unwrap_or_default()
            .contains("MAX_CONCURRENT_REQUESTS"),
        "{body}"
    );
    tx.commit().await.expect("release");
    assert_eq!(first.await.expect("task").expect("first answered"), 200);
    let stored = support::outbox_rows(&db).await;
    assert_eq!(stored, 1, "the refused request stored nothing");
}

#[tokio::test]
async fn retention_deletes_relayed_rows_so_the_outbox_stays_bounded_over_runs() {
    let env = Env::on_testbed("retention", 2).await;
    let mut producer = Worker::producer(
        &env,
        "p1",
        &[
            ("RETENTION_SECONDS", "1"),
            ("RETENTION_INTERVAL_SECONDS", "1"),
        ],
    );
    producer.wait_healthy(PRODUCER_HEALTH).await;
    let group = unique_name("g");
    let mut consumer = Worker::consumer(&env, "c1", &group, &[]);
    consumer.wait_healthy(CONSUMER_HEALTH).await;
    let db = outbox_workers::db::connect(&env.database_url)
        .await
        .expect("connect");
    for run in 0..2 {
        let ids = send_batch(
            &producer,
            &env.topic,
            &keyed_messages(&format!("run{run}"), 2000, 10),
        )
        .await;
        let report =
            wait_acknowledged(&env, &group, &IdSet::from_ids(ids), Duration::from_secs(60)).await;
        assert_eq!(report.missing, 0, "{report:?}");
        // Every relayed row goes, a couple of rounds after it was relayed.
        testbed_support::eventually(
            "the relayed rows to be deleted",
            Duration::from_secs(30),
            || {
                let db = &db;
                async move {
                    let n = support::outbox_rows(db).await;
                    (n == 0).then_some(())
                }
            },
        )
        .await;
    }
    let metrics = producer.metrics().await;
    assert!(
        metrics.contains("outbox_retention_deleted_total 4000"),
        "{metrics}"
    );
    // Rows not yet relayed are never deleted: with the relay stopped they stay.
    assert!(producer.terminate(), "{}", producer.log_text());
    let mut ingest_only = Worker::producer(
        &env,
        "p2",
        &[
            ("RELAY_DISABLED", "true"),
            ("RETENTION_SECONDS", "1"),
            ("RETENTION_INTERVAL_SECONDS", "1"),
        ],
    );
    ingest_only.wait_healthy(PRODUCER_HEALTH).await;
    send_batch(
        &ingest_only,
        &env.topic,
        &keyed_messages("waiting", 100, 10),
    )
    .await;
    // Two whole rounds after the batch was stored, with nothing relayed.
    let rounds = |metrics: String| -> u64 {
        metrics
            .lines()
            .find_map(|l| l.strip_prefix("outbox_retention_rounds_total "))
            .and_then(|v| v.trim().parse::<f64>().ok())
            .map_or(0, |v| v as u64)
    };
    let before = rounds(ingest_only.metrics().await);
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    while rounds(ingest_only.metrics().await) < before + 2 {
        assert!(
            tokio::time::Instant::now() < deadline,
            "no retention round ran within 30 s"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let n = support::outbox_rows(&db).await;
    assert_eq!(n, 100, "unrelayed rows are kept");
    assert!(ingest_only.terminate(), "{}", ingest_only.log_text());
    assert!(consumer.terminate(), "{}", consumer.log_text());
}

#[tokio::test]
async fn ten_thousand_100_kb_messages_relay_within_a_256_mib_memory_limit() {
    const ROWS: usize = 10_000;
    const SIZE: usize = 100 * 1024;
    const LIMIT: u64 = 256 * 1024 * 1024;
    let env = Env::on_testbed("bigrows", 3).await;
    let db = outbox_workers::ledger::connect_and_migrate(&env.database_url)
        .await
        .expect("migrate");
    // 1 GB behind the watermark before the relay starts: the worst case for its reads.
    // Windows of one block of pseudo-random letters: no row shrinks when compressed.
    let block = support::incompressible_letters(2 * SIZE);
    let mut row = 0usize;
    let mut payload = || {
        row += 1;
        let start = (row * 7919) % SIZE;
        block[start..start + SIZE].to_string()
    };
    for _ in 0..ROWS / 100 {
        let payloads: Vec<String> = (0..100).map(|_| payload()).collect();
        db.execute(
            "INSERT INTO outbox_messages (id, topic, key, payload)
             SELECT nextval('outbox_message_id_seq'), $1, 'key-' || (n % 50), p
             FROM unnest($2::text[]) WITH ORDINALITY AS u(p, n)",
            &[&env.topic, &payloads],
        )
        .await
        .expect("insert 100 rows of 100 KB");
    }
    let peak = relay_within_memory_limit(&env, &db, "relay-256mi", LIMIT, ROWS).await;
    eprintln!(
        "relayed {ROWS} × {SIZE} B with a peak of {peak} MiB under a {} MiB limit",
        LIMIT >> 20
    );
}

/// Starts a producer in a memory cgroup of `limit` bytes named `name` and waits until
/// its relay published `rows` rows, each once, without being OOM-killed; returns its
/// peak memory in MiB.
async fn relay_within_memory_limit(
    env: &Env,
    db: &tokio_postgres::Client,
    name: &str,
    limit: u64,
    rows: usize,
) -> u64 {
    let cgroup = support::MemoryCgroup::new(name, limit);
    let mut producer = Worker::producer_in(&cgroup, env, "p1", &[]);
    producer.wait_healthy("/readyz").await;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(180);
    let published = loop {
        assert!(
            producer.exited().is_none(),
            "the producer died (OOM kills: {}, peak {} MiB); log:\n{}",
            cgroup.oom_kills(),
            cgroup.peak_bytes() >> 20,
            producer.log_text()
        );
        let published: i64 = db
            .query_one("SELECT published FROM outbox_relay_state", &[])
            .await
            .expect("relay state")
            .get(0);
        if published >= rows as i64 || tokio::time::Instant::now() > deadline {
            break published;
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    };
    assert_eq!(published, rows as i64);
    assert_eq!(
        kafka::message_count(&env.bootstrap, &env.topic).await,
        Some(rows as i64),
        "every row is in Kafka, once"
    );
    assert_eq!(cgroup.oom_kills(), 0);
    cgroup.peak_bytes() >> 20
}

#[tokio::test]
async fn header_heavy_rows_relay_within_a_256_mib_memory_limit() {
    // Empty payloads with ~900 KB of headers each: what a client could send before
    // ingest capped headers, or what a row written straight into the table holds.
    const ROWS: usize = 300;
    const HEADERS: usize = 9;
    const VALUE: usize = 100 * 1024;
    const LIMIT: u64 = 256 * 1024 * 1024;
    let env = Env::on_testbed("headerrows", 3).await;
    let db = outbox_workers::ledger::connect_and_migrate(&env.database_url)
        .await
        .expect("migrate");
    let block = support::incompressible_letters(2 * VALUE);
    let mut window = 0usize;
    let mut headers = || {
        let map: serde_json::Map<String, Value> = (0..HEADERS)
            .map(|h| {
                window += 1;
                let start = (window * 7919) % VALUE;
                (format!("h{h}"), Value::from(&block[start..start + VALUE]))
            })
            .collect();
        Value::Object(map).to_string()
    };
    for _ in 0..ROWS / 10 {
        let rows: Vec<String> = (0..10).map(|_| headers()).collect();
        db.execute(
            "INSERT INTO outbox_messages (id, topic, key, payload, headers)
             SELECT nextval('outbox_message_id_seq'), $1, 'key-' || (n % 50), '', h::jsonb
             FROM unnest($2::text[]) WITH ORDINALITY AS u(h, n)",
            &[&env.topic, &rows],
        )
        .await
        .expect("insert 10 header-heavy rows");
    }
    let peak = relay_within_memory_limit(&env, &db, "relay-headers-256mi", LIMIT, ROWS).await;
    eprintln!(
        "relayed {ROWS} rows of {} KB headers with a peak of {peak} MiB under a {} MiB limit",
        HEADERS * VALUE / 1024,
        LIMIT >> 20
    );
}

#[tokio::test]
async fn idempotency_keys_are_forgotten_after_a_day_even_when_relayed_rows_are_kept() {
    let env = Env::on_testbed("idem-age", 1).await;
    let db = outbox_workers::ledger::connect_and_migrate(&env.database_url)
        .await
        .expect("migrate");
    for (key, age_hours) in [("old", 25), ("recent", 23)] {
        db.execute(
            "INSERT INTO outbox_idempotency (key, id_blocks, id_count, created_at)
             VALUES ($1, ARRAY[nextval('outbox_message_id_seq')], 1,
                     now() - make_interval(hours => $2))",
            &[&key, &age_hours],
        )
        .await
        .expect("record a key");
    }
    let settings = outbox_workers::producer::retention::RetentionSettings {
        relayed: Duration::ZERO,
        ledger: Duration::ZERO,
        interval: Duration::from_secs(1),
        slice_rows: 1000,
    };
    let (_stop, mut shutdown) = outbox_workers::shutdown::channel();
    outbox_workers::producer::retention::round(
        &db,
        &settings,
        &outbox_workers::metrics::ProducerMetrics::default(),
        &mut shutdown,
    )
    .await
    .expect("a retention round");
    let kept: Vec<String> = db
        .query("SELECT key FROM outbox_idempotency ORDER BY key", &[])
        .await
        .expect("keys")
        .iter()
        .map(|r| r.get(0))
        .collect();
    assert_eq!(
        kept,
        ["recent"],
        "relayed rows are kept forever, keys for a day"
    );
}

/// Posts `body` to `path` with `Idempotency-Key: key`; returns the status and JSON body.
async fn post_keyed(producer: &Worker, path: &str, key: &str, body: &Value) -> (u16, Value) {
    let response = reqwest::Client::new()
        .post(producer.url(path))
        .header("Idempotency-Key", key)
        .json(body)
        .send()
        .await
        .expect("an answer");
    let status = response.status().as_u16();
    (status, response.json().await.expect("a JSON body"))
}

fn batch_of(topic: &str, n: usize) -> Value {
    let messages: Vec<Value> = (0..n)
        .map(|i| serde_json::json!({"topic": topic, "key": format!("k{i}"), "message": format!("m{i}")}))
        .collect();
    serde_json::json!({ "messages": messages })
}

#[tokio::test]
async fn a_request_sent_again_with_its_idempotency_key_stores_nothing_twice() {
    let env = Env::on_testbed("idem", 1).await;
    let mut producer = Worker::producer(&env, "p1", &[]);
    producer.wait_healthy("/readyz").await;
    let db = outbox_workers::db::connect(&env.database_url)
        .await
        .expect("connect");

    let (status, first) = post_keyed(
        &producer,
        "/api/messages/batch",
        "order-17",
        &batch_of(&env.topic, 3),
    )
    .await;
    assert_eq!(status, 200, "{first}");
    assert_eq!(first.get("replayed"), None, "{first}");
    let (status, again) = post_keyed(
        &producer,
        "/api/messages/batch",
        "order-17",
        &batch_of(&env.topic, 3),
    )
    .await;
    assert_eq!(status, 200, "{again}");
    assert_eq!(again["ids"], first["ids"], "the first request's ids");
    assert_eq!(again["replayed"], true, "{again}");
    assert_eq!(support::outbox_rows(&db).await, 3);

    let one = serde_json::json!({"topic": env.topic, "message": "once"});
    let (_, sent) = post_keyed(&producer, "/api/messages/send", "payment-9", &one).await;
    let (status, resent) = post_keyed(&producer, "/api/messages/send", "payment-9", &one).await;
    assert_eq!(status, 200, "{resent}");
    assert_eq!(resent["id"], sent["id"]);
    assert_eq!(support::outbox_rows(&db).await, 4);

    let (status, reused) = post_keyed(
        &producer,
        "/api/messages/batch",
        "order-17",
        &batch_of(&env.topic, 5),
    )
    .await;
    assert_eq!(status, 422, "{reused}");
    assert_eq!(reused["field"], "Idempotency-Key", "{reused}");
    assert!(
        reused["error"]
            .as_str()
            .unwrap_or_default()
            .contains("3 message"),
        "{reused}"
    );
    // Another client's message under a key already used, as many messages or not:
    // refused naming the key, never answered with the first request's ids.
    let other = serde_json::json!({"topic": env.topic, "message": "another client's"});
    let (status, taken) = post_keyed(&producer, "/api/messages/send", "payment-9", &other).await;
    assert_eq!(status, 422, "{taken}");
    assert_eq!(taken["field"], "Idempotency-Key", "{taken}");
    assert!(
        taken["error"]
            .as_str()
            .unwrap_or_default()
            .contains("`payment-9` was used for a different request"),
        "{taken}"
    );
    assert_eq!(taken.get("id"), None, "{taken}");
    let mut changed = batch_of(&env.topic, 3);
    changed["messages"][2]["message"] = Value::from("changed");
    let (status, taken) = post_keyed(&producer, "/api/messages/batch", "order-17", &changed).await;
    assert_eq!(status, 422, "{taken}");
    let mut headed = batch_of(&env.topic, 3);
    headed["messages"][0]["headers"] = serde_json::json!({"tenant": "b"});
    let (status, taken) = post_keyed(&producer, "/api/messages/batch", "order-17", &headed).await;
    assert_eq!(status, 422, "headers are part of the request: {taken}");
    let (status, long) = post_keyed(&producer, "/api/messages/send", &"x".repeat(256), &one).await;
    assert_eq!(status, 400, "{long}");
    assert_eq!(long["field"], "Idempotency-Key", "{long}");
    assert_eq!(
        support::outbox_rows(&db).await,
        4,
        "refusals stored nothing"
    );
}

#[tokio::test]
async fn a_message_sent_alone_to_a_producer_that_does_not_relay_wakes_the_relay_elsewhere() {
    let env = Env::on_testbed("wake", 1).await;
    // The relay polls the outbox only once a minute: only a wake brings a message out
    // sooner. Ingest goes to the other producer, which does not relay.
    let mut relaying = Worker::producer(&env, "p1", &[("RELAY_LINGER_MS", "60000")]);
    let mut ingest = Worker::producer(&env, "p2", &[("RELAY_DISABLED", "true")]);
    relaying.wait_healthy("/readyz").await;
    ingest.wait_healthy("/readyz").await;
    let db = outbox_workers::db::connect(&env.database_url)
        .await
        .expect("connect");
    let relayed = |id: i64| {
        let db = &db;
        async move {
            db.query_one("SELECT wm_id >= $1 FROM outbox_relay_state", &[&id])
                .await
                .expect("the watermark")
                .get::<_, bool>(0)
        }
    };
    // The relay's first look, at start, finds its own message (woken in process).
    let first = support::send_one(&relaying, &env.topic, "k", "first").await;
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    while !relayed(first).await {
        assert!(
            std::time::Instant::now() < deadline,
            "the relay never started"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    for n in 0..3 {
        let sent = std::time::Instant::now();
        let id = support::send_one(&ingest, &env.topic, "k", &format!("alone {n}")).await;
        while !relayed(id).await {
            assert!(
                sent.elapsed() < Duration::from_secs(20),
                "message {id}, sent alone to the other producer, was not relayed within 20 s: the relay was not woken"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
}

#[tokio::test]
async fn a_keyed_batch_is_recorded_as_its_id_blocks_and_replayed_exactly() {
    let env = Env::on_testbed("idemblocks", 1).await;
    let mut producer = Worker::producer(&env, "p1", &[("RELAY_DISABLED", "true")]);
    producer.wait_healthy("/readyz").await;
    let db = outbox_workers::db::connect(&env.database_url)
        .await
        .expect("connect");

    // 2,000 ids are 16 sequence blocks of 128: the record holds those 16 numbers, not
    // 16 KB of ids (which PostgreSQL compressed and moved out of line on every batch).
    let (status, first) = post_keyed(
        &producer,
        "/api/messages/batch",
        "bulk-1",
        &batch_of(&env.topic, 2000),
    )
    .await;
    assert_eq!(status, 200, "{first}");
    let row = db
        .query_one(
            "SELECT ids IS NULL, cardinality(id_blocks), id_count,
                    pg_column_size(outbox_idempotency.*)
             FROM outbox_idempotency WHERE key = 'bulk-1'",
            &[],
        )
        .await
        .expect("the key's record");
    let (no_ids, blocks, count, bytes): (bool, i32, i32, i32) =
        (row.get(0), row.get(1), row.get(2), row.get(3));
    assert!(no_ids, "every id stored again");
    assert_eq!((blocks, count), (16, 2000));
    assert!(bytes < 400, "the record takes {bytes} bytes");
    let (status, again) = post_keyed(
        &producer,
        "/api/messages/batch",
        "bulk-1",
        &batch_of(&env.topic, 2000),
    )
    .await;
    assert_eq!(status, 200, "{again}");
    assert_eq!(again["replayed"], true, "{again}");
    assert_eq!(
        again["ids"], first["ids"],
        "the first request's ids, in order"
    );

    // A record written before the blocks (every id in `ids`) is still answered.
    db.execute(
        "INSERT INTO outbox_idempotency (key, ids) VALUES ('older', ARRAY[5, 6, 7]::bigint[])",
        &[],
    )
    .await
    .expect("an older record");
    let (status, older) = post_keyed(
        &producer,
        "/api/messages/batch",
        "older",
        &batch_of(&env.topic, 3),
    )
    .await;
    assert_eq!(status, 200, "{older}");
    assert_eq!(older["ids"], serde_json::json!([5, 6, 7]), "{older}");
    assert_eq!(
        support::outbox_rows(&db).await,
        2000,
        "replays stored nothing"
    );
}

#[tokio::test]
async fn a_connection_lost_at_commit_is_answered_unknown_and_a_keyed_retry_stores_nothing_twice() {
    let env = Env::on_testbed("unknown", 1).await;
    let cutter = support::CommitCutter::start(&env.database_url).await;
    let through_cutter = Env {
        database_url: cutter.url(&env.database_url),
        ..env.clone()
    };
    // No relay and no retention: the only COMMITs through the proxy are the requests'.
    let mut producer = Worker::producer(
        &through_cutter,
        "p1",
        &[
            ("RELAY_DISABLED", "true"),
            ("RETENTION_SECONDS", "0"),
            ("LEDGER_RETENTION_SECONDS", "0"),
        ],
    );
    producer.wait_healthy("/readyz").await;
    let db = outbox_workers::db::connect(&env.database_url)
        .await
        .expect("connect");

    cutter.arm();
    let (status, lost) = post_keyed(
        &producer,
        "/api/messages/batch",
        "run-1-batch-0",
        &batch_of(&env.topic, 4),
    )
    .await;
    assert_eq!(cutter.cuts(), 1, "the proxy cut the COMMIT");
    assert_eq!(status, 500, "{lost}");
    assert_eq!(lost["status"], "unknown", "{lost}");
    assert_eq!(
        support::outbox_rows(&db).await,
        4,
        "the COMMIT reached the server: 'unknown' was right not to say 'not stored'"
    );
    let (status, retried) = post_keyed(
        &producer,
        "/api/messages/batch",
        "run-1-batch-0",
        &batch_of(&env.topic, 4),
    )
    .await;
    assert_eq!(status, 200, "{retried}");
    assert_eq!(retried["replayed"], true, "{retried}");
    assert_eq!(retried["ids"].as_array().map(Vec::len), Some(4));
    assert_eq!(
        support::outbox_rows(&db).await,
        4,
        "the retry stored nothing twice"
    );
}

#[tokio::test]
async fn a_producer_whose_schema_is_not_migrated_yet_answers_starting_not_a_database_error() {
    let env = Env::on_testbed("starting", 1).await;
    // Hold the migration lock: the producer serves HTTP but cannot migrate.
    let holder = outbox_workers::db::connect(&env.database_url)
        .await
        .expect("connect");
    holder
        .execute(
            "SELECT pg_advisory_lock(hashtext(current_schema() || '.outbox-migrations'))",
            &[],
        )
        .await
        .expect("take the migration lock");
    let mut producer = Worker::producer(&env, "p1", &[]);
    producer.wait_healthy("/livez").await;
    let one = serde_json::json!({"topic": env.topic, "message": "early"});
    let response = reqwest::Client::new()
        .post(producer.url("/api/messages/send"))
        .json(&one)
        .send()
        .await
        .expect("an answer");
    assert_eq!(response.status(), 503);
    let body: Value = response.json().await.expect("JSON");
    assert_eq!(body["status"], "unavailable", "{body}");
    assert!(
        body["error"]
            .as_str()
            .unwrap_or_default()
            .contains("not migrated yet"),
        "{body}"
    );
    let health = reqwest::get(producer.url("/api/messages/health"))
        .await
        .expect("health");
    assert_eq!(
        health.status(),
        503,
        "health is not UP before the schema exists"
    );
    holder
        .execute(
            "SELECT pg_advisory_unlock(hashtext(current_schema() || '.outbox-migrations'))",
            &[],
        )
        .await
        .expect("release");
    producer.wait_healthy("/readyz").await;
    let id = send_one(&producer, &env.topic, "k", "after").await;
    assert!(id > 0);
}

#[tokio::test]
async fn the_order_check_holds_across_the_members_and_restarts_of_a_group() {
    use outbox_workers::consumer::ledger::{AckRecorder, RecordOutcome};
    use outbox_workers::ledger;
    let mut db = migrated_schema("keyorder").await;
    let ack = key_42_ack;
    let out_of_order =
        |outcome: outbox_workers::Result<RecordOutcome>| outcome.expect("recorded").out_of_order;
    let mut a = AckRecorder::new("g");
    let mut b = AckRecorder::new("g");
    // Member a acknowledges the key's later message; then member b, to which a
    // rebalance moved the key, an earlier one: an inversion across members.
    assert_eq!(out_of_order(a.record(&mut db, &[ack(20, 7)]).await), 0);
    assert_eq!(out_of_order(b.record(&mut db, &[ack(10, 5)]).await), 1);
    // A restarted member knows what the group acknowledged before.
    let mut restarted = AckRecorder::new("g");
    assert_eq!(
        out_of_order(restarted.record(&mut db, &[ack(15, 6)]).await),
        1
    );
    assert_eq!(
        out_of_order(restarted.record(&mut db, &[ack(30, 8)]).await),
        0
    );
    // Another group keeps its own order.
    let mut other = AckRecorder::new("h");
    assert_eq!(out_of_order(other.record(&mut db, &[ack(10, 5)]).await), 0);
    // The verifier counts exactly the two inversions.
    let report = ledger::group_report(&db, "g", &IdSet::from_ids([10, 15, 20, 30]))
        .await
        .expect("report");
    assert_eq!(report.out_of_order, 2, "{report:?}");
    assert_eq!(report.missing, 0, "{report:?}");
}

#[tokio::test]
async fn an_ack_transaction_that_fails_at_its_first_or_last_statement_records_nothing_and_the_next_goes_on(
) {
    use outbox_workers::consumer::ledger::AckRecorder;
    use outbox_workers::ledger;
    let mut db = migrated_schema("ackatomic").await;
    // A batch's transaction runs in two round trips: the key order is stored in the
    // first, the anomaly rows are written in the last, just before COMMIT. Either is
    // refused on this session when the test says so.
    db.batch_execute(
        "CREATE FUNCTION refuse() RETURNS trigger LANGUAGE plpgsql AS
           $$ BEGIN RAISE EXCEPTION 'refused by the test: %', TG_TABLE_NAME; END $$;
         CREATE TRIGGER refuse BEFORE INSERT ON outbox_ack_anomalies
           FOR EACH ROW WHEN (current_setting('outbox_test.refuse', true) = 'last')
           EXECUTE FUNCTION refuse();
         CREATE TRIGGER refuse BEFORE UPDATE ON outbox_ack_key_order
           FOR EACH ROW WHEN (current_setting('outbox_test.refuse', true) = 'first')
           EXECUTE FUNCTION refuse();",
    )
    .await
    .expect("triggers");
    let ack = key_42_ack;
    let all = IdSet::from_ids([1, 2, 3]);
    let mut recorder = AckRecorder::new("g");
    recorder.record(&mut db, &[ack(1, 5)]).await.expect("first");
    for (refuse, table) in [
        ("first", "outbox_ack_key_order"),
        ("last", "outbox_ack_anomalies"),
    ] {
        db.batch_execute(&format!("SET outbox_test.refuse = '{refuse}'"))
            .await
            .expect("the session is usable");
        // A redelivery of 1 (an anomaly row) with a new message 3 in one ack transaction: neither
        // 3's bit nor the key's new order may stay.
        let refused = recorder.record(&mut db, &[ack(1, 5), ack(3, 7)]).await;
        let error = outbox_workers::error_chain(&refused.expect_err("refused"));
        assert!(
            error.contains(&format!("refused by the test: {table}")),
            "{error}"
        );
        let report = ledger::group_report(&db, "g", &all).await.expect("report");
        assert_eq!(
            (report.acknowledged, report.missing, report.duplicates),
            (1, 2, 0),
            "refused at the {refuse} statement: {report:?}"
        );
    }
    // The same connection goes on, out of the failed transactions; key 42's order is
    // still message 1's, so message 2 (before 3) is not out of order.
    db.batch_execute("SET outbox_test.refuse = 'off'")
        .await
        .expect("the session is usable");
    let outcome = recorder
        .record(&mut db, &[ack(2, 6)])
        .await
        .expect("the next batch");
    assert_eq!((outcome.acknowledged, outcome.out_of_order), (1, 0));
    let report = ledger::group_report(&db, "g", &all).await.expect("report");
    assert_eq!(
        (report.acknowledged, report.missing, report.out_of_order),
        (2, 1, 0),
        "{report:?}"
    );
}

#[tokio::test]
async fn workers_of_another_system_wait_while_the_schema_is_held_and_say_by_whom() {
    let env = Env::on_testbed("schema-held", 1).await;
    let mut first = Worker::producer(&env, "p-first", &[("OUTBOX_SYSTEM", "team-a/orders")]);
    first.wait_healthy("/api/messages/health").await;
    send_one(&first, &env.topic, "k", "held by team-a/orders").await;

    // Workers of another system on the same schema: up, never ready, and saying why.
    let mut producer = Worker::producer(&env, "p-second", &[("OUTBOX_SYSTEM", "team-b/billing")]);
    let mut consumer = Worker::consumer(
        &env,
        "c-second",
        "g-second",
        &[("OUTBOX_SYSTEM", "team-b/billing")],
    );
    producer.wait_healthy("/livez").await;
    consumer.wait_healthy("/livez").await;
    tokio::time::sleep(Duration::from_secs(3)).await;
    let client = reqwest::Client::new();
    for (worker, path) in [
        (&producer, "/api/messages/health"),
        (&producer, "/readyz"),
        (&consumer, "/readyz"),
    ] {
        let status = client
            .get(worker.url(path))
            .send()
            .await
            .map(|r| r.status().as_u16())
            .unwrap_or(0);
        assert_eq!(
            status, 503,
            "{} {path} while the schema is held",
            worker.name
        );
    }
    let refused = client
        .post(producer.url("/api/messages/send"))
        .json(&serde_json::json!({"topic": env.topic, "key": "k", "message": "not mine"}))
        .send()
        .await
        .expect("send");
    assert_eq!(refused.status(), 503, "a held schema stores nothing");
    for worker in [&producer, &consumer] {
        let log = worker.log_text();
        assert!(
            log.contains("team-a/orders") && log.contains("team-b/billing"),
            "{} names the holder and itself:\n{log}",
            worker.name
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
    assert_eq!(stored, 1, "only the holder's message is in the outbox");

    // The schema handed over (as the operator does once team-a/orders is gone): they start.
    db.execute("UPDATE outbox_owner SET system = 'team-b/billing'", &[])
        .await
        .expect("hand over");
    producer.wait_healthy("/api/messages/health").await;
    consumer.wait_healthy("/readyz").await;
    assert!(producer.terminate() && consumer.terminate() && first.terminate());
}

/// `outbox-worker bench` with `args` against the testbed; its exit status and output.
async fn bench(args: &[&str]) -> (std::process::ExitStatus, String) {
    let tb = testbed_support::testbed();
    let out = tokio::process::Command::new(env!("CARGO_BIN_EXE_outbox-worker"))
        .args(["bench", "--messages", "3000", "--partitions", "3"])
        .args(["--messages-per-request", "500", "--concurrency", "2"])
        .args(args)
        .env("KAFKA_BOOTSTRAP_SERVERS", &tb.kafka_bootstrap_servers)
        .env("DATABASE_URL", &tb.database_url)
        .kill_on_drop(true)
        .output()
        .await
        .expect("running the benchmark");
    let text = format!(
        "{}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    (out.status, text)
}

/// `outbox-worker bench` runs every stage against the real PostgreSQL and Kafka, the
/// end-to-end stage included, in rounds after a warm-up, and reports each stage's
/// median against its raw baseline; it keeps the figures as a baseline, and a check
/// against a baseline made deliberately faster fails naming the stages.
#[tokio::test]
async fn the_benchmark_times_every_stage_and_the_whole_pipeline_against_raw_baselines() {
    let dir = std::env::temp_dir().join(unique_name("bench"));
    std::fs::create_dir_all(&dir).expect("a report directory");
    let report = dir.join("bench-report.json");
    let baseline = dir.join("baseline.json");
    let (report_arg, baseline_arg) = (report.display().to_string(), baseline.display().to_string());
    let (status, stdout) = bench(&[
        "--rounds",
        "2",
        "--warm-up-messages",
        "300",
        "--report",
        &report_arg,
        "--baseline",
        &baseline_arg,
        "--update-baseline",
    ])
    .await;
    assert!(status.success(), "bench exit {status}:\n{stdout}");
    let json: Value =
        serde_json::from_str(&std::fs::read_to_string(&report).expect("the report")).expect("JSON");
    assert_eq!(json["rounds"].as_array().map(Vec::len), Some(2), "{json:#}");
    let stages: Vec<(String, Option<String>)> = json["stages"]
        .as_array()
        .expect("stages")
        .iter()
        .map(|s| {
            assert_eq!(s["messages"], 3000, "{s:#}");
            assert!(
                s["messages_per_second"].as_f64().is_some_and(|r| r > 0.0),
                "{s:#}"
            );
            (
                s["name"].as_str().unwrap_or_default().to_string(),
                s["baseline"].as_str().map(str::to_string),
            )
        })
        .collect();
    let named = |n: &str, b: Option<&str>| (n.to_string(), b.map(str::to_string));
    assert_eq!(
        stages,
        vec![
            named("raw_copy", None),
            named("raw_produce", None),
            named("raw_consume", None),
            named("ingest", Some("raw_copy")),
            named("relay", Some("raw_produce")),
            named("consume", Some("raw_consume")),
            named("raw sum", None),
            named("end to end", Some("raw sum")),
        ]
    );
    assert!(
        stdout.contains("3 groups acknowledged all 3000 messages, verified exactly"),
        "{stdout}"
    );
    assert!(
        stdout.contains("warm-up round (300 messages per stage, not counted)"),
        "{stdout}"
    );
    assert!(stdout.contains("median of 2 round(s)"), "{stdout}");
    // Each ratio's figure is the median of the rounds, within their spread.
    for f in json["figures"].as_array().expect("figures") {
        if let Some(ratio) = f["ratio"].as_f64() {
            let (min, max) = (
                f["min"].as_f64().unwrap_or(-1.0),
                f["max"].as_f64().unwrap_or(-1.0),
            );
            assert!(min <= ratio && ratio <= max, "{f:#}");
        }
    }

    // The kept figures, made deliberately faster: the check fails and names them.
    let mut kept: Value =
        serde_json::from_str(&std::fs::read_to_string(&baseline).expect("the baseline written"))
            .expect("baseline JSON");
    for f in kept["figures"].as_array_mut().expect("kept figures") {
        if let Some(ratio) = f["ratio"].as_f64() {
            f["ratio"] = (ratio * 10.0).into();
        }
    }
    let faster = dir.join("faster.json");
    std::fs::write(&faster, kept.to_string()).expect("write the faster baseline");
    let (status, output) = bench(&[
        "--rounds",
        "1",
        "--warm-up-messages",
        "0",
        "--report",
        &report_arg,
        "--baseline",
        &faster.display().to_string(),
        "--check",
    ])
    .await;
    assert!(
        !status.success(),
        "a slower run than its baseline fails the check:\n{output}"
    );
    assert!(
        output.contains("regression beyond the 20 % tolerance")
            && output.contains("relay")
            && output.contains("end to end")
            && output.contains("REGRESSED"),
        "{output}"
    );
    let _ = std::fs::remove_dir_all(&dir);
}

/// The backend pids of the sessions named `application`.
async fn sessions_named(observer: &tokio_postgres::Client, application: &str) -> Vec<i32> {
    let mut pids: Vec<i32> = observer
        .query(
            "SELECT pid FROM pg_stat_activity WHERE application_name = $1",
            &[&application],
        )
        .await
        .expect("pg_stat_activity")
        .iter()
        .map(|r| r.get(0))
        .collect();
    pids.sort_unstable();
    pids
}

#[tokio::test]
async fn a_burst_of_single_messages_finds_the_producers_sessions_already_open() {
    const POOL: usize = 6;
    let mut env = Env::on_testbed("warm", 1).await;
    let application = unique_name("warm");
    env.database_url = format!("{}&application_name={application}", env.database_url);
    let mut producer = Worker::producer(&env, "p1", &[("DB_POOL_SIZE", &POOL.to_string())]);
    producer.wait_healthy("/api/messages/health").await;
    let observer = outbox_workers::db::connect(&testbed_support::testbed().database_url)
        .await
        .expect("connect");
    // The pool's sessions and, beside them, the relay's and retention's (opened at
    // start-up too: read again once they all had the time).
    testbed_support::eventually(
        "the producer's pool sessions opened",
        Duration::from_secs(20),
        || async { (sessions_named(&observer, &application).await.len() > POOL).then_some(()) },
    )
    .await;
    tokio::time::sleep(Duration::from_secs(2)).await;
    let before = sessions_named(&observer, &application).await;

    let messages: Vec<String> = (0..2 * POOL).map(|i| format!("burst-{i}")).collect();
    let sends = messages
        .iter()
        .map(|m| send_one(&producer, &env.topic, "k", m));
    let ids = futures::future::join_all(sends).await;
    assert_eq!(ids.len(), 2 * POOL);

    let after = sessions_named(&observer, &application).await;
    let opened: Vec<&i32> = after.iter().filter(|p| !before.contains(p)).collect();
    assert!(
        opened.is_empty(),
        "the burst opened sessions {opened:?} (before: {before:?}, after: {after:?})"
    );
}

/// A batch body of `n` messages of `size` bytes each for `topic`.
fn large_batch(topic: &str, n: usize, size: usize) -> bytes::Bytes {
    let payload = "x".repeat(size);
    let messages: Vec<Value> = (0..n)
        .map(|i| serde_json::json!({"topic": topic, "key": format!("k{i}"), "message": payload}))
        .collect();
    bytes::Bytes::from(serde_json::json!({ "messages": messages }).to_string())
}

#[tokio::test]
async fn concurrent_large_batches_under_a_256_mib_limit_are_stored_or_refused_and_never_oom_kill_the_producer(
) {
    const LIMIT: u64 = 256 * 1024 * 1024;
    let env = Env::on_testbed("bigbodies", 1).await;
    let cgroup = support::MemoryCgroup::new("bodies-256mi", LIMIT);
    // The defaults under 256 MiB: bodies of at most 8 MiB, 16 MiB of them at once. A
    // request waits 1 ms for bytes held by others, so that refusals are certain.
    let mut producer = Worker::producer_in(&cgroup, &env, "p1", &[("BODY_MEMORY_WAIT_MS", "1")]);
    producer.wait_healthy("/readyz").await;
    let client = reqwest::Client::new();
    // 33 messages of 900 KB (29 MB), as measured when 8 of them OOM-killed producers.
    let whole = client
        .post(producer.url("/api/messages/batch"))
        .header("content-type", "application/json")
        .body(large_batch(&env.topic, 33, 900_000))
        .send()
        .await
        .expect("an answer");
    assert_eq!(whole.status(), 413);
    assert!(whole
        .text()
        .await
        .unwrap_or_default()
        .contains("MAX_BODY_BYTES"));

    // Rounds of 8 batches of 8 messages of 900 KB (7.2 MB each) at once.
    let body = large_batch(&env.topic, 8, 900_000);
    let (mut stored, mut refused) = (0usize, 0usize);
    for _round in 0..3 {
        let requests = (0..8).map(|_| {
            client
                .post(producer.url("/api/messages/batch"))
                .header("content-type", "application/json")
                .body(body.clone())
                .send()
        });
        for response in futures::future::join_all(requests).await {
            let response = response.expect("an answer");
            let status = response.status().as_u16();
            let retry_after = response.headers().get("retry-after").cloned();
            let text = response.text().await.unwrap_or_default();
            match status {
                200 => stored += 1,
                429 => {
                    assert!(retry_after.is_some(), "{text}");
                    assert!(text.contains("BODY_MEMORY_KBYTES"), "{text}");
                    refused += 1;
                }
                other => panic!("answered {other}: {text}"),
            }
        }
        assert!(
            producer.exited().is_none(),
            "the producer died (OOM kills: {}, peak {} MiB); log:\n{}",
            cgroup.oom_kills(),
            cgroup.peak_bytes() >> 20,
            producer.log_text()
        );
    }
    assert!(
        stored > 0 && refused > 0,
        "stored {stored}, refused {refused}"
    );
    let db = outbox_workers::db::connect(&env.database_url)
        .await
        .expect("connect");
    assert_eq!(support::outbox_rows(&db).await, 8 * stored as i64);
    assert_eq!(cgroup.oom_kills(), 0);
    eprintln!(
        "{stored} batches of 7.2 MB stored and {refused} refused with a peak of {} MiB under a {} MiB limit",
        cgroup.peak_bytes() >> 20,
        LIMIT >> 20
    );
}
