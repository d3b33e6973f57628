//! Keys in the `message_state` bucket, built only here, from validated ids.
//!
//! `{tenant}.{message_id}` holds the message as [`super::encode_stored`] writes it: the
//! [`super::MessageState`] line and, until the message is finished, its envelope.
//!
//! **Invariant:** every key starts with the tenant, so a lookup made with one tenant's id
//! can never reach another tenant's message.

use crate::ids::{IntegrationId, MessageId, TenantId};

/// Key of a message's state record.
pub fn state_key(tenant: &TenantId, id: &MessageId) -> String {
    format!("{tenant}.{id}")
}

/// Splits a state key back into its ids; `None` for foreign keys.
pub fn parse_state_key(key: &str) -> Option<(TenantId, MessageId)> {
    let (t, id) = key.split_once('.')?;
    if id.contains('.') {
        return None;
    }
    Some((TenantId::new(t).ok()?, MessageId::new(id).ok()?))
}

/// The message id for a caller's idempotency key: a UUIDv5 of tenant, integration and
/// key, so a repeat maps to the same id and the create-only state write is the dedupe.
pub fn idempotent_message_id(tenant: &TenantId, integration: &IntegrationId, key: &str) -> MessageId {
    let name = format!("{tenant}/{integration}/{key}");
    let id = uuid::Uuid::new_v5(&uuid::Uuid::NAMESPACE_OID, name.as_bytes());
    // A hyphen-free hex UUID always satisfies the MessageId rules.
    MessageId::new(id.simple().to_string()).unwrap_or_else(|_| MessageId::generate())
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn keys_round_trip_and_foreign_keys_are_refused() {
        let t = TenantId::new("acme").unwrap();
        let id = MessageId::generate();
        let k = state_key(&t, &id);
        assert_eq!(parse_state_key(&k), Some((t.clone(), id.clone())));
        assert_eq!(parse_state_key(&format!("{k}.p")), None);
        assert_eq!(parse_state_key("nodot"), None);
    }

    #[test]
    fn idempotency_ids_are_stable_and_scoped() {
        let t = TenantId::new("a").unwrap();
        let i = IntegrationId::new("x").unwrap();
        let a = idempotent_message_id(&t, &i, "msg_1");
        assert_eq!(a, idempotent_message_id(&t, &i, "msg_1"));
        assert_ne!(a, idempotent_message_id(&t, &i, "msg_2"));
        assert_ne!(a, idempotent_message_id(&TenantId::new("b").unwrap(), &i, "msg_1"));
        assert_ne!(a, idempotent_message_id(&t, &IntegrationId::new("y").unwrap(), "msg_1"));
    }
}
