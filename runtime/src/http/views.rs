//! What the REST API shows: the specification's field names, times as RFC 3339 UTC with
//! milliseconds, bodies as text or base64. Built from the control layer's domain values;
//! nothing here is sent to an actor.

use base64::Engine;
use serde::Serialize;

use vrsky_actors::components::IntegrationSpec;
use vrsky_actors::integration::IntegrationStats;
use vrsky_actors::message::{Attempt, MessageState};
use vrsky_actors::{IntegrationId, MessageId, TenantId};

use crate::control::{Directory, InstanceInfo, IntegrationInfo, TenantPhase, TenantStats};
use crate::platform::{DeadLetter, DeadLetterSummary};

/// Formats ms since the Unix epoch as RFC 3339 UTC with milliseconds
/// (`2025-11-26T19:50:45.123Z`).
pub fn rfc3339(ms: u64) -> String {
    let format =
        time::macros::format_description!("[year]-[month]-[day]T[hour]:[minute]:[second].[subsecond digits:3]Z");
    time::OffsetDateTime::from_unix_timestamp_nanos(i128::from(ms) * 1_000_000)
        .ok()
        .and_then(|t| t.format(&format).ok())
        .unwrap_or_else(|| ms.to_string())
}

/// The path webhooks for an integration are posted to.
pub fn webhook_path(t: &TenantId, i: &IntegrationId) -> String {
    format!("/webhooks/{t}/{i}")
}

/// A message's state (the specification's fields).
#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct MessageView {
    /// Id.
    #[schema(value_type = String)]
    pub message_id: MessageId,
    /// Integration.
    #[schema(value_type = String)]
    pub integration_id: IntegrationId,
    /// `received`, `processing`, `retry`, `completed`, `filtered` or `dead_letter`.
    pub status: &'static str,
    /// Delivery attempts made (4 for a message dead-lettered after `max_retries: 3`).
    pub attempts: u32,
    /// Retries made: the attempts after the first (3 there).
    pub retry_count: u32,
    /// The last failure.
    pub last_error: Option<String>,
    /// RFC 3339.
    pub created_at: String,
    /// RFC 3339.
    pub updated_at: String,
    /// With `retry`: when the next attempt is due (RFC 3339).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub next_attempt_at: Option<String>,
    /// With `filtered`: which filter dropped it, and why.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
}

impl From<&MessageState> for MessageView {
    fn from(s: &MessageState) -> Self {
        MessageView {
            message_id: s.message_id.clone(),
            integration_id: s.integration_id.clone(),
            status: s.status.as_str(),
            attempts: s.attempts_made(),
            retry_count: s.retries_made(),
            last_error: s.last_error.clone(),
            created_at: rfc3339(s.created_at_ms),
            updated_at: rfc3339(s.updated_at_ms),
            next_attempt_at: s.next_attempt_at_ms.map(rfc3339),
            reason: s.reason.clone(),
        }
    }
}

/// One failed delivery attempt.
#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct AttemptView {
    /// 1-based attempt number.
    pub attempt: u32,
    /// When it ended (RFC 3339).
    pub at: String,
    /// The destination's status code, if it answered.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub status: Option<u16>,
    /// What went wrong.
    pub error: String,
}

impl From<&Attempt> for AttemptView {
    fn from(a: &Attempt) -> Self {
        AttemptView {
            attempt: a.attempt,
            at: rfc3339(a.at_ms),
            status: a.status,
            error: a.error.clone(),
        }
    }
}

/// A dead letter in a listing.
#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct DeadLetterSummaryView {
    /// Message id.
    #[schema(value_type = String)]
    pub message_id: MessageId,
    /// Integration.
    pub integration_id: String,
    /// When it was dead-lettered (RFC 3339).
    pub dead_at: String,
    /// The last failure.
    pub last_error: String,
}

