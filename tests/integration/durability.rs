//! Issue 3: durable state, retries, dead letters, idempotency, re-drive. In-process node,
//! real nats-servers (platform JetStream and tenant core NATS), real HTTP sink.

use std::time::Duration;

use futures::StreamExt;
use reqwest::Method;
use serde_json::{Value, json};

use vrsky_actors::message::{
    Committed, Committer, Event, MessageState, MessageStore, RetryPolicy, TenantPublisher, decode_stored, encode_stored,
};
use vrsky_actors::{Envelope, IntegrationId, MessageId, TenantId, now_ms};

use crate::common::{Backend, FailFirst, Sink, TestRuntime, spec, wait_until};

/// Retry policy with short delays: retry n waits 0.1 s * 2^n.
fn fast_retry(max_retries: u32) -> Value {
    json!({"max_retries": max_retries, "backoff_base_s": 0.1, "backoff_max_s": 5.0, "jitter": 0.0})
}

async fn setup(sink: &Sink, retry: Value) -> TestRuntime {
    setup_with(sink, retry, 1_000).await
}

/// `redrive_after_ms` long enough keeps the re-driver out of the way, so only the retry
/// queue can deliver a retry on time.
async fn setup_with(sink: &Sink, retry: Value, redrive_after_ms: u64) -> TestRuntime {
    let t = TestRuntime::start_with(Backend::Sqlite, |c| c.state.redrive_after_ms = redrive_after_ms).await;
    t.create_tenant("acme").await;
    t.create_integration("acme", spec("hook", &sink.url("/hook"), json!({"retry": retry})))
        .await;
    t
}

async fn send(t: &TestRuntime, body: &str) -> String {
    let (s, v) = t
        .webhook_json(
            "acme",
            "hook",
            body.as_bytes().to_vec(),
            &[("content-type", "text/plain")],
        )
        .await;
    assert_eq!(s, 202, "{v}");
    v["message_id"].as_str().unwrap().to_owned()
}

