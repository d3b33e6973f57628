//! `vrsky bench --nodes N`: VRSky on one node beside a cluster of N nodes on this machine,
//! in one run. The cluster's nodes share one platform (the first node's), one SQLite file
//! and one data directory; tenant `bench` is owned by the first. Per round, at saturation:
//! raw loopback HTTP, then one node alone, then the cluster with every webhook sent to the
//! owner (what owning costs: lease renewals and idle nodes beside it), then the cluster
//! with webhooks spread over all nodes (what the cross-node ingress path costs: all but
//! 1/N of them are stored by a node that does not own the tenant and published on the
//! tenant's NATS from there, `cluster/ingress.rs`).

use std::sync::Arc;
use std::time::Duration;

use serde::Serialize;

use vrsky_runtime::config::Config;

use super::node::{E2e, Node, vrsky_phase};
use super::{BenchArgs, Phase, raw_http};

/// One round.
#[derive(Debug, Clone, Serialize)]
pub(super) struct NodesRound {
    pub raw_http: Phase,
    pub single: Phase,
    pub cluster_to_owner: Phase,
    pub cluster_spread: Phase,
    /// Mean writes per atomic batch over the cluster's nodes, webhooks to the owner.
    pub owner_writes_per_batch: f64,
    /// The same with webhooks spread: each node's committer groups only what it stores.
    pub spread_writes_per_batch: f64,
}

/// (batches, batched writes) of every node's committer so far.
fn batches(nodes: &[&vrsky_runtime::app::Runtime]) -> (u64, u64) {
    nodes.iter().fold((0, 0), |(b, w), n| {
        let f = n.control.platform().commit_figures();
        (b + f.batches, w + f.batched_writes)
    })
}

fn per_batch(before: (u64, u64), after: (u64, u64)) -> f64 {
    (after.1 - before.1) as f64 / (after.0 - before.0).max(1) as f64
}

/// The whole comparison.
#[derive(Debug, Clone, Serialize)]
pub(super) struct NodesReport {
    pub nodes: usize,
    pub rounds: Vec<NodesRound>,
}

fn node_cfg(id: &str) -> impl FnOnce(&mut Config) + use<> {
    let id = id.to_owned();
    move |cfg: &mut Config| cfg.cluster.node_id = Some(id)
}

