//! The envelope on a NATS wire: metadata in NATS headers, the body as the raw payload
//! (no re-encoding of tenant bytes).

use std::str::FromStr;

use async_nats::{HeaderMap, HeaderName, HeaderValue};
use bytes::Bytes;

use crate::envelope::Envelope;
use crate::ids::{IdError, IntegrationId, MessageId, TenantId};
use crate::message::MessageState;

const H_MESSAGE_ID: &str = "Vrsky-Message-Id";
const H_TENANT: &str = "Vrsky-Tenant";
const H_INTEGRATION: &str = "Vrsky-Integration";
const H_ATTEMPT: &str = "Vrsky-Attempt";
const H_RECEIVED_AT: &str = "Vrsky-Received-At";
const H_CONTENT_TYPE: &str = "Vrsky-Content-Type";
const H_TRACEPARENT: &str = "traceparent";
const H_REVISION: &str = "Vrsky-Revision";
const H_STATE: &str = "Vrsky-State";
/// Forwarded headers travel as `Vrsky-H-<name>`.
const FORWARD_PREFIX: &str = "Vrsky-H-";

/// Why a NATS message could not be read as an envelope.
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
    /// An id in the headers is invalid.
    #[error(transparent)]
    Id(#[from] IdError),
}

/// Why an envelope could not be put on the wire.
#[derive(Debug, thiserror::Error)]
#[error("header {name:?} cannot be sent over NATS")]
pub struct EncodeError {
    /// The offending header name.
    pub name: String,
}

fn put(h: &mut HeaderMap, name: &str, value: &str) -> Result<(), EncodeError> {
    let n = HeaderName::from_str(name).map_err(|_| EncodeError { name: name.into() })?;
    let v = HeaderValue::from_str(value).map_err(|_| EncodeError { name: name.into() })?;
    h.append(n, v);
    Ok(())
}

/// The durable state a published message carries, so a worker can claim it with one
/// revision-checked write and no read.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Claimable {
    /// The state as published.
    pub state: MessageState,
    /// Its revision in the `message_state` bucket.
    pub revision: u64,
}

/// Encodes an envelope (and the state to claim it from) as NATS headers plus payload.
pub fn encode_claimable(
    env: &Envelope,
    claim: &MessageState,
    revision: u64,
) -> Result<(HeaderMap, Bytes), EncodeError> {
    let (mut h, payload) = encode(env)?;
    add_claim(&mut h, claim, revision)?;
    Ok((h, payload))
}

/// Adds the claim data to headers made by [`encode`], so an envelope encoded once (to
/// check it before storing) is not encoded again to publish it.
pub fn add_claim(h: &mut HeaderMap, claim: &MessageState, revision: u64) -> Result<(), EncodeError> {
    let state = serde_json::to_string(claim).map_err(|_| EncodeError { name: H_STATE.into() })?;
    put(h, H_REVISION, &revision.to_string())?;
    put(h, H_STATE, &state)
}

/// Reads the claim data of a message published by [`encode_claimable`].
pub fn decode_claimable(headers: Option<&HeaderMap>) -> Result<Claimable, WireError> {
    let h = headers.ok_or(WireError::NoHeaders)?;
    let state = serde_json::from_str(get(h, H_STATE)?).map_err(|e| WireError::Bad {
        name: H_STATE,
        reason: e.to_string(),
    })?;
    Ok(Claimable {
        state,
        revision: parse_num(h, H_REVISION)?,
    })
}

/// Encodes an envelope as NATS headers plus payload.
pub fn encode(env: &Envelope) -> Result<(HeaderMap, Bytes), EncodeError> {
    let mut h = HeaderMap::new();
    put(&mut h, H_MESSAGE_ID, env.message_id.as_str())?;
    put(&mut h, H_TENANT, env.tenant_id.as_str())?;
    put(&mut h, H_INTEGRATION, env.integration_id.as_str())?;
    put(&mut h, H_ATTEMPT, &env.attempt.to_string())?;
    put(&mut h, H_RECEIVED_AT, &env.received_at_ms.to_string())?;
    if let Some(ct) = &env.content_type {
        put(&mut h, H_CONTENT_TYPE, ct)?;
    }
    if let Some(tp) = &env.trace_context {
        put(&mut h, H_TRACEPARENT, tp)?;
    }
    for (name, value) in &env.headers {
        put(&mut h, &format!("{FORWARD_PREFIX}{name}"), value)?;
    }
    Ok((h, env.payload.clone()))
}

