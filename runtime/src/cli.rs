//! The `vrsky` command line, shared by the `vrsky` binary and the test crate's copy of it.

use std::net::SocketAddr;
use std::path::PathBuf;

use clap::{Parser, Subcommand};
use serde::Serialize;

use crate::{Config, Runtime, RuntimeOptions, dev, telemetry};

/// `vrsky` arguments.
#[derive(Parser)]
#[command(name = "vrsky", version, about = "VRSky multi-tenant integration runtime")]
struct Cli {
    /// TOML configuration file (layered over defaults, under VRSKY_* env and flags).
    #[arg(long, global = true, env = "VRSKY_CONFIG")]
    config: Option<PathBuf>,
    /// The client commands' connection and output (`--url`, `--token`, `--context`, `-o`).
    #[command(flatten)]
    conn: crate::client::Conn,
    #[command(subcommand)]
    command: Command,
}

#[derive(clap::Args, Serialize, Default)]
struct CommonFlags {
    /// Address of the HTTP server.
    #[arg(long)]
    #[serde(skip_serializing_if = "Option::is_none")]
    http_addr: Option<SocketAddr>,
    /// Address of the gRPC gateway (`vrsky dev`: 127.0.0.1:50051 unless set).
    #[arg(long)]
    #[serde(skip_serializing_if = "Option::is_none")]
    grpc_addr: Option<SocketAddr>,
    /// Directory for local state (SQLite, nats-server directories).
    #[arg(long)]
    #[serde(skip_serializing_if = "Option::is_none")]
    data_dir: Option<PathBuf>,
}

#[derive(Subcommand)]
enum Command {
    /// Everything local: platform NATS, tenant NATS processes, SQLite, a demo tenant.
    Dev {
        #[command(flatten)]
        flags: CommonFlags,
    },
    /// Run a node from configuration.
    Serve {
        #[command(flatten)]
        flags: CommonFlags,
        /// Metadata database URL (postgres://... or sqlite://...).
        #[arg(long)]
        database_url: Option<String>,
    },
    /// Measure raw NATS, raw loopback HTTP and VRSky end to end in one run (`vrsky bench
    /// --help` for its flags).
    #[command(disable_help_flag = true)]
    Bench {
        /// The bench's own flags.
        #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
        args: Vec<String>,
    },
    #[command(flatten)]
    Client(crate::client::ClientCommand),
}

/// What runs `vrsky bench` with its arguments: the `vrsky` binary's bench; binaries
/// without one refuse.
pub type BenchRunner = fn(Vec<String>) -> futures::future::BoxFuture<'static, anyhow::Result<()>>;

#[derive(Serialize)]
struct ServeOverrides {
    #[serde(flatten)]
    common: CommonFlags,
    #[serde(skip_serializing_if = "Option::is_none")]
    database_url: Option<String>,
}

#[derive(Serialize)]
struct DevOverrides {
    #[serde(flatten)]
    common: CommonFlags,
    producer: DevProducer,
}

#[derive(Serialize)]
struct DevProducer {
    allow_private_targets: bool,
}

/// Parses the command line, runs the command, and maps errors to exit code 1. `bench`
/// runs `vrsky bench`.
pub async fn main(bench: Option<BenchRunner>) -> std::process::ExitCode {
    match run(bench).await {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            std::process::ExitCode::FAILURE
        }
    }
}

async fn run(bench: Option<BenchRunner>) -> anyhow::Result<()> {
    let cli = Cli::parse();
    match cli.command {
        Command::Dev { flags } => {
            let mut cfg = Config::load(
                cli.config.as_deref(),
                DevOverrides {
                    common: flags,
                    producer: DevProducer {
                        allow_private_targets: true,
                    },
                },
            )?;
            telemetry::init(&cfg.log);
            // Without one configured, the dev token is generated once and kept in the
            // data dir, so an exported token stays valid across restarts.
            if cfg.admin_token.is_none() {
                cfg.admin_token = Some(dev::kept_token(&cfg.data_dir)?);
            }
            if cfg.security.secrets_key.is_none() {
                cfg.security.secrets_key = Some(dev::kept_secrets_key(&cfg.data_dir)?);
            }
            if cfg.grpc_addr.is_none() {
                cfg.grpc_addr = Some(dev::DEFAULT_GRPC_ADDR);
            }
            // Installed last, so no early error skips the flush below.
            let tracing = telemetry::Tracing::from_env()?;
            let ran = dev::run(cfg).await;
            tracing.shutdown().await;
            ran
        }
        Command::Serve { flags, database_url } => {
            let cfg = Config::load(
                cli.config.as_deref(),
                ServeOverrides {
                    common: flags,
                    database_url,
                },
            )?;
            telemetry::init(&cfg.log);
            if cfg.admin_token.is_none() {
                anyhow::bail!("admin_token is required for serve: set VRSKY_ADMIN_TOKEN (16+ characters)");
            }
            let tracing = telemetry::Tracing::from_env()?;
            let rt = match Runtime::start(cfg, RuntimeOptions::default()).await {
                Ok(rt) => rt,
                Err(e) => {
                    tracing.shutdown().await;
                    return Err(e.context("starting vrsky"));
                }
            };
            dev::wait_for_signal().await;
            rt.shutdown().await;
            tracing.shutdown().await;
            Ok(())
        }
        Command::Client(c) => {
            use clap::CommandFactory as _;
            crate::client::run(c, cli.conn, Cli::command()).await
        }
        Command::Bench { args } => {
            let Some(bench) = bench else {
                anyhow::bail!("this binary has no bench; run `vrsky bench`");
            };
            // The node logs at the production default (`info`, async-nats at `warn`), so
            // what a span or an event per message costs is in the figures.
            telemetry::init(&crate::config::LogConfig::default());
            bench(args).await
        }
    }
}
