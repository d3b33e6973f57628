//! The HTTP server: REST API under `/api` (bearer token), webhook ingress, health.

mod api;
mod api_keys;
mod audit;
pub mod auth;
mod claim_check;
mod echo;
pub mod error;
pub mod forward;
pub mod metrics;
pub mod metrics_tenant_nats;
pub mod openapi;
pub mod serve;
pub mod views;
mod webhook;

use std::sync::Arc;

use axum::Router;
use axum::extract::State;
use axum::http::Method;
use axum::http::StatusCode;
use axum::response::IntoResponse;
use axum::routing::{MethodRouter, delete, get, post};

use crate::control::Control;

/// Shared by every handler.
#[derive(Clone)]
pub struct AppState {
    /// The control layer.
    pub control: Arc<Control>,
    /// Bearer token for `/api`; `None` refuses every API call.
    pub admin_token: Option<Arc<str>>,
    /// Webhook body limit.
    pub body_bytes_max: usize,
    /// Most unfinished messages per integration before webhooks get 429.
    pub unfinished_max: usize,
    /// How long a 429 refusal waits before it is answered.
    pub refusal_delay: std::time::Duration,
    /// Platform NATS connection, for readiness.
    pub platform: async_nats::Client,
    /// The platform JetStream's `sync_interval` (the loss window on machine failure).
    pub platform_sync: Arc<str>,
    /// How many failed API authentications are audited one by one.
    pub failed_auth_budget: Arc<crate::audit_budget::FailureBudget>,
    /// The object store of claim-checked payloads, when one is configured.
    pub objects: Option<Arc<crate::objects::Objects>>,
    /// Forwards requests for tenants other nodes own.
    pub forwarder: forward::NodeClient,
}

/// Every operation of the REST API under `/api`: its method, its route, and its handler.
/// The router is built from this list, and the gRPC gateway's completeness test reads it,
/// so an operation cannot be added to one and forgotten in the other.
pub fn api_routes() -> Vec<(Method, &'static str, MethodRouter<AppState>)> {
    use axum::routing::put;
    vec![
        (Method::POST, "/tenants", post(api::create_tenant)),
        (Method::GET, "/tenants", get(api::list_tenants)),
        (Method::GET, "/tenants/{t}", get(api::get_tenant)),
        (Method::DELETE, "/tenants/{t}", delete(api::delete_tenant)),
        (Method::POST, "/tenants/{t}/integrations", post(api::create_integration)),
        (Method::GET, "/tenants/{t}/integrations", get(api::list_integrations)),
        (Method::GET, "/tenants/{t}/integrations/{i}", get(api::get_integration)),
        (
            Method::PUT,
            "/tenants/{t}/integrations/{i}",
            put(api::update_integration),
        ),
        (
            Method::DELETE,
            "/tenants/{t}/integrations/{i}",
            delete(api::delete_integration),
        ),
        (
            Method::GET,
            "/tenants/{t}/integrations/{i}/messages",
            get(api::list_messages),
        ),
        (Method::GET, "/tenants/{t}/nats-instances", get(api::nats_instances)),
        (
            Method::POST,
            "/tenants/{t}/nats-instances",
            post(api::add_nats_instance),
        ),
        (
            Method::DELETE,
            "/tenants/{t}/nats-instances/{n}",
            delete(api::remove_nats_instance),
        ),
        (
            Method::POST,
            "/tenants/{t}/nats-instances/{n}/drain",
            post(api::drain_nats_instance),
        ),
        (Method::GET, "/tenants/{t}/stats", get(api::tenant_stats)),
        (Method::GET, "/tenants/{t}/messages/{id}", get(api::get_message)),
        (Method::GET, "/tenants/{t}/dead-letters", get(api::list_dead_letters)),
        (
            Method::POST,
            "/tenants/{t}/dead-letters/retry",
            post(api::retry_dead_letters),
        ),
        (Method::GET, "/tenants/{t}/dead-letters/{id}", get(api::get_dead_letter)),
        (
            Method::DELETE,
            "/tenants/{t}/dead-letters/{id}",
            delete(api::delete_dead_letter),
        ),
        (
            Method::POST,
            "/tenants/{t}/dead-letters/{id}/retry",
            post(api::retry_dead_letter),
        ),
        (Method::POST, "/tenants/{t}/api-keys", post(api_keys::create)),
        (Method::GET, "/tenants/{t}/api-keys", get(api_keys::list)),
        (Method::DELETE, "/tenants/{t}/api-keys/{id}", delete(api_keys::revoke)),
        (
            Method::POST,
            "/tenants/{t}/credentials/rotate",
            post(api::rotate_credentials),
        ),
        (Method::GET, "/tree", get(api::tree)),
        (Method::GET, "/cluster", get(api::cluster)),
        (Method::GET, "/audit", get(audit::list)),
    ]
}

