//! ClusterActor: one per node, a child of `runtime`. Every quarter of the lease TTL (and
//! whenever another node releases a lease) it renews this node's leases, reads the bucket
//! and the store, runs [`decide`] and carries the steps out through `Control`.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use futures::StreamExt;
use ractor::{Actor, ActorProcessingErr, ActorRef, RpcReplyPort};
use tracing::{debug, info, warn};

use vrsky_actors::integration::AbortOnDrop;
use vrsky_actors::{TenantId, now_ms};

use super::ClusterHandle;
use super::decide::{Peer, Situation, Step, decide};
use super::store::{BucketView, LeaseError, LeaseValue, NodeValue};
use crate::control::{Control, Placement};
use crate::platform::Platform;

/// How long a node that gives a tenant up waits, after stopping its subtree and before
/// deleting the lease, for webhooks it was still answering to finish their writes: the
/// next owner's take-over scan then finds them.
const RELEASE_SETTLE: Duration = Duration::from_millis(1_000);

/// How long a take-over waits for the tenant to run before its scan.
const TAKEOVER_WAIT: Duration = Duration::from_secs(120);

/// Longest a tenant creation may take between its claim and its rows (the tenant call
/// timeout): past it an unwritten tenant's lease is released.
const CREATION_MAX: Duration = Duration::from_secs(120);

/// The actor.
#[derive(Debug, Default, Clone, Copy)]
pub struct ClusterActor;

/// What it needs.
#[derive(Clone)]
pub struct ClusterArgs {
    /// Shared with the HTTP layer and `Control`.
    pub handle: Arc<ClusterHandle>,
    /// Starts and stops tenant subtrees.
    pub control: Arc<Control>,
    /// For the take-over scan.
    pub platform: Platform,
}

/// Its messages.
pub enum ClusterMsg {
    /// Renew, read, decide, act.
    Tick,
    /// Claims a tenant being created, for this node; the error says who holds it.
    ClaimNew(TenantId, RpcReplyPort<Result<(), String>>),
    /// Forgets a tenant: deleted, or its creation rolled back.
    Forget(TenantId, RpcReplyPort<()>),
    /// Hands every tenant over and claims nothing more (shutdown); replies with them.
    Drain(RpcReplyPort<Vec<TenantId>>),
    /// Replies once the first tick is done.
    Settled(RpcReplyPort<()>),
}

struct Held {
    revision: u64,
    /// When the request of the last successful renewal was sent.
    renewed: Instant,
    since_ms: u64,
}

/// Its state.
pub struct ClusterState {
    args: ClusterArgs,
    held: BTreeMap<TenantId, Held>,
    started_ms: u64,
    ticked: bool,
    settled: Vec<RpcReplyPort<()>>,
    /// Tenants claimed for a creation whose rows may not be written yet: not "deleted".
    creating: BTreeMap<TenantId, Instant>,
    tick_queued: Arc<AtomicBool>,
    _ticker: AbortOnDrop,
    _watch: AbortOnDrop,
}

impl ClusterState {
    fn me(&self) -> &str {
        &self.args.handle.me
    }

    /// Three quarters of the TTL without a renewal: the workers stop before the lease can
    /// expire and be claimed elsewhere.
    fn fence(&self) -> Duration {
        self.args.handle.ttl * 3 / 4
    }

    async fn renew_all(&mut self) {
        let handle = self.args.handle.clone();
        let me = handle.me.clone();
        let sent = Instant::now();
        let due: Vec<(TenantId, u64, u64)> = self
            .held
            .iter()
            .map(|(t, h)| (t.clone(), h.revision, h.since_ms))
            .collect();
        let store = handle.store.clone();
        let results: Vec<(TenantId, Result<u64, LeaseError>)> = futures::stream::iter(due)
            .map(move |(t, rev, since_ms)| {
                let (store, node) = (store.clone(), me.clone());
                async move {
                    let r = store.renew(&t, &LeaseValue { node, since_ms }, rev).await;
                    (t, r)
                }
            })
            .buffer_unordered(32)
            .collect()
            .await;
        let fence = self.fence();
        for (t, r) in results {
            match r {
                Ok(rev) => {
                    if let Some(h) = self.held.get_mut(&t) {
                        h.revision = rev;
                        h.renewed = sent;
                    }
                }
                Err(LeaseError::Lost) => {
                    warn!(tenant_id = %t, "tenant lease lost (another node holds it); stopping the tenant here");
                    self.stop(&t).await;
                }
                Err(LeaseError::Unavailable(e)) => {
                    let since = self
                        .held
                        .get(&t)
                        .map(|h| sent.duration_since(h.renewed))
                        .unwrap_or_default();
                    if since >= fence {
                        warn!(tenant_id = %t, error = %e, since_ms = since.as_millis() as u64,
                            "tenant lease not renewed for three quarters of its TTL; stopping the tenant's workers before it can expire");
                        self.stop(&t).await;
                    } else {
                        debug!(tenant_id = %t, error = %e, "tenant lease renewal failed; trying again");
                    }
                }
            }
        }
    }

