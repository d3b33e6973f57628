//! The VRSky node under test and its end-to-end phase: an embedded platform, SQLite,
//! tenant `bench` with integration `sink` delivering to an in-process sink that records
//! each message's arrival, and the closed-loop or paced sender that measures
//! webhook-send -> sink-arrival latency.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use anyhow::Context;
use axum::Router;
use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};

use vrsky_runtime::app::{Runtime, RuntimeOptions};
use vrsky_runtime::config::Config;

use super::{Phase, closed_loop, cpu_per_msg, cpu_seconds, percentile, progress, serve};

/// Arrival times at the sink, by sequence number (ns since the bench epoch; 0 = not yet).
pub(super) struct Arrivals {
    pub(super) epoch: Instant,
    pub(super) at: Vec<AtomicU64>,
    pub(super) count: AtomicUsize,
}

impl Arrivals {
    pub(super) fn new(slots: usize) -> Arc<Arrivals> {
        Arc::new(Arrivals {
            epoch: Instant::now(),
            at: (0..slots).map(|_| AtomicU64::new(0)).collect(),
            count: AtomicUsize::new(0),
        })
    }
}

pub(super) async fn record(State(a): State<Arc<Arrivals>>, headers: HeaderMap) -> StatusCode {
    if let Some(i) = headers
        .get("x-seq")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<usize>().ok())
        && let Some(slot) = a.at.get(i)
    {
        let ns = a.epoch.elapsed().as_nanos() as u64;
        if slot
            .compare_exchange(0, ns.max(1), Ordering::Relaxed, Ordering::Relaxed)
            .is_ok()
        {
            a.count.fetch_add(1, Ordering::Relaxed);
        }
    }
    StatusCode::OK
}

pub(super) struct E2e {
    pub(super) client: reqwest::Client,
    pub(super) webhook: String,
    /// When not empty, webhook `i` goes to `spread[i % len]` instead (several nodes).
    pub(super) spread: Vec<String>,
    pub(super) body: Bytes,
}

/// A VRSky node under test: an embedded platform, SQLite, tenant `bench` with integration
/// `sink` delivering to an in-process sink that records arrivals.
pub(super) struct Node {
    pub(super) rt: Runtime,
    pub(super) e2e: Arc<E2e>,
    pub(super) arrivals: Arc<Arrivals>,
    pub(super) sink_stop: tokio::sync::oneshot::Sender<()>,
}

/// A bench node's configuration: a free port, `data_dir`, the bench token, private targets
/// allowed (the sink is on loopback) and the nats-server under test.
pub(super) fn bench_config(bin: &std::path::Path, data_dir: &std::path::Path) -> anyhow::Result<Config> {
    let mut cfg = Config {
        http_addr: "127.0.0.1:0".parse()?,
        data_dir: data_dir.to_path_buf(),
        admin_token: Some("bench-token-0123456789".into()),
        ..Config::default()
    };
    cfg.producer.allow_private_targets = true;
    cfg.nats.server_bin = Some(bin.to_path_buf());
    Ok(cfg)
}

impl Node {
    /// Starts a node in `data_dir` with the configuration adjusted by `tweak`, and a sink
    /// with `slots` arrival slots.
    pub(super) async fn start(
        bin: &std::path::Path,
        data_dir: &std::path::Path,
        client: &reqwest::Client,
        payload_bytes: usize,
        slots: usize,
        tweak: impl FnOnce(&mut Config),
    ) -> anyhow::Result<Node> {
        let mut cfg = bench_config(bin, data_dir)?;
        cfg.grpc_addr = Some("127.0.0.1:0".parse()?);
        tweak(&mut cfg);
        let rt = Runtime::start(cfg, RuntimeOptions::default())
            .await
            .context("starting vrsky")?;
        let arrivals = Arrivals::new(slots);
        let (sink_addr, sink_stop) = serve(Router::new().fallback(record).with_state(arrivals.clone())).await?;
        let t = vrsky_actors::TenantId::new("bench")?;
        rt.control.create_tenant(&t, "bench").await?;
        let spec: vrsky_actors::components::IntegrationSpec = serde_json::from_value(serde_json::json!({
            "id": "sink",
            "consumer": {"forward_headers": ["x-seq"]},
            "producer": {"type": "http", "url": format!("http://{sink_addr}/sink"), "timeout_ms": 10000},
            "max_in_flight": 256
        }))?;
        rt.control.create_integration(&t, spec).await?;
        let e2e = Arc::new(E2e {
            client: client.clone(),
            webhook: format!("{}/webhooks/bench/sink", rt.base_url()),
            spread: Vec::new(),
            body: Bytes::from(vec![b'x'; payload_bytes]),
        });
        Ok(Node {
            rt,
            e2e,
            arrivals,
            sink_stop,
        })
    }
}

