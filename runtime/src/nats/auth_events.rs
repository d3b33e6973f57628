//! Failed NATS authentications, audited: each tenant server publishes an event on
//! `$SYS.SERVER.<id>.CLIENT.AUTH.ERR` for every client it refuses (anonymous, another
//! tenant's user, a revoked user, a bad signature). The runtime's system user listens on
//! each instance and appends `nats.auth_failed` entries (within a [`FailureBudget`]).

use std::sync::Arc;
use std::time::Duration;

use futures::StreamExt;
use tracing::{debug, warn};
use vrsky_actors::TenantId;
use vrsky_actors::integration::AbortOnDrop;

use super::trust::Trust;
use crate::audit_budget::{Admit, FailureBudget};
use crate::db::{AuditEntry, Db};

/// The subject of every auth-error event of a server.
pub const AUTH_ERRORS: &str = "$SYS.SERVER.*.CLIENT.AUTH.ERR";

/// What an entry says about one refused client: where it came from, its name, why.
pub fn describe(event: &[u8]) -> String {
    let v: serde_json::Value = serde_json::from_slice(event).unwrap_or_default();
    let c = &v["client"];
    let field = |x: &serde_json::Value| x.as_str().filter(|s| !s.is_empty()).unwrap_or("-").to_owned();
    format!(
        "refused {} (client name {}): {}",
        field(&c["host"]),
        field(&c["name"]),
        field(&v["reason"])
    )
}

/// Watches one instance until dropped; reconnects when the instance restarts.
pub fn watch(trust: Arc<Trust>, db: Db, tenant: TenantId, number: u32, url: String) -> AbortOnDrop {
    AbortOnDrop(tokio::spawn(async move {
        let budget = FailureBudget::default();
        let client = match trust
            .system_options()
            .name(format!("vrsky-audit-{tenant}-{number}"))
            .retry_on_initial_connect()
            .max_reconnects(None)
            .connect(url.as_str())
            .await
        {
            Ok(c) => c,
            Err(e) => return warn!(tenant_id = %tenant, instance = number, error = %e, "nats auth events not watched"),
        };
        let mut events = match client.subscribe(AUTH_ERRORS).await {
            Ok(s) => s,
            Err(e) => return warn!(tenant_id = %tenant, instance = number, error = %e, "nats auth events not watched"),
        };
        let _ = tokio::time::timeout(Duration::from_secs(5), client.flush()).await;
        debug!(tenant_id = %tenant, instance = number, "watching nats auth events");
        while let Some(m) = events.next().await {
            let now = vrsky_actors::now_ms();
            let detail = format!("instance {number}: {}", describe(&m.payload));
            let entry = |d: String| AuditEntry {
                target: Some(number.to_string()),
                ..AuditEntry::runtime(tenant.as_str(), "nats.auth_failed", "denied", Some(d))
            };
            match budget.admit(now) {
                Admit::Suppress => continue,
                Admit::RecordAfterSummary(n) => {
                    db.record_audit(&entry(format!(
                        "instance {number}: {n} more refused clients not recorded in the last minute"
                    )))
                    .await;
                    db.record_audit(&entry(detail)).await;
                }
                Admit::Record => db.record_audit(&entry(detail)).await,
            }
        }
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_event_says_who_and_why() {
        let e = br#"{"type":"io.nats.server.advisory.v1.client_disconnect","client":{"host":"127.0.0.1","name":"probe","kind":"Client"},"reason":"Authentication Failure"}"#;
        assert_eq!(
            describe(e),
            "refused 127.0.0.1 (client name probe): Authentication Failure"
        );
        assert_eq!(describe(b"garbage"), "refused - (client name -): -");
    }
}
