//! `vrsky bench`: in one run, on this machine, measures
//! 1. raw core NATS publish -> subscribe rate (one nats-server, two connections),
//! 2. a raw loopback HTTP server's request rate under the same load generator,
//! 3. VRSky end to end (webhook -> tenant NATS -> IntegrationActor -> HTTP sink):
//!    throughput at saturation, and p50/p99 latency both at saturation and at a paced
//!    half of the achieved peak,
//! 4. the design's floor: the same writes, hop and exchanges per message with none of
//!    VRSky's own logic (`bench/floor.rs`),
//!
//! and prints VRSky's rate as a ratio of the raw limits and of the floor. Machines here are
//! noisy: compare ratios from one run, not absolute figures across runs.

use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use serde::Serialize;

use vrsky_runtime::nats::process::find_binary;

mod commit;
mod control;
mod floor;
mod group_commit;
mod large;
mod node;
mod nodes;
mod otlp;
mod progress;
mod raw;
mod scale;

use node::{Arrivals, E2e, Node, record, vrsky_phase};
use raw::{bench_server, closed_loop, raw_http, raw_kv_put, raw_nats, serve, tls_client};

/// Benchmark arguments.
#[derive(Debug, Clone, clap::Parser)]
#[command(
    name = "vrsky bench",
    about = "Measure raw NATS, raw loopback HTTP, VRSky end to end and the design floor in one run"
)]
pub(crate) struct BenchArgs {
    /// Webhooks per VRSky phase (and requests for the raw HTTP phase).
    #[arg(long, default_value_t = 20_000)]
    pub messages: usize,
    /// Messages for the raw NATS phase.
    #[arg(long, default_value_t = 200_000)]
    pub nats_messages: usize,
    /// Concurrent HTTP requests from the load generator.
    #[arg(long, default_value_t = 64)]
    pub concurrency: usize,
    /// Body size in bytes.
    #[arg(long, default_value_t = 256)]
    pub payload_bytes: usize,
    /// JetStream `sync_interval` of the platform server (and of the raw KV baseline):
    /// `always` or a duration such as `1s`.
    #[arg(long, default_value = "always")]
    pub platform_sync: String,
    /// Rounds of (raw loopback HTTP, VRSky at saturation, the design floor), run back to
    /// back so all see the same machine; the ratio reported is the median round's. This machine's speed
    /// drifts by tens of percent within a minute, so one round can mislead.
    #[arg(long, default_value_t = 3)]
    pub rounds: usize,
    /// Also print the results as one JSON object.
    #[arg(long)]
    pub json: bool,
    /// Export traces from the node under test over OTLP/HTTP to an in-process receiver,
    /// at the sampling `OTEL_TRACES_SAMPLER(_ARG)` set (default `parentbased_always_on`),
    /// so the cost of export is in the figures. Compare with a run without it.
    #[arg(long)]
    pub otlp: bool,
    /// Calls of `GetTenant` over REST, then over gRPC, paced at `--control-rate` against
    /// the node under test (0: skip).
    #[arg(long, default_value_t = 5_000)]
    pub control_calls: usize,
    /// Calls per second of the control phases.
    #[arg(long, default_value_t = 1_000.0)]
    pub control_rate: f64,
    /// Measure only the group-commit candidates for `sync_interval: always`, raw, with
    /// `--messages` writes each (`bench/commit.rs`), and exit.
    #[arg(long)]
    pub commit_candidates: bool,
    /// Measure only VRSky end to end with the platform at `always` and at `1s`, each with
    /// and without group commit, side by side (`bench/group_commit.rs`), with
    /// `--messages` webhooks per phase, and exit.
    #[arg(long)]
    pub sync_compare: bool,
    /// `state.commit_batch_max` of the group-commit runs of `--sync-compare`.
    #[arg(long, default_value_t = 1000)]
    pub commit_batch_max: usize,
    /// `state.commit_in_flight_max` of every `--sync-compare` run.
    #[arg(long, default_value_t = 1)]
    pub commit_in_flight_max: usize,
    /// Payloads of the large-payload phase (the claim check, `bench/large.rs`), sent
    /// after the other phases (0: skip).
    #[arg(long, default_value_t = 10)]
    pub large_payloads: usize,
    /// Size of each, bytes.
    #[arg(long, default_value_t = 10 * 1024 * 1024)]
    pub large_bytes: u64,
    /// Run only the large-payload phase, and exit.
    #[arg(long)]
    pub large_only: bool,
    /// With 2 or more: compare one node with a cluster of this many nodes on this machine
    /// (one platform, one SQLite file; every webhook to the owner, then spread over all
    /// nodes), `--messages` webhooks per phase and `--rounds` rounds (`bench/nodes.rs`),
    /// and exit.
    #[arg(long, default_value_t = 1)]
    pub nodes: usize,
    /// Measure only the scale of one node (`bench/scale.rs`): `--scale-integrations`
    /// integrations across `--scale-tenants` tenants, each with its own nats-server;
    /// the time to place and start them, idle memory per IntegrationActor and per
    /// tenant, and a tenant nats-server's memory, extrapolated to 10,000 integrations.
    #[arg(long)]
    pub scale: bool,
    /// Tenants of `--scale`.
    #[arg(long, default_value_t = 100)]
    pub scale_tenants: usize,
    /// Integrations of `--scale`, spread evenly over its tenants.
    #[arg(long, default_value_t = 1000)]
    pub scale_integrations: usize,
}

