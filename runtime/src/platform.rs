//! The platform JetStream adapter: the `message_state` KV bucket, the `retry_queue` and
//! `dead_letter_queue` streams. Creates them if missing, reads their configuration back,
//! and refuses to start when the server dropped a setting.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_nats::HeaderMap;
use async_nats::jetstream::{self, consumer, kv, stream};
use bytes::Bytes;
use futures::StreamExt;
use futures::future::BoxFuture;
use serde::Serialize;

use vrsky_actors::message::{
    Deadlines, Due, MessageState, MessageStore, StoreError, Stored, decode_envelope, decode_stored, encode_envelope,
    encode_stored, parse_state_key, state_key,
};
use vrsky_actors::{Envelope, IntegrationId, MessageId, TenantId, subjects};

/// The KV bucket of message state.
pub use vrsky_actors::subjects::STATE_BUCKET;
/// The stream of scheduled retries.
pub const RETRY_STREAM: &str = "retry_queue";
/// The stream of dead letters.
pub const DEAD_LETTER_STREAM: &str = "dead_letter_queue";
/// The durable consumer the RetryScheduler reads the retry queue with.
pub const RETRY_CONSUMER: &str = "vrsky-retry-scheduler";

const H_EXPECTED_LAST_SUBJECT_SEQ: &str = "Nats-Expected-Last-Subject-Sequence";
const H_MSG_ID: &str = "Nats-Msg-Id";
const H_TTL: &str = "Nats-TTL";
const H_TENANT: &str = "Vrsky-Tenant";
const H_INTEGRATION: &str = "Vrsky-Integration";
const H_MESSAGE_ID: &str = "Vrsky-Message-Id";
const H_RETRY_COUNT: &str = "Vrsky-Retry-Count";
const H_DUE_AT: &str = "Vrsky-Due-At-Ms";
const H_DEAD_AT: &str = "Vrsky-Dead-At-Ms";
const H_LAST_ERROR: &str = "Vrsky-Last-Error";

/// Retention and placement of the platform state.
#[derive(Debug, Clone)]
pub struct PlatformSettings {
    /// How long a finished message's state stays in `message_state` (its per-message
    /// TTL); unfinished states never expire.
    pub message_state_ttl: Duration,
    /// `retry_queue` max age.
    pub retry_queue_max_age: Duration,
    /// `dead_letter_queue` max age.
    pub dead_letter_max_age: Duration,
    /// Replicas of each (3 on a production cluster, 1 on a single dev server).
    pub replicas: usize,
}

impl PlatformSettings {
    /// How long a message can wait for its retries: the retry queue's max age. (Its
    /// state is kept until it finishes, however long that takes.)
    pub fn retention(&self) -> Duration {
        self.retry_queue_max_age
    }
}

/// Platform failures.
#[derive(Debug, thiserror::Error)]
pub enum PlatformError {
    /// The server refused or dropped part of our configuration.
    #[error("platform nats: {0}")]
    Config(String),
    /// A request failed.
    #[error("platform nats: {0}")]
    Request(String),
}

fn req<E: std::fmt::Display>(e: E) -> PlatformError {
    PlatformError::Request(e.to_string())
}

fn store_err<E: std::fmt::Display>(e: E) -> StoreError {
    StoreError(e.to_string())
}

/// What ingress achieved.
#[derive(Debug, Clone)]
#[expect(
    clippy::large_enum_variant,
    reason = "returned once per webhook and taken apart at once; boxing would add an allocation per webhook"
)]
pub enum Accepted {
    /// Stored: answer 202, then publish it for delivery at this revision.
    New {
        /// The stored state.
        state: MessageState,
        /// Its revision.
        revision: u64,
        /// The bytes stored (state and envelope), which are also what is published.
        stored: Bytes,
    },
    /// The id exists already (idempotency key seen within the TTL): answer 200, do nothing.
    Duplicate,
}

