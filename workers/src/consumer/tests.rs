//! The consumer's pure parts, without Kafka or PostgreSQL: telling a dead-letter topic's
//! refusal from an outage, and reading the relay's headers off a message.

use super::*;

use rdkafka::error::KafkaError;
use rdkafka::types::RDKafkaErrorCode;
use rdkafka::Timestamp;

#[test]
fn a_dead_letter_topic_refusing_a_message_for_good_is_told_from_an_outage() {
    for code in [
        RDKafkaErrorCode::MessageSizeTooLarge,
        RDKafkaErrorCode::UnknownTopic,
        RDKafkaErrorCode::UnknownTopicOrPartition,
        RDKafkaErrorCode::TopicAuthorizationFailed,
    ] {
        assert!(
            dead_letter_refused_for_good(&KafkaError::MessageProduction(code)),
            "{code:?}"
        );
    }
    for code in [
        RDKafkaErrorCode::MessageTimedOut,
        RDKafkaErrorCode::BrokerTransportFailure,
        RDKafkaErrorCode::AllBrokersDown,
        RDKafkaErrorCode::NotEnoughReplicas,
    ] {
        assert!(
            !dead_letter_refused_for_good(&KafkaError::MessageProduction(code)),
            "{code:?}"
        );
    }
}

fn message(headers: &[(&str, &str)]) -> OwnedMessage {
    let mut h = OwnedHeaders::new();
    for (k, v) in headers {
        h = h.insert(Header {
            key: k,
            value: Some(*v),
        });
    }
    OwnedMessage::new(
        Some(b"p".to_vec()),
        Some(b"k".to_vec()),
        "t".into(),
        Timestamp::NotAvailable,
        0,
        42,
        Some(h),
    )
}

#[test]
fn the_relays_first_headers_win_over_later_copies() {
    let forged = message(&[
        (headers::MESSAGE_ID, "100"),
        (headers::TRANSACTION_ID, "9"),
        (headers::CREATED_AT_MICROS, "5"),
        (headers::MESSAGE_ID, "7"),
        (headers::TRANSACTION_ID, "1"),
    ]);
    let gathered = [forged];
    let Parsed { acks, foreign, .. } = parse_gathered(&gathered);
    assert!(foreign.is_empty());
    assert_eq!(acks.len(), 1);
    assert_eq!(acks[0].id, 100);
    assert_eq!(acks[0].order, Some((9, 100)));
    assert_eq!(acks[0].created_at_us, Some(5));
}

#[test]
fn an_invalid_first_id_is_not_rescued_by_a_later_one() {
    let gathered = [message(&[
        (headers::MESSAGE_ID, "x"),
        (headers::MESSAGE_ID, "7"),
    ])];
    let Parsed { acks, foreign, .. } = parse_gathered(&gathered);
    assert!(acks.is_empty());
    assert_eq!(foreign.len(), 1);
}