/// A field of `/proc/{pid}/status` in KiB (`pid` "self" for this process).
pub(crate) fn status_kib(pid: &str, field: &str) -> Option<u64> {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()?
        .lines()
        .find_map(|l| l.strip_prefix(field))?
        .trim()
        .trim_end_matches("kB")
        .trim()
        .parse()
        .ok()
}

/// Throughput and latency of one phase.
#[derive(Debug, Clone, Serialize)]
pub(crate) struct Phase {
    /// Messages (or requests) completed.
    pub completed: usize,
    /// Messages per second.
    pub rate_per_s: f64,
    /// Median latency, ms (absent where not measured).
    pub p50_ms: Option<f64>,
    /// 99th percentile latency, ms.
    pub p99_ms: Option<f64>,
    /// CPU time spent per message by this process and the nats-servers it started (load
    /// generator and sink included), in microseconds: steadier than rates on a noisy
    /// machine, and what a change to the message path moves.
    pub cpu_us_per_msg: Option<f64>,
}

/// All figures of one run.
#[derive(Debug, Clone, Serialize)]
pub(crate) struct Report {
    /// Raw core NATS publish -> subscribe.
    pub raw_nats: Phase,
    /// Raw pipelined KV puts on a JetStream server configured like the platform's
    /// (`sync_interval: always`).
    pub raw_kv_put: Phase,
    /// Raw loopback HTTP server.
    pub raw_http: Phase,
    /// VRSky webhook -> delivery at saturation.
    pub vrsky_peak: Phase,
    /// VRSky at a paced half of its peak.
    pub vrsky_half_peak: Phase,
    /// vrsky_peak / raw_http, of the median round.
    pub ratio_to_raw_http: f64,
    /// Every round: (raw HTTP rate, VRSky peak rate, ratio).
    pub rounds: Vec<(f64, f64, f64)>,
    /// vrsky_peak / raw_nats.
    pub ratio_to_raw_nats: f64,
    /// The floor at saturation, median round (by its ratio to raw HTTP).
    pub floor_peak: Phase,
    /// floor_peak / raw_http of that round.
    pub floor_ratio_to_raw_http: f64,
    /// Every round: (raw HTTP rate, floor rate, ratio).
    pub floor_rounds: Vec<(f64, f64, f64)>,
    /// With `--otlp`: export requests and protobuf bytes the receiver took.
    pub otlp_export: Option<otlp::OtlpExport>,
    /// `GetTenant` over gRPC and REST, paced (absent with `--control-calls 0`).
    pub control: Option<control::ControlCalls>,
    /// The large-payload phase (absent with `--large-payloads 0`).
    pub large: Option<large::LargeReport>,
}

