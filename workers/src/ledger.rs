//! The acknowledgement ledger: which messages each consumer group acknowledged, how
//! often they were redelivered, and whether a key's messages arrived in order.
//!
//! Layout, cheap at 10,000,000 messages x 3 groups:
//! - `outbox_ack_chunks`: per group, one row per 8,192 consecutive message ids, holding a
//!   1 KiB bitmap of the acknowledged ids, their count and an HdrHistogram of end-to-end
//!   latency (outbox write to acknowledgement). 10M ids make ~1,221 rows (1.2 MiB) per
//!   group. A consumer batch locks its few chunk rows, ORs its ids in and commits, so
//!   recording an id twice is impossible: the second time it is a duplicate.
//! - `outbox_ack_anomalies`: one row per rare event (a redelivery, a per-key reordering,
//!   a dead letter), so they can be counted exactly for any set of ids.
//! - `outbox_ack_key_order`: per group and key, the latest publication order
//!   acknowledged, read and written in each batch's transaction, so the order check
//!   holds across the group's members and restarts (and keys that moved partition).
//!
//! A report for a set of ids reads those chunk rows and anomalies and counts bits, in
//! milliseconds for 10M ids.

use std::collections::{HashMap, HashSet};

use hdrhistogram::serialization::{Deserializer, Serializer, V2Serializer};
use hdrhistogram::Histogram;
use serde::Serialize;
use tokio_postgres::{Client, GenericClient, Statement, ToStatement};

use crate::error::{DbContext, Error, Result};

/// Message ids per chunk row.
pub const CHUNK_IDS: i64 = 8192;
const CHUNK_BYTES: usize = (CHUNK_IDS / 8) as usize;
/// Largest end-to-end latency the histograms hold (one day, in microseconds).
const MAX_LATENCY_US: u64 = 86_400_000_000;

/// Returns each key's latest acknowledged order before the batch (`$2` keys, sorted)
/// and stores the batch's latest (`$3`, `$4`) where it is later. All sub-statements
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

/// Connects and applies the schema migrations: what the load-test runner calls first.
pub async fn connect_and_migrate(database_url: &str) -> Result<Client> {
    let mut client = crate::db::connect(database_url).await?;
    crate::schema::migrate(&mut client).await?;
    Ok(client)
}

/// The per-key order ledger's key of a message: SipHash-1-3 with zero keys over the
/// topic's bytes, a 0xFF byte, the key's length as 8 little-endian bytes and the key's
/// bytes. The definition is fixed here because the value is stored in PostgreSQL: std's
/// `DefaultHasher`, which computed exactly this until now (so ledgers written before
/// keep their meaning), may change its algorithm with any Rust release, and consumers
/// built by two compilers would then track one key under two hashes.
pub fn key_hash(topic: &str, key: &[u8]) -> u64 {
    use std::hash::Hasher;
    let mut hasher = siphasher::sip::SipHasher13::new_with_keys(0, 0);
    hasher.write(topic.as_bytes());
    hasher.write(&[0xff]);
    hasher.write(&(key.len() as u64).to_le_bytes());
    hasher.write(key);
    hasher.finish()
}

/// One consumed message to acknowledge.
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

/// What recording one batch found.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct RecordOutcome {
    pub acknowledged: u64,
    pub duplicates: u64,
    pub out_of_order: u64,
}

