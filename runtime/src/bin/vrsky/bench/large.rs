//! `vrsky bench`'s large-payload phase (the claim check): MiB/s end to end for payloads
//! of `--large-bytes` (10 MiB) through a node with the filesystem store, beside the same
//! store's raw rate measured in the same run (each object put, with the node's upload
//! code and fsync, then read back whole), and the peak RSS growth of this process (node,
//! load generator and sink) during the phase. Both go one payload at a time (a webhook
//! is sent when the previous one has been delivered), so the ratio compares one
//! payload's path with the store's own put and get; with several in flight the node
//! overlaps them and goes faster than that sequential raw rate.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use anyhow::Context;
use axum::Router;
use axum::body::Body;
use axum::extract::State;
use axum::http::StatusCode;
use bytes::Bytes;
use futures::StreamExt;
use object_store::ObjectStoreExt;
use object_store::local::LocalFileSystem;
use object_store::path::Path;
use serde::Serialize;

use super::{Node, serve};

/// The phase's figures.
#[derive(Debug, Clone, Serialize)]
pub(crate) struct LargeReport {
    /// Payloads sent.
    pub payloads: usize,
    /// Bytes each.
    pub payload_bytes: u64,
    /// The store alone: put then get, one object at a time, MiB/s of payload.
    pub raw_store_mib_s: f64,
    /// Webhook to delivery, one at a time, MiB/s of payload (first send to last byte
    /// delivered).
    pub end_to_end_mib_s: f64,
    /// `end_to_end_mib_s / raw_store_mib_s`.
    pub ratio_to_raw_store: f64,
    /// This process's peak RSS above its RSS at the phase's start, MiB.
    pub peak_rss_growth_mib: Option<f64>,
}

const MIB: f64 = 1024.0 * 1024.0;
const CHUNK: usize = 64 * 1024;

/// `len` bytes as a stream of 64 KiB chunks of one shared buffer (no copy per chunk).
fn body_stream(len: u64) -> impl futures::Stream<Item = Result<Bytes, std::io::Error>> + Send + 'static {
    let chunk = Bytes::from(vec![0x5a; CHUNK]);
    futures::stream::unfold(0u64, move |sent| {
        let chunk = chunk.clone();
        async move {
            (sent < len).then(|| {
                let n = (len - sent).min(CHUNK as u64) as usize;
                (Ok(chunk.slice(..n)), sent + n as u64)
            })
        }
    })
}

/// The store's own rate: each object uploaded as ingress does, then read back.
async fn raw_store(dir: &std::path::Path, n: usize, len: u64) -> anyhow::Result<f64> {
    std::fs::create_dir_all(dir)?;
    let store = LocalFileSystem::new_with_prefix(dir)?.with_fsync(true);
    let start = Instant::now();
    for i in 0..n {
        let key = format!("raw/{i}");
        let mut body = Box::pin(body_stream(len));
        vrsky_runtime::objects::upload::upload(&store, &key, Bytes::new(), &mut body, u64::MAX, None)
            .await
            .map_err(|e| anyhow::anyhow!("raw put: {e}"))?;
        let mut got = store.get(&Path::from(key.as_str())).await?.into_stream();
        let mut read = 0u64;
        while let Some(c) = got.next().await {
            read += c?.len() as u64;
        }
        anyhow::ensure!(read == len, "raw get read {read} of {len} bytes");
        store.delete(&Path::from(key.as_str())).await?;
    }
    Ok((n as u64 * len) as f64 / MIB / start.elapsed().as_secs_f64())
}

#[derive(Default)]
struct Delivered {
    bytes: AtomicU64,
    payloads: AtomicU64,
}

