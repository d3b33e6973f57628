//! Claim check: payloads above the threshold go through the object store, against a real
//! S3 server (`s3s-fs`, which checks signatures) and the filesystem store. Each body is a
//! deterministic pattern streamed by the client and hashed by the destination as it
//! arrives, so sizes of 100 MiB cost the test no memory.

use std::io::{Read, Write};
use std::time::Duration;

use reqwest::Method;
use serde_json::{Value, json};

use crate::common::payloads::{HashingSink, body, files_under, pattern_sha256};
use crate::common::s3::S3Server;
use crate::common::{Backend, TestRuntime, spec, wait_until};
use vrsky_runtime::objects::StoreKind;

const KIB: u64 = 1024;
const MIB: u64 = 1024 * 1024;

/// Which store a test runs against.
#[derive(Clone, Copy, Debug)]
enum Store {
    Fs,
    S3,
}

/// A node with claim check on (`store`), and the S3 server when there is one.
async fn node(store: Store, tweak: impl FnOnce(&mut vrsky_runtime::config::Config)) -> (TestRuntime, Option<S3Server>) {
    let s3 = match store {
        Store::S3 => Some(S3Server::start().await),
        Store::Fs => None,
    };
    let rt = TestRuntime::start_with(Backend::Sqlite, |cfg| {
        cfg.object_store.kind = StoreKind::Fs;
        if let Some(s3) = &s3 {
            s3.configure(cfg);
        }
        tweak(cfg);
    })
    .await;
    (rt, s3)
}

/// The payload objects left in the store.
fn objects(rt: &TestRuntime, s3: &Option<S3Server>) -> Vec<std::path::PathBuf> {
    match s3 {
        Some(s3) => s3.objects(),
        None => files_under(&rt.dir.path().join("objects")),
    }
}

async fn no_objects_left(rt: &TestRuntime, s3: &Option<S3Server>, what: &str) {
    let gone = wait_until(Duration::from_secs(20), || async { objects(rt, s3).is_empty() }).await;
    assert!(gone.is_ok(), "objects left after {what}: {:?}", objects(rt, s3));
}

/// Posts a pattern body; the status and the message id.
async fn post(rt: &TestRuntime, integration: &str, seed: u64, len: u64, declared: bool) -> (u16, String) {
    let (b, length) = body(seed, len, declared);
    let mut req = rt
        .http
        .post(rt.url(&format!("/webhooks/acme/{integration}")))
        .header("content-type", "application/octet-stream")
        .body(b);
    if let Some(l) = length {
        req = req.header("content-length", l);
    }
    let r = req.send().await.unwrap();
    let status = r.status().as_u16();
    let v: Value = r.json().await.unwrap_or(Value::Null);
    (status, v["message_id"].as_str().unwrap_or("").to_owned())
}

/// Headers only, with a declared length: the answer comes before any body byte.
fn declared_only(rt: &TestRuntime, integration: &str, len: u64) -> String {
    let mut s = std::net::TcpStream::connect(rt.rt().addr).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    write!(
        s,
        "POST /webhooks/acme/{integration} HTTP/1.1\r\nHost: x\r\nContent-Length: {len}\r\n\r\n"
    )
    .unwrap();
    let mut buf = [0u8; 512];
    let n = s.read(&mut buf).unwrap();
    String::from_utf8_lossy(&buf[..n]).into_owned()
}

async fn delivered_once(sink: &HashingSink, id: &str, len: u64, seed: u64) {
    let got = sink.for_message(id);
    assert_eq!(got.len(), 1, "delivered {} times", got.len());
    let h = &got[0];
    assert_eq!(h.len, len);
    assert_eq!(h.sha256, pattern_sha256(seed, len), "bytes differ");
    if len > 256 * KIB {
        assert_eq!(
            h.header("content-length"),
            Some(len.to_string().as_str()),
            "sent with its length"
        );
        assert_eq!(h.header("transfer-encoding"), None, "not chunked");
        assert_eq!(h.header("vrsky-payload-size"), Some(len.to_string().as_str()));
        assert_eq!(
            h.header("vrsky-payload-sha256"),
            Some(pattern_sha256(seed, len).as_str())
        );
        assert!(h.header("vrsky-payload-url").is_some_and(|u| u.starts_with("http")));
    } else {
        assert_eq!(h.header("vrsky-payload-url"), None, "small bodies travel inline");
    }
}

