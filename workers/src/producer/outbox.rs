//! Writing messages into the outbox: one row per message, bulk COPY for batches.

use std::collections::BTreeMap;

use tokio_postgres::binary_copy::BinaryCopyInWriter;
use tokio_postgres::types::{ToSql, Type};
use tokio_postgres::GenericClient;

use crate::error::{DbContext, Error, Result};
use crate::schema::ID_BLOCK;

/// Why a message was not (or maybe not) stored; each answers the client differently.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// PostgreSQL refused the data itself (SQLSTATE class 22: bad encoding, value out
    /// of range): a retry fails the same way. Nothing was stored.
    #[error("PostgreSQL refused the data ({code}): {message}")]
    Data { code: String, message: String },
    /// Nothing was stored (the statement failed, or the transaction did not commit);
    /// a retry may succeed.
    #[error(transparent)]
    NotStored(Error),
    /// The connection was lost while the write could have committed: the message may or
    /// may not be stored.
    #[error("the outcome is unknown: the connection to PostgreSQL was lost while storing, the message may or may not be stored: {0}")]
    Unknown(Error),
    /// The idempotency key was already used for another request (other messages, or
    /// another count of them).
    #[error("Idempotency-Key `{key}` was used for a different request ({stored} message(s); this one has {sent} and differs): use a new key for a new request")]
    KeyReused {
        key: String,
        stored: usize,
        sent: usize,
    },
}

impl StoreError {
    /// Classifies a failed statement. `may_have_committed` is true for an autocommit
    /// write and for COMMIT: losing the connection there leaves the outcome unknown.
    /// A server error (it has a SQLSTATE) always means the statement did not take effect.
    fn from_db(
        source: tokio_postgres::Error,
        context: &'static str,
        may_have_committed: bool,
    ) -> Self {
        if let Some(db) = source.as_db_error() {
            let code = db.code().code();
            if code.starts_with("22") {
                return StoreError::Data {
                    code: code.to_string(),
                    message: db.message().to_string(),
                };
            }
            return StoreError::NotStored(Error::Db { context, source });
        }
        if may_have_committed {
            StoreError::Unknown(Error::Db { context, source })
        } else {
            StoreError::NotStored(Error::Db { context, source })
        }
    }
}

/// Adds the store classification to a statement's result.
trait StoreContext<T> {
    fn store(self, context: &'static str, may_have_committed: bool) -> Result<T, StoreError>;
}

impl<T> StoreContext<T> for std::result::Result<T, tokio_postgres::Error> {
    fn store(self, context: &'static str, may_have_committed: bool) -> Result<T, StoreError> {
        self.map_err(|e| StoreError::from_db(e, context, may_have_committed))
    }
}

/// The notification channel the relay listens on (immediate path only).
pub const NOTIFY_CHANNEL: &str = "outbox_relay";

/// A message to store.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NewMessage {
    pub topic: String,
    pub key: Option<String>,
    pub payload: String,
    /// Carried to Kafka headers as they are.
    pub headers: Option<BTreeMap<String, String>>,
}

impl NewMessage {
    fn headers_json(&self) -> Option<serde_json::Value> {
        self.headers.as_ref().filter(|h| !h.is_empty()).map(|h| {
            serde_json::Value::Object(
                h.iter()
                    .map(|(k, v)| (k.clone(), v.clone().into()))
                    .collect(),
            )
        })
    }
}

/// Ids for messages stored alone, handed out one by one from a sequence block this
/// process reserved. A message sent alone took a whole block of [`ID_BLOCK`] ids
/// before, so the backlog estimated from ids (the sequence's last value less the relay
/// watermark's id, see `backpressure` and the `outbox_backlog` view) counted up to
/// 128 times the messages waiting, and the 429 bound refused ingest that early. Now
/// ids stay dense: the estimate is off by at most a block per producer, the rest of
/// its current block, which is also all that is lost when the process ends.
#[derive(Debug, Default)]
pub struct SingleIds {
    next: std::sync::Mutex<std::ops::Range<i64>>,
    /// Held by the one request that reserves the next block; the others wait for it
    /// and take from that block instead of each reserving one (a burst of requests
    /// that found the block used up lost most of the ids of all but one).
    reserving: tokio::sync::Mutex<()>,
}