    /// Stops a tenant's subtree here; until the next tick says who has it, its requests
    /// wait for an owner.
    async fn stop(&mut self, t: &TenantId) {
        self.held.remove(t);
        self.args.control.stop_tenant(t).await;
        self.args.control.directory().place(t, Placement::Unowned);
    }

    /// Starts a tenant this node now holds, then re-drives what its previous holder left.
    async fn start(&mut self, t: &TenantId, why: &'static str) {
        info!(tenant_id = %t, why, "tenant owned here");
        if let Err(e) = self.args.control.start_tenant(t).await {
            warn!(tenant_id = %t, error = %e, "tenant subtree did not start; its supervisor keeps trying");
        }
        let (control, platform, t) = (self.args.control.clone(), self.args.platform.clone(), t.clone());
        tokio::spawn(async move {
            if let Err(e) = control.await_running(&t, TAKEOVER_WAIT).await {
                warn!(tenant_id = %t, error = %e, "tenant not running yet; its messages are re-driven once it is");
            }
            match platform.scan_tenant(&t).await {
                Ok(found) => info!(tenant_id = %t, found, "take-over scan: unfinished messages re-driven now"),
                Err(e) => warn!(tenant_id = %t, error = %e, "take-over scan failed; the re-driver finds them later"),
            }
        });
    }

