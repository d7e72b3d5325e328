//! Broker and database outages during a run, on a throwaway Kafka broker and PostgreSQL
//! server of this test (the shared testbed is never stopped).

mod support;

use std::time::Duration;

use outbox_workers::ledger::IdSet;
use serde_json::{json, Value};
use support::throwaway::{PacketDrop, ThrowawayKafka, ThrowawayPostgres};
use support::{
    keyed_messages, wait_acknowledged, wait_acknowledged_supervising, Env, Worker, READ_TIMEOUT,
};
use testbed_support::kafka::read_topic;
use testbed_support::tls::TestCa;
use testbed_support::{free_port, kafka};

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
        // A short reason, not the database error chain (host names, server messages).
        let text = response.text().await.unwrap_or_default();
        let error = serde_json::from_str::<Value>(&text)
            .ok()
            .and_then(|b| b["error"].as_str().map(str::to_string))
            .unwrap_or_default();
        assert!(
            error.starts_with("database unavailable") || error.starts_with("starting"),
            "{text}"
        );
        for internal in [
            "error connecting",
            "127.0.0.1",
            "db error",
            "Connection refused",
        ] {
            assert!(!text.contains(internal), "{internal:?} in {text}");
        }
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
    kafka::create_topic(&kafka.bootstrap(), &topic, 3, &[]).await;
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
    let mut producer = Worker::producer(&env, "p1", &[("RELAY_ROWS_PER_KAFKA_BATCH", "100")]);
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
    let (report, started_again) = wait_acknowledged_supervising(
        &env,
        "restart-group",
        &expected,
        Duration::from_secs(300),
        &mut [&mut producer, &mut consumer],
    )
    .await;
    assert_eq!(report.missing, 0, "{report:?}");
    assert_eq!(report.acknowledged, expected.len(), "{report:?}");
    assert_eq!(report.out_of_order, 0, "{report:?}");
    eprintln!(
        "after broker and database restarts: {report:?}; workers started again: {started_again:?}"
    );
    drop(consumer);
    drop(producer);
}

/// GET `path` on `worker`; its status (0 when it does not answer within 5 s).
async fn probe(worker: &Worker, path: &str) -> u16 {
    reqwest::Client::new()
        .get(worker.url(path))
        .timeout(Duration::from_secs(5))
        .send()
        .await
        .map(|r| r.status().as_u16())
        .unwrap_or(0)
}

#[tokio::test]
async fn a_kafka_outage_from_start_up_on_stops_neither_ingest_nor_a_process_and_everything_arrives_after(
) {
    // Three minutes: longer than any liveness probe's patience (6 × 10 s).
    const OUTAGE: Duration = Duration::from_secs(180);
    let tb = testbed_support::testbed();
    let database_url = tb.fresh_schema("kafka-outage").await.expect("schema");
    let mut kafka = ThrowawayKafka::start();
    kafka.stop();
    // The broker is down and the topic does not exist yet when the workers start.
    let env = Env {
        bootstrap: kafka.bootstrap(),
        database_url,
        topic: "outage".to_string(),
    };
    let mut producer = Worker::producer(&env, "p1", &[("RELAY_ROWS_PER_KAFKA_BATCH", "100")]);
    let mut consumer = Worker::consumer(&env, "c1", "outage-group", &[]);
    producer.wait_healthy("/readyz").await;
    consumer.wait_healthy("/livez").await;

    let started = std::time::Instant::now();
    let mut ids = Vec::new();
    let mut round = 0;
    while started.elapsed() < OUTAGE {
        let batch = try_batch(
            &producer,
            &env.topic,
            &keyed_messages(&format!("o{round}"), 100, 7),
        )
        .await
        .unwrap_or_else(|| panic!("round {round}: ingest refused while only Kafka is down"));
        ids.extend(batch);
        for (worker, path) in [
            (&producer, "/livez"),
            (&producer, "/readyz"),
            (&consumer, "/livez"),
            (&consumer, "/readyz"),
        ] {
            assert_eq!(
                probe(worker, path).await,
                200,
                "{} {path} after {:?} of Kafka outage",
                worker.name,
                started.elapsed()
            );
        }
        for worker in [&mut producer, &mut consumer] {
            assert!(
                worker.exited().is_none(),
                "{} exited during the outage: {}",
                worker.name,
                worker.log_text()
            );
        }
        round += 1;
        tokio::time::sleep(Duration::from_secs(2)).await;
    }
    // The details say what is wrong, without failing a probe.
    let health: Value = reqwest::get(producer.url("/api/messages/health"))
        .await
        .expect("health")
        .json()
        .await
        .expect("health JSON");
    assert!(
        health["kafka"]
            .as_str()
            .unwrap_or_default()
            .starts_with("DOWN"),
        "{health}"
    );
    assert_eq!(health["database"], "UP", "{health}");

    kafka.start_again();
    kafka::create_topic(&kafka.bootstrap(), &env.topic, 3, &[]).await;
    let expected = IdSet::from_ids(ids);
    let (report, started_again) = wait_acknowledged_supervising(
        &env,
        "outage-group",
        &expected,
        Duration::from_secs(240),
        &mut [&mut producer, &mut consumer],
    )
    .await;
    assert_eq!(report.missing, 0, "{report:?}");
    assert_eq!(report.out_of_order, 0, "{report:?}");
    eprintln!("after a {OUTAGE:?} Kafka outage from start-up: {report:?}; started again: {started_again:?}");
    assert!(producer.exited().is_none() && consumer.exited().is_none());
    assert!(producer.terminate(), "{}", producer.log_text());
    assert!(consumer.terminate(), "{}", consumer.log_text());
}

