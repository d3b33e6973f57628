//! The bench's in-process OTLP/HTTP receiver (`vrsky bench --otlp`).

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use axum::Router;
use axum::body::Bytes;

/// What an OTLP receiver took.
#[derive(Debug, Default)]
pub(super) struct OtlpCounts {
    requests: AtomicU64,
    bytes: AtomicU64,
    spans: AtomicU64,
}

/// The export figures of one bench run.
#[derive(Debug, Clone, Copy, serde::Serialize)]
pub(crate) struct OtlpExport {
    /// Export requests received.
    pub requests: u64,
    /// Protobuf bytes received.
    pub bytes: u64,
    /// Spans in them: compared with the spans the run made, it shows what the
    /// exporter's queue dropped.
    pub spans: u64,
}

impl OtlpCounts {
    pub(super) fn figures(&self) -> OtlpExport {
        OtlpExport {
            requests: self.requests.load(Ordering::Relaxed),
            bytes: self.bytes.load(Ordering::Relaxed),
            spans: self.spans.load(Ordering::Relaxed),
        }
    }
}

/// An OTLP/HTTP receiver that takes every export (`POST /v1/traces`) and answers it with
/// an empty `ExportTraceServiceResponse`, counting what it got. It counts the spans by
/// walking the protobuf's framing without decoding a span, so the figures show the
/// exporter's cost plus the least a receiver in this process costs, not a collector's
/// decoding.
pub(super) async fn receiver()
-> anyhow::Result<(std::net::SocketAddr, Arc<OtlpCounts>, tokio::sync::oneshot::Sender<()>)> {
    let counts: Arc<OtlpCounts> = Arc::default();
    let c = counts.clone();
    let app = Router::new()
        .route(
            "/v1/traces",
            axum::routing::post(move |body: Bytes| {
                let c = c.clone();
                async move {
                    c.requests.fetch_add(1, Ordering::Relaxed);
                    c.bytes.fetch_add(body.len() as u64, Ordering::Relaxed);
                    c.spans.fetch_add(count_spans(&body).unwrap_or(0), Ordering::Relaxed);
                    ([("content-type", "application/x-protobuf")], Bytes::new())
                }
            }),
        )
        .layer(axum::extract::DefaultBodyLimit::max(64 << 20));
    let (addr, stop) = super::serve(app).await?;
    Ok((addr, counts, stop))
}

/// The spans in an `ExportTraceServiceRequest`: `resource_spans` (field 1) hold
/// `scope_spans` (field 2), which hold `spans` (field 2). `None` when the framing is
/// broken.
fn count_spans(request: &[u8]) -> Option<u64> {
    let mut spans = 0;
    for resource in fields(request, 1) {
        for scope in fields(resource?, 2) {
            for span in fields(scope?, 2) {
                span?;
                spans += 1;
            }
        }
    }
    Some(spans)
}

/// The length-delimited fields numbered `wanted` of one protobuf message, skipping the
/// others; an `Err`-like `None` item ends a broken message.
fn fields(mut msg: &[u8], wanted: u64) -> impl Iterator<Item = Option<&[u8]>> {
    std::iter::from_fn(move || {
        loop {
            if msg.is_empty() {
                return None;
            }
            let Some(key) = varint(&mut msg) else {
                msg = &[];
                return Some(None);
            };
            let skip = match key & 7 {
                0 => varint(&mut msg).map(|_| 0),
                1 => Some(8),
                5 => Some(4),
                2 => varint(&mut msg).and_then(|n| usize::try_from(n).ok()),
                _ => None,
            };
            let Some(skip) = skip.filter(|&n| n <= msg.len()) else {
                msg = &[];
                return Some(None);
            };
            let (field, rest) = msg.split_at(skip);
            msg = rest;
            if key & 7 == 2 && key >> 3 == wanted {
                return Some(Some(field));
            }
        }
    })
}

fn varint(buf: &mut &[u8]) -> Option<u64> {
    let mut v = 0u64;
    for (i, &b) in buf.iter().enumerate().take(10) {
        v |= u64::from(b & 0x7f) << (7 * i);
        if b & 0x80 == 0 {
            *buf = &buf[i + 1..];
            return Some(v);
        }
    }
    None
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest;
    use opentelemetry_proto::tonic::trace::v1::{ResourceSpans, ScopeSpans, Span};
    use prost::Message as _;

    #[test]
    fn counts_the_spans_of_a_real_request() {
        let span = |name: &str| Span {
            name: name.into(),
            trace_id: vec![1; 16],
            span_id: vec![2; 8],
            start_time_unix_nano: 7,
            ..Default::default()
        };
        let scope = |n: usize| ScopeSpans {
            spans: (0..n).map(|i| span(&format!("s{i}"))).collect(),
            ..Default::default()
        };
        let req = ExportTraceServiceRequest {
            resource_spans: vec![
                ResourceSpans {
                    scope_spans: vec![scope(3), scope(2)],
                    ..Default::default()
                },
                ResourceSpans {
                    scope_spans: vec![scope(4)],
                    ..Default::default()
                },
            ],
        };
        let bytes = req.encode_to_vec();
        assert_eq!(count_spans(&bytes), Some(9));
        assert_eq!(count_spans(&[]), Some(0));
        assert_eq!(count_spans(&bytes[..bytes.len() - 3]), None);
    }
}
