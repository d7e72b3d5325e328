//! The relay: publishes outbox rows to Kafka in `(txid, id)` order and advances a
//! watermark once Kafka confirmed them.
//!
//! Ordering and safety:
//! - One leader at a time: each producer replica runs a relay, but only the one holding
//!   a session advisory lock (keyed on the schema) publishes; the others wait for it.
//!   The leader writes the watermark through that same session, so a leader whose
//!   session died can no longer advance it.
//! - Never skip a late commit: the relay reads only rows whose writing transaction id is
//!   below `pg_snapshot_xmin(pg_current_snapshot())`, the oldest transaction still
//!   running. Those transactions have all ended, and every later one gets a larger id,
//!   so no row can ever appear behind the `(txid, id)` watermark.
//! - Per-key order: rows are published in `(txid, id)` order through an idempotent
//!   producer that never times messages out locally, so a key's messages reach their
//!   partition in the order they were written (a request that started after another's
//!   answer has a larger transaction id).
//! - No loss: the watermark moves only past relay reads whose every message Kafka
//!   acknowledged; after a crash the next leader republishes from it (duplicates,
//!   never gaps).

use std::collections::{HashSet, VecDeque};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::producer::{DeliveryFuture, FutureProducer, Producer, PurgeConfig};
use rdkafka::ClientConfig;
use tokio::sync::Notify;
use tokio::task::JoinHandle;
use tokio_postgres::{Client, Statement};
use tracing::Instrument;

use crate::error::{DbContext, Error, Result};
use crate::message_size::{self, TopicLimits};
use crate::metrics::ProducerMetrics;
use crate::shutdown::{self, ShutdownSignal};
use landing::{await_deliveries, land_in_order, over_in_flight_bounds, Delivered, InFlight};
use rows::{next_fetch_rows, row_bytes, Row, FETCH, FIRST_FETCH_ROWS};

mod landing;
mod rows;

/// Rows confirmed by Kafka up to here: `(txid, id)`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Watermark {
    pub txid: u64,
    pub id: i64,
}

/// Worker threads of the relay's own runtime: reading PostgreSQL and awaiting
/// Kafka's acknowledgements overlap, librdkafka's threads do the sending.
const RELAY_RUNTIME_THREADS: usize = 2;

/// How the relay reads rows and hands them to Kafka.
#[derive(Debug, Clone)]
pub struct RelaySettings {
    /// Rows per relay read: read, and published to Kafka, together.
    pub rows_per_read: i64,
    /// How long an idle relay waits before polling again (a NOTIFY wakes it earlier).
    pub linger: Duration,
    /// Relay reads handed to Kafka but not yet confirmed, at most.
    pub max_reads_in_flight: usize,
    /// Memory of the Kafka producer's queue, KiB.
    pub queue_kbytes: usize,
    /// Payload and key bytes read from PostgreSQL per read, at most (a read ends
    /// with the row that reaches it): rows of 100 KB are read a few hundred at a time,
    /// not `rows_per_read` at a time.
    pub fetch_bytes: usize,
}

impl Default for RelaySettings {
    fn default() -> Self {
        RelaySettings {
            rows_per_read: 10_000,
            linger: Duration::from_millis(50),
            max_reads_in_flight: 4,
            queue_kbytes: 65_536,
            fetch_bytes: 32 << 20,
        }
    }
}

const PERSIST: &str = "UPDATE outbox_relay_state
    SET wm_txid = $1::text::xid8, wm_id = $2, leader = $3,
        published = published + $4, updated_at = now()";

const QUARANTINE: &str = "INSERT INTO outbox_quarantine
        (id, txid, topic, key, payload, headers, created_at, error)
    SELECT id, txid, topic, key, payload, headers, created_at, $3 FROM outbox_messages
    WHERE txid = $1::text::xid8 AND id = $2
    ON CONFLICT DO NOTHING";

const TRY_LEAD: &str = "SELECT pg_try_advisory_lock(hashtext(current_schema() || '.outbox-relay'))";

/// Where a relay publishes: the Kafka client settings, the topics it may be asked to
/// publish to, and their size limits (shared with ingest).
pub struct RelayTarget {
    pub kafka: ClientConfig,
    pub topics: Vec<String>,
    pub limits: Arc<TopicLimits>,
}

