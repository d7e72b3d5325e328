//! The acknowledgement ledger's layout and its read side: which messages each consumer
//! group acknowledged, how often they were redelivered, and whether a key's messages
//! arrived in order. The consumer writes it (`outbox-workers`, `consumer::ledger`); the
//! load-test runner and the benchmark read it here.
//!
//! Layout, cheap at 10,000,000 messages x 3 groups:
//! - `outbox_ack_chunks`: per group, one row per 8,192 consecutive message ids (a ledger
//!   chunk), holding a 1 KiB bitmap of the acknowledged ids, their count and an
//!   HdrHistogram of end-to-end latency (outbox write to acknowledgement). 10M ids make
//!   ~1,221 rows (1.2 MiB) per group. An ack transaction locks its few chunk rows, ORs its
//!   ids in and commits, so recording an id twice is impossible: the second time it is a
//!   duplicate.
//! - `outbox_ack_anomalies`: one row per rare event (a redelivery, a per-key reordering,
//!   a dead letter), so they can be counted exactly for any set of ids.
//! - `outbox_ack_key_order`: per group and key, the latest publication order
//!   acknowledged, read and written in each ack transaction, so the order check holds
//!   across the group's members and restarts (and keys that moved partition).
//!
//! A report for a set of ids reads those chunk rows and anomalies and counts bits, in
//! milliseconds for 10M ids.

use std::collections::HashMap;

use hdrhistogram::serialization::{Deserializer, Serializer, V2Serializer};
use hdrhistogram::Histogram;
use serde::Serialize;
use tokio_postgres::{Client, GenericClient};

use crate::error::{DbContext, Error, Result};

/// Message ids per chunk row.
pub const CHUNK_IDS: i64 = 8192;
/// Bytes of a chunk row's bitmap.
pub const CHUNK_BYTES: usize = (CHUNK_IDS / 8) as usize;
/// Largest end-to-end latency the histograms hold (one day, in microseconds).
const MAX_LATENCY_US: u64 = 86_400_000_000;

/// Connects and applies the schema migrations: what the load-test runner and the
/// benchmark call first.
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

pub fn new_histogram() -> Result<Histogram<u64>> {
    Histogram::new_with_bounds(1, MAX_LATENCY_US, 2)
        .map_err(|e| Error::Ledger(format!("creating a histogram: {e}")))
}

pub fn encode_histogram(h: &Histogram<u64>) -> Result<Vec<u8>> {
    let mut out = Vec::new();
    V2Serializer::new()
        .serialize(h, &mut out)
        .map_err(|e| Error::Ledger(format!("encoding a latency histogram: {e:?}")))?;
    Ok(out)
}

pub fn decode_histogram(bytes: &[u8]) -> Result<Histogram<u64>> {
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
    let (chunks, latency) = read_chunks(client, group, expected, low, high).await?;
    count_acknowledged(&mut report, expected, &chunks);
    count_anomalies(&mut report, client, group, expected, low, high).await?;
    report.latency = latency.as_ref().and_then(summary);
    Ok(report)
}

/// `group`'s chunk bitmaps for the ids `low..=high`, by chunk, and the merged latency
/// histogram of the chunks `expected` touches (None when none has one).
async fn read_chunks<C: GenericClient>(
    client: &C,
    group: &str,
    expected: &IdSet,
    low: i64,
    high: i64,
) -> Result<(HashMap<i64, Vec<u8>>, Option<Histogram<u64>>)> {
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
    Ok((chunks, latency))
}

/// Counts each expected id as acknowledged or missing by its bit in `chunks` (an absent
/// chunk: all its ids missing), keeping the first 20 missing ids as a sample.
fn count_acknowledged(report: &mut GroupReport, expected: &IdSet, chunks: &HashMap<i64, Vec<u8>>) {
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
}

/// Counts `group`'s anomalies (duplicates, reorderings, dead letters, abandoned
/// messages) among the expected ids.
async fn count_anomalies<C: GenericClient>(
    report: &mut GroupReport,
    client: &C,
    group: &str,
    expected: &IdSet,
    low: i64,
    high: i64,
) -> Result<()> {
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
    Ok(())
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
