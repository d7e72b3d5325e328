//! The consumer role: a Kafka consumer-group member that acknowledges each message into
//! the ledger, in ack transactions, and commits offsets only once the acknowledgements are
//! durable.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use rdkafka::consumer::{CommitMode, Consumer, StreamConsumer};
use rdkafka::message::{Header, Headers, Message, OwnedHeaders, OwnedMessage};
use rdkafka::producer::{FutureProducer, FutureRecord};
use rdkafka::{Offset, TopicPartitionList};
use tokio_postgres::Client;
use tracing::Instrument;

use outbox_contract::worker_env::{defaults, names};

use crate::config::{kafka_client_properties, CommonArgs};
use crate::error::{Error, KafkaContext, Result};
use crate::headers;
use crate::metrics::ConsumerMetrics;
use crate::probes::Started;
use crate::shutdown::{self, ShutdownSignal};
use ack_transaction::{First, Inbox, TransactionLimits};
use ledger::{Ack, AckRecorder, GivenUp};

mod ack_transaction;
mod http;
pub mod ledger;

/// Consumer settings.
#[derive(clap::Args, Debug, Clone)]
pub struct ConsumerArgs {
    #[command(flatten)]
    pub common: CommonArgs,
    /// The consumer group this member belongs to, as declared: the name in the ledger,
    /// the metrics, the health answer and dead-letter headers.
    #[arg(
        long,
        env = names::KAFKA_CONSUMER_GROUP,
        value_name = "KAFKA_CONSUMER_GROUP"
    )]
    pub group: String,
    /// The group's id in Kafka, which this member joins (the operator renders
    /// `<namespace>.<system>.<group>`, or the bare name for a group from before);
    /// unset, the declared name.
    #[arg(
        long,
        env = names::KAFKA_CONSUMER_GROUP_ID,
        value_name = "KAFKA_CONSUMER_GROUP_ID"
    )]
    pub kafka_group_id: Option<String>,
    /// Tries after the first failure before dead-lettering; -1 retries forever.
    #[arg(long, env = names::RETRY_MAX_RETRIES, default_value_t = i64::from(defaults::RETRY_MAX_RETRIES), allow_negative_numbers = true)]
    pub retry_max_retries: i64,
    /// First retry delay, doubled on each further try.
    #[arg(long, env = names::RETRY_BACKOFF_MS, default_value_t = defaults::RETRY_BACKOFF_MS as u64)]
    pub retry_backoff_ms: u64,
    /// Longest retry delay.
    #[arg(long, env = names::RETRY_MAX_BACKOFF_MS, default_value_t = defaults::RETRY_MAX_BACKOFF_MS as u64)]
    pub retry_max_backoff_ms: u64,
    /// Where messages go after the last try (must exist); without it the consumer keeps
    /// retrying rather than drop a message.
    #[arg(long, env = names::DEAD_LETTER_TOPIC)]
    pub dead_letter_topic: Option<String>,
    /// Most messages acknowledged per ledger transaction. A transaction writes one
    /// per-key order row per key it holds, so a consumer catching up on a backlog does
    /// less work per message with larger ones; it also ends at
    /// [`TRANSACTION_MAX_BYTES`] of payload.
    #[arg(long, env = "CONSUMER_ACKS_PER_TRANSACTION", default_value_t = DEFAULT_ACKS_PER_TRANSACTION)]
    pub acks_per_transaction: usize,
    /// How long a transaction whose first message had to be waited for waits for more
    /// (messages that queued while the last one was recorded go at once).
    #[arg(long, env = "CONSUMER_TRANSACTION_LINGER_MS", default_value_t = 20)]
    pub transaction_linger_ms: u64,
}

impl ConsumerArgs {
    /// The group id this member joins in Kafka: `--kafka-group-id`, else the declared
    /// name (a worker started by hand).
    pub fn kafka_group_id(&self) -> &str {
        self.kafka_group_id
            .as_deref()
            .filter(|id| !id.trim().is_empty())
            .unwrap_or(&self.group)
    }
}