/// A dead letter as the API lists it.
#[derive(Debug, Clone, Serialize)]
pub struct DeadLetterSummary {
    /// Message id.
    pub message_id: MessageId,
    /// Integration.
    pub integration_id: String,
    /// When it was dead-lettered, ms since the Unix epoch.
    pub dead_at_ms: u64,
    /// The last failure.
    pub last_error: String,
    /// Stream sequence; the paging cursor.
    pub sequence: u64,
}

/// A dead letter with its state and envelope.
#[derive(Debug, Clone)]
pub struct DeadLetter {
    /// Stream sequence.
    pub sequence: u64,
    /// The state when it was dead-lettered (attempt history, last error).
    pub state: MessageState,
    /// The envelope record as stored, for a replay.
    pub record: Bytes,
    /// The envelope, with the original headers and payload.
    pub envelope: Envelope,
}

/// The platform state.
#[derive(Clone)]
pub struct Platform {
    js: jetstream::Context,
    kv: kv::Store,
    retry: stream::Stream,
    dlq: stream::Stream,
    settings: PlatformSettings,
    /// Unfinished messages this node wrote or found at start; the re-driver's input.
    deadlines: Arc<Mutex<Deadlines>>,
    /// Whether the start-up scan of the bucket has completed in this process.
    scanned: Arc<AtomicBool>,
    /// The bucket was switched to per-message TTLs at this start: finished states written
    /// before have no TTL and would never expire; the start-up scan gives them one.
    migrate_ttl: Arc<AtomicBool>,
    /// The bucket's last sequence when this process opened it: anything at or below was
    /// written by an earlier process (this one accepts nothing before it has opened).
    opened_at_seq: u64,
}

fn header(h: &mut HeaderMap, name: &str, value: &str) {
    // Values we set are ids, numbers and sanitised text; a refused one is skipped.
    if let (Ok(n), Ok(v)) = (
        name.parse::<async_nats::HeaderName>(),
        value.parse::<async_nats::HeaderValue>(),
    ) {
        h.insert(n, v);
    }
}

fn one_line(s: &str) -> String {
    s.chars()
        .map(|c| if c.is_control() { ' ' } else { c })
        .take(256)
        .collect()
}

/// Compares what we asked for with what the server kept.
fn check<T: PartialEq + std::fmt::Debug>(what: &str, field: &str, want: &T, got: &T) -> Result<(), PlatformError> {
    if want == got {
        Ok(())
    } else {
        Err(PlatformError::Config(format!(
            "{what}: the server kept {field} = {got:?} instead of {want:?} (is it older than 2.10, or was the {what} changed by hand?)"
        )))
    }
}

async fn ensure_stream(js: &jetstream::Context, want: stream::Config) -> Result<stream::Stream, PlatformError> {
    let name = want.name.clone();
    match js.get_stream(&name).await {
        Ok(mut s) => {
            let have = s.info().await.map_err(req)?.config.clone();
            if have.max_age != want.max_age
                || have.subjects != want.subjects
                || have.max_messages_per_subject != want.max_messages_per_subject
            {
                js.update_stream(want.clone())
                    .await
                    .map_err(|e| PlatformError::Config(format!("updating stream {name}: {e}")))?;
            }
        }
        Err(_) => {
            js.create_stream(want.clone())
                .await
                .map_err(|e| PlatformError::Config(format!("creating stream {name}: {e}")))?;
        }
    }
    let mut s = js.get_stream(&name).await.map_err(req)?;
    let got = s.info().await.map_err(req)?.config.clone();
    let what = format!("stream {name}");
    check(&what, "subjects", &want.subjects, &got.subjects)?;
    check(&what, "max_age", &want.max_age, &got.max_age)?;
    check(&what, "retention", &want.retention, &got.retention)?;
    check(&what, "storage", &want.storage, &got.storage)?;
    // The server reports "unlimited" as -1 whether it was asked for 0 or -1.
    let unlimited = |v: i64| if v <= 0 { -1 } else { v };
    check(
        &what,
        "max_messages_per_subject",
        &unlimited(want.max_messages_per_subject),
        &unlimited(got.max_messages_per_subject),
    )?;
    check(&what, "allow_direct", &want.allow_direct, &got.allow_direct)?;
    check(&what, "num_replicas", &want.num_replicas, &got.num_replicas)?;
    Ok(s)
}

