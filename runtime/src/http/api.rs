//! REST handlers under `/api`.

use axum::Json;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::IntoResponse;
use serde::Deserialize;

use vrsky_actors::components::IntegrationSpec;
use vrsky_actors::{IntegrationId, TenantId};

use super::AppState;
use super::error::ApiError;
use super::serve::ApiBody;
use super::views::{
    DeadLetterSummaryView, DeadLetterView, InstanceView, IntegrationView, MessageView, TenantStatsView,
};

/// Parses a path id; an id that cannot exist is answered like a missing one.
pub(super) fn tenant_id(s: &str) -> Result<TenantId, ApiError> {
    TenantId::new(s).map_err(|e| ApiError::not_found(format!("tenant {s:?} not found ({e})")))
}

fn integration_id(s: &str) -> Result<IntegrationId, ApiError> {
    IntegrationId::new(s).map_err(|e| ApiError::not_found(format!("integration {s:?} not found ({e})")))
}

/// `POST /api/tenants` body.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct CreateTenant {
    id: String,
    name: String,
}

/// A tenant as the API shows it; `owner` is the node whose actors run it (its lease
/// holder), `null` while none does.
fn tenant_json(s: &AppState, row: crate::db::TenantRow) -> serde_json::Value {
    let owner = s.control.cluster().and_then(|c| {
        if s.control.directory().holds(&row.id) {
            Some(c.me.clone())
        } else {
            c.owner(&row.id)
        }
    });
    serde_json::json!({"id": row.id, "name": row.name, "created_at": row.created_at, "owner": owner})
}

/// `POST /api/tenants` -> 201.
pub(crate) async fn create_tenant(
    State(s): State<AppState>,
    ApiBody(body): ApiBody,
) -> Result<impl IntoResponse, ApiError> {
    let req: CreateTenant = serde_json::from_slice(&body).map_err(ApiError::bad_json)?;
    let id =
        TenantId::new(&req.id).map_err(|e| ApiError::new(StatusCode::BAD_REQUEST, "invalid", format!("id: {e}")))?;
    // The audit names the tenant the body asked for, refused or not.
    let audit = super::audit::AuditTenant(id.as_str().to_owned());
    let row = match s.control.create_tenant(&id, &req.name).await {
        Ok(row) => row,
        Err(e) => {
            let mut resp = ApiError::from(e).into_response();
            resp.extensions_mut().insert(audit);
            return Ok(resp);
        }
    };
    let mut resp = (StatusCode::CREATED, Json(tenant_json(&s, row))).into_response();
    resp.extensions_mut().insert(audit);
    Ok(resp)
}

/// `GET /api/tenants`.
pub(crate) async fn list_tenants(State(s): State<AppState>) -> Result<impl IntoResponse, ApiError> {
    let rows = s.control.tenants().await?;
    Ok(Json(
        serde_json::json!({"tenants": rows.into_iter().map(|r| tenant_json(&s, r)).collect::<Vec<_>>()}),
    ))
}

/// `GET /api/tenants/{t}`.
pub(crate) async fn get_tenant(
    State(s): State<AppState>,
    Path(t): Path<String>,
) -> Result<impl IntoResponse, ApiError> {
    let row = s.control.tenant(&tenant_id(&t)?).await?;
    Ok(Json(tenant_json(&s, row)))
}

/// `DELETE /api/tenants/{t}` -> 204.
pub(crate) async fn delete_tenant(
    State(s): State<AppState>,
    Path(t): Path<String>,
) -> Result<impl IntoResponse, ApiError> {
    s.control.delete_tenant(&tenant_id(&t)?).await?;
    Ok(StatusCode::NO_CONTENT)
}

/// `POST /api/tenants/{t}/integrations` -> 201 with `webhook_path`.
pub(crate) async fn create_integration(
    State(s): State<AppState>,
    Path(t): Path<String>,
    ApiBody(body): ApiBody,
) -> Result<impl IntoResponse, ApiError> {
    let t = tenant_id(&t)?;
    // The tenant is checked before the body so an unknown tenant is a 404 whatever the body.
    s.control.tenant(&t).await?;
    let spec: IntegrationSpec = serde_json::from_slice(&body).map_err(ApiError::bad_json)?;
    let info = s.control.create_integration(&t, spec).await?;
    Ok((StatusCode::CREATED, Json(IntegrationView::from(info))))
}