/// Messages per ledger transaction unless `CONSUMER_ACKS_PER_TRANSACTION` says.
pub const DEFAULT_ACKS_PER_TRANSACTION: usize = 20_000;

/// Payload and key bytes one ledger transaction's messages hold at most (the ack transaction
/// ends with the message that reaches it), so large messages cannot fill memory.
pub const TRANSACTION_MAX_BYTES: usize = 16 << 20;

/// Runs a consumer-group member until `shutdown`, finishing its in-flight ack transaction.
pub async fn run(args: ConsumerArgs, shutdown: ShutdownSignal) -> Result<()> {
    args.common.validate()?;
    if args.group.trim().is_empty() {
        return Err(Error::Config(
            "KAFKA_CONSUMER_GROUP (--group) is empty".into(),
        ));
    }
    if args.retry_max_retries < -1 {
        return Err(Error::Config(
            "RETRY_MAX_RETRIES must be -1 (forever) or at least 0".into(),
        ));
    }
    let span = tracing::info_span!("consumer", service_id = %args.common.service_id, group = %args.group, kafka_group_id = %args.kafka_group_id());
    run_member(args, shutdown).instrument(span).await
}

/// A member's life as its steps: the Kafka consumer → serve the probes and metrics at
/// once → wait for PostgreSQL (and the schema) → subscribe, with the side tasks (a
/// warning until the topics exist, lag, the Kafka watchdog) → consume until shutdown or
/// a wedged client → commit the last offsets and stop.
async fn run_member(args: ConsumerArgs, mut shutdown: ShutdownSignal) -> Result<()> {
    let topics = args.common.topics();
    let base = crate::kafka::client_config(
        &args.common.kafka_bootstrap_servers,
        &kafka_client_properties(),
    );
    let consumer = Arc::new(create_consumer(&args, &base)?);
    let metrics = ConsumerMetrics::default();
    let started = Started::default();
    let server = http::serve(&args, &consumer, &metrics, &started, shutdown.clone()).await?;
    tracing::info!(topics = ?topics, "consumer serving probes; waiting for PostgreSQL");
    let Some(db) = crate::db::wait_and_migrate(
        &args.common.database_url,
        args.common.outbox_system.as_deref(),
        &mut shutdown,
    )
    .await?
    else {
        let _ = server.await;
        return Ok(());
    };
    // Kafka need not be up, nor the topics exist yet: librdkafka connects and
    // subscribes when they are; until then this only warns.
    let mut required = topics.clone();
    required.extend(args.dead_letter_topic.iter().cloned());
    tokio::spawn(
        warn_until_topics_exist(base.clone(), required, shutdown.clone()).in_current_span(),
    );
    let topic_refs: Vec<&str> = topics.iter().map(String::as_str).collect();
    consumer
        .subscribe(&topic_refs)
        .kafka("subscribing to the topics")?;
    let dead_letters = match &args.dead_letter_topic {
        Some(topic) => Some((
            topic.clone(),
            crate::kafka::relay_producer(&base, crate::message_size::RELAY_MESSAGE_MAX_BYTES)?,
        )),
        None => None,
    };
    let lag = tokio::spawn(
        track_lag(consumer.clone(), metrics.clone(), shutdown.clone()).in_current_span(),
    );
    let watched = consumer.clone();
    let wedged = crate::kafka_watchdog::start(
        move |timeout| watched.fetch_metadata(None, timeout).map(|_| ()),
        base,
        shutdown.clone(),
    );
    started.set();
    tracing::info!("consumer started");
    let mut member = Member {
        args: &args,
        consumer: &consumer,
        db: Some(db),
        recorder: AckRecorder::new(args.group.clone()),
        metrics: &metrics,
        dead_letters,
        wedged,
    };
    let result = member.consume(&mut shutdown).await;
    stop(&consumer, server, lag, result.is_ok()).await;
    result
}