/// Records acknowledgements for one consumer group. The per-key order check reads and
/// writes each key's latest acknowledged order in the ledger, in the batch's
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
            // Nothing of the batch stays, and the session is out of the transaction for
            // the next batch. Should this fail on a connection still open, the next
            // batch fails inside the aborted transaction and its ROLLBACK ends it; the
            // error that matters is the batch's.
            let _ = client.batch_execute("ROLLBACK").await;
        }
        let outcome = recorded?;
        self.known_chunks.extend(chunks);
        Ok(outcome)
    }

    /// The batch's transaction in two round trips, so the chunks stay locked for one
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
                    .db("starting an acknowledgement batch")
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
                    .db("committing an acknowledgement batch")
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

    /// Each key's latest acknowledged order before this batch, with the batch's latest
    /// stored in its place, in one statement: the rows are locked (in key order, after
    /// the chunks: one lock order for every member) until commit.
    async fn key_order<C: GenericClient>(
        &self,
        tx: &C,
        statement: &Statement,
        acks: &[Ack],
    ) -> Result<HashMap<u64, (u64, i64)>> {
        let mut batch_max: HashMap<i64, (u64, i64)> = HashMap::new();
        for ack in acks {
            if let (Some(key), Some(order)) = (ack.key_hash, ack.order) {
                let entry = batch_max.entry(key as i64).or_insert(order);
                *entry = (*entry).max(order);
            }
        }
        let mut last_by_key: HashMap<u64, (u64, i64)> = HashMap::with_capacity(batch_max.len());
        if batch_max.is_empty() {
            return Ok(last_by_key);
        }
        let mut keys: Vec<i64> = batch_max.keys().copied().collect();
        keys.sort_unstable();
        let txids: Vec<i64> = keys.iter().map(|k| batch_max[k].0 as i64).collect();
        let ids: Vec<i64> = keys.iter().map(|k| batch_max[k].1).collect();
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
/// then this batch) is out of order. An ack whose chunk `group` did not lock is an error.
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

fn new_histogram() -> Result<Histogram<u64>> {
    Histogram::new_with_bounds(1, MAX_LATENCY_US, 2)
        .map_err(|e| Error::Ledger(format!("creating a histogram: {e}")))
}

fn encode_histogram(h: &Histogram<u64>) -> Result<Vec<u8>> {
    let mut out = Vec::new();
    V2Serializer::new()
        .serialize(h, &mut out)
        .map_err(|e| Error::Ledger(format!("encoding a latency histogram: {e:?}")))?;
    Ok(out)
}

fn decode_histogram(bytes: &[u8]) -> Result<Histogram<u64>> {
    Deserializer::new()
        .deserialize(&mut &bytes[..])
        .map_err(|e| Error::Ledger(format!("decoding a latency histogram: {e:?}")))
}

/// A set of message ids as sorted, disjoint, inclusive ranges. The send endpoints hand
/// out ids in blocks, so a run of 10M messages is a few tens of thousands of ranges.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct IdSet {
    ranges: Vec<(i64, i64)>,
}

impl IdSet {
    /// The set of these ids (any order, repeats ignored).
    pub fn from_ids(ids: impl IntoIterator<Item = i64>) -> Self {
        Self::from_ranges(ids.into_iter().map(|id| (id, id)))
    }

    /// The union of these inclusive ranges (any order, overlaps merged; `(a, b)` with
    /// `b < a` ignored).
    pub fn from_ranges(ranges: impl IntoIterator<Item = (i64, i64)>) -> Self {
        let mut all: Vec<(i64, i64)> = ranges.into_iter().filter(|(a, b)| a <= b).collect();
        all.sort_unstable();
        let mut merged: Vec<(i64, i64)> = Vec::with_capacity(all.len());
        for (a, b) in all {
            match merged.last_mut() {
                Some(last) if a <= last.1.saturating_add(1) => last.1 = last.1.max(b),
                _ => merged.push((a, b)),
            }
        }
        IdSet { ranges: merged }
    }

    /// Adds other ids.
    pub fn union(&self, other: &IdSet) -> IdSet {
        IdSet::from_ranges(self.ranges.iter().chain(&other.ranges).copied())
    }

    /// How many ids.
    pub fn len(&self) -> u64 {
        self.ranges.iter().map(|(a, b)| (b - a + 1) as u64).sum()
    }

    /// True when there are no ids.
    pub fn is_empty(&self) -> bool {
        self.ranges.is_empty()
    }

    /// Whether `id` is in the set.
    pub fn contains(&self, id: i64) -> bool {
        let i = self.ranges.partition_point(|(_, b)| *b < id);
        self.ranges.get(i).is_some_and(|(a, _)| *a <= id)
    }

    /// The sorted, disjoint ranges.
    pub fn ranges(&self) -> &[(i64, i64)] {
        &self.ranges
    }

    /// Every id, ascending.
    pub fn iter(&self) -> impl Iterator<Item = i64> + '_ {
        self.ranges.iter().flat_map(|(a, b)| *a..=*b)
    }

    /// Whether any id of the set lies in ledger chunk `chunk`.
    pub fn touches_chunk(&self, chunk: i64) -> bool {
        let first = chunk * CHUNK_IDS;
        self.ranges
            .iter()
            .any(|(a, b)| *a < first + CHUNK_IDS && *b >= first)
    }

    fn bounds(&self) -> Option<(i64, i64)> {
        Some((self.ranges.first()?.0, self.ranges.last()?.1))
    }
}

/// End-to-end latency percentiles (outbox write to acknowledgement), in milliseconds.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct LatencySummary {
    pub count: u64,
    pub p50_ms: f64,
    pub p90_ms: f64,
    pub p95_ms: f64,
    pub p99_ms: f64,
    pub p999_ms: f64,
    pub max_ms: f64,
}

/// How one consumer group fared on a set of messages. Exact: every expected id is
/// either acknowledged or missing; duplicates, reorderings and dead letters are counted
/// per delivery.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct GroupReport {
    pub group: String,
    pub expected: u64,
    pub acknowledged: u64,
    pub missing: u64,
    pub duplicates: u64,
    pub out_of_order: u64,
    pub dead_lettered: u64,
    /// Expected messages it gave up on that the dead-letter topic refused too.
    pub abandoned: u64,
    /// Up to 20 missing ids, the smallest first, for investigation.
    pub missing_sample: Vec<i64>,
    /// Latency of the first acknowledgements, from the histograms of the 8,192-id
    /// chunks the set touches (exact when the set covers whole chunks).
    pub latency: Option<LatencySummary>,
}