impl Platform {
    /// Creates (or updates) the bucket and streams and verifies their configuration.
    pub async fn open(client: async_nats::Client, settings: PlatformSettings) -> Result<Platform, PlatformError> {
        let js = jetstream::new(client);
        let kv_want = kv::Config {
            bucket: STATE_BUCKET.into(),
            description: "VRSky message state: {tenant}.{message_id} -> state line, then the envelope until finished"
                .into(),
            history: 1,
            storage: stream::StorageType::File,
            num_replicas: settings.replicas,
            ..Default::default()
        };
        let kv = match js.get_key_value(STATE_BUCKET).await {
            Ok(kv) => kv,
            Err(_) => js
                .create_key_value(kv_want.clone())
                .await
                .map_err(|e| PlatformError::Config(format!("creating bucket {STATE_BUCKET}: {e}")))?,
        };
        // Finished states expire by their own `Nats-TTL`; unfinished ones never do, so a
        // node (or the platform) down for longer than the TTL loses no accepted message.
        // The stream therefore has no max age and allows per-message TTLs (2.11.2+; once
        // allowed it cannot be disallowed, and every later update must say so again).
        let mut kv_stream = js.get_stream(subjects::state_stream()).await.map_err(req)?;
        let mut have = kv_stream.info().await.map_err(req)?.config.clone();
        let migrating = !have.allow_message_ttl;
        if migrating || have.max_age != Duration::ZERO {
            have.allow_message_ttl = true;
            have.max_age = Duration::ZERO;
            js.update_stream(have).await.map_err(|e| {
                PlatformError::Config(format!(
                    "bucket {STATE_BUCKET}: allowing per-message TTLs: {e} (nats-server 2.11.2 or newer is needed)"
                ))
            })?;
        }
        let info = kv_stream.info().await.map_err(req)?;
        let (got, opened_at_seq) = (info.config.clone(), info.state.last_sequence);
        let what = format!("bucket {STATE_BUCKET}");
        check(&what, "allow_msg_ttl", &true, &got.allow_message_ttl).map_err(|_| {
            PlatformError::Config(format!(
                "{what}: the server did not keep allow_msg_ttl, so finished states could not expire on their own \
                 while unfinished ones are kept: nats-server 2.11.2 or newer is needed"
            ))
        })?;
        check(&what, "max_age", &Duration::ZERO, &got.max_age)?;
        check(&what, "history", &1, &got.max_messages_per_subject)?;
        check(&what, "storage", &stream::StorageType::File, &got.storage)?;

        let retry = ensure_stream(
            &js,
            stream::Config {
                name: RETRY_STREAM.into(),
                description: Some("VRSky scheduled retries (work queue)".into()),
                subjects: vec![subjects::RETRY_QUEUE_SUBJECTS.into()],
                retention: stream::RetentionPolicy::WorkQueue,
                max_age: settings.retry_queue_max_age,
                storage: stream::StorageType::File,
                num_replicas: settings.replicas,
                ..Default::default()
            },
        )
        .await?;
        let dlq = ensure_stream(
            &js,
            stream::Config {
                name: DEAD_LETTER_STREAM.into(),
                description: Some("VRSky dead letters: vrsky.dlq.{tenant}.{message_id}".into()),
                subjects: vec![subjects::DEAD_LETTER_SUBJECTS.into()],
                retention: stream::RetentionPolicy::Limits,
                max_age: settings.dead_letter_max_age,
                max_messages_per_subject: 1,
                allow_direct: true,
                storage: stream::StorageType::File,
                num_replicas: settings.replicas,
                ..Default::default()
            },
        )
        .await?;
        Ok(Platform {
            js,
            kv,
            retry,
            dlq,
            settings,
            deadlines: Arc::default(),
            scanned: Arc::default(),
            migrate_ttl: Arc::new(AtomicBool::new(migrating)),
            opened_at_seq,
        })
    }

