//! The IntegrationActor alone: a real nats-server for its subscription, an in-memory
//! message store and a scripted destination for its ports.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use ractor::Actor;

use super::*;
use crate::components::Pipeline;
use crate::fakes::{MemoryStore, ScriptedProducer};
use crate::ids::{IntegrationId, MessageId, TenantId};
use crate::message::{MessageState, RetryPolicy, Status, encode_envelope};
use crate::{Envelope, subjects, wire};

/// A nats-server >= 2.10 on a free port (`VRSKY_NATS__SERVER_BIN`, which `scripts/test`
/// sets, or the first on `PATH`), killed when dropped.
struct Server {
    child: std::process::Child,
    url: String,
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

async fn server() -> Server {
    let bin = std::env::var("VRSKY_NATS__SERVER_BIN").unwrap_or_else(|_| "nats-server".into());
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let child = std::process::Command::new(bin)
        .args(["-a", "127.0.0.1", "-p", &port.to_string()])
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .expect("nats-server (scripts/test installs it)");
    // Owned from here: dropped (killed and reaped) on every path, the panic included.
    let server = Server {
        child,
        url: format!("nats://127.0.0.1:{port}"),
    };
    for _ in 0..250 {
        if std::net::TcpStream::connect(("127.0.0.1", port)).is_ok() {
            return server;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    panic!("nats-server did not listen on {port}");
}

fn ids() -> (TenantId, IntegrationId) {
    (TenantId::new("acme").unwrap(), IntegrationId::new("hook").unwrap())
}

/// Stores a message as ingress does; returns its id and what is published.
fn ingress(store: &MemoryStore, body: &'static [u8]) -> (MessageId, bytes::Bytes, u64) {
    ingress_with(store, body, None)
}

/// As [`ingress`], with the body in the object store when `reference` is given.
fn ingress_with(
    store: &MemoryStore,
    body: &'static [u8],
    reference: Option<crate::payload::PayloadRef>,
) -> (MessageId, bytes::Bytes, u64) {
    let (t, i) = ids();
    let id = MessageId::generate();
    let env = Envelope {
        message_id: id.clone(),
        tenant_id: t.clone(),
        integration_id: i.clone(),
        headers: vec![],
        content_type: Some("text/plain".into()),
        payload: if reference.is_some() {
            bytes::Bytes::new()
        } else {
            bytes::Bytes::from_static(body)
        },
        payload_ref: reference,
        trace_context: None,
        attempt: 1,
        received_at_ms: crate::now_ms(),
    };
    let state = MessageState {
        incarnation: 7,
        ..MessageState::received(id.clone(), t, i, crate::now_ms())
    };
    let (stored, revision) = store.create(&state, &encode_envelope(&env).unwrap());
    (id, stored, revision)
}

async fn eventually(what: &str, mut cond: impl FnMut() -> bool) {
    for _ in 0..250 {
        if cond() {
            return;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    panic!("never: {what}");
}

/// A message published twice (a re-drive racing the first publish) is claimed once and
/// delivered once; a retryable failure is committed as a retry and scheduled.
#[tokio::test]
async fn claims_once_delivers_and_commits_through_its_ports() {
    let nats = server().await;
    let client = async_nats::connect(nats.url.as_str()).await.unwrap();
    let store = Arc::new(MemoryStore::default());
    let producer = Arc::new(ScriptedProducer::new(vec![ScriptedProducer::unavailable()]));
    let counters = Arc::new(IntegrationCounters::default());
    let (t, i) = ids();
    let args = IntegrationArgs {
        tenant_id: t.clone(),
        integration_id: i.clone(),
        pipeline: Arc::new(Pipeline::from_specs(&[], &[])),
        producer: producer.clone(),
        clients: vec![client.clone()],
        max_in_flight: 4,
        counters: counters.clone(),
        store: store.clone(),
        retry: RetryPolicy::default(),
        incarnation: 7,
        wire_key: wire::WireKey::new(b"test-wire-key-0123456789abcdef01"),
        payloads: None,
        pipeline_read_max: 1 << 20,
        release_payloads: true,
    };
    let (actor, _) = Actor::spawn(None, IntegrationActor, args).await.unwrap();
    let subject = subjects::integration_inbox(&t, &i);
    let publish = |stored: bytes::Bytes, revision: u64| {
        let (h, p) = wire::encode(
            &wire::WireKey::new(b"test-wire-key-0123456789abcdef01"),
            stored,
            revision,
            None,
        );
        client.publish_with_headers(subject.clone(), h, p)
    };

    // The first attempt of the first message meets a 503: retry, scheduled.
    let (failing, stored, revision) = ingress(&store, b"one");
    publish(stored, revision).await.unwrap();
    eventually("a retry", || store.retries().len() == 1).await;
    let s = store.state(&t, &failing).unwrap();
    assert_eq!((s.status, s.retry_count), (Status::Retry, 1));

    // The second is published twice: one claim wins, the other is skipped, without a
    // write (its revision was claimed here already).
    let (twice, stored, revision) = ingress(&store, b"two");
    let writes = store.writes();
    publish(stored.clone(), revision).await.unwrap();
    publish(stored, revision).await.unwrap();
    eventually("delivered and the duplicate skipped", || {
        store.state(&t, &twice).is_some_and(|s| s.status == Status::Completed)
            && counters.skipped.load(Ordering::Relaxed) == 1
    })
    .await;
    let delivered: Vec<_> = producer.seen().into_iter().filter(|e| e.message_id == twice).collect();
    assert_eq!(delivered.len(), 1, "delivered twice");
    assert_eq!(delivered[0].payload.as_ref(), b"two");
    assert_eq!(store.writes() - writes, 2, "the claim and the completion, nothing else");
    let stats = counters.snapshot();
    assert_eq!(
        (stats.received, stats.delivered, stats.failed, stats.retried),
        (3, 1, 1, 1)
    );
    actor.stop(None);
}

/// A claim-checked payload: the filters read it from the store (within the read limit),
/// the producer gets the bytes, and the object is released once the message completes; one
/// above the limit is dead-lettered with the limit named, and its object is kept for the
/// dead letter.
#[tokio::test]
async fn claim_checked_payloads_are_loaded_for_filters_and_released_on_completion() {
    use crate::components::{FieldOp, FilterSpec};
    use crate::fakes::MemoryPayloads;
    let nats = server().await;
    let client = async_nats::connect(nats.url.as_str()).await.unwrap();
    let store = Arc::new(MemoryStore::default());
    let producer = Arc::new(ScriptedProducer::new(vec![]));
    let payloads = Arc::new(MemoryPayloads::default());
    let (t, i) = ids();
    let filter = FilterSpec::JsonField {
        path: "/kind".into(),
        op: FieldOp::Eq,
        value: Some(serde_json::json!("big")),
    };
    let key = wire::WireKey::new(b"test-wire-key-0123456789abcdef01");
    let args = IntegrationArgs {
        tenant_id: t.clone(),
        integration_id: i.clone(),
        pipeline: Arc::new(Pipeline::from_specs(&[filter], &[])),
        producer: producer.clone(),
        clients: vec![client.clone()],
        max_in_flight: 4,
        counters: Arc::new(IntegrationCounters::default()),
        store: store.clone(),
        retry: RetryPolicy::default(),
        incarnation: 7,
        wire_key: key.clone(),
        payloads: Some(payloads.clone()),
        pipeline_read_max: 64,
        release_payloads: true,
    };
    let (actor, _) = Actor::spawn(None, IntegrationActor, args).await.unwrap();
    let subject = subjects::integration_inbox(&t, &i);
    let small: &'static [u8] = br#"{"kind":"big","pad":"0123456789"}"#;
    let fits = payloads.put("payloads/acme/hook/a/1", bytes::Bytes::from_static(small));
    let (delivered, stored, revision) = ingress_with(&store, b"", Some(fits.clone()));
    let (h, p) = wire::encode(&key, stored, revision, None);
    client.publish_with_headers(subject.clone(), h, p).await.unwrap();
    eventually("the claim-checked message delivered and its object released", || {
        store
            .state(&t, &delivered)
            .is_some_and(|s| s.status == Status::Completed)
            && payloads.deleted() == vec![fits.key.clone()]
    })
    .await;
    assert_eq!(
        producer.seen()[0].payload.as_ref(),
        small,
        "the producer got the stored bytes"
    );

    let large = payloads.put("payloads/acme/hook/b/1", bytes::Bytes::from(vec![b' '; 65]));
    let (refused, stored, revision) = ingress_with(&store, b"", Some(large.clone()));
    let (h, p) = wire::encode(&key, stored, revision, None);
    client.publish_with_headers(subject, h, p).await.unwrap();
    eventually("the payload above the read limit dead-lettered", || {
        store
            .state(&t, &refused)
            .is_some_and(|s| s.status == Status::DeadLetter)
    })
    .await;
    let s = store.state(&t, &refused).unwrap();
    assert!(
        s.last_error
            .as_deref()
            .unwrap_or("")
            .contains("claim_check.pipeline_read_bytes_max"),
        "{:?}",
        s.last_error
    );
    assert!(payloads.contains(&large.key), "the dead letter's object is kept");
    assert_eq!(producer.seen().len(), 1);
    actor.stop(None);
}
