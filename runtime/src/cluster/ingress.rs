//! Ingress for tenants other nodes run. In a cluster a webhook for any tenant is stored by
//! the node that receives it: its `received` state goes to the platform JetStream (every
//! node's) before the 202, and it is published on the tenant's NATS (every node reaches
//! it), where only the owner's workers consume. The durable write never waits for the
//! owner, so a webhook sent during a fail-over is stored at once.
//!
//! What a route needs (the consumer settings and secret, the incarnation, the instances)
//! is read from the metadata store and kept for [`FRESH`]; past it the next webhook
//! triggers a reload in the background and is served from what was read, up to
//! [`STALE_MAX`], after which it waits for the reload. An integration not found is looked
//! up again once [`MISS_RELOAD`] has passed, so one created a moment ago on its owner is
//! found. Each instance gets one publishing connection (the tenant's `ingress` user, which
//! may publish on its inboxes and nothing else).
//!
//! The node that stored a message keeps it in its re-drive index while it is `received`
//! and publishes it again when it is overdue (`scheduler/redrive.rs`); once the owner claimed it,
//! the owner tracks it. If the storing node dies first, every owner scans its tenants
//! again when it sees a node leave (`actor.rs`).

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use arc_swap::ArcSwapOption;
use futures::future::BoxFuture;
use tracing::{debug, warn};

use vrsky_actors::components::{ProducerSpec, WebhookConsumer};
use vrsky_actors::integration::IntegrationCounters;
use vrsky_actors::tenant::InstanceStatus;
use vrsky_actors::{IntegrationId, TenantId, subjects};

use crate::control::tenant::{instance_model, integration_model};
use crate::control::{RemoteRoutes, Route, RouteError, TenantDeps};
use crate::instances::{InstanceLink, InstanceSet};
use crate::nats::connect_tenant;
use crate::nats::trust::Role;

/// How long what was read about a tenant is used as it is.
pub const FRESH: Duration = Duration::from_secs(1);
/// Longest what was read is used while a reload runs; past it a webhook waits for one.
pub const STALE_MAX: Duration = Duration::from_secs(10);
/// An integration not found is looked up again after this (one created a moment ago).
pub const MISS_RELOAD: Duration = Duration::from_millis(100);
/// Longest a webhook waits for another caller's read of the tenant's settings.
const LOAD_WAIT_MAX: Duration = Duration::from_secs(5);
/// A tenant this node took no webhook for in this long is forgotten (its connections
/// closed) at the next reload of another.
const IDLE_MAX: Duration = Duration::from_secs(300);
/// How long the first load waits for its connections, so the first webhook's publish
/// finds one (one that is not up by then is used once it is; a message published
/// nowhere is re-driven).
const FIRST_CONNECT_WAIT: Duration = Duration::from_millis(1_000);

/// What was read about one tenant.
struct Loaded {
    at: Instant,
    routes: HashMap<IntegrationId, Arc<Route>>,
}

/// One tenant's entry.
#[derive(Default)]
struct Slot {
    loaded: ArcSwapOption<Loaded>,
    /// One load at a time.
    loading: tokio::sync::Mutex<()>,
    /// A background reload is under way.
    refreshing: AtomicBool,
    /// This node's connections to the tenant's instances, kept across reloads.
    instances: Arc<InstanceSet>,
    /// When a webhook last used it (ms since this process started).
    used_ms: AtomicU64,
    /// The last load that failed, and when it began: callers that asked before it ended
    /// get its error instead of each trying again in turn.
    failed: Mutex<Option<(Instant, RouteError)>>,
}

struct Inner {
    deps: Arc<TenantDeps>,
    node: String,
    started: Instant,
    /// Bound: one per tenant this node took webhooks for in the last [`IDLE_MAX`].
    tenants: Mutex<HashMap<TenantId, Arc<Slot>>>,
    /// Bound: one per integration of the tenants this node routed webhooks for; they
    /// outlive reloads (and deleted integrations: a node's series never goes backwards).
    counters: Mutex<HashMap<(TenantId, IntegrationId), Arc<IntegrationCounters>>>,
}

/// The routes to other nodes' tenants.
#[derive(Clone)]
pub struct RemoteIngress {
    inner: Arc<Inner>,
}

impl std::fmt::Debug for RemoteIngress {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RemoteIngress").field("node", &self.inner.node).finish()
    }
}

fn unavailable(t: &TenantId, e: impl std::fmt::Display) -> RouteError {
    RouteError::Starting(format!(
        "tenant {t}'s settings could not be read here ({e}); retry shortly"
    ))
}

