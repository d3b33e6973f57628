//! Ports to the durable message state, and the one place that turns a decided transition
//! into writes, in an order that survives a crash between any two of them.

use std::sync::Arc;

use bytes::Bytes;
use futures::future::BoxFuture;

use super::{Event, MessageState, RetryPolicy, Status, empty_envelope, encode_envelope, encode_stored};
use opentelemetry::KeyValue;
use opentelemetry::context::FutureExt as _;
use opentelemetry::trace::SpanKind;

use crate::ids::{MessageId, TenantId};
use crate::telemetry;

/// What kind of failure a [`StoreError`] is; callers match on it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StoreErrorKind {
    /// The store, or a tenant's NATS for a publish, did not answer or refused: try again.
    Unavailable,
    /// A stored value or record does not decode, or a value cannot be encoded.
    Corrupt,
    /// There is nowhere to publish the message now: its tenant is starting or none of its
    /// instances is usable. The re-driver publishes it later.
    NoRoute,
}

/// A store operation that failed; the message stays where it was and is re-driven later.
#[derive(Debug, Clone)]
pub struct StoreError {
    kind: StoreErrorKind,
    message: String,
    source: Option<Arc<dyn std::error::Error + Send + Sync>>,
}

impl StoreError {
    /// A failure of `kind`.
    pub fn new(kind: StoreErrorKind, message: impl Into<String>) -> Self {
        StoreError {
            kind,
            message: message.into(),
            source: None,
        }
    }

    /// A failure of `kind` caused by `source`, whose text it carries.
    pub fn caused(kind: StoreErrorKind, source: impl std::error::Error + Send + Sync + 'static) -> Self {
        StoreError {
            kind,
            message: source.to_string(),
            source: Some(Arc::new(source)),
        }
    }

    /// Which kind of failure.
    pub fn kind(&self) -> StoreErrorKind {
        self.kind
    }
}

impl std::fmt::Display for StoreError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "message store: {}", self.message)
    }
}

impl std::error::Error for StoreError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        self.source.as_deref().map(|e| e as &(dyn std::error::Error + 'static))
    }
}

/// A message as loaded: its state, the revision it is at, and its envelope record while it
/// has one (see [`super::encode_stored`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Stored {
    /// The state.
    pub state: MessageState,
    /// Its revision.
    pub revision: u64,
    /// The envelope record; `None` once the message is finished.
    pub record: Option<Bytes>,
}

/// The platform's message state (JetStream KV and streams).
pub trait MessageStore: Send + Sync + 'static {
    /// The message, if the bucket still has it.
    fn load<'a>(&'a self, tenant: &'a TenantId, id: &'a MessageId)
    -> BoxFuture<'a, Result<Option<Stored>, StoreError>>;
    /// Writes `value` (`next` encoded with [`super::encode_stored`]) if the stored revision
    /// is still `expected`: `Some(new revision)`, or `None` when someone else wrote first.
    fn write<'a>(
        &'a self,
        next: &'a MessageState,
        value: Bytes,
        expected: u64,
    ) -> BoxFuture<'a, Result<Option<u64>, StoreError>>;
    /// Durably schedules the retry of a message in `retry` status.
    fn schedule_retry<'a>(&'a self, state: &'a MessageState) -> BoxFuture<'a, Result<(), StoreError>>;
    /// Durably records a dead letter with its envelope record; returns the entry's
    /// sequence, or `None` when the queue already holds an entry of this message's life
    /// (another claimant dead-lettered it first): that entry is kept, never replaced.
    fn dead_letter<'a>(
        &'a self,
        state: &'a MessageState,
        record: &'a Bytes,
    ) -> BoxFuture<'a, Result<Option<u64>, StoreError>>;
    /// Removes a dead-letter entry whose state write lost its revision check.
    fn retract_dead_letter(&self, sequence: u64) -> BoxFuture<'_, Result<(), StoreError>>;
}

/// Publishes a message for delivery on its tenant's NATS (core NATS: may be lost; the
/// re-driver covers that).
pub trait TenantPublisher: Send + Sync + 'static {
    /// Publishes `stored` (what was written for `state`) at `revision`, so a worker can
    /// claim it.
    fn publish<'a>(
        &'a self,
        state: &'a MessageState,
        stored: Bytes,
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
    /// Nothing to write: a `received` message re-driven is published again as it is
    /// stored, at this revision (see [`Committer`]).
    Republished(u64),
}

