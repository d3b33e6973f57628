//! The HTTP server's accept loop and its limits against slow and numerous clients:
//! - a connection that does not send a request's headers within
//!   `http.header_read_timeout_ms` is closed (hyper's header timer, which also runs while
//!   a keep-alive connection waits for its next request, so an idle one is closed too);
//! - a request body not received within `http.body_read_timeout_ms` of its headers fails
//!   to read ([`BodyTimeout`]): handlers answer 408 and close the connection;
//! - at most `http.max_connections` connections are served at once; past it the loop
//!   stops accepting and new ones wait in the kernel's backlog.
//!
//! `axum::serve` has none of these, so a half-sent request held a socket forever.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use axum::Router;
use axum::body::{Body, Bytes};
use axum::extract::{FromRequest, Request};
use axum::http::StatusCode;
use http_body::{Frame, SizeHint};
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::service::TowerToHyperService;
use tokio::net::TcpListener;
use tokio::sync::{Semaphore, watch};
use tokio::time::{Instant, Sleep};
use tracing::{debug, warn};

use super::error::ApiError;

/// The server's limits (from [`crate::config::HttpConfig`]).
#[derive(Debug, Clone, Copy)]
pub struct ServeLimits {
    /// Time to send a request's headers.
    pub header_read_timeout: Duration,
    /// Time to send a request's body, from its headers.
    pub body_read_timeout: Duration,
    /// Connections served at once.
    pub max_connections: usize,
}

/// A request body that was not received in time.
#[derive(Debug, Clone, Copy, thiserror::Error)]
#[error("the request body was not received within {} ms (http.body_read_timeout_ms)", .0.as_millis())]
pub struct BodyTimeout(pub Duration);

/// A body that fails with [`BodyTimeout`] once its deadline passes. The timer is armed
/// only when the body is not already there (the common webhook arrives with its
/// headers, and costs no timer).
struct DeadlineBody {
    inner: Body,
    deadline: Instant,
    after: Duration,
    sleep: Option<Pin<Box<Sleep>>>,
}

impl http_body::Body for DeadlineBody {
    type Data = Bytes;
    type Error = axum::Error;