impl From<&DeadLetterSummary> for DeadLetterSummaryView {
    fn from(d: &DeadLetterSummary) -> Self {
        DeadLetterSummaryView {
            message_id: d.message_id.clone(),
            integration_id: d.integration_id.clone(),
            dead_at: rfc3339(d.dead_at_ms),
            last_error: d.last_error.clone(),
        }
    }
}

/// A dead letter with its payload.
#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct DeadLetterView {
    /// The state when it was dead-lettered.
    #[serde(flatten)]
    pub message: MessageView,
    /// Every failed attempt, oldest first.
    pub attempt_history: Vec<AttemptView>,
    /// The original forwarded headers.
    #[schema(value_type = Vec<Vec<String>>)]
    pub headers: Vec<(String, String)>,
    /// The body's media type.
    pub content_type: Option<String>,
    /// The body as text when it is UTF-8.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub payload: Option<String>,
    /// The body as base64 when it is not UTF-8.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub payload_base64: Option<String>,
    /// Body size in bytes.
    pub payload_bytes: u64,
    /// Claim check: the body is in the object store, here, and `payload` is absent.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub payload_ref: Option<PayloadRefView>,
}

/// A payload in the object store.
#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct PayloadRefView {
    /// Its key.
    pub key: String,
    /// Its size in bytes.
    pub size: u64,
    /// Its SHA-256, lowercase hex.
    pub sha256: String,
    /// A presigned GET URL, valid for `claim_check.presign_ttl_s`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub url: Option<String>,
}

impl From<&DeadLetter> for DeadLetterView {
    fn from(d: &DeadLetter) -> Self {
        if let Some(r) = &d.envelope.payload_ref {
            return DeadLetterView {
                message: MessageView::from(&d.state),
                attempt_history: d.state.attempts.iter().map(AttemptView::from).collect(),
                headers: d.envelope.headers.clone(),
                content_type: d.envelope.content_type.clone(),
                payload: None,
                payload_base64: None,
                payload_bytes: r.size,
                payload_ref: Some(PayloadRefView {
                    key: r.key.clone(),
                    size: r.size,
                    sha256: r.sha256.clone(),
                    url: None,
                }),
            };
        }
        let text = std::str::from_utf8(&d.envelope.payload).ok().map(str::to_owned);
        DeadLetterView {
            message: MessageView::from(&d.state),
            attempt_history: d.state.attempts.iter().map(AttemptView::from).collect(),
            headers: d.envelope.headers.clone(),
            content_type: d.envelope.content_type.clone(),
            payload_base64: match text {
                None => Some(base64::engine::general_purpose::STANDARD.encode(&d.envelope.payload)),
                Some(_) => None,
            },
            payload: text,
            payload_bytes: d.envelope.payload.len() as u64,
            payload_ref: None,
        }
    }
}

/// An integration.
#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct IntegrationView {
    /// Owner.
    #[schema(value_type = String)]
    pub tenant_id: TenantId,
    /// The stored spec.
    #[serde(flatten)]
    #[schema(value_type = Object)]
    pub spec: IntegrationSpec,
    /// Where to send webhooks.
    pub webhook_path: String,
    /// Creation time.
    pub created_at: String,
    /// Outcome counters on this node since it started.
    #[schema(value_type = Object)]
    pub stats: IntegrationStats,
}

impl From<IntegrationInfo> for IntegrationView {
    fn from(i: IntegrationInfo) -> Self {
        IntegrationView {
            webhook_path: webhook_path(&i.tenant_id, &i.spec.id),
            tenant_id: i.tenant_id,
            // Secrets and producer header values are never shown.
            spec: i.spec.redacted(),
            created_at: i.created_at,
            stats: i.stats,
        }
    }
}

/// One NATS instance (the specification's shape).
#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct InstanceView {
    /// Client URL.
    pub url: String,
    /// 1-based number.
    pub instance_number: u32,
    /// `active`, `draining` or `terminated`.
    pub status: &'static str,
    /// Integrations assigned to it.
    pub integration_count: usize,
}

