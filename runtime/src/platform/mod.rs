//! The platform JetStream adapter: the `message_state` KV bucket, the `retry_queue` and
//! `dead_letter_queue` streams. One concern per file:
//!
//! - `setup.rs`: creates the bucket and streams if missing, reads their configuration
//!   back, and refuses to start when the server dropped a setting;
//! - `state.rs`: message state in the bucket (ingress, revision-checked writes with
//!   per-message TTLs for finished states), the `MessageStore` port;
//! - `batch.rs`: group commit: the bucket's writes of concurrent messages as JetStream
//!   atomic batches under load, alone when idle;
//! - `redrive.rs`: the node-local re-drive index and the start-up scan that fills it;
//! - `retries.rs`: the retry queue's entries and its durable consumer;
//! - `dead_letters.rs`: the dead-letter queue's entries, headers and lookups;
//! - `listing.rs`: an integration's recent messages, newest first, paged;
//! - `keys.rs`: the wire MAC key every node signs and checks tenant-NATS messages with.

mod batch;
mod dead_letters;
mod keys;
mod listing;
mod redrive;
mod retries;
mod setup;
mod state;

use std::sync::Arc;
use std::sync::atomic::AtomicBool;
use std::time::Duration;

use async_nats::HeaderMap;
use async_nats::jetstream::{self, kv, stream};

use vrsky_actors::message::{StoreError, StoreErrorKind};
use vrsky_actors::{TenantId, subjects};

pub use batch::{CommitFigures, CommitLimits};
pub use dead_letters::{DeadLetter, DeadLetterSummary};
pub use listing::{MessageCursor, MessagePage, NewestPage};
pub use redrive::Observation;
pub use retries::retry_entry_of;
pub use state::Accepted;

/// The KV bucket of message state.
pub use vrsky_actors::subjects::STATE_BUCKET;
/// The stream of scheduled retries.
pub const RETRY_STREAM: &str = "retry_queue";
/// The stream of dead letters.
pub const DEAD_LETTER_STREAM: &str = "dead_letter_queue";
/// The durable consumer the RetryScheduler reads the retry queue with.
pub const RETRY_CONSUMER: &str = "vrsky-retry-scheduler";

const H_EXPECTED_LAST_SUBJECT_SEQ: &str = "Nats-Expected-Last-Subject-Sequence";

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
    /// Group commit of the bucket's writes (`batch.rs`).
    pub commit: CommitLimits,
}

impl PlatformSettings {
    /// How long a message can wait for its retries: the retry queue's max age. (Its
    /// state is kept until it finishes, however long that takes.)
    pub fn retention(&self) -> Duration {
        self.retry_queue_max_age
    }
}

/// What kind of failure a [`PlatformError`] is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PlatformErrorKind {
    /// The server refused or dropped part of our configuration: start-up is refused.
    Config,
    /// A request failed; retrying may help.
    Request,
}

/// A platform failure: its kind, what was being done, and the cause.
#[derive(Debug)]
pub struct PlatformError {
    kind: PlatformErrorKind,
    message: String,
    source: Option<Box<dyn std::error::Error + Send + Sync>>,
}

impl PlatformError {
    /// The server refused or dropped part of our configuration.
    pub fn config(message: impl Into<String>) -> Self {
        PlatformError {
            kind: PlatformErrorKind::Config,
            message: message.into(),
            source: None,
        }
    }

    /// A request that failed without an underlying error (a stalled read).
    pub fn request(message: impl Into<String>) -> Self {
        PlatformError {
            kind: PlatformErrorKind::Request,
            message: message.into(),
            source: None,
        }
    }

    /// Which kind of failure.
    pub fn kind(&self) -> PlatformErrorKind {
        self.kind
    }
}

impl std::fmt::Display for PlatformError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "platform nats: {}", self.message)
    }
}

impl std::error::Error for PlatformError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        self.source.as_deref().map(|e| e as &(dyn std::error::Error + 'static))
    }
}

/// A request failure caused by `e`.
fn req(e: impl Into<Box<dyn std::error::Error + Send + Sync>>) -> PlatformError {
    let e = e.into();
    PlatformError {
        kind: PlatformErrorKind::Request,
        message: e.to_string(),
        source: Some(e),
    }
}

fn store_err<E: std::error::Error + Send + Sync + 'static>(e: E) -> StoreError {
    StoreError::caused(StoreErrorKind::Unavailable, e)
}

fn corrupt<E: std::error::Error + Send + Sync + 'static>(e: E) -> StoreError {
    StoreError::caused(StoreErrorKind::Corrupt, e)
}

/// The platform state.
#[derive(Clone)]
pub struct Platform {
    js: jetstream::Context,
    kv: kv::Store,
    retry: stream::Stream,
    dlq: stream::Stream,
    settings: PlatformSettings,
    /// Where every write and the scan are reported: the RetryScheduler, which owns the
    /// re-drive index.
    observer: Arc<redrive::Observer>,
    /// The bucket was switched to per-message TTLs at this start: finished states written
    /// before have no TTL and would never expire; the start-up scan gives them one.
    migrate_ttl: Arc<AtomicBool>,
    /// The bucket's last sequence when this process opened it: anything at or below was
    /// written by an earlier process (this one accepts nothing before it has opened).
    opened_at_seq: u64,
    /// Signs and checks what is published on tenant NATS.
    wire_key: vrsky_actors::wire::WireKey,
    /// Where the bucket's writes go (grouped under load).
    commits: batch::GroupCommit,
    /// Whether this node may claim a tenant's messages (set when it joins a cluster).
    claim_fence: Arc<std::sync::OnceLock<ClaimFence>>,
}

/// Whether this node may claim a message of a tenant now (see
/// `ClusterHandle::may_claim`).
pub type ClaimFence = Arc<dyn Fn(&vrsky_actors::TenantId) -> bool + Send + Sync>;

impl Platform {
    /// Sets the claim fence (once): a write that makes a message `processing` (a claim)
    /// is refused for a tenant it says no to.
    pub fn set_claim_fence(&self, fence: ClaimFence) {
        let _ = self.claim_fence.set(fence);
    }

    /// The platform's wire MAC key.
    pub fn wire_key(&self) -> &vrsky_actors::wire::WireKey {
        &self.wire_key
    }
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

impl Platform {
    /// The settings in force.
    pub fn settings(&self) -> &PlatformSettings {
        &self.settings
    }

    /// The bucket's writes so far: alone, in atomic batches, and batches refused.
    pub fn commit_figures(&self) -> CommitFigures {
        self.commits.stats()
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

    /// Dead letters held, by tenant: one subject per dead letter, counted from the
    /// stream's subject list (every dead letter's subject is read, not its body).
    pub async fn dead_letters_by_tenant(&self) -> Result<std::collections::BTreeMap<String, u64>, PlatformError> {
        use futures::StreamExt;
        let stream = self.js.get_stream(DEAD_LETTER_STREAM).await.map_err(req)?;
        let mut subjects = stream
            .info_with_subjects(subjects::DEAD_LETTER_SUBJECTS)
            .await
            .map_err(req)?;
        let mut by = std::collections::BTreeMap::new();
        while let Some(entry) = subjects.next().await {
            let (subject, n) = entry.map_err(req)?;
            if let Some(t) = subject.split('.').nth(2) {
                *by.entry(t.to_owned()).or_default() += n as u64;
            }
        }
        Ok(by)
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
