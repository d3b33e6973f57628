//! Fault tests: a runtime node killed with kill -9 under load, and restarted. Every
//! message answered 202 must end delivered or dead-lettered; duplicates are counted and
//! bounded by what crashes can explain.

use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde_json::{Value, json};

use crate::common::node::{NodeProcess, api};
use crate::common::{FailFirst, Sink, spec, wait_until};

async fn platform(dir: &std::path::Path) -> vrsky_runtime::nats::platform_server::PlatformServer {
    crate::common::external_platform(dir, "platform").await
}

async fn dead_lettered(http: &reqwest::Client, node: &NodeProcess) -> HashSet<String> {
    let (_, v) = api(
        http,
        node,
        reqwest::Method::GET,
        "/api/tenants/acme/dead-letters?limit=500",
        None,
    )
    .await;
    v["dead_letters"]
        .as_array()
        .map(|a| a.iter().map(|d| d["message_id"].as_str().unwrap().to_owned()).collect())
        .unwrap_or_default()
}

/// Creates tenant `acme` with integration `hook` (delivering to `sink`, with `retry`).
async fn create_hook(http: &reqwest::Client, node: &NodeProcess, sink: &Sink, retry: Value) {
    let (s, v) = api(
        http,
        node,
        reqwest::Method::POST,
        "/api/tenants",
        Some(json!({"id": "acme", "name": "Acme"})),
    )
    .await;
    assert_eq!(s, 201, "{v}");
    let body = spec("hook", &sink.url("/hook"), json!({ "retry": retry }));
    let (s, v) = api(
        http,
        node,
        reqwest::Method::POST,
        "/api/tenants/acme/integrations",
        Some(body),
    )
    .await;
    assert_eq!(s, 201, "{v}");
}

/// Group commit on, as a node that spawns its platform with `always` has it (the
/// platform here is external, where it is off unless configured).
const GROUP_COMMIT: (&str, &str) = ("VRSKY_STATE__COMMIT_BATCH_MAX", "1000");

/// Steady load; kill -9 the node three times and restart it, each time while it commits
/// atomic batches (group commit's defaults: one unit in flight; this node's batch counter
/// is read just before each kill). 0 lost.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill_9_under_load_loses_nothing() {
    kill_9_under_load(&[GROUP_COMMIT], 8, true).await;
}

/// Group commit (issue 17) in another shape: small batches of at most 16 writes, four
/// units in flight at once, 24 senders, so several batches are in flight at each kill -9.
/// 0 lost.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill_9_in_the_middle_of_atomic_batches_loses_nothing() {
    let env = [
        ("VRSKY_STATE__COMMIT_BATCH_MAX", "16"),
        ("VRSKY_STATE__COMMIT_IN_FLIGHT_MAX", "4"),
    ];
    kill_9_under_load(&env, 24, true).await;
}

/// This node's atomic batches so far, from `/metrics`.
async fn batches_committed(http: &reqwest::Client, node: &NodeProcess) -> u64 {
    crate::common::node::metric(http, node, "vrsky_state_commit_batches_total").await
}