/// Applies an event to a stored state and performs the writes its outcome needs, one
/// revision-checked write of the state (with the envelope record while the message is
/// unfinished) plus its side effect:
///
/// - `retry`: state first, then the retry-queue entry. A crash in between leaves a `retry`
///   state with no entry; the re-driver makes it due once its time has passed.
/// - `dead_letter`: the dead-letter entry first, then the state. A crash in between leaves
///   the `processing` state; when it is re-driven, the entry is found and the dead-letter
///   state written, so the message is not retried while it sits in the queue. The entry is
///   written only if the queue holds none of this message's life: two claimants that both
///   dead-letter (a re-driver and a late worker) never replace each other's entry, so the
///   loser's retraction cannot empty the queue.
/// - `received` (retry due, re-drive, replay): state first, then the publish of the same
///   bytes. A lost publish is re-driven after the deadline.
/// - a re-drive of a message still `received`: no write, the stored state is published
///   again at its revision ([`Committed::Republished`]; a failed publish is an error). A new revision would make every
///   copy already queued for the worker stale, and a worker whose queue is longer than
///   the grace would then never claim one (each claim losing its revision check to the
///   next re-drive: a livelock, seen under load after kill -9). At the same revision the
///   first copy claimed wins and the others lose their check.
/// - a dead letter found in the queue for this claim ([`Event::FoundDeadLettered`]): the
///   state only.
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
    /// `record` is the message's envelope record (from the load or the publish).
    pub async fn commit(
        &self,
        current: &MessageState,
        revision: u64,
        event: &Event,
        record: Option<&Bytes>,
        now_ms: u64,
    ) -> Result<Committed, StoreError> {
        let Some(name) = telemetry::enabled()
            .then(|| span_name(event, current, self.policy, now_ms))
            .flatten()
        else {
            return self.commit_untraced(current, revision, event, record, now_ms).await;
        };
        // A span per transition, under the step's span or the message's stored trace, so
        // a retry an hour later and a replay join the webhook's trace; the publish of a
        // message made `received` again is its child (NATS header `traceparent`).
        let cx = telemetry::start(
            name,
            SpanKind::Internal,
            &telemetry::parent_for(record),
            (&current.tenant_id, &current.integration_id, &current.message_id),
            [
                KeyValue::new(telemetry::ATTEMPT, i64::from(current.next_attempt())),
                KeyValue::new("vrsky.event", super::state::event_name(event)),
            ],
        );
        let out = self
            .commit_untraced(current, revision, event, record, now_ms)
            .with_context(cx.clone())
            .await;
        let outcome = match &out {
            Ok(Committed::Written(s, _)) => s.status.as_str(),
            Ok(Committed::Conflict) => "conflict",
            Ok(Committed::Illegal(_)) => "illegal",
            Ok(Committed::Republished(_)) => "republished",
            Err(_) => "error",
        };
        telemetry::end(&cx, [KeyValue::new(telemetry::OUTCOME, outcome)]);
        out
    }

    async fn commit_untraced(
        &self,
        current: &MessageState,
        revision: u64,
        event: &Event,
        record: Option<&Bytes>,
        now_ms: u64,
    ) -> Result<Committed, StoreError> {
        let (store, publisher, policy) = (self.store, self.publisher, self.policy);
        if current.status == Status::Received
            && matches!(event, Event::Redrive)
            && let Some(record) = record
        {
            if let Some(publisher) = publisher {
                let value =
                    encode_stored(current, Some(record)).map_err(|e| StoreError::caused(StoreErrorKind::Corrupt, e))?;
                // Nothing was written, so a failed publish is the re-drive's failure: the
                // caller tries again (and knows no copy went out).
                publisher.publish(current, value, revision).await?;
            }
            return Ok(Committed::Republished(revision));
        }
        let mut next = match current.apply(event, policy, now_ms) {
            Ok(n) => n,
            Err(e) => return Ok(Committed::Illegal(e.to_string())),
        };
        // An unfinished message is stored with its envelope; one without it can never be
        // delivered, and re-driving it would keep it alive forever.
        if !next.status.is_terminal() && record.is_none() {
            let abandon = Event::Abandon {
                reason: "its envelope is missing from the message_state record".into(),
            };
            next = match current.apply(&abandon, policy, now_ms) {
                Ok(n) => n,
                Err(e) => return Ok(Committed::Illegal(e.to_string())),
            };
        }
        let mut dead_letter_seq = None;
        // A dead letter found in the queue is already there: only its state is written.
        let entry_written = matches!(event, Event::FoundDeadLettered { .. });
        if next.status == Status::DeadLetter && !entry_written {
            let record = match record {
                Some(r) => r.clone(),
                None => encode_envelope(&empty_envelope(&next))
                    .map_err(|e| StoreError::caused(StoreErrorKind::Corrupt, e))?,
            };
            match store.dead_letter(&next, &record).await? {
                Some(seq) => dead_letter_seq = Some(seq),
                // Someone else dead-lettered this message first: its entry stays, and the
                // state it wrote (or will write) wins the revision check below anyway.
                None => return Ok(Committed::Conflict),
            }
        }
        let carried = if !next.status.is_terminal() { record } else { None };
        let value = encode_stored(&next, carried).map_err(|e| StoreError::caused(StoreErrorKind::Corrupt, e))?;
        let Some(new_rev) = store.write(&next, value.clone(), revision).await? else {
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
                    // A failed publish is not an error of the commit: the state is written,
                    // and the re-driver publishes again after the deadline.
                    if let Err(e) = publisher.publish(&next, value, new_rev).await {
                        tracing::warn!(message_id = %next.message_id, error = %e, "publish after commit failed; re-drive will retry");
                    }
                }
            }
            _ => {}
        }
        Ok(Committed::Written(next, new_rev))
    }
}

