//! `vrsky bench --commit-candidates`: the group-commit candidates for the platform's
//! `sync_interval: always` (issue 17), measured raw, with none of VRSky's logic: the same
//! revision-checked writes to a KV-shaped stream, sent
//!
//! - one by one, pipelined (what the `Committer` does today);
//! - in JetStream atomic batches of 16 and 64 writes from different messages, several
//!   batches in flight, each write with its own `Nats-Expected-Last-Subject-Sequence`;
//!
//! on a server with `sync_interval: always`, and one by one on a server with `1s` for the
//! ratio. Beside each rate: the block device's flush requests per write (from
//! `/proc/diskstats`, the whole device, so other writers on the machine count too), which is
//! what an fsync costs the disk.

use std::collections::VecDeque;
use std::time::Instant;

use async_nats::HeaderMap;
use bytes::Bytes;
use futures::StreamExt;
use futures::stream::FuturesUnordered;
use serde::Serialize;

use super::{bench_server, cpu_per_msg, cpu_seconds};

/// One candidate's figures.
#[derive(Debug, Clone, Serialize)]
pub(crate) struct Candidate {
    /// What was measured.
    pub name: String,
    /// `sync_interval` of the server.
    pub sync: String,
    /// Writes per second acknowledged.
    pub writes_per_s: f64,
    /// Block-device flush requests per acknowledged write (`None` where `/proc/diskstats`
    /// does not count them).
    pub device_flushes_per_write: Option<f64>,
    /// CPU µs per write, this process and the server.
    pub cpu_us_per_write: Option<f64>,
}

/// All candidates, and what one stale check inside an atomic batch does to the batch.
#[derive(Debug, Clone, Serialize)]
pub(crate) struct Candidates {
    /// Each candidate.
    pub candidates: Vec<Candidate>,
    /// The server's answer to an atomic batch in which one write's check is stale.
    pub stale_check_in_batch: String,
}

const BUCKET: &str = "commit";
/// Batches in flight at once (the server allows 50 per stream).
const BATCHES_IN_FLIGHT: usize = 8;
/// Single writes in flight at once.
const WINDOW: usize = 256;

/// Flush requests completed by the block device holding `dir`, from `/proc/diskstats`
/// (field 15 after the name, kernels 5.5 and later).
pub(super) fn device_flushes(dir: &std::path::Path) -> Option<u64> {
    use std::os::unix::fs::MetadataExt;
    let dev = std::fs::metadata(dir).ok()?.dev();
    let (major, minor) = (libc_major(dev), libc_minor(dev));
    // A partition's flushes are counted on its disk.
    let sys = std::path::PathBuf::from(format!("/sys/dev/block/{major}:{minor}"));
    let (major, minor) = if sys.join("partition").exists() {
        let parent = std::fs::read_to_string(sys.join("../dev")).ok()?;
        let (a, b) = parent.trim().split_once(':')?;
        (a.parse().ok()?, b.parse().ok()?)
    } else {
        (major, minor)
    };
    let stats = std::fs::read_to_string("/proc/diskstats").ok()?;
    stats.lines().find_map(|l| {
        let f: Vec<&str> = l.split_whitespace().collect();
        (f.first()?.parse::<u64>().ok()? == major && f.get(1)?.parse::<u64>().ok()? == minor)
            .then(|| f.get(3 + 14)?.parse().ok())
            .flatten()
    })
}

fn libc_major(dev: u64) -> u64 {
    ((dev >> 32) & 0xffff_f000) | ((dev >> 8) & 0xfff)
}

fn libc_minor(dev: u64) -> u64 {
    ((dev >> 12) & 0xffff_ff00) | (dev & 0xff)
}

fn headers(pairs: &[(&str, String)]) -> HeaderMap {
    let mut h = HeaderMap::new();
    for (k, v) in pairs {
        h.insert(*k, v.as_str());
    }
    h
}