    /// The settings in force.
    pub fn settings(&self) -> &PlatformSettings {
        &self.settings
    }

    /// Ingress: stores the `received` state with the envelope, for the integration's life
    /// `incarnation`, in one create-only write acknowledged by JetStream before it returns.
    pub async fn accept(&self, env: &Envelope, incarnation: u64, now_ms: u64) -> Result<Accepted, PlatformError> {
        let t = &env.tenant_id;
        let id = &env.message_id;
        let state = MessageState {
            incarnation,
            ..MessageState::received(id.clone(), t.clone(), env.integration_id.clone(), now_ms)
        };
        let record = encode_envelope(env).map_err(req)?;
        let stored = encode_stored(&state, Some(&record)).map_err(req)?;
        let key = state_key(t, id);
        let mut create = HeaderMap::new();
        header(&mut create, H_EXPECTED_LAST_SUBJECT_SEQ, "0");
        let ack = self
            .js
            .publish_with_headers(subjects::state_value(&key), create, stored.clone())
            .await
            .map_err(req)?
            .await;
        let revision = match ack {
            Ok(ack) => ack.sequence,
            Err(e) if e.kind() == jetstream::context::PublishErrorKind::WrongLastSequence => {
                // A duplicate only if a live state is there: a delete marker (a rolled-back
                // earlier attempt) must not swallow the retry of a refused request.
                match self.kv.entry(&key).await.map_err(req)? {
                    Some(entry) if entry.operation == kv::Operation::Put => return Ok(Accepted::Duplicate),
                    _ => match self.kv.create(&key, stored.clone()).await {
                        Ok(revision) => revision,
                        Err(e) if e.kind() == kv::CreateErrorKind::AlreadyExists => return Ok(Accepted::Duplicate),
                        Err(e) => return Err(req(e)),
                    },
                }
            }
            Err(e) => return Err(req(e)),
        };
        self.observe(&state, revision);
        Ok(Accepted::New {
            state,
            revision,
            stored,
        })
    }

    /// Creates a `received` state, with its envelope record, for a message whose state
    /// expired (a replay from the dead-letter queue): the bytes stored and their revision,
    /// or `None` when a state exists.
    pub async fn recreate(&self, state: &MessageState, record: &Bytes) -> Result<Option<(Bytes, u64)>, PlatformError> {
        let stored = encode_stored(state, Some(record)).map_err(req)?;
        match self
            .kv
            .create(state_key(&state.tenant_id, &state.message_id), stored.clone())
            .await
        {
            Ok(rev) => {
                self.observe(state, rev);
                Ok(Some((stored, rev)))
            }
            Err(e) if e.kind() == kv::CreateErrorKind::AlreadyExists => Ok(None),
            Err(e) => Err(req(e)),
        }
    }

    fn deadlines(&self) -> std::sync::MutexGuard<'_, Deadlines> {
        self.deadlines.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Records a state this node stored (or found), for re-drive.
    pub fn observe(&self, state: &MessageState, revision: u64) {
        self.deadlines().observe(state, revision);
    }

    /// Stops tracking a message that is gone.
    pub fn forget(&self, tenant: &TenantId, id: &MessageId) {
        self.deadlines().forget(tenant, id);
    }

    /// Overdue messages (see [`Deadlines::take_due`]).
    pub fn take_due(
        &self,
        now_ms: u64,
        grace_ms: u64,
        max: usize,
        processing_ms: impl Fn(&TenantId, &IntegrationId) -> u64,
        admit: impl FnMut(&TenantId) -> bool,
    ) -> Vec<Due> {
        self.deadlines().take_due(now_ms, grace_ms, max, processing_ms, admit)
    }

