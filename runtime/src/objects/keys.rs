//! The one place object keys are built and read: `payloads/{tenant}/{integration}/
//! {message}/{upload}`. The upload id makes every stored body its own object, so a
//! repeated webhook (same idempotency key, same message id) never overwrites the object
//! of the message it repeats; the sweeper reads the message id back to find its state.

use object_store::path::Path;
use vrsky_actors::{IntegrationId, MessageId, TenantId};

const ROOT: &str = "payloads";

/// A new key for a body of this message.
pub fn payload_key(t: &TenantId, i: &IntegrationId, m: &MessageId) -> String {
    let upload = uuid::Uuid::now_v7().simple();
    format!("{ROOT}/{t}/{i}/{m}/{upload}")
}

/// The prefix of every object of a tenant.
pub fn tenant_prefix(t: &TenantId) -> Path {
    Path::from(format!("{ROOT}/{t}"))
}

/// The prefix of every payload object.
pub fn root() -> Path {
    Path::from(ROOT)
}

/// The tenant, integration and message a key belongs to; `None` for a key not built by
/// [`payload_key`].
pub fn parse(key: &str) -> Option<(TenantId, IntegrationId, MessageId)> {
    let mut parts = key.split('/');
    let (Some(ROOT), Some(t), Some(i), Some(m), Some(upload), None) = (
        parts.next(),
        parts.next(),
        parts.next(),
        parts.next(),
        parts.next(),
        parts.next(),
    ) else {
        return None;
    };
    uuid::Uuid::try_parse(upload).ok()?;
    Some((
        TenantId::new(t).ok()?,
        IntegrationId::new(i).ok()?,
        MessageId::new(m).ok()?,
    ))
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn keys_round_trip_and_are_unique_per_upload() {
        let (t, i, m) = (
            TenantId::new("acme").unwrap(),
            IntegrationId::new("hook").unwrap(),
            MessageId::generate(),
        );
        let a = payload_key(&t, &i, &m);
        let b = payload_key(&t, &i, &m);
        assert_ne!(a, b);
        assert_eq!(parse(&a), Some((t.clone(), i, m)));
        assert!(a.starts_with(&format!("{}/", tenant_prefix(&t))));
        assert_eq!(parse("payloads/acme/hook/m"), None);
        assert_eq!(parse("payloads/acme/hook/m/not-a-uuid"), None);
        assert_eq!(parse("other/acme/hook/m/0190b8a2c5a47d3e8f0a1b2c3d4e5f60"), None);
        assert_eq!(parse(&format!("{a}/extra")), None);
    }
}
