//! The acknowledgement ledger's write side: a consumer's ack transaction records which
//! messages its group acknowledged, the duplicates, per-key reorderings and dead letters
//! (the layout and the read side: `outbox_core::ledger`).

use std::collections::{HashMap, HashSet};

use hdrhistogram::Histogram;
use outbox_core::error::{DbContext, Error, Result};
use outbox_core::ledger::{
    decode_histogram, encode_histogram, new_histogram, CHUNK_BYTES, CHUNK_IDS,
};
use tokio_postgres::{Client, GenericClient, Statement, ToStatement};

/// Returns each key's latest acknowledged order before the ack transaction (`$2` keys, sorted)
/// and stores the ack transaction's latest (`$3`, `$4`) where it is later. All sub-statements
/// see the same snapshot; the upsert runs after the locking read.
const KEY_ORDER: &str = "WITH old AS (
        SELECT key_hash, txid, id FROM outbox_ack_key_order
        WHERE group_name = $1 AND key_hash = ANY($2)
        ORDER BY key_hash FOR UPDATE),
    stored AS (
        INSERT INTO outbox_ack_key_order AS k (group_name, key_hash, txid, id)
        SELECT $1, * FROM unnest($2::bigint[], $3::bigint[], $4::bigint[])
        ON CONFLICT (group_name, key_hash) DO UPDATE
        SET txid = EXCLUDED.txid, id = EXCLUDED.id, updated_at = now()
        WHERE (EXCLUDED.txid, EXCLUDED.id) > (k.txid, k.id))
    SELECT key_hash, txid, id FROM old";

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Ack {
    /// The outbox message id (Kafka header [`crate::headers::MESSAGE_ID`]).
    pub id: i64,
    /// Where it was read, for the anomaly rows.
    pub partition: i32,
    pub offset: i64,
    /// Hash of topic and key; `None` for unkeyed messages (no order to keep).
    pub key_hash: Option<u64>,
    /// Publication order `(txid, id)`, from the headers.
    pub order: Option<(u64, i64)>,
    /// When the message entered the outbox, microseconds since the epoch.
    pub created_at_us: Option<i64>,
}

/// What recording one ack transaction found.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct RecordOutcome {
    pub acknowledged: u64,
    pub duplicates: u64,
    pub out_of_order: u64,
}

/// Records acknowledgements for one consumer group. The per-key order check reads and
/// writes each key's latest acknowledged order in the ledger, in the ack transaction's
/// transaction: it holds across the group's members and restarts.
#[derive(Debug)]
pub struct AckRecorder {
    group: String,
    known_chunks: HashSet<i64>,
    /// Prepared on the connection in use; forgotten with it (`new_connection`) and
    /// after any failure.
    statements: Option<Statements>,
}

/// The recorder's statements, prepared once per connection: a consumer sent messages
/// one at a time runs several small transactions a second, and PostgreSQL parsed and
/// planned each statement of each one.
#[derive(Debug, Clone)]
struct Statements {
    create: Statement,
    lock: Statement,
    key_order: Statement,
    write: Statement,
    anomalies: Statement,
}

impl Statements {
    async fn prepare(client: &Client) -> Result<Statements> {
        let prepare = |sql: &'static str| async move {
            client
                .prepare(sql)
                .await
                .db("preparing the ledger's statements")
        };
        Ok(Statements {
            create: prepare(CREATE_CHUNKS).await?,
            lock: prepare(LOCK_CHUNKS).await?,
            key_order: prepare(KEY_ORDER).await?,
            write: prepare(WRITE_CHUNKS).await?,
            anomalies: prepare(INSERT_ANOMALIES).await?,
        })
    }
}

/// Creates the empty rows of chunks `$2` (ascending) for group `$1`.
const CREATE_CHUNKS: &str = "INSERT INTO outbox_ack_chunks (group_name, chunk, bits)
     SELECT $1, c, $3 FROM unnest($2::bigint[]) AS c ORDER BY c
     ON CONFLICT DO NOTHING";

/// Locks chunks `$2` of group `$1` (ascending) and reads their bits and histograms.
const LOCK_CHUNKS: &str = "SELECT chunk, bits, latency FROM outbox_ack_chunks
     WHERE group_name = $1 AND chunk = ANY($2)
     ORDER BY chunk FOR UPDATE";