/// CPU seconds used so far by this process and its child processes (the nats-servers),
/// live or exited, from `/proc` (Linux; `None` elsewhere). Ticks are USER_HZ, 100 on Linux.
fn cpu_seconds() -> Option<f64> {
    /// The parent pid, utime + stime, and cutime + cstime (children already waited for).
    fn ticks(stat: &str) -> Option<(u32, u64, u64)> {
        // Fields after the parenthesised command name: state, ppid, ..., utime (14),
        // stime (15), cutime (16), cstime (17).
        let rest = stat.get(stat.rfind(')')? + 2..)?;
        let f: Vec<&str> = rest.split_whitespace().collect();
        let field = |i: usize| f.get(i)?.parse::<u64>().ok();
        Some((
            f.get(1)?.parse().ok()?,
            field(11)? + field(12)?,
            field(13)? + field(14)?,
        ))
    }
    let me = std::process::id();
    // A child that exits between two readings moves from the scan below to our cutime, so
    // stopping a server mid-phase does not take its CPU back out.
    let (_, own, exited) = ticks(&std::fs::read_to_string("/proc/self/stat").ok()?)?;
    let mut total = own + exited;
    for entry in std::fs::read_dir("/proc").ok()?.flatten() {
        if let Ok(stat) = std::fs::read_to_string(entry.path().join("stat"))
            && let Some((ppid, t, _)) = ticks(&stat)
            && ppid == me
        {
            total += t;
        }
    }
    Some(total as f64 / 100.0)
}

/// CPU µs per message between two [`cpu_seconds`] readings.
fn cpu_per_msg(before: Option<f64>, after: Option<f64>, n: usize) -> Option<f64> {
    Some((after? - before?) / n.max(1) as f64 * 1e6)
}

fn percentile(sorted: &[Duration], p: f64) -> Option<f64> {
    if sorted.is_empty() {
        return None;
    }
    let idx = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    Some(sorted[idx.min(sorted.len() - 1)].as_secs_f64() * 1000.0)
}

/// One round at saturation: raw HTTP, then VRSky, then the floor.
struct Round {
    raw: Phase,
    vrsky: Phase,
    floor: Phase,
}

/// The median round by `of`'s rate over raw HTTP's: that round's raw HTTP and `of`
/// phases, and every round's (raw rate, rate, ratio), sorted by ratio.
fn median_round(rounds: &[Round], of: fn(&Round) -> &Phase) -> (Phase, Phase, Vec<(f64, f64, f64)>) {
    let mut each: Vec<(usize, f64)> = rounds
        .iter()
        .enumerate()
        .map(|(i, r)| (i, of(r).rate_per_s / r.raw.rate_per_s))
        .collect();
    each.sort_by(|a, b| a.1.total_cmp(&b.1));
    let median = &rounds[each[each.len() / 2].0];
    let listed = each
        .iter()
        .map(|&(i, ratio)| (rounds[i].raw.rate_per_s, of(&rounds[i]).rate_per_s, ratio))
        .collect();
    (median.raw.clone(), of(median).clone(), listed)
}

fn line(name: &str, p: &Phase) {
    let ms = |v: Option<f64>| v.map(|v| format!("{v:8.2}")).unwrap_or_else(|| "       -".into());
    let cpu = p
        .cpu_us_per_msg
        .map(|v| format!("{v:10.1}"))
        .unwrap_or_else(|| "         -".into());
    println!(
        "{name:<34} {:>9} {:>12.0} {} {} {cpu}",
        p.completed,
        p.rate_per_s,
        ms(p.p50_ms),
        ms(p.p99_ms)
    );
}

