//! The audit trail of the API: every change (a non-`GET` call under `/api`) and every
//! failed authentication is appended to `audit_log` and logged as a structured event
//! (`target: "vrsky::audit"`); `GET /api/audit` reads it (admin only).

use axum::Json;
use axum::extract::{MatchedPath, Query, Request, State};
use axum::http::{Method, StatusCode};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};

use super::AppState;
use super::auth::{Principal, path_tenant};
use super::error::ApiError;
use super::views::rfc3339;
use crate::db::{AuditEntry, AuditQuery};

/// The tenant a change concerns when its path does not name it (`POST /api/tenants`),
/// set by the handler on its response.
#[derive(Debug, Clone)]
pub(crate) struct AuditTenant(pub String);

/// The audit action of a call, from its method and route; `None` for reads.
pub(super) fn action(method: &Method, route: &str) -> Option<&'static str> {
    let r = route.strip_prefix("/api").unwrap_or(route);
    Some(match (method.as_str(), r) {
        ("GET" | "HEAD" | "OPTIONS", _) => return None,
        ("POST", "/tenants") => "tenant.create",
        ("DELETE", "/tenants/{t}") => "tenant.delete",
        ("POST", "/tenants/{t}/integrations") => "integration.create",
        ("PUT", "/tenants/{t}/integrations/{i}") => "integration.update",
        ("DELETE", "/tenants/{t}/integrations/{i}") => "integration.delete",
        ("POST", "/tenants/{t}/nats-instances") => "nats_instance.add",
        ("POST", "/tenants/{t}/nats-instances/{n}/drain") => "nats_instance.drain",
        ("DELETE", "/tenants/{t}/nats-instances/{n}") => "nats_instance.remove",
        ("POST", "/tenants/{t}/dead-letters/{id}/retry") => "dead_letter.replay",
        ("POST", "/tenants/{t}/dead-letters/retry") => "dead_letter.replay_matching",
        ("DELETE", "/tenants/{t}/dead-letters/{id}") => "dead_letter.delete",
        ("POST", "/tenants/{t}/api-keys") => "api_key.create",
        ("DELETE", "/tenants/{t}/api-keys/{id}") => "api_key.revoke",
        ("POST", "/tenants/{t}/credentials/rotate") => "credentials.rotate",
        _ => "api.change",
    })
}

/// The object a path acts on below its tenant (`/api/tenants/{t}/integrations/{i}`
/// gives `{i}`).
fn target(path: &str) -> Option<String> {
    let mut segments = super::auth::api_segments(path).skip(2);
    match (segments.next(), segments.next()) {
        // `/credentials/rotate` acts on the tenant itself.
        (Some("credentials"), _) => None,
        (_, object) => object.map(str::to_owned),
    }
}

fn now_ms() -> u64 {
    vrsky_actors::now_ms()
}

/// Appends an entry and logs it; a failed append is logged, never fails the call.
async fn append(state: &AppState, e: AuditEntry) {
    state.control.db().record_audit(&e).await;
}

/// Records a failed authentication (in the background: a flood of bad tokens must not
/// hold the answers up), within the node's budget (`audit_budget.rs`): past 20 a minute
/// the rest are counted and summed up in one entry.
pub(super) fn record_failed_auth(state: &AppState, method: &Method, path: &str, why: &str) {
    let summary = match state.failed_auth_budget.admit(now_ms()) {
        crate::audit_budget::Admit::Suppress => return,
        crate::audit_budget::Admit::Record => None,
        crate::audit_budget::Admit::RecordAfterSummary(n) => Some(AuditEntry {
            id: 0,
            at_ms: now_ms(),
            actor: "anonymous".into(),
            tenant_id: None,
            action: "auth.failed".into(),
            target: None,
            outcome: "denied: 401".into(),
            detail: Some(format!(
                "{n} more failed authentications not recorded in the last minute"
            )),
        }),
    };
    let entry = AuditEntry {
        id: 0,
        at_ms: now_ms(),
        actor: "anonymous".into(),
        tenant_id: path_tenant(path).map(str::to_owned),
        action: "auth.failed".into(),
        target: None,
        outcome: "denied: 401".into(),
        detail: Some(format!("{method} {path}: {why}")),
    };
    let state = state.clone();
    tokio::spawn(async move {
        if let Some(s) = summary {
            append(&state, s).await;
        }
        append(&state, entry).await
    });
}

