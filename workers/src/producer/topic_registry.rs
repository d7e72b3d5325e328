//! The topics this producer relays, and the largest message each takes, written into
//! `outbox_topics` for the SQL contract (`outbox_enqueue`): an application that
//! enqueues in its own transaction is refused, inside that transaction and naming the
//! field, what ingest refuses over HTTP. Written once the schema is in place, then
//! every 30 s, so a topic limit read afresh from the brokers reaches it too.

use std::collections::HashSet;
use std::sync::Arc;
use std::time::Duration;

use tracing::Instrument;

use crate::error::{DbContext, Result};
use crate::message_size::TopicLimits;
use crate::shutdown::{self, ShutdownSignal};

/// How often the registry is written again.
const EVERY: Duration = Duration::from_secs(30);

/// How long the first write waits for the brokers to tell every topic's limit (until
/// then a topic has the relay's own limit).
const FIRST_WAIT: Duration = Duration::from_secs(10);

/// Upserts every relayed topic with its limit and removes topics no longer relayed.
const REGISTER: &str = "WITH served AS (
        SELECT * FROM unnest($1::text[], $2::integer[], $3::text[]) AS s(topic, max_record_bytes, reason)),
    gone AS (
        DELETE FROM outbox_topics t WHERE NOT EXISTS (SELECT FROM served s WHERE s.topic = t.topic))
    INSERT INTO outbox_topics AS t (topic, max_record_bytes, reason)
    SELECT topic, max_record_bytes, reason FROM served
    ON CONFLICT (topic) DO UPDATE
    SET max_record_bytes = EXCLUDED.max_record_bytes, reason = EXCLUDED.reason, updated_at = now()
    WHERE (t.max_record_bytes, t.reason) IS DISTINCT FROM (EXCLUDED.max_record_bytes, EXCLUDED.reason)";

/// Writes the registry until `shutdown`; a failed write is logged and tried again.
pub fn spawn(
    pool: deadpool_postgres::Pool,
    limits: Arc<TopicLimits>,
    topics: Arc<HashSet<String>>,
    mut shutdown: ShutdownSignal,
) {
    tokio::spawn(
        async move {
            let deadline = tokio::time::Instant::now() + FIRST_WAIT;
            while !topics.iter().all(|t| limits.knows(t)) && tokio::time::Instant::now() < deadline {
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
            loop {
                if let Err(e) = register(&pool, &limits, &topics).await {
                    tracing::warn!(error = %crate::error_chain(&e), "could not write the topics for outbox_enqueue; trying again");
                }
                tokio::select! {
                    _ = tokio::time::sleep(EVERY) => {}
                    _ = shutdown::wait(&mut shutdown) => return,
                }
            }
        }
        .in_current_span(),
    );
}

/// One write of the registry.
pub async fn register(
    pool: &deadpool_postgres::Pool,
    limits: &TopicLimits,
    topics: &HashSet<String>,
) -> Result<()> {
    let mut names: Vec<&String> = topics.iter().collect();
    names.sort();
    let bytes: Vec<i32> = names
        .iter()
        .map(|t| i32::try_from(limits.limit(t).bytes).unwrap_or(i32::MAX))
        .collect();
    let reasons: Vec<String> = names.iter().map(|t| limits.limit(t).reason()).collect();
    let client = pool.get().await.map_err(|source| crate::Error::Pool {
        context: "writing the topics for outbox_enqueue",
        source,
    })?;
    client
        .execute(REGISTER, &[&names, &bytes, &reasons])
        .await
        .db("writing the topics for outbox_enqueue")?;
    Ok(())
}
