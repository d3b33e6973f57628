//! The dead-letter queue: one subject per message (`vrsky.dlq.{tenant}.{id}`), one entry
//! kept per subject, written only if it replaces no entry of the same message life; its
//! headers carry what the listing shows without reading bodies.

use std::time::Duration;

use async_nats::HeaderMap;
use async_nats::jetstream::{self, consumer, stream};
use bytes::Bytes;
use futures::StreamExt;
use serde::Serialize;

use vrsky_actors::message::{MessageState, StoreError, decode_envelope, decode_stored, encode_stored};
use vrsky_actors::{Envelope, IntegrationId, MessageId, TenantId, subjects};

use super::{H_EXPECTED_LAST_SUBJECT_SEQ, Platform, PlatformError, corrupt, header, req, store_err};

const H_INTEGRATION: &str = "Vrsky-Integration";
const H_DEAD_AT: &str = "Vrsky-Dead-At-Ms";
const H_LAST_ERROR: &str = "Vrsky-Last-Error";

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

fn one_line(s: &str) -> String {
    s.chars()
        .map(|c| if c.is_control() { ' ' } else { c })
        .take(256)
        .collect()
}

impl Platform {
    /// Records a dead letter (see [`vrsky_actors::message::MessageStore::dead_letter`]).
    pub(super) async fn write_dead_letter(
        &self,
        state: &MessageState,
        record: &Bytes,
    ) -> Result<Option<u64>, StoreError> {
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
        let body = encode_stored(state, Some(record)).map_err(corrupt)?;
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
        let record = record.ok_or_else(|| PlatformError::request("corrupt dead letter: no envelope"))?;
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
}
