//! A real HTTP sink on loopback that records every request it receives.

#![allow(dead_code, clippy::unwrap_used, clippy::expect_used)]

use std::net::SocketAddr;
use std::sync::atomic::{AtomicU16, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::Router;
use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode, Uri};
use tokio::sync::{Notify, oneshot};

/// One request as the sink saw it.
#[derive(Debug, Clone)]
pub struct Received {
    pub path: String,
    pub headers: HeaderMap,
    pub body: Bytes,
    pub at: tokio::time::Instant,
}

impl Received {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).and_then(|v| v.to_str().ok())
    }
}

/// Scripted answers: the first `n` requests of each message id get `status`.
#[derive(Debug, Clone, Default)]
pub struct FailFirst {
    pub n: usize,
    pub status: u16,
    pub retry_after: Option<&'static str>,
    pub location: Option<String>,
}

#[derive(Default)]
struct Inner {
    received: Mutex<Vec<Received>>,
    notify: Notify,
    status: AtomicU16,
    fail_first: Mutex<Option<FailFirst>>,
    seen: Mutex<std::collections::HashMap<String, usize>>,
}

/// The sink; stops when dropped or on `stop`.
pub struct Sink {
    pub addr: SocketAddr,
    inner: Arc<Inner>,
    stop: Option<oneshot::Sender<()>>,
}

async fn record(
    State(inner): State<Arc<Inner>>,
    uri: Uri,
    headers: HeaderMap,
    body: Bytes,
) -> axum::response::Response {
    use axum::response::IntoResponse;
    let id = headers
        .get("x-vrsky-message-id")
        .and_then(|v| v.to_str().ok())
        .unwrap_or("")
        .to_owned();
    inner.received.lock().unwrap().push(Received {
        path: uri.path().to_owned(),
        headers,
        body,
        at: tokio::time::Instant::now(),
    });
    let nth = {
        let mut seen = inner.seen.lock().unwrap();
        let c = seen.entry(id).or_default();
        *c += 1;
        *c
    };
    let script = inner.fail_first.lock().unwrap().clone();
    let resp = match script {
        Some(f) if nth <= f.n => {
            let mut r = StatusCode::from_u16(f.status).unwrap().into_response();
            if let Some(ra) = f.retry_after {
                r.headers_mut().insert("retry-after", ra.parse().unwrap());
            }
            if let Some(loc) = f.location {
                r.headers_mut().insert("location", loc.parse().unwrap());
            }
            r
        }
        _ => StatusCode::from_u16(inner.status.load(Ordering::SeqCst))
            .unwrap()
            .into_response(),
    };
    inner.notify.notify_waiters();
    resp
}

impl Sink {
    pub async fn start() -> Sink {
        let inner = Arc::new(Inner {
            status: AtomicU16::new(200),
            ..Inner::default()
        });
        let app = Router::new().fallback(record).with_state(inner.clone());
        let (addr, tx) = super::serve(app).await;
        Sink {
            addr,
            inner,
            stop: Some(tx),
        }
    }

    pub fn url(&self, path: &str) -> String {
        format!("http://{}{}", self.addr, path)
    }

    /// The status every request is answered with from now on.
    pub fn set_status(&self, status: u16) {
        self.inner.status.store(status, Ordering::SeqCst);
    }

    /// Scripts the first answers to each message (by `x-vrsky-message-id`).
    pub fn fail_first(&self, f: FailFirst) {
        *self.inner.fail_first.lock().unwrap() = Some(f);
    }

    /// Requests carrying this message id, in arrival order.
    pub fn for_message(&self, id: &str) -> Vec<Received> {
        self.received()
            .into_iter()
            .filter(|r| r.header("x-vrsky-message-id") == Some(id))
            .collect()
    }

    /// Distinct message ids received on `path`, with how often each arrived.
    pub fn ids(&self, path: &str) -> std::collections::HashMap<String, usize> {
        let mut m = std::collections::HashMap::new();
        for r in self.received().iter().filter(|r| r.path == path) {
            if let Some(id) = r.header("x-vrsky-message-id") {
                *m.entry(id.to_owned()).or_default() += 1;
            }
        }
        m
    }

    pub fn received(&self) -> Vec<Received> {
        self.inner.received.lock().unwrap().clone()
    }

    pub fn count(&self, path: &str) -> usize {
        self.inner
            .received
            .lock()
            .unwrap()
            .iter()
            .filter(|r| r.path == path)
            .count()
    }

    /// Waits until at least `n` requests arrived on `path`; panics after `timeout`.
    pub async fn wait_for(&self, path: &str, n: usize, timeout: Duration) {
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            let notified = self.inner.notify.notified();
            let have = self.count(path);
            if have >= n {
                return;
            }
            if tokio::time::timeout_at(deadline, notified).await.is_err() {
                panic!(
                    "sink got {} of {n} requests on {path} within {timeout:?}",
                    self.count(path)
                );
            }
        }
    }

    pub fn stop(mut self) {
        if let Some(tx) = self.stop.take() {
            let _ = tx.send(());
        }
    }
}

impl Drop for Sink {
    fn drop(&mut self) {
        if let Some(tx) = self.stop.take() {
            let _ = tx.send(());
        }
    }
}