/// Records acknowledgements that were not first deliveries in order.
const INSERT_ANOMALIES: &str =
    "INSERT INTO outbox_ack_anomalies (group_name, id, kind, kafka_partition, kafka_offset)
     SELECT $1, * FROM unnest($2::bigint[], $3::text[], $4::int[], $5::bigint[])";

/// Writes the changed chunks' bits, counts and histograms.
const WRITE_CHUNKS: &str = "UPDATE outbox_ack_chunks c
     SET bits = v.bits, acked = c.acked + v.added,
         latency = COALESCE(v.latency, c.latency), updated_at = now()
     FROM unnest($2::bigint[], $3::bytea[], $4::int[], $5::bytea[])
          AS v(chunk, bits, added, latency)
     WHERE c.group_name = $1 AND c.chunk = v.chunk";

#[derive(Debug)]
struct ChunkState {
    bits: Vec<u8>,
    added: i32,
    latency: Option<Histogram<u64>>,
    latency_changed: bool,
}

impl AckRecorder {
    /// A recorder for `group`.
    pub fn new(group: impl Into<String>) -> Self {
        AckRecorder {
            group: group.into(),
            known_chunks: HashSet::new(),
            statements: None,
        }
    }

    /// The group this recorder writes for.
    pub fn group(&self) -> &str {
        &self.group
    }

    /// Records `acks` (in consumption order) in one transaction: first acknowledgements
    /// set their bit, redeliveries and reorderings become anomaly rows. Nothing is
    /// recorded if it fails, and the order-check state is only updated on success.
    ///
    /// The steps: create missing chunks → lock the chunks → read and store the keys'
    /// acknowledged order → apply the acks (pure) → write the changed chunks and the
    /// anomalies → commit.
    pub async fn record(&mut self, client: &mut Client, acks: &[Ack]) -> Result<RecordOutcome> {
        if acks.is_empty() {
            return Ok(RecordOutcome::default());
        }
        let statements = match &self.statements {
            Some(s) => s.clone(),
            None => Statements::prepare(client).await?,
        };
        let recorded = self.record_with(client, &statements, acks).await;
        // A failure may have been the connection's: prepare again on the next one.
        self.statements = recorded.is_ok().then_some(statements);
        recorded
    }

    /// The connection the recorder is given from now on is a new one: its statements
    /// are prepared again.
    pub fn new_connection(&mut self) {
        self.statements = None;
    }

    async fn record_with(
        &mut self,
        client: &mut Client,
        statements: &Statements,
        acks: &[Ack],
    ) -> Result<RecordOutcome> {
        let chunks = chunks_of(acks);
        self.create_chunks(client, &statements.create, &chunks)
            .await?;
        let recorded = self.in_transaction(client, statements, acks, &chunks).await;
        if recorded.is_err() {
            // Nothing of the ack transaction stays, and the session is out of the transaction for
            // the next ack transaction. Should this fail on a connection still open, the next
            // ack transaction fails inside the aborted transaction and its ROLLBACK ends it; the
            // error that matters is the ack transaction's.
            let _ = client.batch_execute("ROLLBACK").await;
        }
        let outcome = recorded?;
        self.known_chunks.extend(chunks);
        Ok(outcome)
    }

    /// The ack transaction in two round trips, so the chunks stay locked for one
    /// (members of a group take turns on them): begin, lock the chunks, and read and
    /// store the keys' order, pipelined → apply the acks (pure) → write the chunks and
    /// the anomalies and commit, pipelined. Every statement is prepared, so each is
    /// sent whole when first polled and the server runs them in this order. A statement
    /// that fails aborts the transaction (the COMMIT after it rolls back), and the
    /// first failure is the one returned.
    async fn in_transaction(
        &self,
        client: &Client,
        statements: &Statements,
        acks: &[Ack],
        chunks: &[i64],
    ) -> Result<RecordOutcome> {
        let (begun, state, last_by_key) = futures::join!(
            async {
                client
                    .batch_execute("BEGIN")
                    .await
                    .db("starting an ack transaction")
            },
            self.lock_chunks(client, &statements.lock, chunks),
            self.key_order(client, &statements.key_order, acks),
        );
        begun?;
        let mut state = state?;
        let last_by_key = last_by_key?;
        let now_us = chrono::Utc::now().timestamp_micros();
        let (outcome, anomalies) = apply_acks(&self.group, &mut state, &last_by_key, acks, now_us)?;
        let (written, noted, committed) = futures::join!(
            self.write_chunks(client, &statements.write, &state),
            anomalies.insert(client, &statements.anomalies, &self.group),
            async {
                client
                    .batch_execute("COMMIT")
                    .await
                    .db("committing an ack transaction")
            },
        );
        written?;
        noted?;
        committed?;
        Ok(outcome)
    }

