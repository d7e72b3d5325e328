//! The outbox and ledger schema, and migrations that are safe when several workers
//! start at once (serialised by an advisory lock keyed on the schema).

use tokio_postgres::Client;

use crate::error::{DbContext, Result};

/// Ids are handed out in blocks of this size by one `nextval`, so a batch of 10,000
/// messages costs 79 sequence calls, not 10,000. Ids stay unique and increase within a
/// request; blocks of concurrent requests interleave.
pub const ID_BLOCK: i64 = 128;

/// Ordered migrations; each applied once, in one transaction, recorded by version.
const MIGRATIONS: &[(i32, &str)] = &[
    (
        1,
        r#"
CREATE SEQUENCE outbox_message_id_seq INCREMENT BY 128 START WITH 1 MINVALUE 1;

-- One row per accepted message. Rows are never updated or deleted by the relay: it
-- advances a watermark over (txid, id) instead.
CREATE TABLE outbox_messages (
    id          bigint      NOT NULL,
    txid        xid8        NOT NULL DEFAULT pg_current_xact_id(),
    topic       text        NOT NULL,
    key         text,
    payload     text        NOT NULL,
    headers     jsonb,
    created_at  timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (txid, id)
);

-- The relay's progress: every message with (txid, id) <= (wm_txid, wm_id) is confirmed
-- by Kafka. The relay only reads rows whose txid is below the oldest running
-- transaction, so no row can commit later behind the watermark.
CREATE TABLE outbox_relay_state (
    singleton   boolean     PRIMARY KEY DEFAULT true CHECK (singleton),
    wm_txid     xid8        NOT NULL DEFAULT '0',
    wm_id       bigint      NOT NULL DEFAULT 0,
    leader      text,
    published   bigint      NOT NULL DEFAULT 0,
    updated_at  timestamptz NOT NULL DEFAULT now()
);
INSERT INTO outbox_relay_state DEFAULT VALUES;

-- Read by the operator's status.
CREATE VIEW outbox_backlog AS
SELECT count(m.id)::bigint AS pending,
       COALESCE(EXTRACT(EPOCH FROM (now() - min(m.created_at))), 0)::double precision
           AS oldest_age_seconds
FROM outbox_relay_state s
LEFT JOIN outbox_messages m ON (m.txid, m.id) > (s.wm_txid, s.wm_id);

-- Acknowledgement ledger: per consumer group, one row per 8,192 consecutive ids, with a
-- bitmap of the acknowledged ones and a histogram of their end-to-end latency.
CREATE TABLE outbox_ack_chunks (
    group_name  text        NOT NULL,
    chunk       bigint      NOT NULL,
    bits        bytea       NOT NULL,
    acked       integer     NOT NULL DEFAULT 0,
    latency     bytea,
    updated_at  timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (group_name, chunk)
) WITH (fillfactor = 50);

-- The rare events, one row each: redeliveries, per-key reorderings, dead letters.
CREATE TABLE outbox_ack_anomalies (
    group_name   text        NOT NULL,
    id           bigint      NOT NULL,
    kind         text        NOT NULL CHECK (kind IN ('duplicate', 'out_of_order', 'dead_lettered')),
    kafka_partition integer,
    kafka_offset bigint,
    recorded_at  timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX outbox_ack_anomalies_by_id ON outbox_ack_anomalies (group_name, id);
"#,
    ),
    (
        2,
        r#"
-- The backlog stays cheap to read while millions of rows wait: the count stops at
-- 1,000,000 (one bounded index range scan), and the oldest pending row is the first
-- one after the watermark (one index probe) instead of a min() over all of them.
CREATE OR REPLACE VIEW outbox_backlog AS
SELECT (SELECT count(*) FROM (SELECT FROM outbox_messages m
                              WHERE (m.txid, m.id) > (s.wm_txid, s.wm_id)
                              LIMIT 1000000) AS capped)::bigint AS pending,
       COALESCE(EXTRACT(EPOCH FROM (now() - (SELECT m.created_at FROM outbox_messages m
                              WHERE (m.txid, m.id) > (s.wm_txid, s.wm_id)
                              ORDER BY m.txid, m.id LIMIT 1))), 0)::double precision
           AS oldest_age_seconds
FROM outbox_relay_state s;
"#,
    ),
    (
        3,
        r#"
-- Rows Kafka refused for good (too large for the topic, invalid), copied here with
-- the reason when the relay skipped them, so one message cannot stop delivery.
CREATE TABLE outbox_quarantine (
    id             bigint      NOT NULL,
    txid           xid8        NOT NULL,
    topic          text        NOT NULL,
    key            text,
    payload        text        NOT NULL,
    headers        jsonb,
    created_at     timestamptz NOT NULL,
    error          text        NOT NULL,
    quarantined_at timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (txid, id)
);

CREATE OR REPLACE VIEW outbox_backlog AS
SELECT (SELECT count(*) FROM (SELECT FROM outbox_messages m
                              WHERE (m.txid, m.id) > (s.wm_txid, s.wm_id)
                              LIMIT 1000000) AS capped)::bigint AS pending,
       COALESCE(EXTRACT(EPOCH FROM (now() - (SELECT m.created_at FROM outbox_messages m
                              WHERE (m.txid, m.id) > (s.wm_txid, s.wm_id)
                              ORDER BY m.txid, m.id LIMIT 1))), 0)::double precision
           AS oldest_age_seconds,
       (SELECT count(*) FROM outbox_quarantine)::bigint AS quarantined
FROM outbox_relay_state s;
"#,
    ),
    (
        4,
        r#"
-- Where the relay's watermark was, taken by each retention round: rows at or below the
-- newest mark older than the retention have been relayed at least that long ago and
-- are deleted by primary-key range.
CREATE TABLE outbox_retention_marks (
    seq      bigserial   PRIMARY KEY,
    at       timestamptz NOT NULL DEFAULT now(),
    wm_txid  xid8        NOT NULL,
    wm_id    bigint      NOT NULL
);
CREATE INDEX outbox_retention_marks_by_time ON outbox_retention_marks (at);
"#,
    ),
    (
        5,
        r#"
-- Requests stored under an Idempotency-Key, with the ids they were given: the same key
-- again is answered with these ids and stores nothing. Stored in the transaction of the
-- messages, so a key is here exactly when its messages are.
CREATE TABLE outbox_idempotency (
    key        text        PRIMARY KEY,
    ids        bigint[]    NOT NULL,
    created_at timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX outbox_idempotency_by_time ON outbox_idempotency (created_at);
"#,
    ),
    (
        6,
        r#"
-- Per consumer group and key, the latest publication order (txid, id) acknowledged:
-- the order check holds across the group's members, restarts and keys that moved to
-- another partition, not only within one process.
CREATE TABLE outbox_ack_key_order (
    group_name  text        NOT NULL,
    key_hash    bigint      NOT NULL,
    txid        bigint      NOT NULL,
    id          bigint      NOT NULL,
    updated_at  timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (group_name, key_hash)
);
"#,
    ),
    // The system that holds this schema (the operator may have created it first).
    (7, outbox_contract::schema_owner::OWNER_TABLE),
    (
        8,
        r#"
-- The backlog without counting a large one: rows behind the watermark are counted up to
-- 10,000 (one short index range scan); past that, pending is the id sequence's last
-- value less the watermark's id (exact while ids are dense, high by the ids of
-- transactions that rolled back). Counting up to 1,000,000 rows took seconds of CPU per
-- reading at a 10M backlog, for a metric read every 10 s by each producer.
CREATE OR REPLACE VIEW outbox_backlog AS
SELECT (CASE WHEN c.counted < 10000 THEN c.counted
             ELSE GREATEST(c.counted,
                           (SELECT CASE WHEN q.is_called THEN q.last_value ELSE 0 END
                            FROM outbox_message_id_seq q) - s.wm_id)
        END)::bigint AS pending,
       COALESCE(EXTRACT(EPOCH FROM (now() - (SELECT m.created_at FROM outbox_messages m
                              WHERE (m.txid, m.id) > (s.wm_txid, s.wm_id)
                              ORDER BY m.txid, m.id LIMIT 1))), 0)::double precision
           AS oldest_age_seconds,
       (SELECT count(*) FROM outbox_quarantine)::bigint AS quarantined
FROM outbox_relay_state s,
     LATERAL (SELECT count(*) AS counted
              FROM (SELECT FROM outbox_messages m
                    WHERE (m.txid, m.id) > (s.wm_txid, s.wm_id)
                    LIMIT 10000) AS capped) AS c;
"#,
    ),
    (
        9,
        r#"
-- A request's ids as the starts of their sequence blocks and their count: a batch of
-- 2,000 messages is recorded as 16 numbers instead of 2,000 ids (16 KB, which
-- PostgreSQL compressed with pglz and moved out of line in every batch's transaction).
-- Records written before keep their ids.
ALTER TABLE outbox_idempotency
    ALTER COLUMN ids DROP NOT NULL,
    ADD COLUMN id_blocks bigint[],
    ADD COLUMN id_count integer,
    ADD CONSTRAINT outbox_idempotency_ids_or_blocks
        CHECK (ids IS NOT NULL OR (id_blocks IS NOT NULL AND id_count IS NOT NULL));
"#,
    ),
    (
        10,
        r#"
-- The backlog view reads the one watermark row as one row (LIMIT 1) and counts in
-- index order. The planner took the never-analyzed state table for 870 rows, so a
-- reading cost 635,000 (past jit_above_cost: 140 ms of JIT compiling per reading, a
-- second under load) and could scan the outbox instead of walking its index from the
-- watermark.
CREATE OR REPLACE VIEW outbox_backlog AS
SELECT (CASE WHEN c.counted < 10000 THEN c.counted
             ELSE GREATEST(c.counted,
                           (SELECT CASE WHEN q.is_called THEN q.last_value ELSE 0 END
                            FROM outbox_message_id_seq q) - s.wm_id)
        END)::bigint AS pending,
       COALESCE(EXTRACT(EPOCH FROM (now() - (SELECT m.created_at FROM outbox_messages m
                              WHERE (m.txid, m.id) > (s.wm_txid, s.wm_id)
                              ORDER BY m.txid, m.id LIMIT 1))), 0)::double precision
           AS oldest_age_seconds,
       (SELECT count(*) FROM outbox_quarantine)::bigint AS quarantined
FROM (SELECT wm_txid, wm_id FROM outbox_relay_state LIMIT 1) AS s,
     LATERAL (SELECT count(*) AS counted
              FROM (SELECT FROM outbox_messages m
                    WHERE (m.txid, m.id) > (s.wm_txid, s.wm_id)
                    ORDER BY m.txid, m.id
                    LIMIT 10000) AS capped) AS c;
"#,
    ),
    (
        11,
        r#"
-- A digest of the request stored under an Idempotency-Key (SHA-256 over its messages'
-- topics, keys, payloads and headers): the same key with another request is refused
-- instead of answered with the first request's ids. Keys recorded before have none and
-- are compared by their count of messages, as before.
ALTER TABLE outbox_idempotency ADD COLUMN request_digest bytea;
"#,
    ),
    (
        12,
        r#"
-- A message a group gave up on that its dead-letter topic refused too (too large for
-- it, or no such topic): recorded, so verification names it, and skipped, so the
-- group does not stop on it.
ALTER TABLE outbox_ack_anomalies
    DROP CONSTRAINT outbox_ack_anomalies_kind_check,
    ADD CONSTRAINT outbox_ack_anomalies_kind_check
        CHECK (kind IN ('duplicate', 'out_of_order', 'dead_lettered', 'abandoned'));
"#,
    ),
    // Enqueue in the application's own transaction: the SQL contract
    // (docs/enqueue-in-your-transaction.md).
    (13, include_str!("migrations/13_enqueue.sql")),
];

/// Applies pending migrations. Concurrent callers wait on an advisory lock keyed on the
/// current schema, so exactly one applies each migration.
pub async fn migrate(client: &mut Client) -> Result<()> {
    let tx = client.transaction().await.db("starting the migration")?;
    // The lock comes first: even `CREATE TABLE IF NOT EXISTS` races with itself (on the
    // table's row type in pg_type) when two first-time starters run it at once.
    tx.execute(
        "SELECT pg_advisory_xact_lock(hashtext(current_schema() || '.outbox-migrations'))",
        &[],
    )
    .await
    .db("taking the migration lock")?;
    tx.batch_execute(
        "CREATE TABLE IF NOT EXISTS outbox_schema_migrations (
             version integer PRIMARY KEY,
             applied_at timestamptz NOT NULL DEFAULT now())",
    )
    .await
    .db("creating the migrations table")?;
    let applied: Vec<i32> = tx
        .query("SELECT version FROM outbox_schema_migrations", &[])
        .await
        .db("reading applied migrations")?
        .iter()
        .map(|row| row.get(0))
        .collect();
    for (version, sql) in MIGRATIONS {
        if applied.contains(version) {
            continue;
        }
        tracing::info!(version, "applying outbox schema migration");
        tx.batch_execute(sql).await.db("applying a migration")?;
        tx.execute(
            "INSERT INTO outbox_schema_migrations (version) VALUES ($1)",
            &[version],
        )
        .await
        .db("recording a migration")?;
    }
    tx.commit().await.db("committing the migration")?;
    Ok(())
}

/// Claims the schema for `system` (`namespace/name`) unless another system holds it.
pub async fn claim(client: &mut Client, system: &str) -> Result<()> {
    let claim = outbox_contract::schema_owner::claim(client, system)
        .await
        .db("claiming the outbox schema")?;
    if claim.holder == system {
        return Ok(());
    }
    Err(crate::error::Error::SchemaHeld {
        schema: claim.schema,
        holder: claim.holder,
        system: system.to_string(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn migrations_are_ordered_and_the_id_block_matches_the_sequence() {
        let versions: Vec<i32> = MIGRATIONS.iter().map(|(v, _)| *v).collect();
        let mut sorted = versions.clone();
        sorted.sort_unstable();
        sorted.dedup();
        assert_eq!(versions, sorted);
        assert!(MIGRATIONS[0]
            .1
            .contains(&format!("INCREMENT BY {ID_BLOCK} ")));
    }
}
