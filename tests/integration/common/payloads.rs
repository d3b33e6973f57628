//! Large payloads for the claim-check tests: a deterministic byte pattern streamed without
//! being held, its SHA-256, and a destination that hashes what it receives as it streams
//! in (so a 100 MiB delivery costs the test no 100 MiB either).

#![allow(dead_code, clippy::unwrap_used, clippy::expect_used)]

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU16, Ordering};
use std::sync::{Arc, Mutex};

use axum::body::Body;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use bytes::Bytes;
use futures::StreamExt;

const CHUNK: usize = 64 * 1024;

/// Byte `i` of the pattern seeded with `seed` (xorshift over 8-byte words).
fn fill(seed: u64, offset: u64, buf: &mut [u8]) {
    for (j, b) in buf.iter_mut().enumerate() {
        let i = offset + j as u64;
        let mut x = (i / 8).wrapping_add(seed).wrapping_mul(0x9E37_79B9_7F4A_7C15);
        x ^= x >> 29;
        x = x.wrapping_mul(0xBF58_476D_1CE4_E5B9);
        x ^= x >> 32;
        *b = (x >> ((i % 8) * 8)) as u8;
    }
}

/// `len` bytes of the pattern as a stream of 64 KiB chunks.
pub fn pattern(seed: u64, len: u64) -> impl futures::Stream<Item = Result<Bytes, std::io::Error>> + Send + 'static {
    futures::stream::unfold(0u64, move |offset| async move {
        if offset >= len {
            return None;
        }
        let n = CHUNK.min((len - offset) as usize);
        let mut buf = vec![0u8; n];
        fill(seed, offset, &mut buf);
        Some((Ok(Bytes::from(buf)), offset + n as u64))
    })
}

/// The whole pattern in memory (for small payloads).
pub fn pattern_bytes(seed: u64, len: u64) -> Vec<u8> {
    let mut buf = vec![0u8; len as usize];
    fill(seed, 0, &mut buf);
    buf
}

/// SHA-256 of the pattern, lowercase hex.
pub fn pattern_sha256(seed: u64, len: u64) -> String {
    let mut ctx = ring::digest::Context::new(&ring::digest::SHA256);
    let mut offset = 0;
    let mut buf = vec![0u8; CHUNK];
    while offset < len {
        let n = CHUNK.min((len - offset) as usize);
        fill(seed, offset, &mut buf[..n]);
        ctx.update(&buf[..n]);
        offset += n as u64;
    }
    vrsky_actors::payload::sha256_hex(ctx.finish().as_ref())
}

/// A request body of the pattern: with `Content-Length` (`declared`) or chunked.
pub fn body(seed: u64, len: u64, declared: bool) -> (reqwest::Body, Option<u64>) {
    (reqwest::Body::wrap_stream(pattern(seed, len)), declared.then_some(len))
}

/// Every file under `dir`, recursively.
pub fn files_under(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    let Ok(entries) = std::fs::read_dir(dir) else {
        return out;
    };
    for e in entries.flatten() {
        let p = e.path();
        if p.is_dir() {
            out.extend(files_under(&p));
        } else {
            out.push(p);
        }
    }
    out
}

/// One request the destination hashed.
#[derive(Debug, Clone)]
pub struct Hashed {
    pub headers: HeaderMap,
    pub len: u64,
    pub sha256: String,
}

impl Hashed {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).and_then(|v| v.to_str().ok())
    }
}

#[derive(Default)]
struct Inner {
    seen: Mutex<Vec<Hashed>>,
    status: AtomicU16,
}

/// A destination that streams each request body through SHA-256 and answers `status`.
pub struct HashingSink {
    pub addr: SocketAddr,
    inner: Arc<Inner>,
    _stop: tokio::sync::oneshot::Sender<()>,
}

async fn hash(State(inner): State<Arc<Inner>>, headers: HeaderMap, body: Body) -> StatusCode {
    let mut ctx = ring::digest::Context::new(&ring::digest::SHA256);
    let mut len = 0u64;
    let mut stream = body.into_data_stream();
    while let Some(chunk) = stream.next().await {
        let Ok(chunk) = chunk else {
            return StatusCode::BAD_REQUEST;
        };
        len += chunk.len() as u64;
        ctx.update(&chunk);
    }
    inner.seen.lock().unwrap().push(Hashed {
        headers,
        len,
        sha256: vrsky_actors::payload::sha256_hex(ctx.finish().as_ref()),
    });
    StatusCode::from_u16(inner.status.load(Ordering::SeqCst)).unwrap()
}

impl HashingSink {
    pub async fn start() -> HashingSink {
        let inner = Arc::new(Inner {
            status: AtomicU16::new(200),
            ..Inner::default()
        });
        let app = axum::Router::new().fallback(hash).with_state(inner.clone());
        let (addr, tx) = super::serve(app).await;
        HashingSink { addr, inner, _stop: tx }
    }

    pub fn url(&self) -> String {
        format!("http://{}/in", self.addr)
    }

    pub fn set_status(&self, status: u16) {
        self.inner.status.store(status, Ordering::SeqCst);
    }

    pub fn seen(&self) -> Vec<Hashed> {
        self.inner.seen.lock().unwrap().clone()
    }

    /// Requests for one message id.
    pub fn for_message(&self, id: &str) -> Vec<Hashed> {
        self.seen()
            .into_iter()
            .filter(|h| h.header("x-vrsky-message-id") == Some(id))
            .collect()
    }
}
