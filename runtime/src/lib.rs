//! The VRSky runtime: configuration, adapters (NATS processes and connections, the SQL
//! metadata store, the HTTP producer), the control layer, the HTTP server and the wiring
//! that starts and stops a node. The `vrsky` binary is `main.rs`.

pub mod app;
pub mod bench;
pub mod cli;
pub mod config;
pub mod control;
pub mod db;
pub mod dev;
pub mod http;
pub mod instances;
pub mod k8s;
pub mod nats;
pub mod platform;
pub mod producer;
pub mod scheduler;
pub mod telemetry;

pub use app::{Runtime, RuntimeOptions, install_crypto_provider};
pub use config::Config;
