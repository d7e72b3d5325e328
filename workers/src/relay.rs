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
//! - No loss: the watermark moves only past batches whose every message Kafka
//!   acknowledged; after a crash the next leader republishes from it (duplicates,
//!   never gaps).

use std::collections::VecDeque;
use std::sync::Arc;
use std::time::Duration;

use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::message::{Header, OwnedHeaders};
use rdkafka::producer::{DeliveryFuture, FutureProducer, FutureRecord};
use tokio::sync::Notify;
use tokio::task::JoinHandle;
use tokio_postgres::{Client, Statement};

use crate::error::{DbContext, Error, Result};
use crate::headers;
use crate::metrics::ProducerMetrics;
use crate::shutdown::{self, ShutdownSignal};

/// Rows confirmed by Kafka up to here: `(txid, id)`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub struct Watermark {
    pub txid: u64,
    pub id: i64,
}

/// How the relay batches.
#[derive(Debug, Clone)]
pub struct RelaySettings {
    /// Rows read and published per batch.
    pub batch_size: i64,
    /// How long an idle relay waits before polling again (a NOTIFY wakes it earlier).
    pub linger: Duration,
    /// Batches handed to Kafka but not yet confirmed.
    pub max_in_flight_batches: usize,
}

impl Default for RelaySettings {
    fn default() -> Self {
        RelaySettings {
            batch_size: 10_000,
            linger: Duration::from_millis(50),
            max_in_flight_batches: 4,
        }
    }
}

// Output columns are aliased so that ORDER BY names the xid8 column, not its text.
const FETCH: &str = "SELECT m.id, m.txid::text AS txid_text, m.topic, m.key, m.payload, m.headers,
        (EXTRACT(EPOCH FROM m.created_at) * 1000000)::bigint AS created_us
    FROM outbox_messages m
    WHERE (m.txid, m.id) > ($1::text::xid8, $2::bigint)
      AND m.txid < pg_snapshot_xmin(pg_current_snapshot())
    ORDER BY m.txid, m.id
    LIMIT $3";

const PERSIST: &str = "UPDATE outbox_relay_state
    SET wm_txid = $1::text::xid8, wm_id = $2, leader = $3,
        published = published + $4, updated_at = now()";

const TRY_LEAD: &str = "SELECT pg_try_advisory_lock(hashtext(current_schema() || '.outbox-relay'))";

/// A relay; run one per producer replica, they elect a leader among themselves.
pub struct Relay {
    database_url: String,
    producer: FutureProducer,
    settings: RelaySettings,
    wake: Arc<Notify>,
    metrics: ProducerMetrics,
    service_id: String,
}

struct InFlight {
    last: Watermark,
    count: u64,
    deliveries: JoinHandle<Result<(), String>>,
}

