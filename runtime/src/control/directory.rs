//! The routing snapshot: what each TenantActor publishes for the paths that must not wait
//! on a mailbox (the webhook, the RetryScheduler). Readers load an immutable map with one
//! atomic load (`arc-swap`); only a tenant's own actor (and tenant creation and deletion)
//! replaces its entry.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use arc_swap::ArcSwap;
use bytes::Bytes;
use futures::FutureExt;
use futures::future::BoxFuture;

use vrsky_actors::components::WebhookConsumer;
use vrsky_actors::integration::IntegrationCounters;
use vrsky_actors::message::{MessageState, RetryPolicy, StoreError, StoreErrorKind, TenantPublisher};
use vrsky_actors::telemetry::Hop;
use vrsky_actors::{IntegrationId, TenantId, wire};

use super::error::ControlError;
use crate::instances::InstanceSet;

/// Longest a publish on a tenant's NATS may wait for the client's buffer. A tenant whose
/// server is down (or stopped) fills its client's buffer; past this the publish is given
/// up and the re-driver publishes the message again later, so one tenant's broken NATS
/// never holds a webhook or a scheduler task of another.
pub const PUBLISH_TIMEOUT: Duration = Duration::from_millis(500);

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
    /// The integration's counters; ingress reads its `unfinished` gauge (admission).
    pub counters: Arc<IntegrationCounters>,
    /// Signs what is published (see `vrsky_actors::wire`).
    pub wire_key: vrsky_actors::wire::WireKey,
}

impl Route {
    /// Publishes a stored message (written at `revision`) on the tenant's next usable
    /// instance, waiting at most [`PUBLISH_TIMEOUT`] for the client's buffer. With no
    /// usable instance nothing is published: the re-driver publishes it once one is back.
    /// `hop` is the publish's span (its `traceparent` travels in the headers).
    pub async fn publish(&self, stored: Bytes, revision: u64, hop: Hop) -> Result<(), StoreError> {
        let done = match self.try_publish(stored.clone(), revision, hop.traceparent()) {
            Some(done) => done,
            None => self.publish_bounded(stored, revision, hop.traceparent()).await,
        };
        hop.end(done.as_ref().err().map(|e| e.to_string()).as_deref());
        done
    }

    /// Publishes without waiting, for a caller that will not wait (the webhook after its
    /// 202): done at once when the client's buffer has room, as it has unless the tenant's
    /// server is stuck; otherwise a task waits for it, at most [`PUBLISH_TIMEOUT`].
    pub fn publish_detached(
        self: Arc<Self>,
        stored: Bytes,
        revision: u64,
        hop: Hop,
        on_failure: impl FnOnce(StoreError) + Send + 'static,
    ) {
        match self.try_publish(stored.clone(), revision, hop.traceparent()) {
            Some(Ok(())) => hop.end(None),
            Some(Err(e)) => {
                hop.end(Some(&e.to_string()));
                on_failure(e);
            }
            None => {
                tokio::spawn(async move {
                    match self.publish_bounded(stored, revision, hop.traceparent()).await {
                        Ok(()) => hop.end(None),
                        Err(e) => {
                            hop.end(Some(&e.to_string()));
                            on_failure(e);
                        }
                    }
                });
            }
        }
    }

    /// The publish if it completes without waiting (no timer, no task): `None` when the
    /// client's buffer is full.
    fn try_publish(&self, stored: Bytes, revision: u64, traceparent: Option<&str>) -> Option<Result<(), StoreError>> {
        let link = match self.instances.pick_usable() {
            Some(l) => l,
            None => return Some(Err(no_route())),
        };
        let (headers, payload) = wire::encode(&self.wire_key, stored, revision, traceparent);
        link.publisher
            .publish_with_headers(self.subject.clone(), headers, payload)
            .now_or_never()
            .map(|r| r.map_err(|e| StoreError::caused(StoreErrorKind::Unavailable, e)))
    }

    async fn publish_bounded(&self, stored: Bytes, revision: u64, traceparent: Option<&str>) -> Result<(), StoreError> {
        let link = self.instances.pick_usable().ok_or_else(no_route)?;
        let (headers, payload) = wire::encode(&self.wire_key, stored, revision, traceparent);
        match tokio::time::timeout(
            PUBLISH_TIMEOUT,
            link.publisher
                .publish_with_headers(self.subject.clone(), headers, payload),
        )
        .await
        {
            Ok(Ok(())) => Ok(()),
            Ok(Err(e)) => Err(StoreError::caused(StoreErrorKind::Unavailable, e)),
            Err(_) => Err(StoreError::new(
                StoreErrorKind::Unavailable,
                format!(
                    "nats instance {} did not take the publish within {} ms; left for re-drive",
                    link.url,
                    PUBLISH_TIMEOUT.as_millis()
                ),
            )),
        }
    }
}

