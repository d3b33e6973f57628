//! Every NATS subject VRSky uses is built here, and only here, from validated ids.

use crate::ids::{IntegrationId, MessageId, TenantId};

/// Subjects of the platform's `retry_queue` stream.
pub const RETRY_QUEUE_SUBJECTS: &str = "vrsky.retry.>";
/// Subjects of the platform's `dead_letter_queue` stream.
pub const DEAD_LETTER_SUBJECTS: &str = "vrsky.dlq.>";

/// A scheduled retry of one message.
pub fn retry_entry(tenant: &TenantId, integration: &IntegrationId) -> String {
    format!("vrsky.retry.{tenant}.{integration}")
}

/// A dead letter: one subject per message, so the stream keeps the latest entry of each
/// (`max_messages_per_subject = 1`) and a lookup by id is a direct get.
pub fn dead_letter(tenant: &TenantId, id: &MessageId) -> String {
    format!("vrsky.dlq.{tenant}.{id}")
}

/// Every scheduled retry of one tenant.
pub fn tenant_retries(tenant: &TenantId) -> String {
    format!("vrsky.retry.{tenant}.>")
}

/// Every dead letter of one tenant.
pub fn tenant_dead_letters(tenant: &TenantId) -> String {
    format!("vrsky.dlq.{tenant}.>")
}

/// The message id at the end of a dead-letter subject.
pub fn dead_letter_id(subject: &str) -> Option<MessageId> {
    MessageId::new(subject.rsplit('.').next()?).ok()
}

/// The platform's KV bucket of message state.
pub const STATE_BUCKET: &str = "message_state";
/// The platform's KV bucket of runtime keys (the wire MAC key).
pub const KEYS_BUCKET: &str = "vrsky_keys";

/// The stream behind the state bucket.
pub fn state_stream() -> String {
    format!("KV_{STATE_BUCKET}")
}

/// The subject a message-state key is written on (`key` from `message::state_key`).
pub fn state_value(key: &str) -> String {
    format!("$KV.{STATE_BUCKET}.{key}")
}

/// Every key of the state bucket.
pub fn state_values() -> String {
    format!("$KV.{STATE_BUCKET}.>")
}

/// Every key of one tenant in the state bucket.
pub fn tenant_state_values(tenant: &TenantId) -> String {
    format!("$KV.{STATE_BUCKET}.{tenant}.>")
}

/// The key at the end of a state-bucket subject.
pub fn state_key_of(subject: &str) -> Option<&str> {
    subject
        .strip_prefix("$KV.")?
        .strip_prefix(STATE_BUCKET)?
        .strip_prefix('.')
}

/// Where ingress publishes an integration's messages on the tenant's NATS instance.
pub fn integration_inbox(tenant: &TenantId, integration: &IntegrationId) -> String {
    format!("vrsky.t.{tenant}.i.{integration}.in")
}

/// Every integration inbox of one tenant: what its NATS users may use, and nothing more.
pub fn tenant_inboxes(tenant: &TenantId) -> String {
    format!("vrsky.t.{tenant}.i.*.in")
}

/// The queue group that makes each message go to one worker across runtime nodes.
pub fn integration_queue_group(integration: &IntegrationId) -> String {
    format!("vrsky-workers-{integration}")
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn subjects_have_fixed_token_layout() {
        let t = TenantId::new("acme").unwrap();
        let i = IntegrationId::new("orders-1").unwrap();
        assert_eq!(integration_inbox(&t, &i), "vrsky.t.acme.i.orders-1.in");
        assert_eq!(integration_queue_group(&i), "vrsky-workers-orders-1");
        assert_eq!(state_value("acme.x"), "$KV.message_state.acme.x");
        assert_eq!(state_key_of(&state_value("acme.x")), Some("acme.x"));
        assert_eq!(state_key_of("$KV.other.acme.x"), None);
        assert_eq!(tenant_state_values(&t), "$KV.message_state.acme.>");
    }
}