/// `GET /api/tenants/{t}/integrations`.
pub(crate) async fn list_integrations(
    State(s): State<AppState>,
    Path(t): Path<String>,
) -> Result<impl IntoResponse, ApiError> {
    let list: Vec<IntegrationView> = s
        .control
        .integrations(&tenant_id(&t)?)
        .await?
        .into_iter()
        .map(IntegrationView::from)
        .collect();
    Ok(Json(serde_json::json!({"integrations": list})))
}

/// `GET /api/tenants/{t}/integrations/{i}`.
pub(crate) async fn get_integration(
    State(s): State<AppState>,
    Path((t, i)): Path<(String, String)>,
) -> Result<impl IntoResponse, ApiError> {
    let info = s.control.integration(&tenant_id(&t)?, &integration_id(&i)?).await?;
    Ok(Json(IntegrationView::from(info)))
}

/// `PUT /api/tenants/{t}/integrations/{i}`: the whole new spec; its `id` must be the
/// path's. Messages already accepted are delivered by the new spec.
pub(crate) async fn update_integration(
    State(s): State<AppState>,
    Path((t, i)): Path<(String, String)>,
    ApiBody(body): ApiBody,
) -> Result<impl IntoResponse, ApiError> {
    let t = tenant_id(&t)?;
    let i = integration_id(&i)?;
    s.control.integration(&t, &i).await?;
    let spec: IntegrationSpec = serde_json::from_slice(&body).map_err(ApiError::bad_json)?;
    if spec.id != i {
        return Err(ApiError::new(
            StatusCode::BAD_REQUEST,
            "invalid",
            format!(
                "id: {:?} in the body differs from {:?} in the path; an integration's id cannot change",
                spec.id.as_str(),
                i.as_str()
            ),
        ));
    }
    let info = s.control.update_integration(&t, spec).await?;
    Ok(Json(IntegrationView::from(info)))
}

/// `DELETE /api/tenants/{t}/integrations/{i}` -> 204.
pub(crate) async fn delete_integration(
    State(s): State<AppState>,
    Path((t, i)): Path<(String, String)>,
) -> Result<impl IntoResponse, ApiError> {
    s.control
        .delete_integration(&tenant_id(&t)?, &integration_id(&i)?)
        .await?;
    Ok(StatusCode::NO_CONTENT)
}

/// `GET /api/tenants/{t}/nats-instances`: the specification's shape; only instances that
/// are healthy and connected from this node (discovery).
pub(crate) async fn nats_instances(
    State(s): State<AppState>,
    Path(t): Path<String>,
) -> Result<impl IntoResponse, ApiError> {
    let t = tenant_id(&t)?;
    let list: Vec<InstanceView> = s
        .control
        .instances(&t)
        .await?
        .iter()
        .filter(|i| i.usable)
        .map(InstanceView::from)
        .collect();
    Ok(Json(serde_json::json!({"tenant_id": t, "nats_instances": list})))
}

/// Parses an instance number from the path; one that cannot exist is answered like a
/// missing one.
fn instance_number(t: &TenantId, s: &str) -> Result<u32, ApiError> {
    s.parse::<u32>().ok().filter(|n| *n > 0).ok_or_else(|| {
        ApiError::not_found(format!(
            "nats instance {s:?} not found in tenant {t} (instances are numbered from 1)"
        ))
    })
}

/// `POST /api/tenants/{t}/nats-instances/{n}/drain`: the instance takes no new messages;
/// the workers empty it. 409 for the last active instance.
pub(crate) async fn drain_nats_instance(
    State(s): State<AppState>,
    Path((t, n)): Path<(String, String)>,
) -> Result<impl IntoResponse, ApiError> {
    let t = tenant_id(&t)?;
    let n = instance_number(&t, &n)?;
    let info = s.control.drain_instance(&t, n).await?;
    Ok(Json(InstanceView::from(&info)))
}

/// `DELETE /api/tenants/{t}/nats-instances/{n}` -> 204: stops a drained instance (409
/// when it is not draining).
pub(crate) async fn remove_nats_instance(
    State(s): State<AppState>,
    Path((t, n)): Path<(String, String)>,
) -> Result<impl IntoResponse, ApiError> {
    let t = tenant_id(&t)?;
    let n = instance_number(&t, &n)?;
    s.control.remove_instance(&t, n).await?;
    Ok(StatusCode::NO_CONTENT)
}

/// `GET /api/tenants/{t}/stats`: the tenant's figures on this node.
pub(crate) async fn tenant_stats(
    State(s): State<AppState>,
    Path(t): Path<String>,
) -> Result<impl IntoResponse, ApiError> {
    let t = tenant_id(&t)?;
    s.control.tenant(&t).await?;
    Ok(Json(TenantStatsView::from(s.control.stats(&t).await?)))
}

