//! Unit tests of the refusals: what each says and sets, and when one is news.

use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, Time};
use k8s_openapi::jiff::Timestamp;

use super::*;
use crate::schema_owner::Claim;
use crate::test_fixtures::system;

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
fn a_system_naming_an_image_outside_the_allowed_repositories_is_refused_naming_it_and_the_list() {
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