/// A sink failing N times then succeeding: delivered on attempt N + 1, with the backoff
/// between attempts.
async fn fails_then_succeeds(n: usize) {
    let sink = Sink::start().await;
    sink.fail_first(FailFirst {
        n,
        status: 503,
        ..Default::default()
    });
    let t = setup_with(&sink, fast_retry(3), 30_000).await;
    let id = send(&t, "payload").await;
    let state = t.wait_status("acme", &id, "completed").await;
    assert_eq!(state["retry_count"], n as u64, "{state}");
    assert_eq!(state["attempts"], n as u64 + 1, "{state}");
    let reqs = sink.for_message(&id);
    assert_eq!(reqs.len(), n + 1, "attempts");
    for (i, r) in reqs.iter().enumerate() {
        assert_eq!(r.header("x-vrsky-attempt"), Some((i + 1).to_string().as_str()));
        assert_eq!(r.body.as_ref(), b"payload");
        assert_eq!(r.header("content-type"), Some("text/plain"));
    }
    for k in 1..reqs.len() {
        let gap = reqs[k].at - reqs[k - 1].at;
        let want = Duration::from_secs_f64(0.1 * 2f64.powi(k as i32));
        assert!(
            gap >= want,
            "gap before attempt {} was {gap:?}, backoff is {want:?}",
            k + 1
        );
        assert!(
            gap < want + Duration::from_secs(3),
            "gap before attempt {} was {gap:?}",
            k + 1
        );
    }
    // Every retry went through the durable retry queue, and each entry was consumed.
    let usage = t.rt().control.platform().usage().await.unwrap();
    let (_, pending, _, published) = usage.into_iter().find(|u| u.0 == "retry_queue").unwrap();
    assert_eq!(
        (published, pending),
        (n as u64, 0),
        "retry_queue entries published / still pending"
    );
    t.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_failure_then_delivered() {
    fails_then_succeeds(1).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_failures_then_delivered() {
    fails_then_succeeds(2).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_failures_then_delivered() {
    fails_then_succeeds(3).await;
}

/// Four failures: dead-lettered after exactly 4 attempts; visible with its history and
/// payload; a replay keeps the id, resets the attempts, and delivers.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn four_failures_dead_letter_then_replay_delivers() {
    let sink = Sink::start().await;
    sink.fail_first(FailFirst {
        n: 4,
        status: 500,
        ..Default::default()
    });
    let t = setup(&sink, fast_retry(3)).await;
    let (s, v) = t
        .webhook_json(
            "acme",
            "hook",
            b"\xff\x00binary".to_vec(),
            &[("content-type", "application/octet-stream")],
        )
        .await;
    assert_eq!(s, 202);
    let id = v["message_id"].as_str().unwrap().to_owned();
    let state = t.wait_status("acme", &id, "dead_letter").await;
    // max_retries 3: four attempts, the first and three retries.
    assert_eq!(
        (state["attempts"].as_u64(), state["retry_count"].as_u64()),
        (Some(4), Some(3)),
        "{state}"
    );
    assert!(state["last_error"].as_str().unwrap().contains("500"), "{state}");
    assert_eq!(sink.for_message(&id).len(), 4);

    let (s, list) = t.api(Method::GET, "/api/tenants/acme/dead-letters", None).await;
    assert_eq!(s, 200);
    assert_eq!(list["dead_letters"][0]["message_id"], id.as_str());
    assert_eq!(list["dead_letters"][0]["integration_id"], "hook");
    assert!(
        list["dead_letters"][0]["dead_at"].as_str().unwrap().ends_with('Z'),
        "{list}"
    );
    let (s, dl) = t
        .api(Method::GET, &format!("/api/tenants/acme/dead-letters/{id}"), None)
        .await;
    assert_eq!(s, 200, "{dl}");
    assert_eq!(dl["attempt_history"].as_array().unwrap().len(), 4);
    assert_eq!(dl["attempt_history"][3]["attempt"], 4);
    assert_eq!(dl["attempt_history"][0]["status"], 500);
    assert_eq!(
        (dl["attempts"].as_u64(), dl["retry_count"].as_u64()),
        (Some(4), Some(3)),
        "{dl}"
    );
    assert!(dl["attempt_history"][0]["at"].as_str().unwrap().ends_with('Z'), "{dl}");
    assert_eq!(dl["content_type"], "application/octet-stream");
    assert_eq!(dl["payload_base64"], "/wBiaW5hcnk=");
    assert_eq!(dl["payload_bytes"], 8);

    // Replay: same id, attempt 1 again, delivered (the sink now succeeds for it).
    let (s, r) = t
        .api(
            Method::POST,
            &format!("/api/tenants/acme/dead-letters/{id}/retry"),
            None,
        )
        .await;
    assert_eq!(s, 202, "{r}");
    assert_eq!(r["message_id"], id.as_str());
    let state = t.wait_status("acme", &id, "completed").await;
    assert_eq!(state["retry_count"], 0);
    let reqs = sink.for_message(&id);
    assert_eq!(reqs.len(), 5);
    assert_eq!(reqs[4].header("x-vrsky-attempt"), Some("1"));
    assert_eq!(reqs[4].body.as_ref(), b"\xff\x00binary");
    let (s, _) = t
        .api(Method::GET, &format!("/api/tenants/acme/dead-letters/{id}"), None)
        .await;
    assert_eq!(s, 404, "replayed dead letter still listed");
    t.shutdown().await;
}

/// 4xx other than 408/429, and 3xx (never followed), dead-letter at once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn permanent_failures_dead_letter_at_once() {
    let sink = Sink::start().await;
    let t = setup(&sink, fast_retry(3)).await;
    for (status, location) in [(400, None), (422, None), (302, Some(sink.url("/elsewhere")))] {
        sink.fail_first(FailFirst {
            n: 1,
            status,
            location,
            ..Default::default()
        });
        let id = send(&t, "x").await;
        let state = t.wait_status("acme", &id, "dead_letter").await;
        assert_eq!(
            (state["attempts"].as_u64(), state["retry_count"].as_u64()),
            (Some(1), Some(0)),
            "{status}: {state}"
        );
        assert!(state["last_error"].as_str().unwrap().contains(&status.to_string()));
        assert_eq!(sink.for_message(&id).len(), 1, "{status} was retried");
    }
    assert_eq!(sink.count("/elsewhere"), 0, "a redirect was followed");
    t.shutdown().await;
}

/// Retry-After on 429 is honoured over a shorter backoff.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn retry_after_is_honoured() {
    let sink = Sink::start().await;
    sink.fail_first(FailFirst {
        n: 1,
        status: 429,
        retry_after: Some("2"),
        ..Default::default()
    });
    let t = setup(&sink, fast_retry(3)).await;
    let id = send(&t, "x").await;
    t.wait_status("acme", &id, "completed").await;
    let reqs = sink.for_message(&id);
    assert_eq!(reqs.len(), 2);
    let gap = reqs[1].at - reqs[0].at;
    assert!(gap >= Duration::from_secs(2), "Retry-After ignored: {gap:?}");
    t.shutdown().await;
}