/// Whether the dead-letter topic refused a message for what it is or for what the topic
/// is (too large, invalid, no such topic, no right to write it), which a retry does not
/// change, rather than for the state of the cluster.
fn dead_letter_refused_for_good(e: &rdkafka::error::KafkaError) -> bool {
    use rdkafka::types::RDKafkaErrorCode as Code;
    matches!(
        e.rdkafka_error_code(),
        Some(
            Code::MessageSizeTooLarge
                | Code::InvalidMessageSize
                | Code::InvalidMessage
                | Code::InvalidRecord
                | Code::MessageBatchTooLarge
                | Code::UnknownTopic
                | Code::UnknownTopicOrPartition
                | Code::TopicAuthorizationFailed
                | Code::InvalidTopic
        )
    )
}

/// The group member's Kafka consumer: offsets stored and committed only by the member,
/// after the acknowledgements are durable.
fn create_consumer(args: &ConsumerArgs, base: &rdkafka::ClientConfig) -> Result<StreamConsumer> {
    let mut config = base.clone();
    config
        .set("group.id", args.kafka_group_id())
        .set("client.id", &args.common.service_id)
        .set("enable.auto.commit", "false")
        .set("enable.auto.offset.store", "false")
        .set("auto.offset.reset", "earliest")
        .set("session.timeout.ms", "10000")
        .set("heartbeat.interval.ms", "2000")
        .set("enable.partition.eof", "false")
        // A topic created after start-up is picked up within seconds, not minutes.
        .set("topic.metadata.refresh.interval.ms", "10000");
    config.create().kafka("creating the Kafka consumer")
}

/// Commits the last offsets and stops the side tasks. After a clean stop the HTTP
/// server drains; a member stopping on its own (a wedged Kafka client) stops it too.
async fn stop(
    consumer: &StreamConsumer,
    server: tokio::task::JoinHandle<std::io::Result<()>>,
    lag: tokio::task::JoinHandle<()>,
    clean: bool,
) {
    if let Err(e) = consumer.commit_consumer_state(CommitMode::Sync) {
        tracing::debug!(error = %e, "final offset commit");
    }
    consumer.unsubscribe();
    if clean {
        let _ = server.await;
    } else {
        server.abort();
    }
    lag.abort();
    tracing::info!("consumer stopped");
}

/// Checks every 10 s until all `topics` exist, warning about what is missing.
async fn warn_until_topics_exist(
    base: rdkafka::ClientConfig,
    topics: Vec<String>,
    mut shutdown: ShutdownSignal,
) {
    loop {
        match crate::kafka::check_topics_async(&base, &topics, Duration::from_secs(10)).await {
            Ok(()) => return,
            Err(e) => {
                tracing::warn!(error = %crate::error_chain(&e), "Kafka not ready for this consumer yet; it consumes as soon as it is")
            }
        }
        tokio::select! {
            _ = tokio::time::sleep(Duration::from_secs(10)) => {}
            _ = shutdown::wait(&mut shutdown) => return,
        }
    }
}

struct Member<'a> {
    args: &'a ConsumerArgs,
    consumer: &'a StreamConsumer,
    db: Option<Client>,
    recorder: AckRecorder,
    metrics: &'a ConsumerMetrics,
    dead_letters: Option<(String, FutureProducer)>,
    /// The watchdog of the Kafka client (`kafka_watchdog`).
    wedged: crate::kafka_watchdog::Watch,
}

enum Outcome {
    Recorded,
    DeadLettered,
    Stopped,
}

