//! A message on a tenant's NATS: the payload is the stored message exactly as written to
//! `message_state` (state line, then the envelope record: see [`crate::message`]'s record
//! format), one header carries the revision it was stored at, and one its MAC. Ingress and
//! the re-publishers send the bytes they wrote; a worker claims with one revision-checked
//! write of those same bytes, so nothing is encoded twice and nothing is read before a
//! claim.
//!
//! **The MAC** (`Vrsky-Mac`, HMAC-SHA256 under the platform's [`WireKey`] over the
//! revision and the bytes) is what lets the claim trust bytes that came over NATS: only
//! the runtime, which wrote them to the KV record, can publish a message a worker will
//! claim. Anyone else able to publish on a tenant's NATS (a forged body carrying the
//! current revision) is refused as malformed, and the stored record stays as it was.

use async_nats::{HeaderMap, HeaderName, HeaderValue};
use bytes::Bytes;

use crate::envelope::Envelope;
use crate::message::{MessageState, decode_envelope, decode_stored};

const H_REVISION: &str = "Vrsky-Revision";
const H_MAC: &str = "Vrsky-Mac";
/// W3C trace context of the publish span, so the worker's span is its child. Not covered
/// by the MAC: it only places spans, and a forged one cannot make a message claimable.
pub const H_TRACEPARENT: &str = "traceparent";

/// The key that authenticates published messages: one per platform, shared by every
/// node (kept in the platform's JetStream).
#[derive(Clone)]
pub struct WireKey(ring::hmac::Key);

impl std::fmt::Debug for WireKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("WireKey(..)")
    }
}

impl WireKey {
    /// A key from its bytes (32 random bytes).
    pub fn new(bytes: &[u8]) -> WireKey {
        WireKey(ring::hmac::Key::new(ring::hmac::HMAC_SHA256, bytes))
    }

    fn input(revision: u64, stored: &[u8]) -> Vec<u8> {
        let mut m = Vec::with_capacity(8 + stored.len());
        m.extend_from_slice(&revision.to_be_bytes());
        m.extend_from_slice(stored);
        m
    }

    /// A key for another purpose, derived from this one by HMAC over `label`: every node
    /// derives the same key, and it reveals nothing of the wire key.
    pub fn derive(&self, label: &[u8]) -> ring::hmac::Key {
        let tag = ring::hmac::sign(&self.0, label);
        ring::hmac::Key::new(ring::hmac::HMAC_SHA256, tag.as_ref())
    }

    fn tag(&self, revision: u64, stored: &[u8]) -> String {
        use base64::Engine;
        let tag = ring::hmac::sign(&self.0, &Self::input(revision, stored));
        base64::engine::general_purpose::STANDARD_NO_PAD.encode(tag.as_ref())
    }

    fn verify(&self, revision: u64, stored: &[u8], mac: &str) -> bool {
        use base64::Engine;
        match base64::engine::general_purpose::STANDARD_NO_PAD.decode(mac) {
            Ok(tag) => ring::hmac::verify(&self.0, &Self::input(revision, stored), &tag).is_ok(),
            Err(_) => false,
        }
    }
}

/// Why a NATS message could not be read.
#[derive(Debug, thiserror::Error)]
pub enum WireError {
    /// No NATS headers at all.
    #[error("message has no headers")]
    NoHeaders,
    /// A required header is missing.
    #[error("missing header {0}")]
    Missing(&'static str),
    /// A header holds a value that does not parse.
    #[error("bad header {name}: {reason}")]
    Bad {
        /// Header name.
        name: &'static str,
        /// What was wrong.
        reason: String,
    },
    /// The payload is not a stored message with its envelope.
    #[error("bad payload: {0}")]
    Payload(String),
    /// The MAC does not match: the message was not published by the runtime.
    #[error("the message's Vrsky-Mac does not match: not published by the runtime")]
    Forged,
}

/// A published message, ready to be claimed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Claimable {
    /// The state as published.
    pub state: MessageState,
    /// Its revision in the `message_state` bucket.
    pub revision: u64,
    /// The envelope record, as stored (written back unchanged with the claim).
    pub record: Bytes,
    /// The envelope, with the attempt number this delivery carries.
    pub envelope: Envelope,
}

/// The headers and payload that publish a stored message written at `revision`.
pub fn encode(key: &WireKey, stored: Bytes, revision: u64, traceparent: Option<&str>) -> (HeaderMap, Bytes) {
    let mut h = HeaderMap::new();
    h.insert(HeaderName::from_static(H_REVISION), HeaderValue::from(revision));
    h.insert(HeaderName::from_static(H_MAC), key.tag(revision, &stored).as_str());
    if let Some(tp) = traceparent {
        h.insert(HeaderName::from_static(H_TRACEPARENT), tp);
    }
    (h, stored)
}