/// The same idempotency key from many concurrent requests: one 202, the rest 200 with
/// the same id, one delivery.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn duplicate_idempotency_keys_deliver_once() {
    let sink = Sink::start().await;
    let t = setup(&sink, fast_retry(3)).await;
    for header in ["idempotency-key", "webhook-id"] {
        let key = format!("msg_{header}_2KWPBgLlAfxdpx2AI54pPJ85f4W");
        let answers: Vec<(u16, Value)> = futures::stream::iter(0..30)
            .map(|_| {
                let (t, key) = (&t, key.clone());
                async move {
                    t.webhook_json("acme", "hook", b"same".to_vec(), &[(header, key.as_str())])
                        .await
                }
            })
            .buffer_unordered(30)
            .collect()
            .await;
        let accepted = answers.iter().filter(|(s, _)| *s == 202).count();
        let duplicates = answers
            .iter()
            .filter(|(s, v)| *s == 200 && v["duplicate"] == true)
            .count();
        assert_eq!((accepted, duplicates), (1, 29), "{answers:?}");
        let ids: std::collections::HashSet<_> = answers.iter().map(|(_, v)| v["message_id"].clone()).collect();
        assert_eq!(ids.len(), 1, "different ids for one key");
        let id = ids.into_iter().next().unwrap().as_str().unwrap().to_owned();
        t.wait_status("acme", &id, "completed").await;
        // A late repeat is still recognised.
        let (s, v) = t
            .webhook_json("acme", "hook", b"same".to_vec(), &[(header, key.as_str())])
            .await;
        assert_eq!((s, v["message_id"].as_str()), (200, Some(id.as_str())));
        assert_eq!(sink.for_message(&id).len(), 1, "delivered more than once");
    }
    // Unusable keys are refused.
    let long = "k".repeat(300);
    let (s, v) = t
        .webhook_json("acme", "hook", b"x".to_vec(), &[("idempotency-key", long.as_str())])
        .await;
    assert_eq!(s, 400, "{v}");
    assert_eq!(v["error"]["code"], "bad_idempotency_key");
    t.shutdown().await;
}

fn envelope(id: &MessageId) -> Envelope {
    crate::common::acme_hook_envelope(id, b"stored")
}

/// The incarnation of acme/hook, which ingress stamps on its messages.
fn hook_incarnation(t: &TestRuntime) -> u64 {
    let (acme, hook) = (TenantId::new("acme").unwrap(), IntegrationId::new("hook").unwrap());
    t.rt().control.route(&acme, &hook).unwrap().incarnation
}

/// Ingress stored a message and died before publishing it: the re-driver publishes it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stored_but_unpublished_message_is_redriven() {
    let sink = Sink::start().await;
    let t = setup(&sink, fast_retry(3)).await;
    let id = MessageId::generate();
    let accepted = t
        .rt()
        .control
        .platform()
        .accept(&envelope(&id), hook_incarnation(&t), now_ms())
        .await
        .unwrap();
    assert!(matches!(accepted, vrsky_runtime::platform::Accepted::New { .. }));
    let state = t.wait_status("acme", id.as_str(), "completed").await;
    assert_eq!(state["retry_count"], 0);
    let reqs = sink.for_message(id.as_str());
    assert_eq!(reqs.len(), 1);
    assert_eq!(reqs[0].body.as_ref(), b"stored");
    t.shutdown().await;
}

/// A node whose integration delivers to `sink` (500 ms delivery timeout), and a message
/// stored and claimed as a worker claims it (the same envelope record, written back with
/// the new state) and never published: what a worker that died after its claim leaves.
async fn claimed_by_a_dead_worker(sink: &Sink) -> (TestRuntime, MessageId, MessageState, bytes::Bytes) {
    let t = TestRuntime::start(Backend::Sqlite).await;
    t.create_tenant("acme").await;
    let mut s = spec("hook", &sink.url("/hook"), json!({"retry": fast_retry(3)}));
    s["producer"]["timeout_ms"] = json!(500);
    t.create_integration("acme", s).await;
    let platform = t.rt().control.platform();
    let id = MessageId::generate();
    let vrsky_runtime::platform::Accepted::New {
        state,
        revision,
        stored,
    } = platform
        .accept(&envelope(&id), hook_incarnation(&t), now_ms())
        .await
        .unwrap()
    else {
        panic!("duplicate")
    };
    let claimed = state.apply(&Event::Claim, &RetryPolicy::default(), now_ms()).unwrap();
    let record = decode_stored(&stored).unwrap().1.unwrap();
    let value = encode_stored(&claimed, Some(&record)).unwrap();
    platform.write(&claimed, value, revision).await.unwrap().expect("claim");
    (t, id, claimed, record)
}

/// A worker claimed a message and died: after the delivery timeout plus grace it is
/// re-driven as a failed attempt and delivered on attempt 2.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn claimed_message_of_a_dead_worker_is_redriven() {
    let sink = Sink::start().await;
    let (t, id, _, _) = claimed_by_a_dead_worker(&sink).await;
    let state = t.wait_status("acme", id.as_str(), "completed").await;
    assert_eq!(state["retry_count"], 1, "{state}");
    let reqs = sink.for_message(id.as_str());
    assert_eq!(reqs.len(), 1);
    assert_eq!(reqs[0].header("x-vrsky-attempt"), Some("2"));
    t.shutdown().await;
}

