//! Outbox rows as the relay reads them: the query that reads them in `(txid, id)` order,
//! a row's size as it comes over the wire, how many rows to ask for next, and what a row
//! becomes in Kafka (the outbox's own headers first, reserved names dropped).

use rdkafka::message::{Header, OwnedHeaders};
use rdkafka::producer::FutureRecord;

use super::Watermark;
use crate::error::{Error, Result};
use crate::headers;
use crate::message_size;

// Output columns are aliased so that ORDER BY names the xid8 column, not its text.
pub(super) const FETCH: &str =
    "SELECT m.id, m.txid::text AS txid_text, m.topic, m.key, m.payload, m.headers,
        (EXTRACT(EPOCH FROM m.created_at) * 1000000)::bigint AS created_us
    FROM outbox_messages m
    WHERE (m.txid, m.id) > ($1::text::xid8, $2::bigint)
      AND m.txid < pg_snapshot_xmin(pg_current_snapshot())
    ORDER BY m.txid, m.id
    LIMIT $3";

/// Rows of a session's first read, before their size is known.
pub(super) const FIRST_FETCH_ROWS: i64 = 1_000;

/// Bytes a fetched row holds: payload, key and headers (columns 4, 3 and 5 of
/// `FETCH`), the headers as PostgreSQL sent them, unparsed. An empty payload may come
/// with most of a megabyte of headers.
pub(super) fn row_bytes(row: &tokio_postgres::Row) -> usize {
    let payload = row.try_get::<_, &str>(4).map_or(0, str::len);
    let key = row
        .try_get::<_, Option<&str>>(3)
        .ok()
        .flatten()
        .map_or(0, str::len);
    let headers = row
        .try_get::<_, Option<RawJson<'_>>>(5)
        .ok()
        .flatten()
        .map_or(0, |h| h.0.len());
    payload + key + headers
}

/// A json or jsonb value's bytes as they came over the wire, not parsed.
struct RawJson<'a>(&'a [u8]);

impl<'a> tokio_postgres::types::FromSql<'a> for RawJson<'a> {
    fn from_sql(
        _: &tokio_postgres::types::Type,
        raw: &'a [u8],
    ) -> std::result::Result<Self, Box<dyn std::error::Error + Sync + Send>> {
        Ok(RawJson(raw))
    }

    fn accepts(ty: &tokio_postgres::types::Type) -> bool {
        matches!(
            *ty,
            tokio_postgres::types::Type::JSON | tokio_postgres::types::Type::JSONB
        )
    }
}

/// Rows to ask for next: as many rows of `row_bytes` as `fetch_bytes` holds, at least
/// one, at most `rows_per_read`.
pub(super) fn next_fetch_rows(row_bytes: usize, fetch_bytes: usize, rows_per_read: i64) -> i64 {
    let fit = fetch_bytes / row_bytes.max(1);
    i64::try_from(fit)
        .unwrap_or(i64::MAX)
        .clamp(1, rows_per_read.max(1))
}

/// What one outbox row becomes in Kafka.
pub(super) struct Row<'a> {
    pub(super) at: Watermark,
    pub(super) topic: &'a str,
    key: Option<&'a str>,
    payload: &'a str,
    /// Moved into the record when the row is handed to Kafka.
    headers: Option<OwnedHeaders>,
    pub(super) size: usize,
}

impl<'a> Row<'a> {
    pub(super) fn read(row: &'a tokio_postgres::Row) -> Result<Self> {
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
        let mut user_headers = Vec::new();
        if let Some(serde_json::Value::Object(map)) = &extra {
            for (name, value) in map {
                // A row written straight into the table may carry anything: never let
                // it set the headers consumers trust.
                if headers::is_reserved(name) {
                    tracing::warn!(id, header = %name, "dropping a reserved header name from an outbox row");
                    continue;
                }
                if let Some(value) = value.as_str() {
                    kafka_headers = kafka_headers.insert(Header {
                        key: name,
                        value: Some(value),
                    });
                    user_headers.push((name.as_str(), value));
                }
            }
        }
        let size = message_size::record_size(payload, key, user_headers);
        Ok(Row {
            at: Watermark {
                txid: txid
                    .parse()
                    .map_err(|e| Error::Relay(format!("row {id} has txid {txid:?}: {e}")))?,
                id,
            },
            topic,
            key,
            payload,
            headers: Some(kafka_headers),
            size,
        })
    }

    /// The record to hand to Kafka; the row's headers move into it (a row is handed
    /// once).
    pub(super) fn record(&mut self) -> FutureRecord<'a, str, str> {
        let mut record = FutureRecord::<str, str>::to(self.topic).payload(self.payload);
        if let Some(headers) = self.headers.take() {
            record = record.headers(headers);
        }
        if let Some(key) = self.key {
            record = record.key(key);
        }
        record
    }
}
