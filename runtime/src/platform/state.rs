//! Message state in the bucket: ingress (a create-only write), re-creation for a replay,
//! revision-checked writes (finished states with their `Nats-TTL`), and the
//! `MessageStore` port the actors use.

use async_nats::HeaderMap;
use async_nats::jetstream::kv;
use bytes::Bytes;
use futures::future::BoxFuture;

use vrsky_actors::message::{
    MessageState, MessageStore, Status, StoreError, StoreErrorKind, Stored, decode_stored, encode_envelope,
    encode_stored, state_key,
};
use vrsky_actors::{Envelope, MessageId, TenantId, subjects};

use super::batch::Outcome;
use super::{H_EXPECTED_LAST_SUBJECT_SEQ, Platform, PlatformError, corrupt, header, req, store_err};

const H_TTL: &str = "Nats-TTL";

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
impl Platform {
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
        let written = self
            .commits
            .write(subjects::state_value(&key), create, stored.clone())
            .await
            .map_err(req)?;
        let revision = match written {
            Outcome::Stored(revision) => revision,
            Outcome::WrongLastSequence => {
                // A duplicate only if a live state is there: a delete marker (a rolled-back
                // earlier attempt) must not swallow the retry of a refused request.
                match self.kv.entry(&key).await.map_err(req)? {
                    Some(entry) if entry.operation == kv::Operation::Put => {
                        // It may be this id's own earlier write whose acknowledgement was
                        // lost (a commit with an unknown outcome): the re-drive index
                        // learns of it here, or the message would wait for a restart.
                        if let Ok((stored, _)) = decode_stored(&entry.value) {
                            self.observe(&stored, entry.revision);
                        }
                        return Ok(Accepted::Duplicate);
                    }
                    _ => match self.kv.create(&key, stored.clone()).await {
                        Ok(revision) => revision,
                        Err(e) if e.kind() == kv::CreateErrorKind::AlreadyExists => return Ok(Accepted::Duplicate),
                        Err(e) => return Err(req(e)),
                    },
                }
            }
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

    /// Writes `value` (the encoded `next`) at revision `expected`: `Some(new revision)`, or
    /// `None` when the stored revision moved on. A finished state carries `Nats-TTL` (the
    /// message-state TTL) and expires alone; an unfinished one has no TTL.
    pub(super) async fn write_value(
        &self,
        next: &MessageState,
        value: Bytes,
        expected: u64,
    ) -> Result<Option<u64>, StoreError> {
        if next.status == Status::Processing
            && let Some(fence) = self.claim_fence.get()
            && !fence(&next.tenant_id)
        {
            return Err(StoreError::new(
                StoreErrorKind::Unavailable,
                format!(
                    "tenant {}: this node's lease is not current; the message is left for its owner",
                    next.tenant_id
                ),
            ));
        }
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
        match self.commits.write(subject, h, value).await.map_err(store_err)? {
            Outcome::Stored(revision) => {
                self.observe(next, revision);
                Ok(Some(revision))
            }
            Outcome::WrongLastSequence => Ok(None),
        }
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
                    let (state, record) = decode_stored(&e.value).map_err(corrupt)?;
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
        Box::pin(self.schedule_retry_entry(state))
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
        Box::pin(self.write_dead_letter(state, record))
    }
}