/// A worker dead-lettered a message (the entry is written first) and died before writing
/// the state: the re-driver finds the entry and finishes the commit instead of retrying,
/// so the message is not delivered while it also sits in the dead-letter queue.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dead_letter_written_before_a_crash_is_not_retried() {
    let sink = Sink::start().await;
    let (t, id, claimed, record) = claimed_by_a_dead_worker(&sink).await;
    // The worker's outcome: a permanent failure. Its dead letter is written; the crash
    // comes before the state write.
    let failed = Event::Failed {
        error: "http://dest answered 400 Bad Request".into(),
        status: Some(400),
        retryable: false,
        retry_after_ms: None,
        jitter_sample: 0.0,
    };
    let dead = claimed.apply(&failed, &RetryPolicy::default(), now_ms()).unwrap();
    MessageStore::dead_letter(t.rt().control.platform(), &dead, &record)
        .await
        .unwrap();

    let state = t.wait_status("acme", id.as_str(), "dead_letter").await;
    assert_eq!(
        (state["attempts"].as_u64(), state["retry_count"].as_u64()),
        (Some(1), Some(0)),
        "{state}"
    );
    assert_eq!(state["last_error"], "http://dest answered 400 Bad Request", "{state}");
    assert!(
        sink.for_message(id.as_str()).is_empty(),
        "delivered although dead-lettered"
    );
    let (code, page) = t.api(Method::GET, "/api/tenants/acme/dead-letters", None).await;
    assert_eq!(code, 200, "{page}");
    let ids: Vec<&str> = page["dead_letters"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|d| d["message_id"].as_str())
        .collect();
    assert_eq!(ids, vec![id.as_str()], "{page}");
    t.shutdown().await;
}

/// Two claimants dead-letter the same claim: the re-driver (the worker looked dead) and
/// then the worker itself. The second must neither replace the first one's entry nor,
/// when its state write loses the revision check, retract the queue into emptiness.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_late_second_dead_letter_keeps_the_first() {
    let sink = Sink::start().await;
    let (t, id, claimed, record) = claimed_by_a_dead_worker(&sink).await;
    let platform = t.rt().control.platform();
    let acme = TenantId::new("acme").unwrap();
    let revision = platform.load(&acme, &id).await.unwrap().unwrap().revision;
    let policy = RetryPolicy::default();
    let committer = Committer {
        store: platform,
        publisher: None,
        policy: &policy,
    };
    let failed = |error: &str| Event::Failed {
        error: error.into(),
        status: Some(400),
        retryable: false,
        retry_after_ms: None,
        jitter_sample: 0.0,
    };
    let first = committer
        .commit(
            &claimed,
            revision,
            &failed("re-driver: answered 400"),
            Some(&record),
            now_ms(),
        )
        .await
        .unwrap();
    assert!(matches!(first, Committed::Written(ref s, _) if s.status == vrsky_actors::message::Status::DeadLetter));
    // The worker, still holding the claim's revision, fails the message too.
    let second = committer
        .commit(
            &claimed,
            revision,
            &failed("worker: answered 400"),
            Some(&record),
            now_ms(),
        )
        .await
        .unwrap();
    assert_eq!(second, Committed::Conflict);

    let path = format!("/api/tenants/acme/dead-letters/{id}");
    let (code, dl) = t.api(Method::GET, &path, None).await;
    assert_eq!(code, 200, "the dead letter vanished: {dl}");
    assert_eq!(dl["last_error"], "re-driver: answered 400", "{dl}");
    let (_, state) = t
        .api(Method::GET, &format!("/api/tenants/acme/messages/{id}"), None)
        .await;
    assert_eq!(state["status"], "dead_letter", "{state}");
    t.shutdown().await;
}

/// Only finished states expire: with a 2 s state TTL, a completed message is forgotten
/// after it, while one waiting for a retry (or in any unfinished state) is kept, so a
/// node or platform down for longer than the TTL loses no accepted message.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn only_finished_states_expire() {
    let ok = Sink::start().await;
    let failing = Sink::start().await;
    failing.set_status(503);
    let t = TestRuntime::start_with(Backend::Sqlite, |c| c.state.message_state_ttl_s = 2).await;
    t.create_tenant("acme").await;
    t.create_integration("acme", spec("done", &ok.url("/done"), json!({})))
        .await;
    let slow = json!({"max_retries": 1, "backoff_base_s": 30.0, "backoff_max_s": 60.0, "jitter": 0.0});
    t.create_integration("acme", spec("waits", &failing.url("/waits"), json!({"retry": slow})))
        .await;
    let (code, v) = t.webhook_json("acme", "done", b"a".to_vec(), &[]).await;
    assert_eq!(code, 202, "{v}");
    let done = v["message_id"].as_str().unwrap().to_owned();
    let (code, v) = t.webhook_json("acme", "waits", b"b".to_vec(), &[]).await;
    assert_eq!(code, 202, "{v}");
    let waits = v["message_id"].as_str().unwrap().to_owned();
    t.wait_status("acme", &done, "completed").await;
    t.wait_status("acme", &waits, "retry").await;

    let gone = wait_until(Duration::from_secs(20), || async {
        let (code, _) = t
            .api(Method::GET, &format!("/api/tenants/acme/messages/{done}"), None)
            .await;
        code == 404
    })
    .await;
    assert!(gone.is_ok(), "a completed state did not expire after its TTL");
    let (code, state) = t
        .api(Method::GET, &format!("/api/tenants/acme/messages/{waits}"), None)
        .await;
    assert_eq!(
        (code, state["status"].as_str()),
        (200, Some("retry")),
        "an unfinished state expired: {state}"
    );
    t.shutdown().await;
}