/// Sends webhooks `0..n` (closed loop, or paced at `rate` per second) and measures
/// webhook-send -> sink-arrival latency per message.
/// Sequence numbers are `offset..offset + n`, so phases can share one arrival table.
pub(super) async fn vrsky_phase(
    e: &Arc<E2e>,
    arrivals: &Arc<Arrivals>,
    offset: usize,
    n: usize,
    concurrency: usize,
    rate: Option<f64>,
) -> Phase {
    let sent: Arc<Vec<AtomicU64>> = Arc::new((0..n).map(|_| AtomicU64::new(0)).collect());
    let progress = progress::Progress::start(arrivals.clone(), offset, n);
    let start = Instant::now();
    let cpu0 = cpu_seconds();
    let epoch = arrivals.epoch;
    let send_one = {
        let (e, sent) = (e.clone(), sent.clone());
        move |i: usize| {
            let (e, sent) = (e.clone(), sent.clone());
            async move {
                sent[i].store(epoch.elapsed().as_nanos() as u64, Ordering::Relaxed);
                let url = match e.spread.len() {
                    0 => &e.webhook,
                    n => &e.spread[i % n],
                };
                matches!(e.client.post(url).header("x-seq", (offset + i).to_string()).header("content-type", "application/octet-stream")
                    .body(e.body.clone()).send().await, Ok(r) if r.status().as_u16() == 202)
            }
        }
    };
    match rate {
        None => {
            closed_loop(n, concurrency, send_one).await;
        }
        Some(rate) => {
            // Open loop: one request every 1/rate s regardless of responses (bounded by
            // `concurrency` requests in flight so an overloaded run cannot pile up).
            let interval = Duration::from_secs_f64(1.0 / rate);
            let permits = Arc::new(tokio::sync::Semaphore::new(concurrency));
            let mut ticker = tokio::time::interval(interval);
            ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Burst);
            let mut handles = Vec::with_capacity(n);
            for i in 0..n {
                ticker.tick().await;
                let Ok(permit) = permits.clone().acquire_owned().await else {
                    break;
                };
                let f = send_one.clone();
                handles.push(tokio::spawn(async move {
                    f(i).await;
                    drop(permit);
                }));
            }
            for h in handles {
                let _ = h.await;
            }
        }
    }
    // Wait for the sink to see everything (or for progress to stop).
    let mut last = 0;
    let mut stalled = Instant::now();
    while arrivals.count.load(Ordering::Relaxed) < offset + n {
        let c = arrivals.count.load(Ordering::Relaxed);
        if c != last {
            last = c;
            stalled = Instant::now();
        } else if stalled.elapsed() > Duration::from_secs(10) {
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let cpu_after = cpu_seconds();
    drop(progress);
    let mut lat = Vec::with_capacity(n);
    let mut last_arrival = 0u64;
    for i in 0..n {
        let a = arrivals.at[offset + i].load(Ordering::Relaxed);
        let s = sent[i].load(Ordering::Relaxed);
        if a > 0 && s > 0 {
            lat.push(Duration::from_nanos(a.saturating_sub(s)));
            last_arrival = last_arrival.max(a);
        }
    }
    lat.sort();
    let start_ns = (start - epoch).as_nanos() as u64;
    let elapsed = Duration::from_nanos(last_arrival.saturating_sub(start_ns)).max(Duration::from_micros(1));
    Phase {
        completed: lat.len(),
        rate_per_s: lat.len() as f64 / elapsed.as_secs_f64(),
        p50_ms: percentile(&lat, 0.5),
        p99_ms: percentile(&lat, 0.99),
        cpu_us_per_msg: cpu_per_msg(cpu0, cpu_after, lat.len()),
    }
}
