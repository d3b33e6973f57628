//! Group commit (issue 17) against a real platform server with `sync_interval: always`:
//! the bucket's writes of concurrent messages go as JetStream atomic batches, and each
//! write keeps its own compare-and-set. One commit unit in flight, so everything that
//! arrives meanwhile is batched.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use futures::future::join_all;

use vrsky_actors::message::{MessageState, MessageStore, Status, encode_stored};
use vrsky_actors::{Envelope, MessageId, now_ms};
use vrsky_runtime::platform::{Accepted, CommitLimits, Platform, PlatformSettings};

/// A platform server, and the adapter opened on it with every write grouped behind one
/// unit in flight.
async fn batched_platform(dir: &std::path::Path) -> (vrsky_runtime::nats::platform_server::PlatformServer, Platform) {
    let server = crate::common::external_platform(dir, "platform").await;
    let platform = Platform::open(
        crate::common::platform_client(&server).await,
        PlatformSettings {
            message_state_ttl: Duration::from_secs(900),
            retry_queue_max_age: Duration::from_secs(3600),
            dead_letter_max_age: Duration::from_secs(86_400),
            replicas: 1,
            commit: CommitLimits {
                batch_max: 64,
                in_flight_max: 1,
            },
        },
    )
    .await
    .unwrap();
    (server, platform)
}

fn envelope(id: &MessageId) -> Envelope {
    crate::common::acme_hook_envelope(id, b"grouped")
}

/// Accepts `n` messages at once: their states and revisions.
async fn accept_many(platform: &Platform, n: usize) -> Vec<(MessageState, u64, Bytes)> {
    let envelopes: Vec<Envelope> = (0..n).map(|_| envelope(&MessageId::generate())).collect();
    let accepted = join_all(envelopes.iter().map(|e| platform.accept(e, 1, now_ms()))).await;
    accepted
        .into_iter()
        .map(|a| match a.unwrap() {
            Accepted::New {
                state,
                revision,
                stored,
            } => (state, revision, stored),
            Accepted::Duplicate => panic!("a new id was taken for a duplicate"),
        })
        .collect()
}

/// The revision the bucket holds for `state`'s message.
async fn stored_revision(platform: &Platform, state: &MessageState) -> u64 {
    MessageStore::load(platform, &state.tenant_id, &state.message_id)
        .await
        .unwrap()
        .expect("stored")
        .revision
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stale_check_inside_a_batch_fails_only_its_own_write() {
    crate::common::init_logging();
    let dir = tempfile::tempdir().unwrap();
    let (server, platform) = batched_platform(dir.path()).await;
    let messages = accept_many(&platform, 48).await;
    // The revisions ingress was told are the bucket's, batch or not.
    for (state, revision, _) in &messages {
        assert_eq!(stored_revision(&platform, state).await, *revision);
    }
    let after_accepts = platform.commit_figures();
    assert!(
        after_accepts.batches > 0,
        "48 accepts at once were not batched: {after_accepts:?}"
    );

    // Every message is claimed at once; every sixth claim expects a revision its message
    // does not have (a stale claim).
    let claims = messages.iter().enumerate().map(|(i, (state, revision, stored))| {
        let platform = &platform;
        async move {
            let next = MessageState {
                status: Status::Processing,
                ..state.clone()
            };
            let (_, record) = vrsky_actors::message::decode_stored(stored).unwrap();
            let value = encode_stored(&next, record.as_ref()).unwrap();
            let expected = if i % 6 == 3 { revision + 1_000_000 } else { *revision };
            let written = MessageStore::write(platform, &next, value, expected).await.unwrap();
            (i, state.clone(), written)
        }
    });
    for (i, state, written) in join_all(claims).await {
        let stored = stored_revision(&platform, &state).await;
        if i % 6 == 3 {
            assert_eq!(written, None, "the stale claim {i} was written");
            assert_eq!(stored, messages[i].1, "a refused write changed message {i}");
        } else {
            let rev = written.unwrap_or_else(|| panic!("claim {i} failed beside a stale one"));
            assert_eq!(rev, stored, "claim {i} was told another revision than the bucket's");
        }
    }
    let figures = platform.commit_figures();
    // The claims were batched, and each batch holding a stale claim was refused whole
    // and sent again one by one.
    assert!(
        figures.fallbacks > 0 && figures.fallbacks + figures.batches > after_accepts.batches,
        "the stale claims were never inside a batch: {figures:?}"
    );
    server.process.stop.stop().await;
}

/// Message index -> the (expected, new) revision of each successful write.
type Wins = HashMap<usize, Vec<(u64, u64)>>;

/// Many writers (three per message) race on 16 messages, each writing at the revision it last loaded, all
/// through group commit. Compare-and-set must hold as it does for single writes: on each
/// message, no two writes succeed at the same revision, the successes chain from the
/// accept to the stored revision, and each success was told the revision it got.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn racing_revision_checked_writes_stay_linear_under_group_commit() {
    crate::common::init_logging();
    let dir = tempfile::tempdir().unwrap();
    let (server, platform) = batched_platform(dir.path()).await;
    let platform = Arc::new(platform);
    let messages = accept_many(&platform, 16).await;
    let after_accepts = platform.commit_figures();
    let wins: Arc<Mutex<Wins>> = Arc::default();
    let mut writers = Vec::new();
    for (m, (state, _, _)) in messages.iter().enumerate() {
        for w in 0..3 {
            let (platform, wins, state) = (platform.clone(), wins.clone(), state.clone());
            writers.push(tokio::spawn(async move {
                for round in 0..10 {
                    let loaded = MessageStore::load(&*platform, &state.tenant_id, &state.message_id)
                        .await
                        .unwrap()
                        .unwrap();
                    let next = MessageState {
                        last_error: Some(format!("writer {w} round {round}")),
                        ..loaded.state.clone()
                    };
                    let value = encode_stored(&next, loaded.record.as_ref()).unwrap();
                    if let Some(rev) = MessageStore::write(&*platform, &next, value, loaded.revision)
                        .await
                        .unwrap()
                    {
                        assert!(rev > loaded.revision);
                        wins.lock().unwrap().entry(m).or_default().push((loaded.revision, rev));
                    }
                }
            }));
        }
    }
    for w in writers {
        w.await.unwrap();
    }
    let wins = wins.lock().unwrap().clone();
    for (m, (state, accepted_at, _)) in messages.iter().enumerate() {
        let mut chain = wins.get(&m).cloned().unwrap_or_default();
        assert!(!chain.is_empty(), "no write of message {m} succeeded");
        chain.sort();
        let mut at = *accepted_at;
        for (expected, new) in &chain {
            assert_eq!(
                *expected, at,
                "message {m}: two writes won at one revision, or one was told a wrong revision: {chain:?}"
            );
            at = *new;
        }
        assert_eq!(
            stored_revision(&platform, state).await,
            at,
            "message {m}: the chain does not end at the stored revision"
        );
    }
    // The racing writes themselves went through atomic batches (committed or refused).
    let figures = platform.commit_figures();
    assert!(
        figures.batches + figures.fallbacks > after_accepts.batches + after_accepts.fallbacks,
        "no racing write was batched: {figures:?}"
    );
    eprintln!("group commit under racing writers: {figures:?}");
    server.process.stop.stop().await;
}
