//! In-memory fakes of the ports (`MessageStore`, `Producer`, `Provisioner`), so an actor
//! can be tested alone: each keeps what it was asked, answers as scripted, and keeps the
//! real port's rules that the actors rely on (revision-checked writes, one dead letter per
//! message life). Built for this crate's tests and, with the `fakes` feature, for others.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::{HashMap, VecDeque};
use std::sync::Mutex;
use std::sync::atomic::{AtomicUsize, Ordering};

use bytes::Bytes;
use futures::future::BoxFuture;
use tokio::sync::oneshot;

use crate::components::{Delivered, ProduceError, ProduceErrorKind, Producer};
use crate::envelope::Envelope;
use crate::ids::{MessageId, TenantId};
use crate::message::{MessageState, MessageStore, StoreError, Stored, decode_stored, encode_stored};
use crate::nats_instance::{InstanceSpec, ProvisionError, Provisioner, RunningInstance, StopHandle};
use crate::tenant::Endpoint;

#[derive(Default)]
struct Rows {
    values: HashMap<(TenantId, MessageId), (Bytes, u64)>,
    next_revision: u64,
    /// State writes tried (won or lost their revision check).
    writes: usize,
    retries: Vec<MessageState>,
    dead_letters: Vec<(u64, MessageState)>,
}

/// The message state in memory: compare-and-set writes on a revision counter shared by
/// every key, as in a JetStream stream.
#[derive(Default)]
pub struct MemoryStore {
    rows: Mutex<Rows>,
}

impl MemoryStore {
    /// Stores a new message (what ingress does): the bytes stored and their revision.
    pub fn create(&self, state: &MessageState, record: &Bytes) -> (Bytes, u64) {
        let value = encode_stored(state, Some(record)).unwrap();
        let mut rows = self.rows.lock().unwrap();
        rows.next_revision += 1;
        let revision = rows.next_revision;
        let key = (state.tenant_id.clone(), state.message_id.clone());
        assert!(!rows.values.contains_key(&key), "created twice");
        rows.values.insert(key, (value.clone(), revision));
        (value, revision)
    }

    /// A message's current state.
    pub fn state(&self, tenant: &TenantId, id: &MessageId) -> Option<MessageState> {
        let rows = self.rows.lock().unwrap();
        rows.values
            .get(&(tenant.clone(), id.clone()))
            .map(|(v, _)| decode_stored(v).unwrap().0)
    }

    /// State writes tried so far, whether they won their revision check or not.
    pub fn writes(&self) -> usize {
        self.rows.lock().unwrap().writes
    }

    /// Retries scheduled so far.
    pub fn retries(&self) -> Vec<MessageState> {
        self.rows.lock().unwrap().retries.clone()
    }

    /// Dead letters held now.
    pub fn dead_letters(&self) -> Vec<MessageState> {
        self.rows
            .lock()
            .unwrap()
            .dead_letters
            .iter()
            .map(|(_, s)| s.clone())
            .collect()
    }
}

impl MessageStore for MemoryStore {
    fn load<'a>(
        &'a self,
        tenant: &'a TenantId,
        id: &'a MessageId,
    ) -> BoxFuture<'a, Result<Option<Stored>, StoreError>> {
        Box::pin(async move {
            let rows = self.rows.lock().unwrap();
            Ok(rows.values.get(&(tenant.clone(), id.clone())).map(|(v, revision)| {
                let (state, record) = decode_stored(v).unwrap();
                Stored {
                    state,
                    revision: *revision,
                    record,
                }
            }))
        })
    }

    fn write<'a>(
        &'a self,
        next: &'a MessageState,
        value: Bytes,
        expected: u64,
    ) -> BoxFuture<'a, Result<Option<u64>, StoreError>> {
        Box::pin(async move {
            let mut rows = self.rows.lock().unwrap();
            rows.writes += 1;
            rows.next_revision += 1;
            let revision = rows.next_revision;
            match rows.values.get_mut(&(next.tenant_id.clone(), next.message_id.clone())) {
                Some(row) if row.1 == expected => {
                    *row = (value, revision);
                    Ok(Some(revision))
                }
                _ => Ok(None),
            }
        })
    }

    fn schedule_retry<'a>(&'a self, state: &'a MessageState) -> BoxFuture<'a, Result<(), StoreError>> {
        Box::pin(async move {
            self.rows.lock().unwrap().retries.push(state.clone());
            Ok(())
        })
    }

    fn dead_letter<'a>(
        &'a self,
        state: &'a MessageState,
        _record: &'a Bytes,
    ) -> BoxFuture<'a, Result<Option<u64>, StoreError>> {
        Box::pin(async move {
            let mut rows = self.rows.lock().unwrap();
            let same_life = rows.dead_letters.iter().any(|(_, d)| {
                d.tenant_id == state.tenant_id
                    && d.message_id == state.message_id
                    && d.created_at_ms == state.created_at_ms
            });
            if same_life {
                return Ok(None);
            }
            rows.dead_letters
                .retain(|(_, d)| !(d.tenant_id == state.tenant_id && d.message_id == state.message_id));
            rows.next_revision += 1;
            let sequence = rows.next_revision;
            rows.dead_letters.push((sequence, state.clone()));
            Ok(Some(sequence))
        })
    }

    fn retract_dead_letter(&self, sequence: u64) -> BoxFuture<'_, Result<(), StoreError>> {
        Box::pin(async move {
            self.rows.lock().unwrap().dead_letters.retain(|(s, _)| *s != sequence);
            Ok(())
        })
    }
}

/// A destination that answers from a script (then with 200), and remembers every
/// envelope it was given.
#[derive(Default)]
pub struct ScriptedProducer {
    script: Mutex<VecDeque<Result<Delivered, ProduceError>>>,
    seen: Mutex<Vec<Envelope>>,
}