impl Relay {
    /// A relay publishing through `producer`; `wake` is notified by the ingest path.
    pub fn new(
        database_url: String,
        producer: FutureProducer,
        settings: RelaySettings,
        wake: Arc<Notify>,
        metrics: ProducerMetrics,
        service_id: String,
    ) -> Self {
        Relay {
            database_url,
            producer,
            settings,
            wake,
            metrics,
            service_id,
        }
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
            .batch_execute(&format!("LISTEN {}", crate::outbox::NOTIFY_CHANNEL))
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

    async fn lead(&self, client: &Client, shutdown: &mut ShutdownSignal) -> Result<()> {
        let fetch = client
            .prepare(FETCH)
            .await
            .db("preparing the relay query")?;
        let persist = client
            .prepare(PERSIST)
            .await
            .db("preparing the watermark update")?;
        let row = client
            .query_one("SELECT wm_txid::text, wm_id FROM outbox_relay_state", &[])
            .await
            .db("reading the relay watermark")?;
        let txid: String = row.get(0);
        let start = Watermark {
            txid: txid
                .parse()
                .map_err(|e| Error::Relay(format!("stored watermark txid {txid:?}: {e}")))?,
            id: row.get(1),
        };
        tracing::info!(
            txid = start.txid,
            id = start.id,
            "relay resuming after watermark"
        );
        let mut in_flight = VecDeque::new();
        let result = self
            .publish(client, &fetch, &persist, start, &mut in_flight, shutdown)
            .await;
        // Whatever happened, let what is in flight land before a successor (or our next
        // session) republishes from the watermark, so a key is never overtaken.
        let mut persist_ok = result.is_ok();
        while let Some(mut batch) = in_flight.pop_front() {
            let delivered = (&mut batch.deliveries).await;
            if persist_ok {
                match delivered {
                    Ok(Ok(())) => {
                        if let Err(e) = self
                            .persist(client, &persist, batch.last, batch.count)
                            .await
                        {
                            tracing::warn!(error = %e, "could not store the watermark while stopping");
                            persist_ok = false;
                        }
                    }
                    _ => persist_ok = false,
                }
            }
        }
        result
    }

    async fn publish(
        &self,
        client: &Client,
        fetch: &Statement,
        persist: &Statement,
        mut cursor: Watermark,
        in_flight: &mut VecDeque<InFlight>,
        shutdown: &mut ShutdownSignal,
    ) -> Result<()> {
        loop {
            if *shutdown.borrow() {
                return Ok(());
            }
            while in_flight
                .front()
                .is_some_and(|b| b.deliveries.is_finished())
            {
                self.complete_oldest(client, persist, in_flight).await?;
            }
            let rows = client
                .query(
                    fetch,
                    &[
                        &cursor.txid.to_string(),
                        &cursor.id,
                        &self.settings.batch_size,
                    ],
                )
                .await
                .db("reading outbox rows")?;
            if rows.is_empty() {
                if !in_flight.is_empty() {
                    self.complete_oldest(client, persist, in_flight).await?;
                    continue;
                }
                tokio::select! {
                    _ = self.wake.notified() => {}
                    _ = tokio::time::sleep(self.settings.linger) => {}
                    _ = shutdown::wait(shutdown) => return Ok(()),
                }
                continue;
            }
            let mut deliveries = Vec::with_capacity(rows.len());
            let mut last = cursor;
            for row in &rows {
                let id: i64 = row.get(0);
                let txid: &str = row.get(1);
                let topic: &str = row.get(2);
                let key: Option<&str> = row.get(3);
                let payload: &str = row.get(4);
                let extra: Option<serde_json::Value> = row.get(5);
                let created_us: i64 = row.get(6);
                let id_text = id.to_string();
                let created_text = created_us.to_string();
                let mut kafka_headers = OwnedHeaders::new_with_capacity(3)
                    .insert(Header {
                        key: headers::MESSAGE_ID,
                        value: Some(&id_text),
                    })
                    .insert(Header {
                        key: headers::TRANSACTION_ID,
                        value: Some(txid),
                    })
                    .insert(Header {
                        key: headers::CREATED_AT_MICROS,
                        value: Some(&created_text),
                    });
                if let Some(serde_json::Value::Object(map)) = &extra {
                    for (name, value) in map {
                        if let Some(value) = value.as_str() {
                            kafka_headers = kafka_headers.insert(Header {
                                key: name,
                                value: Some(value),
                            });
                        }
                    }
                }
                let mut record = FutureRecord::<str, str>::to(topic)
                    .payload(payload)
                    .headers(kafka_headers);
                if let Some(key) = key {
                    record = record.key(key);
                }
                loop {
                    match self.producer.send_result(record) {
                        Ok(delivery) => {
                            deliveries.push(delivery);
                            break;
                        }
                        Err((
                            KafkaError::MessageProduction(RDKafkaErrorCode::QueueFull),
                            returned,
                        )) => {
                            // Backpressure: librdkafka's queue is full; let earlier batches land.
                            record = returned;
                            if in_flight.is_empty() {
                                tokio::time::sleep(Duration::from_millis(5)).await;
                            } else {
                                self.complete_oldest(client, persist, in_flight).await?;
                            }
                        }
                        Err((e, _)) => {
                            return Err(Error::Kafka {
                                context: format!("handing message {id} to the producer"),
                                source: e,
                            })
                        }
                    }
                }
                last = Watermark {
                    txid: txid
                        .parse()
                        .map_err(|e| Error::Relay(format!("row {id} has txid {txid:?}: {e}")))?,
                    id,
                };
            }
            in_flight.push_back(InFlight {
                last,
                count: deliveries.len() as u64,
                deliveries: tokio::spawn(await_deliveries(deliveries)),
            });
            cursor = last;
            while in_flight.len() > self.settings.max_in_flight_batches {
                self.complete_oldest(client, persist, in_flight).await?;
            }
        }
    }

    async fn complete_oldest(
        &self,
        client: &Client,
        persist: &Statement,
        in_flight: &mut VecDeque<InFlight>,
    ) -> Result<()> {
        let Some(batch) = in_flight.pop_front() else {
            return Ok(());
        };
        let InFlight {
            last,
            count,
            deliveries,
        } = batch;
        match deliveries.await {
            Ok(Ok(())) => {}
            Ok(Err(e)) => {
                return Err(Error::Relay(format!(
                    "Kafka did not confirm a message: {e}"
                )))
            }
            Err(e) => return Err(Error::Relay(format!("delivery task failed: {e}"))),
        }
        self.persist(client, persist, last, count).await
    }

    async fn persist(
        &self,
        client: &Client,
        persist: &Statement,
        last: Watermark,
        count: u64,
    ) -> Result<()> {
        let delta = count as i64;
        client
            .execute(
                persist,
                &[&last.txid.to_string(), &last.id, &self.service_id, &delta],
            )
            .await
            .db("advancing the relay watermark")?;
        self.metrics.published.inc_by(count);
        self.metrics.relay_batches.inc();
        Ok(())
    }
}

async fn await_deliveries(deliveries: Vec<DeliveryFuture>) -> Result<(), String> {
    for delivery in deliveries {
        match delivery.await {
            Ok(Ok(_)) => {}
            Ok(Err((e, _))) => return Err(e.to_string()),
            Err(_) => return Err("the producer dropped a delivery report".into()),
        }
    }
    Ok(())
}
