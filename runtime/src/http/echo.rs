//! The echo sink of `vrsky dev`: `POST /dev/echo` answers 200 and keeps the request,
//! `GET /dev/echo` shows the last [`KEPT`] requests, newest first, headers included. A
//! local destination for the demo integration and the README's examples; only `vrsky
//! dev` mounts it.

use std::collections::VecDeque;
use std::sync::{Arc, Mutex};

use axum::body::Body;
use axum::http::{HeaderMap, StatusCode};
use axum::response::IntoResponse;
use base64::Engine;
use futures::StreamExt;
use serde::Serialize;

/// Requests kept.
pub(super) const KEPT: usize = 100;

/// Bodies longer than this are kept cut, with their full size.
const BODY_KEPT_MAX: usize = 64 * 1024;

/// One request the sink received.
#[derive(Debug, Clone, Serialize)]
pub(super) struct EchoRequest {
    /// When (RFC 3339).
    pub(super) received_at: String,
    /// `x-vrsky-message-id`, when sent.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(super) message_id: Option<String>,
    /// Every header, in order.
    pub(super) headers: Vec<(String, String)>,
    /// The body as text when it is UTF-8 (at most 64 KiB kept).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(super) body: Option<String>,
    /// The body as base64 when it is not UTF-8.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(super) body_base64: Option<String>,
    /// Body size in bytes.
    pub(super) body_bytes: usize,
    /// SHA-256 of the whole body, lowercase hex (compare with a claim-checked payload's
    /// `Vrsky-Payload-Sha256`).
    pub(super) body_sha256: String,
}

/// The last [`KEPT`] requests. The dev sink's own state; it holds no tenant data beyond
/// what was delivered to it.
#[derive(Debug, Default)]
pub(super) struct EchoSink {
    requests: Mutex<VecDeque<EchoRequest>>,
}

impl EchoSink {
    fn keep(&self, r: EchoRequest) {
        let mut q = self.requests.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        if q.len() == KEPT {
            q.pop_back();
        }
        q.push_front(r);
    }

    fn newest_first(&self) -> Vec<EchoRequest> {
        let q = self.requests.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        q.iter().cloned().collect()
    }
}

/// `POST /dev/echo`: 200, and the request is kept (and logged). The body streams through:
/// its first 64 KiB are kept, its size and SHA-256 counted, whatever its size.
pub(super) async fn receive(sink: Arc<EchoSink>, headers: HeaderMap, body: Body) -> impl IntoResponse {
    let mut stream = body.into_data_stream();
    let mut kept = Vec::new();
    let mut size = 0usize;
    let mut hash = ring::digest::Context::new(&ring::digest::SHA256);
    while let Some(chunk) = stream.next().await {
        let Ok(chunk) = chunk else {
            return StatusCode::BAD_REQUEST;
        };
        size += chunk.len();
        hash.update(&chunk);
        let room = BODY_KEPT_MAX.saturating_sub(kept.len());
        kept.extend_from_slice(&chunk[..chunk.len().min(room)]);
    }
    let kept = &kept[..];
    let text = std::str::from_utf8(kept).ok();
    let message_id = headers
        .get("x-vrsky-message-id")
        .and_then(|v| v.to_str().ok())
        .map(str::to_owned);
    tracing::info!(
        message_id = message_id.as_deref().unwrap_or("-"),
        bytes = size,
        body = %String::from_utf8_lossy(kept).chars().take(200).collect::<String>(),
        "echo sink received"
    );
    sink.keep(EchoRequest {
        received_at: super::views::rfc3339(vrsky_actors::now_ms()),
        message_id,
        headers: headers
            .iter()
            .map(|(k, v)| {
                (
                    k.as_str().to_owned(),
                    String::from_utf8_lossy(v.as_bytes()).into_owned(),
                )
            })
            .collect(),
        body: text.map(str::to_owned),
        body_base64: match text {
            None => Some(base64::engine::general_purpose::STANDARD.encode(kept)),
            Some(_) => None,
        },
        body_bytes: size,
        body_sha256: vrsky_actors::payload::sha256_hex(hash.finish().as_ref()),
    });
    StatusCode::OK
}

/// `GET /dev/echo`: `{"requests": [...]}`, newest first.
pub(super) async fn recent(sink: Arc<EchoSink>) -> impl IntoResponse {
    axum::Json(serde_json::json!({ "requests": sink.newest_first() }))
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    fn request(n: usize) -> EchoRequest {
        EchoRequest {
            received_at: String::new(),
            message_id: Some(n.to_string()),
            headers: vec![],
            body: None,
            body_base64: None,
            body_bytes: 0,
            body_sha256: String::new(),
        }
    }

    #[test]
    fn keeps_the_last_hundred_newest_first() {
        let sink = EchoSink::default();
        for n in 0..150 {
            sink.keep(request(n));
        }
        let kept = sink.newest_first();
        assert_eq!(kept.len(), KEPT);
        assert_eq!(kept[0].message_id.as_deref(), Some("149"));
        assert_eq!(kept[KEPT - 1].message_id.as_deref(), Some("50"));
    }
}