/// A relay; run one per producer replica, they elect a leader among themselves.
pub struct Relay {
    database_url: String,
    kafka: ClientConfig,
    topics: Vec<String>,
    limits: Arc<TopicLimits>,
    settings: RelaySettings,
    wake: Arc<Notify>,
    metrics: ProducerMetrics,
    service_id: String,
    /// Rows whose relay read Kafka refused for good: published alone next time, and
    /// quarantined if refused again.
    suspects: Mutex<HashSet<Watermark>>,
}

/// Error codes that refuse a message for what it is, not for the state of the cluster.
fn refused_for_good(code: RDKafkaErrorCode) -> bool {
    matches!(
        code,
        RDKafkaErrorCode::MessageSizeTooLarge
            | RDKafkaErrorCode::InvalidMessageSize
            | RDKafkaErrorCode::InvalidMessage
            | RDKafkaErrorCode::InvalidRecord
            | RDKafkaErrorCode::MessageBatchTooLarge
    )
}

/// How a single row was handed to Kafka.
enum Handed {
    Queued(DeliveryFuture),
    Refused(String),
}

impl Relay {
    /// A relay publishing through `producer`; `wake` is notified by the ingest path.
    pub fn new(
        database_url: String,
        target: RelayTarget,
        settings: RelaySettings,
        wake: Arc<Notify>,
        metrics: ProducerMetrics,
        service_id: String,
    ) -> Self {
        Relay {
            database_url,
            kafka: target.kafka,
            topics: target.topics,
            limits: target.limits,
            settings,
            wake,
            metrics,
            service_id,
            suspects: Mutex::new(HashSet::new()),
        }
    }

    /// Runs [`Relay::run`] on a runtime of its own, whose threads are named
    /// `outbox-relay` (see `cpu`): the relay's CPU time is then told apart from the
    /// HTTP ingest's, and a burst of requests cannot starve it of the main runtime's
    /// threads. The returned task ends when the relay has stopped.
    pub fn spawn_on_own_runtime(self, shutdown: ShutdownSignal) -> std::io::Result<JoinHandle<()>> {
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(RELAY_RUNTIME_THREADS)
            .thread_name(crate::cpu::RELAY_THREADS)
            .enable_all()
            .build()?;
        let span = tracing::Span::current();
        let (stopped, on_stop) = tokio::sync::oneshot::channel::<()>();
        std::thread::Builder::new()
            .name(crate::cpu::RELAY_THREADS.into())
            .spawn(move || {
                runtime.block_on(self.run(shutdown).instrument(span));
                // Tasks the relay left behind (a watchdog, a connection) get a moment
                // to end; none may hold the process open.
                runtime.shutdown_timeout(Duration::from_secs(5));
                let _ = stopped.send(());
            })?;
        Ok(tokio::spawn(async move {
            let _ = on_stop.await;
        }))
    }

    /// Runs until shutdown: waits for leadership, publishes, and after any error
    /// reconnects and resumes from the stored watermark.
    pub async fn run(self, mut shutdown: ShutdownSignal) {
        let mut backoff = Duration::from_millis(200);
        loop {
            if *shutdown.borrow() {
                break;
            }
            match self.session(&mut shutdown).await {
                Ok(()) => break,
                Err(e) => {
                    self.metrics.relay_errors.inc();
                    tracing::warn!(error = %crate::error_chain(&e), "relay stopped; resuming from the stored watermark");
                    tokio::select! {
                        _ = tokio::time::sleep(backoff) => {}
                        _ = shutdown::wait(&mut shutdown) => break,
                    }
                    backoff = (backoff * 2).min(Duration::from_secs(5));
                }
            }
        }
        tracing::info!("relay stopped");
    }

    async fn session(&self, shutdown: &mut ShutdownSignal) -> Result<()> {
        let client =
            crate::db::connect_with_notifications(&self.database_url, Some(self.wake.clone()))
                .await?;
        client
            .batch_execute(&format!(
                "LISTEN {}",
                crate::producer::outbox::NOTIFY_CHANNEL
            ))
            .await
            .db("listening for new messages")?;
        loop {
            let leader: bool = client
                .query_one(TRY_LEAD, &[])
                .await
                .db("trying for relay leadership")?
                .get(0);
            if leader {
                break;
            }
            tokio::select! {
                _ = tokio::time::sleep(Duration::from_secs(1)) => {}
                _ = shutdown::wait(shutdown) => return Ok(()),
            }
        }
        tracing::info!("relay leadership acquired");
        self.metrics.relay_leader.set(1);
        let result = self.lead(&client, shutdown).await;
        self.metrics.relay_leader.set(0);
        result
    }

