//! NATS trust material: the operator and system-account seeds, and each tenant's
//! account seed with its revocation time. Seeds arrive here sealed (`secrets.rs`).

use vrsky_actors::TenantId;

use super::{Db, DbError};

/// A tenant's stored account.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CredentialsRow {
    /// The account seed, sealed.
    pub account_seed: String,
    /// Users issued at or before this Unix second are revoked (0: none).
    pub revoked_before_s: u64,
    /// Last rotation (or creation), ms since the Unix epoch.
    pub rotated_at_ms: u64,
}

fn to_i64(v: u64, what: &str) -> Result<i64, DbError> {
    i64::try_from(v).map_err(|e| DbError::Corrupt(format!("{what}: {e}")))
}

fn to_u64(v: i64, what: &str) -> Result<u64, DbError> {
    u64::try_from(v).map_err(|e| DbError::Corrupt(format!("{what}: {e}")))
}

impl Db {
    /// The seed stored under `name`, storing `seed` first if there is none: every node
    /// ends up with the first one written.
    pub async fn trust_seed(&self, name: &str, seed: &str) -> Result<String, DbError> {
        on_pool!(self, |p| {
            sqlx::query("INSERT INTO nats_trust (name, seed) VALUES ($1, $2) ON CONFLICT (name) DO NOTHING")
                .bind(name)
                .bind(seed)
                .execute(p)
                .await?;
            let (s,): (String,) = sqlx::query_as("SELECT seed FROM nats_trust WHERE name = $1")
                .bind(name)
                .fetch_one(p)
                .await?;
            Ok::<_, DbError>(s)
        })
    }

    /// A tenant's account, storing `new` first if it has none (as [`Db::trust_seed`]).
    pub async fn tenant_credentials(&self, t: &TenantId, new: &CredentialsRow) -> Result<CredentialsRow, DbError> {
        let (revoked, rotated) = (
            to_i64(new.revoked_before_s, "revoked_before_s")?,
            to_i64(new.rotated_at_ms, "rotated_at_ms")?,
        );
        let (seed, revoked, rotated): (String, i64, i64) = on_pool!(self, |p| {
            sqlx::query(
                "INSERT INTO tenant_credentials (tenant_id, account_seed, revoked_before_s, rotated_at_ms) \
                 VALUES ($1, $2, $3, $4) ON CONFLICT (tenant_id) DO NOTHING",
            )
            .bind(t.as_str())
            .bind(&new.account_seed)
            .bind(revoked)
            .bind(rotated)
            .execute(p)
            .await?;
            sqlx::query_as(
                "SELECT account_seed, revoked_before_s, rotated_at_ms FROM tenant_credentials WHERE tenant_id = $1",
            )
            .bind(t.as_str())
            .fetch_one(p)
            .await
        })?;
        Ok(CredentialsRow {
            account_seed: seed,
            revoked_before_s: to_u64(revoked, "revoked_before_s")?,
            rotated_at_ms: to_u64(rotated, "rotated_at_ms")?,
        })
    }

    /// The revocation in force for `t` (`revoked_before_s`, `rotated_at_ms`), if its account
    /// exists: another node may have rotated since this one minted its users.
    pub async fn credentials_revision(&self, t: &TenantId) -> Result<Option<(u64, u64)>, DbError> {
        let row: Option<(i64, i64)> = on_pool!(self, |p| {
            sqlx::query_as("SELECT revoked_before_s, rotated_at_ms FROM tenant_credentials WHERE tenant_id = $1")
                .bind(t.as_str())
                .fetch_optional(p)
                .await
        })?;
        row.map(|(revoked, rotated)| Ok((to_u64(revoked, "revoked_before_s")?, to_u64(rotated, "rotated_at_ms")?)))
            .transpose()
    }

    /// Records a rotation: users issued at or before `revoked_before_s` are revoked.
    pub async fn rotate_credentials(&self, t: &TenantId, revoked_before_s: u64, at_ms: u64) -> Result<bool, DbError> {
        let (revoked, at) = (
            to_i64(revoked_before_s, "revoked_before_s")?,
            to_i64(at_ms, "rotated_at_ms")?,
        );
        let n = on_pool!(self, |p| {
            sqlx::query("UPDATE tenant_credentials SET revoked_before_s = $2, rotated_at_ms = $3 WHERE tenant_id = $1")
                .bind(t.as_str())
                .bind(revoked)
                .bind(at)
                .execute(p)
                .await
                .map(|r| r.rows_affected())
        })?;
        Ok(n > 0)
    }
}