#[tokio::test]
async fn a_database_outage_longer_than_the_retry_window_dead_letters_nothing() {
    // The outbox on the shared testbed; the consumer's ledger on a PostgreSQL of this
    // test, stopped while messages arrive.
    let env = Env::on_testbed("ledger-outage", 2).await;
    let dead_letters = format!("{}-dlt", env.topic);
    kafka::create_topic(&env.bootstrap, &dead_letters, 1, &[]).await;
    let ledger = ThrowawayPostgres::start();
    let consumer_env = Env {
        database_url: ledger.url(),
        ..env.clone()
    };
    let mut producer = Worker::producer(&env, "p1", &[]);
    producer.wait_healthy("/readyz").await;
    // The retry window is 10 + 20 + 40 ms: far shorter than the outage.
    let mut consumer = Worker::consumer(
        &consumer_env,
        "c1",
        "ledger-outage-group",
        &[
            ("RETRY_MAX_RETRIES", "2"),
            ("RETRY_BACKOFF_MS", "10"),
            ("RETRY_MAX_BACKOFF_MS", "40"),
            ("DEAD_LETTER_TOPIC", &dead_letters),
        ],
    );
    consumer.wait_healthy("/readyz").await;
    let mut ids = try_batch(&producer, &env.topic, &keyed_messages("before", 100, 5))
        .await
        .expect("accepted");
    let expected = IdSet::from_ids(ids.clone());
    wait_acknowledged(
        &consumer_env,
        "ledger-outage-group",
        &expected,
        Duration::from_secs(60),
    )
    .await;

    ledger.stop();
    for round in 0..5 {
        ids.extend(
            try_batch(
                &producer,
                &env.topic,
                &keyed_messages(&format!("during{round}"), 200, 5),
            )
            .await
            .expect("the outbox is not the database that is down"),
        );
        tokio::time::sleep(Duration::from_secs(2)).await;
    }
    let metrics = consumer.metrics().await;
    assert!(
        metrics.contains("outbox_consumer_retrying 1"),
        "the consumer is retrying during the outage: {metrics}"
    );
    ledger.start_again();

    let expected = IdSet::from_ids(ids);
    let report = wait_acknowledged(
        &consumer_env,
        "ledger-outage-group",
        &expected,
        Duration::from_secs(120),
    )
    .await;
    assert_eq!((report.missing, report.dead_lettered), (0, 0), "{report:?}");
    let metrics = consumer.metrics().await;
    assert!(
        metrics.contains("outbox_consumer_dead_lettered_total 0"),
        "nothing dead-lettered: {metrics}"
    );
    assert!(consumer.exited().is_none(), "{}", consumer.log_text());
    drop(consumer);
    drop(producer);
}