impl SingleIds {
    /// The next id; reserves a new block on `client` when this one is used up.
    pub async fn next(&self, client: &tokio_postgres::Client) -> Result<i64, StoreError> {
        if let Some(id) = self.take() {
            return Ok(id);
        }
        let _reserving = self.reserving.lock().await;
        // Another request may have reserved one while this one waited.
        if let Some(id) = self.take() {
            return Ok(id);
        }
        let start: i64 = client
            .query_one("SELECT nextval('outbox_message_id_seq')", &[])
            .await
            .store("reserving message ids", false)?
            .get(0);
        if let Ok(mut ids) = self.next.lock() {
            *ids = start + 1..start + ID_BLOCK;
        }
        Ok(start)
    }

    fn take(&self) -> Option<i64> {
        self.next.lock().ok().and_then(|mut ids| ids.next())
    }
}

/// Stores one message in a transaction of its own: the immediate path (the caller wakes
/// the relay once it is committed: `producer::waker`). Returns the message id.
pub async fn insert_one(
    client: &deadpool_postgres::ClientWrapper,
    message: &NewMessage,
    ids: &SingleIds,
) -> Result<i64, StoreError> {
    let headers = message.headers_json();
    let statement = client
        .prepare_cached(INSERT_ONE)
        .await
        .store("preparing the insert", false)?;
    let id = ids.next(client).await?;
    let row = client
        .query_one(
            &statement,
            &[
                &message.topic,
                &message.key,
                &message.payload,
                &headers,
                &id,
            ],
        )
        .await
        .store("inserting a message", true)?;
    Ok(row.get(0))
}

/// Opens every session of the request pool and prepares the single-message statements
/// on each, once the schema is in place. Opened on demand instead, the sessions came
/// when a burst of single messages did, each costing PostgreSQL a backend start,
/// authentication and cold caches in the middle of it. Best effort: a session that
/// cannot be opened now is opened by the request that needs it. Returns how many were
/// warmed.
pub async fn warm_pool(pool: &deadpool_postgres::Pool) -> usize {
    let sessions = futures::future::join_all((0..pool.status().max_size).map(|_| async {
        let client = pool.get().await.ok()?;
        for statement in [INSERT_ONE, INSERT_ONE_ONCE] {
            client.prepare_cached(statement).await.ok()?;
        }
        Some(client)
    }))
    .await;
    // All held until here, so that each is a session of its own.
    sessions.iter().flatten().count()
}

/// One message (the immediate path). Prepared once per pooled connection: parsing and
/// planning it for every message was a share of PostgreSQL's work per message sent
/// alone.
const INSERT_ONE: &str = "INSERT INTO outbox_messages (id, topic, key, payload, headers)
     VALUES ($5, $1, $2, $3, $4)
     RETURNING id";

/// One message under its idempotency key (see [`insert_one_once`]), prepared once per
/// pooled connection.
const INSERT_ONE_ONCE: &str = "WITH recorded AS (
         INSERT INTO outbox_idempotency (key, id_blocks, id_count, request_digest)
         VALUES ($1, ARRAY[$7::bigint], 1, $6)
         ON CONFLICT (key) DO NOTHING
         RETURNING id_blocks[1] AS id)
     INSERT INTO outbox_messages (id, topic, key, payload, headers)
     SELECT id, $2, $3, $4, $5 FROM recorded
     RETURNING id";

/// Stores one message at most once per idempotency `key`, in one statement (one round
/// trip, its own transaction): the key and the message are inserted together, or
/// neither when the key is already recorded (then the first request's id is answered).
/// A concurrent request with the same key waits until the first commits. The immediate
/// path with a key took five round trips in an open transaction before, holding back
/// what the relay may read (rows below the oldest running transaction).
pub async fn insert_one_once(
    client: &deadpool_postgres::ClientWrapper,
    message: &NewMessage,
    key: &str,
    ids: &SingleIds,
) -> Result<Stored, StoreError> {
    let headers = message.headers_json();
    let digest = request_digest(std::slice::from_ref(message));
    let statement = client
        .prepare_cached(INSERT_ONE_ONCE)
        .await
        .store("preparing the insert", false)?;
    let id = ids.next(client).await?;
    let row = client
        .query_opt(
            &statement,
            &[
                &key,
                &message.topic,
                &message.key,
                &message.payload,
                &headers,
                &digest,
                &id,
            ],
        )
        .await
        .store("inserting a message under its idempotency key", true)?;
    match row {
        Some(row) => Ok(Stored::New(vec![row.get(0)])),
        None => replay(client, key, 1, &digest).await,
    }
}

