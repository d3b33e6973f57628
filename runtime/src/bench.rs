//! `vrsky bench` (filled in below).

/// Benchmark arguments.
#[derive(Debug, Clone, clap::Args)]
pub struct BenchArgs {
    /// Messages per phase.
    #[arg(long, default_value_t = 20_000)]
    pub messages: usize,
}

/// Runs the benchmark.
pub async fn run(_args: BenchArgs) -> anyhow::Result<()> {
    anyhow::bail!("not yet")
}
