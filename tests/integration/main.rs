//! VRSky's integration tests: one binary, real nats-server processes, real PostgreSQL and
//! SQLite, real HTTP servers.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod claim_check;
mod claim_check_node;
mod cli;
mod cluster;
mod common;
mod crash;
mod dev_command;
mod durability;
mod foundation;
mod group_commit;
mod grpc;
mod instances;
mod limits;
mod metrics;
mod nats_security;
mod newcomer;
mod prometheus;
mod signatures;
mod ssrf;
mod tenant_keys;
mod tenants;
mod traces;