/// `POST /api/tenants/{t}/credentials/rotate`: new NATS users for the tenant, every older
/// one revoked on its servers (their connections close at once and come back with the
/// new users; nothing accepted is lost).
pub(crate) async fn rotate_credentials(
    State(s): State<AppState>,
    Path(t): Path<String>,
) -> Result<impl IntoResponse, ApiError> {
    let t = tenant_id(&t)?;
    s.control.tenant(&t).await?;
    let r = s.control.rotate_credentials(&t).await?;
    Ok(Json(serde_json::json!({
        "tenant_id": t.as_str(),
        "rotated_at": super::views::rfc3339(r.rotated_at_ms),
        "revoked_issued_before": super::views::rfc3339((r.revoked_before_s + 1) * 1000),
        "servers_updated": r.servers_updated,
    })))
}

/// `GET /api/cluster`: the live nodes, the tenants each holds with their lease ages, and
/// the tenants nobody holds right now.
pub(crate) async fn cluster(State(s): State<AppState>) -> Result<impl IntoResponse, ApiError> {
    let c = s
        .control
        .cluster()
        .ok_or_else(|| ApiError::new(StatusCode::SERVICE_UNAVAILABLE, "unavailable", "the node is starting"))?;
    Ok(Json(c.report()))
}

/// `GET /api/tree`: the live supervision tree.
pub(crate) async fn tree(State(s): State<AppState>) -> Result<impl IntoResponse, ApiError> {
    Ok(Json(s.control.tree().await?))
}

fn message_id(s: &str) -> Result<vrsky_actors::MessageId, ApiError> {
    vrsky_actors::MessageId::new(s).map_err(|e| ApiError::not_found(format!("message {s:?} not found ({e})")))
}

/// `GET /api/tenants/{t}/messages/{id}`.
pub(crate) async fn get_message(
    State(s): State<AppState>,
    Path((t, id)): Path<(String, String)>,
) -> Result<impl IntoResponse, ApiError> {
    let state = s.control.message(&tenant_id(&t)?, &message_id(&id)?).await?;
    Ok(Json(MessageView::from(&state)))
}

/// Largest page of messages or dead letters.
const PAGE_MAX: usize = 500;

fn bad_query(message: String) -> ApiError {
    ApiError::new(StatusCode::BAD_REQUEST, "invalid_query", message)
}

/// Parses a `status` query value.
fn status_param(v: &str) -> Result<vrsky_actors::message::Status, ApiError> {
    use vrsky_actors::message::Status;
    [
        Status::Received,
        Status::Processing,
        Status::Retry,
        Status::Completed,
        Status::Filtered,
        Status::DeadLetter,
    ]
    .into_iter()
    .find(|s| s.as_str() == v)
    .ok_or_else(|| {
        bad_query(format!(
            "unknown status {v:?} (expected received, processing, retry, completed, filtered or dead_letter)"
        ))
    })
}

/// `GET /api/tenants/{t}/integrations/{i}/messages?limit=&status=&cursor=`: recent
/// messages, newest first, `limit` (1 to 500, default 50) to a page.
pub(crate) async fn list_messages(
    State(s): State<AppState>,
    Path((t, i)): Path<(String, String)>,
    axum::extract::Query(q): axum::extract::Query<std::collections::HashMap<String, String>>,
) -> Result<impl IntoResponse, ApiError> {
    let t = tenant_id(&t)?;
    let i = integration_id(&i)?;
    if let Some(k) = q.keys().find(|k| !["limit", "status", "cursor"].contains(&k.as_str())) {
        return Err(bad_query(format!(
            "unknown parameter {k:?} (expected limit, status, cursor)"
        )));
    }
    let limit = page_limit(q.get("limit"))?;
    let status = q.get("status").map(|v| status_param(v)).transpose()?;
    let before = match q.get("cursor") {
        None => None,
        Some(v) => Some(
            crate::platform::MessageCursor::parse(v)
                .ok_or_else(|| bad_query("cursor must be a value from next_cursor".into()))?,
        ),
    };
    let (items, next) = s.control.recent_messages(&t, &i, status, limit, before).await?;
    let items: Vec<MessageView> = items.iter().map(MessageView::from).collect();
    Ok(Json(serde_json::json!({
        "tenant_id": t,
        "integration_id": i,
        "messages": items,
        "next_cursor": next.map(|c| c.to_string()),
    })))
}