/// The span a transition gets, named by where it leaves the message (`None`: illegal, no
/// span; the caller learns it from the commit).
fn span_name(event: &Event, current: &MessageState, policy: &RetryPolicy, now_ms: u64) -> Option<&'static str> {
    use crate::telemetry::span;
    // The common transitions are named without applying the event a second time.
    match (event, current.status) {
        (Event::Claim, Status::Received) => return Some(span::CLAIM),
        (Event::Delivered | Event::Filtered { .. }, Status::Processing) => return Some(span::COMPLETE),
        (Event::RetryDue, Status::Retry) => return Some(span::REDRIVE),
        _ => {}
    }
    let next = current.apply(event, policy, now_ms).ok()?;
    Some(match (event, next.status) {
        (Event::Replay { .. }, _) => span::REPLAY,
        (Event::Claim, Status::Processing) => span::CLAIM,
        (_, Status::Received) => span::REDRIVE,
        (_, Status::Retry) => span::RETRY_SCHEDULE,
        (_, Status::DeadLetter) => span::DEAD_LETTER,
        _ => span::COMPLETE,
    })
}

/// Shared handle to a store.
pub type SharedStore = Arc<dyn MessageStore>;

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use std::sync::Mutex;

    use super::*;
    use crate::fakes::MemoryStore;
    use crate::ids::IntegrationId;

    /// Keeps what it was asked to publish.
    #[derive(Default)]
    struct Bus(Mutex<Vec<(MessageState, u64)>>);

    impl TenantPublisher for Bus {
        fn publish<'a>(
            &'a self,
            state: &'a MessageState,
            _stored: Bytes,
            revision: u64,
        ) -> BoxFuture<'a, Result<(), StoreError>> {
            self.0.lock().unwrap().push((state.clone(), revision));
            Box::pin(async { Ok(()) })
        }
    }

    /// The livelock this prevents: a worker's queue holds the message's first copy when
    /// the re-driver publishes it again; a new revision would make that copy (and, with a
    /// queue longer than the grace, every later one) lose its claim.
    #[tokio::test]
    async fn a_received_message_re_driven_is_published_again_at_its_revision_and_its_queued_copy_still_claims() {
        let (store, bus, policy) = (MemoryStore::default(), Bus::default(), RetryPolicy::default());
        let (t, i) = (TenantId::new("acme").unwrap(), IntegrationId::new("hook").unwrap());
        let state = MessageState::received(MessageId::generate(), t.clone(), i, 1_000);
        let record = encode_envelope(&empty_envelope(&state)).unwrap();
        let (_, revision) = store.create(&state, &record);
        let redriver = Committer {
            store: &store,
            publisher: Some(&bus),
            policy: &policy,
        };
        let again = redriver
            .commit(&state, revision, &Event::Redrive, Some(&record), 60_000)
            .await
            .unwrap();
        assert_eq!(again, Committed::Republished(revision));
        assert_eq!(*bus.0.lock().unwrap(), vec![(state.clone(), revision)]);
        // Nothing written: the stored state is untouched.
        let stored = store.load(&t, &state.message_id).await.unwrap().unwrap();
        assert_eq!((stored.revision, stored.state.updated_at_ms), (revision, 1_000));

        // The copy queued before the re-drive claims; the re-driven copy then loses.
        let worker = Committer {
            store: &store,
            publisher: None,
            policy: &policy,
        };
        let claimed = worker
            .commit(&state, revision, &Event::Claim, Some(&record), 60_001)
            .await
            .unwrap();
        assert!(matches!(claimed, Committed::Written(ref s, _) if s.status == Status::Processing));
        let late = worker
            .commit(&state, revision, &Event::Claim, Some(&record), 60_002)
            .await
            .unwrap();
        assert_eq!(late, Committed::Conflict);
    }

    /// Without its envelope a `received` message can never be delivered: a re-drive
    /// dead-letters it rather than publish it again for ever.
    #[tokio::test]
    async fn a_received_message_without_its_record_is_abandoned_not_republished() {
        let (store, bus, policy) = (MemoryStore::default(), Bus::default(), RetryPolicy::default());
        let (t, i) = (TenantId::new("acme").unwrap(), IntegrationId::new("hook").unwrap());
        let state = MessageState::received(MessageId::generate(), t, i, 1_000);
        let (_, revision) = store.create(&state, &encode_envelope(&empty_envelope(&state)).unwrap());
        let redriver = Committer {
            store: &store,
            publisher: Some(&bus),
            policy: &policy,
        };
        let out = redriver
            .commit(&state, revision, &Event::Redrive, None, 60_000)
            .await
            .unwrap();
        assert!(
            matches!(out, Committed::Written(ref s, _) if s.status == Status::DeadLetter),
            "{out:?}"
        );
        assert!(bus.0.lock().unwrap().is_empty());
        assert_eq!(store.dead_letters().len(), 1);
    }
}