fn get<'a>(h: &'a HeaderMap, name: &'static str) -> Result<&'a str, WireError> {
    h.get(name).map(|v| v.as_str()).ok_or(WireError::Missing(name))
}

fn parse_num<T: FromStr>(h: &HeaderMap, name: &'static str) -> Result<T, WireError>
where
    T::Err: std::fmt::Display,
{
    get(h, name)?.parse().map_err(|e: T::Err| WireError::Bad {
        name,
        reason: e.to_string(),
    })
}

/// Decodes a NATS message produced by [`encode`].
pub fn decode(headers: Option<&HeaderMap>, payload: Bytes) -> Result<Envelope, WireError> {
    let h = headers.ok_or(WireError::NoHeaders)?;
    let mut forwarded = Vec::new();
    for (name, values) in h.iter() {
        let name: &str = name.as_ref();
        // Header names are matched case-insensitively on the way back.
        if name.len() > FORWARD_PREFIX.len() && name[..FORWARD_PREFIX.len()].eq_ignore_ascii_case(FORWARD_PREFIX) {
            let fwd = name[FORWARD_PREFIX.len()..].to_ascii_lowercase();
            for v in values {
                forwarded.push((fwd.clone(), v.as_str().to_owned()));
            }
        }
    }
    // HeaderMap is a hash map: restore a stable order (by name, values in arrival order).
    forwarded.sort_by(|a, b| a.0.cmp(&b.0));
    Ok(Envelope {
        message_id: MessageId::new(get(h, H_MESSAGE_ID)?)?,
        tenant_id: TenantId::new(get(h, H_TENANT)?)?,
        integration_id: IntegrationId::new(get(h, H_INTEGRATION)?)?,
        headers: forwarded,
        content_type: h.get(H_CONTENT_TYPE).map(|v| v.as_str().to_owned()),
        payload,
        trace_context: h.get(H_TRACEPARENT).map(|v| v.as_str().to_owned()),
        attempt: parse_num(h, H_ATTEMPT)?,
        received_at_ms: parse_num(h, H_RECEIVED_AT)?,
    })
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
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

    #[test]
    fn claim_data_round_trips() {
        let env = sample(vec![], b"x".to_vec(), None);
        let st = MessageState::received(
            env.message_id.clone(),
            env.tenant_id.clone(),
            env.integration_id.clone(),
            7,
        );
        let (h, _) = encode_claimable(&env, &st, 42).unwrap();
        let c = decode_claimable(Some(&h)).unwrap();
        assert_eq!(
            c,
            Claimable {
                state: st,
                revision: 42
            }
        );
        let (plain, _) = encode(&env).unwrap();
        assert!(matches!(
            decode_claimable(Some(&plain)),
            Err(WireError::Missing(H_STATE))
        ));
    }

    #[test]
    fn missing_headers_are_reported() {
        assert!(matches!(decode(None, Bytes::new()), Err(WireError::NoHeaders)));
        let h = HeaderMap::new();
        assert!(matches!(
            decode(Some(&h), Bytes::new()),
            Err(WireError::Missing(H_MESSAGE_ID))
        ));
    }

    proptest! {
        #![proptest_config(crate::testkit::proptest_config("../proptest-regressions/actors-wire.txt"))]
        #[test]
        fn round_trip(
            mut headers in proptest::collection::vec(("[a-z][a-z0-9-]{0,20}", "[ -~]{0,40}"), 0..6),
            payload in proptest::collection::vec(any::<u8>(), 0..512),
            ct in proptest::option::of("[a-z]+/[a-z0-9.+-]+"),
        ) {
            // Header values are trimmed by NATS' text protocol.
            for (_, v) in headers.iter_mut() { *v = v.trim().to_owned(); }
            headers.sort_by(|a, b| a.0.cmp(&b.0));
            let env = sample(headers, payload, ct);
            let (h, p) = encode(&env).unwrap();
            let back = decode(Some(&h), p).unwrap();
            prop_assert_eq!(back, env);
        }
    }
}
