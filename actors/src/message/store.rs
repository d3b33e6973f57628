//! Ports to the durable message state, and the one place that turns a decided transition
//! into writes, in an order that survives a crash between any two of them.

use std::sync::Arc;

use futures::future::BoxFuture;

use super::{Event, MessageState, RetryPolicy, Status};
use crate::envelope::Envelope;
use crate::ids::{MessageId, TenantId};

/// A store operation that failed; the message stays where it was and is re-driven later.
#[derive(Debug, Clone, thiserror::Error)]
#[error("message store: {0}")]
pub struct StoreError(pub String);

/// The platform's message state (JetStream KV and streams).
pub trait MessageStore: Send + Sync + 'static {
    /// The current state and its revision.
    fn load<'a>(
        &'a self,
        tenant: &'a TenantId,
        id: &'a MessageId,
    ) -> BoxFuture<'a, Result<Option<(MessageState, u64)>, StoreError>>;
    /// The stored envelope, with the given attempt number.
    fn load_envelope<'a>(
        &'a self,
        tenant: &'a TenantId,
        id: &'a MessageId,
        attempt: u32,
    ) -> BoxFuture<'a, Result<Option<Envelope>, StoreError>>;
    /// Writes `next` if the stored revision is still `expected`: `Some(new revision)`, or
    /// `None` when someone else wrote first.
    fn write<'a>(&'a self, next: &'a MessageState, expected: u64) -> BoxFuture<'a, Result<Option<u64>, StoreError>>;
    /// Durably schedules the retry of a message in `retry` status.
    fn schedule_retry<'a>(&'a self, state: &'a MessageState) -> BoxFuture<'a, Result<(), StoreError>>;
    /// Durably records a dead letter with its envelope; returns the entry's sequence.
    fn dead_letter<'a>(
        &'a self,
        state: &'a MessageState,
        envelope: &'a Envelope,
    ) -> BoxFuture<'a, Result<u64, StoreError>>;
    /// Removes a dead-letter entry whose state write lost its revision check.
    fn retract_dead_letter(&self, sequence: u64) -> BoxFuture<'_, Result<(), StoreError>>;
}

/// Publishes a message for delivery on its tenant's NATS (core NATS: may be lost; the
/// re-driver covers that).
pub trait TenantPublisher: Send + Sync + 'static {
    /// Publishes `envelope` carrying `state` at `revision` so a worker can claim it.
    fn publish<'a>(
        &'a self,
        envelope: &'a Envelope,
        state: &'a MessageState,
        revision: u64,
    ) -> BoxFuture<'a, Result<(), StoreError>>;
}

/// What [`Committer::commit`] achieved.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Committed {
    /// Written at this revision (and its side effect done).
    Written(MessageState, u64),
    /// Someone else changed the message first; nothing was written.
    Conflict,
    /// The transition does not apply to the current state.
    Illegal(String),
}

/// Applies an event to a stored state and performs the writes its outcome needs:
///
/// - `retry`: state first, then the retry-queue entry. A crash in between leaves a `retry`
///   state with no entry; the re-driver makes it due once its time has passed.
/// - `dead_letter`: the dead-letter entry first, then the state. A crash in between leaves
///   the old state, which is re-driven and dead-lettered again (the entry is replaced).
/// - `received` (retry due, re-drive, replay): state first, then the publish. A lost
///   publish is re-driven after the deadline.
/// - anything else: the state.
#[derive(Clone, Copy)]
pub struct Committer<'a> {
    /// Where state lives.
    pub store: &'a dyn MessageStore,
    /// Who publishes messages that become `received`; `None` leaves that to the re-driver.
    pub publisher: Option<&'a dyn TenantPublisher>,
    /// The integration's retry policy.
    pub policy: &'a RetryPolicy,
}

impl Committer<'_> {
    /// Applies `event` to `current` at `revision` and performs the writes (see above).
    pub async fn commit(
        &self,
        current: &MessageState,
        revision: u64,
        event: &Event,
        envelope: Option<&Envelope>,
        now_ms: u64,
    ) -> Result<Committed, StoreError> {
        let (store, publisher, policy) = (self.store, self.publisher, self.policy);
        let mut next = match current.apply(event, policy, now_ms) {
            Ok(n) => n,
            Err(e) => return Ok(Committed::Illegal(e.to_string())),
        };
        // A message about to be published again needs its envelope; one whose envelope is
        // gone can never be delivered, and re-driving it would keep it alive forever.
        let mut loaded = None;
        if next.status == Status::Received && publisher.is_some() && envelope.is_none() {
            loaded = store
                .load_envelope(&next.tenant_id, &next.message_id, next.next_attempt())
                .await?;
            if loaded.is_none() {
                let abandon = Event::Abandon {
                    reason: "its envelope is no longer in the message_state bucket (expired)".into(),
                };
                next = match current.apply(&abandon, policy, now_ms) {
                    Ok(n) => n,
                    Err(e) => return Ok(Committed::Illegal(e.to_string())),
                };
            }
        }
        let envelope = envelope.or(loaded.as_ref());
        let mut dead_letter_seq = None;
        if next.status == Status::DeadLetter {
            let env = match envelope {
                Some(e) => Some(e.clone()),
                None => {
                    store
                        .load_envelope(&next.tenant_id, &next.message_id, next.retry_count)
                        .await?
                }
            };
            // An envelope that expired from the bucket is dead-lettered without its body
            // rather than left to be re-driven forever.
            let env = env.unwrap_or_else(|| Envelope {
                message_id: next.message_id.clone(),
                tenant_id: next.tenant_id.clone(),
                integration_id: next.integration_id.clone(),
                headers: Vec::new(),
                content_type: None,
                payload: bytes::Bytes::new(),
                trace_context: None,
                attempt: next.retry_count,
                received_at_ms: next.created_at_ms,
            });
            dead_letter_seq = Some(store.dead_letter(&next, &env).await?);
        }
        let Some(new_rev) = store.write(&next, revision).await? else {
            // Someone else moved the message on: the dead letter written for this outcome
            // must not stay behind to be replayed later.
            if let Some(seq) = dead_letter_seq {
                store.retract_dead_letter(seq).await?;
            }
            return Ok(Committed::Conflict);
        };
        match next.status {
            Status::Retry => store.schedule_retry(&next).await?,
            Status::Received => {
                if let Some(publisher) = publisher {
                    let env = match envelope {
                        Some(e) => Some(Envelope {
                            attempt: next.next_attempt(),
                            ..e.clone()
                        }),
                        None => {
                            store
                                .load_envelope(&next.tenant_id, &next.message_id, next.next_attempt())
                                .await?
                        }
                    };
                    if let Some(env) = env {
                        // A failed publish is not an error of the commit: the state is written,
                        // and the re-driver publishes again after the deadline.
                        if let Err(e) = publisher.publish(&env, &next, new_rev).await {
                            tracing::warn!(message_id = %next.message_id, error = %e, "publish after commit failed; re-drive will retry");
                        }
                    }
                }
            }
            _ => {}
        }
        Ok(Committed::Written(next, new_rev))
    }
}

/// Shared handle to a store.
pub type SharedStore = Arc<dyn MessageStore>;