impl RemoteIngress {
    /// Routes built from `deps` (the metadata store, the trust store, the wire key) for
    /// node `node`.
    pub fn new(deps: Arc<TenantDeps>, node: String) -> Self {
        RemoteIngress {
            inner: Arc::new(Inner {
                deps,
                node,
                started: Instant::now(),
                tenants: Mutex::default(),
                counters: Mutex::default(),
            }),
        }
    }

    fn slot(&self, t: &TenantId) -> Arc<Slot> {
        let mut tenants = self.inner.tenants.lock().unwrap_or_else(|p| p.into_inner());
        let slot = tenants.entry(t.clone()).or_default().clone();
        slot.used_ms
            .store(self.inner.started.elapsed().as_millis() as u64, Ordering::Relaxed);
        slot
    }

    async fn find(&self, t: &TenantId, i: &IntegrationId) -> Result<Arc<Route>, RouteError> {
        let slot = self.slot(t);
        let missing = || RouteError::NotFound(format!("integration {i} not found in tenant {t}"));
        if let Some(l) = slot.loaded.load_full() {
            let age = l.at.elapsed();
            match l.routes.get(i) {
                Some(r) if age < FRESH => return Ok(r.clone()),
                Some(r) if age < STALE_MAX => {
                    self.refresh_in_background(t, &slot);
                    return Ok(r.clone());
                }
                None if age < MISS_RELOAD => return Err(missing()),
                _ => {}
            }
        }
        let l = self.reload(t, &slot).await?;
        l.routes.get(i).cloned().ok_or_else(missing)
    }

    fn refresh_in_background(&self, t: &TenantId, slot: &Arc<Slot>) {
        if slot.refreshing.swap(true, Ordering::AcqRel) {
            return;
        }
        let (this, t, slot) = (self.clone(), t.clone(), slot.clone());
        tokio::spawn(async move {
            if let Err(e) = this.reload(&t, &slot).await {
                debug!(tenant_id = %t, error = ?e, "remote ingress: reload failed; serving what was read");
            }
            slot.refreshing.store(false, Ordering::Release);
        });
    }

    /// Reads the tenant again (unless another caller just did).
    async fn reload(&self, t: &TenantId, slot: &Arc<Slot>) -> Result<Arc<Loaded>, RouteError> {
        let asked = Instant::now();
        let _one = match tokio::time::timeout(LOAD_WAIT_MAX, slot.loading.lock()).await {
            Ok(guard) => guard,
            Err(_) => return Err(unavailable(t, "another read of its settings is still under way")),
        };
        if let Some(l) = slot.loaded.load_full()
            && l.at >= asked
        {
            return Ok(l);
        }
        if let Some((at, e)) = &*slot.failed.lock().unwrap_or_else(|p| p.into_inner())
            && *at >= asked
        {
            return Err(e.clone());
        }
        let first = slot.loaded.load().is_none();
        let began = Instant::now();
        let loaded = match self.load(t, slot, first).await {
            Ok(l) => Arc::new(l),
            Err(e) => {
                *slot.failed.lock().unwrap_or_else(|p| p.into_inner()) = Some((began, e.clone()));
                return Err(e);
            }
        };
        slot.loaded.store(Some(loaded.clone()));
        self.sweep();
        Ok(loaded)
    }

