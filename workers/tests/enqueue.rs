//! Enqueue in the application's own transaction (docs/enqueue-in-your-transaction.md),
//! on the testbed's PostgreSQL and Kafka with producer and consumer processes: the
//! application's side is the example crate's, `outbox_enqueue_example`.

mod support;

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use outbox_workers::ledger::IdSet;
use serde_json::json;
use support::{send_batch, wait_acknowledged, Env, Worker, READ_TIMEOUT};
use testbed_support::kafka::{self, read_topic};
use testbed_support::unique_name;
use tokio_postgres::error::SqlState;

/// The schema of a test's database URL (its `search_path`).
async fn schema_of(db: &tokio_postgres::Client) -> String {
    db.query_one("SELECT current_schema()::text", &[])
        .await
        .expect("current schema")
        .get(0)
}

/// Waits until the producers registered `topic` for the SQL contract.
async fn topic_registered(db: &tokio_postgres::Client, topic: &str) {
    testbed_support::eventually(
        "the producer to register its topic for outbox_enqueue",
        Duration::from_secs(60),
        || async {
            let n: i64 = db
                .query_one(
                    "SELECT count(*) FROM outbox_topics WHERE topic = $1",
                    &[&topic],
                )
                .await
                .ok()?
                .get(0);
            (n == 1).then_some(())
        },
    )
    .await;
}

/// A producer and the schema's application session, once the topic is registered.
async fn producer_and_app(env: &Env) -> (Worker, tokio_postgres::Client, String) {
    let mut producer = Worker::producer(env, "p1", &[("RELAY_LINGER_MS", "20")]);
    producer.wait_healthy("/api/messages/health").await;
    let app = outbox_workers::db::connect(&env.database_url)
        .await
        .expect("the application's session");
    topic_registered(&app, &env.topic).await;
    let schema = schema_of(&app).await;
    app.batch_execute("CREATE TABLE orders (id bigserial PRIMARY KEY, item text NOT NULL)")
        .await
        .expect("the application's table");
    (producer, app, schema)
}

#[tokio::test]
async fn a_rolled_back_transaction_leaves_nothing_in_kafka_and_a_committed_one_reaches_every_group_once(
) {
    let env = Env::on_testbed("enqueue-tx", 3).await;
    let (_producer, mut app, schema) = producer_and_app(&env).await;
    let mut consumers = Vec::new();
    for group in ["enqueue-a", "enqueue-b"] {
        let mut c = Worker::consumer(&env, &format!("c-{group}"), group, &[]);
        c.wait_healthy("/api/consumer/health").await;
        consumers.push(c);
    }

    // Rolled back: the order and its message are gone together.
    let tx = app.transaction().await.expect("begin");
    tx.execute("INSERT INTO orders (item) VALUES ('never sold')", &[])
        .await
        .expect("order");
    let gone = outbox_enqueue_example::enqueue(&tx, &schema, &env.topic, Some("k"), "gone", None)
        .await
        .expect("enqueue");
    tx.rollback().await.expect("rollback");

    // Committed: one message alone and three at once, with the order.
    let tx = app.transaction().await.expect("begin");
    tx.execute("INSERT INTO orders (item) VALUES ('book')", &[])
        .await
        .expect("order");
    let headers = json!({"trace": "t-1", "é": "ü"});
    let one = outbox_enqueue_example::enqueue(
        &tx,
        &schema,
        &env.topic,
        Some("order-1"),
        "placed",
        Some(&headers),
    )
    .await
    .expect("enqueue");
    let many = outbox_enqueue_example::enqueue_many(
        &tx,
        &schema,
        &json!([
            {"topic": env.topic, "key": "order-1", "message": "paid"},
            {"topic": env.topic, "message": "no key"},
            {"topic": env.topic, "key": "order-1", "message": "shipped", "headers": {"h": "v"}},
        ]),
    )
    .await
    .expect("enqueue many");
    tx.commit().await.expect("commit");

    let mut ids = vec![one];
    ids.extend(&many);
    assert_eq!(
        ids,
        (one..one + 4).collect::<Vec<_>>(),
        "dense ids, in order"
    );
    assert!(!ids.contains(&gone));
    let expected = IdSet::from_ids(ids.iter().copied());
    for group in ["enqueue-a", "enqueue-b"] {
        let report = wait_acknowledged(&env, group, &expected, Duration::from_secs(90)).await;
        assert_eq!(
            (
                report.acknowledged,
                report.missing,
                report.duplicates,
                report.out_of_order
            ),
            (4, 0, 0, 0),
            "{report:?}"
        );
    }
    // Kafka holds exactly the four committed messages, headers as they were given.
    assert_eq!(
        kafka::message_count(&env.bootstrap, &env.topic).await,
        Some(4)
    );
    let read = read_topic(&env.bootstrap, &env.topic, 4, READ_TIMEOUT).await;
    let first = read
        .iter()
        .find(|m| m.headers.get("outbox-id") == Some(&one.to_string()))
        .expect("the first message");
    assert_eq!(first.payload, "placed");
    assert_eq!(first.headers.get("trace").map(String::as_str), Some("t-1"));
    assert_eq!(first.headers.get("é").map(String::as_str), Some("ü"));
    assert!(read.iter().all(|m| m.payload != "gone"), "{read:?}");
    let orders: i64 = app
        .query_one("SELECT count(*) FROM orders", &[])
        .await
        .expect("orders")
        .get(0);
    assert_eq!(orders, 1, "the rolled-back order is gone too");
}

