//! Several nodes on one platform NATS and one metadata store: each tenant's subtree runs on
//! exactly one node, the holder of the tenant's lease in the platform KV (`store.rs`).
//! The `ClusterActor` (a child of `runtime`) renews this node's leases, claims what falls
//! to it (`decide.rs`, a pure function every node computes alike), starts and stops
//! tenant subtrees through `Control`, and tells the routing snapshot where the other
//! tenants are, so the HTTP layer forwards their requests to their owner
//! (`http/forward.rs`). There is no consensus code here: the bucket's create-only claims,
//! revision-checked renewals and server-side expiry are the engine.
//!
//! **Invariant:** a node runs a tenant's workers only while it holds the lease; one that
//! could not renew for half the TTL stops them before the lease can expire
//! and be claimed elsewhere (a paused or partitioned node).

mod actor;
pub mod decide;
pub mod ingress;
pub mod store;

use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use arc_swap::{ArcSwap, ArcSwapOption};
use ractor::ActorRef;
use serde::Serialize;

use vrsky_actors::TenantId;

pub use actor::{ClaimRefused, ClusterActor, ClusterArgs, ClusterMsg};
pub use store::{BucketView, LeaseStore, NodeValue};

/// The cluster actor's name under the runtime supervisor.
pub const CLUSTER_CHILD: &str = "cluster";

/// Checks a node id: a KV key token and a readable name.
pub fn check_node_id(id: &str) -> Result<(), String> {
    let ok = !id.is_empty() && id.len() <= 64 && id.chars().all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_');
    if ok {
        Ok(())
    } else {
        Err(format!(
            "{id:?}: 1 to 64 letters, digits, '-' or '_' (a host name with dots: set VRSKY_NODE_ID)"
        ))
    }
}

/// This node's id: the configured one, else the host name (dots and other characters a
/// KV key cannot hold become `-`).
pub fn node_id(configured: Option<&str>) -> String {
    if let Some(id) = configured {
        return id.to_owned();
    }
    let host = std::fs::read_to_string("/proc/sys/kernel/hostname")
        .ok()
        .or_else(|| std::env::var("HOSTNAME").ok())
        .unwrap_or_default();
    let id: String = host
        .trim()
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '-' || c == '_' {
                c
            } else {
                '-'
            }
        })
        .take(64)
        .collect();
    if id.is_empty() { "vrsky".into() } else { id }
}

/// One node as `GET /api/cluster` shows it.
#[derive(Debug, Clone, Serialize)]
pub struct NodeView {
    /// Its id.
    pub node_id: String,
    /// Where other nodes reach it.
    pub url: String,
    /// This node (the one answering).
    #[serde(rename = "self")]
    pub this: bool,
    /// It is handing its tenants over.
    pub draining: bool,
    /// Since its record was last renewed.
    pub last_seen_ms: u64,
    /// The tenants it holds, with their lease ages.
    pub tenants: Vec<TenantLeaseView>,
}

/// A tenant's lease as `GET /api/cluster` shows it.
#[derive(Debug, Clone, Serialize)]
pub struct TenantLeaseView {
    /// The tenant.
    pub tenant_id: String,
    /// Since the lease was last renewed.
    pub lease_age_ms: u64,
    /// Since its holder first claimed it.
    pub held_for_ms: u64,
}

/// `GET /api/cluster`.
#[derive(Debug, Clone, Serialize)]
pub struct ClusterReport {
    /// The node answering.
    pub node_id: String,
    /// `cluster.lease_ttl_ms`.
    pub lease_ttl_ms: u64,
    /// The live nodes.
    pub nodes: Vec<NodeView>,
    /// Tenants of the store nobody holds right now (a fail-over in progress).
    pub unowned: Vec<String>,
}

/// What the HTTP layer and `Control` share with the cluster actor.
pub struct ClusterHandle {
    /// This node's id.
    pub me: String,
    /// This node's advertised base URL.
    pub url: String,
    /// `cluster.lease_ttl_ms`.
    pub ttl: Duration,
    /// How long a request for a tenant changing owner waits for the new one.
    pub forward_wait: Duration,
    /// The bucket.
    pub store: LeaseStore,
    view: ArcSwap<BucketView>,
    tenants: ArcSwap<Vec<TenantId>>,
    draining: AtomicBool,
    actor: ArcSwapOption<ActorRef<ClusterMsg>>,
    /// Tenants created on each node since the view was last read: counted by
    /// `least_loaded`, so tenants created one after another are spread before the next
    /// tick shows their leases.
    placed: std::sync::Mutex<BTreeMap<String, usize>>,
    /// When the last successful renewal of each lease held here was sent (the claim
    /// fence reads it). Bound: one per tenant held.
    renewed: std::sync::Mutex<std::collections::HashMap<TenantId, std::time::Instant>>,
}

impl ClusterHandle {
    /// Whether this node's workers may claim a message of `t`: it holds the lease and
    /// renewed it less than half the TTL ago. A node resumed after a pause (or cut off
    /// from the platform) claims nothing, even before its cluster actor stops the tenant:
    /// its subscription may hold messages another node published meanwhile, which the
    /// new owner will deliver.
    pub fn may_claim(&self, t: &TenantId) -> bool {
        self.renewed_at(t).is_some_and(|at| at.elapsed() < self.ttl / 2)
    }