fn no_route() -> StoreError {
    StoreError::new(
        StoreErrorKind::NoRoute,
        "no usable nats instance of the tenant; left for re-drive",
    )
}

/// Where a tenant's subtree is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TenantPhase {
    /// Its TenantActor is starting it (at boot, after a failure, or on creation); the
    /// reason of the last failed start, if any.
    Starting(Option<String>),
    /// Every instance runs and every integration listens.
    Running,
}

/// One tenant as the snapshot shows it.
#[derive(Debug, Clone)]
pub struct TenantSnapshot {
    /// Where its subtree is.
    pub phase: TenantPhase,
    /// Routes by integration. Bound: one per integration of the tenant.
    pub routes: HashMap<IntegrationId, Arc<Route>>,
    /// Its instances as this node sees them.
    pub instances: Arc<InstanceSet>,
    /// Outcome counters by integration; they outlive restarts of the actors.
    pub counters: HashMap<IntegrationId, Arc<IntegrationCounters>>,
}

impl TenantSnapshot {
    /// A tenant whose actor has not started it yet.
    pub fn starting(reason: Option<String>) -> Self {
        TenantSnapshot {
            phase: TenantPhase::Starting(reason),
            routes: HashMap::new(),
            instances: Arc::default(),
            counters: HashMap::new(),
        }
    }
}

/// Where a tenant this node does not run is (see `crate::cluster`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Placement {
    /// Another node owns it; its requests go to that node's HTTP server at `url`.
    Elsewhere {
        /// The owner's id.
        node: String,
        /// The owner's advertised base URL.
        url: String,
    },
    /// Nobody owns it right now: a fail-over or a hand-over is in progress.
    Unowned,
}

/// Why a route cannot be had.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RouteError {
    /// No such tenant on this node, or no such integration in a running tenant.
    NotFound(String),
    /// The tenant exists but its subtree is not running yet (503, retry later).
    Starting(String),
    /// Another node owns the tenant (its id).
    Elsewhere(String),
}

impl From<RouteError> for ControlError {
    fn from(e: RouteError) -> Self {
        match e {
            RouteError::NotFound(m) => ControlError::not_found(m),
            RouteError::Starting(m) => ControlError::unavailable(m),
            RouteError::Elsewhere(node) => {
                ControlError::unavailable(format!("the tenant is owned by node {node}; ask that node"))
            }
        }
    }
}

/// Routes to the tenants this node does not run (`crate::cluster::ingress`): in a cluster
/// any node stores a webhook for any tenant and publishes it on the tenant's NATS, where
/// only the owner's workers consume.
pub trait RemoteRoutes: Send + Sync + std::fmt::Debug + 'static {
    /// The route of an integration of a tenant another node runs (or nobody, for now).
    fn route<'a>(&'a self, t: &'a TenantId, i: &'a IntegrationId) -> BoxFuture<'a, Result<Arc<Route>, RouteError>>;
    /// Webhooks this node accepted for tenants it did not run, by integration.
    fn accepted(&self) -> Vec<(TenantId, IntegrationId, u64)>;
    /// The counters of an integration this node stored webhooks for (the RetryScheduler
    /// keeps their `unfinished` gauge, which admission reads).
    fn counters(&self, t: &TenantId, i: &IntegrationId) -> Option<Arc<IntegrationCounters>>;
    /// Flushes what was published and closes the connections (shutdown).
    fn close(&self) -> BoxFuture<'_, ()>;
}

/// The snapshot of every tenant on this node. Bound: one entry per tenant.
#[derive(Debug, Default)]
pub struct Directory {
    tenants: ArcSwap<HashMap<TenantId, Arc<TenantSnapshot>>>,
    /// Where the tenants this node does not run are; the cluster actor replaces it.
    placements: ArcSwap<HashMap<TenantId, Placement>>,
    /// Routes to the tenants other nodes run (set once, when the node joins a cluster).
    remote: std::sync::OnceLock<Arc<dyn RemoteRoutes>>,
}