/// The value of an unlabelled gauge or counter in a worker's `/metrics`.
async fn metric(worker: &Worker, name: &str) -> Option<f64> {
    let text = reqwest::get(worker.url("/metrics"))
        .await
        .ok()?
        .text()
        .await
        .ok()?;
    text.lines()
        .find_map(|l| l.strip_prefix(name)?.strip_prefix(' '))
        .and_then(|v| v.trim().parse().ok())
}

#[tokio::test]
async fn a_relay_leader_whose_database_connection_is_cut_is_replaced_within_seconds() {
    let pg = ThrowawayPostgres::start();
    let tb = testbed_support::testbed();
    let topic = testbed_support::unique_name("cut");
    kafka::create_topic(&tb.kafka_bootstrap_servers, &topic, 3, &[]).await;
    // The leader reaches PostgreSQL through 127.0.0.2, everyone else through 127.0.0.1:
    // cutting the first path leaves the others'.
    let leader_env = Env {
        bootstrap: tb.kafka_bootstrap_servers.clone(),
        database_url: pg.url_at("127.0.0.2"),
        topic: topic.clone(),
    };
    let env = Env {
        database_url: pg.url(),
        ..leader_env.clone()
    };
    let mut p1 = Worker::producer(&leader_env, "p1", &[]);
    p1.wait_healthy("/readyz").await;
    testbed_support::eventually("p1 to lead the relay", Duration::from_secs(30), || async {
        (metric(&p1, "outbox_relay_leader").await == Some(1.0)).then_some(())
    })
    .await;
    let mut p2 = Worker::producer(&env, "p2", &[]);
    p2.wait_healthy("/readyz").await;
    let mut c1 = Worker::consumer(&env, "c1", "cut-group", &[]);
    c1.wait_healthy("/readyz").await;
    let before = support::send_batch(&p2, &topic, &keyed_messages("before", 200, 7)).await;
    let report = wait_acknowledged(
        &env,
        "cut-group",
        &IdSet::from_ids(before.iter().copied()),
        Duration::from_secs(60),
    )
    .await;
    assert_eq!(report.missing, 0, "{report:?}");
    assert_eq!(metric(&p2, "outbox_relay_leader").await, Some(0.0));

    let cut = PacketDrop::start("127.0.0.2", pg.port);
    let cut_at = std::time::Instant::now();
    let during = support::send_batch(&p2, &topic, &keyed_messages("during", 200, 7)).await;
    testbed_support::eventually(
        "p2 to take over the relay",
        Duration::from_secs(60),
        || async { (metric(&p2, "outbox_relay_leader").await == Some(1.0)).then_some(()) },
    )
    .await;
    let took_over = cut_at.elapsed();
    let mut all = before.clone();
    all.extend(&during);
    let report = wait_acknowledged(
        &env,
        "cut-group",
        &IdSet::from_ids(all.iter().copied()),
        Duration::from_secs(90),
    )
    .await;
    assert_eq!(report.missing, 0, "{report:?}");
    // The cut-off leader found out on its own and stopped claiming leadership.
    testbed_support::eventually(
        "p1 to give up leadership",
        Duration::from_secs(60),
        || async { (metric(&p1, "outbox_relay_leader").await == Some(0.0)).then_some(()) },
    )
    .await;
    let gave_up = cut_at.elapsed();
    drop(cut);
    eprintln!(
        "cut at 0 s: p2 led after {:.1} s, p1 gave up after {:.1} s",
        took_over.as_secs_f64(),
        gave_up.as_secs_f64()
    );
    assert!(p1.terminate() && p2.terminate() && c1.terminate());
}

