//! One outbox schema, one OutboxSystem. Two systems whose database URLs lead to the same
//! schema would share one relay lock (keyed on the schema) and one set of ledgers (keyed
//! by group name), so each schema records the system that holds it (`outbox_owner`, as
//! `namespace/name`). The operator claims it before it creates a system's workloads and
//! refuses a second system while the holder exists; the workers check the same record at
//! start, so a system the operator could not check still cannot share a schema.

use tokio_postgres::Client;

/// The record of the holder; created by the operator's claim or by the workers'
/// migration 7, whichever comes first. Never changed once released: it is a migration.
pub const OWNER_TABLE: &str = "
CREATE TABLE IF NOT EXISTS outbox_owner (
    singleton   boolean     PRIMARY KEY DEFAULT true CHECK (singleton),
    system      text        NOT NULL,
    claimed_at  timestamptz NOT NULL DEFAULT now()
);";

/// The lock the workers' migrations take: the operator's `CREATE TABLE IF NOT EXISTS`
/// may run at the same time as theirs.
const MIGRATION_LOCK: &str =
    "SELECT pg_advisory_xact_lock(hashtext(current_schema() || '.outbox-migrations'))";

/// Who holds a schema, and which schema it is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Claim {
    /// `namespace/name` of the holding system.
    pub holder: String,
    /// `database.schema`, for messages.
    pub schema: String,
}

/// The `namespace/name` a system is recorded as.
pub fn system_id(namespace: &str, name: &str) -> String {
    format!("{namespace}/{name}")
}

/// Claims the session's schema for `system` unless another system holds it; returns
/// the holder either way.
pub async fn claim(client: &mut Client, system: &str) -> Result<Claim, tokio_postgres::Error> {
    let tx = client.transaction().await?;
    // The table is made once; a reconcile that finds it skips the lock and the DDL.
    let exists: bool = tx
        .query_one("SELECT to_regclass('outbox_owner') IS NOT NULL", &[])
        .await?
        .get(0);
    if !exists {
        tx.execute(MIGRATION_LOCK, &[]).await?;
        tx.batch_execute(OWNER_TABLE).await?;
    }
    tx.execute(
        "INSERT INTO outbox_owner (system) VALUES ($1) ON CONFLICT (singleton) DO NOTHING",
        &[&system],
    )
    .await?;
    let row = tx
        .query_one(
            "SELECT system, current_database() || '.' || current_schema() FROM outbox_owner",
            &[],
        )
        .await?;
    tx.commit().await?;
    Ok(Claim {
        holder: row.get(0),
        schema: row.get(1),
    })
}

/// Hands the schema from `from` (a system that no longer exists) to `to`; false when
/// `from` no longer held it.
pub async fn take_over(
    client: &Client,
    from: &str,
    to: &str,
) -> Result<bool, tokio_postgres::Error> {
    let changed = client
        .execute(
            "UPDATE outbox_owner SET system = $2, claimed_at = now() WHERE system = $1",
            &[&from, &to],
        )
        .await?;
    Ok(changed == 1)
}
