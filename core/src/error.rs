//! The crate's one error type.

use std::time::Duration;

/// Everything that can go wrong in a worker, with the context needed to act on it.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A setting is missing or invalid.
    #[error("configuration: {0}")]
    Config(String),
    /// PostgreSQL could not be reached at start-up or on reconnect.
    #[error("cannot connect to PostgreSQL at {url}: {source}")]
    DbConnect {
        url: String,
        #[source]
        source: tokio_postgres::Error,
    },
    /// PostgreSQL could not be reached within the time allowed.
    #[error("PostgreSQL at {url} did not answer within {timeout:?}")]
    DbTimeout { url: String, timeout: Duration },
    /// A statement failed.
    #[error("PostgreSQL: {context}: {source}")]
    Db {
        context: &'static str,
        #[source]
        source: tokio_postgres::Error,
    },
    /// No pooled connection could be had.
    #[error("PostgreSQL pool: {context}: {source}")]
    Pool {
        context: &'static str,
        #[source]
        source: deadpool_postgres::PoolError,
    },
    /// A Kafka client operation failed.
    #[error("Kafka: {context}: {source}")]
    Kafka {
        context: String,
        #[source]
        source: rdkafka::error::KafkaError,
    },
    /// The worker's Kafka client stopped reaching a broker that new clients reach
    /// (see `kafka_watchdog`).
    #[error("the Kafka client has not reached the broker for {seconds}s while a new client reaches it at once: stopping so that the worker starts again with a new client (nothing is lost: offsets are committed only after the acknowledgements are durable)")]
    KafkaWedged { seconds: u64 },
    /// Kafka is reachable but lacks something we need (a topic).
    #[error("Kafka: {0}")]
    KafkaMissing(String),
    /// Local I/O (binding the HTTP port, writing a report).
    #[error("{context}: {source}")]
    Io {
        context: String,
        #[source]
        source: std::io::Error,
    },
    /// The acknowledgement ledger holds data this version cannot read.
    #[error("acknowledgement ledger: {0}")]
    Ledger(String),
    /// The database schema belongs to another OutboxSystem.
    #[error("the outbox schema {schema} is held by OutboxSystem {holder}, not by {system}: two systems on one schema would share the relay lock and the consumer ledgers; waiting until it is handed over (the operator does so once {holder} is deleted)")]
    SchemaHeld {
        schema: String,
        holder: String,
        system: String,
    },
    /// The relay lost its leadership or its session while publishing.
    #[error("relay: {0}")]
    Relay(String),
    /// A worker found no database session where it needed one (it reconnects).
    #[error("no PostgreSQL session to {0}")]
    NoDatabaseSession(&'static str),
    /// A benchmark stage failed.
    #[error("benchmark: {0}")]
    Bench(String),
}

impl Error {
    /// A short stable label for metrics and logs.
    pub fn kind(&self) -> &'static str {
        match self {
            Error::Config(_) => "config",
            Error::DbConnect { .. } | Error::DbTimeout { .. } => "db_connect",
            Error::Db { .. } => "db",
            Error::SchemaHeld { .. } => "schema_held",
            Error::Pool { .. } => "db_pool",
            Error::Kafka { .. } | Error::KafkaMissing(_) | Error::KafkaWedged { .. } => "kafka",
            Error::Io { .. } => "io",
            Error::Ledger(_) => "ledger",
            Error::Relay(_) => "relay",
            Error::NoDatabaseSession(_) => "db_session",
            Error::Bench(_) => "bench",
        }
    }
}

/// Crate-wide result.
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// Adds a context to PostgreSQL errors: `client.query(..).await.db("reading the watermark")?`.
pub trait DbContext<T> {
    fn db(self, context: &'static str) -> Result<T>;
}

impl<T> DbContext<T> for std::result::Result<T, tokio_postgres::Error> {
    fn db(self, context: &'static str) -> Result<T> {
        self.map_err(|source| Error::Db { context, source })
    }
}

/// Adds a context to Kafka errors.
pub trait KafkaContext<T> {
    fn kafka(self, context: impl Into<String>) -> Result<T>;
}

impl<T> KafkaContext<T> for std::result::Result<T, rdkafka::error::KafkaError> {
    fn kafka(self, context: impl Into<String>) -> Result<T> {
        self.map_err(|source| Error::Kafka {
            context: context.into(),
            source,
        })
    }
}