    /// Unfinished messages of one integration tracked on this node (admission control).
    pub fn unfinished(&self, tenant: &TenantId, integration: &IntegrationId) -> usize {
        self.deadlines().unfinished(tenant, integration)
    }

    /// Makes a tenant's `received` messages due for re-drive now (its NATS client
    /// dropped messages).
    pub fn expedite(&self, tenant: &TenantId) {
        self.deadlines().expedite(tenant);
    }

    /// Unfinished messages tracked for re-drive.
    pub fn tracked(&self) -> usize {
        self.deadlines().len()
    }

    /// Whether the start-up scan has completed.
    pub fn scanned(&self) -> bool {
        self.scanned.load(Ordering::Acquire)
    }

    /// Reads the latest value of every key of the bucket once and tracks the unfinished
    /// messages, so a node restarted after a crash re-drives what was in flight. Runs once
    /// per process; the cost grows with the bucket (every message of the last TTL).
    /// Returns how many unfinished messages were found.
    pub async fn scan_unfinished(&self) -> Result<usize, PlatformError> {
        if self.scanned() {
            return Ok(0);
        }
        let mut kv_stream = self.js.get_stream(subjects::state_stream()).await.map_err(req)?;
        let mut found = 0;
        let migrate = self.migrate_ttl.load(Ordering::Acquire);
        // Bound: the finished states of the last TTL written before the switch, once.
        let mut without_ttl = Vec::new();
        let at_start = kv_stream.info().await.map_err(req)?.state.clone();
        // An ordered consumer of an empty stream would wait for a first message forever.
        if at_start.messages > 0 {
            let consumer = kv_stream
                .create_consumer(consumer::pull::OrderedConfig {
                    filter_subject: subjects::state_values(),
                    deliver_policy: consumer::DeliverPolicy::LastPerSubject,
                    ..Default::default()
                })
                .await
                .map_err(req)?;
            let mut messages = consumer.messages().await.map_err(req)?;
            loop {
                let m = match tokio::time::timeout(Duration::from_secs(10), messages.next()).await {
                    Ok(Some(m)) => m.map_err(req)?,
                    Ok(None) => break,
                    Err(_) => return Err(req("scan of the message_state bucket stalled")),
                };
                let (revision, pending) = m.info().map(|i| (i.stream_sequence, i.pending)).map_err(req)?;
                let key = subjects::state_key_of(&m.subject).unwrap_or("");
                if let (Some((t, id)), Ok((state, _))) = (parse_state_key(key), decode_stored(&m.payload))
                    && state.tenant_id == t
                    && state.message_id == id
                {
                    if !state.status.is_terminal() {
                        // Written before this process opened the bucket: by a process that
                        // is gone, so it is re-driven at once.
                        if revision <= self.opened_at_seq {
                            self.deadlines().observe_orphan(&state, revision);
                        } else {
                            self.observe(&state, revision);
                        }
                        found += 1;
                    } else if migrate && m.headers.as_ref().and_then(|h| h.get(H_TTL)).is_none() {
                        without_ttl.push((state, m.payload.clone(), revision));
                    }
                }
                // The last value of each key comes in stream order; anything past the
                // stream's end at start is a live write, which this node observes itself.
                // Stopping there keeps a scan under load from turning into a watch.
                if pending == 0 || revision >= at_start.last_sequence {
                    break;
                }
            }
        }
        // Finished states from before the switch get their TTL by being written again at
        // their revision (one that moved on meanwhile was rewritten with one already).
        for (state, value, revision) in without_ttl {
            self.write_value(&state, value, revision).await.map_err(req)?;
        }
        self.migrate_ttl.store(false, Ordering::Release);
        self.scanned.store(true, Ordering::Release);
        Ok(found)
    }

