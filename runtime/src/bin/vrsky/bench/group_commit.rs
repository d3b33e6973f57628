//! `vrsky bench --sync-compare`: VRSky end to end with the platform at
//! `sync_interval: always` with group commit, `always` without it
//! (`state.commit_batch_max = 1`), and `1s` with and without it, side by side in one run
//! (issue 17).
//! For each: throughput at saturation, p50/p99 at a paced half of that peak and at
//! 100/s (unloaded), the bucket
//! writes per message (its sequence's growth over the messages delivered), how many of
//! them went in atomic batches, and the block device's flush requests per message. Each
//! message is fsynced once per write with `always` on one server, batched or not (the
//! server stores a batch's messages one by one): the fsyncs per message are its writes
//! per message.

use serde::Serialize;

use super::{Node, Phase, line, vrsky_phase};

/// One configuration's figures.
#[derive(Debug, Clone, Serialize)]
pub(crate) struct SyncRun {
    /// What was run.
    pub name: String,
    /// The platform's `sync_interval`.
    pub sync: String,
    /// `state.commit_batch_max`.
    pub commit_batch_max: usize,
    /// At saturation.
    pub peak: Phase,
    /// Paced at half of `peak`.
    pub half_peak: Phase,
    /// Paced at 100 webhooks/s: unloaded latency.
    pub unloaded: Phase,
    /// Bucket writes per delivered message.
    pub writes_per_message: f64,
    /// Share of those writes that went in atomic batches.
    pub batched_share: f64,
    /// Block-device flush requests per delivered message (`None` where not counted).
    pub device_flushes_per_message: Option<f64>,
}

/// The pace of the unloaded phase, webhooks per second.
const UNLOADED_RATE: f64 = 100.0;

/// The bucket's last sequence now.
async fn bucket_seq(rt: &vrsky_runtime::app::Runtime) -> anyhow::Result<u64> {
    let usage = rt.control.platform().usage().await?;
    Ok(usage
        .iter()
        .find(|u| u.0 == vrsky_actors::subjects::state_stream())
        .map_or(0, |u| u.3))
}

async fn one(
    bin: &std::path::Path,
    dir: &std::path::Path,
    client: &reqwest::Client,
    (name, sync, batch_max): (&str, &str, usize),
    args: &super::BenchArgs,
) -> anyhow::Result<SyncRun> {
    let (n, concurrency, payload_bytes) = (args.messages, args.concurrency, args.payload_bytes);
    let data = dir.join(format!("sync-{name}"));
    let light = (n / 20).max(200);
    let node = Node::start(bin, &data, client, payload_bytes, 2 * n + light, |cfg| {
        cfg.state.platform_sync_interval = sync.into();
        cfg.state.commit_batch_max = batch_max;
        cfg.state.commit_in_flight_max = args.commit_in_flight_max;
    })
    .await?;
    let (seq0, flushes0, commits0) = (
        bucket_seq(&node.rt).await?,
        super::commit::device_flushes(&data),
        node.rt.control.platform().commit_figures(),
    );
    eprintln!("  {name}: at saturation ({n} webhooks)");
    let peak = vrsky_phase(&node.e2e, &node.arrivals, 0, n, concurrency, None).await;
    let (seq1, flushes1, commits1) = (
        bucket_seq(&node.rt).await?,
        super::commit::device_flushes(&data),
        node.rt.control.platform().commit_figures(),
    );
    let half = (peak.rate_per_s / 2.0).max(1.0);
    eprintln!("  {name}: paced at {half:.0}/s ({n} webhooks)");
    let half_peak = vrsky_phase(&node.e2e, &node.arrivals, n, n, concurrency, Some(half)).await;
    eprintln!("  {name}: paced at {UNLOADED_RATE}/s ({light} webhooks)");
    let unloaded = vrsky_phase(
        &node.e2e,
        &node.arrivals,
        2 * n,
        light,
        concurrency,
        Some(UNLOADED_RATE),
    )
    .await;
    let Node { rt, sink_stop, .. } = node;
    let _ = sink_stop.send(());
    rt.shutdown().await;
    let delivered = peak.completed.max(1) as f64;
    let writes = (seq1 - seq0) as f64;
    let batched = (commits1.batched_writes - commits0.batched_writes) as f64;
    Ok(SyncRun {
        name: name.into(),
        sync: sync.into(),
        commit_batch_max: batch_max,
        writes_per_message: writes / delivered,
        batched_share: if writes > 0.0 { batched / writes } else { 0.0 },
        device_flushes_per_message: flushes1.zip(flushes0).map(|(a, b)| (a - b) as f64 / delivered),
        peak,
        half_peak,
        unloaded,
    })
}

/// Runs the four configurations and prints them.
pub(crate) async fn run(
    bin: &std::path::Path,
    dir: &std::path::Path,
    args: &super::BenchArgs,
) -> anyhow::Result<Vec<SyncRun>> {
    anyhow::ensure!(
        (2..=1000).contains(&args.commit_batch_max) && (1..=50).contains(&args.commit_in_flight_max),
        "--commit-batch-max must be 2 to 1000 and --commit-in-flight-max 1 to 50"
    );
    let client = reqwest::Client::builder()
        .pool_max_idle_per_host(args.concurrency)
        .build()?;
    let grouped = args.commit_batch_max;
    let mut runs = Vec::new();
    for config in [
        ("always+group-commit", "always", grouped),
        ("always, one by one", "always", 1),
        ("1s+group-commit", "1s", grouped),
        ("1s, one by one", "1s", 1),
    ] {
        runs.push(one(bin, dir, &client, config, args).await?);
    }
    println!(
        "\n{:<34} {:>9} {:>12} {:>8} {:>8} {:>10}",
        "phase", "completed", "msgs/s", "p50 ms", "p99 ms", "cpu µs/msg"
    );
    for r in &runs {
        line(&format!("{} (peak)", r.name), &r.peak);
        line(&format!("{} (half)", r.name), &r.half_peak);
        line(&format!("{} ({UNLOADED_RATE}/s)", r.name), &r.unloaded);
    }
    println!();
    for r in &runs {
        println!(
            "{:<22} {:.2} writes/msg ({:.0}% in atomic batches), {} device flushes/msg",
            r.name,
            r.writes_per_message,
            r.batched_share * 100.0,
            r.device_flushes_per_message.map_or("-".into(), |f| format!("{f:.2}"))
        );
    }
    let rate = |name: &str| runs.iter().find(|r| r.name == name).map_or(0.0, |r| r.peak.rate_per_s);
    // The `1s` baseline is the faster of its two runs.
    let relaxed = rate("1s+group-commit").max(rate("1s, one by one")).max(1.0);
    println!(
        "always+group-commit / best 1s = {:.1}%   always one by one / best 1s = {:.1}%   group commit gain at always = {:.2}x",
        rate("always+group-commit") / relaxed * 100.0,
        rate("always, one by one") / relaxed * 100.0,
        rate("always+group-commit") / rate("always, one by one").max(1.0)
    );
    Ok(runs)
}
