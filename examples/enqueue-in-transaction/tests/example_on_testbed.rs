//! What docs/enqueue-in-your-transaction.md offers, run against the testbed's
//! PostgreSQL: the example binary, and the psql snippet, on a schema migrated as the
//! producers migrate it, with the topic registered as a producer registers it.

use std::process::Command;

use testbed_support::testbed;

/// A fresh schema with the outbox's migrations and `topic` registered; its URL.
async fn migrated_schema(prefix: &str, topic: &str) -> (String, String, tokio_postgres::Client) {
    let url = testbed().fresh_schema(prefix).await.expect("a fresh schema");
    let mut db = outbox_core::db::connect(&url).await.expect("connect");
    outbox_core::schema::migrate(&mut db).await.expect("migrate");
    db.execute(
        "INSERT INTO outbox_topics (topic, max_record_bytes, reason) VALUES ($1, 999488, 'test')",
        &[&topic],
    )
    .await
    .expect("register the topic");
    let schema: String = db
        .query_one("SELECT current_schema()::text", &[])
        .await
        .expect("schema")
        .get(0);
    (url, schema, db)
}

#[tokio::test]
async fn the_example_places_an_order_with_its_event_and_a_rolled_back_order_leaves_none() {
    let (url, schema, db) = migrated_schema("enqueue_example", "orders").await;
    let out = Command::new(env!("CARGO_BIN_EXE_outbox-enqueue-example"))
        .args(["--database-url", &url, "--schema", &schema, "--topic", "orders"])
        .output()
        .expect("run the example");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{stdout}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(stdout.contains("order 1 placed; its event is outbox message"), "{stdout}");
    let rows = db
        .query("SELECT key, payload FROM outbox_messages", &[])
        .await
        .expect("outbox");
    assert_eq!(rows.len(), 1, "only the committed order's event");
    assert_eq!(rows[0].get::<_, Option<String>>(0).as_deref(), Some("order-1"));
    assert!(rows[0].get::<_, String>(1).contains("OrderPlaced"));
    let orders: i64 = db
        .query_one("SELECT count(*) FROM example_orders", &[])
        .await
        .expect("orders")
        .get(0);
    assert_eq!(orders, 1);
}

#[tokio::test]
async fn the_psql_snippet_of_the_document_stores_its_messages_on_commit() {
    let (_url, schema, db) = migrated_schema("enqueue_snippet", "shared-events").await;
    let doc = std::fs::read_to_string(
        testbed_support::repo_root().join("docs/enqueue-in-your-transaction.md"),
    )
    .expect("the document");
    let section = doc
        .split("## With psql")
        .nth(1)
        .expect("the psql section");
    let snippet = section
        .split("```sql")
        .nth(1)
        .and_then(|s| s.split("```").next())
        .expect("its SQL");
    db.batch_execute("CREATE TABLE orders (id bigint PRIMARY KEY, item text)")
        .await
        .expect("the application's table");
    db.batch_execute(&snippet.replace("public.", &format!("\"{schema}\".")))
        .await
        .expect("the snippet runs");
    let rows = db
        .query("SELECT key, headers FROM outbox_messages ORDER BY id", &[])
        .await
        .expect("outbox");
    assert_eq!(rows.len(), 2);
    let headers: Option<serde_json::Value> = rows[0].get(1);
    assert!(headers.is_some_and(|h| h["traceparent"].is_string()));
}