    fn poll_frame(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, axum::Error>>> {
        let this = &mut *self;
        match Pin::new(&mut this.inner).poll_frame(cx) {
            Poll::Ready(frame) => Poll::Ready(frame),
            Poll::Pending => {
                let deadline = this.deadline;
                let sleep = this
                    .sleep
                    .get_or_insert_with(|| Box::pin(tokio::time::sleep_until(deadline)));
                match sleep.as_mut().poll(cx) {
                    Poll::Ready(()) => Poll::Ready(Some(Err(axum::Error::new(BodyTimeout(this.after))))),
                    Poll::Pending => Poll::Pending,
                }
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

/// Gives every request body a deadline `after` from now.
fn with_deadline(req: Request, after: Duration) -> Request {
    let deadline = Instant::now() + after;
    req.map(|inner| {
        Body::new(DeadlineBody {
            inner,
            deadline,
            after,
            sleep: None,
        })
    })
}

/// Whether an error (or one of its causes) is a [`BodyTimeout`].
pub fn is_body_timeout(e: &(dyn std::error::Error + 'static)) -> bool {
    let mut cur = Some(e);
    while let Some(err) = cur {
        if err.is::<BodyTimeout>() {
            return true;
        }
        cur = err.source();
    }
    false
}

/// The answer to a body that could not be read: 408 when it was too slow, else 400.
/// Either way the connection is closed (the body was not read to its end).
pub fn body_error(e: &axum::Error) -> ApiError {
    if is_body_timeout(e) {
        ApiError::new(StatusCode::REQUEST_TIMEOUT, "request_timeout", e.to_string()).closing()
    } else {
        ApiError::new(StatusCode::BAD_REQUEST, "bad_body", format!("cannot read body: {e}")).closing()
    }
}

/// Largest API request body (specs and filters, not payloads).
const API_BODY_MAX: usize = 1024 * 1024;

/// An API request's body, read within its deadline and size, errors in the API's shape
/// (axum's own `Bytes` extractor answers in plain text).
pub(crate) struct ApiBody(pub Bytes);

impl<S: Send + Sync> FromRequest<S> for ApiBody {
    type Rejection = ApiError;

    async fn from_request(req: Request, _: &S) -> Result<Self, ApiError> {
        use http_body_util::BodyExt;
        let limited = http_body_util::Limited::new(req.into_body(), API_BODY_MAX);
        match limited.collect().await {
            Ok(c) => Ok(ApiBody(c.to_bytes())),
            Err(e) if e.is::<http_body_util::LengthLimitError>() => Err(ApiError::new(
                StatusCode::PAYLOAD_TOO_LARGE,
                "payload_too_large",
                format!("request body exceeds {API_BODY_MAX} bytes"),
            )
            .closing()),
            Err(e) => Err(body_error(&axum::Error::new(e))),
        }
    }
}

/// Serves `app` on `listener` with `limits` until `stop` resolves, then lets open
/// connections finish their requests (graceful shutdown).
pub async fn serve(listener: TcpListener, app: Router, limits: ServeLimits, stop: impl Future<Output = ()>) {
    let after = limits.body_read_timeout;
    let app = app.layer(axum::middleware::map_request(move |req: Request| async move {
        with_deadline(req, after)
    }));
    let permits = Arc::new(Semaphore::new(limits.max_connections));
    let (closing_tx, closing_rx) = watch::channel(false);
    let mut connections = tokio::task::JoinSet::new();
    tokio::pin!(stop);
    loop {
        // At the cap, stop accepting: new connections wait in the backlog.
        let permit = tokio::select! {
            () = &mut stop => break,
            p = permits.clone().acquire_owned() => match p {
                Ok(p) => p,
                Err(_) => break,
            },
        };
        let stream = tokio::select! {
            () = &mut stop => break,
            accepted = listener.accept() => match accepted {
                Ok((stream, _)) => stream,
                Err(e) => {
                    // Out of file descriptors, for example: back off instead of spinning.
                    warn!(error = %e, "accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
        };
        let _ = stream.set_nodelay(true);
        let service = TowerToHyperService::new(app.clone());
        let mut closing = closing_rx.clone();
        let header_timeout = limits.header_read_timeout;
        connections.spawn(async move {
            let _permit = permit;
            let mut builder = hyper::server::conn::http1::Builder::new();
            builder.timer(TokioTimer::new()).header_read_timeout(header_timeout);
            let conn = builder.serve_connection(TokioIo::new(stream), service);
            tokio::pin!(conn);
            let result = tokio::select! {
                r = conn.as_mut() => r,
                _ = closing.changed() => {
                    conn.as_mut().graceful_shutdown();
                    conn.await
                }
            };
            if let Err(e) = result {
                debug!(error = %e, "http connection ended");
            }
        });
        while connections.try_join_next().is_some() {}
    }
    let _ = closing_tx.send(true);
    while connections.join_next().await.is_some() {}
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use http_body_util::BodyExt;

    #[tokio::test(start_paused = true)]
    async fn a_body_that_stalls_fails_at_its_deadline_and_a_ready_one_costs_no_timer() {
        use futures::StreamExt;
        // Half a body, then nothing more.
        let half = futures::stream::iter([Ok::<_, std::io::Error>(Bytes::from_static(b"half"))])
            .chain(futures::stream::pending());
        let req = with_deadline(Request::new(Body::from_stream(half)), Duration::from_secs(30));
        let read = tokio::spawn(async move { req.into_body().collect().await });
        tokio::time::sleep(Duration::from_secs(29)).await;
        assert!(!read.is_finished(), "failed before its deadline");
        tokio::time::sleep(Duration::from_secs(2)).await;
        let e = read.await.unwrap().unwrap_err();
        assert!(is_body_timeout(&e), "{e}");
        assert_eq!(body_error(&e).status, StatusCode::REQUEST_TIMEOUT);

        let req = with_deadline(Request::new(Body::from("whole")), Duration::from_secs(30));
        let got = req.into_body().collect().await.unwrap().to_bytes();
        assert_eq!(&got[..], b"whole");
    }
}
