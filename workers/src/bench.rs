//! The benchmark: raw baselines and the outbox pipeline side by side.

/// Benchmark settings.
#[derive(clap::Args, Debug, Clone)]
pub struct BenchArgs {
    /// Messages per stage.
    #[arg(long, default_value_t = 1_000_000)]
    pub messages: u64,
}

/// Runs the benchmark.
pub async fn run(_args: BenchArgs) -> crate::Result<()> {
    Err(crate::Error::Config("bench: not built yet".into()))
}
