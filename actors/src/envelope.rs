//! The one message shape that travels from consumer to producer.

use bytes::Bytes;

use crate::ids::{IntegrationId, MessageId, TenantId};

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
    /// The body, byte for byte.
    pub payload: Bytes,
    /// W3C `traceparent` of the ingress span, so one trace follows the message.
    pub trace_context: Option<String>,
    /// Delivery attempt, starting at 1.
    pub attempt: u32,
    /// When ingress accepted it, milliseconds since the Unix epoch.
    pub received_at_ms: u64,
}

impl Envelope {
    /// The value of a forwarded header (name compared case-insensitively).
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }
}