impl Member<'_> {
    async fn consume(&mut self, shutdown: &mut ShutdownSignal) -> Result<()> {
        let limits = TransactionLimits {
            linger: Duration::from_millis(self.args.transaction_linger_ms),
            max_messages: self.args.acks_per_transaction,
            max_bytes: TRANSACTION_MAX_BYTES,
        };
        loop {
            let (first, how) = match ack_transaction::queued(self.consumer) {
                Some(m) => (m, First::Queued),
                None => tokio::select! {
                    m = self.consumer.next() => (m, First::Waited),
                    _ = shutdown::wait(shutdown) => return Ok(()),
                    wedged = self.wedged.wedged() => return Err(wedged),
                },
            };
            let first = match first {
                Ok(m) => m,
                Err(e) => {
                    tracing::warn!(error = %e, "Kafka consumer error");
                    tokio::time::sleep(Duration::from_millis(200)).await;
                    continue;
                }
            };
            let gathered = ack_transaction::gather(self.consumer, first, how, &limits).await;
            self.metrics.consumed.inc_by(gathered.len() as u64);
            match self.process(&gathered, shutdown).await? {
                Outcome::Stopped => return Ok(()),
                Outcome::Recorded | Outcome::DeadLettered => self.commit(&gathered),
            }
        }
    }

    /// Acknowledges the messages of one ack transaction. Infrastructure failures (PostgreSQL unreachable, a
    /// connection lost, a serialization failure) are retried for as long as they last:
    /// an outage is not the messages' fault. Other failures are retried up to
    /// `RETRY_MAX_RETRIES`; then each message is tried alone, and only those that fail
    /// on their own go to the dead-letter topic.
    async fn process(
        &mut self,
        gathered: &[OwnedMessage],
        shutdown: &mut ShutdownSignal,
    ) -> Result<Outcome> {
        let parsed = parse_gathered(gathered);
        self.set_aside_foreign(&parsed.foreign).await?;
        let mut retry = Retry::new(self.args);
        let failure = match self
            .record_with_retries(&parsed.acks, &mut retry, shutdown)
            .await
        {
            Ok(outcome) => return Ok(outcome),
            Err(failure) => failure,
        };
        tracing::error!(error = %crate::error_chain(&failure), attempts = retry.attempts, messages = parsed.acks.len(), "a gathered keeps failing: trying each message alone, dead-lettering those that fail on their own");
        let transaction_attempts = retry.attempts;
        let Some(dead) = self.record_each_alone(&parsed, shutdown).await else {
            return Ok(Outcome::Stopped);
        };
        self.give_up(&dead, transaction_attempts).await?;
        self.metrics.retrying.set(0);
        Ok(if dead.is_empty() {
            Outcome::Recorded
        } else {
            Outcome::DeadLettered
        })
    }

    /// Messages that carry no outbox id: logged, and sent to the dead-letter topic when
    /// there is one.
    async fn set_aside_foreign(&self, foreign: &[&OwnedMessage]) -> Result<()> {
        if !foreign.is_empty() {
            // Not outbox messages (no id): nothing to acknowledge, never retriable.
            tracing::warn!(
                count = foreign.len(),
                "messages without a valid {} header",
                headers::MESSAGE_ID
            );
            if self.dead_letters.is_some() {
                // Refused ones have no id to record; `dead_letter` logged them.
                self.dead_letter(foreign, "no valid outbox message id header")
                    .await?;
            }
        }
        Ok(())
    }

    /// Records the ack transaction's acknowledgements in one transaction, retrying as `retry`
    /// counts. Ok: recorded, or stopped by shutdown; Err: the last failure, once the
    /// retries are used up and a dead-letter topic can take the messages (without one it
    /// retries on rather than drop messages).
    async fn record_with_retries(
        &mut self,
        acks: &[Ack],
        retry: &mut Retry,
        shutdown: &mut ShutdownSignal,
    ) -> Result<Outcome> {
        loop {
            match self.record(acks).await {
                Ok(()) => {
                    self.metrics.retrying.set(0);
                    return Ok(Outcome::Recorded);
                }
                Err(e) => {
                    self.metrics.retried.inc_by(acks.len() as u64);
                    if let Some(e) = retry.exhausted(e) {
                        if self.dead_letters.is_some() {
                            return Err(e);
                        }
                        tracing::error!(error = %crate::error_chain(&e), attempt = retry.attempts, "retries exhausted and no DEAD_LETTER_TOPIC: retrying on rather than drop messages");
                    }
                    self.metrics.retrying.set(1);
                    if !retry.wait(shutdown).await {
                        return Ok(Outcome::Stopped);
                    }
                }
            }
        }
    }

    /// Records each acknowledgement alone, retrying infrastructure failures for as long
    /// as they last; returns those that fail on their own, with their message and error
    /// (None: shutdown came first).
    async fn record_each_alone<'m>(
        &mut self,
        parsed: &Parsed<'m>,
        shutdown: &mut ShutdownSignal,
    ) -> Option<Vec<(Ack, &'m OwnedMessage, String)>> {
        let mut dead = Vec::new();
        for (ack, message) in parsed.acks.iter().zip(&parsed.messages) {
            let mut alone = Retry::new(self.args);
            loop {
                match self.record(std::slice::from_ref(ack)).await {
                    Ok(()) => break,
                    Err(e) if is_infrastructure(&e) => {
                        alone.exhausted(e);
                        if !alone.wait(shutdown).await {
                            return None;
                        }
                    }
                    Err(e) => {
                        dead.push((ack.clone(), *message, crate::error_chain(&e)));
                        break;
                    }
                }
            }
        }
        Some(dead)
    }

    /// Sends the messages that failed on their own to the dead-letter topic and records
    /// each in the ledger as dead-lettered, or as abandoned when the topic refused it.
    async fn give_up(
        &self,
        dead: &[(Ack, &OwnedMessage, String)],
        transaction_attempts: i64,
    ) -> Result<()> {
        for (ack, message, error) in dead {
            let refused = self
                .dead_letter(
                    &[message],
                    &format!(
                        "acknowledgement failed {transaction_attempts} times with its ack transaction and again alone: {error}"
                    ),
                )
                .await?;
            let given_up = if refused.is_empty() {
                GivenUp::DeadLettered
            } else {
                GivenUp::Abandoned
            };
            if let Some(db) = self.db.as_ref() {
                if let Err(e) = self
                    .recorder
                    .record_given_up(db, std::slice::from_ref(ack), given_up)
                    .await
                {
                    tracing::warn!(error = %e, ?given_up, id = ack.id, "could not record a message given up on in the ledger");
                }
            }
        }
        Ok(())
    }

    async fn record(&mut self, acks: &[Ack]) -> Result<()> {
        if self.db.as_ref().is_none_or(Client::is_closed) {
            self.db = None;
            self.recorder.new_connection();
            self.db = Some(crate::db::connect(&self.args.common.database_url).await?);
        }
        let Some(db) = self.db.as_mut() else {
            return Err(Error::NoDatabaseSession("record acknowledgements"));
        };
        let outcome = self.recorder.record(db, acks).await?;
        self.metrics.acknowledged.inc_by(outcome.acknowledged);
        self.metrics.duplicates.inc_by(outcome.duplicates);
        self.metrics.out_of_order.inc_by(outcome.out_of_order);
        if outcome.out_of_order > 0 {
            tracing::error!(
                count = outcome.out_of_order,
                "messages arrived out of order for their key"
            );
        }
        Ok(())
    }

    /// Sends `messages` to the dead-letter topic; returns the indexes of those it refused
    /// for good (too large for it, no such topic), logged and counted as abandoned:
    /// stopping on them would stop the group on that partition for ever. Other failures
    /// (Kafka unreachable) end the ack transaction with an error, to be tried again.
    async fn dead_letter(&self, messages: &[&OwnedMessage], reason: &str) -> Result<Vec<usize>> {
        let Some((topic, producer)) = &self.dead_letters else {
            return Ok(Vec::new());
        };
        let mut deliveries = Vec::with_capacity(messages.len());
        for m in messages {
            let mut h = OwnedHeaders::new();
            if let Some(original) = m.headers() {
                for header in original.iter() {
                    h = h.insert(Header {
                        key: header.key,
                        value: header.value,
                    });
                }
            }
            h = h
                .insert(Header {
                    key: headers::DEAD_LETTER_REASON,
                    value: Some(reason),
                })
                .insert(Header {
                    key: headers::DEAD_LETTER_GROUP,
                    value: Some(self.recorder.group()),
                });
            let mut record = FutureRecord::<[u8], [u8]>::to(topic).headers(h);
            if let Some(p) = m.payload() {
                record = record.payload(p);
            }
            if let Some(k) = m.key() {
                record = record.key(k);
            }
            deliveries.push(producer.send(record, Duration::from_secs(30)));
        }
        let mut refused = Vec::new();
        for (i, delivery) in deliveries.into_iter().enumerate() {
            match delivery.await {
                Ok(_) => {
                    self.metrics.dead_lettered.inc();
                }
                Err((e, _)) if dead_letter_refused_for_good(&e) => {
                    let m = messages[i];
                    tracing::error!(
                        error = %e,
                        dead_letter_topic = %topic,
                        topic = m.topic(),
                        partition = m.partition(),
                        offset = m.offset(),
                        bytes = ack_transaction::message_bytes(m),
                        "the dead-letter topic refused a message given up on: recorded as abandoned and skipped"
                    );
                    self.metrics.abandoned.inc();
                    refused.push(i);
                }
                Err((e, _)) => {
                    return Err(e).kafka(format!("dead-lettering to {topic}"));
                }
            }
        }
        Ok(refused)
    }

    fn commit(&self, gathered: &[OwnedMessage]) {
        let mut next: HashMap<(&str, i32), i64> = HashMap::new();
        for m in gathered {
            let entry = next.entry((m.topic(), m.partition())).or_insert(0);
            *entry = (*entry).max(m.offset() + 1);
        }
        let mut list = TopicPartitionList::with_capacity(next.len());
        for ((topic, partition), offset) in next {
            if let Err(e) = list.add_partition_offset(topic, partition, Offset::Offset(offset)) {
                tracing::warn!(error = %e, "building the offset commit");
            }
        }
        if let Err(e) = self.consumer.commit(&list, CommitMode::Async) {
            // After a rebalance the new owner redelivers: duplicates, never loss.
            tracing::warn!(error = %e, "committing offsets");
        }
    }
}

