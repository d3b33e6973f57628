//! The retry queue: one entry per scheduled retry, with the message's identity and due
//! time in headers, read by the RetryScheduler's durable consumer.

use std::time::Duration;

use async_nats::HeaderMap;
use async_nats::jetstream::{self, consumer};
use bytes::Bytes;

use vrsky_actors::message::{MessageState, StoreError};
use vrsky_actors::{MessageId, TenantId, subjects};

use super::{Platform, PlatformError, RETRY_CONSUMER, header, req, store_err};

const H_MSG_ID: &str = "Nats-Msg-Id";
const H_TENANT: &str = "Vrsky-Tenant";
const H_MESSAGE_ID: &str = "Vrsky-Message-Id";
const H_RETRY_COUNT: &str = "Vrsky-Retry-Count";
const H_DUE_AT: &str = "Vrsky-Due-At-Ms";

impl Platform {
    /// Durably schedules the retry of a message in `retry` status.
    pub(super) async fn schedule_retry_entry(&self, state: &MessageState) -> Result<(), StoreError> {
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
