//! What the platform tells the re-drive index: every state this node writes is reported
//! to the index's owner, the RetryScheduler, as an [`Observation`]; the start-up scan
//! reports what earlier processes left unfinished (orphans, re-driven at once). The index
//! itself (`Deadlines`) is the scheduler's own state.

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use arc_swap::ArcSwapOption;
use async_nats::jetstream::consumer;
use futures::StreamExt;
use tokio::sync::mpsc;

use vrsky_actors::message::{MessageState, Observed, Status, decode_stored, parse_state_key};
use vrsky_actors::{MessageId, TenantId, subjects};

use super::{Platform, PlatformError, req};

const H_TTL: &str = "Nats-TTL";

/// A report to the re-drive index.
#[derive(Debug)]
pub enum Observation {
    /// A state stored (or read) at a revision.
    Stored(Observed),
    /// A state found by the scan, written by a process that is gone.
    Orphan(Observed),
    /// A message gone from the bucket.
    Gone(TenantId, MessageId),
    /// A tenant's NATS client dropped messages: its `received` ones are due now.
    Expedite(TenantId),
    /// A re-drive at this revision published nothing (see `Deadlines::unpublished`).
    Unpublished(TenantId, MessageId, u64),
}

/// Where observations go: the running RetryScheduler's channel, replaced at each of its
/// (re)starts. While none is attached they are dropped; a scheduler that starts scans the
/// bucket after attaching, which finds every state written before.
#[derive(Debug, Default)]
pub(super) struct Observer {
    tx: ArcSwapOption<mpsc::UnboundedSender<Observation>>,
}

impl Observer {
    fn send(&self, o: Observation) {
        if let Some(tx) = self.tx.load().as_ref() {
            let _ = tx.send(o);
        }
    }
}

impl Platform {
    /// Sends this process's observations to `tx` from now on (the RetryScheduler's).
    pub fn attach_observer(&self, tx: mpsc::UnboundedSender<Observation>) {
        self.observer.tx.store(Some(Arc::new(tx)));
    }

    /// Reports a state this node stored (or found), for re-drive.
    pub fn observe(&self, state: &MessageState, revision: u64) {
        self.observer.send(Observation::Stored(Observed::of(state, revision)));
    }

    /// Reports a message that is gone.
    pub fn forget(&self, tenant: &TenantId, id: &MessageId) {
        self.observer.send(Observation::Gone(tenant.clone(), id.clone()));
    }

    /// Reports a re-drive that published nothing, so its next try is not held back longer.
    pub fn unpublished(&self, tenant: &TenantId, id: &MessageId, revision: u64) {
        self.observer
            .send(Observation::Unpublished(tenant.clone(), id.clone(), revision));
    }

    /// Makes a tenant's `received` messages due for re-drive now (its NATS client
    /// dropped messages).
    pub fn expedite(&self, tenant: &TenantId) {
        self.observer.send(Observation::Expedite(tenant.clone()));
    }

    /// Reads the latest value of every key of the bucket and reports the unfinished
    /// messages, so a node restarted after a crash re-drives what was in flight (and a
    /// restarted scheduler rebuilds its index). The cost grows with the bucket (every
    /// unfinished message, and the finished ones of the last TTL). Returns how many
    /// unfinished messages were found.
    pub async fn scan_unfinished(&self) -> Result<usize, PlatformError> {
        self.scan(subjects::state_values(), self.opened_at_seq, Scan::Start)
            .await
    }

    /// The bucket's last revision now: a take-over reads it before it starts the tenant,
    /// so its scan can tell the previous owner's writes from its own.
    pub async fn state_revision(&self) -> Result<u64, PlatformError> {
        let mut kv_stream = self.js.get_stream(subjects::state_stream()).await.map_err(req)?;
        Ok(kv_stream.info().await.map_err(req)?.state.last_sequence)
    }

    /// Reads the latest value of every key of one tenant and reports its unfinished
    /// messages: what a node that takes a tenant over (its owner died, or handed it over)
    /// does once it runs. Those written up to `claimed_at` (the bucket's revision when
    /// this node claimed the tenant) by the previous owner are re-driven at once, except a
    /// `processing` one: its worker may still be delivering it (a hand-over, a paused
    /// node), so it is re-driven only at its deadline (the producer's timeout plus the
    /// grace), never beside a delivery in flight. Later ones are this node's own.
    pub async fn scan_tenant(&self, tenant: &TenantId, claimed_at: u64) -> Result<usize, PlatformError> {
        self.scan(subjects::tenant_state_values(tenant), claimed_at, Scan::TakeOver)
            .await
    }

    /// The scan: states written at or before `orphans_up_to` are reported as orphans.
    async fn scan(&self, filter: String, orphans_up_to: u64, kind: Scan) -> Result<usize, PlatformError> {
        let migrate_ttl = kind == Scan::Start;
        let mut kv_stream = self.js.get_stream(subjects::state_stream()).await.map_err(req)?;
        let mut found = 0;
        let migrate = migrate_ttl && self.migrate_ttl.load(Ordering::Acquire);
        // Bound: the finished states of the last TTL written before the switch, once.
        let mut without_ttl = Vec::new();
        let at_start = kv_stream.info().await.map_err(req)?.state.clone();
        // An ordered consumer of an empty stream would wait for a first message forever.
        if at_start.messages > 0 {
            let consumer = kv_stream
                .create_consumer(consumer::pull::OrderedConfig {
                    filter_subject: filter,
                    deliver_policy: consumer::DeliverPolicy::LastPerSubject,
                    ..Default::default()
                })
                .await
                .map_err(req)?;
            // Nothing matches the filter (a tenant without messages): nothing will come.
            if consumer.cached_info().num_pending == 0 {
                return Ok(0);
            }
            let mut messages = consumer.messages().await.map_err(req)?;
            loop {
                let m = match tokio::time::timeout(Duration::from_secs(10), messages.next()).await {
                    Ok(Some(m)) => m.map_err(req)?,
                    Ok(None) => break,
                    Err(_) => return Err(PlatformError::request("scan of the message_state bucket stalled")),
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
                        let o = Observed::of(&state, revision);
                        let in_flight = kind == Scan::TakeOver && state.status == Status::Processing;
                        self.observer.send(if revision <= orphans_up_to && !in_flight {
                            Observation::Orphan(o)
                        } else {
                            Observation::Stored(o)
                        });
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
        if !migrate_ttl {
            return Ok(found);
        }
        for (state, value, revision) in without_ttl {
            self.write_value(&state, value, revision).await.map_err(req)?;
        }
        self.migrate_ttl.store(false, Ordering::Release);
        Ok(found)
    }
}

/// Which scan.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Scan {
    /// A node's start: everything written before it opened the bucket is an orphan.
    Start,
    /// A tenant taken over from another node.
    TakeOver,
}
