//! Requests for a tenant another node owns go to that node: the REST (and so gRPC)
//! operations under `/api/tenants/{t}/...`. Webhooks are not forwarded: any node stores
//! them and publishes them on the tenant's NATS (`cluster/ingress.rs`); only a node
//! without those routes (none is set) forwards them too. A request for a tenant changing owner (a
//! fail-over, a hand-over) waits here, up to `cluster.forward_wait_ms`, for the new one,
//! and is retried when the node it went to no longer holds the tenant. A new tenant
//! (`POST /api/tenants`) goes to the least-loaded live node.
//!
//! A forwarded request carries `x-vrsky-forwarded-by`; it is never forwarded again. A node
//! that receives one for a tenant it does not hold answers 503 with `x-vrsky-not-owner`,
//! which sends the forwarder back to its routing snapshot.

use std::time::Duration;

use axum::body::Body;
use axum::extract::{Request, State};
use axum::http::{HeaderValue, StatusCode, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use bytes::Bytes;
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;
use tracing::{debug, warn};

use vrsky_actors::TenantId;

use super::AppState;
use super::error::ApiError;
use crate::control::Placement;

/// Set on a request one node forwards to another (the sender's node id).
pub const FORWARDED_BY: &str = "x-vrsky-forwarded-by";
/// Set on the 503 of a node asked about a tenant it does not hold.
pub const NOT_OWNER: &str = "x-vrsky-not-owner";

/// Bodies up to this size are kept so that a forward can be retried; a larger one is sent
/// once, streamed.
const REPLAYABLE_MAX: u64 = 1 << 20;
/// Between two looks at the routing snapshot while a tenant has no owner.
const POLL: Duration = Duration::from_millis(100);

/// The HTTP client between nodes (plain HTTP/1.1, pooled).
pub type NodeClient = Client<HttpConnector, Body>;

/// A client for forwarding.
pub fn node_client() -> NodeClient {
    let mut connector = HttpConnector::new();
    connector.set_connect_timeout(Some(Duration::from_secs(1)));
    connector.set_nodelay(true);
    Client::builder(TokioExecutor::new())
        .pool_idle_timeout(Duration::from_secs(30))
        .build(connector)
}

/// What a path is about, for forwarding.
#[derive(Debug, PartialEq, Eq)]
enum Target {
    /// A tenant's webhook.
    Webhook(TenantId),
    /// One of a tenant's operations.
    Tenant(TenantId),
    /// `POST /api/tenants`.
    NewTenant,
}

fn target(method: &axum::http::Method, path: &str) -> Option<Target> {
    let mut parts = path.trim_start_matches('/').split('/');
    match (parts.next(), parts.next(), parts.next()) {
        (Some("webhooks"), Some(t), Some(_)) => TenantId::new(t).ok().map(Target::Webhook),
        (Some("api"), Some("tenants"), None | Some("")) if method == axum::http::Method::POST => {
            Some(Target::NewTenant)
        }
        (Some("api"), Some("tenants"), Some(t)) if !t.is_empty() => TenantId::new(t).ok().map(Target::Tenant),
        _ => None,
    }
}

/// The middleware.
pub async fn forward(State(s): State<AppState>, req: Request, next: Next) -> Response {
    let Some(cluster) = s.control.cluster().cloned() else {
        return next.run(req).await;
    };
    let Some(target) = target(req.method(), req.uri().path()) else {
        return next.run(req).await;
    };
    let forwarded = req.headers().contains_key(FORWARDED_BY);
    let directory = s.control.directory().clone();
    match target {
        Target::NewTenant => {
            let (node, url) = cluster.least_loaded();
            if forwarded || node == cluster.me {
                let resp = next.run(req).await;
                if resp.status() == StatusCode::CREATED {
                    cluster.note_placed(&cluster.me);
                }
                return resp;
            }
            // One try: if the chosen node does not answer, this one creates it.
            let (parts, body) = req.into_parts();
            let Ok(bytes) = axum::body::to_bytes(body, REPLAYABLE_MAX as usize).await else {
                return ApiError::new(StatusCode::PAYLOAD_TOO_LARGE, "too_large", "request body too large")
                    .into_response();
            };
            match send(&s, &cluster.me, &url, &parts, Body::from(bytes.clone())).await {
                Ok(resp) => {
                    if resp.status() == StatusCode::CREATED {
                        cluster.note_placed(&node);
                    }
                    resp
                }
                Err(SendError::Connect(e)) => {
                    warn!(node, error = %e, "least-loaded node not reached; creating the tenant here");
                    next.run(Request::from_parts(parts, Body::from(bytes))).await
                }
                Err(e @ SendError::Other(_)) => no_owner_new(&node, &e.to_string()),
            }
        }
        // Stored here and published on the tenant's NATS (`cluster/ingress.rs`): the
        // durable write never waits for the owner, nor for a fail-over.
        Target::Webhook(t) if !directory.keeps(&t) && directory.remote().is_some() => next.run(req).await,
        Target::Webhook(t) | Target::Tenant(t) => {
            if directory.holds(&t) {
                first_start(&directory, &t, cluster.forward_wait).await;
                return next.run(req).await;
            }
            match directory.placement(&t) {
                // Unknown to the cluster: the handler says 404 (or creates nothing).
                None => next.run(req).await,
                Some(_) if forwarded => not_owner(&t),
                Some(_) => relay(&s, &cluster, &t, req, next).await,
            }
        }
    }
}

/// Waits, up to `wait`, while a tenant this node holds is in its first start (just
/// claimed, taken over or created): a request in a fail-over is answered once the tenant
/// runs, not with a 503. A start that failed already (it has a reason) is not waited for.
async fn first_start(directory: &crate::control::Directory, t: &TenantId, wait: Duration) {
    let starting = || {
        directory
            .get(t)
            .is_some_and(|s| s.phase == crate::control::TenantPhase::Starting(None))
    };
    let deadline = tokio::time::Instant::now() + wait;
    while starting() && tokio::time::Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// The 503 a node gives for a forwarded request about a tenant it does not hold.
fn not_owner(t: &TenantId) -> Response {
    let mut r = retry_shortly(format!("this node does not hold tenant {t}; retry shortly"));
    r.headers_mut().insert(NOT_OWNER, HeaderValue::from_static("1"));
    r
}

/// A 503 with `Retry-After: 1`.
fn retry_shortly(message: String) -> Response {
    ApiError::new(StatusCode::SERVICE_UNAVAILABLE, "unavailable", message)
        .with_retry_after(1)
        .into_response()
}

fn replayable(req: &Request) -> bool {
    req.headers()
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok())
        .is_some_and(|n| n <= REPLAYABLE_MAX)
        || matches!(
            *req.method(),
            axum::http::Method::GET | axum::http::Method::DELETE | axum::http::Method::HEAD
        )
}

/// Forwards to the owner, waiting for one while the tenant changes hands; runs the
/// request here if this node becomes the owner meanwhile.
async fn relay(
    s: &AppState,
    cluster: &crate::cluster::ClusterHandle,
    t: &TenantId,
    req: Request,
    next: Next,
) -> Response {
    let directory = s.control.directory().clone();
    let deadline = tokio::time::Instant::now() + cluster.forward_wait;
    if !replayable(&req) {
        // Streamed once: to the owner if there is one now, else a 503 to retry.
        return match directory.placement(t) {
            Some(Placement::Elsewhere { url, .. }) => {
                let (parts, body) = req.into_parts();
                send(s, &cluster.me, &url, &parts, body)
                    .await
                    .unwrap_or_else(|e| no_owner(t, &e.to_string()))
            }
            _ if directory.holds(t) => next.run(req).await,
            _ => no_owner(t, "a fail-over or hand-over is in progress"),
        };
    }
    let (parts, body) = req.into_parts();
    let bytes: Bytes = match axum::body::to_bytes(body, REPLAYABLE_MAX as usize).await {
        Ok(b) => b,
        Err(e) => {
            return ApiError::new(StatusCode::BAD_REQUEST, "bad_request", format!("reading the body: {e}"))
                .into_response();
        }
    };
    let mut last = String::from("a fail-over or hand-over is in progress");
    loop {
        if directory.holds(t) {
            first_start(
                &directory,
                t,
                deadline.saturating_duration_since(tokio::time::Instant::now()),
            )
            .await;
            return next.run(Request::from_parts(parts, Body::from(bytes))).await;
        }
        if let Some(Placement::Elsewhere { node, url }) = directory.placement(t) {
            match send(s, &cluster.me, &url, &parts, Body::from(bytes.clone())).await {
                Ok(resp) if resp.headers().contains_key(NOT_OWNER) => {
                    last = format!("node {node} no longer holds it");
                }
                Ok(resp) => return resp,
                Err(SendError::Connect(e)) => {
                    debug!(tenant_id = %t, node, error = %e, "owner not reached; waiting for the lease to move");
                    last = format!("its owner {node} was not reached ({e})");
                }
                // It may have been acted on: the client decides whether to send it again.
                Err(e @ SendError::Other(_)) => {
                    warn!(tenant_id = %t, node, error = %e, "forwarded request got no answer");
                    return no_owner(t, &format!("its owner {node} did not answer ({e})"));
                }
            }
        }
        if tokio::time::Instant::now() + POLL > deadline {
            return no_owner(t, &last);
        }
        tokio::time::sleep(POLL).await;
    }
}

fn no_owner_new(node: &str, why: &str) -> Response {
    retry_shortly(format!(
        "node {node}, where the tenant was to be created, did not answer ({why}); look it up, then retry"
    ))
}

fn no_owner(t: &TenantId, why: &str) -> Response {
    retry_shortly(format!("tenant {t} is changing node ({why}); retry shortly"))
}

/// Longest a forwarded request waits for the owner's answer (the longest tenant call:
/// starting an instance may wait for a pod).
const ANSWER_WAIT: Duration = Duration::from_secs(120);

/// Why a forward failed.
#[derive(Debug)]
enum SendError {
    /// The owner was not reached: nothing was sent, so trying again is safe.
    Connect(String),
    /// Sent, with no answer: the owner may have acted on it, so it is not sent again.
    Other(String),
}

impl std::fmt::Display for SendError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            SendError::Connect(e) => write!(f, "not reached: {e}"),
            SendError::Other(e) => write!(f, "{e}"),
        }
    }
}

