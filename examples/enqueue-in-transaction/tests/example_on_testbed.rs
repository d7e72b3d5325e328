//! What docs/enqueue-in-your-transaction.md offers, run against the testbed's
//! PostgreSQL: the example binary, and the psql snippet, on a schema migrated as the
//! producers migrate it, with the topic registered as a producer registers it.

use std::process::Command;

use testbed_support::testbed;

/// A fresh schema with the outbox's migrations and `topic` registered; its URL.
async fn migrated_schema(prefix: &str, topic: &str) -> (String, String, tokio_postgres::Client) {
    let url = testbed()
        .fresh_schema(prefix)
        .await
        .expect("a fresh schema");
    let mut db = outbox_core::db::connect(&url).await.expect("connect");
    outbox_core::schema::migrate(&mut db)
        .await
        .expect("migrate");
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
        .args([
            "--database-url",
            &url,
            "--schema",
            &schema,
            "--topic",
            "orders",
        ])
        .output()
        .expect("run the example");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{stdout}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        stdout.contains("order 1 placed; its event is outbox message"),
        "{stdout}"
    );
    let rows = db
        .query("SELECT key, payload FROM outbox_messages", &[])
        .await
        .expect("outbox");
    assert_eq!(rows.len(), 1, "only the committed order's event");
    assert_eq!(
        rows[0].get::<_, Option<String>>(0).as_deref(),
        Some("order-1")
    );
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
    let section = doc.split("## With psql").nth(1).expect("the psql section");
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

/// A session of `url` as `user`.
async fn connect_as(url: &str, user: &str) -> tokio_postgres::Client {
    let mut config: tokio_postgres::Config = url.parse().expect("the URL");
    config.user(user).password("secret");
    let (client, connection) = config
        .connect(tokio_postgres::NoTls)
        .await
        .unwrap_or_else(|e| panic!("connect as {user}: {e}"));
    tokio::spawn(connection);
    client
}

#[tokio::test]
async fn without_createrole_the_migration_goes_on_and_the_documented_grants_let_an_application_enqueue(
) {
    let url = testbed().database_url.clone();
    let admin = outbox_core::db::connect(&url).await.expect("connect");
    let suffix = testbed_support::unique_name("r").replace('-', "_");
    let (owner, app) = (format!("owner_{suffix}"), format!("app_{suffix}"));
    // The owner first: its schema goes, and with it what it granted the application.
    let _roles = testbed_support::DropRoles {
        names: vec![owner.clone(), app.clone()],
    };
    admin
        .batch_execute(&format!(
            "CREATE ROLE \"{owner}\" LOGIN PASSWORD 'secret';
             CREATE ROLE \"{app}\" LOGIN PASSWORD 'secret';
             GRANT CREATE ON DATABASE outbox TO \"{owner}\";"
        ))
        .await
        .expect("the roles");

    // The system's user owns its schema but may not create roles.
    let mut system = connect_as(&url, &owner).await;
    let schema = format!("s_{suffix}");
    system
        .batch_execute(&format!(
            "CREATE SCHEMA \"{schema}\"; SET search_path = \"{schema}\""
        ))
        .await
        .expect("the schema");
    outbox_core::schema::migrate(&mut system)
        .await
        .expect("the migration goes on without CREATEROLE");
    let role: String = system
        .query_one("SELECT outbox_enqueue_role()::text", &[])
        .await
        .expect("the role's name")
        .get(0);
    let exists: bool = admin
        .query_one(
            "SELECT EXISTS (SELECT FROM pg_roles WHERE rolname = $1)",
            &[&role],
        )
        .await
        .expect("roles")
        .get(0);
    assert!(!exists, "no role was created");
    system
        .execute(
            "INSERT INTO outbox_topics (topic, max_record_bytes, reason) VALUES ('orders', 999488, 'test')",
            &[],
        )
        .await
        .expect("register the topic");

    // The grants the document gives for this case, as the schema's owner.
    let doc = std::fs::read_to_string(
        testbed_support::repo_root().join("docs/enqueue-in-your-transaction.md"),
    )
    .expect("the document");
    let grants = doc
        .split("```sql")
        .filter_map(|s| s.split("```").next())
        .find(|s| s.contains("GRANT USAGE ON SCHEMA"))
        .expect("the grants by hand");
    system
        .batch_execute(
            &grants
                .replace("public", &format!("\"{schema}\""))
                .replace("orders_app", &format!("\"{app}\"")),
        )
        .await
        .expect("the documented grants");

    let application = connect_as(&url, &app).await;
    let id = outbox_enqueue_example::enqueue(&application, &schema, "orders", None, "hello", None)
        .await
        .expect("the application may enqueue");
    assert!(id > 0);
    let denied = application
        .batch_execute(&format!(
            "SELECT count(*) FROM \"{schema}\".outbox_messages"
        ))
        .await
        .expect_err("and may not read the outbox");
    assert_eq!(
        denied.code(),
        Some(&tokio_postgres::error::SqlState::INSUFFICIENT_PRIVILEGE)
    );
}
