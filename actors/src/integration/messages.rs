//! Messages and arguments of the IntegrationActor.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use crate::components::{Pipeline, Producer};
use crate::ids::{IntegrationId, TenantId};
use crate::message::{RetryPolicy, SharedStore};

/// What an IntegrationActor is started with; cloned for every restart.
#[derive(Clone)]
pub struct IntegrationArgs {
    /// Owner tenant.
    pub tenant_id: TenantId,
    /// This integration.
    pub integration_id: IntegrationId,
    /// Compiled filters and converters.
    pub pipeline: Arc<Pipeline>,
    /// The destination.
    pub producer: Arc<dyn Producer>,
    /// Connections to every NATS instance of the tenant; the actor subscribes on each.
    pub clients: Vec<async_nats::Client>,
    /// Deliveries in flight at once.
    pub max_in_flight: usize,
    /// Outcome counters; they outlive restarts of the actor.
    pub counters: Arc<IntegrationCounters>,
    /// Durable message state.
    pub store: SharedStore,
    /// Retry policy.
    pub retry: RetryPolicy,
    /// Which life of the integration id this is (see
    /// [`crate::message::MessageState::incarnation`]).
    pub incarnation: u64,
    /// Authenticates what arrives over NATS (see [`crate::wire`]).
    pub wire_key: crate::wire::WireKey,
    /// The object store of claim-checked payloads, when the node has one.
    pub payloads: Option<Arc<dyn crate::payload::Payloads>>,
    /// Most bytes of a claim-checked payload the filters and converters load.
    pub pipeline_read_max: u64,
    /// Delete a message's object once it is delivered or filtered; off when the
    /// destination gets only the object's URL (the sweeper removes it later).
    pub release_payloads: bool,
}

/// Messages an IntegrationActor accepts.
#[derive(Debug)]
pub enum IntegrationMsg {
    /// The NATS subscription closed; the actor fails so its supervisor restarts it.
    SubscriptionEnded,
}

/// Outcome counters of one integration on this node.
#[derive(Debug, Default)]
pub struct IntegrationCounters {
    /// Webhooks accepted (answered 202; duplicates not counted).
    pub accepted: AtomicU64,
    /// Messages taken off NATS.
    pub received: AtomicU64,
    /// Delivered with a success status.
    pub delivered: AtomicU64,
    /// Dropped by a filter.
    pub filtered: AtomicU64,
    /// Failed delivery or conversion attempts.
    pub failed: AtomicU64,
    /// Not processed: another worker claimed it, or it had moved on (a stale publish).
    pub skipped: AtomicU64,
    /// Could not be decoded or belonged elsewhere.
    pub malformed: AtomicU64,
    /// Failed attempts that scheduled a retry.
    pub retried: AtomicU64,
    /// Messages moved to the dead-letter queue.
    pub dead_lettered: AtomicU64,
    /// Unfinished messages on this node now (a gauge the RetryScheduler keeps from its
    /// re-drive index; admission control reads it).
    pub unfinished: AtomicU64,
    /// How long each delivery attempt's HTTP exchange took.
    pub delivery_duration: super::histogram::Histogram,
    /// From the webhook's acceptance to its successful delivery.
    pub end_to_end: super::histogram::Histogram,
}

/// A snapshot of [`IntegrationCounters`].
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize)]
pub struct IntegrationStats {
    /// Webhooks accepted (answered 202; duplicates not counted).
    pub accepted: u64,
    /// Messages taken off NATS.
    pub received: u64,
    /// Delivered with a success status.
    pub delivered: u64,
    /// Dropped by a filter.
    pub filtered: u64,
    /// Failed delivery or conversion attempts.
    pub failed: u64,
    /// Not processed: claimed elsewhere or stale.
    pub skipped: u64,
    /// Could not be decoded or belonged elsewhere.
    pub malformed: u64,
    /// Failed attempts that scheduled a retry.
    pub retried: u64,
    /// Messages moved to the dead-letter queue.
    pub dead_lettered: u64,
    /// Unfinished messages (received, processing or waiting for a retry) on this node.
    pub unfinished: u64,
}

impl IntegrationStats {
    /// Adds another integration's counters to these (a tenant's totals).
    pub fn add(&mut self, other: &IntegrationStats) {
        self.accepted += other.accepted;
        self.received += other.received;
        self.delivered += other.delivered;
        self.filtered += other.filtered;
        self.failed += other.failed;
        self.skipped += other.skipped;
        self.malformed += other.malformed;
        self.retried += other.retried;
        self.dead_lettered += other.dead_lettered;
        self.unfinished += other.unfinished;
    }
}

impl IntegrationCounters {
    /// A snapshot.
    pub fn snapshot(&self) -> IntegrationStats {
        IntegrationStats {
            accepted: self.accepted.load(Ordering::Relaxed),
            received: self.received.load(Ordering::Relaxed),
            delivered: self.delivered.load(Ordering::Relaxed),
            filtered: self.filtered.load(Ordering::Relaxed),
            failed: self.failed.load(Ordering::Relaxed),
            skipped: self.skipped.load(Ordering::Relaxed),
            malformed: self.malformed.load(Ordering::Relaxed),
            retried: self.retried.load(Ordering::Relaxed),
            dead_lettered: self.dead_lettered.load(Ordering::Relaxed),
            unfinished: self.unfinished.load(Ordering::Relaxed),
        }
    }
}