pub(super) async fn run(bin: &std::path::Path, dir: &std::path::Path, args: &BenchArgs) -> anyhow::Result<NodesReport> {
    anyhow::ensure!(args.nodes >= 2, "--nodes needs 2 or more");
    let client = reqwest::Client::builder()
        .pool_max_idle_per_host(args.concurrency)
        .build()?;
    let slots = args.messages * args.rounds;
    // One node alone.
    let single = Node::start(
        bin,
        &dir.join("single"),
        &client,
        args.payload_bytes,
        slots,
        node_cfg("single"),
    )
    .await?;
    // The cluster: the first node spawns the platform; the others join it.
    let shared = dir.join("cluster");
    let first = Node::start(bin, &shared, &client, args.payload_bytes, slots * 2, node_cfg("n1")).await?;
    let mut others = Vec::new();
    for k in 2..=args.nodes {
        let (url, creds, ca) = (
            first.rt.platform_url.clone(),
            first.rt.platform_creds.clone(),
            first.rt.trust.ca_file().to_path_buf(),
        );
        let mut cfg = super::node::bench_config(bin, &shared)?;
        cfg.nats.platform_url = Some(url);
        cfg.nats.platform_creds = Some(creds);
        cfg.nats.platform_ca = Some(ca);
        cfg.cluster.node_id = Some(format!("n{k}"));
        others.push(vrsky_runtime::app::Runtime::start(cfg, Default::default()).await?);
    }
    // Every other node knows where `bench` is before the spread phase.
    let t = vrsky_actors::TenantId::new("bench")?;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    while !others.iter().all(|o| {
        o.control
            .directory()
            .placement(&t)
            .is_some_and(|p| matches!(p, vrsky_runtime::control::Placement::Elsewhere { .. }))
    }) {
        anyhow::ensure!(
            tokio::time::Instant::now() < deadline,
            "the other nodes did not learn the owner of tenant bench"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let mut spread: Vec<String> = vec![first.e2e.webhook.clone()];
    spread.extend(others.iter().map(|o| format!("{}/webhooks/bench/sink", o.base_url())));
    let spread_e2e = Arc::new(E2e {
        client: client.clone(),
        webhook: first.e2e.webhook.clone(),
        spread,
        body: first.e2e.body.clone(),
    });
    let n = args.messages;
    let mut rounds = Vec::new();
    for r in 0..args.rounds {
        let round = format!("round {}/{}", r + 1, args.rounds);
        eprintln!("{round}: raw loopback http ({n} requests)");
        let raw = raw_http(&client, n, args.concurrency, args.payload_bytes).await?;
        eprintln!("{round}: one node ({n} webhooks)");
        let one = vrsky_phase(&single.e2e, &single.arrivals, r * n, n, args.concurrency, None).await;
        eprintln!(
            "{round}: {} nodes, every webhook to the owner ({n} webhooks)",
            args.nodes
        );
        let cluster: Vec<&vrsky_runtime::app::Runtime> = std::iter::once(&first.rt).chain(others.iter()).collect();
        let b0 = batches(&cluster);
        let owner = vrsky_phase(&first.e2e, &first.arrivals, 2 * r * n, n, args.concurrency, None).await;
        let b1 = batches(&cluster);
        eprintln!(
            "{round}: {} nodes, webhooks spread over all of them ({n} webhooks)",
            args.nodes
        );
        let spread = vrsky_phase(&spread_e2e, &first.arrivals, (2 * r + 1) * n, n, args.concurrency, None).await;
        let b2 = batches(&cluster);
        rounds.push(NodesRound {
            raw_http: raw,
            single: one,
            cluster_to_owner: owner,
            cluster_spread: spread,
            owner_writes_per_batch: per_batch(b0, b1),
            spread_writes_per_batch: per_batch(b1, b2),
        });
    }
    for o in others {
        o.shutdown().await;
    }
    for node in [first, single] {
        let _ = node.sink_stop.send(());
        node.rt.shutdown().await;
    }
    let report = NodesReport {
        nodes: args.nodes,
        rounds,
    };
    print(&report);
    Ok(report)
}

fn print(r: &NodesReport) {
    println!(
        "\n{:<10} {:>10} {:>12} {:>16} {:>16} {:>10} {:>10} {:>14}",
        "round", "raw HTTP/s", "one node/s", "to the owner/s", "spread/s", "owner/one", "spread/one", "writes/batch"
    );
    let mut owner_ratios = Vec::new();
    let mut spread_ratios = Vec::new();
    for (k, x) in r.rounds.iter().enumerate() {
        let (o, s) = (
            x.cluster_to_owner.rate_per_s / x.single.rate_per_s,
            x.cluster_spread.rate_per_s / x.single.rate_per_s,
        );
        owner_ratios.push(o);
        spread_ratios.push(s);
        println!(
            "{:<10} {:>10.0} {:>12.0} {:>16.0} {:>16.0} {:>9.1}% {:>9.1}% {:>6.1} / {:<5.1}",
            k + 1,
            x.raw_http.rate_per_s,
            x.single.rate_per_s,
            x.cluster_to_owner.rate_per_s,
            x.cluster_spread.rate_per_s,
            o * 100.0,
            s * 100.0,
            x.owner_writes_per_batch,
            x.spread_writes_per_batch
        );
    }
    let median = |v: &mut Vec<f64>| {
        v.sort_by(f64::total_cmp);
        v[v.len() / 2]
    };
    println!(
        "median: {} nodes with every webhook to the owner = {:.1}% of one node; spread over all = {:.1}% \
         ({} of {} webhooks stored by a node that does not own the tenant; writes/batch: the committers' \
         mean atomic batch, to the owner / spread; p50/p99 in --json)",
        r.nodes,
        median(&mut owner_ratios) * 100.0,
        median(&mut spread_ratios) * 100.0,
        r.nodes - 1,
        r.nodes
    );
}
