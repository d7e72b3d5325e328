//! Unit tests of what follows a failed topic deletion.

use super::*;
use crate::test_fixtures::system;

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
