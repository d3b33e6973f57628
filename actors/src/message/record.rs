//! How a message is stored, published and dead-lettered: one byte format everywhere.
//!
//! - An **envelope record** is one JSON line of metadata, a newline, then the payload bytes
//!   untouched (no base64 inflation of tenant bodies).
//! - A **stored message** is the state as one JSON line, then, while the message can still
//!   be delivered (`received`, `processing`, `retry`), a newline and its envelope record.
//!   It is the value of `{tenant}.{message_id}` in `message_state`, the payload published
//!   on the tenant's NATS, and the body of a dead letter (which always has the record).
//!
//! So ingress encodes an envelope once, a worker's claim re-uses the record bytes it
//! received, and one write per transition keeps state and envelope together.

use bytes::{BufMut, Bytes, BytesMut};
use serde::{Deserialize, Serialize};

use super::MessageState;
use crate::envelope::Envelope;
use crate::ids::{IntegrationId, MessageId, TenantId};
use crate::payload::PayloadRef;

#[derive(Serialize, Deserialize)]
struct Meta {
    message_id: MessageId,
    tenant_id: TenantId,
    integration_id: IntegrationId,
    headers: Vec<(String, String)>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    content_type: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    trace_context: Option<String>,
    received_at_ms: u64,
    /// Claim check: the body is this object, and no bytes follow the line.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    payload_ref: Option<PayloadRef>,
}

/// A stored envelope that does not parse.
#[derive(Debug, thiserror::Error)]
#[error("corrupt stored envelope: {0}")]
pub struct RecordError(String);

/// Encodes an envelope (its attempt number is not stored: the state record has it).
pub fn encode_envelope(env: &Envelope) -> Result<Bytes, RecordError> {
    let meta = Meta {
        message_id: env.message_id.clone(),
        tenant_id: env.tenant_id.clone(),
        integration_id: env.integration_id.clone(),
        headers: env.headers.clone(),
        content_type: env.content_type.clone(),
        trace_context: env.trace_context.clone(),
        received_at_ms: env.received_at_ms,
        payload_ref: env.payload_ref.clone(),
    };
    let json = serde_json::to_vec(&meta).map_err(|e| RecordError(e.to_string()))?;
    let mut buf = BytesMut::with_capacity(json.len() + 1 + env.payload.len());
    buf.put_slice(&json);
    buf.put_u8(b'\n');
    if env.payload_ref.is_none() {
        buf.put_slice(&env.payload);
    }
    Ok(buf.freeze())
}

/// The W3C `traceparent` an envelope record carries, read from its metadata line alone
/// (for a span that continues the message's trace where only the record is at hand).
pub fn trace_context_of(bytes: &Bytes) -> Option<String> {
    #[derive(Deserialize)]
    struct TraceOnly {
        #[serde(default)]
        trace_context: Option<String>,
    }
    meta_part::<TraceOnly>(bytes)?.trace_context
}

/// The fields of the metadata line that `T` names, without decoding the rest.
fn meta_part<T: serde::de::DeserializeOwned>(bytes: &Bytes) -> Option<T> {
    let nl = bytes.iter().position(|b| *b == b'\n')?;
    serde_json::from_slice(&bytes[..nl]).ok()
}

/// The claim-check reference an envelope record carries, read from its metadata line alone
/// (to release or list the object without decoding the envelope).
pub fn payload_ref_of(bytes: &Bytes) -> Option<PayloadRef> {
    #[derive(Deserialize)]
    struct RefOnly {
        #[serde(default)]
        payload_ref: Option<PayloadRef>,
    }
    meta_part::<RefOnly>(bytes)?.payload_ref
}

/// Decodes what [`encode_envelope`] wrote, with the given attempt number.
pub fn decode_envelope(bytes: &Bytes, attempt: u32) -> Result<Envelope, RecordError> {
    let nl = bytes
        .iter()
        .position(|b| *b == b'\n')
        .ok_or_else(|| RecordError("no metadata line".into()))?;
    let meta: Meta = serde_json::from_slice(&bytes[..nl]).map_err(|e| RecordError(e.to_string()))?;
    Ok(Envelope {
        message_id: meta.message_id,
        tenant_id: meta.tenant_id,
        integration_id: meta.integration_id,
        headers: meta.headers,
        content_type: meta.content_type,
        payload: if meta.payload_ref.is_some() {
            Bytes::new()
        } else {
            bytes.slice(nl + 1..)
        },
        payload_ref: meta.payload_ref,
        trace_context: meta.trace_context,
        attempt,
        received_at_ms: meta.received_at_ms,
    })
}

/// A message's state followed by its envelope record, when it has one.
pub fn encode_stored(state: &MessageState, record: Option<&Bytes>) -> Result<Bytes, RecordError> {
    let json = serde_json::to_vec(state).map_err(|e| RecordError(e.to_string()))?;
    let Some(record) = record else {
        return Ok(Bytes::from(json));
    };
    let mut buf = BytesMut::with_capacity(json.len() + 1 + record.len());
    buf.put_slice(&json);
    buf.put_u8(b'\n');
    buf.put_slice(record);
    Ok(buf.freeze())
}