impl Directory {
    /// One tenant's entry.
    pub fn get(&self, t: &TenantId) -> Option<Arc<TenantSnapshot>> {
        self.tenants.load().get(t).cloned()
    }

    /// Every tenant's entry, by id.
    pub fn all(&self) -> Vec<(TenantId, Arc<TenantSnapshot>)> {
        let mut out: Vec<_> = self
            .tenants
            .load()
            .iter()
            .map(|(t, s)| (t.clone(), s.clone()))
            .collect();
        out.sort_by(|a, b| a.0.cmp(&b.0));
        out
    }

    /// Replaces a tenant's entry.
    pub fn publish(&self, t: &TenantId, snapshot: TenantSnapshot) {
        let snapshot = Arc::new(snapshot);
        self.tenants.rcu(|map| {
            let mut map = HashMap::clone(map);
            map.insert(t.clone(), snapshot.clone());
            map
        });
    }

    /// Changes a tenant's entry if it has one.
    pub fn update(&self, t: &TenantId, change: impl Fn(&mut TenantSnapshot)) {
        self.tenants.rcu(|map| {
            let mut map = HashMap::clone(map);
            if let Some(s) = map.get(t) {
                let mut s = TenantSnapshot::clone(s);
                change(&mut s);
                map.insert(t.clone(), Arc::new(s));
            }
            map
        });
    }

    /// Removes a tenant's entry.
    pub fn remove(&self, t: &TenantId) {
        self.tenants.rcu(|map| {
            let mut map = HashMap::clone(map);
            map.remove(t);
            map
        });
    }

    /// Whether this node runs the tenant (its subtree is here, running or starting).
    pub fn holds(&self, t: &TenantId) -> bool {
        self.tenants.load().contains_key(t)
    }

    /// Whether this node runs the tenant and is not giving it up: a tenant being stopped
    /// here (a hand-over, a rebalance, a lost lease) is placed before its entry goes.
    pub fn keeps(&self, t: &TenantId) -> bool {
        self.holds(t) && !self.placements.load().contains_key(t)
    }

    /// Where a tenant this node does not run is, if the cluster knows it.
    pub fn placement(&self, t: &TenantId) -> Option<Placement> {
        if self.holds(t) {
            return None;
        }
        self.placements.load().get(t).cloned()
    }

    /// Sets where one tenant this node does not run is.
    pub fn place(&self, t: &TenantId, placement: Placement) {
        self.placements.rcu(|map| {
            let mut map = HashMap::clone(map);
            map.insert(t.clone(), placement.clone());
            map
        });
    }

    /// Forgets where a tenant is: this node has just taken it.
    pub fn unplace(&self, t: &TenantId) {
        self.placements.rcu(|map| {
            let mut map = HashMap::clone(map);
            map.remove(t);
            map
        });
    }

    /// Replaces where the tenants this node does not run are.
    pub fn set_placements(&self, placements: HashMap<TenantId, Placement>) {
        self.placements.store(Arc::new(placements));
    }

    /// Sets the routes to other nodes' tenants (once).
    pub fn set_remote(&self, remote: Arc<dyn RemoteRoutes>) {
        let _ = self.remote.set(remote);
    }

    /// The routes to other nodes' tenants, in a cluster.
    pub fn remote(&self) -> Option<&Arc<dyn RemoteRoutes>> {
        self.remote.get()
    }

    /// Where a webhook goes: this node's route for a tenant it runs; in a cluster, for a
    /// tenant another node runs (or nobody, during a fail-over), a route from this node to
    /// the tenant's NATS.
    pub async fn ingress_route(&self, t: &TenantId, i: &IntegrationId) -> Result<Arc<Route>, RouteError> {
        match (self.route(t, i), self.remote.get()) {
            (Err(RouteError::Elsewhere(_) | RouteError::Starting(_)), Some(remote)) if !self.keeps(t) => {
                remote.route(t, i).await
            }
            (other, _) => other,
        }
    }

