//! Sending a scenario through the SQL contract instead of the producers: the runner as
//! the application, enqueueing in transactions of its own on the system's database
//! (`outbox_enqueue` for one message per transaction, `outbox_enqueue_many` for the
//! messages of a batch), so the same exact verification covers that path.
//!
//! `concurrency` sessions each take the next transaction when their last committed. A
//! transaction PostgreSQL refused (a rule of the contract, a constraint) failed whole
//! and stored nothing. A transaction whose session was lost may or may not have
//! committed: its messages are of unknown fate, and verification then takes the
//! expected ids from the outbox itself, as for an HTTP request whose answer was lost.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Instant;

use tokio_postgres::Client;

use super::body::{messages_json, single_message};
use super::{Counters, MessageShape, ScenarioSend, Sent, WorkerDone};
use crate::measure::ProducerOutcome;

/// The name the database takes among a scenario's producers in status and report.
pub const DATABASE: &str = "database (outbox_enqueue)";

/// Failure reason of messages whose session to the database was lost.
pub const DATABASE_UNREACHABLE: &str = "databaseUnreachable";

/// Sends the scenario's messages through the SQL contract on `database_url`.
pub async fn send_scenario(
    database_url: &str,
    shape: &MessageShape,
    send: &ScenarioSend,
    counters: Arc<Counters>,
) -> Sent {
    let started = Instant::now();
    let total = send.messages.saturating_sub(send.already_accepted);
    let per_transaction = if send.batching {
        send.messages_per_request.max(1) as u64
    } else {
        1
    };
    let transactions = total.div_ceil(per_transaction);
    let sessions = (send.concurrency.max(1) as u64).min(transactions).max(1);
    let next = Arc::new(AtomicU64::new(0));
    let job = Arc::new(Job {
        url: database_url.to_string(),
        shape: shape.clone(),
        scenario: send.name.clone(),
        batching: send.batching,
        first_index: send.already_accepted,
        total,
        per_transaction,
        transactions,
        counters,
    });
    let handles: Vec<_> = (0..sessions)
        .map(|_| tokio::spawn(job.clone().session(next.clone())))
        .collect();
    let mut done = WorkerDone::default();
    for handle in handles {
        match handle.await {
            Ok(session) => done.merge(session),
            Err(e) => tracing::error!(scenario = %send.name, error = %e, "enqueue session failed"),
        }
    }
    done.fail_unreported(total);
    let database = ProducerOutcome {
        producer: DATABASE.to_string(),
        messages: total,
        tally: done.tally,
        duration: started.elapsed(),
        stages: Vec::new(),
    };
    super::sent(
        send,
        vec![database],
        done.ids.finish(),
        done.uncertain,
        started,
    )
}

/// What every session of a scenario shares.
struct Job {
    url: String,
    shape: MessageShape,
    scenario: String,
    batching: bool,
    first_index: u64,
    total: u64,
    per_transaction: u64,
    transactions: u64,
    counters: Arc<Counters>,
}

impl Job {
    /// One session: the next transaction until there are none left.
    async fn session(self: Arc<Self>, next: Arc<AtomicU64>) -> WorkerDone {
        let mut done = WorkerDone::default();
        let mut client: Option<Client> = None;
        loop {
            let transaction = next.fetch_add(1, Ordering::Relaxed);
            if transaction >= self.transactions {
                return done;
            }
            let offset = transaction * self.per_transaction;
            let count = (self.total - offset).min(self.per_transaction);
            if client.as_ref().is_none_or(Client::is_closed) {
                client = outbox_core::db::connect(&self.url).await.ok();
            }
            let Some(session) = client.as_mut() else {
                // No session at all: nothing was sent, so nothing can be stored.
                done.tally.failed(count, DATABASE_UNREACHABLE, None);
                self.counters.failed.fetch_add(count, Ordering::Relaxed);
                continue;
            };
            let sent = Instant::now();
            let result = self
                .enqueue(session, self.first_index + offset, count)
                .await;
            let latency = sent.elapsed();
            self.counters.answered_after(latency);
            match result {
                Ok(ids) if ids.len() as u64 == count => {
                    done.tally.accepted(count, latency);
                    ids.into_iter().for_each(|id| done.ids.push(id));
                    self.counters.accepted.fetch_add(count, Ordering::Relaxed);
                }
                Ok(_) => {
                    tracing::warn!(scenario = %self.scenario, "the database returned fewer ids than messages");
                    done.tally.accepted(count, latency);
                    done.uncertain += count;
                    self.counters.accepted.fetch_add(count, Ordering::Relaxed);
                }
                Err(e) => {
                    let reason = match e.as_db_error() {
                        // Refused: the transaction rolled back, nothing stored.
                        Some(db) => format!("refused {}", db.code().code()),
                        // The session was lost: it may have committed.
                        None => {
                            done.uncertain += count;
                            DATABASE_UNREACHABLE.to_string()
                        }
                    };
                    tracing::warn!(scenario = %self.scenario, %reason, error = %outbox_core::error_chain(&e), "enqueue transaction failed");
                    done.tally.failed(count, &reason, Some(latency));
                    self.counters.failed.fetch_add(count, Ordering::Relaxed);
                }
            }
        }
    }

    /// Messages `first..first + count` in one transaction; their ids.
    async fn enqueue(
        &self,
        client: &mut Client,
        first: u64,
        count: u64,
    ) -> Result<Vec<i64>, tokio_postgres::Error> {
        let tx = client.transaction().await?;
        let ids = if self.batching {
            let messages = messages_json(&self.shape, &self.scenario, first, count);
            tx.query_one("SELECT outbox_enqueue_many($1::text::jsonb)", &[&messages])
                .await?
                .get(0)
        } else {
            let m = single_message(&self.shape, &self.scenario, first);
            let id: i64 = tx
                .query_one(
                    "SELECT outbox_enqueue($1, $2, $3, $4::text::jsonb)",
                    &[&self.shape.topic, &m.key, &m.payload, &m.headers],
                )
                .await?
                .get(0);
            vec![id]
        };
        tx.commit().await?;
        Ok(ids)
    }
}
