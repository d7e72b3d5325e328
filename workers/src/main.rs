//! `outbox-worker`: one binary, one subcommand per role.

use clap::{Parser, Subcommand};
use tracing_subscriber::EnvFilter;

use outbox_workers::{bench, consumer, cpu, producer, shutdown};

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

// Parsed once at start: the size of the largest variant does not matter.
#[allow(clippy::large_enum_variant)]
#[derive(Subcommand, Debug)]
enum Role {
    /// HTTP ingest into the PostgreSQL outbox, and the relay to Kafka.
    Producer(producer::ProducerArgs),
    /// Kafka consumer-group member acknowledging into the ledger.
    Consumer(consumer::ConsumerArgs),
    /// Drives every producer through a LoadTest's scenarios and verifies every group.
    Loadtest(outbox_loadtest::LoadTestArgs),
    /// Times raw COPY, raw Kafka produce/consume and the outbox pipeline side by side.
    Bench(bench::BenchArgs),
}

fn main() -> std::process::ExitCode {
    tracing_subscriber::fmt()
        .with_env_filter(
            EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info")),
        )
        .with_target(false)
        .init();
    let cli = Cli::parse();
    // The runtime's threads carry a name so that `outbox_cpu_seconds_total` can tell the
    // role's own work from the relay's and librdkafka's (see `cpu`).
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .thread_name(cpu::MAIN_THREADS)
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(e) => {
            eprintln!("outbox-worker: starting the async runtime: {e}");
            return std::process::ExitCode::FAILURE;
        }
    };
    // The role runs as a task on the named threads, not on this unnamed main thread.
    match runtime.block_on(async { tokio::spawn(run(cli)).await }) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("outbox-worker: the role's task ended abnormally: {e}");
            std::process::ExitCode::FAILURE
        }
    }
}

async fn run(cli: Cli) -> std::process::ExitCode {
    let (sender, signal) = shutdown::channel();
    shutdown::on_signals(sender);
    let result = match cli.role {
        Role::Loadtest(args) => return outbox_loadtest::main(args, signal).await,
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