#[tokio::test]
async fn a_flood_of_health_requests_costs_one_database_session_and_ingest_goes_on() {
    // A server of this test's own (max_connections 50), so that its backends are ours.
    let pg = ThrowawayPostgres::start();
    let tb = testbed_support::testbed();
    let topic = testbed_support::unique_name("flood");
    kafka::create_topic(&tb.kafka_bootstrap_servers, &topic, 1, &[]).await;
    let env = Env {
        bootstrap: tb.kafka_bootstrap_servers.clone(),
        database_url: pg.url(),
        topic: topic.clone(),
    };
    let mut producer = Worker::producer(&env, "p1", &[]);
    producer.wait_healthy("/readyz").await;
    let mut consumer = Worker::consumer(&env, "c1", "flood-group", &[]);
    consumer.wait_healthy("/readyz").await;
    let observer = outbox_workers::db::connect(&pg.url())
        .await
        .expect("connect");
    let backends = || async {
        observer
            .query_one(
                "SELECT count(*) FROM pg_stat_activity WHERE backend_type = 'client backend'",
                &[],
            )
            .await
            .expect("count backends")
            .get::<_, i64>(0)
    };
    let before = backends().await;
    let http = reqwest::Client::builder()
        .pool_max_idle_per_host(0)
        .build()
        .expect("client");
    let mut flood = Vec::new();
    for i in 0..800 {
        let url = if i % 2 == 0 {
            consumer.url("/api/consumer/health")
        } else {
            producer.url("/api/messages/health")
        };
        let http = http.clone();
        flood.push(tokio::spawn(async move {
            http.get(url)
                .timeout(Duration::from_secs(60))
                .send()
                .await
                .map(|r| r.status().as_u16())
                .unwrap_or(0)
        }));
    }
    let mut most = before;
    let mut sent = Vec::new();
    while flood.iter().any(|f| !f.is_finished()) {
        most = most.max(backends().await);
        if sent.len() < 20 {
            sent.push(support::send_one(&producer, &topic, "k", "during the flood").await);
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let mut answers = std::collections::BTreeMap::new();
    for f in flood {
        *answers.entry(f.await.expect("request")).or_insert(0) += 1;
    }
    assert_eq!(
        answers.get(&200),
        Some(&800),
        "every health request answered 200: {answers:?}"
    );
    assert!(
        most <= before + 4,
        "health requests opened database sessions: {before} backends before, {most} at most during 800 requests"
    );
    eprintln!("800 health requests: {before} backends before, {most} at most; {} sends accepted meanwhile", sent.len());
    assert!(producer.terminate() && consumer.terminate());
}

#[tokio::test]
async fn no_password_reaches_a_log_line_or_a_health_body() {
    // Nothing listens on this port: the workers log their connection errors, and the
    // health bodies name them, with the URL in them.
    let closed = free_port();
    let tb = testbed_support::testbed();
    for (label, database_url) in [
        (
            "url",
            format!("postgres://outbox:s3cr%40t@127.0.0.1:{closed}/outbox"),
        ),
        (
            "dsn",
            format!("host=127.0.0.1 port={closed} user=outbox password=s3cr@t dbname=outbox"),
        ),
    ] {
        let env = Env {
            bootstrap: tb.kafka_bootstrap_servers.clone(),
            database_url,
            topic: "unused".into(),
        };
        let mut producer = Worker::producer(&env, &format!("p-{label}"), &[]);
        let mut consumer = Worker::consumer(&env, &format!("c-{label}"), "g", &[]);
        producer.wait_healthy("/livez").await;
        consumer.wait_healthy("/livez").await;
        let mut bodies = String::new();
        for _ in 0..3 {
            for url in [
                producer.url("/api/messages/health"),
                producer.url("/readyz"),
                consumer.url("/api/consumer/health"),
                consumer.url("/readyz"),
            ] {
                if let Ok(r) = reqwest::get(&url).await {
                    bodies.push_str(&r.text().await.unwrap_or_default());
                }
            }
            tokio::time::sleep(Duration::from_secs(1)).await;
        }
        let logs = format!("{}\n{}", producer.log_text(), consumer.log_text());
        assert!(
            logs.contains("127.0.0.1"),
            "the workers logged their connection attempts ({label}):\n{logs}"
        );
        assert!(
            !logs.contains("s3cr"),
            "a password in the logs ({label}):\n{logs}"
        );
        assert!(
            !bodies.contains("s3cr"),
            "a password in a health body ({label}):\n{bodies}"
        );
    }
}

/// Whether `client`'s session is encrypted.
async fn session_is_encrypted(client: &tokio_postgres::Client) -> bool {
    client
        .query_one(
            "SELECT ssl FROM pg_stat_ssl WHERE pid = pg_backend_pid()",
            &[],
        )
        .await
        .expect("pg_stat_ssl")
        .get(0)
}

#[tokio::test]
async fn workers_reach_a_tls_only_database_with_verify_full_and_refuse_a_wrong_ca() {
    let ca = TestCa::new("outbox test CA");
    let impostor = TestCa::new("someone else's CA");
    let pg = ThrowawayPostgres::start_tls(&ca.issue(&["localhost", "127.0.0.1"]));
    let ca_file = pg.scratch_file("ca.pem", &ca.pem());
    let wrong_file = pg.scratch_file("wrong-ca.pem", &impostor.pem());
    let at = |address: &str, query: String| format!("{}?{query}", pg.url_at(address));
    let connect = |url: String| async move {
        outbox_workers::db::connect(&url)
            .await
            .map_err(|e| outbox_workers::error_chain(&e))
    };
    let verify = |mode: &str, file: &std::path::Path| {
        format!("sslmode={mode}&sslrootcert={}", file.display())
    };

    // Every sslmode against a server that takes TLS only.
    let full = connect(at("127.0.0.1", verify("verify-full", &ca_file)))
        .await
        .expect("verify-full with the CA that signed the server's certificate");
    assert!(session_is_encrypted(&full).await);
    let wrong = connect(at("127.0.0.1", verify("verify-full", &wrong_file)))
        .await
        .expect_err("verify-full with another CA");
    assert!(wrong.contains("UnknownIssuer"), "{wrong}");
    // 127.0.0.2 is the same server, but not a name in its certificate.
    let misnamed = connect(at("127.0.0.2", verify("verify-full", &ca_file)))
        .await
        .expect_err("verify-full to a name the certificate does not carry");
    assert!(misnamed.contains("not valid for name"), "{misnamed}");
    let chain_only = connect(at("127.0.0.2", verify("verify-ca", &ca_file)))
        .await
        .expect("verify-ca checks the chain, not the name");
    assert!(session_is_encrypted(&chain_only).await);
    let preferred = connect(pg.url()).await.expect("prefer, the default");
    assert!(session_is_encrypted(&preferred).await);
    let plain = connect(at("127.0.0.1", "sslmode=disable".into()))
        .await
        .expect_err("plain TCP to a TLS-only server");
    assert!(plain.contains("no encryption"), "{plain}");
    let no_ca = connect(at("127.0.0.1", "sslmode=verify-full".into()))
        .await
        .expect_err("verify-full without a CA");
    assert!(no_ca.contains("sslrootcert"), "{no_ca}");

    // The processes: sslmode in the URL, the CA from PGSSLROOTCERT (as the operator
    // mounts spec.database.caSecretRef).
    let tb = testbed_support::testbed();
    let topic = testbed_support::unique_name("tls");
    kafka::create_topic(&tb.kafka_bootstrap_servers, &topic, 1, &[]).await;
    let env = Env {
        bootstrap: tb.kafka_bootstrap_servers.clone(),
        database_url: at("127.0.0.1", "sslmode=verify-full".into()),
        topic: topic.clone(),
    };
    let ca_env = ca_file.display().to_string();
    let wrong_env = wrong_file.display().to_string();
    let mut producer = Worker::producer(&env, "p-tls", &[("PGSSLROOTCERT", &ca_env)]);
    let mut consumer = Worker::consumer(&env, "c-tls", "g-tls", &[("PGSSLROOTCERT", &ca_env)]);
    let mut impostor_trusting =
        Worker::producer(&env, "p-wrong-ca", &[("PGSSLROOTCERT", &wrong_env)]);
    producer.wait_healthy("/api/messages/health").await;
    consumer.wait_healthy("/api/consumer/health").await;
    let ids = support::send_batch(&producer, &topic, &keyed_messages("tls", 50, 5)).await;
    let report = wait_acknowledged(
        &Env {
            database_url: at("127.0.0.1", verify("verify-full", &ca_file)),
            ..env.clone()
        },
        "g-tls",
        &IdSet::from_ids(ids),
        Duration::from_secs(60),
    )
    .await;
    assert_eq!((report.missing, report.out_of_order), (0, 0), "{report:?}");

    impostor_trusting.wait_healthy("/livez").await;
    assert_eq!(
        probe(&impostor_trusting, "/api/messages/health").await,
        503,
        "a producer that trusts another CA never reaches the database"
    );
    let log = impostor_trusting.log_text();
    assert!(
        log.contains("UnknownIssuer"),
        "the log names the refusal:\n{log}"
    );
    assert!(producer.terminate() && consumer.terminate());
}

/// `outbox-worker loadtest` in local mode against `producer`, verifying `group`, its
/// output in `log`.
fn local_runner(
    env: &Env,
    producer: &Worker,
    group: &str,
    log: &std::path::Path,
    extra: &[&str],
) -> std::process::Child {
    let file = std::fs::File::create(log).expect("runner log");
    let err = file.try_clone().expect("runner log");
    std::process::Command::new(env!("CARGO_BIN_EXE_outbox-worker"))
        .arg("loadtest")
        .args(["--topic", &env.topic, "--database-url", &env.database_url])
        .args(["--producer-url", &producer.url(""), "--group", group])
        .args(["--progress-interval", "1s"])
        .args(extra)
        .env_clear()
        .env("PATH", std::env::var("PATH").unwrap_or_default())
        .env("RUST_LOG", "info")
        .stdin(std::process::Stdio::null())
        .stdout(file)
        .stderr(err)
        .spawn()
        .expect("spawn the runner")
}

/// Waits until `log` contains `text`; panics with the log after `timeout`.
async fn wait_for_line(log: &std::path::Path, text: &str, timeout: Duration) {
    let deadline = tokio::time::Instant::now() + timeout;
    loop {
        let now = std::fs::read_to_string(log).unwrap_or_default();
        if now.contains(text) {
            return;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "no `{text}` in the runner's log within {timeout:?}:\n{now}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// Waits for `child` to exit within `timeout`; kills it otherwise.
async fn exit_within(
    child: &mut std::process::Child,
    timeout: Duration,
) -> Option<std::process::ExitStatus> {
    let deadline = tokio::time::Instant::now() + timeout;
    while tokio::time::Instant::now() < deadline {
        if let Ok(Some(status)) = child.try_wait() {
            return Some(status);
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let _ = child.kill();
    let _ = child.wait();
    None
}

/// A throwaway PostgreSQL, a topic on the testbed's Kafka and a ready producer on
/// them, with no consumer yet: a runner against them sends everything, then waits in
/// verification.
async fn runner_setup(name: &str, partitions: i32) -> (ThrowawayPostgres, Env, Worker) {
    let pg = ThrowawayPostgres::start();
    let tb = testbed_support::testbed();
    let topic = testbed_support::unique_name(name);
    kafka::create_topic(&tb.kafka_bootstrap_servers, &topic, partitions, &[]).await;
    let env = Env {
        bootstrap: tb.kafka_bootstrap_servers.clone(),
        database_url: pg.url(),
        topic,
    };
    let mut producer = Worker::producer(&env, &format!("p-{name}"), &[]);
    producer.wait_healthy("/api/messages/health").await;
    (pg, env, producer)
}

#[tokio::test]
async fn a_database_restart_while_the_runner_verifies_does_not_fail_the_load_test() {
    let (pg, env, mut producer) = runner_setup("lt-pg-restart", 3).await;
    // No consumer yet: the runner sends everything, then waits in verification.
    let log = pg.scratch_file("runner.log", "");
    let mut runner = local_runner(
        &env,
        &producer,
        "g-lt",
        &log,
        &[
            "--scenario",
            "batch:4000:batched",
            "--scenario",
            "single:200:immediate",
            "--verification-timeout",
            "240s",
        ],
    );
    let read_log = || std::fs::read_to_string(&log).unwrap_or_default();
    wait_for_line(&log, "verifying", Duration::from_secs(120)).await;
    // PostgreSQL goes away under the runner's ledger session for 8 s, then comes back.
    pg.stop();
    tokio::time::sleep(Duration::from_secs(8)).await;
    pg.start_again();
    let mut consumer = Worker::consumer(&env, "c-lt", "g-lt", &[]);
    consumer.wait_healthy("/api/consumer/health").await;
    let status = exit_within(&mut runner, Duration::from_secs(240)).await;
    let text = read_log();
    assert_eq!(
        status.and_then(|s| s.code()),
        Some(0),
        "the run ends verified after the database came back:\n{text}"
    );
    assert!(text.contains("AllAcknowledged"), "{text}");
    // Without a consumer the batch cannot drain before the one-at-a-time scenario: the
    // runner waits 30 s without an acknowledgement, then sends it anyway.
    assert!(
        text.contains("the backlog did not drain (no acknowledgement for 30s"),
        "{text}"
    );
    assert!(
        text.contains("outbox database unreachable") && text.contains("outbox database back"),
        "the runner says it rode out the outage:\n{text}"
    );
    assert!(producer.terminate() && consumer.terminate());
}

#[tokio::test]
async fn a_database_outage_longer_than_the_runners_patience_fails_the_run_naming_it() {
    let (pg, env, producer) = runner_setup("lt-pg-gone", 1).await;
    let log = pg.scratch_file("runner.log", "");
    let mut runner = local_runner(
        &env,
        &producer,
        "g-gone",
        &log,
        &[
            "--scenario",
            "batch:500:batched",
            "--verification-timeout",
            "240s",
            "--infrastructure-patience",
            "6s",
        ],
    );
    let read_log = || std::fs::read_to_string(&log).unwrap_or_default();
    wait_for_line(&log, "verifying", Duration::from_secs(120)).await;
    pg.stop();
    let status = exit_within(&mut runner, Duration::from_secs(60)).await;
    let text = read_log();
    assert!(
        status.is_some_and(|s| !s.success()),
        "the run fails once the outage outlasts the patience:\n{text}"
    );
    assert!(
        text.contains("DatabaseUnavailable") && text.contains("6s"),
        "the failure names the database and the patience:\n{text}"
    );
}

#[tokio::test]
async fn a_producer_killed_mid_send_is_waited_for_and_every_message_is_stored_once() {
    let (pg, env, mut producer) = runner_setup("lt-producer-kill", 3).await;
    let log = pg.scratch_file("runner.log", "");
    let report = pg.scratch_file("report.json", "");
    let run_id = testbed_support::unique_name("run");
    let mut runner = local_runner(
        &env,
        &producer,
        "g-kill",
        &log,
        &[
            "--scenario",
            "batch:60000:batched",
            "--messages-per-request",
            "200",
            "--run-id",
            &run_id,
            "--report",
            &report.display().to_string(),
            "--verification-timeout",
            "240s",
        ],
    );
    let (db, connection) = tokio_postgres::connect(&env.database_url, tokio_postgres::NoTls)
        .await
        .expect("connect");
    tokio::spawn(connection);
    let deadline = tokio::time::Instant::now() + Duration::from_secs(120);
    while stored_for_run(&db, &run_id).await < 5_000 {
        assert!(
            tokio::time::Instant::now() < deadline,
            "the runner never got going"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    // SIGKILL mid-send: requests in flight lose their answers, new ones are refused.
    let port = producer.port.to_string();
    producer.kill9();
    tokio::time::sleep(Duration::from_secs(3)).await;
    let mut again = Worker::producer(&env, "p-lt-producer-kill-2", &[("HTTP_PORT", &port)]);
    again.wait_healthy("/api/messages/health").await;
    let mut consumer = Worker::consumer(&env, "c-kill", "g-kill", &[]);
    consumer.wait_healthy("/api/consumer/health").await;

    let status = exit_within(&mut runner, Duration::from_secs(240)).await;
    let text = std::fs::read_to_string(&log).unwrap_or_default();
    assert_eq!(
        status.and_then(|s| s.code()),
        Some(0),
        "the run ends verified after the producer came back:\n{text}"
    );
    let report: Value = serde_json::from_str(&std::fs::read_to_string(&report).unwrap_or_default())
        .expect("the JSON report");
    assert_eq!(report["status"]["acceptedMessages"], 60_000, "{report:#}");
    assert_eq!(report["uncertainMessages"], 0, "{report:#}");
    assert_eq!(report["status"]["scenarios"][0]["failed"], 0, "{report:#}");
    let producer_outage = report["status"]["outages"]
        .as_array()
        .and_then(|o| {
            o.iter().find(|o| {
                o["dependency"]
                    .as_str()
                    .is_some_and(|d| d.starts_with("producer"))
            })
        })
        .cloned();
    assert!(
        producer_outage
            .as_ref()
            .is_some_and(|o| o["count"].as_i64() >= Some(1) && o["ongoing"] == false),
        "the producer's outage is in the status: {report:#}"
    );
    assert_eq!(
        stored_for_run(&db, &run_id).await,
        60_000,
        "each message stored once, retries under their idempotency keys included"
    );
    assert!(
        text.contains("producer unreachable or its answer lost"),
        "the kill landed while the runner was sending:\n{text}"
    );
    assert!(again.terminate() && consumer.terminate());
}

/// Rows of the outbox stamped with load-test run `run_id`.
async fn stored_for_run(db: &tokio_postgres::Client, run_id: &str) -> i64 {
    db.query_one(
        "SELECT count(*) FROM outbox_messages WHERE headers->>'loadtest-run' = $1",
        &[&run_id],
    )
    .await
    .map(|r| r.get::<_, i64>(0))
    .unwrap_or(0)
}

#[tokio::test]
async fn messages_sent_while_kafka_has_not_confirmed_the_last_relay_read_are_handed_on_at_once() {
    // The broker stays frozen this long after the last message is sent: a message
    // handed on only once the batch before it is confirmed waits at least as long.
    const HELD: Duration = Duration::from_secs(3);
    let kafka = ThrowawayKafka::start();
    let topic = testbed_support::unique_name("unconfirmed");
    kafka::create_topic(&kafka.bootstrap(), &topic, 1, &[]).await;
    let env = Env {
        bootstrap: kafka.bootstrap(),
        database_url: testbed_support::testbed()
            .fresh_schema("unconfirmed")
            .await
            .expect("fresh schema"),
        topic: topic.clone(),
    };
    // An idle relay looks every second unless woken: only the wake can explain a quick
    // hand-over.
    let mut producer = Worker::producer(&env, "p1", &[("RELAY_LINGER_MS", "1000")]);
    producer.wait_healthy("/api/messages/health").await;
    support::send_one(&producer, &topic, "k", "before").await;
    read_topic(&env.bootstrap, &topic, 1, READ_TIMEOUT).await;

    let frozen = kafka.freeze();
    // The first is handed to the client and waits for its confirmation; the others
    // come while it waits.
    let mut ids = Vec::new();
    for i in 0..3 {
        ids.push(support::send_one(&producer, &topic, "k", &format!("frozen-{i}")).await);
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
    tokio::time::sleep(HELD).await;
    drop(frozen);

    let messages = read_topic(&env.bootstrap, &topic, 4, READ_TIMEOUT).await;
    let handed_after_ms: Vec<(i64, i64)> = messages
        .iter()
        .filter_map(|m| {
            let id = m
                .headers
                .get(outbox_workers::headers::MESSAGE_ID)?
                .parse()
                .ok()?;
            let created_us: i64 = m
                .headers
                .get(outbox_workers::headers::CREATED_AT_MICROS)?
                .parse()
                .ok()?;
            Some((id, m.timestamp_ms - created_us / 1000))
        })
        .filter(|(id, _)| ids.contains(id))
        .collect();
    assert_eq!(handed_after_ms.len(), 3, "{messages:?}");
    for (id, after_ms) in &handed_after_ms {
        assert!(
            *after_ms < 1_000,
            "message {id} was handed to Kafka {after_ms} ms after it was stored, the broker \
             frozen meanwhile: {handed_after_ms:?}"
        );
    }
    drop(producer);
}