/// A restarted node knows its predecessor is gone: what it left unfinished (a claim
/// whose worker died, a stored message never published) is re-driven at once, not after
/// `state.redrive_after_ms` (here a minute).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restarted_node_redrives_what_its_predecessor_left_at_once() {
    let sink = Sink::start().await;
    let mut t = TestRuntime::start_with(Backend::Sqlite, |c| c.state.redrive_after_ms = 60_000).await;
    t.create_tenant("acme").await;
    t.create_integration(
        "acme",
        spec("hook", &sink.url("/hook"), json!({"retry": fast_retry(3)})),
    )
    .await;
    let platform = t.rt().control.platform();
    let mut ids = Vec::new();
    for claim in [false, true] {
        let id = MessageId::generate();
        let vrsky_runtime::platform::Accepted::New {
            state,
            revision,
            stored,
        } = platform
            .accept(&envelope(&id), hook_incarnation(&t), now_ms())
            .await
            .unwrap()
        else {
            panic!("duplicate")
        };
        if claim {
            let claimed = state.apply(&Event::Claim, &RetryPolicy::default(), now_ms()).unwrap();
            let record = decode_stored(&stored).unwrap().1.unwrap();
            let value = encode_stored(&claimed, Some(&record)).unwrap();
            platform.write(&claimed, value, revision).await.unwrap().expect("claim");
        }
        ids.push(id);
    }
    t.restart().await;
    let started = std::time::Instant::now();
    let done = wait_until(Duration::from_secs(15), || async {
        let mut all = true;
        for id in &ids {
            let (_, v) = t
                .api(Method::GET, &format!("/api/tenants/acme/messages/{id}"), None)
                .await;
            all &= v["status"] == "completed";
        }
        all
    })
    .await;
    assert!(done.is_ok(), "not re-driven within 15 s of the restart");
    eprintln!("left unfinished, delivered {:?} after the restart", started.elapsed());
    for id in &ids {
        assert_eq!(sink.for_message(id.as_str()).len(), 1, "delivered once");
    }
    t.shutdown().await;
}

/// The re-drive index is the RetryScheduler's own state: when the actor is killed and
/// restarted, it scans the bucket again, so a message it was tracking (stored, never
/// published) is still re-driven and delivered.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restarted_scheduler_rebuilds_its_index() {
    let sink = Sink::start().await;
    let t = setup_with(&sink, fast_retry(3), 3_000).await;
    let id = MessageId::generate();
    let accepted = t
        .rt()
        .control
        .platform()
        .accept(&envelope(&id), hook_incarnation(&t), now_ms())
        .await
        .unwrap();
    assert!(matches!(accepted, vrsky_runtime::platform::Accepted::New { .. }));
    // Killed before the message's grace (3 s) has passed: only the new instance's scan
    // can find it.
    let scheduler = t.rt().control.runtime_child("retry-scheduler").await.unwrap().unwrap();
    scheduler.kill();
    t.wait_running("retry-scheduler", 1).await;
    let state = t.wait_status("acme", id.as_str(), "completed").await;
    assert_eq!(state["retry_count"], 0, "{state}");
    assert_eq!(sink.for_message(id.as_str()).len(), 1);
    t.shutdown().await;
}

/// Dead letters page newest first; a bulk replay reports its matches on a dry run, then
/// replays them; a dead letter can be deleted.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dead_letter_api_pages_filters_replays_and_deletes() {
    let sink = Sink::start().await;
    sink.set_status(400);
    let t = setup(&sink, fast_retry(0)).await;
    let mut ids = Vec::new();
    for i in 0..5 {
        let id = send(&t, &format!("m{i}")).await;
        t.wait_status("acme", &id, "dead_letter").await;
        ids.push(id);
    }
    let (s, p1) = t.api(Method::GET, "/api/tenants/acme/dead-letters?limit=2", None).await;
    assert_eq!(s, 200);
    let page1: Vec<&str> = p1["dead_letters"]
        .as_array()
        .unwrap()
        .iter()
        .map(|d| d["message_id"].as_str().unwrap())
        .collect();
    assert_eq!(page1, vec![ids[4].as_str(), ids[3].as_str()]);
    let cursor = p1["next_cursor"].as_u64().unwrap();
    let (_, p2) = t
        .api(
            Method::GET,
            &format!("/api/tenants/acme/dead-letters?limit=2&cursor={cursor}"),
            None,
        )
        .await;
    let page2: Vec<&str> = p2["dead_letters"]
        .as_array()
        .unwrap()
        .iter()
        .map(|d| d["message_id"].as_str().unwrap())
        .collect();
    assert_eq!(page2, vec![ids[2].as_str(), ids[1].as_str()]);
    let (s, _) = t.api(Method::GET, "/api/tenants/acme/dead-letters?limit=0", None).await;
    assert_eq!(s, 400);
    let (s, _) = t.api(Method::GET, "/api/tenants/acme/dead-letters?bogus=1", None).await;
    assert_eq!(s, 400);

    let (s, _) = t
        .api(
            Method::DELETE,
            &format!("/api/tenants/acme/dead-letters/{}", ids[0]),
            None,
        )
        .await;
    assert_eq!(s, 204);
    let (s, _) = t
        .api(
            Method::DELETE,
            &format!("/api/tenants/acme/dead-letters/{}", ids[0]),
            None,
        )
        .await;
    assert_eq!(s, 404);

    let (s, dry) = t
        .api(
            Method::POST,
            "/api/tenants/acme/dead-letters/retry",
            Some(json!({"integration_id": "hook", "dry_run": true})),
        )
        .await;
    assert_eq!(s, 200, "{dry}");
    assert_eq!((dry["matched"].as_u64(), dry["replayed"].as_u64()), (Some(4), Some(0)));
    let (_, none) = t
        .api(
            Method::POST,
            "/api/tenants/acme/dead-letters/retry",
            Some(json!({"since_ms": now_ms() + 60_000, "dry_run": true})),
        )
        .await;
    assert_eq!(none["matched"], 0);
    sink.set_status(200);
    let (s, done) = t
        .api(Method::POST, "/api/tenants/acme/dead-letters/retry", Some(json!({})))
        .await;
    assert_eq!(s, 202, "{done}");
    assert_eq!(done["replayed"], 4, "{done}");
    for id in &ids[1..] {
        t.wait_status("acme", id, "completed").await;
    }
    let (_, empty) = t.api(Method::GET, "/api/tenants/acme/dead-letters", None).await;
    assert_eq!(empty["dead_letters"].as_array().unwrap().len(), 0);
    t.shutdown().await;
}