    /// Creates the rows of `chunks` this recorder has not seen yet. Outside the locking
    /// transaction: creating empty rows is idempotent, and doing it here keeps lock
    /// order (ascending chunk) deadlock-free.
    async fn create_chunks(
        &self,
        client: &Client,
        statement: &Statement,
        chunks: &[i64],
    ) -> Result<()> {
        let new_chunks: Vec<i64> = chunks
            .iter()
            .copied()
            .filter(|c| !self.known_chunks.contains(c))
            .collect();
        if new_chunks.is_empty() {
            return Ok(());
        }
        let zero = vec![0u8; CHUNK_BYTES];
        client
            .execute(statement, &[&self.group, &new_chunks, &zero])
            .await
            .db("creating ledger chunks")?;
        Ok(())
    }

    /// Locks `chunks` (ascending) and reads their bits and latency histograms.
    async fn lock_chunks<C: GenericClient>(
        &self,
        tx: &C,
        statement: &Statement,
        chunks: &[i64],
    ) -> Result<HashMap<i64, ChunkState>> {
        let rows = tx
            .query(statement, &[&self.group, &chunks])
            .await
            .db("locking ledger chunks")?;
        let mut state: HashMap<i64, ChunkState> = HashMap::with_capacity(rows.len());
        for row in rows {
            let chunk: i64 = row.get(0);
            let bits: Vec<u8> = row.get(1);
            if bits.len() != CHUNK_BYTES {
                return Err(Error::Ledger(format!(
                    "chunk {chunk} has {} bytes, expected {CHUNK_BYTES}",
                    bits.len()
                )));
            }
            let latency: Option<Vec<u8>> = row.get(2);
            let latency = latency.map(|b| decode_histogram(&b)).transpose()?;
            state.insert(
                chunk,
                ChunkState {
                    bits,
                    added: 0,
                    latency,
                    latency_changed: false,
                },
            );
        }
        Ok(state)
    }

    /// Each key's latest acknowledged order before this ack transaction, with the ack transaction's latest
    /// stored in its place, in one statement: the rows are locked (in key order, after
    /// the chunks: one lock order for every member) until commit.
    async fn key_order<C: GenericClient>(
        &self,
        tx: &C,
        statement: &Statement,
        acks: &[Ack],
    ) -> Result<HashMap<u64, (u64, i64)>> {
        let mut latest_in_transaction: HashMap<i64, (u64, i64)> = HashMap::new();
        for ack in acks {
            if let (Some(key), Some(order)) = (ack.key_hash, ack.order) {
                let entry = latest_in_transaction.entry(key as i64).or_insert(order);
                *entry = (*entry).max(order);
            }
        }
        let mut last_by_key: HashMap<u64, (u64, i64)> =
            HashMap::with_capacity(latest_in_transaction.len());
        if latest_in_transaction.is_empty() {
            return Ok(last_by_key);
        }
        let mut keys: Vec<i64> = latest_in_transaction.keys().copied().collect();
        keys.sort_unstable();
        let txids: Vec<i64> = keys
            .iter()
            .map(|k| latest_in_transaction[k].0 as i64)
            .collect();
        let ids: Vec<i64> = keys.iter().map(|k| latest_in_transaction[k].1).collect();
        for row in tx
            .query(statement, &[&self.group, &keys, &txids, &ids])
            .await
            .db("reading and storing the keys' acknowledged order")?
        {
            let key: i64 = row.get(0);
            let txid: i64 = row.get(1);
            last_by_key.insert(key as u64, (txid as u64, row.get(2)));
        }
        Ok(last_by_key)
    }