    /// One leadership session as its steps: the topics and their size limits → the
    /// Kafka producer → the prepared statements → the stored watermark → publish until
    /// shutdown, an error or a wedged Kafka client → let what is in flight land.
    async fn lead(&self, client: &Client, shutdown: &mut ShutdownSignal) -> Result<()> {
        let record_batch_bytes = self.topic_limits().await?;
        let mut kafka = self.kafka.clone();
        kafka.set(
            "queue.buffering.max.kbytes",
            self.settings.queue_kbytes.to_string(),
        );
        let producer = crate::kafka::relay_producer(&kafka, record_batch_bytes)?;
        let fetch = client
            .prepare(FETCH)
            .await
            .db("preparing the relay query")?;
        let statements = Statements {
            persist: client
                .prepare(PERSIST)
                .await
                .db("preparing the watermark update")?,
            quarantine: client
                .prepare(QUARANTINE)
                .await
                .db("preparing the quarantine insert")?,
        };
        let start = stored_watermark(client).await?;
        tracing::info!(
            txid = start.txid,
            id = start.id,
            record_batch_bytes,
            "relay resuming after watermark"
        );
        let mut in_flight = VecDeque::new();
        let session = Session {
            client,
            producer: &producer,
            statements: &statements,
        };
        // A producer client wedged after a broker restart (see `kafka_watchdog`) would hold
        // its reads forever: purged, they fail, and the next session republishes them
        // from the watermark with a new client.
        let watched = producer.clone();
        let mut watch = crate::kafka_watchdog::start(
            move |timeout| watched.client().fetch_metadata(None, timeout).map(|_| ()),
            kafka.clone(),
            shutdown.clone(),
        );
        let result = tokio::select! {
            result = self.publish(&session, &fetch, start, &mut in_flight, shutdown) => result,
            e = watch.wedged() => {
                tracing::error!(error = %e, reads = in_flight.len(), "the relay's Kafka client is wedged; dropping what it holds and starting again from the watermark");
                producer.purge(PurgeConfig::default().queue().inflight());
                Err(e)
            }
        };
        drop(watch);
        self.land(&session, in_flight, result.is_ok()).await;
        result
    }

    /// Waits for Kafka and the topics (the error says which is missing; ingest goes on
    /// filling the outbox), then reads the topics' size limits afresh: the largest Kafka
    /// record batch the smallest topic takes. Rows larger than their topic takes are
    /// quarantined.
    async fn topic_limits(&self) -> Result<usize> {
        crate::kafka::check_topics_async(&self.kafka, &self.topics, Duration::from_secs(10))
            .await?;
        if let Err(e) = self.limits.refresh(&self.kafka, &self.topics).await {
            tracing::warn!(error = %crate::error_chain(&e), "could not read the topics' max.message.bytes; using the relay's own limit");
        }
        Ok(self
            .limits
            .smallest_topic_limit()
            .map_or(message_size::RELAY_MESSAGE_MAX_BYTES, |t| {
                t.saturating_sub(message_size::RECORD_OVERHEAD)
            })
            .clamp(1, message_size::RELAY_MESSAGE_MAX_BYTES))
    }

    /// Whatever ended the session, lets what is in flight land before a successor (or
    /// the next session) republishes from the watermark, so a key is never overtaken.
    /// The watermark moves past what landed, in order, while every write succeeds.
    async fn land(&self, session: &Session<'_>, mut in_flight: VecDeque<InFlight>, ok: bool) {
        let mut persist = ok;
        while !in_flight.is_empty() {
            if persist {
                if let Err(e) = self.complete_oldest(session, &mut in_flight).await {
                    tracing::warn!(error = %e, "while stopping: the watermark stays before what did not land");
                    persist = false;
                }
            } else if let Some(read) = in_flight.pop_front() {
                let _ = read.deliveries.await;
            }
        }
    }

    async fn publish(
        &self,
        session: &Session<'_>,
        fetch: &Statement,
        mut cursor: Watermark,
        in_flight: &mut VecDeque<InFlight>,
        shutdown: &mut ShutdownSignal,
    ) -> Result<()> {
        // Rows asked for per read: a first read of a thousand finds out how large the
        // rows are, later reads ask for as many as `fetch_bytes` holds.
        let mut limit = self.settings.rows_per_read.min(FIRST_FETCH_ROWS);
        loop {
            if *shutdown.borrow() {
                return Ok(());
            }
            self.complete_finished(session, in_flight).await?;
            let rows = self.fetch(session, fetch, cursor, &mut limit).await?;
            if rows.is_empty() {
                match self.idle(in_flight, shutdown).await {
                    Idle::Landed(oldest) => self.complete(session, in_flight, vec![oldest]).await?,
                    Idle::Look => {}
                    Idle::Stop => return Ok(()),
                }
                continue;
            }
            cursor = self.send_rows(session, &rows, cursor, in_flight).await?;
            while over_in_flight_bounds(in_flight, &self.settings) {
                self.complete_oldest(session, in_flight).await?;
            }
        }
    }

