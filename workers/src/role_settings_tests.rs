//! The operator–worker contract, checked from the workers' side: every setting the
//! operator renders into a role's environment (`outbox_contract::worker_env`) is read
//! by one of that role's flags and comes back with the same value, and a worker started
//! without them has the defaults an OutboxSystem that leaves them out gets.

use std::ffi::OsStr;

use clap::{Args, Command, FromArgMatches};
use outbox_contract::crd::OutboxSystemSpec;
use outbox_contract::worker_env::{names, ConsumerSettings, ProducerSettings};

use crate::consumer::ConsumerArgs;
use crate::producer::ProducerArgs;

/// What every role needs besides its own settings, by environment name.
fn common() -> Vec<(&'static str, String)> {
    vec![
        (names::KAFKA_BOOTSTRAP_SERVERS, "kafka:9092".into()),
        (names::DATABASE_URL, "postgres://db/outbox".into()),
        (names::KAFKA_TOPICS, "events".into()),
        (names::SERVICE_ID, "pod-1".into()),
        (names::HTTP_PORT, "8081".into()),
    ]
}

/// Parses `env` the way role `A` reads its environment: each name must be the `env` of
/// one of its flags, and its value goes in through that flag.
fn read_back<A: Args + FromArgMatches>(env: &[(&'static str, String)]) -> A {
    let command = A::augment_args(Command::new("outbox-worker"));
    let mut argv = vec!["outbox-worker".to_string()];
    for (name, value) in env {
        let flag = command
            .get_arguments()
            .find(|a| a.get_env() == Some(OsStr::new(name)))
            .and_then(|a| a.get_long())
            .unwrap_or_else(|| panic!("no flag of this role reads {name}"));
        argv.push(format!("--{flag}={value}"));
    }
    let matches = command
        .try_get_matches_from(argv)
        .unwrap_or_else(|e| panic!("{e}"));
    A::from_arg_matches(&matches).unwrap_or_else(|e| panic!("{e}"))
}

fn producer_settings(args: &ProducerArgs) -> ProducerSettings {
    let int = |v: u64| i64::try_from(v).unwrap_or(i64::MAX);
    ProducerSettings {
        relay_rows_per_read: i32::try_from(args.relay_rows_per_read).unwrap_or(i32::MAX),
        relay_linger_ms: i32::try_from(args.relay_linger_ms).unwrap_or(i32::MAX),
        max_backlog_messages: int(args.max_backlog_messages),
        max_backlog_bytes: int(args.max_backlog_bytes),
        retention_seconds: int(args.retention_seconds),
        ledger_retention_seconds: int(args.ledger_retention_seconds),
    }
}

fn consumer_settings(args: &ConsumerArgs) -> ConsumerSettings {
    ConsumerSettings {
        group: args.group.clone(),
        kafka_group_id: args.kafka_group_id().to_string(),
        retry_max_retries: i32::try_from(args.retry_max_retries).unwrap_or(i32::MAX),
        retry_backoff_ms: i64::try_from(args.retry_backoff_ms).unwrap_or(i64::MAX),
        retry_max_backoff_ms: i64::try_from(args.retry_max_backoff_ms).unwrap_or(i64::MAX),
        dead_letter_topic: args.dead_letter_topic.clone(),
    }
}

fn spec(extra: serde_json::Value) -> OutboxSystemSpec {
    let mut base = serde_json::json!({
        "kafka": {"bootstrapServers": "kafka:9092"},
        "database": {"urlSecretRef": {"name": "db", "key": "url"}},
        "topic": {"name": "events", "partitions": 3},
        "consumers": {"groups": [{"name": "g", "replicas": 1}]}
    });
    if let (Some(base), Some(extra)) = (base.as_object_mut(), extra.as_object()) {
        for (k, v) in extra {
            base.insert(k.clone(), v.clone());
        }
    }
    serde_json::from_value(base).unwrap_or_else(|e| panic!("{e}"))
}

#[test]
fn every_setting_the_operator_renders_comes_back_from_the_role_it_is_for() {
    let spec = spec(serde_json::json!({
        "producers": {"relay": {"rowsPerRead": 123, "lingerMs": 7}, "maxBacklog": 99},
        "retention": {"relayedSeconds": 11, "ledgerSeconds": 22},
        "consumers": {"groups": [{
            "name": "g-2",
            "replicas": 1,
            "retry": {"maxRetries": 3, "backoffMs": 150, "maxBackoffMs": 4000},
            "deadLetterTopic": "dead"
        }]}
    }));
    let producer = ProducerSettings::of(&spec);
    let mut env = common();
    env.extend(producer.env());
    let args: ProducerArgs = read_back(&env);
    assert_eq!(producer_settings(&args), producer);
    assert_eq!(args.common.http_port, 8081);
    assert_eq!(args.common.service_id, "pod-1");

    let consumer = ConsumerSettings::of(&spec.consumers.groups[0], "team-a.orders.g-2".into());
    let mut env = common();
    env.extend(consumer.env());
    let args: ConsumerArgs = read_back(&env);
    assert_eq!(consumer_settings(&args), consumer);
}

#[test]
fn a_worker_started_without_its_settings_has_the_defaults_an_outbox_system_gets() {
    let defaults = spec(serde_json::json!({}));
    let producer: ProducerArgs = read_back(&common());
    assert_eq!(
        producer_settings(&producer),
        ProducerSettings::of(&defaults)
    );
    let mut env = common();
    env.push((names::KAFKA_CONSUMER_GROUP, "g".into()));
    let consumer: ConsumerArgs = read_back(&env);
    assert_eq!(
        consumer_settings(&consumer),
        // Without KAFKA_CONSUMER_GROUP_ID, the Kafka group is the declared name.
        ConsumerSettings::of(&defaults.consumers.groups[0], "g".into())
    );
}
