//! How a consumer cuts its stream into ledger transactions.
//!
//! A transaction acknowledges as many messages as it can: each one costs a commit and
//! locks the group's ledger chunks. A message that had to be waited for therefore waits
//! a little longer (the linger) for company. A message that was already queued has
//! waited already: it arrived while the last transaction was being recorded, so its
//! ack transaction takes what is queued and goes, rather than add the linger to that wait.

use std::future::Future;
use std::time::Duration;

use futures::FutureExt;
use rdkafka::consumer::StreamConsumer;
use rdkafka::error::KafkaResult;
use rdkafka::message::{Headers, Message, OwnedMessage};

/// Where an ack transaction's messages come from: the Kafka consumer (a queue in tests).
pub trait Inbox {
    /// The next message; cancel-safe (dropping the future loses nothing).
    fn next(&self) -> impl Future<Output = KafkaResult<OwnedMessage>> + Send;
}

impl Inbox for StreamConsumer {
    async fn next(&self) -> KafkaResult<OwnedMessage> {
        self.recv().await.map(|m| m.detach())
    }
}

/// How large one transaction grows and how long it waits for more.
#[derive(Debug, Clone, Copy)]
pub struct TransactionLimits {
    pub linger: Duration,
    pub max_messages: usize,
    pub max_bytes: usize,
}

/// How an ack transaction's first message came.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum First {
    /// It was already queued when the consumer asked.
    Queued,
    /// The consumer waited for it.
    Waited,
}

/// The first message if one is queued now, without waiting.
pub fn queued(inbox: &impl Inbox) -> Option<KafkaResult<OwnedMessage>> {
    inbox.next().now_or_never()
}

/// Bytes a message holds in an ack transaction: payload, key, and every header name and value
/// (a message of empty payload may carry most of a megabyte in headers).
pub fn message_bytes(m: &OwnedMessage) -> usize {
    let headers = m.headers().map_or(0, |h| {
        h.iter()
            .map(|h| h.key.len() + h.value.map_or(0, <[u8]>::len))
            .sum()
    });
    m.payload().map_or(0, <[u8]>::len) + m.key().map_or(0, <[u8]>::len) + headers
}

/// The ack transaction that starts with `first`: what else is queued, and, when `first` was
/// waited for, what arrives within the linger; at most `max_messages`, ending with
/// the message that reaches `max_bytes`. A consumer error ends the ack transaction early.
pub async fn gather(
    inbox: &impl Inbox,
    first: OwnedMessage,
    how: First,
    limits: &TransactionLimits,
) -> Vec<OwnedMessage> {
    let linger = match how {
        First::Waited => limits.linger,
        First::Queued => Duration::ZERO,
    };
    let deadline = tokio::time::Instant::now() + linger;
    let mut bytes = message_bytes(&first);
    let mut gathered = vec![first];
    while gathered.len() < limits.max_messages && bytes < limits.max_bytes {
        let next = tokio::select! {
            // Biased: what is queued is taken before the deadline is looked at, so a
            // ack transaction with no linger still takes everything already there.
            biased;
            m = inbox.next() => m,
            _ = tokio::time::sleep_until(deadline) => break,
        };
        match next {
            Ok(m) => {
                bytes += message_bytes(&m);
                gathered.push(m);
            }
            Err(e) => {
                tracing::warn!(error = %e, "Kafka consumer error");
                break;
            }
        }
    }
    gathered
}

#[cfg(test)]
mod tests {
    use super::*;
    use rdkafka::message::{Header, OwnedHeaders};
    use rdkafka::Timestamp;
    use tokio::sync::{mpsc, Mutex};
    use tokio::time::Instant;

    /// Messages that arrive when the test sends them.
    struct Queue(Mutex<mpsc::UnboundedReceiver<OwnedMessage>>);

    impl Inbox for Queue {
        async fn next(&self) -> KafkaResult<OwnedMessage> {
            match self.0.lock().await.recv().await {
                Some(m) => Ok(m),
                None => std::future::pending().await,
            }
        }
    }