    /// With nothing new to read: waits until the oldest read in flight lands, new rows
    /// are announced, or the linger passes, whichever comes first. Waiting for Kafka
    /// alone would hold messages sent one at a time behind the confirmation of those
    /// before them: a round trip to the broker each, under load tens of milliseconds.
    async fn idle(
        &self,
        in_flight: &mut VecDeque<InFlight>,
        shutdown: &mut ShutdownSignal,
    ) -> Idle {
        let oldest = async {
            match in_flight.front_mut() {
                Some(read) => (&mut read.deliveries).await,
                None => std::future::pending().await,
            }
        };
        let outcome = tokio::select! {
            outcome = oldest => outcome,
            _ = self.wake.notified() => return Idle::Look,
            _ = tokio::time::sleep(self.settings.linger) => return Idle::Look,
            _ = shutdown::wait(shutdown) => return Idle::Stop,
        };
        match in_flight.pop_front() {
            Some(read) => Idle::Landed((read.last, read.count, outcome)),
            None => Idle::Look,
        }
    }

    /// Hands `rows` (read after `cursor`) to Kafka as one relay read to confirm: rows too
    /// large for their topic are quarantined, a row refused once is sent alone. Returns
    /// the cursor after them.
    async fn send_rows(
        &self,
        session: &Session<'_>,
        rows: &[tokio_postgres::Row],
        mut cursor: Watermark,
        in_flight: &mut VecDeque<InFlight>,
    ) -> Result<Watermark> {
        let mut deliveries = Vec::with_capacity(rows.len());
        let mut handed_bytes = 0usize;
        let mut last = cursor;
        // Read once per relay read, not locked per row; empty but after a refusal.
        let suspects = self.suspects.lock().map(|s| s.clone()).unwrap_or_default();
        for row in rows {
            let mut row = Row::read(row)?;
            if !self.topics.iter().any(|t| t == row.topic) {
                // Written straight into the table: Kafka might refuse it forever (no
                // such topic) or take it into a topic no group of this system reads.
                let reason = format!(
                    "topic `{}` is not one this system relays to ({})",
                    row.topic,
                    self.topics
                        .iter()
                        .map(|t| format!("`{t}`"))
                        .collect::<Vec<_>>()
                        .join(", ")
                );
                self.quarantine(session, row.at, &reason).await?;
                last = row.at;
                continue;
            }
            let limit = self.limits.limit(row.topic);
            if row.size > limit.bytes {
                let reason = format!(
                    "message too large: {} bytes (payload, key and headers) and topic `{}` takes at most {} bytes ({})",
                    row.size, row.topic, limit.bytes, limit.reason()
                );
                self.quarantine(session, row.at, &reason).await?;
                last = row.at;
                continue;
            }
            if !suspects.is_empty() && suspects.contains(&row.at) {
                // Refused for good once with its read: find out whether it is this
                // message, without anything else in flight.
                let handed = std::mem::take(&mut handed_bytes);
                self.seal(
                    std::mem::take(&mut deliveries),
                    handed,
                    cursor,
                    last,
                    in_flight,
                );
                while !in_flight.is_empty() {
                    self.complete_oldest(session, in_flight).await?;
                }
                self.publish_alone(session, &mut row).await?;
                last = row.at;
                cursor = row.at;
                continue;
            }
            match self.hand(session, &mut row, in_flight).await? {
                Handed::Queued(delivery) => {
                    handed_bytes += row.size;
                    deliveries.push((row.at, delivery));
                }
                Handed::Refused(reason) => self.quarantine(session, row.at, &reason).await?,
            }
            last = row.at;
        }
        self.seal(deliveries, handed_bytes, cursor, last, in_flight);
        Ok(last)
    }

