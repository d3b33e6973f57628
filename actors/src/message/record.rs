//! The envelope as stored under a payload key: one JSON line of metadata, a newline, then
//! the payload bytes untouched (no base64 inflation of tenant bodies).

use bytes::{BufMut, Bytes, BytesMut};
use serde::{Deserialize, Serialize};

use crate::envelope::Envelope;
use crate::ids::{IntegrationId, MessageId, TenantId};

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
    };
    let json = serde_json::to_vec(&meta).map_err(|e| RecordError(e.to_string()))?;
    let mut buf = BytesMut::with_capacity(json.len() + 1 + env.payload.len());
    buf.put_slice(&json);
    buf.put_u8(b'\n');
    buf.put_slice(&env.payload);
    Ok(buf.freeze())
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
        payload: bytes.slice(nl + 1..),
        trace_context: meta.trace_context,
        attempt,
        received_at_ms: meta.received_at_ms,
    })
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
                trace_context: None,
                attempt,
                received_at_ms: 5,
            };
            let back = decode_envelope(&encode_envelope(&env).unwrap(), attempt).unwrap();
            prop_assert_eq!(back, env);
        }
    }

    #[test]
    fn garbage_is_an_error() {
        assert!(decode_envelope(&Bytes::from_static(b"no newline"), 1).is_err());
        assert!(decode_envelope(&Bytes::from_static(b"{bad json\nbody"), 1).is_err());
    }
}