/// A server at `sync` with a KV-shaped bucket that allows atomic batches.
async fn setup(
    bin: &std::path::Path,
    dir: &std::path::Path,
    name: &str,
    sync: &str,
) -> anyhow::Result<(vrsky_runtime::nats::process::ServerProcess, async_nats::Client)> {
    let server = bench_server(bin, dir, name, Some(sync), false).await?;
    let client = async_nats::connect(server.url.as_str()).await?;
    let js = async_nats::jetstream::new(client.clone());
    js.create_key_value(async_nats::jetstream::kv::Config {
        bucket: BUCKET.into(),
        history: 1,
        ..Default::default()
    })
    .await?;
    // `allow_atomic` (nats-server 2.12) through the API itself: the client's typed config
    // has it only behind a feature this build does not enable.
    let info = client
        .request(format!("$JS.API.STREAM.INFO.KV_{BUCKET}"), Bytes::new())
        .await?;
    let mut config = serde_json::from_slice::<serde_json::Value>(&info.payload)?["config"].take();
    config["allow_atomic"] = true.into();
    let updated = client
        .request(
            format!("$JS.API.STREAM.UPDATE.KV_{BUCKET}"),
            serde_json::to_vec(&config)?.into(),
        )
        .await?;
    let updated: serde_json::Value = serde_json::from_slice(&updated.payload)?;
    anyhow::ensure!(
        updated["config"]["allow_atomic"] == true,
        "the server did not enable atomic batches: {updated}"
    );
    Ok((server, client))
}

fn subject(round: &str, i: usize) -> String {
    format!("$KV.{BUCKET}.{round}.k{i}")
}

/// `n` create-only writes one by one, `WINDOW` in flight.
async fn singles(client: &async_nats::Client, round: &str, n: usize, payload: &Bytes) -> anyhow::Result<()> {
    let js = async_nats::jetstream::new(client.clone());
    let mut acks = VecDeque::with_capacity(WINDOW);
    for i in 0..n {
        let h = headers(&[("Nats-Expected-Last-Subject-Sequence", "0".into())]);
        acks.push_back(js.publish_with_headers(subject(round, i), h, payload.clone()).await?);
        if acks.len() >= WINDOW
            && let Some(a) = acks.pop_front()
        {
            a.await?;
        }
    }
    for a in acks {
        a.await?;
    }
    Ok(())
}

/// One atomic batch of the writes `range`, each create-only (or, for `stale`, one at a
/// revision that is not the stored one); the server's answer to the commit.
async fn batch(
    client: &async_nats::Client,
    round: &str,
    range: std::ops::Range<usize>,
    payload: &Bytes,
    stale: Option<usize>,
) -> anyhow::Result<serde_json::Value> {
    let id = format!("{round}-{}", range.start);
    let last = range.end - 1;
    for (seq, i) in range.enumerate() {
        let expected = if stale == Some(i) { "7" } else { "0" };
        let mut pairs = vec![
            ("Nats-Batch-Id", id.clone()),
            ("Nats-Batch-Sequence", (seq + 1).to_string()),
            ("Nats-Expected-Last-Subject-Sequence", expected.into()),
        ];
        if i == last {
            pairs.push(("Nats-Batch-Commit", "1".into()));
            let reply = client
                .request_with_headers(subject(round, i), headers(&pairs), payload.clone())
                .await?;
            return Ok(serde_json::from_slice(&reply.payload)?);
        }
        client
            .publish_with_headers(subject(round, i), headers(&pairs), payload.clone())
            .await?;
    }
    anyhow::bail!("empty batch")
}