    async fn load(&self, t: &TenantId, slot: &Slot, first: bool) -> Result<Loaded, RouteError> {
        let deps = &self.inner.deps;
        let at = Instant::now();
        let rows = deps.db.integrations(t).await.map_err(|e| unavailable(t, e))?;
        let instance_rows = deps.db.instances(t).await.map_err(|e| unavailable(t, e))?;
        let mut active = Vec::new();
        for row in &instance_rows {
            let m = instance_model(row).map_err(|e| unavailable(t, e))?;
            if m.status == InstanceStatus::Active {
                active.push(m);
            }
        }
        // Users rotated by the owner are minted again here; the connections' auth callback
        // uses them at their next (re)connect.
        let (account, _) = deps.trust.refresh(t).await.map_err(|e| unavailable(t, e))?;
        let set = &slot.instances;
        for old in set.links() {
            if !active
                .iter()
                .any(|m| m.number == old.number && m.endpoint.url() == old.url)
                && let Some(link) = set.remove(old.number)
            {
                tokio::spawn(async move { link.drain().await });
            }
        }
        for m in &active {
            let url = m.endpoint.url();
            if set.links().iter().any(|l| l.number == m.number && l.url == url) {
                continue;
            }
            let name = format!("vrsky-{t}-{}-ingress@{}", m.number, self.inner.node);
            let options = deps.trust.tenant_options(&account, Role::Ingress);
            // Publish-only: nothing is subscribed, so slow consumers cannot happen.
            let client = match connect_tenant(options, std::slice::from_ref(&url), &name, 1, Arc::new(|| {})).await {
                Ok(c) => c,
                Err(e) => {
                    warn!(tenant_id = %t, instance = m.number, error = %e, "remote ingress: instance not connected");
                    continue;
                }
            };
            let health = Arc::new(vrsky_actors::nats_instance::InstanceHealth::new());
            // The owner probes the instance; here the connection's state is the health.
            health.set(true, None);
            set.insert(Arc::new(InstanceLink {
                number: m.number,
                url,
                // One publish-only client; `connected()` checks both fields.
                publisher: client.clone(),
                subscriber: client,
                health,
                accepting: AtomicBool::new(true),
                slow_consumers: Arc::default(),
                auth_events: None,
            }));
        }
        if first {
            let deadline = Instant::now() + FIRST_CONNECT_WAIT;
            while !set.any_usable() && !active.is_empty() && Instant::now() < deadline {
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        }
        let mut routes = HashMap::new();
        for row in &rows {
            let m = match integration_model(row, &deps.sealer) {
                Ok(m) => m,
                Err(e) => {
                    warn!(tenant_id = %t, integration_id = %row.id, error = %e, "remote ingress: integration not routed");
                    continue;
                }
            };
            let consumer = match WebhookConsumer::from_spec(&m.spec.consumer) {
                Ok(c) => c,
                Err(e) => {
                    warn!(tenant_id = %t, integration_id = %row.id, error = %e, "remote ingress: integration not routed");
                    continue;
                }
            };
            let ProducerSpec::Http(http) = &m.spec.producer;
            let route = Route {
                subject: subjects::integration_inbox(t, &m.spec.id),
                consumer,
                instances: slot.instances.clone(),
                retry: m.spec.retry,
                timeout_ms: http.timeout_ms,
                incarnation: m.incarnation,
                counters: self.counters_of(t, &m.spec.id),
                wire_key: deps.wire_key.clone(),
            };
            routes.insert(m.spec.id.clone(), Arc::new(route));
        }
        Ok(Loaded { at, routes })
    }

    fn counters_of(&self, t: &TenantId, i: &IntegrationId) -> Arc<IntegrationCounters> {
        let mut counters = self.inner.counters.lock().unwrap_or_else(|p| p.into_inner());
        counters.entry((t.clone(), i.clone())).or_default().clone()
    }

    /// Forgets tenants idle for [`IDLE_MAX`], closing their connections.
    fn sweep(&self) {
        let now = self.inner.started.elapsed().as_millis() as u64;
        let idle = IDLE_MAX.as_millis() as u64;
        let gone: Vec<Arc<Slot>> = {
            let mut tenants = self.inner.tenants.lock().unwrap_or_else(|p| p.into_inner());
            let ids: Vec<TenantId> = tenants
                .iter()
                .filter(|(_, s)| now.saturating_sub(s.used_ms.load(Ordering::Relaxed)) > idle)
                .map(|(t, _)| t.clone())
                .collect();
            ids.iter().filter_map(|t| tenants.remove(t)).collect()
        };
        for slot in gone {
            for link in slot.instances.links() {
                tokio::spawn(async move { link.drain().await });
            }
        }
    }
}

impl RemoteRoutes for RemoteIngress {
    fn route<'a>(&'a self, t: &'a TenantId, i: &'a IntegrationId) -> BoxFuture<'a, Result<Arc<Route>, RouteError>> {
        Box::pin(self.find(t, i))
    }

    fn counters(&self, t: &TenantId, i: &IntegrationId) -> Option<Arc<IntegrationCounters>> {
        let counters = self.inner.counters.lock().unwrap_or_else(|p| p.into_inner());
        counters.get(&(t.clone(), i.clone())).cloned()
    }

    fn close(&self) -> BoxFuture<'_, ()> {
        Box::pin(async move {
            let slots: Vec<Arc<Slot>> = {
                let mut tenants = self.inner.tenants.lock().unwrap_or_else(|p| p.into_inner());
                tenants.drain().map(|(_, s)| s).collect()
            };
            let links: Vec<Arc<InstanceLink>> = slots.iter().flat_map(|s| s.instances.links()).collect();
            futures::future::join_all(links.iter().map(|l| l.drain())).await;
        })
    }

    fn accepted(&self) -> Vec<(TenantId, IntegrationId, u64)> {
        let counters = self.inner.counters.lock().unwrap_or_else(|p| p.into_inner());
        let mut out: Vec<_> = counters
            .iter()
            .map(|((t, i), c)| (t.clone(), i.clone(), c.accepted.load(Ordering::Relaxed)))
            .collect();
        out.sort();
        out
    }
}