    /// Where a webhook goes.
    pub fn route(&self, t: &TenantId, i: &IntegrationId) -> Result<Arc<Route>, RouteError> {
        let missing = || RouteError::NotFound(format!("integration {i} not found in tenant {t}"));
        let map = self.tenants.load();
        let Some(snapshot) = map.get(t) else {
            return match self.placements.load().get(t) {
                Some(Placement::Elsewhere { node, .. }) => Err(RouteError::Elsewhere(node.clone())),
                Some(Placement::Unowned) => Err(RouteError::Starting(format!(
                    "no node owns tenant {t} right now (a fail-over or hand-over is in progress); retry shortly"
                ))),
                None => Err(missing()),
            };
        };
        match &snapshot.phase {
            TenantPhase::Running => snapshot.routes.get(i).cloned().ok_or_else(missing),
            TenantPhase::Starting(reason) => Err(RouteError::Starting(match reason {
                Some(why) => format!("tenant {t} is starting (last attempt failed: {why}); retry shortly"),
                None => format!("tenant {t} is starting; retry shortly"),
            })),
        }
    }
}

impl TenantPublisher for Route {
    /// Publishes on this route (the message is one of its integration's).
    fn publish<'a>(
        &'a self,
        state: &'a MessageState,
        stored: Bytes,
        revision: u64,
    ) -> BoxFuture<'a, Result<(), StoreError>> {
        Box::pin(async move {
            let hop = Hop::publish((&state.tenant_id, &state.integration_id, &state.message_id));
            Route::publish(self, stored, revision, hop).await
        })
    }
}

impl TenantPublisher for Directory {
    /// Publishes on the next usable instance of the message's tenant.
    fn publish<'a>(
        &'a self,
        state: &'a MessageState,
        stored: Bytes,
        revision: u64,
    ) -> BoxFuture<'a, Result<(), StoreError>> {
        Box::pin(async move {
            let route = self
                .route(&state.tenant_id, &state.integration_id)
                .map_err(|e| match e {
                    RouteError::NotFound(m) | RouteError::Starting(m) => StoreError::new(StoreErrorKind::NoRoute, m),
                    RouteError::Elsewhere(node) => {
                        StoreError::new(StoreErrorKind::NoRoute, format!("the tenant is owned by node {node}"))
                    }
                })?;
            TenantPublisher::publish(&*route, state, stored, revision).await
        })
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    fn route() -> Arc<Route> {
        Arc::new(Route {
            subject: "s".into(),
            consumer: WebhookConsumer::new(&[]),
            instances: Arc::default(),
            retry: RetryPolicy::default(),
            timeout_ms: 1,
            incarnation: 1,
            counters: Arc::default(),
            wire_key: vrsky_actors::wire::WireKey::new(b"k"),
        })
    }

    #[test]
    fn a_starting_tenant_is_unavailable_and_an_unknown_one_missing() {
        let d = Directory::default();
        let (t, i) = (TenantId::new("t").unwrap(), IntegrationId::new("i").unwrap());
        assert!(matches!(d.route(&t, &i), Err(RouteError::NotFound(_))));
        d.publish(&t, TenantSnapshot::starting(Some("port taken".into())));
        match d.route(&t, &i) {
            Err(RouteError::Starting(m)) => assert!(m.contains("port taken"), "{m}"),
            other => panic!("{other:?}"),
        }
        d.update(&t, |s| {
            s.phase = TenantPhase::Running;
            s.routes.insert(i.clone(), route());
        });
        assert!(d.route(&t, &i).is_ok());
        assert!(matches!(
            d.route(&t, &IntegrationId::new("j").unwrap()),
            Err(RouteError::NotFound(_))
        ));
        d.remove(&t);
        assert!(d.get(&t).is_none());
        // Owned by another node, or by nobody for a moment: not "not found".
        d.set_placements(
            [(
                t.clone(),
                Placement::Elsewhere {
                    node: "n2".into(),
                    url: "http://n2".into(),
                },
            )]
            .into(),
        );
        assert_eq!(d.route(&t, &i).unwrap_err(), RouteError::Elsewhere("n2".into()));
        d.set_placements([(t.clone(), Placement::Unowned)].into());
        assert!(matches!(d.route(&t, &i), Err(RouteError::Starting(_))));
        // A tenant it runs is never "elsewhere", whatever the placements say.
        d.publish(&t, TenantSnapshot::starting(None));
        assert!(d.placement(&t).is_none());
    }

    #[tokio::test]
    async fn a_tenant_without_a_usable_instance_is_not_published_to() {
        let err = route()
            .publish(Bytes::from_static(b"x"), 1, Hop::default())
            .await
            .unwrap_err();
        assert_eq!(err.kind(), StoreErrorKind::NoRoute, "{err}");
    }
}