    /// Writes `value` (the encoded `next`) at revision `expected`: `Some(new revision)`, or
    /// `None` when the stored revision moved on. A finished state carries `Nats-TTL` (the
    /// message-state TTL) and expires alone; an unfinished one has no TTL.
    async fn write_value(&self, next: &MessageState, value: Bytes, expected: u64) -> Result<Option<u64>, StoreError> {
        let mut h = HeaderMap::new();
        header(&mut h, H_EXPECTED_LAST_SUBJECT_SEQ, &expected.to_string());
        if next.status.is_terminal() {
            header(
                &mut h,
                H_TTL,
                &self.settings.message_state_ttl.as_secs().max(1).to_string(),
            );
        }
        let subject = subjects::state_value(&state_key(&next.tenant_id, &next.message_id));
        let ack = self
            .js
            .publish_with_headers(subject, h, value)
            .await
            .map_err(store_err)?
            .await;
        match ack {
            Ok(ack) => {
                self.observe(next, ack.sequence);
                Ok(Some(ack.sequence))
            }
            Err(e) if e.kind() == jetstream::context::PublishErrorKind::WrongLastSequence => Ok(None),
            Err(e) => Err(store_err(e)),
        }
    }

    /// The RetryScheduler's durable consumer of the retry queue.
    pub async fn retry_consumer(&self, ack_wait: Duration) -> Result<consumer::PullConsumer, PlatformError> {
        self.retry
            .get_or_create_consumer(
                RETRY_CONSUMER,
                consumer::pull::Config {
                    durable_name: Some(RETRY_CONSUMER.into()),
                    ack_wait,
                    max_ack_pending: 10_000,
                    ..Default::default()
                },
            )
            .await
            .map_err(req)
    }

    /// Dead letters of a tenant, newest first, after `cursor` (a sequence), at most `limit`.
    /// Reads the tenant's entries' headers only; cost grows with the tenant's DLQ size.
    pub async fn dead_letters(
        &self,
        tenant: &TenantId,
        integration: Option<&IntegrationId>,
        limit: usize,
        cursor: Option<u64>,
    ) -> Result<(Vec<DeadLetterSummary>, Option<u64>), PlatformError> {
        let mut all = self.scan_dead_letters(tenant).await?;
        if let Some(i) = integration {
            all.retain(|d| d.integration_id == i.as_str());
        }
        all.sort_by_key(|d| std::cmp::Reverse(d.sequence));
        let page: Vec<_> = all
            .into_iter()
            .filter(|d| cursor.is_none_or(|c| d.sequence < c))
            .take(limit + 1)
            .collect();
        let more = page.len() > limit;
        let page: Vec<_> = page.into_iter().take(limit).collect();
        let next = if more { page.last().map(|d| d.sequence) } else { None };
        Ok((page, next))
    }

    /// Every dead letter of a tenant (headers only), in stream order.
    pub async fn scan_dead_letters(&self, tenant: &TenantId) -> Result<Vec<DeadLetterSummary>, PlatformError> {
        let filter = subjects::tenant_dead_letters(tenant);
        let info = self.dlq.clone();
        let count = info.info_with_subjects(&filter).await.map_err(req)?.count().await;
        if count == 0 {
            return Ok(Vec::new());
        }
        let consumer = self
            .dlq
            .create_consumer(consumer::pull::OrderedConfig {
                filter_subject: filter,
                headers_only: true,
                deliver_policy: consumer::DeliverPolicy::All,
                ..Default::default()
            })
            .await
            .map_err(req)?;
        let mut messages = consumer.messages().await.map_err(req)?;
        let mut out = Vec::new();
        while let Ok(Some(m)) = tokio::time::timeout(Duration::from_secs(5), messages.next()).await {
            let m = m.map_err(req)?;
            let (seq, pending) = match m.info() {
                Ok(i) => (i.stream_sequence, i.pending),
                Err(e) => return Err(req(e)),
            };
            let h = m.headers.as_ref();
            let get = |n: &str| {
                h.and_then(|h| h.get(n))
                    .map(|v| v.as_str().to_owned())
                    .unwrap_or_default()
            };
            if let Some(id) = subjects::dead_letter_id(&m.subject) {
                out.push(DeadLetterSummary {
                    message_id: id,
                    integration_id: get(H_INTEGRATION),
                    dead_at_ms: get(H_DEAD_AT).parse().unwrap_or(0),
                    last_error: get(H_LAST_ERROR),
                    sequence: seq,
                });
            }
            if pending == 0 {
                break;
            }
        }
        Ok(out)
    }