    /// Writes the chunks `apply_acks` changed.
    async fn write_chunks<C: GenericClient>(
        &self,
        tx: &C,
        statement: &Statement,
        state: &HashMap<i64, ChunkState>,
    ) -> Result<()> {
        let mut changed_chunks = Vec::new();
        let mut changed_bits = Vec::new();
        let mut changed_added = Vec::new();
        let mut changed_latency: Vec<Option<Vec<u8>>> = Vec::new();
        for (chunk, cs) in state {
            if cs.added == 0 {
                continue;
            }
            changed_chunks.push(*chunk);
            changed_bits.push(cs.bits.clone());
            changed_added.push(cs.added);
            changed_latency.push(match (&cs.latency, cs.latency_changed) {
                (Some(h), true) => Some(encode_histogram(h)?),
                _ => None,
            });
        }
        if changed_chunks.is_empty() {
            return Ok(());
        }
        tx.execute(
            statement,
            &[
                &self.group,
                &changed_chunks,
                &changed_bits,
                &changed_added,
                &changed_latency,
            ],
        )
        .await
        .db("updating ledger chunks")?;
        Ok(())
    }

    /// Records messages this group gave up on: sent to the dead-letter topic
    /// (`dead_lettered`), or refused by it too (`abandoned`).
    pub async fn record_given_up(
        &self,
        client: &Client,
        acks: &[Ack],
        kind: GivenUp,
    ) -> Result<()> {
        let mut anomalies = Anomalies::default();
        for ack in acks {
            anomalies.push(ack, kind.kind());
        }
        anomalies
            .insert(client, INSERT_ANOMALIES, &self.group)
            .await
    }
}

/// What became of a message a group gave up on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum GivenUp {
    /// Sent to the dead-letter topic.
    DeadLettered,
    /// The dead-letter topic refused it too: it is nowhere but in the source topic.
    Abandoned,
}

impl GivenUp {
    /// Its `outbox_ack_anomalies.kind`.
    fn kind(self) -> &'static str {
        match self {
            GivenUp::DeadLettered => "dead_lettered",
            GivenUp::Abandoned => "abandoned",
        }
    }
}

/// The ledger chunks `acks` fall in, ascending, each once.
fn chunks_of(acks: &[Ack]) -> Vec<i64> {
    let mut chunks: Vec<i64> = acks.iter().map(|a| a.id.div_euclid(CHUNK_IDS)).collect();
    chunks.sort_unstable();
    chunks.dedup();
    chunks
}

/// Applies `acks` (in consumption order) to the locked chunks (pure): a first
/// acknowledgement sets its bit and records its latency; a second is a duplicate; an
/// ack whose key was already acknowledged at a later publication order (`last_by_key`,
/// then this ack transaction) is out of order. An ack whose chunk `group` did not lock is an error.
fn apply_acks(
    group: &str,
    state: &mut HashMap<i64, ChunkState>,
    last_by_key: &HashMap<u64, (u64, i64)>,
    acks: &[Ack],
    now_us: i64,
) -> Result<(RecordOutcome, Anomalies)> {
    let mut outcome = RecordOutcome::default();
    let mut anomalies = Anomalies::default();
    let mut overlay: HashMap<u64, (u64, i64)> = HashMap::new();
    for ack in acks {
        let chunk = ack.id.div_euclid(CHUNK_IDS);
        let Some(cs) = state.get_mut(&chunk) else {
            return Err(Error::Ledger(format!(
                "chunk {chunk} of group {group} vanished"
            )));
        };
        let bit = ack.id.rem_euclid(CHUNK_IDS) as usize;
        let (byte, mask) = (bit / 8, 1u8 << (bit % 8));
        if cs.bits[byte] & mask != 0 {
            outcome.duplicates += 1;
            anomalies.push(ack, "duplicate");
            continue;
        }
        cs.bits[byte] |= mask;
        cs.added += 1;
        outcome.acknowledged += 1;
        if let Some(created) = ack.created_at_us {
            let histogram = match &mut cs.latency {
                Some(h) => h,
                None => cs.latency.insert(new_histogram()?),
            };
            histogram.saturating_record((now_us - created).max(1) as u64);
            cs.latency_changed = true;
        }
        if let (Some(key), Some(order)) = (ack.key_hash, ack.order) {
            let previous = overlay.get(&key).or_else(|| last_by_key.get(&key)).copied();
            if previous.is_some_and(|p| p > order) {
                outcome.out_of_order += 1;
                anomalies.push(ack, "out_of_order");
            }
            overlay.insert(key, previous.map_or(order, |p| p.max(order)));
        }
    }
    Ok((outcome, anomalies))
}