/// What [`insert_once`] did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Stored {
    /// The messages were stored with these ids.
    New(Vec<i64>),
    /// An earlier request with the same idempotency key stored them with these ids;
    /// nothing was stored now.
    Replayed(Vec<i64>),
}

/// Stores all `messages` or none in one transaction, at most once per idempotency
/// `key`: the key is recorded in the same transaction, so a retry of a request whose
/// answer was lost finds it and gets the first request's ids. No NOTIFY: the caller
/// wakes its own relay after the commit, and a leader elsewhere finds the batch on its
/// next look at the outbox.
pub async fn insert_once(
    client: &mut tokio_postgres::Client,
    messages: &[NewMessage],
    key: Option<&str>,
) -> Result<Stored, StoreError> {
    let tx = client
        .transaction()
        .await
        .store("starting a batch", false)?;
    let blocks = allocate_blocks(&tx, messages.len())
        .await
        .map_err(StoreError::NotStored)?;
    let ids = expand_blocks(&blocks, messages.len());
    if let Some(key) = key {
        // A concurrent request with the same key waits here until the first commits.
        // The ids are recorded as their blocks (`expand_blocks` gives them back).
        let count = i32::try_from(messages.len()).unwrap_or(i32::MAX);
        let digest = request_digest(messages);
        let recorded = tx
            .execute(
                "INSERT INTO outbox_idempotency (key, id_blocks, id_count, request_digest)
                 VALUES ($1, $2, $3, $4)
                 ON CONFLICT (key) DO NOTHING",
                &[&key, &blocks, &count, &digest],
            )
            .await
            .store("recording the idempotency key", false)?;
        if recorded == 0 {
            drop(tx);
            return replay(client, key, messages.len(), &digest).await;
        }
    }
    let sink = tx
        .copy_in(
            "COPY outbox_messages (id, topic, key, payload, headers) FROM STDIN (FORMAT binary)",
        )
        .await
        .store("starting COPY", false)?;
    let writer = BinaryCopyInWriter::new(
        sink,
        &[Type::INT8, Type::TEXT, Type::TEXT, Type::TEXT, Type::JSONB],
    );
    futures::pin_mut!(writer);
    for (id, message) in ids.iter().zip(messages) {
        let headers = message.headers_json();
        let row: [&(dyn ToSql + Sync); 5] =
            [id, &message.topic, &message.key, &message.payload, &headers];
        writer
            .as_mut()
            .write(&row)
            .await
            .store("writing COPY rows", false)?;
    }
    writer.finish().await.store("finishing COPY", false)?;
    tx.commit().await.store("committing a batch", true)?;
    Ok(Stored::New(ids))
}

/// The ids an earlier request stored under `key`, if it was the same request: the
/// same digest, or for keys recorded before digests, as many messages.
async fn replay(
    client: &tokio_postgres::Client,
    key: &str,
    sent: usize,
    digest: &[u8],
) -> Result<Stored, StoreError> {
    let row = client
        .query_one(
            "SELECT ids, id_blocks, id_count, request_digest FROM outbox_idempotency WHERE key = $1",
            &[&key],
        )
        .await
        .store("reading the idempotency key", false)?;
    // Records from before migration 9 hold every id.
    let ids: Vec<i64> = match row.get::<_, Option<Vec<i64>>>(0) {
        Some(ids) => ids,
        None => {
            let blocks: Vec<i64> = row.get::<_, Option<Vec<i64>>>(1).unwrap_or_default();
            let count = row.get::<_, Option<i32>>(2).unwrap_or(0);
            expand_blocks(&blocks, usize::try_from(count).unwrap_or(0))
        }
    };
    let same_digest = row
        .get::<_, Option<&[u8]>>(3)
        .is_none_or(|stored| stored == digest);
    if ids.len() != sent || !same_digest {
        return Err(StoreError::KeyReused {
            key: key.to_string(),
            stored: ids.len(),
            sent,
        });
    }
    Ok(Stored::Replayed(ids))
}