    async fn tick(&mut self) {
        self.tick_queued.store(false, Ordering::Relaxed);
        self.renew_all().await;
        let handle = self.args.handle.clone();
        let draining = handle.draining();
        let announced = NodeValue {
            url: handle.url.clone(),
            started_ms: self.started_ms,
            draining,
        };
        if let Err(e) = handle.store.announce(&handle.me, &announced).await {
            warn!(error = %e, "node record not renewed");
        }
        let view = match handle.store.view().await {
            Ok(v) => v,
            Err(e) => return warn!(error = %e, "lease bucket unreadable; deciding next tick"),
        };
        let mut tenants: BTreeSet<TenantId> = match self.args.control.db().tenants().await {
            Ok(rows) => rows.into_iter().map(|r| r.id).collect(),
            Err(e) => return warn!(error = %e, "metadata store unreadable; deciding next tick"),
        };
        self.creating
            .retain(|t, at| !tenants.contains(t) && at.elapsed() < CREATION_MAX);
        tenants.extend(self.creating.keys().cloned());
        let situation = Situation {
            me: handle.me.clone(),
            draining,
            tenants: tenants.clone(),
            leases: view.leases.iter().map(|(t, l)| (t.clone(), l.lease.clone())).collect(),
            nodes: view
                .nodes
                .values()
                .map(|n| Peer {
                    id: n.id.clone(),
                    draining: n.value.draining,
                })
                .collect(),
            held: self.held.iter().map(|(t, h)| (t.clone(), h.revision)).collect(),
        };
        // A subtree running here without a lease held (the actor restarted, and the lease
        // moved on meanwhile) stops first.
        for (t, _) in self.args.control.directory().all() {
            let mine = view.leases.get(&t).is_some_and(|l| l.lease.owner == handle.me);
            if !self.held.contains_key(&t) && !mine {
                warn!(tenant_id = %t, "tenant running here without its lease; stopping it");
                self.stop(&t).await;
            }
        }
        let steps = decide(&situation);
        let mut released = Vec::new();
        for step in steps {
            match step {
                Step::Claim(t) => {
                    let value = LeaseValue {
                        node: handle.me.clone(),
                        since_ms: now_ms(),
                    };
                    let sent = Instant::now();
                    match handle.store.claim(&t, &value).await {
                        Ok(revision) => {
                            self.held.insert(
                                t.clone(),
                                Held {
                                    revision,
                                    renewed: sent,
                                    since_ms: value.since_ms,
                                },
                            );
                            self.start(&t, "claimed").await;
                        }
                        Err(LeaseError::Lost) => debug!(tenant_id = %t, "another node claimed the tenant first"),
                        Err(e) => warn!(tenant_id = %t, error = %e, "claim failed; trying next tick"),
                    }
                }
                Step::Adopt(t, rev) => {
                    let since_ms = view.leases.get(&t).map(|l| l.value.since_ms).unwrap_or_else(now_ms);
                    let value = LeaseValue {
                        node: handle.me.clone(),
                        since_ms,
                    };
                    let sent = Instant::now();
                    match handle.store.renew(&t, &value, rev).await {
                        Ok(revision) => {
                            self.held.insert(
                                t.clone(),
                                Held {
                                    revision,
                                    renewed: sent,
                                    since_ms,
                                },
                            );
                            self.start(&t, "lease of this node's id adopted").await;
                        }
                        Err(e) => debug!(tenant_id = %t, error = %e, "lease of this node's id moved on"),
                    }
                }
                Step::Release(t, rev) => {
                    self.stop(&t).await;
                    released.push((t, rev));
                }
            }
        }
        if !released.is_empty() {
            // Alone, nobody else takes it: nothing to wait for.
            if view.nodes.keys().any(|n| *n != handle.me) {
                tokio::time::sleep(RELEASE_SETTLE).await;
            }
            for (t, rev) in released {
                match handle.store.release(&t, rev).await {
                    Ok(()) => info!(tenant_id = %t, "tenant released for another node to take"),
                    Err(e) => warn!(tenant_id = %t, error = %e, "lease not released; it expires instead"),
                }
            }
        }
        self.publish_placements(&view, &tenants);
        handle.set_view(view, tenants.into_iter().collect());
        self.ticked = true;
        for r in self.settled.drain(..) {
            let _ = r.send(());
        }
    }

    /// Tells the routing snapshot where the tenants this node does not run are.
    fn publish_placements(&self, view: &BucketView, tenants: &BTreeSet<TenantId>) {
        let mut placements = HashMap::new();
        for t in tenants {
            if self.held.contains_key(t) {
                continue;
            }
            let placement = match view.leases.get(t) {
                // A draining owner still answers for what it holds until it releases it.
                Some(l) if l.lease.owner != self.me() => match view.nodes.get(&l.lease.owner) {
                    Some(n) => Placement::Elsewhere {
                        node: l.lease.owner.clone(),
                        url: n.value.url.clone(),
                    },
                    None => Placement::Unowned,
                },
                _ => Placement::Unowned,
            };
            placements.insert(t.clone(), placement);
        }
        self.args.control.directory().set_placements(placements);
    }

    async fn drain(&mut self) -> Vec<TenantId> {
        self.args.handle.set_draining();
        let handle = self.args.handle.clone();
        let announced = NodeValue {
            url: handle.url.clone(),
            started_ms: self.started_ms,
            draining: true,
        };
        if let Err(e) = handle.store.announce(&handle.me, &announced).await {
            warn!(error = %e, "node record not marked draining");
        }
        let held: Vec<(TenantId, u64)> = self.held.iter().map(|(t, h)| (t.clone(), h.revision)).collect();
        for (t, _) in &held {
            self.stop(t).await;
        }
        let others = handle.view().nodes.keys().any(|n| *n != handle.me);
        if !held.is_empty() && others {
            tokio::time::sleep(RELEASE_SETTLE).await;
        }
        for (t, rev) in &held {
            match handle.store.release(t, *rev).await {
                Ok(()) => info!(tenant_id = %t, "tenant handed over"),
                Err(e) => warn!(tenant_id = %t, error = %e, "lease not released; it expires instead"),
            }
        }
        held.into_iter().map(|(t, _)| t).collect()
    }
}

