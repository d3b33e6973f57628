//! Tenant API keys: only each key's SHA-256 is stored.

use vrsky_actors::TenantId;

use super::{Db, DbError};

/// A stored key, without its secret.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ApiKeyRow {
    /// The key's id (also the key's second part).
    pub id: String,
    /// Whose.
    pub tenant_id: TenantId,
    /// SHA-256 of the whole key, hex.
    pub key_sha256: String,
    /// Created, ms since the Unix epoch.
    pub created_at_ms: u64,
}

type KeyTuple = (String, String, String, i64);

fn key_row((id, t, key_sha256, created): KeyTuple) -> Result<ApiKeyRow, DbError> {
    Ok(ApiKeyRow {
        id,
        tenant_id: TenantId::new(t).map_err(|e| DbError::Corrupt(e.to_string()))?,
        key_sha256,
        created_at_ms: u64::try_from(created).map_err(|e| DbError::Corrupt(format!("created_at_ms: {e}")))?,
    })
}

impl Db {
    /// Stores a key.
    pub async fn create_api_key(&self, row: &ApiKeyRow) -> Result<(), DbError> {
        let created = i64::try_from(row.created_at_ms).map_err(|e| DbError::Corrupt(e.to_string()))?;
        on_pool!(self, |p| {
            sqlx::query("INSERT INTO api_keys (id, tenant_id, key_sha256, created_at_ms) VALUES ($1, $2, $3, $4)")
                .bind(&row.id)
                .bind(row.tenant_id.as_str())
                .bind(&row.key_sha256)
                .bind(created)
                .execute(p)
                .await
                .map(|_| ())
        })?;
        Ok(())
    }

    /// One key by id.
    pub async fn api_key(&self, id: &str) -> Result<Option<ApiKeyRow>, DbError> {
        let row: Option<KeyTuple> = on_pool!(self, |p| {
            sqlx::query_as("SELECT id, tenant_id, key_sha256, created_at_ms FROM api_keys WHERE id = $1")
                .bind(id)
                .fetch_optional(p)
                .await
        })?;
        row.map(key_row).transpose()
    }

    /// A tenant's keys, oldest first.
    pub async fn api_keys(&self, t: &TenantId) -> Result<Vec<ApiKeyRow>, DbError> {
        let rows: Vec<KeyTuple> = on_pool!(self, |p| {
            sqlx::query_as(
                "SELECT id, tenant_id, key_sha256, created_at_ms FROM api_keys WHERE tenant_id = $1 ORDER BY created_at_ms, id",
            )
            .bind(t.as_str())
            .fetch_all(p)
            .await
        })?;
        rows.into_iter().map(key_row).collect()
    }

    /// Revokes a tenant's key; false when it has none of that id.
    pub async fn delete_api_key(&self, t: &TenantId, id: &str) -> Result<bool, DbError> {
        let n = on_pool!(self, |p| {
            sqlx::query("DELETE FROM api_keys WHERE tenant_id = $1 AND id = $2")
                .bind(t.as_str())
                .bind(id)
                .execute(p)
                .await
                .map(|r| r.rows_affected())
        })?;
        Ok(n > 0)
    }
}
