//! Claim check on a node process (`vrsky-test-node serve`, filesystem store): a kill -9
//! between the object write and the state write, and the node's memory while a 100 MiB
//! payload passes through it.

use std::time::Duration;

use reqwest::Method;
use serde_json::{Value, json};

use crate::common::node::{NodeProcess, api, metric};
use crate::common::payloads::{HashingSink, body, files_under, pattern_sha256};
use crate::common::{spec, wait_until};

const MIB: u64 = 1024 * 1024;

async fn create_hook(http: &reqwest::Client, node: &NodeProcess, sink: &HashingSink) {
    let (s, v) = api(
        http,
        node,
        Method::POST,
        "/api/tenants",
        Some(json!({"id": "acme", "name": "Acme"})),
    )
    .await;
    assert_eq!(s, 201, "{v}");
    let producer = json!({"producer": {"type": "http", "url": sink.url(), "timeout_ms": 120_000}});
    let (s, v) = api(
        http,
        node,
        Method::POST,
        "/api/tenants/acme/integrations",
        Some(spec("hook", &sink.url(), producer)),
    )
    .await;
    assert_eq!(s, 201, "{v}");
}

async fn post(
    http: &reqwest::Client,
    node: &NodeProcess,
    seed: u64,
    len: u64,
) -> Result<(u16, String), reqwest::Error> {
    let (b, _) = body(seed, len, true);
    let r = http
        .post(node.url("/webhooks/acme/hook"))
        .header("content-length", len)
        .body(b)
        .send()
        .await?;
    let status = r.status().as_u16();
    let v: Value = r.json().await.unwrap_or(Value::Null);
    Ok((status, v["message_id"].as_str().unwrap_or("").to_owned()))
}

async fn delivered(sink: &HashingSink, id: &str, seed: u64, len: u64) {
    let ok = wait_until(Duration::from_secs(120), || async { !sink.for_message(id).is_empty() }).await;
    assert!(ok.is_ok(), "message {id} never delivered");
    let got = sink.for_message(id);
    assert_eq!(got.len(), 1);
    assert_eq!(
        (got[0].len, got[0].sha256.as_str()),
        (len, pattern_sha256(seed, len).as_str())
    );
}

fn signal(pid: u32, sig: &str) {
    let ok = std::process::Command::new("kill")
        .args([sig, &pid.to_string()])
        .status()
        .unwrap()
        .success();
    assert!(ok, "kill {sig} {pid}");
}

/// The platform is paused (SIGSTOP), so a webhook's body reaches the store but its state
/// cannot be written; the node is killed -9 right then (and the platform, so the write it
/// had sent is lost too). The client never got a 202, and the object is an orphan: after
/// the restart the sweeper removes it (grace 1 s here). Nothing is delivered for it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_kill_9_between_the_object_and_the_state_leaves_an_orphan_the_sweeper_removes_fs() {
    orphan_after_kill_9(false).await;
}

/// The same against S3 (s3s-fs).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_kill_9_between_the_object_and_the_state_leaves_an_orphan_the_sweeper_removes_s3() {
    orphan_after_kill_9(true).await;
}

