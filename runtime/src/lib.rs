//! The VRSky runtime: configuration, adapters (NATS processes and connections, the SQL
//! metadata store, the HTTP producer), the control layer, the HTTP server and the wiring
//! that starts and stops a node. The `vrsky` binary (`src/bin/vrsky/`) adds the bench,
//! which is not part of this library.

pub mod api_keys;
pub mod app;
pub mod audit_budget;
pub mod cli;
pub mod client;
pub mod cluster;
pub mod config;
pub mod control;
pub mod db;
pub mod dev;
pub mod grpc;
pub mod http;
pub mod instances;
pub mod k8s;
pub mod nats;
pub mod objects;
pub mod platform;
pub mod producer;
pub mod scheduler;
pub mod secrets;
pub mod targets;
pub mod telemetry;

/// The allocator of every binary built on this crate (`vrsky`, the test node, the tests).
/// glibc malloc was about 15% of the runtime's CPU under load, with arena lock contention
/// between worker threads; mimalloc keeps per-thread heaps.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

pub use app::{Runtime, RuntimeOptions, install_crypto_provider};
pub use config::Config;
