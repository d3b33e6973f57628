//! The node-local re-drive index (`Deadlines`): every state this node writes is observed
//! into it, and the start-up scan fills it with what earlier processes left unfinished
//! (orphans, re-driven at once).

use std::sync::atomic::Ordering;
use std::time::Duration;

use async_nats::jetstream::consumer;
use futures::StreamExt;

use vrsky_actors::message::{Deadlines, Due, MessageState, decode_stored, parse_state_key};
use vrsky_actors::{IntegrationId, MessageId, TenantId, subjects};

use super::{Platform, PlatformError, req};

const H_TTL: &str = "Nats-TTL";

impl Platform {
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
}