impl ScriptedProducer {
    /// Answers `script` in order, then 200.
    pub fn new(script: Vec<Result<Delivered, ProduceError>>) -> Self {
        ScriptedProducer {
            script: Mutex::new(script.into()),
            seen: Mutex::default(),
        }
    }

    /// A retryable failure (a 503).
    pub fn unavailable() -> Result<Delivered, ProduceError> {
        Err(ProduceError {
            kind: ProduceErrorKind::Retryable,
            status: Some(503),
            message: "answered 503".into(),
            retry_after_ms: None,
        })
    }

    /// Every envelope delivered (or attempted), in order.
    pub fn seen(&self) -> Vec<Envelope> {
        self.seen.lock().unwrap().clone()
    }
}

impl Producer for ScriptedProducer {
    fn deliver<'a>(&'a self, envelope: &'a Envelope) -> BoxFuture<'a, Result<Delivered, ProduceError>> {
        Box::pin(async move {
            self.seen.lock().unwrap().push(envelope.clone());
            self.script
                .lock()
                .unwrap()
                .pop_front()
                .unwrap_or(Ok(Delivered { status: 200 }))
        })
    }
}

/// A provisioner that runs nothing: each start answers with `url` (a server the test
/// runs, or nothing at all) and hands the test the sender that makes the instance "exit".
pub struct FakeProvisioner {
    url: String,
    starts: AtomicUsize,
    exits: Mutex<Vec<oneshot::Sender<String>>>,
}

impl FakeProvisioner {
    /// Instances that all "listen" on `url`.
    pub fn new(url: impl Into<String>) -> Self {
        FakeProvisioner {
            url: url.into(),
            starts: AtomicUsize::new(0),
            exits: Mutex::default(),
        }
    }

    /// How many starts were asked for.
    pub fn starts(&self) -> usize {
        self.starts.load(Ordering::SeqCst)
    }

    /// Makes the most recently started instance exit with `reason`.
    pub fn exit_last(&self, reason: &str) {
        if let Some(tx) = self.exits.lock().unwrap().pop() {
            let _ = tx.send(reason.to_owned());
        }
    }
}

impl Provisioner for FakeProvisioner {
    fn endpoint(&self, _tenant: &TenantId, number: u32) -> Result<Endpoint, ProvisionError> {
        Ok(Endpoint {
            host: "127.0.0.1".into(),
            port: 14_000 + number as u16,
        })
    }

    fn start(&self, _spec: InstanceSpec) -> BoxFuture<'static, Result<RunningInstance, ProvisionError>> {
        self.starts.fetch_add(1, Ordering::SeqCst);
        let (exit_tx, exited) = oneshot::channel();
        self.exits.lock().unwrap().push(exit_tx);
        let (stop_tx, _stop_rx) = oneshot::channel();
        let (done_tx, done_rx) = oneshot::channel();
        let _ = done_tx.send(());
        let url = self.url.clone();
        Box::pin(async move {
            Ok(RunningInstance {
                url,
                server_version: "2.15.1".into(),
                monitor_url: None,
                exited,
                stop: StopHandle::new(stop_tx, done_rx),
            })
        })
    }

    fn decommission(&self, _spec: InstanceSpec) -> BoxFuture<'static, Result<(), ProvisionError>> {
        Box::pin(async { Ok(()) })
    }
}

/// Claim-checked payloads in memory: keeps the objects and the keys deleted.
#[derive(Debug, Default)]
pub struct MemoryPayloads {
    objects: Mutex<HashMap<String, Bytes>>,
    deleted: Mutex<Vec<String>>,
}

impl MemoryPayloads {
    /// Stores an object and returns its reference.
    pub fn put(&self, key: &str, bytes: Bytes) -> crate::payload::PayloadRef {
        let digest = ring::digest::digest(&ring::digest::SHA256, &bytes);
        let r = crate::payload::PayloadRef {
            key: key.to_owned(),
            size: bytes.len() as u64,
            sha256: crate::payload::sha256_hex(digest.as_ref()),
        };
        self.objects.lock().unwrap().insert(key.to_owned(), bytes);
        r
    }

    /// Keys deleted so far, in order.
    pub fn deleted(&self) -> Vec<String> {
        self.deleted.lock().unwrap().clone()
    }

    /// Whether the object is still there.
    pub fn contains(&self, key: &str) -> bool {
        self.objects.lock().unwrap().contains_key(key)
    }
}

impl crate::payload::Payloads for MemoryPayloads {
    fn read<'a>(
        &'a self,
        r: &'a crate::payload::PayloadRef,
        max: u64,
    ) -> BoxFuture<'a, Result<Bytes, crate::payload::PayloadError>> {
        Box::pin(async move {
            use crate::payload::PayloadError;
            if r.size > max {
                return Err(PayloadError::TooLarge { size: r.size, max });
            }
            let bytes = self
                .objects
                .lock()
                .unwrap()
                .get(&r.key)
                .cloned()
                .ok_or_else(|| PayloadError::Missing(r.key.clone()))?;
            let digest = ring::digest::digest(&ring::digest::SHA256, &bytes);
            if bytes.len() as u64 != r.size || crate::payload::sha256_hex(digest.as_ref()) != r.sha256 {
                return Err(PayloadError::Corrupt(r.key.clone()));
            }
            Ok(bytes)
        })
    }

    fn delete<'a>(&'a self, key: &'a str) -> BoxFuture<'a, Result<(), crate::payload::PayloadError>> {
        Box::pin(async move {
            self.objects.lock().unwrap().remove(key);
            self.deleted.lock().unwrap().push(key.to_owned());
            Ok(())
        })
    }
}
