//! `outbox-worker`: one binary, one subcommand per role.

use clap::{Parser, Subcommand};
use tracing_subscriber::EnvFilter;

use outbox_workers::{bench, consumer, loadtest, producer, shutdown};

#[derive(Parser, Debug)]
#[command(
    name = "outbox-worker",
    version,
    about = "Outbox producer, consumer and benchmark"
)]
struct Cli {
    #[command(subcommand)]
    role: Role,
}

#[derive(Subcommand, Debug)]
enum Role {
    /// HTTP ingest into the PostgreSQL outbox, and the relay to Kafka.
    Producer(producer::ProducerArgs),
    /// Kafka consumer-group member acknowledging into the ledger.
    Consumer(consumer::ConsumerArgs),
    /// Drives every producer through a LoadTest's scenarios and verifies every group.
    Loadtest(loadtest::LoadTestArgs),
    /// Times raw COPY, raw Kafka produce/consume and the outbox pipeline side by side.
    Bench(bench::BenchArgs),
}

#[tokio::main]
async fn main() -> std::process::ExitCode {
    tracing_subscriber::fmt()
        .with_env_filter(
            EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info")),
        )
        .with_target(false)
        .init();
    let cli = Cli::parse();
    let (sender, signal) = shutdown::channel();
    shutdown::on_signals(sender);
    let result = match cli.role {
        Role::Loadtest(args) => return loadtest::main(args, signal).await,
        Role::Producer(args) => producer::run(args, signal).await,
        Role::Consumer(args) => consumer::run(args, signal).await,
        Role::Bench(args) => bench::run(args).await,
    };
    match result {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            tracing::error!("{}", outbox_workers::error_chain(&e));
            eprintln!("outbox-worker: {}", outbox_workers::error_chain(&e));
            std::process::ExitCode::FAILURE
        }
    }
}
