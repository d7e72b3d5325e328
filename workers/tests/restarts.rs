//! Broker and database outages during a run, on a throwaway Kafka broker and PostgreSQL
//! server of this test (the shared testbed is never stopped).

mod support;

use std::time::Duration;

use outbox_workers::ledger::IdSet;
use serde_json::{json, Value};
use support::throwaway::{ThrowawayKafka, ThrowawayPostgres};
use support::{create_topic, keyed_messages, wait_acknowledged, Env, Worker};

/// Sends a batch; returns its ids when it was accepted, `None` when refused (503).
async fn try_batch(
    producer: &Worker,
    topic: &str,
    messages: &[(String, String)],
) -> Option<Vec<i64>> {
    let body = json!({"messages": messages.iter().map(|(k, m)| json!({"topic": topic, "key": k, "message": m})).collect::<Vec<_>>()});
    let response = reqwest::Client::new()
        .post(producer.url("/api/messages/batch"))
        .timeout(Duration::from_secs(30))
        .json(&body)
        .send()
        .await
        .ok()?;
    if response.status() != 200 {
        assert_eq!(
            response.status(),
            503,
            "a database outage is answered with 503"
        );
        return None;
    }
    let body: Value = response.json().await.ok()?;
    Some(
        body["ids"]
            .as_array()?
            .iter()
            .filter_map(|v| v.as_i64())
            .collect(),
    )
}

#[tokio::test]
async fn stopping_and_restarting_the_broker_and_the_database_during_a_run_loses_nothing() {
    let pg = ThrowawayPostgres::start();
    let mut kafka = ThrowawayKafka::start();
    let topic = "restarts".to_string();
    create_topic(&kafka.bootstrap(), &topic, 3).await;
    let env = Env {
        bootstrap: kafka.bootstrap(),
        database_url: pg.url(),
        topic: topic.clone(),
    };
    let fast_retry = [
        ("RETRY_MAX_RETRIES", "-1"),
        ("RETRY_BACKOFF_MS", "100"),
        ("RETRY_MAX_BACKOFF_MS", "1000"),
    ];
    let mut producer = Worker::producer(&env, "p1", &[("RELAY_BATCH_SIZE", "100")]);
    producer.wait_healthy("/api/messages/health").await;
    let mut consumer = Worker::consumer(&env, "c1", "restart-group", &fast_retry);
    consumer.wait_healthy("/api/consumer/health").await;

    let mut ids = Vec::new();
    let mut refused = 0;
    for round in 0..24 {
        match try_batch(
            &producer,
            &topic,
            &keyed_messages(&format!("r{round}"), 200, 9),
        )
        .await
        {
            Some(batch) => ids.extend(batch),
            None => refused += 1,
        }
        match round {
            4 => kafka.stop(),
            // The outbox keeps accepting while the broker is away.
            9 => kafka.start_again(),
            13 => pg.stop(),
            16 => pg.start_again(),
            _ => {}
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    assert!(
        refused >= 1,
        "requests during the database outage were refused"
    );
    assert!(ids.len() >= 20 * 200, "accepted {} messages", ids.len());
    let expected = IdSet::from_ids(ids);
    let report = wait_acknowledged(
        &pg.url(),
        "restart-group",
        &expected,
        Duration::from_secs(180),
    )
    .await;
    assert_eq!(report.missing, 0, "{report:?}");
    assert_eq!(report.acknowledged, expected.len(), "{report:?}");
    assert_eq!(report.out_of_order, 0, "{report:?}");
    eprintln!("after broker and database restarts: {report:?}");
    drop(consumer);
    drop(producer);
}
