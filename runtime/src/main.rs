//! The `vrsky` binary.

#[tokio::main]
async fn main() -> std::process::ExitCode {
    vrsky_runtime::cli::main().await
}
