//! A message on a tenant's NATS: the payload is the stored message exactly as written to
//! `message_state` (state line, then the envelope record: see [`crate::message`]'s record
//! format), and one header carries the revision it was stored at. Ingress and the
//! re-publishers send the bytes they wrote; a worker claims with one revision-checked write
//! of those same bytes, so nothing is encoded twice and nothing is read before a claim.

use async_nats::{HeaderMap, HeaderName, HeaderValue};
use bytes::Bytes;

use crate::envelope::Envelope;
use crate::message::{MessageState, decode_envelope, decode_stored};

const H_REVISION: &str = "Vrsky-Revision";

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
pub fn encode(stored: Bytes, revision: u64) -> (HeaderMap, Bytes) {
    let mut h = HeaderMap::new();
    h.insert(HeaderName::from_static(H_REVISION), HeaderValue::from(revision));
    (h, stored)
}

/// Reads a message published by [`encode`].
pub fn decode(headers: Option<&HeaderMap>, payload: &Bytes) -> Result<Claimable, WireError> {
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
            trace_context: Some("00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01".into()),
            attempt: 1,
            received_at_ms: 1_700_000_000_000,
        }
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
        assert!(matches!(decode(None, &Bytes::new()), Err(WireError::NoHeaders)));
        assert!(matches!(
            decode(Some(&HeaderMap::new()), &Bytes::new()),
            Err(WireError::Missing(H_REVISION))
        ));
        // A state without its envelope (a finished message) cannot be delivered.
        let (h, p) = encode(encode_stored(&st, None).unwrap(), 3);
        assert!(matches!(decode(Some(&h), &p), Err(WireError::Payload(_))));
        // Ids of the state and of the envelope must agree.
        let other = MessageState {
            message_id: MessageId::generate(),
            ..st
        };
        let (h, p) = encode(encode_stored(&other, Some(&record)).unwrap(), 3);
        assert!(matches!(decode(Some(&h), &p), Err(WireError::Payload(_))));
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
            let (h, p) = encode(encode_stored(&st, Some(&record)).unwrap(), revision);
            let back = decode(Some(&h), &p).unwrap();
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
            let _ = decode(Some(&h), &Bytes::from(payload.clone()));
            let _ = decode(None, &Bytes::from(payload));
        }
    }
}
