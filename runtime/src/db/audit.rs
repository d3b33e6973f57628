//! The audit log: append-only (the schema refuses updates and deletes).

use super::{Db, DbError};

/// One audit event.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct AuditEntry {
    /// Position in the log (the paging cursor).
    pub id: i64,
    /// When, ms since the Unix epoch.
    pub at_ms: u64,
    /// Who: `admin`, `api_key:{id}`, or `anonymous` (a failed authentication).
    pub actor: String,
    /// The tenant concerned, if any.
    pub tenant_id: Option<String>,
    /// What: `tenant.create`, `api_key.revoke`, `auth.failed`, ...
    pub action: String,
    /// The object acted on (an integration, key or message id).
    pub target: Option<String>,
    /// `ok`, or the refusal (`denied: 403`, ...).
    pub outcome: String,
    /// More, for example the request's method and path.
    pub detail: Option<String>,
}

/// A read of the log.
#[derive(Debug, Clone, Default)]
pub struct AuditQuery {
    /// Only this tenant's events.
    pub tenant_id: Option<String>,
    /// Only events at or after this time (ms).
    pub since_ms: Option<u64>,
    /// Only events after this position.
    pub after_id: Option<i64>,
    /// At most this many.
    pub limit: usize,
}

type AuditTuple = (
    i64,
    i64,
    String,
    Option<String>,
    String,
    Option<String>,
    String,
    Option<String>,
);

impl AuditEntry {
    /// An event of the runtime itself (`actor: "runtime"`), such as an automatic rotation
    /// or a refused NATS connection.
    pub fn runtime(tenant: &str, action: &str, outcome: &str, detail: Option<String>) -> AuditEntry {
        AuditEntry {
            id: 0,
            at_ms: vrsky_actors::now_ms(),
            actor: "runtime".into(),
            tenant_id: Some(tenant.to_owned()),
            action: action.into(),
            target: None,
            outcome: outcome.into(),
            detail,
        }
    }
}

impl Db {
    /// Appends an event and logs it as a structured event (`target: "vrsky::audit"`); a
    /// failed append is logged, never returned: auditing must not fail the audited work.
    pub async fn record_audit(&self, e: &AuditEntry) {
        tracing::info!(target: "vrsky::audit", actor = %e.actor, tenant_id = e.tenant_id.as_deref().unwrap_or("-"),
            action = %e.action, object = e.target.as_deref().unwrap_or("-"), outcome = %e.outcome, "audit");
        if let Err(err) = self.append_audit(e).await {
            tracing::warn!(error = %err, action = %e.action, "audit entry not stored");
        }
    }

    /// Appends an event (its `id` is assigned).
    pub async fn append_audit(&self, e: &AuditEntry) -> Result<(), DbError> {
        let at = i64::try_from(e.at_ms).map_err(|err| DbError::Corrupt(err.to_string()))?;
        on_pool!(self, |p| {
            sqlx::query(
                "INSERT INTO audit_log (at_ms, actor, tenant_id, action, target, outcome, detail) \
                 VALUES ($1, $2, $3, $4, $5, $6, $7)",
            )
            .bind(at)
            .bind(&e.actor)
            .bind(&e.tenant_id)
            .bind(&e.action)
            .bind(&e.target)
            .bind(&e.outcome)
            .bind(&e.detail)
            .execute(p)
            .await
            .map(|_| ())
        })?;
        Ok(())
    }

    /// Events in log order.
    pub async fn audit(&self, q: &AuditQuery) -> Result<Vec<AuditEntry>, DbError> {
        let limit = i64::try_from(q.limit).unwrap_or(i64::MAX);
        let since = i64::try_from(q.since_ms.unwrap_or(0)).unwrap_or(i64::MAX);
        let rows: Vec<AuditTuple> = on_pool!(self, |p| {
            sqlx::query_as(
                "SELECT id, at_ms, actor, tenant_id, action, target, outcome, detail FROM audit_log \
                 WHERE ($1 IS NULL OR tenant_id = $1) AND at_ms >= $2 AND id > $3 ORDER BY id LIMIT $4",
            )
            .bind(&q.tenant_id)
            .bind(since)
            .bind(q.after_id.unwrap_or(0))
            .bind(limit)
            .fetch_all(p)
            .await
        })?;
        rows.into_iter()
            .map(|(id, at, actor, tenant_id, action, target, outcome, detail)| {
                Ok(AuditEntry {
                    id,
                    at_ms: u64::try_from(at).map_err(|e| DbError::Corrupt(format!("at_ms: {e}")))?,
                    actor,
                    tenant_id,
                    action,
                    target,
                    outcome,
                    detail,
                })
            })
            .collect()
    }
}
