//! `/api/tenants/{t}/api-keys`: tenant API keys (admin only; see `auth.rs`).

use axum::Json;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::IntoResponse;

use super::AppState;
use super::api::tenant_id;
use super::error::ApiError;
use super::views::rfc3339;
use crate::api_keys;
use crate::db::ApiKeyRow;

fn unavailable(e: impl std::fmt::Display) -> ApiError {
    ApiError::new(StatusCode::SERVICE_UNAVAILABLE, "unavailable", e.to_string()).with_retry_after(1)
}

/// `POST /api/tenants/{t}/api-keys` -> 201 `{"id","key","tenant_id","created_at"}`: the
/// key is shown this once.
pub(crate) async fn create(State(s): State<AppState>, Path(t): Path<String>) -> Result<impl IntoResponse, ApiError> {
    let t = tenant_id(&t)?;
    s.control.tenant(&t).await?;
    let (key, id) = api_keys::generate().map_err(|_| unavailable("the system's random source failed"))?;
    let row = ApiKeyRow {
        id,
        tenant_id: t.clone(),
        key_sha256: api_keys::sha256_hex(&key),
        created_at_ms: vrsky_actors::now_ms(),
    };
    s.control.db().create_api_key(&row).await.map_err(unavailable)?;
    Ok((
        StatusCode::CREATED,
        Json(serde_json::json!({
            "id": row.id, "key": key, "tenant_id": t, "created_at": rfc3339(row.created_at_ms),
        })),
    ))
}

/// `GET /api/tenants/{t}/api-keys`: ids and creation times, never the keys.
pub(crate) async fn list(State(s): State<AppState>, Path(t): Path<String>) -> Result<impl IntoResponse, ApiError> {
    let t = tenant_id(&t)?;
    s.control.tenant(&t).await?;
    let keys = s.control.db().api_keys(&t).await.map_err(unavailable)?;
    let keys: Vec<serde_json::Value> = keys
        .iter()
        .map(|k| serde_json::json!({"id": k.id, "created_at": rfc3339(k.created_at_ms)}))
        .collect();
    Ok(Json(serde_json::json!({"tenant_id": t, "api_keys": keys})))
}

/// `DELETE /api/tenants/{t}/api-keys/{id}` -> 204: the key stops working at once.
pub(crate) async fn revoke(
    State(s): State<AppState>,
    Path((t, id)): Path<(String, String)>,
) -> Result<impl IntoResponse, ApiError> {
    let t = tenant_id(&t)?;
    if s.control.db().delete_api_key(&t, &id).await.map_err(unavailable)? {
        Ok(StatusCode::NO_CONTENT)
    } else {
        Err(ApiError::not_found(format!("api key {id:?} not found in tenant {t}")))
    }
}