/// SHA-256 over the messages of a request, each field length-prefixed so that no two
/// different requests share an encoding: count, then per message topic, key (absent
/// and empty differ), payload, and headers in name order.
pub fn request_digest(messages: &[NewMessage]) -> Vec<u8> {
    use sha2::{Digest, Sha256};
    fn field(hash: &mut Sha256, bytes: &[u8]) {
        hash.update((bytes.len() as u64).to_be_bytes());
        hash.update(bytes);
    }
    let mut hash = Sha256::new();
    hash.update((messages.len() as u64).to_be_bytes());
    for m in messages {
        field(&mut hash, m.topic.as_bytes());
        match &m.key {
            Some(key) => {
                hash.update([1]);
                field(&mut hash, key.as_bytes());
            }
            None => hash.update([0]),
        }
        field(&mut hash, m.payload.as_bytes());
        let headers = m.headers.iter().flatten();
        hash.update((headers.clone().count() as u64).to_be_bytes());
        for (name, value) in headers {
            field(&mut hash, name.as_bytes());
            field(&mut hash, value.as_bytes());
        }
    }
    hash.finalize().to_vec()
}

/// Reserves `n` unique ids as `ceil(n / ID_BLOCK)` sequence blocks: their starts,
/// ascending (`expand_blocks` gives the ids).
async fn allocate_blocks<C: GenericClient>(client: &C, n: usize) -> Result<Vec<i64>> {
    let blocks = n.div_ceil(ID_BLOCK as usize) as i64;
    let rows = client
        .query(
            "SELECT nextval('outbox_message_id_seq') FROM generate_series(1, $1::bigint)",
            &[&blocks],
        )
        .await
        .db("allocating message ids")?;
    let mut starts: Vec<i64> = rows.iter().map(|r| r.get(0)).collect();
    starts.sort_unstable();
    Ok(starts)
}

/// The first `n` ids of the blocks starting at `starts`.
fn expand_blocks(starts: &[i64], n: usize) -> Vec<i64> {
    starts
        .iter()
        .flat_map(|&start| start..start + ID_BLOCK)
        .take(n)
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn blocks_expand_to_exactly_the_requested_ids_in_order() {
        let ids = expand_blocks(&[1, 257], 130);
        assert_eq!(ids.len(), 130);
        assert_eq!(ids[0], 1);
        assert_eq!(ids[127], 128);
        assert_eq!(ids[128], 257);
        assert!(ids.windows(2).all(|w| w[0] < w[1]));
    }

    #[test]
    fn a_request_digest_tells_apart_every_difference_in_its_messages() {
        let message = |key: Option<&str>, payload: &str, headers: &[(&str, &str)]| NewMessage {
            topic: "t".into(),
            key: key.map(str::to_string),
            payload: payload.into(),
            headers: Some(
                headers
                    .iter()
                    .map(|(k, v)| (k.to_string(), v.to_string()))
                    .collect(),
            ),
        };
        let base = [message(Some("k"), "p", &[("h", "v")])];
        let same = request_digest(&[message(Some("k"), "p", &[("h", "v")])]);
        assert_eq!(request_digest(&base), same);
        let others = [
            vec![message(None, "p", &[("h", "v")])],
            vec![message(Some(""), "p", &[("h", "v")])],
            vec![message(Some("k"), "q", &[("h", "v")])],
            vec![message(Some("k"), "p", &[("h", "w")])],
            vec![message(Some("k"), "p", &[])],
            // Where one field ends and the next begins is part of the digest.
            vec![message(Some("kp"), "", &[("h", "v")])],
            vec![message(Some("k"), "p", &[("hv", "")])],
            vec![base[0].clone(), base[0].clone()],
        ];
        let mut digests = vec![same];
        for other in &others {
            digests.push(request_digest(other));
        }
        let mut unique = digests.clone();
        unique.sort();
        unique.dedup();
        assert_eq!(
            unique.len(),
            digests.len(),
            "every request has its own digest"
        );
        assert_eq!(digests[0].len(), 32);
    }

    #[test]
    fn empty_header_maps_are_stored_as_null() {
        let mut message = NewMessage {
            topic: "t".into(),
            key: None,
            payload: "p".into(),
            headers: Some(BTreeMap::new()),
        };
        assert_eq!(message.headers_json(), None);
        message.headers = Some(BTreeMap::from([("run".to_string(), "r1".to_string())]));
        assert_eq!(
            message.headers_json(),
            Some(serde_json::json!({"run": "r1"}))
        );
    }
}
