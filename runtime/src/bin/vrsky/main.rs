//! The `vrsky` binary: the runtime's command line, plus `vrsky bench`, which measures
//! VRSky beside raw NATS, raw loopback HTTP and the design floor and is not part of the
//! library.

mod bench;

use clap::Parser;
use futures::FutureExt;

fn bench(args: Vec<String>) -> futures::future::BoxFuture<'static, anyhow::Result<()>> {
    let argv = std::iter::once("vrsky bench".to_owned()).chain(args);
    match bench::BenchArgs::try_parse_from(argv) {
        Ok(parsed) => bench::run(parsed).boxed(),
        // `--help` and bad flags: clap prints and exits as for any other command.
        Err(e) => e.exit(),
    }
}

#[tokio::main]
async fn main() -> std::process::ExitCode {
    vrsky_runtime::cli::main(Some(bench)).await
}