/// Reads a message published by [`encode`] under the same key.
pub fn decode(key: &WireKey, headers: Option<&HeaderMap>, payload: &Bytes) -> Result<Claimable, WireError> {
    let h = headers.ok_or(WireError::NoHeaders)?;
    let revision = h
        .get(H_REVISION)
        .ok_or(WireError::Missing(H_REVISION))?
        .as_str()
        .parse()
        .map_err(|e: std::num::ParseIntError| WireError::Bad {
            name: H_REVISION,
            reason: e.to_string(),
        })?;
    let mac = h.get(H_MAC).ok_or(WireError::Missing(H_MAC))?;
    if !key.verify(revision, payload, mac.as_str()) {
        return Err(WireError::Forged);
    }
    let (state, record) = decode_stored(payload).map_err(|e| WireError::Payload(e.to_string()))?;
    let record = record.ok_or_else(|| WireError::Payload("no envelope after the state line".into()))?;
    let envelope = decode_envelope(&record, state.next_attempt()).map_err(|e| WireError::Payload(e.to_string()))?;
    if envelope.message_id != state.message_id
        || envelope.tenant_id != state.tenant_id
        || envelope.integration_id != state.integration_id
    {
        return Err(WireError::Payload("the envelope's ids differ from the state's".into()));
    }
    Ok(Claimable {
        state,
        revision,
        record,
        envelope,
    })
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use crate::ids::{IntegrationId, MessageId, TenantId};
    use crate::message::{encode_envelope, encode_stored};
    use proptest::prelude::*;

    fn sample(headers: Vec<(String, String)>, payload: Vec<u8>, ct: Option<String>) -> Envelope {
        Envelope {
            message_id: MessageId::generate(),
            tenant_id: TenantId::new("acme").unwrap(),
            integration_id: IntegrationId::new("orders").unwrap(),
            headers,
            content_type: ct,
            payload: Bytes::from(payload),
            payload_ref: None,
            trace_context: Some("00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01".into()),
            attempt: 1,
            received_at_ms: 1_700_000_000_000,
        }
    }

    fn key() -> WireKey {
        WireKey::new(b"0123456789abcdef0123456789abcdef")
    }

    /// A body forged with the current revision (or resent under another key) is refused;
    /// the genuine one passes.
    #[test]
    fn only_the_runtime_can_publish_a_claimable_message() {
        let env = sample(vec![], b"real".to_vec(), None);
        let st = state_of(&env);
        let stored = encode_stored(&st, Some(&encode_envelope(&env).unwrap())).unwrap();
        let (h, p) = encode(&key(), stored.clone(), 7, None);
        assert!(decode(&key(), Some(&h), &p).is_ok());
        let forged = encode_stored(
            &st,
            Some(&encode_envelope(&sample(vec![], b"forged".to_vec(), None)).unwrap()),
        )
        .unwrap();
        assert!(matches!(decode(&key(), Some(&h), &forged), Err(WireError::Forged)));
        let mut no_mac = HeaderMap::new();
        no_mac.insert(H_REVISION, "7");
        assert!(matches!(
            decode(&key(), Some(&no_mac), &p),
            Err(WireError::Missing(H_MAC))
        ));
        let mut other_rev = h.clone();
        other_rev.insert(H_REVISION, "8");
        assert!(matches!(decode(&key(), Some(&other_rev), &p), Err(WireError::Forged)));
        let other_key = WireKey::new(b"another key, another platform...");
        assert!(matches!(decode(&other_key, Some(&h), &p), Err(WireError::Forged)));
    }

    fn state_of(env: &Envelope) -> MessageState {
        MessageState::received(
            env.message_id.clone(),
            env.tenant_id.clone(),
            env.integration_id.clone(),
            7,
        )
    }

    #[test]
    fn bad_messages_are_reported() {
        let env = sample(vec![], b"x".to_vec(), None);
        let st = state_of(&env);
        let record = encode_envelope(&env).unwrap();
        assert!(matches!(decode(&key(), None, &Bytes::new()), Err(WireError::NoHeaders)));
        assert!(matches!(
            decode(&key(), Some(&HeaderMap::new()), &Bytes::new()),
            Err(WireError::Missing(H_REVISION))
        ));
        // A state without its envelope (a finished message) cannot be delivered.
        let (h, p) = encode(&key(), encode_stored(&st, None).unwrap(), 3, None);
        assert!(matches!(decode(&key(), Some(&h), &p), Err(WireError::Payload(_))));
        // Ids of the state and of the envelope must agree.
        let other = MessageState {
            message_id: MessageId::generate(),
            ..st
        };
        let (h, p) = encode(&key(), encode_stored(&other, Some(&record)).unwrap(), 3, None);
        assert!(matches!(decode(&key(), Some(&h), &p), Err(WireError::Payload(_))));
    }

    proptest! {
        #![proptest_config(crate::testkit::proptest_config("../proptest-regressions/actors-wire.txt"))]
        #[test]
        fn round_trip(
            mut headers in proptest::collection::vec(("[a-z][a-z0-9-]{0,20}", "[ -~]{0,40}"), 0..6),
            payload in proptest::collection::vec(any::<u8>(), 0..512),
            ct in proptest::option::of("[a-z]+/[a-z0-9.+-]+"),
            revision in 1u64..u64::MAX,
        ) {
            headers.sort_by(|a, b| a.0.cmp(&b.0));
            let env = sample(headers, payload, ct);
            let st = state_of(&env);
            let record = encode_envelope(&env).unwrap();
            let (h, p) = encode(&key(), encode_stored(&st, Some(&record)).unwrap(), revision, None);
            let back = decode(&key(), Some(&h), &p).unwrap();
            prop_assert_eq!(back, Claimable { state: st, revision, record, envelope: env });
        }

        /// Fuzz: whatever arrives over NATS (any revision header, any payload) is decoded
        /// or refused, never a panic.
        #[test]
        fn arbitrary_messages_never_panic(
            revision in "[ -~]{0,24}",
            payload in proptest::collection::vec(any::<u8>(), 0..512),
        ) {
            let mut h = async_nats::HeaderMap::new();
            h.insert(H_REVISION, revision.as_str());
            let _ = decode(&key(), Some(&h), &Bytes::from(payload.clone()));
            let _ = decode(&key(), None, &Bytes::from(payload.clone()));
            // With a valid MAC, the payload itself is decoded or refused.
            let (h, p) = encode(&key(), Bytes::from(payload), 42, None);
            let _ = decode(&key(), Some(&h), &p);
        }
    }
}
