//! The control layer: turns REST calls into metadata writes and actor tree changes, and
//! keeps the webhook routing table. It is the only place that changes the tree.
//!
//! **Invariant:** the metadata store is the desired state. A tenant supervisor's children
//! are rebuilt from it on every (re)start, so a write that reached the store survives any
//! actor crash; a write that failed to start its actor is rolled back before the caller
//! hears about it.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, RwLock};
use std::time::Duration;

use ractor::{ActorCell, ActorRef};
use tracing::{info, warn};

use vrsky_actors::components::{IntegrationSpec, Pipeline, ProducerSpec, SpecError, WebhookConsumer};
use vrsky_actors::integration::{IntegrationArgs, IntegrationCounters, IntegrationStats};
use vrsky_actors::nats_instance::{InstanceSpec, NatsInstanceArgs};
use vrsky_actors::tenant::{
    instance_child_name, instance_spec, integration_child_name, integration_spec, tenant_child_name,
    tenant_supervisor_spec,
};
use vrsky_actors::{IntegrationId, TenantId, subjects};
use vrsky_supervision::{ChildSpec, SupervisorArgs, SupervisorError, SupervisorExt, SupervisorMsg, TreeNode};

use vrsky_actors::message::{
    Committed, Committer, Event, MessageState, MessageStore, RetryPolicy, SharedStore, Status, StoreError, Stored,
    TenantPublisher, new_incarnation,
};
use vrsky_actors::{MessageId, now_ms, wire};

use crate::db::{Db, DbError, InstanceRow, IntegrationRow, TenantRow};
use crate::instances::{InstanceLink, InstanceSet};
use crate::nats::{SharedProvisioner, connect_tenant};
use crate::platform::{DeadLetterSummary, Platform, PlatformError};
use crate::producer::HttpProducer;

/// What went wrong, by the answer the caller should get.
#[derive(Debug, thiserror::Error)]
pub enum ControlError {
    /// The named thing does not exist (404).
    #[error("{0}")]
    NotFound(String),
    /// It exists already, or the request conflicts with current state (409).
    #[error("{0}")]
    Conflict(String),
    /// The request is malformed or invalid (400).
    #[error("{field}: {message}")]
    Invalid {
        /// Path of the offending field.
        field: String,
        /// What is wrong.
        message: String,
    },
    /// A dependency is down or a subtree is restarting; retrying may help (503).
    #[error("{0}")]
    Unavailable(String),
    /// A bug or corrupt state (500).
    #[error("{0}")]
    Internal(String),
}

impl From<DbError> for ControlError {
    fn from(e: DbError) -> Self {
        match e {
            DbError::Conflict => ControlError::Conflict("already exists".into()),
            DbError::Corrupt(m) => ControlError::Internal(m),
            other => ControlError::Unavailable(other.to_string()),
        }
    }
}

impl From<SpecError> for ControlError {
    fn from(e: SpecError) -> Self {
        ControlError::Invalid {
            field: e.field,
            message: e.message,
        }
    }
}

impl From<PlatformError> for ControlError {
    fn from(e: PlatformError) -> Self {
        ControlError::Unavailable(e.to_string())
    }
}

impl From<StoreError> for ControlError {
    fn from(e: StoreError) -> Self {
        ControlError::Unavailable(e.to_string())
    }
}

impl From<SupervisorError> for ControlError {
    fn from(e: SupervisorError) -> Self {
        ControlError::Unavailable(e.to_string())
    }
}

/// Where a webhook for one integration goes.
#[derive(Debug)]
pub struct Route {
    /// The integration's inbox subject.
    pub subject: String,
    /// Builds envelopes from requests.
    pub consumer: WebhookConsumer,
    /// The tenant's NATS instances; publishing round-robins across them.
    pub instances: Arc<InstanceSet>,
    /// The integration's retry policy.
    pub retry: RetryPolicy,
    /// The producer's timeout: a claimed message is re-driven only after it.
    pub timeout_ms: u64,
    /// Which life of the integration id this is; ingress stamps it on every message.
    pub incarnation: u64,
}

impl Route {
    /// Publishes a stored message (written at `revision`) on the tenant's next instance.
    pub async fn publish(&self, stored: bytes::Bytes, revision: u64) -> Result<(), StoreError> {
        let link = self
            .instances
            .pick()
            .ok_or_else(|| StoreError("the tenant has no nats instance".into()))?;
        let (headers, payload) = wire::encode(stored, revision);
        link.client
            .publish_with_headers(self.subject.clone(), headers, payload)
            .await
            .map_err(|e| StoreError(e.to_string()))
    }
}

/// Everything needed to (re)build a tenant's children; cloned into its child source.
#[derive(Clone)]
struct TenantContext {
    tenant_id: TenantId,
    db: Db,
    instances: Arc<InstanceSet>,
    provisioner: SharedProvisioner,
    health_interval: Duration,
    http: crate::producer::HttpClient,
    allow_private_targets: bool,
    store: SharedStore,
    /// Counters outlive actor restarts. Bound: one entry per integration of the tenant.
    counters: Arc<Mutex<HashMap<IntegrationId, Arc<IntegrationCounters>>>>,
}

fn local_port(dns_name: &str) -> Option<u16> {
    dns_name.rsplit_once(':').and_then(|(_, p)| p.parse().ok())
}