/// A policy that cannot finish within the state TTL is refused; messages are scoped to
/// their tenant.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn retry_policy_and_tenant_scoping_are_checked() {
    let sink = Sink::start().await;
    let t = setup(&sink, fast_retry(3)).await;
    let (s, v) = t
        .api(
            Method::POST,
            "/api/tenants/acme/integrations",
            Some(spec(
                "long",
                &sink.url("/x"),
                json!({"retry": {"max_retries": 10, "backoff_base_s": 60, "backoff_max_s": 3600}}),
            )),
        )
        .await;
    assert_eq!(s, 400, "{v}");
    assert!(
        v["error"]["message"].as_str().unwrap().starts_with("retry.max_retries"),
        "{v}"
    );
    let (s, v) = t
        .api(
            Method::POST,
            "/api/tenants/acme/integrations",
            Some(spec("j", &sink.url("/x"), json!({"retry": {"jitter": 3}}))),
        )
        .await;
    assert_eq!(s, 400, "{v}");

    t.create_tenant("other").await;
    let id = send(&t, "mine").await;
    t.wait_status("acme", &id, "completed").await;
    let (s, _) = t
        .api(Method::GET, &format!("/api/tenants/other/messages/{id}"), None)
        .await;
    assert_eq!(s, 404, "another tenant saw the message");
    let (s, _) = t
        .api(
            Method::POST,
            &format!("/api/tenants/other/dead-letters/{id}/retry"),
            None,
        )
        .await;
    assert_eq!(s, 404);
    let (s, v) = t
        .api(Method::GET, &format!("/api/tenants/acme/messages/{id}"), None)
        .await;
    assert_eq!(s, 200);
    for k in [
        "message_id",
        "status",
        "retry_count",
        "last_error",
        "created_at",
        "updated_at",
    ] {
        assert!(v.get(k).is_some(), "{k} missing: {v}");
    }
    t.shutdown().await;
}

/// A state key deleted after a refused request (a rollback leaves a delete marker) must
/// not make the client's retry with the same idempotency key look like a duplicate.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn retry_over_a_rolled_back_state_is_accepted() {
    let sink = Sink::start().await;
    let t = setup(&sink, fast_retry(3)).await;
    let key = [("idempotency-key", "order-77")];
    let (s, v) = t.webhook_json("acme", "hook", b"one".to_vec(), &key).await;
    assert_eq!(s, 202, "{v}");
    let id = v["message_id"].as_str().unwrap().to_owned();
    t.wait_status("acme", &id, "completed").await;
    let js = async_nats::jetstream::new(t.rt().platform.clone());
    let kv = js.get_key_value("message_state").await.unwrap();
    kv.delete(format!("acme.{id}")).await.unwrap();
    let (s, v) = t.webhook_json("acme", "hook", b"two".to_vec(), &key).await;
    assert_eq!(s, 202, "swallowed as a duplicate: {v}");
    assert_eq!(v["message_id"].as_str(), Some(id.as_str()));
    t.wait_status("acme", &id, "completed").await;
    assert_eq!(sink.for_message(&id).len(), 2);
    t.shutdown().await;
}