/// Records each change made through the API, with its outcome.
pub(crate) async fn record(State(state): State<AppState>, req: Request, next: Next) -> Response {
    let route = req.extensions().get::<MatchedPath>().map(|m| m.as_str().to_owned());
    let Some(action) = route.as_deref().and_then(|r| action(req.method(), r)) else {
        return next.run(req).await;
    };
    let actor = req
        .extensions()
        .get::<Principal>()
        .map_or_else(|| "anonymous".to_owned(), Principal::actor);
    let path = req.uri().path().to_owned();
    let method = req.method().clone();
    let via = req.extensions().get::<crate::grpc::ViaRpc>().map(|v| v.0);
    let resp = next.run(req).await;
    let status = resp.status();
    let named = resp.extensions().get::<AuditTenant>().map(|a| a.0.clone());
    let entry = AuditEntry {
        id: 0,
        at_ms: now_ms(),
        actor,
        tenant_id: named.clone().or_else(|| path_tenant(&path).map(str::to_owned)),
        action: action.into(),
        target: target(&path).or(named),
        outcome: if status.is_success() {
            "ok".into()
        } else {
            format!("refused: {}", status.as_u16())
        },
        detail: Some(match via {
            Some(rpc) => format!("gRPC {rpc} ({method} {path})"),
            None => format!("{method} {path}"),
        }),
    };
    append(&state, entry).await;
    resp
}

/// `GET /api/audit?tenant=&since=&after=&limit=`: in log order; `since` is RFC 3339,
/// `after` the previous page's `next_cursor`, `limit` 1 to 1,000 (100).
pub(crate) async fn list(
    State(s): State<AppState>,
    Query(q): Query<std::collections::HashMap<String, String>>,
) -> Result<impl IntoResponse, ApiError> {
    let bad = |m: String| ApiError::new(StatusCode::BAD_REQUEST, "invalid_query", m);
    if let Some(k) = q
        .keys()
        .find(|k| !["tenant", "since", "after", "limit"].contains(&k.as_str()))
    {
        return Err(bad(format!(
            "unknown parameter {k:?} (expected tenant, since, after, limit)"
        )));
    }
    let since_ms = match q.get("since") {
        None => None,
        Some(v) => {
            let at = time::OffsetDateTime::parse(v, &time::format_description::well_known::Rfc3339)
                .map_err(|e| bad(format!("since must be RFC 3339 (2026-12-01T00:00:00Z): {e}")))?;
            Some(u64::try_from(at.unix_timestamp_nanos() / 1_000_000).unwrap_or(0))
        }
    };
    let limit = match q.get("limit") {
        None => 100,
        Some(v) => v
            .parse::<usize>()
            .ok()
            .filter(|n| (1..=1000).contains(n))
            .ok_or_else(|| bad("limit must be 1 to 1000".into()))?,
    };
    let after_id = match q.get("after") {
        None => None,
        Some(v) => Some(
            v.parse::<i64>()
                .map_err(|_| bad("after must be a value from next_cursor".into()))?,
        ),
    };
    let entries = s
        .control
        .db()
        .audit(&AuditQuery {
            tenant_id: q.get("tenant").cloned(),
            since_ms,
            after_id,
            limit,
        })
        .await
        .map_err(|e| {
            ApiError::new(StatusCode::SERVICE_UNAVAILABLE, "unavailable", e.to_string()).with_retry_after(1)
        })?;
    let next = (entries.len() == limit).then(|| entries.last().map(|e| e.id)).flatten();
    let entries: Vec<serde_json::Value> = entries
        .iter()
        .map(|e| {
            serde_json::json!({
                "id": e.id, "at": rfc3339(e.at_ms), "actor": e.actor, "tenant_id": e.tenant_id,
                "action": e.action, "target": e.target, "outcome": e.outcome, "detail": e.detail,
            })
        })
        .collect();
    Ok(Json(serde_json::json!({"entries": entries, "next_cursor": next})))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn changes_have_actions_and_reads_none() {
        assert_eq!(action(&Method::GET, "/api/tenants/{t}"), None);
        assert_eq!(action(&Method::POST, "/api/tenants"), Some("tenant.create"));
        assert_eq!(
            action(&Method::PUT, "/api/tenants/{t}/integrations/{i}"),
            Some("integration.update")
        );
        assert_eq!(
            action(&Method::POST, "/api/tenants/{t}/dead-letters/{id}/retry"),
            Some("dead_letter.replay")
        );
        assert_eq!(
            action(&Method::DELETE, "/api/tenants/{t}/api-keys/{id}"),
            Some("api_key.revoke")
        );
        assert_eq!(target("/api/tenants/acme/integrations/orders"), Some("orders".into()));
        assert_eq!(target("/api/tenants/acme"), None);
        assert_eq!(target("/api/tenants/acme/credentials/rotate"), None);
    }
}