/// `n` writes in atomic batches of `size`, `BATCHES_IN_FLIGHT` batches at once.
async fn batches(
    client: &async_nats::Client,
    round: &str,
    n: usize,
    size: usize,
    payload: &Bytes,
) -> anyhow::Result<()> {
    let mut in_flight = FuturesUnordered::new();
    let mut start = 0;
    while start < n || !in_flight.is_empty() {
        while start < n && in_flight.len() < BATCHES_IN_FLIGHT {
            let end = (start + size).min(n);
            in_flight.push(batch(client, round, start..end, payload, None));
            start = end;
        }
        if let Some(answer) = in_flight.next().await {
            let answer = answer?;
            anyhow::ensure!(answer.get("error").is_none(), "atomic batch refused: {answer}");
        }
    }
    Ok(())
}

async fn measure<F, Fut>(name: &str, sync: &str, dir: &std::path::Path, n: usize, run: F) -> anyhow::Result<Candidate>
where
    F: FnOnce() -> Fut,
    Fut: std::future::Future<Output = anyhow::Result<()>>,
{
    let (f0, cpu0, t0) = (device_flushes(dir), cpu_seconds(), Instant::now());
    run().await?;
    let elapsed = t0.elapsed();
    let flushes = device_flushes(dir).zip(f0).map(|(a, b)| (a - b) as f64 / n as f64);
    let c = Candidate {
        name: name.into(),
        sync: sync.into(),
        writes_per_s: n as f64 / elapsed.as_secs_f64(),
        device_flushes_per_write: flushes,
        cpu_us_per_write: cpu_per_msg(cpu0, cpu_seconds(), n),
    };
    eprintln!(
        "  {:<28} {:>6}: {:>8.0} writes/s, {} device flushes/write, {} cpu µs/write",
        c.name,
        c.sync,
        c.writes_per_s,
        c.device_flushes_per_write.map_or("-".into(), |f| format!("{f:.2}")),
        c.cpu_us_per_write.map_or("-".into(), |f| format!("{f:.0}"))
    );
    Ok(c)
}

/// The one-by-one candidate on a server at `sync` (whose store is `store`).
async fn one_by_one(
    client: &async_nats::Client,
    sync: &str,
    store: &std::path::Path,
    n: usize,
    payload: &Bytes,
) -> anyhow::Result<Candidate> {
    measure("single, 256 in flight", sync, store, n, || {
        singles(client, "s", n, payload)
    })
    .await
}

/// Runs every candidate with `n` writes of `size` bytes.
pub(crate) async fn run(
    bin: &std::path::Path,
    dir: &std::path::Path,
    n: usize,
    size: usize,
) -> anyhow::Result<Candidates> {
    let payload = Bytes::from(vec![b'x'; size]);
    let mut out = Vec::new();
    let (always, client) = setup(bin, dir, "commit-always", "always").await?;
    let store = dir.join("commit-always");
    out.push(one_by_one(&client, "always", &store, n, &payload).await?);
    for size in [16, 64] {
        let round = format!("b{size}");
        out.push(
            measure(&format!("atomic batches of {size}"), "always", &store, n, || {
                batches(&client, &round, n, size, &payload)
            })
            .await?,
        );
    }
    // A batch of 4 whose third write expects a revision the key does not have.
    let stale = batch(&client, "stale", 0..4, &payload, Some(2)).await?;
    always.stop.stop().await;
    let (relaxed, client) = setup(bin, dir, "commit-1s", "1s").await?;
    let store = dir.join("commit-1s");
    out.push(one_by_one(&client, "1s", &store, n, &payload).await?);
    relaxed.stop.stop().await;
    Ok(Candidates {
        candidates: out,
        stale_check_in_batch: stale.to_string(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn device_numbers_split_as_the_kernel_encodes_them() {
        // makedev(254, 0), makedev(8, 1) and makedev(259, 300) in glibc's encoding (a
        // minor above 255 has its high bits above the major's).
        assert_eq!((libc_major(65_024), libc_minor(65_024)), (254, 0));
        assert_eq!((libc_major(2_049), libc_minor(2_049)), (8, 1));
        let dev = (259 << 8) | (300 & 0xff) | ((300 & !0xff) << 12);
        assert_eq!((libc_major(dev), libc_minor(dev)), (259, 300));
    }
}