/// `senders` steady senders against a node started with `env`; kill -9 it three times and
/// restart it; with `batching`, each kill comes after the node has committed batches.
async fn kill_9_under_load(env: &[(&str, &str)], senders_n: usize, batching: bool) {
    crate::common::init_logging();
    let dir = tempfile::tempdir().unwrap();
    let platform = platform(dir.path()).await;
    let sink = Sink::start().await;
    let mut node = NodeProcess::start(dir.path().join("node"), &platform, env).await;
    let http = reqwest::Client::new();
    create_hook(&http, &node, &sink, json!({"max_retries": 5, "backoff_base_s": 0.1})).await;

    // Load: the senders, each recording the ids answered 202.
    let accepted = Arc::new(Mutex::new(Vec::<String>::new()));
    let stop = Arc::new(AtomicBool::new(false));
    let url = node.url("/webhooks/acme/hook");
    let mut senders = Vec::new();
    for w in 0..senders_n {
        let (accepted, stop, url) = (accepted.clone(), stop.clone(), url.clone());
        senders.push(tokio::spawn(async move {
            let http = reqwest::Client::builder()
                .timeout(Duration::from_secs(5))
                .build()
                .unwrap();
            let mut n = 0u64;
            while !stop.load(Ordering::Relaxed) {
                n += 1;
                match http.post(&url).body(format!("w{w}-{n}")).send().await {
                    Ok(r) if r.status() == 202 => {
                        let v: Value = r.json().await.unwrap_or(Value::Null);
                        if let Some(id) = v["message_id"].as_str() {
                            accepted.lock().unwrap().push(id.to_owned());
                        }
                    }
                    // Refused or cut off while the node is down: not accepted, not counted.
                    _ => tokio::time::sleep(Duration::from_millis(20)).await,
                }
            }
        }));
    }
    let kills = 3;
    let mut batched = Vec::new();
    for _ in 0..kills {
        tokio::time::sleep(Duration::from_millis(1500)).await;
        if batching {
            // On a loaded machine a life may take longer to queue writes: the kill waits
            // for its first batch (the assertion below says if none ever came).
            let _ = wait_until(Duration::from_secs(20), || async {
                batches_committed(&http, &node).await > 0
            })
            .await;
            batched.push(batches_committed(&http, &node).await);
        }
        node.kill9().await;
        tokio::time::sleep(Duration::from_millis(200)).await;
        node.restart().await;
    }
    tokio::time::sleep(Duration::from_millis(1000)).await;
    stop.store(true, Ordering::Relaxed);
    for s in senders {
        s.await.unwrap();
    }
    let accepted: Vec<String> = accepted.lock().unwrap().clone();
    assert!(
        accepted.len() > 100,
        "too little load to mean anything: {}",
        accepted.len()
    );
    assert!(
        batched.iter().all(|&b| b > 0),
        "each kill should have come while the node committed atomic batches: {batched:?}"
    );

    let settled = wait_until(Duration::from_secs(90), || async {
        let delivered = sink.ids("/hook");
        let dl = dead_lettered(&http, &node).await;
        accepted.iter().all(|id| delivered.contains_key(id) || dl.contains(id))
    })
    .await;
    let delivered: HashMap<String, usize> = sink.ids("/hook");
    let dl = dead_lettered(&http, &node).await;
    let lost: Vec<&String> = accepted
        .iter()
        .filter(|id| !delivered.contains_key(*id) && !dl.contains(*id))
        .collect();
    let duplicates: usize = delivered.values().map(|c| c - 1).sum();
    eprintln!(
        "crash test: {} accepted (202), {} delivered, {} dead-lettered, {} lost, {} duplicate deliveries over {} kill -9 (batches before each: {batched:?})",
        accepted.len(),
        accepted.iter().filter(|id| delivered.contains_key(*id)).count(),
        dl.len(),
        lost.len(),
        duplicates,
        kills
    );
    if !lost.is_empty() {
        // What the node knows of the first few, and what each of its lives logged.
        for id in lost.iter().take(3) {
            let path = format!("/api/tenants/acme/messages/{id}");
            let (s, v) = api(&http, &node, reqwest::Method::GET, &path, None).await;
            eprintln!("lost {id}: {s} {v}");
        }
        eprintln!("node logs:\n{}", node.logs_tail(200));
    }
    assert!(
        settled.is_ok() && lost.is_empty(),
        "{} accepted messages lost, e.g. {:?}",
        lost.len(),
        lost.first()
    );
    // A duplicate needs a crash between delivery and `completed`: at most the deliveries
    // in flight at each kill (max_in_flight, 32 by default).
    assert!(
        duplicates <= kills * 32,
        "{duplicates} duplicates cannot all be explained by {kills} crashes"
    );
    node.stop().await;
    platform.process.stop.stop().await;
}

/// Retries pending when the node is killed still fire after it restarts.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pending_retries_fire_after_kill_9() {
    crate::common::init_logging();
    let dir = tempfile::tempdir().unwrap();
    let platform = platform(dir.path()).await;
    let sink = Sink::start().await;
    sink.fail_first(FailFirst {
        n: 1,
        status: 503,
        ..Default::default()
    });
    let mut node = NodeProcess::start(dir.path().join("node"), &platform, &[GROUP_COMMIT]).await;
    let http = reqwest::Client::new();
    // First retry after 2 s: long enough to kill the node while every retry is pending.
    create_hook(&http, &node, &sink, json!({"max_retries": 3, "backoff_base_s": 1.0})).await;
    let mut ids = Vec::new();
    for i in 0..20 {
        let r = http
            .post(node.url("/webhooks/acme/hook"))
            .body(format!("{i}"))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 202);
        ids.push(
            r.json::<Value>().await.unwrap()["message_id"]
                .as_str()
                .unwrap()
                .to_owned(),
        );
    }
    // Every message failed once and waits for its retry.
    wait_until(Duration::from_secs(30), || async {
        ids.iter().all(|id| sink.for_message(id).len() == 1)
    })
    .await
    .expect("first attempts");
    let (_, st) = api(
        &http,
        &node,
        reqwest::Method::GET,
        &format!("/api/tenants/acme/messages/{}", ids[0]),
        None,
    )
    .await;
    assert_eq!(st["status"], "retry", "{st}");
    node.kill9().await;
    node.restart().await;
    wait_until(Duration::from_secs(60), || async {
        ids.iter().all(|id| sink.for_message(id).len() >= 2)
    })
    .await
    .unwrap_or_else(|_| panic!("retries lost across kill -9; log:\n{}", node.log()));
    for id in &ids {
        let (_, st) = api(
            &http,
            &node,
            reqwest::Method::GET,
            &format!("/api/tenants/acme/messages/{id}"),
            None,
        )
        .await;
        assert_eq!(st["status"], "completed", "{st}");
        assert_eq!(sink.for_message(id)[1].header("x-vrsky-attempt"), Some("2"));
    }
    node.stop().await;
    platform.process.stop.stop().await;
}