/// Builds the router. `dev_sink` mounts `/dev/echo`, the built-in echo sink of `vrsky dev`
/// (`POST` records, `GET` lists the last 100 requests).
pub fn router(state: AppState, dev_sink: bool) -> Router {
    // One method router per route, merged from the operations on it.
    let mut routes: Vec<(&'static str, MethodRouter<AppState>)> = Vec::new();
    for (_, path, handler) in api_routes() {
        match routes.iter().position(|(p, _)| *p == path) {
            Some(i) => {
                let (p, merged) = routes.swap_remove(i);
                routes.push((p, merged.merge(handler)));
            }
            None => routes.push((path, handler)),
        }
    }
    let api = routes
        .into_iter()
        .fold(Router::new(), |r, (path, handler)| r.route(path, handler))
        // Outermost first: authenticate, then record the change with its outcome.
        .route_layer(axum::middleware::from_fn_with_state(state.clone(), audit::record))
        .route_layer(axum::middleware::from_fn_with_state(state.clone(), auth::authenticate))
        // Added after the layers, so it needs no token.
        .route("/openapi.json", get(openapi::serve));
    let mut app = Router::new()
        .nest("/api", api)
        .route("/webhooks/{t}/{i}", post(webhook::receive))
        .route("/objects/{*key}", get(claim_check::get_object))
        .route("/metrics", get(metrics::metrics))
        .route("/healthz", get(healthz))
        .route("/readyz", get(readyz));
    if dev_sink {
        let sink = std::sync::Arc::new(echo::EchoSink::default());
        app = app.route(
            "/dev/echo",
            post({
                let sink = sink.clone();
                move |headers, body| echo::receive(sink, headers, body)
            })
            .get(move || echo::recent(sink)),
        );
    }
    // Outermost: a tenant another node owns is that node's to answer (authenticated and
    // audited there).
    let app = app.layer(axum::middleware::from_fn_with_state(state.clone(), forward::forward));
    // Every answer of the router itself has the API's error shape too.
    app.fallback(
        |uri: axum::http::Uri| async move { error::ApiError::not_found(format!("no such route: {}", uri.path())) },
    )
    .method_not_allowed_fallback(|method: axum::http::Method, uri: axum::http::Uri| async move {
        error::ApiError::new(
            StatusCode::METHOD_NOT_ALLOWED,
            "method_not_allowed",
            format!("{method} is not allowed on {}", uri.path()),
        )
    })
    .with_state(state)
}

async fn healthz() -> impl IntoResponse {
    axum::Json(serde_json::json!({"status": "ok"}))
}

/// What `/readyz` and gRPC health read: the metadata store, the platform NATS and every
/// tenant's NATS.
pub(crate) struct Readiness {
    /// The metadata store's ping, or why it failed.
    pub database: Result<(), String>,
    /// Whether the platform NATS connection is up.
    pub platform_nats_connected: bool,
    /// Each tenant's NATS connections.
    pub tenants: Vec<views::TenantReadiness>,
    /// The node is handing its tenants over and stopping.
    pub draining: bool,
}

impl Readiness {
    /// Reads it now.
    pub(crate) async fn check(control: &Control, platform: &async_nats::Client) -> Readiness {
        Readiness {
            database: control.db().ping().await.map_err(|e| e.to_string()),
            platform_nats_connected: platform.connection_state() == async_nats::connection::State::Connected,
            tenants: views::readiness(control.directory()),
            draining: control.cluster().is_some_and(|c| c.draining()),
        }
    }

    /// Whether everything answers.
    pub(crate) fn ready(&self) -> bool {
        !self.draining
            && self.database.is_ok()
            && self.platform_nats_connected
            && self.tenants.iter().all(|t| t.nats_connected)
    }
}

/// 200 when the metadata store, the platform NATS and every tenant's NATS answer.
async fn readyz(State(s): State<AppState>, headers: axum::http::HeaderMap) -> impl IntoResponse {
    let r = Readiness::check(&s.control, &s.platform).await;
    let ready = r.ready();
    let body = serde_json::json!({
        "ready": ready,
        "database": r.database.err().unwrap_or_else(|| "ok".into()),
        "platform_nats_connected": r.platform_nats_connected,
        "platform_sync_interval": &*s.platform_sync,
        "draining": r.draining,
        "tenants": r.tenants,
    });
    let status = if ready {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    // Without the admin token only up or down: tenant ids, ports and error texts are
    // the operator's.
    let header = headers
        .get(axum::http::header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok());
    if !auth::is_admin(header, s.admin_token.as_deref()) {
        return (status, axum::Json(serde_json::json!({"ready": ready})));
    }
    (status, axum::Json(body))
}