/// An ack transaction split into acknowledgements (with the message each came from) and messages
/// that carry no outbox id.
struct Parsed<'a> {
    acks: Vec<Ack>,
    messages: Vec<&'a OwnedMessage>,
    foreign: Vec<&'a OwnedMessage>,
}

fn parse_gathered(gathered: &[OwnedMessage]) -> Parsed<'_> {
    let mut acks = Vec::with_capacity(gathered.len());
    let mut messages = Vec::with_capacity(gathered.len());
    let mut foreign = Vec::new();
    for m in gathered {
        let mut id = None;
        let mut txid = None;
        let mut created = None;
        if let Some(hs) = m.headers() {
            for h in hs.iter() {
                // The first occurrence is the relay's: it writes its headers before
                // any of the client's, so a later copy cannot override them.
                let value = || h.value.and_then(|v| std::str::from_utf8(v).ok());
                match h.key {
                    headers::MESSAGE_ID if id.is_none() => {
                        id = Some(value().and_then(|v| v.parse::<i64>().ok()))
                    }
                    headers::TRANSACTION_ID if txid.is_none() => {
                        txid = Some(value().and_then(|v| v.parse::<u64>().ok()))
                    }
                    headers::CREATED_AT_MICROS if created.is_none() => {
                        created = Some(value().and_then(|v| v.parse::<i64>().ok()))
                    }
                    _ => {}
                }
            }
        }
        let (id, txid, created) = (id.flatten(), txid.flatten(), created.flatten());
        let Some(id) = id.filter(|id| *id >= 0) else {
            foreign.push(m);
            continue;
        };
        let key_hash = m.key().map(|k| crate::ledger::key_hash(m.topic(), k));
        acks.push(Ack {
            id,
            partition: m.partition(),
            offset: m.offset(),
            key_hash,
            order: txid.map(|t| (t, id)),
            created_at_us: created,
        });
        messages.push(m);
    }
    Parsed {
        acks,
        messages,
        foreign,
    }
}