async fn orphan_after_kill_9(s3: bool) {
    crate::common::init_logging();
    let dir = tempfile::tempdir().unwrap();
    let port = vrsky_runtime::nats::process::free_port().unwrap();
    let platform = crate::common::external_platform_at(dir.path(), "platform", port).await;
    let platform_pid = platform.process.pid.unwrap();
    let sink = HashingSink::start().await;
    let s3 = match s3 {
        true => Some(crate::common::s3::S3Server::start().await),
        false => None,
    };
    let mut env: Vec<(String, String)> = vec![
        ("VRSKY_CLAIM_CHECK__ORPHAN_GRACE_S".into(), "1".into()),
        ("VRSKY_CLAIM_CHECK__SWEEP_INTERVAL_S".into(), "1".into()),
    ];
    env.extend(s3.as_ref().map(|s| s.env()).unwrap_or_default());
    let env: Vec<(&str, &str)> = env.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
    let mut node = NodeProcess::start(dir.path().join("node"), &platform, &env).await;
    let http = reqwest::Client::new();
    create_hook(&http, &node, &sink).await;
    let fs_objects = node.dir.join("objects");
    let files = || match &s3 {
        Some(s3) => s3.objects(),
        None => files_under(&fs_objects),
    };

    signal(platform_pid, "-STOP");
    let sending = {
        let (http, url) = (http.clone(), node.url("/webhooks/acme/hook"));
        tokio::spawn(async move {
            let (b, _) = body(21, 2 * MIB, true);
            http.post(url)
                .header("content-length", 2 * MIB)
                .body(b)
                .send()
                .await
                .map(|r| r.status().as_u16())
        })
    };
    let stored = wait_until(Duration::from_secs(30), || async { !files().is_empty() }).await;
    node.kill9().await;
    assert!(stored.is_ok(), "the body never reached the store");
    let answered = sending.await.unwrap();
    assert!(
        !matches!(answered, Ok(202)),
        "answered 202 without its state: {answered:?}"
    );
    // The state write the node sent is still unread in the paused server's socket: kill
    // the server too (its stored data survives: `sync_interval: always`), so the write
    // is never made, and start it again where it was.
    signal(platform_pid, "-KILL");
    drop(platform);
    let _platform = crate::common::external_platform_at(dir.path(), "platform", port).await;
    assert_eq!(files().len(), 1, "the orphan");

    node.restart().await;
    let swept = wait_until(Duration::from_secs(30), || async { files().is_empty() }).await;
    assert!(swept.is_ok(), "orphan not swept: {:?}", files());
    // Counted when the sweep's pass ends.
    let counted = wait_until(Duration::from_secs(10), || async {
        metric(&http, &node, "vrsky_claim_check_orphans_removed_total").await >= 1
    })
    .await;
    assert!(counted.is_ok(), "the sweep is not counted; log:\n{}", node.log());

    assert!(sink.seen().is_empty(), "a message without a 202 was delivered");
    // And the node goes on: a large webhook now is accepted, delivered and released.
    let (s, id) = post(&http, &node, 22, 2 * MIB).await.unwrap();
    assert_eq!(s, 202);
    delivered(&sink, &id, 22, 2 * MIB).await;
    let released = wait_until(Duration::from_secs(20), || async { files().is_empty() }).await;
    assert!(released.is_ok());
    node.stop().await;
}

/// `VmRSS` or `VmHWM` of a process, in bytes.
fn status_bytes(pid: u32, field: &str) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    status
        .lines()
        .find_map(|l| l.strip_prefix(field))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
        .unwrap()
        * 1024
}

/// A 100 MiB payload streams through the node: ingress to the store, the store to the
/// destination. The node's peak RSS while it passes (`VmHWM`, reset just before) stays
/// under 64 MiB above its idle RSS.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_100_mib_payload_costs_the_node_less_than_64_mib() {
    crate::common::init_logging();
    let dir = tempfile::tempdir().unwrap();
    let platform = crate::common::external_platform(dir.path(), "platform").await;
    let sink = HashingSink::start().await;
    let mut node = NodeProcess::start(dir.path().join("node"), &platform, &[]).await;
    let http = reqwest::Client::new();
    create_hook(&http, &node, &sink).await;
    // Warm: connection pools, the store's directories, allocator arenas.
    let (s, id) = post(&http, &node, 31, 10 * MIB).await.unwrap();
    assert_eq!(s, 202);
    delivered(&sink, &id, 31, 10 * MIB).await;

    let pid = node.pid().unwrap();
    let idle = status_bytes(pid, "VmRSS:");
    std::fs::write(format!("/proc/{pid}/clear_refs"), "5").unwrap();
    let (s, id) = post(&http, &node, 32, 100 * MIB).await.unwrap();
    assert_eq!(s, 202);
    delivered(&sink, &id, 32, 100 * MIB).await;
    let peak = status_bytes(pid, "VmHWM:");
    let grew = peak.saturating_sub(idle);
    eprintln!(
        "claim check memory: idle RSS {} MiB, peak {} MiB while 100 MiB passed: +{:.1} MiB",
        idle / MIB,
        peak / MIB,
        grew as f64 / MIB as f64
    );
    assert!(grew < 64 * MIB, "peak RSS grew {grew} bytes above idle ({idle})");
    node.stop().await;
}