async fn byte_identical_then_deleted(store: Store) {
    let (rt, s3) = node(store, |cfg| cfg.claim_check.body_bytes_max = 150 * MIB).await;
    let sink = HashingSink::start().await;
    rt.create_tenant("acme").await;
    rt.create_integration(
        "acme",
        spec(
            "hook",
            &sink.url(),
            json!({"producer": {"type": "http", "url": sink.url(), "timeout_ms": 120_000}}),
        ),
    )
    .await;
    // Inline, chunked across the threshold (read in memory first), declared, and large.
    for (seed, len, declared) in [
        (1, 100 * KIB, true),
        (2, 300 * KIB, false),
        (3, 10 * MIB, true),
        (4, 100 * MIB, true),
    ] {
        let (status, id) = post(&rt, "hook", seed, len, declared).await;
        assert_eq!(status, 202, "{store:?} {len}");
        rt.wait_status("acme", &id, "completed").await;
        delivered_once(&sink, &id, len, seed).await;
    }
    no_objects_left(&rt, &s3, "completion").await;

    // Above the limit: refused on the declared length before the body, or while it
    // streams; nothing is stored either way.
    let answer = declared_only(&rt, "hook", 200 * MIB);
    assert!(answer.starts_with("HTTP/1.1 413"), "{answer}");
    // Just over: the node reads to the limit, drains the little that is left, answers.
    let (status, _) = post(&rt, "hook", 5, 150 * MIB + 100 * KIB, false).await;
    assert_eq!(status, 413);
    no_objects_left(&rt, &s3, "a refused body").await;
    assert_eq!(sink.seen().len(), 4);
    rt.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn payloads_are_delivered_byte_identical_and_then_deleted_fs() {
    byte_identical_then_deleted(Store::Fs).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn payloads_are_delivered_byte_identical_and_then_deleted_s3() {
    byte_identical_then_deleted(Store::S3).await;
}

async fn dead_letter_of(rt: &TestRuntime, id: &str) -> Value {
    rt.wait_status("acme", id, "dead_letter").await;
    let (s, d) = rt
        .api(Method::GET, &format!("/api/tenants/acme/dead-letters/{id}"), None)
        .await;
    assert_eq!(s, 200, "{d}");
    d
}

async fn fetch(url: &str) -> (u16, u64, String) {
    let r = reqwest::get(url).await.unwrap();
    let status = r.status().as_u16();
    let bytes = r.bytes().await.unwrap();
    let digest = ring::digest::digest(&ring::digest::SHA256, &bytes);
    (
        status,
        bytes.len() as u64,
        vrsky_actors::payload::sha256_hex(digest.as_ref()),
    )
}

fn tampered(url: &str) -> String {
    let u = reqwest::Url::parse(url).unwrap();
    let pairs: Vec<(String, String)> = u
        .query_pairs()
        .map(|(k, v)| {
            let v = v.into_owned();
            if k == "signature" || k == "X-Amz-Signature" {
                let mut b = v.into_bytes();
                b[3] = if b[3] == b'a' || b[3] == b'A' { b'b' } else { b'a' };
                (k.into_owned(), String::from_utf8(b).unwrap())
            } else {
                (k.into_owned(), v)
            }
        })
        .collect();
    let mut t = u.clone();
    t.query_pairs_mut().clear().extend_pairs(pairs);
    t.to_string()
}

async fn retries_dead_letters_urls_and_replay(store: Store) {
    let (rt, s3) = node(store, |_| {}).await;
    let sink = HashingSink::start().await;
    rt.create_tenant("acme").await;
    let retry = json!({"retry": {"max_retries": 1, "backoff_base_s": 0.05}});
    rt.create_integration("acme", spec("hook", &sink.url(), retry)).await;
    let len = 3 * MIB;

    // Failed twice (a retry, then the dead letter): both attempts got the whole payload.
    sink.set_status(503);
    let (status, id) = post(&rt, "hook", 7, len, true).await;
    assert_eq!(status, 202);
    let d = dead_letter_of(&rt, &id).await;
    let attempts = sink.for_message(&id);
    assert_eq!(attempts.len(), 2, "first attempt and one retry");
    assert!(attempts.iter().all(|a| a.sha256 == pattern_sha256(7, len)));
    assert!(d.get("payload").is_none(), "{d}");
    assert_eq!(d["payload_bytes"], len);
    assert_eq!(d["payload_ref"]["sha256"], pattern_sha256(7, len));

    // The presigned URL, fetched by a plain client; tampered, refused.
    let url = d["payload_ref"]["url"].as_str().unwrap().to_owned();
    assert_eq!(fetch(&url).await, (200, len, pattern_sha256(7, len)));
    assert_eq!(fetch(&tampered(&url)).await.0, 403, "tampered: {}", tampered(&url));
    // Expired: a URL valid for one second, a little later.
    let key = d["payload_ref"]["key"].as_str().unwrap();
    let objects = rt.rt().control.objects().unwrap().clone();
    let short = objects.presigned_url_for(key, Duration::from_secs(1)).await.unwrap();
    tokio::time::sleep(Duration::from_millis(2_100)).await;
    assert_eq!(fetch(&short).await.0, 403, "expired: {short}");

    // Replay finds the payload again; completion removes it.
    sink.set_status(200);
    let (s, b) = rt
        .api(
            Method::POST,
            &format!("/api/tenants/acme/dead-letters/{id}/retry"),
            None,
        )
        .await;
    assert_eq!(s, 202, "{b}");
    rt.wait_status("acme", &id, "completed").await;
    let attempts = sink.for_message(&id);
    assert_eq!(attempts.len(), 3);
    assert_eq!(attempts[2].sha256, pattern_sha256(7, len));
    no_objects_left(&rt, &s3, "the replay's completion").await;

    // A deleted dead letter takes its object with it.
    sink.set_status(400);
    let (_, id) = post(&rt, "hook", 8, len, true).await;
    dead_letter_of(&rt, &id).await;
    assert_eq!(objects_count(&rt, &s3), 1, "the dead letter holds its payload");
    let (s, _) = rt
        .api(Method::DELETE, &format!("/api/tenants/acme/dead-letters/{id}"), None)
        .await;
    assert_eq!(s, 204);
    no_objects_left(&rt, &s3, "the dead letter's deletion").await;

    // Deleting the tenant deletes its objects.
    let (_, id) = post(&rt, "hook", 9, len, true).await;
    dead_letter_of(&rt, &id).await;
    assert_eq!(objects_count(&rt, &s3), 1);
    let (s, _) = rt.api(Method::DELETE, "/api/tenants/acme", None).await;
    assert_eq!(s, 204);
    no_objects_left(&rt, &s3, "the tenant's deletion").await;
    rt.shutdown().await;
}

fn objects_count(rt: &TestRuntime, s3: &Option<S3Server>) -> usize {
    objects(rt, s3).len()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn retries_dead_letters_presigned_urls_and_replay_find_the_payload_fs() {
    retries_dead_letters_urls_and_replay(Store::Fs).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn retries_dead_letters_presigned_urls_and_replay_find_the_payload_s3() {
    retries_dead_letters_urls_and_replay(Store::S3).await;
}

/// The store down: a large webhook gets 503 with `Retry-After` and nothing is recorded;
/// small ones still pass; once the store is back, large ones do too.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_store_down_is_503_at_ingress_and_loses_nothing() {
    let (rt, mut s3) = node(Store::S3, |_| {}).await;
    let sink = HashingSink::start().await;
    rt.create_tenant("acme").await;
    rt.create_integration("acme", spec("hook", &sink.url(), json!({})))
        .await;
    s3.as_mut().unwrap().kill();
    // The same webhook each time (a sender retrying it, same idempotency key).
    let big = || async {
        rt.http
            .post(rt.url("/webhooks/acme/hook"))
            .header("idempotency-key", "big-1")
            .body(crate::common::payloads::pattern_bytes(11, 512 * KIB))
            .send()
            .await
            .unwrap()
    };
    let r = big().await;
    assert_eq!(r.status().as_u16(), 503);
    assert_eq!(r.headers().get("retry-after").and_then(|v| v.to_str().ok()), Some("1"));
    let v: Value = r.json().await.unwrap();
    assert_eq!(v["error"]["code"], "object_store_unavailable", "{v}");
    let (s, small) = post(&rt, "hook", 12, 10 * KIB, true).await;
    assert_eq!(s, 202);
    rt.wait_status("acme", &small, "completed").await;

    s3.as_mut().unwrap().restart().await;
    // The sender's retry of the refused webhook is accepted and delivered.
    let r = big().await;
    assert_eq!(r.status().as_u16(), 202);
    let id = r.json::<Value>().await.unwrap()["message_id"]
        .as_str()
        .unwrap()
        .to_owned();
    rt.wait_status("acme", &id, "completed").await;
    delivered_once(&sink, &id, 512 * KIB, 11).await;
    no_objects_left(&rt, &s3, "completion").await;
    rt.shutdown().await;
}

/// Filters read a claim-checked JSON body from the store (within
/// `claim_check.pipeline_read_bytes_max`): one that matches is delivered, one that does
/// not is filtered, and both objects are released.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn filters_read_claim_checked_bodies() {
    let (rt, s3) = node(Store::Fs, |_| {}).await;
    let sink = HashingSink::start().await;
    rt.create_tenant("acme").await;
    let filter = json!({"filters": [{"type": "json_field", "path": "/kind", "op": "eq", "value": "order"}]});
    rt.create_integration("acme", spec("hook", &sink.url(), filter)).await;
    let padded = |kind: &str| serde_json::to_vec(&json!({"kind": kind, "pad": "x".repeat(400 * 1024)})).unwrap();
    let (s, a) = rt.webhook_json("acme", "hook", padded("order"), &[]).await;
    assert_eq!(s, 202);
    let (s, b) = rt.webhook_json("acme", "hook", padded("refund"), &[]).await;
    assert_eq!(s, 202);
    let (a, b) = (a["message_id"].as_str().unwrap(), b["message_id"].as_str().unwrap());
    rt.wait_status("acme", a, "completed").await;
    rt.wait_status("acme", b, "filtered").await;
    assert_eq!(sink.for_message(a)[0].len, padded("order").len() as u64);
    assert!(sink.for_message(b).is_empty());
    no_objects_left(&rt, &s3, "completion and filtering").await;
    rt.shutdown().await;
}

/// At most `claim_check.uploads_in_flight_max` bodies stream into the store at once: one
/// more gets 503 `too_many_uploads` with `Retry-After`, and goes through once the first
/// has finished.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn uploads_past_the_bound_get_503_and_pass_later() {
    let (rt, s3) = node(Store::Fs, |cfg| cfg.claim_check.uploads_in_flight_max = 1).await;
    let sink = HashingSink::start().await;
    rt.create_tenant("acme").await;
    rt.create_integration("acme", spec("hook", &sink.url(), json!({})))
        .await;
    // A sender that stalls after its first 300 KiB holds the one upload slot.
    let (tx, rx) = tokio::sync::mpsc::channel::<Result<bytes::Bytes, std::io::Error>>(4);
    tx.send(Ok(bytes::Bytes::from(vec![7u8; 300 * 1024]))).await.unwrap();
    let stalled = {
        let req = rt
            .http
            .post(rt.url("/webhooks/acme/hook"))
            .header("content-length", 400 * 1024)
            .body(reqwest::Body::wrap_stream(tokio_stream(rx)));
        tokio::spawn(async move { req.send().await.map(|r| r.status().as_u16()) })
    };
    let busy = wait_until(Duration::from_secs(10), || async {
        rt.rt().control.objects().unwrap().uploads.available_permits() == 0
    })
    .await;
    assert!(busy.is_ok(), "the first upload never started");
    let r = rt
        .http
        .post(rt.url("/webhooks/acme/hook"))
        .body(crate::common::payloads::pattern_bytes(13, 300 * KIB))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status().as_u16(), 503);
    assert_eq!(r.headers().get("retry-after").and_then(|v| v.to_str().ok()), Some("1"));
    assert_eq!(r.json::<Value>().await.unwrap()["error"]["code"], "too_many_uploads");
    // The first finishes; the retry passes.
    tx.send(Ok(bytes::Bytes::from(vec![7u8; 100 * 1024]))).await.unwrap();
    drop(tx);
    assert_eq!(stalled.await.unwrap().unwrap(), 202);
    let (s, id) = post(&rt, "hook", 13, 300 * KIB, false).await;
    assert_eq!(s, 202);
    rt.wait_status("acme", &id, "completed").await;
    delivered_once(&sink, &id, 300 * KIB, 13).await;
    no_objects_left(&rt, &s3, "completion").await;
    rt.shutdown().await;
}