impl GroupReport {
    /// Every expected message acknowledged, none reordered.
    pub fn is_complete(&self) -> bool {
        self.missing == 0 && self.out_of_order == 0
    }
}

/// Verifies `expected` against what `group` acknowledged.
pub async fn group_report<C: GenericClient>(
    client: &C,
    group: &str,
    expected: &IdSet,
) -> Result<GroupReport> {
    let mut report = GroupReport {
        group: group.to_string(),
        expected: expected.len(),
        acknowledged: 0,
        missing: 0,
        duplicates: 0,
        out_of_order: 0,
        dead_lettered: 0,
        abandoned: 0,
        missing_sample: Vec::new(),
        latency: None,
    };
    let Some((low, high)) = expected.bounds() else {
        return Ok(report);
    };
    let rows = client
        .query(
            "SELECT chunk, bits, latency FROM outbox_ack_chunks
             WHERE group_name = $1 AND chunk BETWEEN $2 AND $3",
            &[
                &group,
                &low.div_euclid(CHUNK_IDS),
                &high.div_euclid(CHUNK_IDS),
            ],
        )
        .await
        .db("reading ledger chunks")?;
    let mut chunks: HashMap<i64, Vec<u8>> = HashMap::with_capacity(rows.len());
    let mut latency: Option<Histogram<u64>> = None;
    for row in rows {
        let chunk: i64 = row.get(0);
        let bits: Vec<u8> = row.get(1);
        let chunk_latency: Option<Vec<u8>> = row.get(2);
        if expected.touches_chunk(chunk) {
            if let Some(bytes) = chunk_latency {
                let h = decode_histogram(&bytes)?;
                match &mut latency {
                    Some(total) => total
                        .add(&h)
                        .map_err(|e| Error::Ledger(format!("merging latency histograms: {e:?}")))?,
                    None => latency = Some(h),
                }
            }
        }
        chunks.insert(chunk, bits);
    }
    for &(a, b) in expected.ranges() {
        let mut id = a;
        while id <= b {
            let chunk = id.div_euclid(CHUNK_IDS);
            let chunk_end = ((chunk + 1) * CHUNK_IDS - 1).min(b);
            match chunks.get(&chunk) {
                None => {
                    report.missing += (chunk_end - id + 1) as u64;
                    for missing in id..=chunk_end {
                        if report.missing_sample.len() >= 20 {
                            break;
                        }
                        report.missing_sample.push(missing);
                    }
                }
                Some(bits) => {
                    for i in id..=chunk_end {
                        let bit = i.rem_euclid(CHUNK_IDS) as usize;
                        if bits
                            .get(bit / 8)
                            .is_some_and(|byte| byte & (1 << (bit % 8)) != 0)
                        {
                            report.acknowledged += 1;
                        } else {
                            report.missing += 1;
                            if report.missing_sample.len() < 20 {
                                report.missing_sample.push(i);
                            }
                        }
                    }
                }
            }
            id = chunk_end + 1;
        }
    }
    let anomalies = client
        .query(
            "SELECT id, kind FROM outbox_ack_anomalies
             WHERE group_name = $1 AND id BETWEEN $2 AND $3",
            &[&group, &low, &high],
        )
        .await
        .db("reading ledger anomalies")?;
    for row in anomalies {
        let id: i64 = row.get(0);
        if !expected.contains(id) {
            continue;
        }
        match row.get::<_, &str>(1) {
            "duplicate" => report.duplicates += 1,
            "out_of_order" => report.out_of_order += 1,
            "dead_lettered" => report.dead_lettered += 1,
            "abandoned" => report.abandoned += 1,
            _ => {}
        }
    }
    report.latency = latency.as_ref().and_then(summary);
    Ok(report)
}

/// Percentiles of a latency histogram in microseconds (None when it is empty).
fn summary(h: &Histogram<u64>) -> Option<LatencySummary> {
    (!h.is_empty()).then(|| LatencySummary {
        count: h.len(),
        p50_ms: h.value_at_quantile(0.5) as f64 / 1000.0,
        p90_ms: h.value_at_quantile(0.9) as f64 / 1000.0,
        p95_ms: h.value_at_quantile(0.95) as f64 / 1000.0,
        p99_ms: h.value_at_quantile(0.99) as f64 / 1000.0,
        p999_ms: h.value_at_quantile(0.999) as f64 / 1000.0,
        max_ms: h.max() as f64 / 1000.0,
    })
}

