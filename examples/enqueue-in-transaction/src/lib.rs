//! Enqueue outbox messages in your application's own PostgreSQL transaction, with
//! tokio-postgres: your business write and its messages commit together or not at all.
//!
//! The outbox system's producers apply the SQL contract to their schema (its
//! migrations): `outbox_enqueue(topic, key, payload, headers)` for one message and
//! `outbox_enqueue_many(messages)` for several, both returning the ids the messages
//! will carry to Kafka (header `outbox-id`). Call them on the same database, inside
//! your transaction, as a role granted `outbox_enqueue_role()` (docs/
//! enqueue-in-your-transaction.md). A message Kafka could not take (an unknown topic,
//! reserved or oversized headers, a message larger than its topic takes) is refused
//! with an error naming the field, and your transaction is then aborted: roll it back.
//!
//! ```no_run
//! # async fn place_order(client: &mut tokio_postgres::Client) -> Result<(), tokio_postgres::Error> {
//! let tx = client.transaction().await?;
//! tx.execute("INSERT INTO orders (id, item) VALUES ($1, $2)", &[&42i64, &"book"]).await?;
//! let id = outbox_enqueue_example::enqueue(
//!     &tx, "outbox", "orders", Some("order-42"), r#"{"placed": 42}"#, None,
//! ).await?;
//! tx.commit().await?; // the order and its message, or neither
//! # let _ = id; Ok(()) }
//! ```

use tokio_postgres::GenericClient;

/// `schema`, quoted as an SQL identifier.
pub fn quote_identifier(schema: &str) -> String {
    format!("\"{}\"", schema.replace('"', "\"\""))
}

/// Enqueues one message in the transaction (or session) of `client`; returns its id.
/// `headers` is a JSON object of strings, or `None`.
pub async fn enqueue(
    client: &impl GenericClient,
    schema: &str,
    topic: &str,
    key: Option<&str>,
    payload: &str,
    headers: Option<&serde_json::Value>,
) -> Result<i64, tokio_postgres::Error> {
    let sql = format!(
        "SELECT {}.outbox_enqueue($1, $2, $3, $4)",
        quote_identifier(schema)
    );
    let row = client
        .query_one(&sql, &[&topic, &key, &payload, &headers])
        .await?;
    Ok(row.get(0))
}

/// Enqueues several messages at once, each `{"topic", "key", "message", "headers"}` as
/// the batch endpoint takes them; returns their ids in order.
pub async fn enqueue_many(
    client: &impl GenericClient,
    schema: &str,
    messages: &serde_json::Value,
) -> Result<Vec<i64>, tokio_postgres::Error> {
    let sql = format!(
        "SELECT {}.outbox_enqueue_many($1)",
        quote_identifier(schema)
    );
    let row = client.query_one(&sql, &[messages]).await?;
    Ok(row.get(0))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn schema_names_are_quoted_as_identifiers() {
        assert_eq!(quote_identifier("outbox"), "\"outbox\"");
        assert_eq!(quote_identifier("a\"b"), "\"a\"\"b\"");
    }
}