/// Retry bookkeeping for one acknowledgement: backoff, and attempts counted against
/// `RETRY_MAX_RETRIES` only for failures that are not the infrastructure's.
struct Retry {
    attempts: i64,
    max: i64,
    backoff: Duration,
    max_backoff: Duration,
}

impl Retry {
    fn new(args: &ConsumerArgs) -> Self {
        Retry {
            attempts: 0,
            max: args.retry_max_retries,
            backoff: Duration::from_millis(args.retry_backoff_ms.max(1)),
            max_backoff: Duration::from_millis(
                args.retry_max_backoff_ms.max(args.retry_backoff_ms),
            ),
        }
    }

    /// Counts a failure; returns it when the tries are used up.
    fn exhausted(&mut self, e: Error) -> Option<Error> {
        if is_infrastructure(&e) {
            tracing::warn!(error = %crate::error_chain(&e), retry_in = ?self.backoff, "PostgreSQL unavailable: retrying until it is back (not counted against RETRY_MAX_RETRIES)");
            return None;
        }
        self.attempts += 1;
        if self.max >= 0 && self.attempts > self.max {
            return Some(e);
        }
        tracing::warn!(error = %crate::error_chain(&e), attempt = self.attempts, max_retries = self.max, retry_in = ?self.backoff, "acknowledging failed; retrying");
        None
    }

