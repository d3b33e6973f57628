//! `vrsky bench --scale`: one node with many tenants and integrations (issue 2 of the
//! specification, "Scale"). It creates `tenants` tenants (each starts its own nats-server
//! through the local provisioner) and `integrations` integrations spread evenly over them,
//! through `Control` as the API does, and measures:
//! - the time to place and start them all (each call returns once its actors run);
//! - this process's resident memory after start, after the tenants and after the
//!   integrations, idle (nats-servers apart: they are other processes), so the growth per
//!   tenant (TenantActor, NatsInstanceActor, connections) and per IntegrationActor;
//! - each tenant nats-server's resident memory;
//!
//! and extrapolates to 10,000 integrations at the same integrations per tenant.

use std::time::{Duration, Instant};

use anyhow::Context;
use serde::Serialize;

use vrsky_runtime::app::{Runtime, RuntimeOptions};

/// What `--scale` measured.
#[derive(Debug, Clone, Serialize)]
pub(super) struct ScaleReport {
    pub tenants: usize,
    pub integrations: usize,
    /// Seconds to create every tenant (its nats-server started and connected).
    pub tenants_s: f64,
    /// Seconds to create every integration (each placed and its worker subscribed).
    pub integrations_s: f64,
    /// This process's RSS after start, KiB.
    pub rss_start_kib: u64,
    /// After the tenants, KiB.
    pub rss_tenants_kib: u64,
    /// After the integrations, idle, KiB.
    pub rss_integrations_kib: u64,
    /// Growth per tenant, KiB.
    pub per_tenant_kib: f64,
    /// Growth per IntegrationActor, KiB (target 16 or less).
    pub per_integration_kib: f64,
    /// Median RSS of a tenant nats-server, KiB.
    pub nats_server_median_kib: u64,
    /// All tenant nats-servers together, KiB.
    pub nats_servers_total_kib: u64,
    /// The node's RSS at 10,000 integrations and this many per tenant, KiB.
    pub extrapolated_node_kib: f64,
    /// The tenant nats-servers' RSS at 10,000 integrations, KiB.
    pub extrapolated_nats_kib: f64,
}

fn rss() -> u64 {
    super::status_kib("self", "VmRSS:").unwrap_or(0)
}

/// Lets allocations settle before a reading (idle actors, freed buffers).
async fn settle() -> u64 {
    tokio::time::sleep(Duration::from_secs(2)).await;
    rss()
}

/// The RSS of every tenant nats-server under `dir` (their pid files), KiB.
fn nats_servers(dir: &std::path::Path, out: &mut Vec<u64>) {
    let Ok(entries) = std::fs::read_dir(dir) else { return };
    for e in entries.flatten() {
        let p = e.path();
        if p.is_dir() {
            nats_servers(&p, out);
        } else if p.file_name().is_some_and(|n| n == "nats-server.pid")
            && let Ok(pid) = std::fs::read_to_string(&p)
            && let Some(kib) = super::status_kib(pid.trim(), "VmRSS:")
        {
            out.push(kib);
        }
    }
}