/// Whether a failed forward certainly never reached the owner's handler: no connection,
/// or a pooled connection found closed before the request went out.
fn not_sent(e: &hyper_util::client::legacy::Error) -> bool {
    if e.is_connect() {
        return true;
    }
    let mut source = std::error::Error::source(e);
    while let Some(s) = source {
        if let Some(h) = s.downcast_ref::<hyper::Error>() {
            return h.is_canceled();
        }
        source = s.source();
    }
    false
}

/// Headers that belong to one connection, not to the request.
fn hop_by_hop(name: &header::HeaderName) -> bool {
    matches!(
        name.as_str(),
        "host"
            | "connection"
            | "keep-alive"
            | "proxy-connection"
            | "proxy-authorization"
            | "te"
            | "trailer"
            | "transfer-encoding"
            | "upgrade"
    )
}

/// Sends a request to another node and streams its answer back.
async fn send(
    s: &AppState,
    me: &str,
    base: &str,
    parts: &axum::http::request::Parts,
    body: Body,
) -> Result<Response, SendError> {
    let path = parts.uri.path_and_query().map(|p| p.as_str()).unwrap_or("/");
    let uri: axum::http::Uri = format!("{base}{path}")
        .parse()
        .map_err(|e| SendError::Connect(format!("bad owner URL {base}: {e}")))?;
    let mut req = axum::http::Request::builder()
        .method(parts.method.clone())
        .uri(uri)
        .body(body)
        .map_err(|e| SendError::Connect(e.to_string()))?;
    for (k, v) in &parts.headers {
        if !hop_by_hop(k) {
            req.headers_mut().append(k.clone(), v.clone());
        }
    }
    if let Ok(v) = HeaderValue::from_str(me) {
        req.headers_mut().insert(FORWARDED_BY, v);
    }
    let resp = match tokio::time::timeout(ANSWER_WAIT, s.forwarder.request(req)).await {
        Ok(Ok(r)) => r,
        Ok(Err(e)) if not_sent(&e) => return Err(SendError::Connect(e.to_string())),
        Ok(Err(e)) => return Err(SendError::Other(e.to_string())),
        Err(_) => {
            return Err(SendError::Other(format!(
                "no answer within {} s",
                ANSWER_WAIT.as_secs()
            )));
        }
    };
    let (parts, body) = resp.into_parts();
    Ok(Response::from_parts(parts, Body::new(body)))
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use axum::http::Method;

    #[test]
    fn only_tenant_paths_and_tenant_creation_are_forwarded() {
        let t = |s: &str| Some(Target::Tenant(TenantId::new(s).unwrap()));
        assert_eq!(
            target(&Method::POST, "/webhooks/acme/hook"),
            Some(Target::Webhook(TenantId::new("acme").unwrap()))
        );
        assert_eq!(target(&Method::GET, "/api/tenants/acme"), t("acme"));
        assert_eq!(target(&Method::DELETE, "/api/tenants/acme/integrations/x"), t("acme"));
        assert_eq!(target(&Method::POST, "/api/tenants"), Some(Target::NewTenant));
        assert_eq!(target(&Method::GET, "/api/tenants"), None);
        assert_eq!(target(&Method::GET, "/api/cluster"), None);
        assert_eq!(target(&Method::GET, "/readyz"), None);
        assert_eq!(target(&Method::POST, "/webhooks/acme"), None);
        // Not an id: the handler's own 404.
        assert_eq!(target(&Method::GET, "/api/tenants/a%20b"), None);
    }
}