    /// Sleeps the backoff (doubling it); false when shutdown came first.
    async fn wait(&mut self, shutdown: &mut ShutdownSignal) -> bool {
        let sleep = self.backoff;
        self.backoff = (self.backoff * 2).min(self.max_backoff);
        tokio::select! {
            _ = tokio::time::sleep(sleep) => true,
            _ = shutdown::wait(shutdown) => false,
        }
    }
}

/// Whether a ledger failure is the infrastructure's (PostgreSQL unreachable, the
/// session lost, a transient conflict) rather than something about the messages.
fn is_infrastructure(e: &Error) -> bool {
    match e {
        Error::DbConnect { .. } | Error::DbTimeout { .. } | Error::Pool { .. } => true,
        Error::Db { source, .. } => source.as_db_error().is_none_or(|db| {
            let code = db.code().code();
            // 08 connection, 40 serialization/deadlock, 53 resources, 57 operator
            // intervention (shutdown, crash recovery), 58 system errors, 55P03 lock.
            ["08", "40", "53", "57", "58"]
                .iter()
                .any(|class| code.starts_with(class))
                || code == "55P03"
        }),
        Error::NoDatabaseSession(_) => true,
        _ => false,
    }
}

async fn track_lag(
    consumer: Arc<StreamConsumer>,
    metrics: ConsumerMetrics,
    mut shutdown: ShutdownSignal,
) {
    loop {
        tokio::select! {
            _ = tokio::time::sleep(Duration::from_secs(5)) => {}
            _ = shutdown::wait(&mut shutdown) => return,
        }
        let c = consumer.clone();
        let lag = tokio::task::spawn_blocking(move || -> Option<i64> {
            let positions = c.position().ok()?;
            let mut total = 0;
            for element in positions.elements() {
                let (low, high) = c
                    .fetch_watermarks(element.topic(), element.partition(), Duration::from_secs(2))
                    .ok()?;
                let position = match element.offset() {
                    Offset::Offset(o) => o,
                    _ => low,
                };
                total += (high - position).max(0);
            }
            Some(total)
        })
        .await;
        if let Ok(Some(lag)) = lag {
            metrics.lag.set(lag);
        }
    }
}

#[cfg(test)]
mod tests;