impl TenantContext {
    fn counters(&self, id: &IntegrationId) -> Arc<IntegrationCounters> {
        let mut map = self.counters.lock().unwrap_or_else(|p| p.into_inner());
        map.entry(id.clone()).or_default().clone()
    }

    fn integration_args(&self, spec: &IntegrationSpec, incarnation: u64) -> Result<IntegrationArgs, SpecError> {
        let ProducerSpec::Http(http) = &spec.producer;
        let producer = HttpProducer::new(self.http.clone(), http, self.allow_private_targets)?;
        Ok(IntegrationArgs {
            tenant_id: self.tenant_id.clone(),
            integration_id: spec.id.clone(),
            pipeline: Arc::new(Pipeline::from_specs(&spec.filters, &spec.converters)),
            producer: Arc::new(producer),
            clients: self.instances.clients(),
            max_in_flight: spec.max_in_flight,
            counters: self.counters(&spec.id),
            store: self.store.clone(),
            retry: spec.retry,
            incarnation,
        })
    }

    fn instance_child(&self, row: &InstanceRow) -> Result<ChildSpec, String> {
        let port = local_port(&row.dns_name).ok_or_else(|| {
            format!(
                "instance {} has no local port in {:?}",
                row.instance_number, row.dns_name
            )
        })?;
        Ok(instance_spec(NatsInstanceArgs {
            spec: InstanceSpec {
                tenant_id: self.tenant_id.clone(),
                instance_number: row.instance_number as u32,
                client_port: port,
            },
            provisioner: self.provisioner.clone(),
            health: self.instances.health(row.instance_number as u32).unwrap_or_default(),
            health_interval: self.health_interval,
        }))
    }

    /// The tenant's children as the metadata store describes them now: instances first,
    /// so integrations subscribe on a running server.
    async fn child_specs(&self) -> Result<Vec<ChildSpec>, String> {
        let mut specs = Vec::new();
        for row in self.db.instances(&self.tenant_id).await.map_err(|e| e.to_string())? {
            if row.status != "terminated" {
                specs.push(self.instance_child(&row)?);
            }
        }
        for row in self.db.integrations(&self.tenant_id).await.map_err(|e| e.to_string())? {
            match parse_stored(&row).and_then(|s| self.integration_args(&s, row.incarnation).map_err(|e| e.to_string()))
            {
                Ok(args) => specs.push(integration_spec(args)),
                // A stored spec that no longer builds (e.g. private targets now refused)
                // is skipped with a warning rather than taking the whole tenant down.
                Err(error) => warn!(tenant_id = %self.tenant_id, integration_id = %row.id, %error,
                    "stored integration cannot start"),
            }
        }
        Ok(specs)
    }
}

fn parse_stored(row: &IntegrationRow) -> Result<IntegrationSpec, String> {
    serde_json::from_str(&row.spec).map_err(|e| format!("stored spec of {}/{}: {e}", row.tenant_id, row.id))
}

struct TenantEntry {
    ctx: TenantContext,
    /// Held while integrations or instances change, so changes cannot interleave: a
    /// restart of the workers never starts an integration's earlier incarnation after its
    /// route took the new one.
    changes: tokio::sync::Mutex<()>,
    /// Bound: one entry per integration of the tenant.
    routes: RwLock<HashMap<IntegrationId, Arc<Route>>>,
}

/// Settings the control layer needs from the configuration.
#[derive(Debug, Clone)]
pub struct ControlSettings {
    /// Allow loopback/private producer targets.
    pub allow_private_targets: bool,
    /// How long to wait for a new tenant's NATS connection.
    pub connect_timeout: Duration,
    /// How often each instance is probed.
    pub health_interval: Duration,
    /// Most instances one tenant may have.
    pub instances_per_tenant_max: usize,
}

/// A message's state as the API shows it (the specification's fields).
#[derive(Debug, Clone, serde::Serialize)]
pub struct MessageView {
    /// Id.
    pub message_id: MessageId,
    /// Integration.
    pub integration_id: IntegrationId,
    /// `received`, `processing`, `completed`, `retry` or `dead_letter`.
    pub status: &'static str,
    /// Failed attempts so far.
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
}

impl MessageView {
    fn of(s: &MessageState) -> Self {
        MessageView {
            message_id: s.message_id.clone(),
            integration_id: s.integration_id.clone(),
            status: s.status.as_str(),
            retry_count: s.retry_count,
            last_error: s.last_error.clone(),
            created_at: rfc3339(s.created_at_ms),
            updated_at: rfc3339(s.updated_at_ms),
            next_attempt_at: s.next_attempt_at_ms.map(rfc3339),
        }
    }
}

/// Formats ms since the Unix epoch as RFC 3339 UTC with milliseconds.
pub fn rfc3339(ms: u64) -> String {
    let secs = ms / 1000;
    let days = (secs / 86_400) as i64;
    let rem = secs % 86_400;
    // Civil date from days since 1970-01-01 (H. Hinnant's algorithm).
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + i64::from(m <= 2);
    format!(
        "{y:04}-{m:02}-{d:02}T{:02}:{:02}:{:02}.{:03}Z",
        rem / 3600,
        (rem % 3600) / 60,
        rem % 60,
        ms % 1000
    )
}

