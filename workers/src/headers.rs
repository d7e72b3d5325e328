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