    /// Reads up to `limit` rows after `cursor`, stopping early once the rows read hold
    /// `fetch_bytes` (the rest of the answer is discarded unread), and sets `limit`
    /// for the next read from the size of these rows.
    async fn fetch(
        &self,
        session: &Session<'_>,
        fetch: &Statement,
        cursor: Watermark,
        limit: &mut i64,
    ) -> Result<Vec<tokio_postgres::Row>> {
        use futures::TryStreamExt;
        let txid = cursor.txid.to_string();
        let params: [&(dyn tokio_postgres::types::ToSql + Sync); 3] = [&txid, &cursor.id, &*limit];
        let stream = session
            .client
            .query_raw(fetch, params)
            .await
            .db("reading outbox rows")?;
        futures::pin_mut!(stream);
        let mut rows = Vec::new();
        let mut bytes = 0usize;
        while let Some(row) = stream.try_next().await.db("reading outbox rows")? {
            bytes += row_bytes(&row);
            rows.push(row);
            if bytes >= self.settings.fetch_bytes {
                break;
            }
        }
        if !rows.is_empty() {
            *limit = next_fetch_rows(
                bytes / rows.len(),
                self.settings.fetch_bytes,
                self.settings.rows_per_read,
            );
        }
        Ok(rows)
    }

    /// Queues the rows handed to Kafka since `from` as one read to confirm, up to
    /// `last` (which also covers quarantined rows).
    fn seal(
        &self,
        deliveries: Vec<(Watermark, DeliveryFuture)>,
        bytes: usize,
        from: Watermark,
        last: Watermark,
        in_flight: &mut VecDeque<InFlight>,
    ) {
        if last == from {
            return;
        }
        in_flight.push_back(InFlight {
            last,
            count: deliveries.len() as u64,
            bytes,
            deliveries: tokio::spawn(await_deliveries(deliveries)),
        });
    }

    /// Hands one row to the producer, waiting for room in its queue.
    async fn hand(
        &self,
        session: &Session<'_>,
        row: &mut Row<'_>,
        in_flight: &mut VecDeque<InFlight>,
    ) -> Result<Handed> {
        let mut record = row.record();
        loop {
            match session.producer.send_result(record) {
                Ok(delivery) => return Ok(Handed::Queued(delivery)),
                Err((KafkaError::MessageProduction(RDKafkaErrorCode::QueueFull), returned)) => {
                    // Backpressure: librdkafka's queue is full; let earlier reads land.
                    record = returned;
                    if in_flight.is_empty() {
                        tokio::time::sleep(Duration::from_millis(5)).await;
                    } else {
                        self.complete_oldest(session, in_flight).await?;
                    }
                }
                Err((e, _)) if e.rdkafka_error_code().is_some_and(refused_for_good) => {
                    return Ok(Handed::Refused(format!(
                        "the Kafka producer refused it: {e}"
                    )))
                }
                Err((e, _)) => {
                    return Err(Error::Kafka {
                        context: format!("handing message {} to the producer", row.at.id),
                        source: e,
                    })
                }
            }
        }
    }

    /// Publishes one row with nothing else in flight; quarantines it when Kafka
    /// refuses it for good.
    async fn publish_alone(&self, session: &Session<'_>, row: &mut Row<'_>) -> Result<()> {
        let mut none = VecDeque::new();
        let outcome = match self.hand(session, row, &mut none).await? {
            Handed::Refused(reason) => Err(reason),
            Handed::Queued(delivery) => match delivery.await {
                Ok(Ok(_)) => Ok(()),
                Ok(Err((e, _))) if e.rdkafka_error_code().is_some_and(refused_for_good) => {
                    Err(format!("Kafka refused it: {e}"))
                }
                Ok(Err((e, _))) => {
                    return Err(Error::Relay(format!(
                        "Kafka did not confirm message {}: {e}",
                        row.at.id
                    )))
                }
                Err(_) => {
                    return Err(Error::Relay(
                        "the producer dropped a delivery report".into(),
                    ))
                }
            },
        };
        if let Ok(mut suspects) = self.suspects.lock() {
            suspects.remove(&row.at);
        }
        match outcome {
            Ok(()) => self.persist(session, row.at, 1, 1).await,
            Err(reason) => {
                self.quarantine(session, row.at, &reason).await?;
                self.persist(session, row.at, 0, 1).await
            }
        }
    }

    /// Copies a row the relay cannot publish (Kafka refused it for good, or its topic is
    /// not one this system relays to) into `outbox_quarantine` with the reason; the
    /// watermark then moves past it like past a published row.
    async fn quarantine(&self, session: &Session<'_>, at: Watermark, reason: &str) -> Result<()> {
        session
            .client
            .execute(
                &session.statements.quarantine,
                &[&at.txid.to_string(), &at.id, &reason],
            )
            .await
            .db("quarantining a row the relay cannot publish")?;
        self.metrics.quarantined.inc();
        tracing::error!(id = at.id, txid = at.txid, %reason, "quarantined an outbox row the relay cannot publish; delivery goes on");
        Ok(())
    }