#[derive(Default)]
struct Anomalies {
    ids: Vec<i64>,
    kinds: Vec<&'static str>,
    partitions: Vec<i32>,
    offsets: Vec<i64>,
}

impl Anomalies {
    fn push(&mut self, ack: &Ack, kind: &'static str) {
        self.ids.push(ack.id);
        self.kinds.push(kind);
        self.partitions.push(ack.partition);
        self.offsets.push(ack.offset);
    }

    async fn insert<C: GenericClient, S: ToStatement + ?Sized + Sync + Send>(
        &self,
        client: &C,
        statement: &S,
        group: &str,
    ) -> Result<()> {
        if self.ids.is_empty() {
            return Ok(());
        }
        client
            .execute(
                statement,
                &[
                    &group,
                    &self.ids,
                    &self.kinds,
                    &self.partitions,
                    &self.offsets,
                ],
            )
            .await
            .db("recording ledger anomalies")?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ack(id: i64, key: Option<u64>, order: Option<(u64, i64)>) -> Ack {
        Ack {
            id,
            partition: 0,
            offset: id,
            key_hash: key,
            order,
            created_at_us: Some(1_000),
        }
    }

    fn locked(chunks: &[i64]) -> HashMap<i64, ChunkState> {
        chunks
            .iter()
            .map(|&c| {
                (
                    c,
                    ChunkState {
                        bits: vec![0; CHUNK_BYTES],
                        added: 0,
                        latency: None,
                        latency_changed: false,
                    },
                )
            })
            .collect()
    }

    #[test]
    fn a_second_ack_of_an_id_is_a_duplicate_and_counted_once() {
        let mut state = locked(&[0]);
        let acks = [ack(5, None, None), ack(6, None, None), ack(5, None, None)];
        let (outcome, anomalies) =
            apply_acks("g", &mut state, &HashMap::new(), &acks, 2_000).expect("applied");
        assert_eq!((outcome.acknowledged, outcome.duplicates), (2, 1));
        assert_eq!(
            (anomalies.ids.clone(), anomalies.kinds.clone()),
            (vec![5], vec!["duplicate"])
        );
        assert_eq!(state[&0].added, 2);
        assert!(state[&0].latency_changed);
    }

    #[test]
    fn a_key_acknowledged_behind_its_latest_order_is_out_of_order() {
        let mut state = locked(&[0]);
        // Key 7 was acknowledged at (10, 100) before this ack transaction.
        let earlier = HashMap::from([(7u64, (10u64, 100i64))]);
        let acks = [
            ack(1, Some(7), Some((11, 1))),
            ack(2, Some(7), Some((9, 2))),
            ack(3, Some(8), Some((1, 3))),
        ];
        let (outcome, anomalies) =
            apply_acks("g", &mut state, &earlier, &acks, 2_000).expect("applied");
        assert_eq!(outcome.out_of_order, 1);
        assert_eq!(anomalies.ids, vec![2]);
        assert_eq!(anomalies.kinds, vec!["out_of_order"]);
    }

    #[test]
    fn an_ack_whose_chunk_was_not_locked_is_an_error_naming_it() {
        let mut state = locked(&[0]);
        let far = CHUNK_IDS * 3 + 1;
        let e = apply_acks("g", &mut state, &HashMap::new(), &[ack(far, None, None)], 1)
            .err()
            .map(|e| e.to_string())
            .unwrap_or_default();
        assert!(e.contains("chunk 3 of group g vanished"), "{e}");
    }
}
