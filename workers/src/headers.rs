//! Kafka header names the relay writes and the consumer reads.

/// The message's stable id (decimal), assigned by the outbox at ingest.
pub const MESSAGE_ID: &str = "outbox-id";
/// The id of the PostgreSQL transaction that wrote the message (decimal `xid8`).
/// With [`MESSAGE_ID`] it gives the relay's publication order `(txid, id)`, which the
/// consumer uses to detect per-key reordering.
pub const TRANSACTION_ID: &str = "outbox-txid";
/// When the message was written to the outbox: microseconds since the Unix epoch.
pub const CREATED_AT_MICROS: &str = "outbox-created-at-us";
/// Set on dead-lettered messages: why the consumer gave up.
pub const DEAD_LETTER_REASON: &str = "outbox-dead-letter-reason";
/// Set on dead-lettered messages: the consumer group that gave up.
pub const DEAD_LETTER_GROUP: &str = "outbox-dead-letter-group";

/// Header names starting with this (any case) are the system's: ingest refuses them
/// from clients and the relay drops them from rows, so no one can forge an id.
pub const RESERVED_PREFIX: &str = "outbox-";

/// Whether `name` is a header name the system reserves.
pub fn is_reserved(name: &str) -> bool {
    name.as_bytes()
        .get(..RESERVED_PREFIX.len())
        .is_some_and(|p| p.eq_ignore_ascii_case(RESERVED_PREFIX.as_bytes()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reserved_names_are_recognised_in_any_case() {
        for name in [MESSAGE_ID, TRANSACTION_ID, "Outbox-Id", "OUTBOX-anything"] {
            assert!(is_reserved(name), "{name}");
        }
        for name in ["outbox", "x-outbox-id", "", "outbo\u{e9}-x", "run"] {
            assert!(!is_reserved(name), "{name}");
        }
    }
}