/// A message waiting for a retry when its integration is deleted is dead-lettered with
/// the reason instead of being re-driven forever.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn messages_of_a_deleted_integration_are_dead_lettered() {
    let sink = Sink::start().await;
    sink.set_status(503);
    let t = setup(&sink, json!({"max_retries": 3, "backoff_base_s": 0.5})).await;
    let id = send(&t, "x").await;
    t.wait_status("acme", &id, "retry").await;
    let (s, _) = t.api(Method::DELETE, "/api/tenants/acme/integrations/hook", None).await;
    assert_eq!(s, 204);
    let state = t.wait_status("acme", &id, "dead_letter").await;
    assert!(
        state["last_error"].as_str().unwrap().contains("no longer exists"),
        "{state}"
    );
    t.shutdown().await;
}

/// An integration deleted and created again under the same id does not deliver what its
/// predecessor left unfinished: the waiting retry is dead-lettered with the reason, and
/// reaches the new destination only when the tenant replays it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_re_created_integration_does_not_deliver_its_predecessors_messages() {
    let old_sink = Sink::start().await;
    old_sink.set_status(503);
    let new_sink = Sink::start().await;
    // The retry waits 3 s: time to delete and re-create the integration before it is due.
    let t = setup(&old_sink, json!({"max_retries": 3, "backoff_base_s": 1.5})).await;
    let id = send(&t, "for the old destination").await;
    t.wait_status("acme", &id, "retry").await;
    let (s, _) = t.api(Method::DELETE, "/api/tenants/acme/integrations/hook", None).await;
    assert_eq!(s, 204);
    t.create_integration(
        "acme",
        spec("hook", &new_sink.url("/hook"), json!({"retry": fast_retry(3)})),
    )
    .await;
    let state = t.wait_status("acme", &id, "dead_letter").await;
    assert!(
        state["last_error"].as_str().unwrap().contains("created again"),
        "{state}"
    );
    let fresh = send(&t, "for the new destination").await;
    t.wait_status("acme", &fresh, "completed").await;
    assert!(
        new_sink.for_message(&id).is_empty(),
        "the old message reached the new destination"
    );
    // The scheduler dead-lettered it when the retry came due: the new integration's
    // worker never saw it (its counts start from zero).
    let (_, view) = t.api(Method::GET, "/api/tenants/acme/integrations/hook", None).await;
    assert_eq!(view["stats"]["received"], 1, "{view}");
    assert_eq!(view["stats"]["dead_lettered"], 0, "{view}");
    // A replay is the tenant's own choice: the integration now under that id delivers it.
    let (s, v) = t
        .api(
            Method::POST,
            &format!("/api/tenants/acme/dead-letters/{id}/retry"),
            None,
        )
        .await;
    assert_eq!(s, 202, "{v}");
    t.wait_status("acme", &id, "completed").await;
    assert_eq!(new_sink.for_message(&id).len(), 1);
    assert_eq!(old_sink.for_message(&id).len(), 1, "one failed attempt at the old one");
    t.shutdown().await;
}

/// Stores a message of acme/hook stamped with `incarnation` and publishes it on the
/// tenant's NATS, as ingress does.
async fn publish_stamped(t: &TestRuntime, incarnation: u64) -> MessageId {
    let id = MessageId::generate();
    let platform = t.rt().control.platform();
    let vrsky_runtime::platform::Accepted::New {
        state,
        revision,
        stored,
    } = platform.accept(&envelope(&id), incarnation, now_ms()).await.unwrap()
    else {
        panic!("duplicate")
    };
    TenantPublisher::publish(&**t.rt().control.directory(), &state, stored, revision)
        .await
        .unwrap();
    id
}

/// The integration's counters once its worker has taken `n` messages off NATS and settled
/// them (delivered, dead-lettered or skipped).
async fn hook_stats_after(t: &TestRuntime, n: u64) -> Value {
    let stats = std::sync::Mutex::new(Value::Null);
    let settled = wait_until(Duration::from_secs(30), || async {
        let (_, view) = t.api(Method::GET, "/api/tenants/acme/integrations/hook", None).await;
        let s = &view["stats"];
        let done = ["dead_lettered", "skipped", "delivered"]
            .iter()
            .map(|k| s[k].as_u64().unwrap_or(0))
            .sum::<u64>();
        *stats.lock().unwrap() = s.clone();
        s["received"] == n && done >= n
    })
    .await;
    let stats = stats.into_inner().unwrap();
    assert!(settled.is_ok(), "the worker did not settle {n} messages: {stats}");
    stats
}

/// A message still on its way over the tenant's NATS, received for an earlier integration
/// of the same id, is dead-lettered by the worker that takes it, not delivered. The
/// re-driver waits a minute here, so only the worker can have done it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_worker_dead_letters_its_predecessors_message() {
    let sink = Sink::start().await;
    let t = setup_with(&sink, fast_retry(3), 60_000).await;
    let id = publish_stamped(&t, hook_incarnation(&t) - 1).await;
    let state = t.wait_status("acme", id.as_str(), "dead_letter").await;
    assert!(
        state["last_error"].as_str().unwrap().contains("created again"),
        "{state}"
    );
    assert_eq!(state["retry_count"], 0, "{state}");
    assert!(
        sink.for_message(id.as_str()).is_empty(),
        "delivered by the wrong integration"
    );
    let stats = hook_stats_after(&t, 1).await;
    assert_eq!(stats["dead_lettered"], 1, "{stats}");
    t.shutdown().await;
}