async fn sink(State(d): State<Arc<Delivered>>, body: Body) -> StatusCode {
    let mut s = body.into_data_stream();
    let mut n = 0u64;
    while let Some(c) = s.next().await {
        match c {
            Ok(c) => n += c.len() as u64,
            Err(_) => return StatusCode::BAD_REQUEST,
        }
    }
    d.bytes.fetch_add(n, Ordering::Relaxed);
    d.payloads.fetch_add(1, Ordering::Relaxed);
    StatusCode::OK
}

/// Runs the phase: `n` payloads of `len` bytes.
pub(crate) async fn run(
    bin: &std::path::Path,
    dir: &std::path::Path,
    n: usize,
    len: u64,
) -> anyhow::Result<LargeReport> {
    let raw_store_mib_s = raw_store(&dir.join("raw-store"), n, len).await?;
    let client = reqwest::Client::new();
    let node = Node::start(bin, &dir.join("large"), &client, 16, 1, |cfg| {
        cfg.object_store.kind = vrsky_runtime::objects::StoreKind::Fs;
        cfg.claim_check.body_bytes_max = cfg.claim_check.body_bytes_max.max(len);
    })
    .await?;
    let delivered = Arc::new(Delivered::default());
    let (addr, sink_stop) = serve(Router::new().fallback(sink).with_state(delivered.clone())).await?;
    let t = vrsky_actors::TenantId::new("bench")?;
    let spec: vrsky_actors::components::IntegrationSpec = serde_json::from_value(serde_json::json!({
        "id": "large",
        "producer": {"type": "http", "url": format!("http://{addr}/large"), "timeout_ms": 300_000}
    }))?;
    node.rt.control.create_integration(&t, spec).await?;
    let webhook = format!("{}/webhooks/bench/large", node.rt.base_url());

    let rss0 = super::status_kib("self", "VmRSS:");
    let _ = std::fs::write("/proc/self/clear_refs", "5");
    let start = Instant::now();
    let deadline = start + Duration::from_secs(600);
    for i in 0..n {
        let r = client
            .post(&webhook)
            .header("content-length", len)
            .header("idempotency-key", format!("large-{i}"))
            .body(reqwest::Body::wrap_stream(body_stream(len)))
            .send()
            .await
            .context("sending a large webhook")?;
        anyhow::ensure!(r.status() == 202, "large webhook answered {}", r.status());
        while delivered.payloads.load(Ordering::Relaxed) <= i as u64 {
            anyhow::ensure!(Instant::now() < deadline, "large payloads not all delivered in 600 s");
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
    }
    let elapsed = start.elapsed().as_secs_f64();
    let peak = super::status_kib("self", "VmHWM:");
    anyhow::ensure!(
        delivered.bytes.load(Ordering::Relaxed) == n as u64 * len,
        "delivered bytes differ from sent"
    );
    let end_to_end_mib_s = (n as u64 * len) as f64 / MIB / elapsed;
    let _ = sink_stop.send(());
    let Node { rt, sink_stop, .. } = node;
    let _ = sink_stop.send(());
    rt.shutdown().await;
    Ok(LargeReport {
        payloads: n,
        payload_bytes: len,
        raw_store_mib_s,
        end_to_end_mib_s,
        ratio_to_raw_store: end_to_end_mib_s / raw_store_mib_s,
        peak_rss_growth_mib: peak.zip(rss0).map(|(p, r)| p.saturating_sub(r) as f64 / 1024.0),
    })
}

/// Prints the phase's lines.
pub(crate) fn print(r: &LargeReport) {
    println!(
        "large payloads ({} x {} MiB, filesystem store, one at a time): end to end {:.1} MiB/s, store raw put+get {:.1} MiB/s: {:.1}% of raw",
        r.payloads,
        r.payload_bytes as f64 / MIB,
        r.end_to_end_mib_s,
        r.raw_store_mib_s,
        100.0 * r.ratio_to_raw_store
    );
    if let Some(g) = r.peak_rss_growth_mib {
        println!("large payloads: peak RSS of this process (node, sender, sink) {g:.1} MiB above its start");
    }
}