    /// One dead letter with its payload.
    pub async fn dead_letter(&self, tenant: &TenantId, id: &MessageId) -> Result<Option<DeadLetter>, PlatformError> {
        let msg = match self
            .dlq
            .direct_get_last_for_subject(subjects::dead_letter(tenant, id))
            .await
        {
            Ok(m) => m,
            Err(e) if e.kind() == stream::DirectGetErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(req(e)),
        };
        let (state, record) = decode_stored(&msg.payload).map_err(req)?;
        let record = record.ok_or_else(|| req("corrupt dead letter: no envelope"))?;
        let envelope = decode_envelope(&record, state.retry_count).map_err(req)?;
        Ok(Some(DeadLetter {
            sequence: msg.sequence,
            state,
            record,
            envelope,
        }))
    }

    /// Deletes a dead letter; false when there was none.
    pub async fn delete_dead_letter(&self, tenant: &TenantId, id: &MessageId) -> Result<bool, PlatformError> {
        match self.dead_letter(tenant, id).await? {
            Some(d) => self.delete_dead_letter_at(d.sequence).await,
            None => Ok(false),
        }
    }

    /// Deletes the dead-letter entry at this sequence (and no newer one of the message).
    pub async fn delete_dead_letter_at(&self, sequence: u64) -> Result<bool, PlatformError> {
        match self.dlq.delete_message(sequence).await {
            Ok(deleted) => Ok(deleted),
            Err(e) if e.to_string().contains("no message found") => Ok(false),
            Err(e) => Err(req(e)),
        }
    }

    /// Forgets everything of a deleted tenant: its states and envelopes, its scheduled
    /// retries and its dead letters, so a tenant created later with the same id sees none
    /// of it.
    pub async fn purge_tenant(&self, tenant: &TenantId) -> Result<(), PlatformError> {
        let kv_stream = self.js.get_stream(subjects::state_stream()).await.map_err(req)?;
        for (stream, filter) in [
            (&kv_stream, subjects::tenant_state_values(tenant)),
            (&self.retry, subjects::tenant_retries(tenant)),
            (&self.dlq, subjects::tenant_dead_letters(tenant)),
        ] {
            stream.purge().filter(filter).await.map_err(req)?;
        }
        Ok(())
    }

    /// Per bucket and stream: name, messages held, bytes held, last sequence (messages ever
    /// stored), for health and metrics.
    pub async fn usage(&self) -> Result<Vec<(String, u64, u64, u64)>, PlatformError> {
        let mut out = Vec::new();
        for name in [subjects::state_stream(), RETRY_STREAM.into(), DEAD_LETTER_STREAM.into()] {
            let mut s = self.js.get_stream(&name).await.map_err(req)?;
            let st = s.info().await.map_err(req)?.state.clone();
            out.push((name, st.messages, st.bytes, st.last_sequence));
        }
        Ok(out)
    }
}