pub(super) async fn run(
    bin: &std::path::Path,
    dir: &std::path::Path,
    tenants: usize,
    integrations: usize,
) -> anyhow::Result<ScaleReport> {
    anyhow::ensure!(
        tenants >= 1 && integrations >= tenants,
        "--scale needs 1 or more tenants and at least one integration per tenant"
    );
    let data = dir.join("scale");
    let cfg = super::node::bench_config(bin, &data)?;
    let rt = Runtime::start(cfg, RuntimeOptions::default())
        .await
        .context("starting vrsky")?;
    let rss_start_kib = settle().await;
    let ids: Vec<vrsky_actors::TenantId> = (0..tenants)
        .map(|k| vrsky_actors::TenantId::new(format!("s{k:04}")))
        .collect::<Result<_, _>>()?;
    let began = Instant::now();
    for (k, t) in ids.iter().enumerate() {
        rt.control
            .create_tenant(t, t.as_str())
            .await
            .with_context(|| format!("creating tenant {t}"))?;
        if (k + 1) % 10 == 0 || k + 1 == tenants {
            eprintln!(
                "  {} of {tenants} tenants ({:.1} s)",
                k + 1,
                began.elapsed().as_secs_f64()
            );
        }
    }
    let tenants_s = began.elapsed().as_secs_f64();
    let rss_tenants_kib = settle().await;
    let began = Instant::now();
    for k in 0..integrations {
        let t = &ids[k % tenants];
        let spec: vrsky_actors::components::IntegrationSpec = serde_json::from_value(serde_json::json!({
            "id": format!("i{k:05}"),
            "producer": {"type": "http", "url": "http://127.0.0.1:9/never-called", "timeout_ms": 10000},
        }))?;
        rt.control
            .create_integration(t, spec)
            .await
            .with_context(|| format!("creating integration {k} in tenant {t}"))?;
        if (k + 1) % 100 == 0 || k + 1 == integrations {
            eprintln!(
                "  {} of {integrations} integrations ({:.1} s)",
                k + 1,
                began.elapsed().as_secs_f64()
            );
        }
    }
    let integrations_s = began.elapsed().as_secs_f64();
    let rss_integrations_kib = settle().await;
    let mut servers = Vec::new();
    nats_servers(&data, &mut servers);
    servers.sort_unstable();
    let nats_server_median_kib = servers.get(servers.len() / 2).copied().unwrap_or(0);
    let nats_servers_total_kib = servers.iter().sum();
    rt.shutdown().await;

    let per_tenant_kib = rss_tenants_kib.saturating_sub(rss_start_kib) as f64 / tenants as f64;
    let per_integration_kib = rss_integrations_kib.saturating_sub(rss_tenants_kib) as f64 / integrations as f64;
    let target = 10_000.0;
    let tenants_at_target = target * tenants as f64 / integrations as f64;
    Ok(ScaleReport {
        tenants,
        integrations,
        tenants_s,
        integrations_s,
        rss_start_kib,
        rss_tenants_kib,
        rss_integrations_kib,
        per_tenant_kib,
        per_integration_kib,
        nats_server_median_kib,
        nats_servers_total_kib,
        extrapolated_node_kib: rss_start_kib as f64 + tenants_at_target * per_tenant_kib + target * per_integration_kib,
        extrapolated_nats_kib: tenants_at_target * nats_server_median_kib as f64,
    })
}

pub(super) fn print(r: &ScaleReport) {
    let mib = |kib: f64| kib / 1024.0;
    println!(
        "\n{} tenants (one nats-server each) created in {:.1} s ({:.0} ms each); {} integrations in {:.1} s ({:.1} ms each)",
        r.tenants,
        r.tenants_s,
        r.tenants_s * 1000.0 / r.tenants as f64,
        r.integrations,
        r.integrations_s,
        r.integrations_s * 1000.0 / r.integrations as f64
    );
    println!(
        "node RSS: {:.1} MiB at start, {:.1} MiB with the tenants, {:.1} MiB with the integrations (idle)",
        mib(r.rss_start_kib as f64),
        mib(r.rss_tenants_kib as f64),
        mib(r.rss_integrations_kib as f64)
    );
    println!(
        "per tenant {:.0} KiB; per IntegrationActor {:.1} KiB (target 16 KiB); a tenant nats-server {:.1} MiB (median), {:.0} MiB for all",
        r.per_tenant_kib,
        r.per_integration_kib,
        mib(r.nats_server_median_kib as f64),
        mib(r.nats_servers_total_kib as f64)
    );
    println!(
        "at 10,000 integrations ({} per tenant): node {:.0} MiB, tenant nats-servers {:.0} MiB",
        r.integrations / r.tenants,
        mib(r.extrapolated_node_kib),
        mib(r.extrapolated_nats_kib)
    );
}