    /// Waits for the oldest read in flight, then lands it with those after it that
    /// are in too.
    async fn complete_oldest(
        &self,
        session: &Session<'_>,
        in_flight: &mut VecDeque<InFlight>,
    ) -> Result<()> {
        let mut finished = Vec::new();
        if let Some(oldest) = in_flight.pop_front() {
            finished.push((oldest.last, oldest.count, oldest.deliveries.await));
        }
        self.complete(session, in_flight, finished).await
    }

    /// Lands the reads at the front whose deliveries are all in, without waiting.
    async fn complete_finished(
        &self,
        session: &Session<'_>,
        in_flight: &mut VecDeque<InFlight>,
    ) -> Result<()> {
        self.complete(session, in_flight, Vec::new()).await
    }

    /// Lands `finished` and every read after it whose deliveries are all in, and
    /// stores the watermark once after the last of them: reads of a few messages
    /// each (messages sent one at a time) otherwise cost a watermark transaction each.
    /// A failed read stops there, with the watermark stored after those before it.
    async fn complete(
        &self,
        session: &Session<'_>,
        in_flight: &mut VecDeque<InFlight>,
        mut finished: Vec<(Watermark, u64, Delivered)>,
    ) -> Result<()> {
        while in_flight
            .front()
            .is_some_and(|b| b.deliveries.is_finished())
        {
            if let Some(read) = in_flight.pop_front() {
                finished.push((read.last, read.count, read.deliveries.await));
            }
        }
        let (landed, failed) = land_in_order(finished);
        if let Some(landed) = landed {
            self.persist(session, landed.last, landed.count, landed.reads)
                .await?;
        }
        match failed {
            Some(outcome) => self.confirmed(outcome),
            None => Ok(()),
        }
    }

    /// A read's deliveries as the session's result: a message Kafka refused for good
    /// becomes a suspect (published alone next, quarantined if refused again).
    fn confirmed(&self, outcome: Delivered) -> Result<()> {
        match outcome {
            Ok(Ok(())) => Ok(()),
            Ok(Err(failure)) => {
                if failure.for_good {
                    if let Ok(mut suspects) = self.suspects.lock() {
                        suspects.insert(failure.at);
                    }
                    return Err(Error::Relay(format!(
                        "Kafka refused message {} for good ({}); it is published alone next and quarantined if refused again",
                        failure.at.id, failure.error
                    )));
                }
                Err(Error::Relay(format!(
                    "Kafka did not confirm message {}: {}",
                    failure.at.id, failure.error
                )))
            }
            Err(e) => Err(Error::Relay(format!("delivery task failed: {e}"))),
        }
    }

    async fn persist(
        &self,
        session: &Session<'_>,
        last: Watermark,
        count: u64,
        reads: u64,
    ) -> Result<()> {
        let delta = count as i64;
        session
            .client
            .execute(
                &session.statements.persist,
                &[&last.txid.to_string(), &last.id, &self.service_id, &delta],
            )
            .await
            .db("advancing the relay watermark")?;
        self.metrics.published.inc_by(count);
        self.metrics.relay_reads.inc_by(reads);
        Ok(())
    }
}

/// What ended an idle relay's wait.
enum Idle {
    /// The oldest read in flight finished: land it.
    Landed((Watermark, u64, Delivered)),
    /// New rows may be there (announced, or the linger passed).
    Look,
    /// Shutdown.
    Stop,
}

/// What a leading session publishes with.
struct Session<'a> {
    client: &'a Client,
    producer: &'a FutureProducer,
    statements: &'a Statements,
}

struct Statements {
    persist: Statement,
    quarantine: Statement,
}

/// The watermark the last session stored.
async fn stored_watermark(client: &Client) -> Result<Watermark> {
    let row = client
        .query_one("SELECT wm_txid::text, wm_id FROM outbox_relay_state", &[])
        .await
        .db("reading the relay watermark")?;
    let txid: String = row.get(0);
    Ok(Watermark {
        txid: txid
            .parse()
            .map_err(|e| Error::Relay(format!("stored watermark txid {txid:?}: {e}")))?,
        id: row.get(1),
    })
}

#[cfg(test)]
#[path = "relay_tests.rs"]
mod tests;