    /// When the last successful renewal of a lease held here was sent.
    pub(crate) fn renewed_at(&self, t: &TenantId) -> Option<std::time::Instant> {
        self.renewed.lock().unwrap_or_else(|p| p.into_inner()).get(t).copied()
    }

    pub(crate) fn set_renewed(&self, t: &TenantId, sent: Option<std::time::Instant>) {
        let mut renewed = self.renewed.lock().unwrap_or_else(|p| p.into_inner());
        match sent {
            Some(at) => renewed.insert(t.clone(), at),
            None => renewed.remove(t),
        };
    }

    /// A handle for this node.
    pub fn new(me: String, url: String, ttl: Duration, forward_wait: Duration, store: LeaseStore) -> Arc<Self> {
        Arc::new(ClusterHandle {
            me,
            url,
            ttl,
            forward_wait,
            store,
            view: ArcSwap::default(),
            tenants: ArcSwap::default(),
            draining: AtomicBool::new(false),
            actor: ArcSwapOption::empty(),
            placed: std::sync::Mutex::default(),
            renewed: std::sync::Mutex::default(),
        })
    }

    /// The bucket as the last tick read it.
    pub fn view(&self) -> Arc<BucketView> {
        self.view.load_full()
    }

    pub(crate) fn set_view(&self, view: BucketView, tenants: Vec<TenantId>) {
        self.view.store(Arc::new(view));
        self.tenants.store(Arc::new(tenants));
        if let Ok(mut placed) = self.placed.lock() {
            placed.clear();
        }
    }

    /// Notes a tenant just created on `node`, until the next view shows its lease.
    pub fn note_placed(&self, node: &str) {
        if let Ok(mut placed) = self.placed.lock() {
            *placed.entry(node.to_owned()).or_default() += 1;
        }
    }

    pub(crate) fn set_actor(&self, actor: Option<ActorRef<ClusterMsg>>) {
        self.actor.store(actor.map(Arc::new));
    }

    /// The cluster actor, while it runs.
    pub fn actor(&self) -> Option<ActorRef<ClusterMsg>> {
        self.actor.load_full().map(|a| ActorRef::clone(&a))
    }

    /// Whether this node is handing its tenants over (SIGTERM).
    pub fn draining(&self) -> bool {
        self.draining.load(Ordering::Relaxed)
    }

    pub(crate) fn set_draining(&self) {
        self.draining.store(true, Ordering::Relaxed);
    }

    /// The owner of a tenant as the last tick saw it.
    pub fn owner(&self, t: &TenantId) -> Option<String> {
        self.view.load().leases.get(t).map(|l| l.lease.owner.clone())
    }

    /// Where a new tenant should go: the live, non-draining node holding the fewest
    /// tenants (ties to the smaller id), with its URL; this node when it knows no other.
    pub fn least_loaded(&self) -> (String, String) {
        let view = self.view.load();
        let mut load: BTreeMap<&str, (usize, &str)> = view
            .nodes
            .values()
            .filter(|n| !n.value.draining)
            .map(|n| (n.id.as_str(), (0, n.value.url.as_str())))
            .collect();
        for l in view.leases.values() {
            if let Some((n, _)) = load.get_mut(l.lease.owner.as_str()) {
                *n += 1;
            }
        }
        if let Ok(placed) = self.placed.lock() {
            for (node, k) in placed.iter() {
                if let Some((n, _)) = load.get_mut(node.as_str()) {
                    *n += k;
                }
            }
        }
        load.iter()
            .min_by_key(|(id, (n, _))| (*n, **id))
            .map(|(id, (_, url))| ((*id).to_owned(), (*url).to_owned()))
            .unwrap_or_else(|| (self.me.clone(), self.url.clone()))
    }

    /// `GET /api/cluster`.
    pub fn report(&self) -> ClusterReport {
        let view = self.view.load();
        let now = vrsky_actors::now_ms();
        let mut nodes: Vec<NodeView> = view
            .nodes
            .values()
            .map(|n| NodeView {
                node_id: n.id.clone(),
                url: n.value.url.clone(),
                this: n.id == self.me,
                draining: n.value.draining,
                last_seen_ms: n.age_ms,
                tenants: view
                    .leases
                    .iter()
                    .filter(|(_, l)| l.lease.owner == n.id)
                    .map(|(t, l)| TenantLeaseView {
                        tenant_id: t.to_string(),
                        lease_age_ms: l.age_ms,
                        held_for_ms: now.saturating_sub(l.value.since_ms),
                    })
                    .collect(),
            })
            .collect();
        nodes.sort_by(|a, b| a.node_id.cmp(&b.node_id));
        let unowned = self
            .tenants
            .load()
            .iter()
            .filter(|t| !view.leases.contains_key(*t))
            .map(ToString::to_string)
            .collect();
        ClusterReport {
            node_id: self.me.clone(),
            lease_ttl_ms: self.ttl.as_millis() as u64,
            nodes,
            unowned,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn node_ids_are_key_tokens() {
        assert!(check_node_id("vrsky-0").is_ok());
        assert!(check_node_id("node_1").is_ok());
        for bad in ["", "a.b", "a b", "ü", &"x".repeat(65)] {
            assert!(check_node_id(bad).is_err(), "{bad:?}");
        }
        assert_eq!(node_id(Some("n1")), "n1");
        assert!(check_node_id(&node_id(None)).is_ok());
    }
}