/// A dead letter as the API shows it.
#[derive(Debug, Clone, serde::Serialize)]
pub struct DeadLetterView {
    /// The state when it was dead-lettered.
    #[serde(flatten)]
    pub message: MessageView,
    /// Every failed attempt.
    pub attempts: Vec<vrsky_actors::message::Attempt>,
    /// The original forwarded headers.
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
    pub payload_bytes: usize,
}

fn base64(bytes: &[u8]) -> String {
    const A: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut out = String::with_capacity(bytes.len().div_ceil(3) * 4);
    for chunk in bytes.chunks(3) {
        let b = [chunk[0], *chunk.get(1).unwrap_or(&0), *chunk.get(2).unwrap_or(&0)];
        let n = (u32::from(b[0]) << 16) | (u32::from(b[1]) << 8) | u32::from(b[2]);
        for i in 0..4 {
            if i <= chunk.len() {
                out.push(A[((n >> (18 - 6 * i)) & 63) as usize] as char);
            } else {
                out.push('=');
            }
        }
    }
    out
}

/// Which dead letters a bulk replay takes.
#[derive(Debug, Clone, Default, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ReplayFilter {
    /// Only this integration's.
    #[serde(default)]
    pub integration_id: Option<IntegrationId>,
    /// Only those dead-lettered at or after this time (ms since the Unix epoch).
    #[serde(default)]
    pub since_ms: Option<u64>,
    /// Only those dead-lettered before this time (ms since the Unix epoch).
    #[serde(default)]
    pub until_ms: Option<u64>,
    /// Count the matches and replay nothing.
    #[serde(default)]
    pub dry_run: bool,
}

/// Upper bound on one bulk replay; call again for more.
pub const BULK_REPLAY_MAX: usize = 10_000;

/// Result of a bulk replay.
#[derive(Debug, Clone, serde::Serialize)]
pub struct ReplayReport {
    /// Dead letters matching the filter.
    pub matched: usize,
    /// Replayed now (0 on a dry run).
    pub replayed: usize,
    /// Replays that failed, with why.
    pub failed: Vec<(MessageId, String)>,
    /// Whether more matched than one call replays.
    pub truncated: bool,
}

/// The control layer.
pub struct Control {
    db: Db,
    platform: Platform,
    root: ActorRef<SupervisorMsg>,
    provisioner: SharedProvisioner,
    http: crate::producer::HttpClient,
    settings: ControlSettings,
    /// Bound: one entry per tenant owned by this node.
    tenants: RwLock<HashMap<TenantId, Arc<TenantEntry>>>,
}

/// An integration as the API shows it.
#[derive(Debug, Clone, serde::Serialize)]
pub struct IntegrationView {
    /// Owner.
    pub tenant_id: TenantId,
    /// The stored spec.
    #[serde(flatten)]
    pub spec: IntegrationSpec,
    /// Where to send webhooks.
    pub webhook_path: String,
    /// Creation time.
    pub created_at: String,
    /// Outcome counters on this node since it started.
    pub stats: IntegrationStats,
}

/// One NATS instance as the API shows it (the specification's shape).
#[derive(Debug, Clone, serde::Serialize)]
pub struct InstanceView {
    /// Client URL.
    pub url: String,
    /// 1-based number.
    pub instance_number: i32,
    /// `active`, `draining` or `terminated`.
    pub status: String,
    /// Integrations assigned to it.
    pub integration_count: i32,
}

/// Readiness of one tenant's NATS instances.
#[derive(Debug, Clone, serde::Serialize)]
pub struct TenantReadiness {
    /// Tenant.
    pub tenant_id: TenantId,
    /// Whether at least one instance is healthy and connected.
    pub nats_connected: bool,
    /// Each instance.
    pub instances: Vec<InstanceReadiness>,
}

/// Readiness of one instance.
#[derive(Debug, Clone, serde::Serialize)]
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
}

/// The path webhooks for an integration are posted to.
pub fn webhook_path(t: &TenantId, i: &IntegrationId) -> String {
    format!("/webhooks/{t}/{i}")
}

impl Control {
    /// A control layer over a running root supervisor. Call [`Control::load_all`] next.
    pub fn new(
        db: Db,
        platform: Platform,
        root: ActorRef<SupervisorMsg>,
        provisioner: SharedProvisioner,
        http: crate::producer::HttpClient,
        settings: ControlSettings,
    ) -> Self {
        Control {
            db,
            platform,
            root,
            provisioner,
            http,
            settings,
            tenants: RwLock::new(HashMap::new()),
        }
    }

    /// The metadata store.
    pub fn db(&self) -> &Db {
        &self.db
    }

    fn entry(&self, t: &TenantId) -> Option<Arc<TenantEntry>> {
        self.tenants.read().unwrap_or_else(|p| p.into_inner()).get(t).cloned()
    }

    fn entry_or_404(&self, t: &TenantId) -> Result<Arc<TenantEntry>, ControlError> {
        self.entry(t)
            .ok_or_else(|| ControlError::NotFound(format!("tenant {t} not found")))
    }

    /// Connects to an instance (the connection retries until it is up).
    async fn link(&self, t: &TenantId, row: &InstanceRow) -> Result<Arc<InstanceLink>, ControlError> {
        let url = row.url();
        let client = connect_tenant(
            std::slice::from_ref(&url),
            &format!("vrsky-{t}-{}", row.instance_number),
        )
        .await
        .map_err(|e| ControlError::Unavailable(format!("tenant {t} nats instance {}: {e}", row.instance_number)))?;
        Ok(Arc::new(InstanceLink {
            number: row.instance_number as u32,
            url,
            client,
            health: Arc::default(),
            accepting: std::sync::atomic::AtomicBool::new(true),
        }))
    }