impl From<&InstanceInfo> for InstanceView {
    fn from(i: &InstanceInfo) -> Self {
        InstanceView {
            url: i.endpoint.url(),
            instance_number: i.number,
            status: i.status.as_str(),
            integration_count: i.integration_count,
        }
    }
}

/// A tenant's figures on this node.
#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct TenantStatsView {
    /// Tenant.
    #[schema(value_type = String)]
    pub tenant_id: TenantId,
    /// Its integrations.
    pub integrations: usize,
    /// Its live instances.
    pub nats_instances: InstanceCounts,
    /// The integrations' counters added up (the fields of an integration's `stats`).
    #[schema(value_type = Object)]
    pub totals: IntegrationStats,
}

/// Live instances by state.
#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct InstanceCounts {
    /// Taking new messages.
    pub active: usize,
    /// Being emptied before removal.
    pub draining: usize,
    /// Healthy and connected from this node.
    pub usable: usize,
}

impl From<TenantStats> for TenantStatsView {
    fn from(s: TenantStats) -> Self {
        TenantStatsView {
            tenant_id: s.tenant_id,
            integrations: s.integrations,
            nats_instances: InstanceCounts {
                active: s.instances_active,
                draining: s.instances_draining,
                usable: s.instances_usable,
            },
            totals: s.totals,
        }
    }
}

/// Readiness of one tenant's NATS instances.
#[derive(Debug, Clone, Serialize)]
pub struct TenantReadiness {
    /// Tenant.
    pub tenant_id: TenantId,
    /// `running`, or `starting` while its actor (re)starts it.
    pub phase: &'static str,
    /// Whether at least one instance is healthy and connected.
    pub nats_connected: bool,
    /// Each instance.
    pub instances: Vec<InstanceReadiness>,
    /// Why the last start failed.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
}

/// Readiness of one instance.
#[derive(Debug, Clone, Serialize)]
pub struct InstanceReadiness {
    /// 1-based number.
    pub instance_number: u32,
    /// Client URL.
    pub url: String,
    /// Its last probe (or start) succeeded.
    pub healthy: bool,
    /// This node's connection is up.
    pub nats_connected: bool,
    /// Why it is unhealthy.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    /// Times this node's client dropped messages from a full subscription buffer.
    pub slow_consumers: u64,
}

/// NATS connectivity of every tenant on this node, per instance, from the snapshot.
pub fn readiness(directory: &Directory) -> Vec<TenantReadiness> {
    directory
        .all()
        .into_iter()
        .map(|(t, snapshot)| {
            let instances: Vec<InstanceReadiness> = snapshot
                .instances
                .links()
                .iter()
                .map(|l| InstanceReadiness {
                    instance_number: l.number,
                    url: l.url.clone(),
                    healthy: l.health.is_healthy(),
                    nats_connected: l.connected(),
                    reason: l.health.reason(),
                    slow_consumers: l.slow_consumers.load(std::sync::atomic::Ordering::Relaxed),
                })
                .collect();
            let (phase, reason) = match &snapshot.phase {
                TenantPhase::Running => ("running", None),
                TenantPhase::Starting(why) => ("starting", why.clone()),
            };
            TenantReadiness {
                tenant_id: t,
                phase,
                nats_connected: phase == "running" && instances.iter().any(|i| i.healthy && i.nats_connected),
                instances,
                reason,
            }
        })
        .collect()
}

#[cfg(test)]
mod tests {
    #[test]
    fn formats_rfc3339() {
        assert_eq!(super::rfc3339(0), "1970-01-01T00:00:00.000Z");
        assert_eq!(super::rfc3339(1_764_186_645_123), "2025-11-26T19:50:45.123Z");
        assert_eq!(super::rfc3339(951_782_400_000), "2000-02-29T00:00:00.000Z");
    }
}