/// The ledger chunk holding `id`.
pub fn chunk_of(id: i64) -> i64 {
    id.div_euclid(CHUNK_IDS)
}

/// The latency histogram of `group`'s chunk `chunk` as it stands (None: nothing
/// acknowledged in it yet).
pub async fn chunk_latency<C: GenericClient>(
    client: &C,
    group: &str,
    chunk: i64,
) -> Result<Option<Histogram<u64>>> {
    let row = client
        .query_opt(
            "SELECT latency FROM outbox_ack_chunks WHERE group_name = $1 AND chunk = $2",
            &[&group, &chunk],
        )
        .await
        .db("reading a ledger chunk's latency")?;
    let bytes: Option<Vec<u8>> = row.and_then(|r| r.get(0));
    bytes.map(|b| decode_histogram(&b)).transpose()
}

/// End-to-end latency of `group`'s acknowledgements in the chunks `ids` touches, less
/// `baseline`: one chunk's histogram taken before `ids` were sent, when the chunk also
/// holds earlier messages that were all acknowledged by then. The result is then
/// exactly the latency of the acknowledgements since, which are `ids`' when nothing
/// else was written meanwhile.
pub async fn latency_since<C: GenericClient>(
    client: &C,
    group: &str,
    ids: &IdSet,
    baseline: Option<&(i64, Histogram<u64>)>,
) -> Result<Option<LatencySummary>> {
    let Some((low, high)) = ids.bounds() else {
        return Ok(None);
    };
    let rows = client
        .query(
            "SELECT chunk, latency FROM outbox_ack_chunks
             WHERE group_name = $1 AND chunk BETWEEN $2 AND $3 AND latency IS NOT NULL",
            &[&group, &chunk_of(low), &chunk_of(high)],
        )
        .await
        .db("reading ledger chunks' latency")?;
    let mut total = new_histogram()?;
    for row in rows {
        let chunk: i64 = row.get(0);
        if !ids.touches_chunk(chunk) {
            continue;
        }
        let mut h = decode_histogram(&row.get::<_, Vec<u8>>(1))?;
        if let Some((_, before)) = baseline.filter(|(c, _)| *c == chunk) {
            h.subtract(before)
                .map_err(|e| Error::Ledger(format!("subtracting a latency baseline: {e:?}")))?;
        }
        total
            .add(&h)
            .map_err(|e| Error::Ledger(format!("merging latency histograms: {e:?}")))?;
    }
    Ok(summary(&total))
}

/// Reports for several groups on the same set.
pub async fn group_reports<C: GenericClient>(
    client: &C,
    groups: &[String],
    expected: &IdSet,
) -> Result<Vec<GroupReport>> {
    let mut reports = Vec::with_capacity(groups.len());
    for group in groups {
        reports.push(group_report(client, group, expected).await?);
    }
    Ok(reports)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_key_hash_has_a_fixed_definition_and_keeps_the_values_ledgers_hold() {
        // What consumers stored until now: std's DefaultHasher over (topic, key), as this
        // toolchain computes it; the new definition gives the same values.
        for (topic, key) in [
            ("shared-events", &b"key-42"[..]),
            ("t", &b""[..]),
            ("orders.v1", &[0u8, 255, 7, 0xff][..]),
        ] {
            use std::hash::{Hash, Hasher};
            let mut std_hasher = std::collections::hash_map::DefaultHasher::new();
            topic.hash(&mut std_hasher);
            key.hash(&mut std_hasher);
            assert_eq!(key_hash(topic, key), std_hasher.finish(), "{topic}/{key:?}");
        }
        // And the value itself, so that no later library or compiler moves it.
        assert_eq!(
            key_hash("shared-events", b"key-42"),
            17_291_709_239_215_673_287
        );
    }

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
        // Key 7 was acknowledged at (10, 100) before this batch.
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

    #[test]
    fn id_sets_merge_adjacent_and_overlapping_ranges() {
        let set = IdSet::from_ranges([(10, 20), (1, 3), (4, 5), (15, 25), (30, 29)]);
        assert_eq!(set.ranges(), &[(1, 5), (10, 25)]);
        assert_eq!(set.len(), 21);
        assert!(set.contains(1) && set.contains(5) && set.contains(25));
        assert!(!set.contains(6) && !set.contains(26) && !set.contains(0));
        assert_eq!(IdSet::from_ids([3, 1, 2, 2, 9]).ranges(), &[(1, 3), (9, 9)]);
        assert_eq!(set.iter().count() as u64, set.len());
    }

    #[test]
    fn latency_histograms_survive_the_round_trip() {
        let mut h = new_histogram().unwrap();
        h.record(1500).unwrap();
        h.record(250_000).unwrap();
        let back = decode_histogram(&encode_histogram(&h).unwrap()).unwrap();
        assert_eq!(back.len(), 2);
        assert_eq!(back.max(), h.max());
    }
}