/// A worker older than the message's integration (out of date: only a race in changing
/// integrations could leave one running) neither delivers nor dead-letters it: the message
/// stays `received` for the re-driver.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_out_of_date_worker_leaves_a_later_integrations_message_alone() {
    let sink = Sink::start().await;
    let t = setup_with(&sink, fast_retry(3), 60_000).await;
    let id = publish_stamped(&t, hook_incarnation(&t) + 1).await;
    let stats = hook_stats_after(&t, 1).await;
    assert_eq!(
        (stats["skipped"].as_u64(), stats["dead_lettered"].as_u64()),
        (Some(1), Some(0)),
        "{stats}"
    );
    let (s, state) = t
        .api(Method::GET, &format!("/api/tenants/acme/messages/{id}"), None)
        .await;
    assert_eq!(s, 200);
    assert_eq!(state["status"], "received", "{state}");
    assert!(sink.for_message(id.as_str()).is_empty());
    t.shutdown().await;
}

/// Deleting a tenant forgets its messages and dead letters: a tenant created later with
/// the same id sees none of them.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn deleted_tenant_leaves_no_messages_behind() {
    let sink = Sink::start().await;
    sink.set_status(400);
    let t = setup(&sink, fast_retry(0)).await;
    let id = send(&t, "secret of the old tenant").await;
    t.wait_status("acme", &id, "dead_letter").await;
    let (s, _) = t.api(Method::DELETE, "/api/tenants/acme", None).await;
    assert_eq!(s, 204);
    t.create_tenant("acme").await;
    let (s, v) = t.api(Method::GET, "/api/tenants/acme/dead-letters", None).await;
    assert_eq!(s, 200);
    assert_eq!(v["dead_letters"].as_array().unwrap().len(), 0, "{v}");
    let (s, _) = t
        .api(Method::GET, &format!("/api/tenants/acme/messages/{id}"), None)
        .await;
    assert_eq!(s, 404);
    t.shutdown().await;
}

/// A body forged onto a tenant's NATS with the message's current revision (what anyone
/// able to publish there could send) is not claimed: it lacks the runtime's MAC. The
/// stored record stays as it was and the genuine message is delivered, once, by the
/// re-driver.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_forged_publish_with_the_current_revision_is_not_claimed() {
    let sink = Sink::start().await;
    let t = setup_with(&sink, fast_retry(3), 1_000).await;
    let id = MessageId::generate();
    let platform = t.rt().control.platform();
    let vrsky_runtime::platform::Accepted::New { revision, .. } = platform
        .accept(&envelope(&id), hook_incarnation(&t), now_ms())
        .await
        .unwrap()
    else {
        panic!("duplicate")
    };
    // The same message, with a forged body, at the right revision, straight onto the
    // tenant's NATS: without a MAC, and with a made-up one.
    let forged_env = Envelope {
        payload: bytes::Bytes::from_static(b"forged"),
        payload_ref: None,
        ..envelope(&id)
    };
    let state = MessageState {
        incarnation: hook_incarnation(&t),
        ..MessageState::received(
            id.clone(),
            forged_env.tenant_id.clone(),
            forged_env.integration_id.clone(),
            now_ms(),
        )
    };
    let record = vrsky_actors::message::encode_envelope(&forged_env).unwrap();
    let forged = encode_stored(&state, Some(&record)).unwrap();
    let (_, instances) = t.api(Method::GET, "/api/tenants/acme/nats-instances", None).await;
    let url = instances["nats_instances"][0]["url"].as_str().unwrap().to_owned();
    // Whoever forges holds the tenant's own ingress credentials (leaked): NATS lets them
    // publish on the inbox; the MAC is what stops the forgery.
    let nc = crate::common::tenant_client(t.rt(), "acme", vrsky_runtime::nats::trust::Role::Ingress, &url)
        .await
        .unwrap();
    let subject = vrsky_actors::subjects::integration_inbox(&forged_env.tenant_id, &forged_env.integration_id);
    for mac in [None, Some("bm90IHRoZSBydW50aW1l")] {
        let mut h = async_nats::HeaderMap::new();
        h.insert("Vrsky-Revision", revision.to_string().as_str());
        if let Some(m) = mac {
            h.insert("Vrsky-Mac", m);
        }
        nc.publish_with_headers(subject.clone(), h, forged.clone())
            .await
            .unwrap();
    }
    nc.flush().await.unwrap();
    let m = t.wait_status("acme", id.as_str(), "completed").await;
    assert_eq!(m["attempts"], 1, "{m}");
    let got = sink.for_message(id.as_str());
    assert_eq!(got.len(), 1, "delivered {} times", got.len());
    assert_eq!(got[0].body.as_ref(), b"stored", "the forged body was delivered");
    let (_, hook) = t.api(Method::GET, "/api/tenants/acme/integrations/hook", None).await;
    assert!(hook["stats"]["malformed"].as_u64().unwrap() >= 2, "{hook}");
    sink.stop();
    t.shutdown().await;
}
