//! The bench's in-process OTLP/HTTP receiver (`vrsky bench --otlp`).

use std::sync::Arc;
use std::sync::atomic::Ordering;

use axum::Router;
use axum::body::Bytes;

/// Export requests and bytes an OTLP receiver took.
pub(super) type OtlpCounts = Arc<(std::sync::atomic::AtomicU64, std::sync::atomic::AtomicU64)>;

/// An OTLP/HTTP receiver that takes every export (`POST /v1/traces`) and answers it with
/// an empty `ExportTraceServiceResponse`, counting what it got. It reads the body frame by
/// frame without keeping it, so the figures show the exporter's cost plus the least a
/// receiver in this process costs (its HTTP exchange), not a collector's decoding.
pub(super) async fn receiver() -> anyhow::Result<(std::net::SocketAddr, OtlpCounts, tokio::sync::oneshot::Sender<()>)> {
    let counts: OtlpCounts = Arc::default();
    let c = counts.clone();
    let app = Router::new().route(
        "/v1/traces",
        axum::routing::post(move |body: axum::body::Body| {
            let c = c.clone();
            async move {
                use http_body_util::BodyExt as _;
                let mut body = body;
                let mut len = 0u64;
                while let Some(Ok(frame)) = body.frame().await {
                    len += frame.data_ref().map_or(0, |d| d.len() as u64);
                }
                c.0.fetch_add(1, Ordering::Relaxed);
                c.1.fetch_add(len, Ordering::Relaxed);
                ([("content-type", "application/x-protobuf")], Bytes::new())
            }
        }),
    );
    let (addr, stop) = super::serve(app).await?;
    Ok((addr, counts, stop))
}