impl MessageStore for Platform {
    fn load<'a>(
        &'a self,
        tenant: &'a TenantId,
        id: &'a MessageId,
    ) -> BoxFuture<'a, Result<Option<Stored>, StoreError>> {
        Box::pin(async move {
            match self.kv.entry(state_key(tenant, id)).await.map_err(store_err)? {
                Some(e) if e.operation == kv::Operation::Put => {
                    let (state, record) = decode_stored(&e.value).map_err(store_err)?;
                    Ok(Some(Stored {
                        state,
                        revision: e.revision,
                        record,
                    }))
                }
                _ => Ok(None),
            }
        })
    }

    fn write<'a>(
        &'a self,
        next: &'a MessageState,
        value: Bytes,
        expected: u64,
    ) -> BoxFuture<'a, Result<Option<u64>, StoreError>> {
        Box::pin(self.write_value(next, value, expected))
    }

    fn schedule_retry<'a>(&'a self, state: &'a MessageState) -> BoxFuture<'a, Result<(), StoreError>> {
        Box::pin(async move {
            let mut h = HeaderMap::new();
            header(&mut h, H_TENANT, state.tenant_id.as_str());
            header(&mut h, H_MESSAGE_ID, state.message_id.as_str());
            header(&mut h, H_RETRY_COUNT, &state.retry_count.to_string());
            header(&mut h, H_DUE_AT, &state.next_attempt_at_ms.unwrap_or(0).to_string());
            // Deduplicates a retry scheduled twice (a crash and a re-drive) inside the window.
            header(
                &mut h,
                H_MSG_ID,
                &format!("{}-r{}-{}", state.message_id, state.retry_count, state.updated_at_ms),
            );
            self.js
                .publish_with_headers(
                    subjects::retry_entry(&state.tenant_id, &state.integration_id),
                    h,
                    Bytes::new(),
                )
                .await
                .map_err(store_err)?
                .await
                .map_err(store_err)?;
            Ok(())
        })
    }

    fn retract_dead_letter(&self, sequence: u64) -> BoxFuture<'_, Result<(), StoreError>> {
        Box::pin(async move {
            self.delete_dead_letter_at(sequence).await.map_err(store_err)?;
            Ok(())
        })
    }

    fn dead_letter<'a>(
        &'a self,
        state: &'a MessageState,
        record: &'a Bytes,
    ) -> BoxFuture<'a, Result<Option<u64>, StoreError>> {
        Box::pin(async move {
            let subject = subjects::dead_letter(&state.tenant_id, &state.message_id);
            // The entry this one may replace: only one from an earlier life of the id (its
            // state expired and an idempotency key brought the id back). An entry of this
            // life is another claimant's and stays.
            let expected = match self.dlq.direct_get_last_for_subject(subject.clone()).await {
                Ok(m) => match decode_stored(&m.payload) {
                    Ok((s, _)) if s.created_at_ms == state.created_at_ms => return Ok(None),
                    _ => m.sequence,
                },
                Err(e) if e.kind() == stream::DirectGetErrorKind::NotFound => 0,
                Err(e) => return Err(store_err(e)),
            };
            let body = encode_stored(state, Some(record)).map_err(store_err)?;
            let mut h = HeaderMap::new();
            header(&mut h, H_EXPECTED_LAST_SUBJECT_SEQ, &expected.to_string());
            header(&mut h, H_INTEGRATION, state.integration_id.as_str());
            header(&mut h, H_DEAD_AT, &state.updated_at_ms.to_string());
            header(
                &mut h,
                H_LAST_ERROR,
                &one_line(state.last_error.as_deref().unwrap_or("")),
            );
            let ack = self
                .js
                .publish_with_headers(subject, h, body)
                .await
                .map_err(store_err)?
                .await;
            match ack {
                Ok(ack) => Ok(Some(ack.sequence)),
                // Another claimant's entry arrived in between.
                Err(e) if e.kind() == jetstream::context::PublishErrorKind::WrongLastSequence => Ok(None),
                Err(e) => Err(store_err(e)),
            }
        })
    }
}

/// Reads a due retry's identity from a retry-queue message.
pub fn retry_entry_of(msg: &jetstream::Message) -> Option<(TenantId, MessageId, u32, u64)> {
    let h = msg.headers.as_ref()?;
    let get = |n: &str| h.get(n).map(|v| v.as_str().to_owned());
    Some((
        TenantId::new(get(H_TENANT)?).ok()?,
        MessageId::new(get(H_MESSAGE_ID)?).ok()?,
        get(H_RETRY_COUNT)?.parse().ok()?,
        get(H_DUE_AT)?.parse().ok()?,
    ))
}