/// Splits what [`encode_stored`] wrote: the state, and the envelope record (a zero-copy
/// slice) if there is one.
pub fn decode_stored(bytes: &Bytes) -> Result<(MessageState, Option<Bytes>), RecordError> {
    let nl = bytes.iter().position(|b| *b == b'\n');
    let line = &bytes[..nl.unwrap_or(bytes.len())];
    let state = serde_json::from_slice(line).map_err(|e| RecordError(format!("state line: {e}")))?;
    let record = nl.map(|n| bytes.slice(n + 1..)).filter(|r| !r.is_empty());
    Ok((state, record))
}

/// The envelope of a message whose record is gone: ids and times only, no body.
pub fn empty_envelope(state: &MessageState) -> Envelope {
    Envelope {
        message_id: state.message_id.clone(),
        tenant_id: state.tenant_id.clone(),
        integration_id: state.integration_id.clone(),
        headers: Vec::new(),
        content_type: None,
        payload: Bytes::new(),
        payload_ref: None,
        trace_context: None,
        attempt: state.retry_count,
        received_at_ms: state.created_at_ms,
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use proptest::prelude::*;

    proptest! {
        #![proptest_config(crate::testkit::proptest_config("../proptest-regressions/actors-record.txt"))]
        #[test]
        fn round_trip(payload in proptest::collection::vec(any::<u8>(), 0..300), attempt in 1u32..10) {
            let env = Envelope {
                message_id: MessageId::generate(),
                tenant_id: TenantId::new("t").unwrap(),
                integration_id: IntegrationId::new("i").unwrap(),
                headers: vec![("x-a".into(), "1\n2".into())],
                content_type: Some("application/octet-stream".into()),
                payload: Bytes::from(payload),
                payload_ref: None,
                trace_context: None,
                attempt,
                received_at_ms: 5,
            };
            let back = decode_envelope(&encode_envelope(&env).unwrap(), attempt).unwrap();
            prop_assert_eq!(back, env);
        }

        /// Fuzz: arbitrary bytes (and JSON-looking lines) never panic the decoders; they
        /// decode or are refused.
        #[test]
        fn arbitrary_bytes_never_panic(
            raw in proptest::collection::vec(any::<u8>(), 0..400),
            line in "\\{[ -~]{0,80}\\}",
            tail in proptest::collection::vec(any::<u8>(), 0..64),
        ) {
            let _ = decode_stored(&Bytes::from(raw.clone()));
            let _ = decode_envelope(&Bytes::from(raw), 1);
            let mut framed = line.into_bytes();
            framed.push(b'\n');
            framed.extend_from_slice(&tail);
            let _ = decode_stored(&Bytes::from(framed.clone()));
            let _ = decode_envelope(&Bytes::from(framed), 1);
        }
    }

    #[test]
    fn stored_messages_round_trip_with_and_without_a_record() {
        let env = Envelope {
            payload: Bytes::from_static(b"line one\nline two\n"),
            ..empty_envelope(&MessageState::received(
                MessageId::generate(),
                TenantId::new("t").unwrap(),
                IntegrationId::new("i").unwrap(),
                9,
            ))
        };
        let state = MessageState::received(
            env.message_id.clone(),
            env.tenant_id.clone(),
            env.integration_id.clone(),
            9,
        );
        let record = encode_envelope(&env).unwrap();
        let (s, r) = decode_stored(&encode_stored(&state, Some(&record)).unwrap()).unwrap();
        assert_eq!(s, state);
        assert_eq!(r.as_ref(), Some(&record));
        assert_eq!(decode_envelope(&r.unwrap(), 0).unwrap(), env);
        let (s, r) = decode_stored(&encode_stored(&state, None).unwrap()).unwrap();
        assert_eq!((s, r), (state, None));
        assert!(decode_stored(&Bytes::from_static(b"{oops\nrecord")).is_err());
        assert!(decode_stored(&Bytes::new()).is_err());
    }

    #[test]
    fn a_claim_checked_envelope_carries_its_reference_and_no_bytes() {
        let reference = PayloadRef {
            key: "payloads/t/i/m/u".into(),
            size: 300 * 1024,
            sha256: "ab".repeat(32),
        };
        let env = Envelope {
            payload_ref: Some(reference.clone()),
            ..empty_envelope(&MessageState::received(
                MessageId::generate(),
                TenantId::new("t").unwrap(),
                IntegrationId::new("i").unwrap(),
                9,
            ))
        };
        let record = encode_envelope(&env).unwrap();
        assert_eq!(record.last(), Some(&b'\n'), "nothing after the metadata line");
        assert_eq!(payload_ref_of(&record), Some(reference.clone()));
        let back = decode_envelope(&record, 1).unwrap();
        assert_eq!(back.payload_in_store(), Some(&reference));
        assert_eq!(back.payload_len(), 300 * 1024);
        let inline = Envelope {
            payload: Bytes::from_static(b"{}"),
            payload_ref: None,
            ..back
        };
        assert_eq!(payload_ref_of(&encode_envelope(&inline).unwrap()), None);
    }

    #[test]
    fn garbage_is_an_error() {
        assert!(decode_envelope(&Bytes::from_static(b"no newline"), 1).is_err());
        assert!(decode_envelope(&Bytes::from_static(b"{bad json\nbody"), 1).is_err());
    }
}
