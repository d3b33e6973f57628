//! The HTTP webhook consumer: turns an accepted request into an envelope.

use bytes::Bytes;

use super::signature::{Secret, SignatureError};
use super::{ConsumeError, Consumer, ConsumerSpec, SpecError};
use crate::envelope::Envelope;
use crate::ids::{IntegrationId, MessageId, TenantId};

/// What the HTTP layer hands the consumer. Header names are lowercase.
#[derive(Debug, Clone)]
pub struct InboundRequest {
    /// The id assigned to the message.
    pub message_id: MessageId,
    /// Path tenant.
    pub tenant_id: TenantId,
    /// Path integration.
    pub integration_id: IntegrationId,
    /// Request headers (name lowercase, raw value bytes).
    pub headers: Vec<(String, Vec<u8>)>,
    /// The body.
    pub body: Bytes,
    /// W3C traceparent of the ingress span.
    pub trace_context: Option<String>,
    /// Acceptance time, ms since the Unix epoch.
    pub received_at_ms: u64,
}

/// Keeps `content-type` and the configured headers; drops everything else. With a
/// signature secret, it verifies each request first.
#[derive(Debug, Clone)]
pub struct WebhookConsumer {
    /// Lowercase header names to forward.
    forward: Vec<String>,
    /// Standard Webhooks secret incoming requests must be signed with.
    verify: Option<Secret>,
}

impl WebhookConsumer {
    /// A consumer forwarding these headers (matched case-insensitively), verifying
    /// nothing.
    pub fn new(forward_headers: &[String]) -> Self {
        WebhookConsumer {
            forward: forward_headers.iter().map(|h| h.to_ascii_lowercase()).collect(),
            verify: None,
        }
    }

    /// The consumer a spec describes; fails on a secret that does not parse (a spec that
    /// passed validation never does).
    pub fn from_spec(spec: &ConsumerSpec) -> Result<Self, SpecError> {
        let verify = match &spec.signature {
            None => None,
            Some(s) => Some(Secret::parse(&s.secret).map_err(|message| SpecError {
                field: "consumer.signature.secret".into(),
                message,
            })?),
        };
        Ok(WebhookConsumer {
            verify,
            ..WebhookConsumer::new(&spec.forward_headers)
        })
    }

    /// Checks an incoming request's signature (when this consumer requires one) at
    /// `now_s`. `header` looks a request header up by lowercase name.
    pub fn verify<'a>(
        &self,
        header: impl Fn(&str) -> Option<&'a str>,
        body: &[u8],
        now_s: u64,
    ) -> Result<(), SignatureError> {
        match &self.verify {
            None => Ok(()),
            Some(secret) => secret.verify(
                header("webhook-id"),
                header("webhook-timestamp"),
                header("webhook-signature"),
                body,
                now_s,
            ),
        }
    }
}

impl WebhookConsumer {
    /// The check of a body that streams in (see [`Secret::verifier`]); `None` when the
    /// integration does not require signatures.
    pub fn verifier<'a>(
        &self,
        header: impl Fn(&str) -> Option<&'a str>,
        now_s: u64,
    ) -> Result<Option<super::signature::Verifier>, SignatureError> {
        match &self.verify {
            None => Ok(None),
            Some(secret) => secret
                .verifier(
                    header("webhook-id"),
                    header("webhook-timestamp"),
                    header("webhook-signature"),
                    now_s,
                )
                .map(Some),
        }
    }
}

impl Consumer for WebhookConsumer {
    fn accept(&self, request: InboundRequest) -> Result<Envelope, ConsumeError> {
        let mut content_type = None;
        let mut headers = Vec::new();
        for (name, value) in request.headers {
            let forward = self.forward.contains(&name);
            if name != "content-type" && !forward {
                continue;
            }
            let value = String::from_utf8(value).map_err(|_| ConsumeError::BadHeader(name.clone()))?;
            if name == "content-type" {
                content_type = Some(value);
            } else {
                headers.push((name, value));
            }
        }
        headers.sort_by(|a, b| a.0.cmp(&b.0));
        Ok(Envelope {
            message_id: request.message_id,
            tenant_id: request.tenant_id,
            integration_id: request.integration_id,
            headers,
            content_type,
            payload: request.body,
            payload_ref: None,
            trace_context: request.trace_context,
            attempt: 1,
            received_at_ms: request.received_at_ms,
        })
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use proptest::prelude::*;

    proptest! {
        #![proptest_config(crate::testkit::proptest_config("../proptest-regressions/actors-consumer.txt"))]

        /// Fuzz: any headers (names, raw value bytes) and body become an envelope or a
        /// precise refusal; only forwarded, UTF-8 headers are kept.
        #[test]
        fn arbitrary_requests_never_panic(
            headers in proptest::collection::vec(("[a-z-]{1,12}", proptest::collection::vec(any::<u8>(), 0..24)), 0..8),
            body in proptest::collection::vec(any::<u8>(), 0..256),
        ) {
            let c = WebhookConsumer::new(&["x-a".into(), "x-b".into()]);
            let r = InboundRequest {
                message_id: MessageId::generate(),
                tenant_id: TenantId::new("t").unwrap(),
                integration_id: IntegrationId::new("i").unwrap(),
                headers,
                body: Bytes::from(body),
                trace_context: None,
                received_at_ms: 0,
            };
            if let Ok(env) = c.accept(r) {
                prop_assert!(env.headers.iter().all(|(k, _)| k == "x-a" || k == "x-b"));
            }
        }
    }

    #[test]
    fn forwards_only_chosen_headers() {
        let c = WebhookConsumer::new(&["X-Request-Id".into()]);
        let env = c
            .accept(InboundRequest {
                message_id: MessageId::generate(),
                tenant_id: TenantId::new("t").unwrap(),
                integration_id: IntegrationId::new("i").unwrap(),
                headers: vec![
                    ("content-type".into(), b"application/xml".to_vec()),
                    ("x-request-id".into(), b"r1".to_vec()),
                    ("authorization".into(), b"secret".to_vec()),
                ],
                body: Bytes::from_static(b"<a/>"),
                trace_context: None,
                received_at_ms: 1,
            })
            .unwrap();
        assert_eq!(env.content_type.as_deref(), Some("application/xml"));
        assert_eq!(env.headers, vec![("x-request-id".to_string(), "r1".to_string())]);
        assert_eq!(&env.payload[..], b"<a/>");
    }
}