    async fn wait_connected(&self, link: &InstanceLink) -> Result<(), ControlError> {
        let deadline = tokio::time::Instant::now() + self.settings.connect_timeout;
        while link.client.connection_state() != async_nats::connection::State::Connected {
            if tokio::time::Instant::now() >= deadline {
                return Err(ControlError::Unavailable(format!(
                    "nats instance {} not reachable",
                    link.url
                )));
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        Ok(())
    }

    /// Provisions one more NATS instance for a tenant, waits until it is running and
    /// connected, and moves the tenant's integrations onto the enlarged instance set.
    /// Nothing is left behind when it fails.
    pub async fn add_instance(&self, t: &TenantId) -> Result<InstanceView, ControlError> {
        let entry = self.entry_or_404(t)?;
        let _changing = entry.changes.lock().await;
        let rows = self.db.instances(t).await?;
        let active = rows.iter().filter(|r| r.status != "terminated").count();
        let max = self.settings.instances_per_tenant_max;
        if active >= max {
            return Err(ControlError::Conflict(format!(
                "tenant {t} has {active} nats instances, the limit is {max} (nats.instances_per_tenant_max)"
            )));
        }
        let number = rows.iter().map(|r| r.instance_number).max().unwrap_or(0) + 1;
        let dns_name = self
            .provisioner
            .endpoint(t, number as u32)
            .map_err(|e| ControlError::Unavailable(e.to_string()))?;
        let integrations = self.db.integrations(t).await?.len() as i32;
        self.db
            .insert_instance(t, number, &dns_name, integrations)
            .await
            .map_err(|e| match e {
                DbError::Conflict => {
                    ControlError::Conflict(format!("instance {number} of {t} was created concurrently; retry"))
                }
                other => other.into(),
            })?;
        let row = self
            .db
            .instances(t)
            .await?
            .into_iter()
            .find(|r| r.instance_number == number)
            .ok_or_else(|| ControlError::Internal(format!("instance {number} of {t} vanished")))?;
        if let Err(e) = self.start_instance(&entry, t, &row).await {
            warn!(tenant_id = %t, instance = number, error = %e, "instance start failed; rolling back");
            if let Ok(sup) = self.tenant_supervisor(t).await {
                let _ = sup.stop_child(&instance_child_name(t, number as u32)).await;
            }
            if let Some(link) = entry.ctx.instances.remove(number as u32) {
                tokio::spawn(async move { drop(link.client.drain().await) });
            }
            // Integrations may have been moved already: put them back on the old set.
            if let Err(again) = self.restart_integrations(&entry, t).await {
                warn!(tenant_id = %t, error = %again, "integrations not restored after a failed instance start");
            }
            self.db.delete_instance(t, number).await?;
            return Err(e);
        }
        info!(tenant_id = %t, instance = number, "nats instance added");
        Ok(InstanceView {
            url: row.url(),
            instance_number: row.instance_number,
            status: row.status,
            integration_count: row.integration_count,
        })
    }

    async fn start_instance(&self, entry: &TenantEntry, t: &TenantId, row: &InstanceRow) -> Result<(), ControlError> {
        let link = self.link(t, row).await?;
        link.accepting.store(false, std::sync::atomic::Ordering::Relaxed);
        entry.ctx.instances.insert(link.clone());
        let sup = self.tenant_supervisor(t).await?;
        let name = instance_child_name(t, row.instance_number as u32);
        sup.start_child(entry.ctx.instance_child(row).map_err(ControlError::Internal)?)
            .await?;
        if sup.child(&name).await?.is_none() {
            let why = sup
                .tree()
                .await?
                .find(&name)
                .and_then(|n| n.last_exit.clone())
                .unwrap_or_else(|| "not running".into());
            return Err(ControlError::Unavailable(format!(
                "nats instance {name} failed to start: {why}"
            )));
        }
        self.wait_connected(&link).await?;
        self.restart_integrations(entry, t).await?;
        link.accepting.store(true, std::sync::atomic::Ordering::Relaxed);
        Ok(())
    }

    /// Restarts every integration of a tenant on its current instance set (workers listen
    /// on every instance). Messages in flight meanwhile are re-driven.
    async fn restart_integrations(&self, entry: &TenantEntry, t: &TenantId) -> Result<(), ControlError> {
        let sup = self.tenant_supervisor(t).await?;
        for row in self.db.integrations(t).await? {
            let spec = parse_stored(&row).map_err(ControlError::Internal)?;
            let args = entry.ctx.integration_args(&spec, row.incarnation)?;
            sup.stop_child(&integration_child_name(&row.id)).await?;
            match sup.start_child(integration_spec(args)).await {
                Ok(_) | Err(SupervisorError::DuplicateChild(_)) => {}
                Err(e) => return Err(e.into()),
            }
        }
        Ok(())
    }

    /// Starts the subtree of every tenant in the store.
    pub async fn load_all(&self) -> Result<(), ControlError> {
        for row in self.db.tenants().await? {
            if let Err(e) = self.start_tenant(&row.id).await {
                // One broken tenant must not keep the others down.
                warn!(tenant_id = %row.id, error = %e, "tenant failed to start");
            }
        }
        Ok(())
    }

    async fn start_tenant(&self, t: &TenantId) -> Result<(), ControlError> {
        let instances = self.db.instances(t).await?;
        let set = Arc::new(InstanceSet::default());
        for row in instances.iter().filter(|r| r.status != "terminated") {
            set.insert(self.link(t, row).await?);
        }
        let ctx = TenantContext {
            tenant_id: t.clone(),
            db: self.db.clone(),
            instances: set.clone(),
            provisioner: self.provisioner.clone(),
            health_interval: self.settings.health_interval,
            http: self.http.clone(),
            allow_private_targets: self.settings.allow_private_targets,
            store: Arc::new(self.platform.clone()),
            counters: Arc::default(),
        };
        let source_ctx = ctx.clone();
        let args = SupervisorArgs {
            name: tenant_child_name(t),
            children: Arc::new(move || {
                let ctx = source_ctx.clone();
                Box::pin(async move { ctx.child_specs().await })
            }),
        };
        let mut routes = HashMap::new();
        for row in self.db.integrations(t).await? {
            if let Ok(spec) = parse_stored(&row) {
                routes.insert(row.id.clone(), Arc::new(route(t, &spec, &set, row.incarnation)));
            }
        }
        self.root.start_child(tenant_supervisor_spec(args)).await?;
        self.tenants.write().unwrap_or_else(|p| p.into_inner()).insert(
            t.clone(),
            Arc::new(TenantEntry {
                ctx,
                changes: tokio::sync::Mutex::new(()),
                routes: RwLock::new(routes),
            }),
        );
        // Every instance must be running before the tenant counts as started.
        let sup = self.tenant_supervisor(t).await?;
        for row in instances.iter().filter(|r| r.status != "terminated") {
            let name = instance_child_name(t, row.instance_number as u32);
            if sup.child(&name).await?.is_none() {
                let tree = sup.tree().await?;
                let why = tree
                    .find(&name)
                    .and_then(|n| n.last_exit.clone())
                    .unwrap_or_else(|| "not running".into());
                return Err(ControlError::Unavailable(format!(
                    "nats instance {name} failed to start: {why}"
                )));
            }
        }
        for link in set.links() {
            self.wait_connected(&link).await?;
        }
        info!(tenant_id = %t, instances = instances.len(), "tenant started");
        Ok(())
    }

    async fn stop_tenant_subtree(&self, t: &TenantId) {
        if let Ok(false) | Err(_) = self.root.stop_child(&tenant_child_name(t)).await {
            warn!(tenant_id = %t, "tenant subtree was not running");
        }
        if let Some(entry) = self.tenants.write().unwrap_or_else(|p| p.into_inner()).remove(t) {
            for link in entry.ctx.instances.links() {
                let client = link.client.clone();
                tokio::spawn(async move { drop(client.drain().await) });
            }
        }
    }

    /// Creates a tenant and starts its first NATS instance. Nothing is left behind when
    /// the instance fails to start.
    pub async fn create_tenant(&self, t: &TenantId, name: &str) -> Result<TenantRow, ControlError> {
        if name.trim().is_empty() || name.len() > 255 {
            return Err(ControlError::Invalid {
                field: "name".into(),
                message: "must be 1 to 255 characters".into(),
            });
        }
        if self.db.tenant(t).await?.is_some() {
            return Err(ControlError::Conflict(format!("tenant {t} already exists")));
        }
        let dns_name = self.provisioner.endpoint(t, 1).map_err(|e| ControlError::Invalid {
            field: "id".into(),
            message: e.to_string(),
        })?;
        self.db.create_tenant(t, name, &dns_name).await.map_err(|e| match e {
            DbError::Conflict => ControlError::Conflict(format!("tenant {t} already exists")),
            other => other.into(),
        })?;
        if let Err(e) = self.start_tenant(t).await {
            warn!(tenant_id = %t, error = %e, "tenant start failed; rolling back");
            self.stop_tenant_subtree(t).await;
            self.db.delete_tenant(t).await?;
            return Err(e);
        }
        self.db
            .tenant(t)
            .await?
            .ok_or_else(|| ControlError::Internal(format!("tenant {t} vanished after creation")))
    }

    /// Deletes a tenant: stops its subtree (and so its NATS instances) and its metadata.
    pub async fn delete_tenant(&self, t: &TenantId) -> Result<(), ControlError> {
        if self.db.tenant(t).await?.is_none() {
            return Err(ControlError::NotFound(format!("tenant {t} not found")));
        }
        let rows = self.db.instances(t).await?;
        self.stop_tenant_subtree(t).await;
        for row in &rows {
            let spec = InstanceSpec {
                tenant_id: t.clone(),
                instance_number: row.instance_number as u32,
                client_port: local_port(&row.dns_name).unwrap_or(4222),
            };
            if let Err(e) = self.provisioner.decommission(spec).await {
                warn!(tenant_id = %t, instance = row.instance_number, error = %e, "decommission failed");
            }
        }
        self.platform.purge_tenant(t).await?;
        self.db.delete_tenant(t).await?;
        Ok(())
    }

    /// One tenant.
    pub async fn tenant(&self, t: &TenantId) -> Result<TenantRow, ControlError> {
        self.db
            .tenant(t)
            .await?
            .ok_or_else(|| ControlError::NotFound(format!("tenant {t} not found")))
    }

    /// All tenants.
    pub async fn tenants(&self) -> Result<Vec<TenantRow>, ControlError> {
        Ok(self.db.tenants().await?)
    }

    /// The running supervisor of a tenant.
    pub async fn tenant_supervisor(&self, t: &TenantId) -> Result<ActorRef<SupervisorMsg>, ControlError> {
        self.entry_or_404(t)?;
        let cell = self
            .root
            .child(&tenant_child_name(t))
            .await?
            .ok_or_else(|| ControlError::Unavailable(format!("tenant {t} is restarting; retry shortly")))?;
        Ok(cell.into())
    }

    /// The running IntegrationActor of an integration, if it runs now.
    pub async fn integration_cell(&self, t: &TenantId, i: &IntegrationId) -> Result<Option<ActorCell>, ControlError> {
        Ok(self
            .tenant_supervisor(t)
            .await?
            .child(&integration_child_name(i))
            .await?)
    }

    /// Creates an integration and starts its actor.
    pub async fn create_integration(
        &self,
        t: &TenantId,
        spec: IntegrationSpec,
    ) -> Result<IntegrationView, ControlError> {
        let entry = self.entry_or_404(t)?;
        spec.validate()?;
        spec.retry.validate(self.platform.settings().retention())?;
        let _changing = entry.changes.lock().await;
        // A new life of this id: messages an earlier integration of the same id left
        // unfinished are not delivered by this one (see `MessageState::incarnation`).
        let incarnation = new_incarnation(now_ms());
        let args = entry.ctx.integration_args(&spec, incarnation)?;
        let json = serde_json::to_string(&spec).map_err(|e| ControlError::Internal(e.to_string()))?;
        // Issue 2 runs one instance per tenant; placement across instances comes with scaling.
        self.db
            .create_integration(t, &spec.id, &json, incarnation)
            .await
            .map_err(|e| match e {
                DbError::Conflict => {
                    ControlError::Conflict(format!("integration {} already exists in tenant {t}", spec.id))
                }
                other => other.into(),
            })?;
        let started: Result<(), ControlError> = async {
            let sup = self.tenant_supervisor(t).await?;
            match sup.start_child(integration_spec(args.clone())).await {
                Ok(_) => Ok(()),
                // The supervisor restarted meanwhile and started a worker from the store,
                // perhaps one of an earlier integration of this id: replace it with ours.
                Err(SupervisorError::DuplicateChild(_)) => {
                    sup.stop_child(&integration_child_name(&spec.id)).await?;
                    sup.start_child(integration_spec(args)).await?;
                    Ok(())
                }
                Err(e) => Err(e.into()),
            }
        }
        .await;
        if let Err(e) = started {
            warn!(tenant_id = %t, integration_id = %spec.id, error = %e, "integration start failed; rolling back");
            self.db.delete_integration(t, &spec.id).await?;
            return Err(e);
        }
        entry.routes.write().unwrap_or_else(|p| p.into_inner()).insert(
            spec.id.clone(),
            Arc::new(route(t, &spec, &entry.ctx.instances, incarnation)),
        );
        info!(tenant_id = %t, integration_id = %spec.id, "integration created");
        self.integration(t, &spec.id).await
    }

    /// Deletes an integration and stops its actor.
    pub async fn delete_integration(&self, t: &TenantId, i: &IntegrationId) -> Result<(), ControlError> {
        let entry = self.entry_or_404(t)?;
        let _changing = entry.changes.lock().await;
        if !self.db.delete_integration(t, i).await? {
            return Err(ControlError::NotFound(format!(
                "integration {i} not found in tenant {t}"
            )));
        }
        entry.routes.write().unwrap_or_else(|p| p.into_inner()).remove(i);
        if let Ok(sup) = self.tenant_supervisor(t).await {
            sup.stop_child(&integration_child_name(i)).await?;
        }
        // An integration created later under this id starts its counts from zero.
        entry.ctx.counters.lock().unwrap_or_else(|p| p.into_inner()).remove(i);
        info!(tenant_id = %t, integration_id = %i, "integration deleted");
        Ok(())
    }

    /// One integration with its counters.
    pub async fn integration(&self, t: &TenantId, i: &IntegrationId) -> Result<IntegrationView, ControlError> {
        let entry = self.entry_or_404(t)?;
        let row = self
            .db
            .integration(t, i)
            .await?
            .ok_or_else(|| ControlError::NotFound(format!("integration {i} not found in tenant {t}")))?;
        self.view(&entry, row)
    }

    /// A tenant's integrations.
    pub async fn integrations(&self, t: &TenantId) -> Result<Vec<IntegrationView>, ControlError> {
        let entry = self.entry_or_404(t)?;
        self.db
            .integrations(t)
            .await?
            .into_iter()
            .map(|row| self.view(&entry, row))
            .collect()
    }

    fn view(&self, entry: &TenantEntry, row: IntegrationRow) -> Result<IntegrationView, ControlError> {
        let spec = parse_stored(&row).map_err(ControlError::Internal)?;
        Ok(IntegrationView {
            webhook_path: webhook_path(&row.tenant_id, &row.id),
            stats: entry.ctx.counters(&row.id).snapshot(),
            tenant_id: row.tenant_id,
            created_at: row.created_at,
            spec,
        })
    }

    /// A tenant's NATS instances that are healthy and not terminated (discovery).
    pub async fn nats_instances(&self, t: &TenantId) -> Result<Vec<InstanceView>, ControlError> {
        let entry = self.entry_or_404(t)?;
        let links = entry.ctx.instances.links();
        Ok(self
            .db
            .instances(t)
            .await?
            .into_iter()
            .filter(|r| r.status != "terminated")
            .filter(|r| links.iter().any(|l| l.number == r.instance_number as u32 && l.usable()))
            .map(|r| InstanceView {
                url: r.url(),
                instance_number: r.instance_number,
                status: r.status,
                integration_count: r.integration_count,
            })
            .collect())
    }

    /// Where a webhook goes, from the in-memory routing table (no store round trip).
    pub fn route(&self, t: &TenantId, i: &IntegrationId) -> Result<Arc<Route>, ControlError> {
        let entry = self.entry_or_404(t)?;
        let routes = entry.routes.read().unwrap_or_else(|p| p.into_inner());
        routes
            .get(i)
            .cloned()
            .ok_or_else(|| ControlError::NotFound(format!("integration {i} not found in tenant {t}")))
    }

    /// The live supervision tree.
    pub async fn tree(&self) -> Result<TreeNode, ControlError> {
        Ok(self.root.tree().await?)
    }

    /// NATS connectivity of every tenant on this node, per instance.
    pub fn readiness(&self) -> Vec<TenantReadiness> {
        let tenants = self.tenants.read().unwrap_or_else(|p| p.into_inner());
        let mut out: Vec<_> = tenants
            .iter()
            .map(|(t, e)| {
                let instances: Vec<InstanceReadiness> = e
                    .ctx
                    .instances
                    .links()
                    .iter()
                    .map(|l| InstanceReadiness {
                        instance_number: l.number,
                        url: l.url.clone(),
                        healthy: l.health.is_healthy(),
                        nats_connected: l.client.connection_state() == async_nats::connection::State::Connected,
                        reason: l.health.reason(),
                    })
                    .collect();
                TenantReadiness {
                    tenant_id: t.clone(),
                    nats_connected: instances.iter().any(|i| i.healthy && i.nats_connected),
                    instances,
                }
            })
            .collect();
        out.sort_by(|a, b| a.tenant_id.cmp(&b.tenant_id));
        out
    }

    /// Stops every subtree (and so every tenant nats-server).
    pub async fn shutdown(&self) {
        let _ = self
            .root
            .stop_and_wait(Some("runtime shutting down".into()), Some(Duration::from_secs(15)))
            .await;
        self.tenants.write().unwrap_or_else(|p| p.into_inner()).clear();
    }
}

fn route(t: &TenantId, spec: &IntegrationSpec, instances: &Arc<InstanceSet>, incarnation: u64) -> Route {
    let ProducerSpec::Http(http) = &spec.producer;
    Route {
        subject: subjects::integration_inbox(t, &spec.id),
        consumer: WebhookConsumer::new(&spec.consumer.forward_headers),
        instances: instances.clone(),
        retry: spec.retry,
        timeout_ms: http.timeout_ms,
        incarnation,
    }
}

impl Control {
    /// The platform state.
    pub fn platform(&self) -> &Platform {
        &self.platform
    }

    /// A message's state. After the state TTL, a dead letter still answers from the
    /// dead-letter queue.
    pub async fn message(&self, t: &TenantId, id: &MessageId) -> Result<MessageView, ControlError> {
        self.entry_or_404(t)?;
        if let Some(stored) = self.platform.load(t, id).await? {
            return Ok(MessageView::of(&stored.state));
        }
        match self.platform.dead_letter(t, id).await? {
            Some(d) => Ok(MessageView::of(&d.state)),
            None => Err(ControlError::NotFound(format!("message {id} not found in tenant {t}"))),
        }
    }

    /// A page of a tenant's dead letters, newest first.
    pub async fn dead_letters(
        &self,
        t: &TenantId,
        limit: usize,
        cursor: Option<u64>,
    ) -> Result<(Vec<DeadLetterSummary>, Option<u64>), ControlError> {
        self.entry_or_404(t)?;
        Ok(self.platform.dead_letters(t, None, limit, cursor).await?)
    }

    /// One dead letter with its payload.
    pub async fn dead_letter(&self, t: &TenantId, id: &MessageId) -> Result<DeadLetterView, ControlError> {
        self.entry_or_404(t)?;
        let d = self
            .platform
            .dead_letter(t, id)
            .await?
            .ok_or_else(|| ControlError::NotFound(format!("dead letter {id} not found in tenant {t}")))?;
        let text = std::str::from_utf8(&d.envelope.payload).ok().map(str::to_owned);
        Ok(DeadLetterView {
            message: MessageView::of(&d.state),
            attempts: d.state.attempts.clone(),
            headers: d.envelope.headers.clone(),
            content_type: d.envelope.content_type.clone(),
            payload_base64: if text.is_none() {
                Some(base64(&d.envelope.payload))
            } else {
                None
            },
            payload: text,
            payload_bytes: d.envelope.payload.len(),
        })
    }

    /// Deletes a dead letter.
    pub async fn delete_dead_letter(&self, t: &TenantId, id: &MessageId) -> Result<(), ControlError> {
        self.entry_or_404(t)?;
        if self.platform.delete_dead_letter(t, id).await? {
            Ok(())
        } else {
            Err(ControlError::NotFound(format!(
                "dead letter {id} not found in tenant {t}"
            )))
        }
    }

    /// Replays a dead letter: same message id, attempts start over, delivered by the
    /// integration that now has its id (also when that is a newer one of the same id).
    pub async fn replay(&self, t: &TenantId, id: &MessageId) -> Result<(), ControlError> {
        self.entry_or_404(t)?;
        let d = self
            .platform
            .dead_letter(t, id)
            .await?
            .ok_or_else(|| ControlError::NotFound(format!("dead letter {id} not found in tenant {t}")))?;
        let integration = d.state.integration_id.clone();
        let route = self.route(t, &integration).map_err(|_| {
            ControlError::Conflict(format!("integration {integration} of message {id} no longer exists"))
        })?;
        // The dead letter has the envelope: a replayed message is stored with it again.
        let committer = Committer {
            store: &self.platform,
            publisher: Some(self),
            policy: &route.retry,
        };
        match self.platform.load(t, id).await? {
            Some(Stored {
                state, revision: rev, ..
            }) => {
                if state.status != Status::DeadLetter {
                    return Err(ControlError::Conflict(format!(
                        "message {id} is {}, not dead-lettered",
                        state.status.as_str()
                    )));
                }
                match committer
                    .commit(
                        &state,
                        rev,
                        &Event::Replay {
                            incarnation: route.incarnation,
                        },
                        Some(&d.record),
                        now_ms(),
                    )
                    .await?
                {
                    Committed::Written(..) => {}
                    Committed::Conflict | Committed::Illegal(_) => {
                        return Err(ControlError::Conflict(format!(
                            "message {id} changed meanwhile; try again"
                        )));
                    }
                }
            }
            None => {
                let mut fresh = MessageState::received(id.clone(), t.clone(), integration, d.state.created_at_ms);
                fresh.updated_at_ms = now_ms();
                fresh.incarnation = route.incarnation;
                let (stored, rev) = self
                    .platform
                    .recreate(&fresh, &d.record)
                    .await?
                    .ok_or_else(|| ControlError::Conflict(format!("message {id} changed meanwhile; try again")))?;
                if let Err(e) = self.publish(&fresh, stored, rev).await {
                    warn!(message_id = %id, error = %e, "replay publish failed; re-drive will retry");
                }
            }
        }
        // Exactly the entry replayed: a new one (the replay failed again at once) stays.
        self.platform.delete_dead_letter_at(d.sequence).await?;
        info!(tenant_id = %t, message_id = %id, "dead letter replayed");
        Ok(())
    }

    /// Replays (or, with `dry_run`, counts) the dead letters matching a filter.
    pub async fn replay_matching(&self, t: &TenantId, f: &ReplayFilter) -> Result<ReplayReport, ControlError> {
        self.entry_or_404(t)?;
        let all = self.platform.scan_dead_letters(t).await?;
        let matching: Vec<_> = all
            .into_iter()
            .filter(|d| f.integration_id.as_ref().is_none_or(|i| d.integration_id == i.as_str()))
            .filter(|d| f.since_ms.is_none_or(|s| d.dead_at_ms >= s))
            .filter(|d| f.until_ms.is_none_or(|u| d.dead_at_ms < u))
            .collect();
        let mut report = ReplayReport {
            matched: matching.len(),
            replayed: 0,
            failed: Vec::new(),
            truncated: matching.len() > BULK_REPLAY_MAX,
        };
        if f.dry_run {
            return Ok(report);
        }
        for d in matching.into_iter().take(BULK_REPLAY_MAX) {
            match self.replay(t, &d.message_id).await {
                Ok(()) => report.replayed += 1,
                Err(e) => report.failed.push((d.message_id, e.to_string())),
            }
        }
        Ok(report)
    }
}

impl TenantPublisher for Control {
    /// Publishes on the next instance of the message's tenant.
    fn publish<'a>(
        &'a self,
        state: &'a MessageState,
        stored: bytes::Bytes,
        revision: u64,
    ) -> futures::future::BoxFuture<'a, Result<(), StoreError>> {
        Box::pin(async move {
            let route = self
                .route(&state.tenant_id, &state.integration_id)
                .map_err(|e| StoreError(e.to_string()))?;
            route.publish(stored, revision).await
        })
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn formats_rfc3339() {
        assert_eq!(super::rfc3339(0), "1970-01-01T00:00:00.000Z");
        assert_eq!(super::rfc3339(1_764_186_645_123), "2025-11-26T19:50:45.123Z");
        assert_eq!(super::rfc3339(951_782_400_000), "2000-02-29T00:00:00.000Z");
    }

    #[test]
    fn encodes_base64() {
        assert_eq!(super::base64(b""), "");
        assert_eq!(super::base64(b"f"), "Zg==");
        assert_eq!(super::base64(b"fo"), "Zm8=");
        assert_eq!(super::base64(b"foo"), "Zm9v");
        assert_eq!(super::base64(&[0xff, 0x00, 0x10, 0x80]), "/wAQgA==");
    }
}