/// One application transaction: its key and its messages, listed in commit order.
struct Committed {
    key: String,
    payloads: Vec<String>,
}

#[tokio::test]
async fn concurrent_application_transactions_some_held_open_are_all_delivered_in_commit_order_per_key(
) {
    let env = Env::on_testbed("enqueue-concurrent", 3).await;
    let (producer, app, schema) = producer_and_app(&env).await;
    drop(app);
    let mut consumer = Worker::consumer(&env, "c1", "enqueue-order", &[]);
    consumer.wait_healthy("/api/consumer/health").await;

    // Twenty transactions on four keys; a transaction takes its key's lock before it
    // writes (as an application locks the entity it changes), and every fifth holds
    // its messages uncommitted for three seconds while the others and HTTP ingest go on.
    let commits: Arc<Mutex<Vec<Committed>>> = Arc::default();
    let mut tasks = Vec::new();
    for i in 0..20 {
        let (url, schema, topic, commits) = (
            env.database_url.clone(),
            schema.clone(),
            env.topic.clone(),
            commits.clone(),
        );
        tasks.push(tokio::spawn(async move {
            let mut db = outbox_workers::db::connect(&url).await.expect("connect");
            let key = format!("key-{}", i % 4);
            let tx = db.transaction().await.expect("begin");
            tx.execute("SELECT pg_advisory_xact_lock(hashtext($1))", &[&key])
                .await
                .expect("the key's lock");
            let payloads: Vec<String> = (0..3).map(|m| format!("tx{i}-m{m}")).collect();
            let mut ids = Vec::new();
            for payload in &payloads {
                ids.push(
                    outbox_enqueue_example::enqueue(
                        &tx,
                        &schema,
                        &topic,
                        Some(&key),
                        payload,
                        None,
                    )
                    .await
                    .expect("enqueue"),
                );
            }
            if i % 5 == 0 {
                tokio::time::sleep(Duration::from_secs(3)).await;
            }
            // Recorded while the key's lock is held: the next transaction of this key
            // cannot take it, write or commit before this one is in the list.
            commits
                .lock()
                .expect("commits")
                .push(Committed { key, payloads });
            tx.commit().await.expect("commit");
            ids
        }));
    }
    // HTTP ingest interleaved, on keys of its own.
    let mut http_ids = Vec::new();
    for round in 0..10 {
        let batch: Vec<(String, String)> = (0..20)
            .map(|m| (format!("http-{}", m % 3), format!("http-{round}-{m}")))
            .collect();
        http_ids.extend(send_batch(&producer, &env.topic, &batch).await);
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let mut app_ids = Vec::new();
    for task in tasks {
        app_ids.extend(task.await.expect("an application transaction"));
    }
    assert_eq!(app_ids.len(), 60);

    let all = IdSet::from_ids(app_ids.iter().chain(&http_ids).copied());
    let report = wait_acknowledged(&env, "enqueue-order", &all, Duration::from_secs(120)).await;
    assert_eq!(
        (
            report.acknowledged,
            report.missing,
            report.duplicates,
            report.out_of_order
        ),
        (260, 0, 0, 0),
        "nothing skipped, none twice, none out of order: {report:?}"
    );
    // Per key, Kafka holds the transactions' messages in the order they committed.
    let read = read_topic(&env.bootstrap, &env.topic, 260, READ_TIMEOUT).await;
    let mut delivered: BTreeMap<String, Vec<String>> = BTreeMap::new();
    for m in read.iter().filter(|m| m.payload.starts_with("tx")) {
        delivered
            .entry(key_of(&m.payload))
            .or_default()
            .push(m.payload.clone());
    }
    let mut committed: BTreeMap<String, Vec<String>> = BTreeMap::new();
    for c in commits.lock().expect("commits").iter() {
        committed
            .entry(c.key.clone())
            .or_default()
            .extend(c.payloads.iter().cloned());
    }
    assert_eq!(delivered, committed);
}

/// The key of an application transaction's payload `tx<i>-m<m>`: `key-<i % 4>`.
fn key_of(payload: &str) -> String {
    let i: usize = payload[2..payload.find('-').unwrap_or(payload.len())]
        .parse()
        .unwrap_or_else(|e| panic!("{payload}: {e}"));
    format!("key-{}", i % 4)
}

#[tokio::test]
async fn the_enqueue_role_may_call_the_functions_and_nothing_else_and_a_refusal_aborts_the_callers_transaction(
) {
    let env = Env::on_testbed("enqueue-role", 1).await;
    let (_producer, mut app, schema) = producer_and_app(&env).await;

    // A login role granted only the enqueue role.
    let enqueue_role: String = app
        .query_one("SELECT outbox_enqueue_role()::text", &[])
        .await
        .expect("the role's name")
        .get(0);
    let login = unique_name("app").replace('-', "_");
    let _cleanup = testbed_support::DropRoles {
        names: vec![login.clone()],
    };
    app.batch_execute(&format!(
        "CREATE ROLE \"{login}\" LOGIN PASSWORD 'app-secret' IN ROLE \"{enqueue_role}\""
    ))
    .await
    .expect("the application's login role");
    let mut config: tokio_postgres::Config = env.database_url.parse().expect("the URL");
    config.user(&login).password("app-secret");
    let (restricted, connection) = config
        .connect(tokio_postgres::NoTls)
        .await
        .expect("connect as the application");
    tokio::spawn(connection);

    let id = outbox_enqueue_example::enqueue(
        &restricted,
        &schema,
        &env.topic,
        None,
        "from the app",
        None,
    )
    .await
    .expect("the role may enqueue");
    assert!(id > 0);
    for sql in [
        format!("SELECT count(*) FROM \"{schema}\".outbox_messages"),
        format!(
            "INSERT INTO \"{schema}\".outbox_messages (id, topic, payload) VALUES (1, 't', 'p')"
        ),
        format!("UPDATE \"{schema}\".outbox_relay_state SET wm_id = 0"),
        format!("DELETE FROM \"{schema}\".outbox_messages"),
        format!("SELECT \"{schema}\".outbox_next_id()"),
        format!("SELECT count(*) FROM \"{schema}\".outbox_ack_chunks"),
    ] {
        let e = restricted
            .batch_execute(&sql)
            .await
            .expect_err(&format!("the role may not: {sql}"));
        assert_eq!(
            e.code(),
            Some(&SqlState::INSUFFICIENT_PRIVILEGE),
            "{sql}: {e}"
        );
    }

    // A refused message aborts the caller's transaction: its business write goes too.
    let limit: i32 = app
        .query_one(
            "SELECT max_record_bytes FROM outbox_topics WHERE topic = $1",
            &[&env.topic],
        )
        .await
        .expect("the topic's limit")
        .get(0);
    let headers = json!({"trace": "ü".repeat(100)});
    let header_bytes =
        outbox_workers::message_size::header_bytes([("trace", "ü".repeat(100).as_str())]);
    // With the key "k": `fits` + 1 byte is exactly the limit, + 2 one byte over.
    let fits = "x".repeat(limit as usize - header_bytes - 2);
    let cases = [
        (
            "unknown-topic",
            "k",
            "p".to_string(),
            None,
            SqlState::INVALID_PARAMETER_VALUE,
            "topic: unknown topic `unknown-topic`",
        ),
        (
            env.topic.as_str(),
            "k",
            format!("{fits}yz"),
            Some(&headers),
            SqlState::PROGRAM_LIMIT_EXCEEDED,
            "message: the message is",
        ),
        (
            env.topic.as_str(),
            "k",
            "p".to_string(),
            Some(&json!({"outbox-id": "1"})),
            SqlState::INVALID_PARAMETER_VALUE,
            "headers.outbox-id: header names starting with `outbox-` are reserved",
        ),
    ];
    for (topic, key, payload, headers, code, names) in cases {
        let tx = app.transaction().await.expect("begin");
        tx.execute("INSERT INTO orders (item) VALUES ('refused')", &[])
            .await
            .expect("order");
        let e = outbox_enqueue_example::enqueue(&tx, &schema, topic, Some(key), &payload, headers)
            .await
            .expect_err("refused");
        assert_eq!(e.code(), Some(&code), "{e}");
        let message = e
            .as_db_error()
            .map(|d| d.message().to_string())
            .unwrap_or_default();
        assert!(message.contains(names), "{message}");
        // The transaction is aborted: even a COMMIT ends it rolled back (checked below).
        let _ = tx.commit().await;
    }
    let orders: i64 = app
        .query_one("SELECT count(*) FROM orders", &[])
        .await
        .expect("orders")
        .get(0);
    assert_eq!(orders, 0, "every refused transaction's order is gone");
    // Exactly at the limit (the same count of bytes as ingest's) is taken.
    let at_limit = format!("{fits}y");
    assert_eq!(
        outbox_workers::message_size::record_size(
            &at_limit,
            Some("k"),
            [("trace", "ü".repeat(100).as_str())]
        ),
        limit as usize
    );
    outbox_enqueue_example::enqueue(
        &app,
        &schema,
        &env.topic,
        Some("k"),
        &at_limit,
        Some(&headers),
    )
    .await
    .expect("a message exactly at the limit is taken");
}