/// Runs every phase and prints the report.
pub(crate) async fn run(args: BenchArgs) -> anyhow::Result<()> {
    vrsky_runtime::app::install_crypto_provider();
    anyhow::ensure!(
        args.messages > 0 && args.concurrency > 0 && args.rounds > 0,
        "--messages, --concurrency and --rounds must be positive"
    );
    let dir = tempfile_dir()?;
    let (bin, version) = find_binary(
        std::env::var_os("VRSKY_NATS__SERVER_BIN")
            .as_deref()
            .map(std::path::Path::new),
    )
    .await?;
    eprintln!(
        "nats-server {version} at {}; {} cores",
        bin.display(),
        std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1)
    );
    if args.commit_candidates {
        eprintln!("group-commit candidates ({} writes each)", args.messages);
        let c = commit::run(&bin, &dir, args.messages, args.payload_bytes).await?;
        eprintln!("  an atomic batch with one stale check: {}", c.stale_check_in_batch);
        if args.json {
            println!("{}", serde_json::to_string_pretty(&c)?);
        }
        let _ = std::fs::remove_dir_all(&dir);
        return Ok(());
    }
    if args.large_only {
        anyhow::ensure!(args.large_payloads > 0, "--large-only needs --large-payloads above 0");
        eprintln!(
            "large payloads: {} x {} bytes through the claim check",
            args.large_payloads, args.large_bytes
        );
        let r = large::run(&bin, &dir, args.large_payloads, args.large_bytes).await?;
        large::print(&r);
        if args.json {
            println!("{}", serde_json::to_string_pretty(&r)?);
        }
        let _ = std::fs::remove_dir_all(&dir);
        return Ok(());
    }
    if args.scale {
        eprintln!(
            "scale: {} integrations across {} tenants on one node",
            args.scale_integrations, args.scale_tenants
        );
        let r = scale::run(&bin, &dir, args.scale_tenants, args.scale_integrations).await?;
        scale::print(&r);
        if args.json {
            println!("{}", serde_json::to_string_pretty(&r)?);
        }
        let _ = std::fs::remove_dir_all(&dir);
        return Ok(());
    }
    if args.nodes > 1 {
        eprintln!(
            "one node vs {} nodes on this machine ({} webhooks per phase, {} rounds)",
            args.nodes, args.messages, args.rounds
        );
        let r = nodes::run(&bin, &dir, &args).await?;
        if args.json {
            println!("{}", serde_json::to_string_pretty(&r)?);
        }
        let _ = std::fs::remove_dir_all(&dir);
        return Ok(());
    }
    if args.sync_compare {
        eprintln!(
            "platform sync_interval always vs 1s, with and without group commit ({} webhooks per phase)",
            args.messages
        );
        let runs = group_commit::run(&bin, &dir, &args).await?;
        if args.json {
            println!("{}", serde_json::to_string_pretty(&runs)?);
        }
        let _ = std::fs::remove_dir_all(&dir);
        return Ok(());
    }
    let client = reqwest::Client::builder()
        .pool_max_idle_per_host(args.concurrency)
        .build()?;

    eprintln!("phase 1/7: raw nats publish -> subscribe ({} msgs)", args.nats_messages);
    let raw_nats = raw_nats(&bin, &dir, args.nats_messages, args.payload_bytes).await?;
    eprintln!("phase 2/7: raw pipelined kv put ({} puts)", args.messages * 2);
    anyhow::ensure!(
        vrsky_runtime::config::valid_sync_interval(&args.platform_sync),
        "--platform-sync must be `always` or a duration such as 1s"
    );
    let raw_kv_put = raw_kv_put(&bin, &dir, args.messages * 2, args.payload_bytes, &args.platform_sync).await?;
    let otlp = if args.otlp { Some(otlp::receiver().await?) } else { None };
    let tracing = match &otlp {
        Some((addr, _, _)) => vrsky_runtime::telemetry::Tracing::install(
            vrsky_runtime::telemetry::Protocol::HttpProtobuf,
            Some(format!("http://{addr}/v1/traces")),
        )?,
        None => vrsky_runtime::telemetry::Tracing::default(),
    };
    // VRSky under the same load generator, with an embedded platform and SQLite; one
    // arrival slot per webhook: `rounds` saturation phases, then the paced one.
    let node = Node::start(
        &bin,
        &dir.join("vrsky"),
        &client,
        args.payload_bytes,
        args.messages * (args.rounds + 1),
        |cfg| cfg.state.platform_sync_interval = args.platform_sync.clone(),
    )
    .await?;
    let Node {
        rt,
        e2e,
        arrivals,
        sink_stop,
    } = node;

    let floor_arrivals = Arrivals::new(args.messages * args.rounds);
    let floor = floor::Floor::start(&bin, &dir, &args.platform_sync, floor_arrivals.clone())
        .await
        .context("starting the floor pipeline")?;
    let floor_e2e = Arc::new(E2e {
        client: client.clone(),
        webhook: floor.webhook.clone(),
        spread: Vec::new(),
        body: e2e.body.clone(),
    });

    let mut rounds = Vec::with_capacity(args.rounds);
    for r in 0..args.rounds {
        let (n, c, round) = (
            args.messages,
            args.concurrency,
            format!("round {}/{}", r + 1, args.rounds),
        );
        eprintln!("phase 3/7, {round}: raw loopback http ({n} requests)");
        let raw = raw_http(&client, n, c, args.payload_bytes).await?;
        eprintln!("phase 4/7, {round}: vrsky end to end at saturation ({n} webhooks)");
        let vrsky = vrsky_phase(&e2e, &arrivals, r * n, n, c, None).await;
        eprintln!("phase 5/7, {round}: the design's floor at saturation ({n} webhooks)");
        let floor = vrsky_phase(&floor_e2e, &floor_arrivals, r * n, n, c, None).await;
        rounds.push(Round { raw, vrsky, floor });
    }
    floor.stop().await;
    let (raw_http, peak, each) = median_round(&rounds, |r| &r.vrsky);
    let (floor_raw_http, floor_peak, floor_rounds) = median_round(&rounds, |r| &r.floor);
    let half_rate = (peak.rate_per_s / 2.0).max(1.0);
    eprintln!(
        "phase 6/7: vrsky end to end paced at {half_rate:.0}/s, half the median round's peak ({} webhooks)",
        args.messages
    );
    let half = vrsky_phase(
        &e2e,
        &arrivals,
        args.rounds * args.messages,
        args.messages,
        args.concurrency,
        Some(half_rate),
    )
    .await;
    let control = match (args.control_calls, rt.grpc_addr) {
        (0, _) | (_, None) => None,
        (n, Some(grpc)) => {
            eprintln!(
                "phase 7/7: GetTenant over REST, then over gRPC, paced at {}/s ({n} calls each)",
                args.control_rate
            );
            Some(
                control::measure(
                    grpc,
                    &rt.base_url(),
                    "bench-token-0123456789",
                    "bench",
                    n,
                    args.control_rate,
                )
                .await?,
            )
        }
    };
    let _ = sink_stop.send(());
    rt.shutdown().await;
    tracing.shutdown().await;
    let large = match args.large_payloads {
        0 => None,
        n => {
            eprintln!(
                "large payloads: {n} x {} bytes through the claim check",
                args.large_bytes
            );
            Some(large::run(&bin, &dir, n, args.large_bytes).await?)
        }
    };
    let _ = std::fs::remove_dir_all(&dir);
    let otlp_export = otlp.map(|(_, c, stop)| {
        let _ = stop.send(());
        c.figures()
    });

    let report = Report {
        ratio_to_raw_http: peak.rate_per_s / raw_http.rate_per_s,
        rounds: each,
        ratio_to_raw_nats: peak.rate_per_s / raw_nats.rate_per_s,
        raw_nats,
        raw_kv_put,
        raw_http,
        vrsky_peak: peak,
        vrsky_half_peak: half,
        floor_ratio_to_raw_http: floor_peak.rate_per_s / floor_raw_http.rate_per_s,
        floor_peak,
        floor_rounds,
        otlp_export,
        control,
        large,
    };
    println!(
        "\n{:<34} {:>9} {:>12} {:>8} {:>8} {:>10}",
        "phase", "completed", "msgs/s", "p50 ms", "p99 ms", "cpu µs/msg"
    );
    line("raw core NATS pub->sub", &report.raw_nats);
    line("raw pipelined KV put", &report.raw_kv_put);
    line("raw loopback HTTP (median round)", &report.raw_http);
    line("vrsky webhook->delivery (peak)", &report.vrsky_peak);
    line("vrsky webhook->delivery (half)", &report.vrsky_half_peak);
    line("design floor (median round)", &report.floor_peak);
    let listed = |rounds: &[(f64, f64, f64)]| {
        rounds
            .iter()
            .map(|(raw, peak, ratio)| format!("{peak:.0}/{raw:.0} = {:.1}%", ratio * 100.0))
            .collect::<Vec<_>>()
            .join(", ")
    };
    println!("\nrounds (vrsky peak / raw HTTP, sorted): {}", listed(&report.rounds));
    println!(
        "rounds (floor / raw HTTP, sorted):      {}",
        listed(&report.floor_rounds)
    );
    println!(
        "platform JetStream sync_interval: {}\nvrsky peak / raw HTTP = {:.1}%   vrsky peak / raw NATS = {:.1}%   vrsky peak / raw KV put = {:.1}%",
        args.platform_sync,
        report.ratio_to_raw_http * 100.0,
        report.ratio_to_raw_nats * 100.0,
        report.vrsky_peak.rate_per_s / report.raw_kv_put.rate_per_s * 100.0
    );
    println!(
        "design floor / raw HTTP = {:.1}%   vrsky / floor = {:.0}% (of the ratios to raw HTTP)",
        report.floor_ratio_to_raw_http * 100.0,
        report.ratio_to_raw_http / report.floor_ratio_to_raw_http * 100.0
    );
    println!(
        "(each VRSky message costs 3 JetStream writes: received with its envelope, processing, completed;\n \
         the design floor does the same writes, hop and exchanges with none of VRSky's own logic;\n \
         cpu µs/msg counts this process, load generator and sink included, and its nats-servers)"
    );
    if let Some(c) = &report.control {
        line(&format!("gRPC GetTenant at {:.0}/s", c.rate_per_s), &c.grpc_get_tenant);
        line(&format!("REST GET tenant at {:.0}/s", c.rate_per_s), &c.rest_get_tenant);
    }
    if let Some(o) = report.otlp_export {
        let webhooks = (args.messages * (args.rounds + 1)) as f64;
        println!(
            "OTLP export on: {} requests, {} bytes, {} spans received ({:.2} spans per webhook)",
            o.requests,
            o.bytes,
            o.spans,
            o.spans as f64 / webhooks
        );
    }
    if let Some(l) = &report.large {
        large::print(l);
    }
    if args.json {
        println!("{}", serde_json::to_string(&report)?);
    }
    Ok(())
}

