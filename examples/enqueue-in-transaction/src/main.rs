//! `outbox-enqueue-example`: places an order and enqueues its event in one transaction,
//! then shows that a rolled-back order left no message behind.
//!
//! ```sh
//! cargo run -p outbox-enqueue-example -- \
//!   --database-url postgres://app:secret@localhost/outbox --schema public --topic orders
//! ```

use clap::Parser;
use tokio_postgres::NoTls;

use outbox_enqueue_example::{enqueue, quote_identifier};

#[derive(Parser, Debug)]
#[command(about = "Place an order and enqueue its event in one PostgreSQL transaction")]
struct Args {
    /// The application's database: the outbox system's database.
    #[arg(long, env = "DATABASE_URL", hide_env_values = true)]
    database_url: String,
    /// The outbox system's schema (where its producers applied the migrations).
    #[arg(long, default_value = "public")]
    schema: String,
    /// A topic the system relays.
    #[arg(long)]
    topic: String,
    /// The application's own table, created when missing.
    #[arg(long, default_value = "example_orders")]
    table: String,
}

#[tokio::main(flavor = "current_thread")]
async fn main() -> std::process::ExitCode {
    let args = Args::parse();
    match run(&args).await {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("outbox-enqueue-example: {e}");
            std::process::ExitCode::FAILURE
        }
    }
}

async fn run(args: &Args) -> Result<(), tokio_postgres::Error> {
    let (mut client, connection) = tokio_postgres::connect(&args.database_url, NoTls).await?;
    tokio::spawn(connection);
    let table = quote_identifier(&args.table);
    client
        .batch_execute(&format!(
            "CREATE TABLE IF NOT EXISTS {table} (id bigserial PRIMARY KEY, item text NOT NULL)"
        ))
        .await?;

    // The order and its event commit together.
    let tx = client.transaction().await?;
    let order: i64 = tx
        .query_one(
            &format!("INSERT INTO {table} (item) VALUES ($1) RETURNING id"),
            &[&"book"],
        )
        .await?
        .get(0);
    let payload = serde_json::json!({"event": "OrderPlaced", "order": order}).to_string();
    let key = format!("order-{order}");
    let id = enqueue(&tx, &args.schema, &args.topic, Some(&key), &payload, None).await?;
    tx.commit().await?;
    println!("order {order} placed; its event is outbox message {id}");

    // An order rolled back takes its event with it: nothing reaches Kafka.
    let tx = client.transaction().await?;
    tx.execute(
        &format!("INSERT INTO {table} (item) VALUES ($1)"),
        &[&"never sold"],
    )
    .await?;
    let gone = enqueue(&tx, &args.schema, &args.topic, None, "never sent", None).await?;
    tx.rollback().await?;
    println!("order rolled back; message {gone} was never stored");
    Ok(())
}