impl Actor for ClusterActor {
    type Msg = ClusterMsg;
    type State = ClusterState;
    type Arguments = ClusterArgs;

    async fn pre_start(
        &self,
        myself: ActorRef<ClusterMsg>,
        args: ClusterArgs,
    ) -> Result<ClusterState, ActorProcessingErr> {
        let tick_queued = Arc::new(AtomicBool::new(true));
        myself.send_message(ClusterMsg::Tick)?;
        let ticker = myself.send_interval(args.handle.ttl / 4, || ClusterMsg::Tick);
        // A lease released elsewhere (a hand-over), or claimed by a node this one did not
        // know had it, is acted on now rather than at the next tick.
        let (me, handle, queued) = (myself.clone(), args.handle.clone(), tick_queued.clone());
        let watch = tokio::spawn(async move {
            let mut changes = match handle.store.watch().await {
                Ok(w) => w,
                Err(e) => return warn!(error = %e, "lease bucket not watched; changes are seen at each tick"),
            };
            while let Some(Ok(entry)) = changes.next().await {
                let Some(t) = entry.key.strip_prefix("lease.") else {
                    continue;
                };
                let news = match entry.operation {
                    async_nats::jetstream::kv::Operation::Put => {
                        let owner = serde_json::from_slice::<LeaseValue>(&entry.value).ok().map(|v| v.node);
                        TenantId::new(t).ok().is_some_and(|t| handle.owner(&t) != owner)
                    }
                    _ => true,
                };
                if news && !queued.swap(true, Ordering::Relaxed) && me.send_message(ClusterMsg::Tick).is_err() {
                    break;
                }
            }
        });
        args.handle.set_actor(Some(myself));
        info!(node_id = %args.handle.me, url = %args.handle.url, lease_ttl_ms = args.handle.ttl.as_millis() as u64,
            "cluster member");
        Ok(ClusterState {
            args,
            held: BTreeMap::new(),
            started_ms: now_ms(),
            ticked: false,
            settled: Vec::new(),
            creating: BTreeMap::new(),
            tick_queued,
            _ticker: AbortOnDrop(ticker),
            _watch: AbortOnDrop(watch),
        })
    }

    async fn handle(
        &self,
        _myself: ActorRef<ClusterMsg>,
        msg: ClusterMsg,
        state: &mut ClusterState,
    ) -> Result<(), ActorProcessingErr> {
        match msg {
            ClusterMsg::Tick => state.tick().await,
            ClusterMsg::ClaimNew(t, reply) => {
                let handle = state.args.handle.clone();
                let value = LeaseValue {
                    node: handle.me.clone(),
                    since_ms: now_ms(),
                };
                let sent = Instant::now();
                let answer = match handle.store.claim(&t, &value).await {
                    Ok(revision) => {
                        state.held.insert(
                            t.clone(),
                            Held {
                                revision,
                                renewed: sent,
                                since_ms: value.since_ms,
                            },
                        );
                        state.creating.insert(t.clone(), Instant::now());
                        Ok(())
                    }
                    Err(LeaseError::Lost) => Err(format!(
                        "tenant {t} already has an owner (node {})",
                        handle.owner(&t).unwrap_or_else(|| "unknown".into())
                    )),
                    Err(e) => Err(format!("the tenant lease could not be claimed: {e}")),
                };
                let _ = reply.send(answer);
            }
            ClusterMsg::Forget(t, reply) => {
                state.held.remove(&t);
                state.creating.remove(&t);
                if let Err(e) = state.args.handle.store.forget(&t).await {
                    warn!(tenant_id = %t, error = %e, "lease of a deleted tenant not removed; it expires instead");
                }
                let _ = reply.send(());
            }
            ClusterMsg::Drain(reply) => {
                let handed = state.drain().await;
                let _ = reply.send(handed);
            }
            ClusterMsg::Settled(reply) => {
                if state.ticked {
                    let _ = reply.send(());
                } else {
                    state.settled.push(reply);
                }
            }
        }
        Ok(())
    }

    async fn post_stop(
        &self,
        _myself: ActorRef<ClusterMsg>,
        state: &mut ClusterState,
    ) -> Result<(), ActorProcessingErr> {
        state.args.handle.set_actor(None);
        Ok(())
    }
}