fn tempfile_dir() -> anyhow::Result<std::path::PathBuf> {
    let dir = std::env::temp_dir().join(format!("vrsky-bench-{}", uuid::Uuid::new_v4().simple()));
    std::fs::create_dir_all(&dir)?;
    Ok(dir)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn phase(rate_per_s: f64) -> Phase {
        Phase {
            completed: 1,
            rate_per_s,
            p50_ms: None,
            p99_ms: None,
            cpu_us_per_msg: None,
        }
    }

    #[test]
    fn the_median_round_is_chosen_by_each_pipelines_own_ratio() {
        let round = |raw, vrsky, floor| Round {
            raw: phase(raw),
            vrsky: phase(vrsky),
            floor: phase(floor),
        };
        // Ratios: vrsky 10%, 20%, 15%; floor 30%, 10%, 20%.
        let rounds = [
            round(100.0, 10.0, 30.0),
            round(50.0, 10.0, 5.0),
            round(200.0, 30.0, 40.0),
        ];
        let (raw, vrsky, listed) = median_round(&rounds, |r| &r.vrsky);
        assert_eq!((raw.rate_per_s, vrsky.rate_per_s), (200.0, 30.0));
        let ratios: Vec<f64> = listed.iter().map(|l| l.2).collect();
        assert_eq!(ratios, [0.1, 0.15, 0.2]);
        let (raw, floor, _) = median_round(&rounds, |r| &r.floor);
        assert_eq!((raw.rate_per_s, floor.rate_per_s), (200.0, 40.0));
    }
}