    fn message(offset: i64, payload_bytes: usize) -> OwnedMessage {
        OwnedMessage::new(
            Some(vec![b'x'; payload_bytes]),
            None,
            "t".into(),
            Timestamp::NotAvailable,
            0,
            offset,
            None,
        )
    }

    const LIMITS: TransactionLimits = TransactionLimits {
        linger: Duration::from_millis(20),
        max_messages: 100,
        max_bytes: 1 << 20,
    };

    #[test]
    fn a_message_counts_its_headers_as_well_as_its_payload_and_key() {
        let headers = OwnedHeaders::new()
            .insert(Header {
                key: "trace",
                value: Some("x".repeat(900_000).as_str()),
            })
            .insert(Header {
                key: "empty",
                value: None::<&str>,
            });
        let m = OwnedMessage::new(
            None,
            Some(b"key".to_vec()),
            "t".into(),
            Timestamp::NotAvailable,
            0,
            1,
            Some(headers),
        );
        assert_eq!(
            message_bytes(&m),
            3 + "trace".len() + 900_000 + "empty".len()
        );
    }

    /// Three messages queued now, a fourth 5 ms later.
    fn queue_with_a_late_fourth() -> Queue {
        let (tx, rx) = mpsc::unbounded_channel();
        for offset in 1..=3 {
            tx.send(message(offset, 10)).expect("receiver alive");
        }
        tokio::spawn(async move {
            tokio::time::sleep(Duration::from_millis(5)).await;
            let _ = tx.send(message(4, 10));
            // Keep the channel open so the queue does not look closed.
            std::future::pending::<()>().await;
        });
        Queue(Mutex::new(rx))
    }

    fn offsets(gathered: &[OwnedMessage]) -> Vec<i64> {
        gathered.iter().map(Message::offset).collect()
    }

    #[tokio::test(start_paused = true)]
    async fn an_ack_transaction_whose_first_message_was_queued_takes_what_is_queued_without_lingering(
    ) {
        let inbox = queue_with_a_late_fourth();
        let started = Instant::now();
        let gathered = gather(&inbox, message(0, 10), First::Queued, &LIMITS).await;
        assert_eq!(offsets(&gathered), [0, 1, 2, 3]);
        assert_eq!(started.elapsed(), Duration::ZERO);
    }

    #[tokio::test(start_paused = true)]
    async fn an_ack_transaction_whose_first_message_was_waited_for_lingers_for_company() {
        let inbox = queue_with_a_late_fourth();
        let started = Instant::now();
        let gathered = gather(&inbox, message(0, 10), First::Waited, &LIMITS).await;
        assert_eq!(offsets(&gathered), [0, 1, 2, 3, 4]);
        assert_eq!(started.elapsed(), LIMITS.linger);
    }

    #[tokio::test(start_paused = true)]
    async fn an_ack_transaction_ends_at_its_message_limit_or_with_the_message_that_reaches_its_bytes(
    ) {
        let inbox = queue_with_a_late_fourth();
        let two = TransactionLimits {
            max_messages: 2,
            ..LIMITS
        };
        assert_eq!(
            offsets(&gather(&inbox, message(0, 10), First::Waited, &two).await),
            [0, 1]
        );
        let inbox = queue_with_a_late_fourth();
        let bytes = TransactionLimits {
            max_bytes: 25,
            ..LIMITS
        };
        assert_eq!(
            offsets(&gather(&inbox, message(0, 10), First::Waited, &bytes).await),
            [0, 1, 2]
        );
    }

    #[tokio::test(start_paused = true)]
    async fn a_message_is_queued_only_when_it_is_there_to_take() {
        let (tx, rx) = mpsc::unbounded_channel();
        let inbox = Queue(Mutex::new(rx));
        assert!(queued(&inbox).is_none());
        tx.send(message(7, 1)).expect("receiver alive");
        let taken = queued(&inbox).map(|m| m.map(|m| m.offset()).ok());
        assert_eq!(taken, Some(Some(7)));
    }
}