/// A receiver as a stream.
fn tokio_stream<T: Send + 'static>(
    mut rx: tokio::sync::mpsc::Receiver<T>,
) -> impl futures::Stream<Item = T> + Send + 'static {
    futures::stream::poll_fn(move |cx| rx.poll_recv(cx))
}

/// A dead letter that expires (`state.dead_letter_max_age_s`) leaves its object to the
/// sweeper, which removes it: after expiry nothing is left behind either.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_expired_dead_letter_leaves_no_object_behind() {
    let (rt, s3) = node(Store::S3, |cfg| {
        cfg.state.dead_letter_max_age_s = 2;
        cfg.claim_check.orphan_grace_s = 1;
        cfg.claim_check.sweep_interval_s = 1;
    })
    .await;
    let sink = HashingSink::start().await;
    sink.set_status(400);
    rt.create_tenant("acme").await;
    rt.create_integration("acme", spec("hook", &sink.url(), json!({"retry": {"max_retries": 0}})))
        .await;
    let (s, id) = post(&rt, "hook", 41, 300 * KIB, true).await;
    assert_eq!(s, 202);
    dead_letter_of(&rt, &id).await;
    let expired = wait_until(Duration::from_secs(30), || async {
        rt.api(Method::GET, &format!("/api/tenants/acme/dead-letters/{id}"), None)
            .await
            .0
            == 404
    })
    .await;
    assert!(expired.is_ok(), "the dead letter never expired");
    no_objects_left(&rt, &s3, "the dead letter's expiry").await;
    rt.shutdown().await;
}
