//! The `vrsky` command line built inside the test crate, so integration tests can run it
//! as a separate process (`CARGO_BIN_EXE_vrsky-test-node`): `vrsky dev` end to end, and
//! kill -9 of a whole node.

#[tokio::main]
async fn main() -> std::process::ExitCode {
    vrsky_runtime::cli::main(None).await
}
