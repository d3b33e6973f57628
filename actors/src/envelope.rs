//! The one message shape that travels from consumer to producer.

use bytes::Bytes;

use crate::ids::{IntegrationId, MessageId, TenantId};
use crate::payload::PayloadRef;

/// A message on its way through an integration.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Envelope {
    /// Assigned at ingress (or the caller's idempotency key).
    pub message_id: MessageId,
    /// Owner tenant.
    pub tenant_id: TenantId,
    /// The integration it runs through.
    pub integration_id: IntegrationId,
    /// Forwarded request headers, names lowercase, in arrival order.
    pub headers: Vec<(String, String)>,
    /// The body's media type, if the sender gave one.
    pub content_type: Option<String>,
    /// The body, byte for byte; empty while it is in the object store (see
    /// [`Envelope::payload_in_store`]).
    pub payload: Bytes,
    /// Claim check: the body is the object this names, not `payload`. Kept when a worker
    /// loads the body for its filters; dropped by a converter that replaces it.
    pub payload_ref: Option<PayloadRef>,
    /// W3C `traceparent` of the ingress span, so one trace follows the message.
    pub trace_context: Option<String>,
    /// Delivery attempt, starting at 1.
    pub attempt: u32,
    /// When ingress accepted it, milliseconds since the Unix epoch.
    pub received_at_ms: u64,
}

impl Envelope {
    /// The object the body must be read from: a reference whose bytes are not loaded.
    pub fn payload_in_store(&self) -> Option<&PayloadRef> {
        self.payload_ref
            .as_ref()
            .filter(|r| self.payload.is_empty() && r.size > 0)
    }

    /// The body's length, wherever it is.
    pub fn payload_len(&self) -> u64 {
        match self.payload_in_store() {
            Some(r) => r.size,
            None => self.payload.len() as u64,
        }
    }

    /// The value of a forwarded header (name compared case-insensitively).
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }
}