/// The `limit` of a page: 1 to [`PAGE_MAX`], 50 when absent.
fn page_limit(v: Option<&String>) -> Result<usize, ApiError> {
    match v {
        None => Ok(50),
        Some(v) => v
            .parse::<usize>()
            .ok()
            .filter(|n| (1..=PAGE_MAX).contains(n))
            .ok_or_else(|| bad_query(format!("limit must be 1 to {PAGE_MAX}"))),
    }
}

/// `GET /api/tenants/{t}/dead-letters?limit=&cursor=`: newest first.
pub(crate) async fn list_dead_letters(
    State(s): State<AppState>,
    Path(t): Path<String>,
    axum::extract::Query(q): axum::extract::Query<std::collections::HashMap<String, String>>,
) -> Result<impl IntoResponse, ApiError> {
    let t = tenant_id(&t)?;
    if let Some(k) = q.keys().find(|k| *k != "limit" && *k != "cursor") {
        return Err(bad_query(format!("unknown parameter {k:?} (expected limit, cursor)")));
    }
    let limit = page_limit(q.get("limit"))?;
    let cursor = match q.get("cursor") {
        None => None,
        Some(v) => Some(
            v.parse::<u64>()
                .map_err(|_| bad_query("cursor must be a value from next_cursor".into()))?,
        ),
    };
    let (items, next) = s.control.dead_letters(&t, limit, cursor).await?;
    let items: Vec<DeadLetterSummaryView> = items.iter().map(DeadLetterSummaryView::from).collect();
    Ok(Json(serde_json::json!({"dead_letters": items, "next_cursor": next})))
}

/// `GET /api/tenants/{t}/dead-letters/{id}`: with the payload.
pub(crate) async fn get_dead_letter(
    State(s): State<AppState>,
    Path((t, id)): Path<(String, String)>,
) -> Result<impl IntoResponse, ApiError> {
    let d = s.control.dead_letter(&tenant_id(&t)?, &message_id(&id)?).await?;
    let mut view = DeadLetterView::from(&d);
    if let (Some(r), Some(objects)) = (view.payload_ref.as_mut(), s.objects.as_ref()) {
        r.url = objects.presigned_url(&r.key).await.ok();
    }
    Ok(Json(view))
}

/// `DELETE /api/tenants/{t}/dead-letters/{id}` -> 204.
pub(crate) async fn delete_dead_letter(
    State(s): State<AppState>,
    Path((t, id)): Path<(String, String)>,
) -> Result<impl IntoResponse, ApiError> {
    s.control.delete_dead_letter(&tenant_id(&t)?, &message_id(&id)?).await?;
    Ok(StatusCode::NO_CONTENT)
}

/// `POST /api/tenants/{t}/dead-letters/{id}/retry` -> 202: same id, attempts reset.
pub(crate) async fn retry_dead_letter(
    State(s): State<AppState>,
    Path((t, id)): Path<(String, String)>,
) -> Result<impl IntoResponse, ApiError> {
    let id = message_id(&id)?;
    s.control.replay(&tenant_id(&t)?, &id).await?;
    Ok((StatusCode::ACCEPTED, Json(serde_json::json!({"message_id": id}))))
}

/// `POST /api/tenants/{t}/dead-letters/retry` `{"integration_id","since_ms","until_ms","dry_run"}`.
pub(crate) async fn retry_dead_letters(
    State(s): State<AppState>,
    Path(t): Path<String>,
    ApiBody(body): ApiBody,
) -> Result<impl IntoResponse, ApiError> {
    let t = tenant_id(&t)?;
    let filter: crate::control::ReplayFilter = if body.is_empty() {
        Default::default()
    } else {
        serde_json::from_slice(&body).map_err(ApiError::bad_json)?
    };
    let report = s.control.replay_matching(&t, &filter).await?;
    let status = if filter.dry_run {
        StatusCode::OK
    } else {
        StatusCode::ACCEPTED
    };
    Ok((status, Json(report)))
}

/// `POST /api/tenants/{t}/nats-instances` -> 201 once the new instance runs and is
/// connected; 409 at the tenant's instance limit.
pub(crate) async fn add_nats_instance(
    State(s): State<AppState>,
    Path(t): Path<String>,
) -> Result<impl IntoResponse, ApiError> {
    let t = tenant_id(&t)?;
    let info = s.control.add_instance(&t).await?;
    Ok((StatusCode::CREATED, Json(InstanceView::from(&info))))
}
