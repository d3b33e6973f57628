//! ClusterActor: one per node, a child of `runtime`. Every quarter of the lease TTL (and
//! whenever another node releases a lease) it renews this node's leases, reads the bucket
//! and the store, runs [`decide`] and carries the steps out through `Control`.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use futures::{FutureExt, StreamExt};
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
    /// When a take-over scans a second time (`state.redrive_after_ms`).
    pub rescan_after: Duration,
}

/// Why a new tenant's lease was not claimed.
#[derive(Debug, Clone)]
pub enum ClaimRefused {
    /// Another node holds a lease of that id (it names it).
    Held(String),
    /// The platform did not answer.
    Unavailable(String),
}

/// Its messages.
pub enum ClusterMsg {
    /// Renew, read, decide, act.
    Tick,
    /// Claims a tenant being created, for this node.
    ClaimNew(TenantId, RpcReplyPort<Result<(), ClaimRefused>>),
    /// Forgets a tenant: deleted, or its creation rolled back.
    Forget(TenantId, RpcReplyPort<()>),
    /// Hands every tenant over and claims nothing more (shutdown); replies with them.
    Drain(RpcReplyPort<Vec<TenantId>>),
    /// Replies once the first tick is done.
    Settled(RpcReplyPort<()>),
}

/// A lease held here (when its last successful renewal was sent is in the handle, which
/// the claim fence reads too).
struct Held {
    revision: u64,
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
    /// Stops (and releases) under way, off the actor.
    stopping: HashMap<TenantId, tokio::task::JoinHandle<()>>,
    tick_queued: Arc<AtomicBool>,
    /// The other live nodes at the last tick, with when each started: one that is gone
    /// (or started again) may have stored webhooks for this node's tenants that it never
    /// published.
    peers: BTreeMap<String, u64>,
    /// A scan of the held tenants is owed (a node left, or a scan failed).
    rescan_pending: bool,
    /// The scan under way; `true` when every tenant was scanned.
    rescan_task: Option<tokio::task::JoinHandle<bool>>,
    _ticker: AbortOnDrop,
    _watch: AbortOnDrop,
}

impl ClusterState {
    fn me(&self) -> &str {
        &self.args.handle.me
    }

    /// Half the TTL without a successful renewal: the tenant stops here. The check runs
    /// at least every quarter of the TTL, after renewals bounded by a quarter, so the stop
    /// begins before three quarters have passed, and the lease (whose expiry counts from
    /// the server's receipt of the last renewal, after it was sent) is still held then.
    fn fence(&self) -> Duration {
        self.args.handle.ttl / 2
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
        let bound = handle.ttl / 4;
        let results: Vec<(TenantId, Result<u64, LeaseError>)> = futures::stream::iter(due)
            .map(move |(t, rev, since_ms)| {
                let (store, node) = (store.clone(), me.clone());
                async move {
                    let r =
                        match tokio::time::timeout(bound, store.renew(&t, &LeaseValue { node, since_ms }, rev)).await {
                            Ok(r) => r,
                            Err(_) => Err(LeaseError::Unavailable(format!(
                                "no answer within {} ms",
                                bound.as_millis()
                            ))),
                        };
                    (t, r)
                }
            })
            .buffer_unordered(64)
            .collect()
            .await;
        let fence = self.fence();
        let now = Instant::now();
        for (t, r) in results {
            match r {
                Ok(rev) => {
                    if let Some(h) = self.held.get_mut(&t) {
                        h.revision = rev;
                        self.args.handle.set_renewed(&t, Some(sent));
                    }
                }
                Err(LeaseError::Lost) => {
                    warn!(tenant_id = %t, "tenant lease lost (another node holds it); stopping the tenant here");
                    self.stop(&t, None);
                }
                Err(LeaseError::Unavailable(e)) => {
                    let since = self
                        .args
                        .handle
                        .renewed_at(&t)
                        .map(|at| now.duration_since(at))
                        .unwrap_or_default();
                    if since >= fence {
                        warn!(tenant_id = %t, error = %e, since_ms = since.as_millis() as u64,
                            "tenant lease not renewed for half its TTL; stopping the tenant's workers before it can expire");
                        self.stop(&t, None);
                    } else {
                        debug!(tenant_id = %t, error = %e, "tenant lease renewal failed; trying again");
                    }
                }
            }
        }
    }

    /// Takes a lease for this node: a create-only claim (`revision` none), or a take-over
    /// of this node's own lease at `revision`; held from when the request was sent.
    async fn take(&mut self, t: &TenantId, since_ms: u64, revision: Option<u64>) -> Result<(), LeaseError> {
        let handle = self.args.handle.clone();
        let value = LeaseValue {
            node: handle.me.clone(),
            since_ms,
        };
        let sent = Instant::now();
        let revision = match revision {
            None => handle.store.claim(t, &value).await?,
            Some(rev) => handle.store.renew(t, &value, rev).await?,
        };
        self.held.insert(t.clone(), Held { revision, since_ms });
        handle.set_renewed(t, Some(sent));
        Ok(())
    }

    /// Whether a stop of the tenant here is still under way.
    fn stopping(&self, t: &TenantId) -> bool {
        self.stopping.get(t).is_some_and(|h| !h.is_finished())
    }

    /// Stops a tenant's subtree here, off the actor (a stuck server must not hold the
    /// renewals of the other tenants); its requests wait for an owner meanwhile. With
    /// `release`, the lease is given up at that revision once the subtree is down and the
    /// webhooks it was answering had time to finish their writes.
    fn stop(&mut self, t: &TenantId, release: Option<u64>) {
        self.held.remove(t);
        // Its workers claim nothing more while they are being stopped.
        self.args.handle.set_renewed(t, None);
        // Placed first: the moment the subtree's entry goes, requests wait for an owner
        // instead of answering 404.
        self.args.control.directory().place(t, Placement::Unowned);
        let (control, handle, t2) = (self.args.control.clone(), self.args.handle.clone(), t.clone());
        let task = tokio::spawn(async move {
            control.stop_tenant(&t2).await;
            let Some(rev) = release else { return };
            // Alone, nobody else takes it: nothing to wait for.
            if handle.view().nodes.keys().any(|n| *n != handle.me) {
                tokio::time::sleep(RELEASE_SETTLE).await;
            }
            match handle.store.release(&t2, rev).await {
                Ok(()) => info!(tenant_id = %t2, "tenant released for another node to take"),
                Err(e) => warn!(tenant_id = %t2, error = %e, "lease not released; it expires instead"),
            }
        });
        self.stopping.insert(t.clone(), task);
    }

    /// Starts a tenant this node now holds, then re-drives what its previous holder left.
    /// `claimed_at` is the bucket's revision before the claim.
    async fn start(&mut self, t: &TenantId, why: &'static str, claimed_at: Option<u64>) {
        info!(tenant_id = %t, why, "tenant owned here");
        let started = match self.args.control.start_tenant(t).await {
            Ok(started) => started,
            Err(e) => {
                warn!(tenant_id = %t, error = %e, "tenant subtree did not start; its supervisor keeps trying");
                true
            }
        };
        // Its entry is in the snapshot now: its requests wait here for its start, rather
        // than going the way of a tenant elsewhere.
        self.args.control.directory().unplace(t);
        // Already running here (the cluster actor restarted): nothing was left by another.
        if !started {
            return;
        }
        let (control, platform, t) = (self.args.control.clone(), self.args.platform.clone(), t.clone());
        let rescan = self.args.rescan_after;
        tokio::spawn(async move {
            if let Err(e) = control.await_running(&t, TAKEOVER_WAIT).await {
                warn!(tenant_id = %t, error = %e, "tenant not running yet; its messages are re-driven once it is");
            }
            // Unknown (the platform did not say): every state is re-driven at its deadline.
            let claimed_at = claimed_at.unwrap_or(0);
            // Twice: now, and once more after the grace, for writes the previous owner
            // finished after the first scan (a webhook it was still answering).
            for (pass, wait) in [(1, Duration::ZERO), (2, rescan)] {
                tokio::time::sleep(wait).await;
                scan(&platform, &t, claimed_at, pass).await;
            }
        });
    }

    /// Scans every tenant held here again after another node left (or started again): it
    /// may have stored webhooks for them (`ingress.rs`) whose publish it never made, and
    /// nobody else tracks those. Every unfinished state joins this node's index at its
    /// own deadline (none is an orphan), so what is overdue is re-driven and nothing
    /// published moments ago is published again: a rolling restart does not re-publish
    /// each owner's backlog. A scan that fails is run again at the next tick, until one
    /// succeeds (also after this actor restarts, when departures may have been missed).
    fn rescan_if_due(&mut self) {
        if self.rescan_task.as_ref().is_some_and(|h| h.is_finished()) {
            let done = self.rescan_task.take().and_then(|h| h.now_or_never());
            if !matches!(done, Some(Ok(true))) {
                self.rescan_pending = true;
            }
        }
        if !self.rescan_pending || self.rescan_task.is_some() || self.held.is_empty() {
            return;
        }
        self.rescan_pending = false;
        let tenants: Vec<TenantId> = self.held.keys().cloned().collect();
        info!(
            tenants = tenants.len(),
            "scanning this node's tenants for what other nodes stored"
        );
        let platform = self.args.platform.clone();
        self.rescan_task = Some(tokio::spawn(async move {
            let mut ok = true;
            for t in tenants {
                ok &= scan(&platform, &t, 0, 1).await;
            }
            ok
        }));
    }

    async fn tick(&mut self) {
        self.tick_queued.store(false, Ordering::Relaxed);
        self.stopping.retain(|_, h| !h.is_finished());
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
        let peers: BTreeMap<String, u64> = view
            .nodes
            .values()
            .filter(|n| n.id != handle.me)
            .map(|n| (n.id.clone(), n.value.started_ms))
            .collect();
        let gone: Vec<String> = self
            .peers
            .iter()
            .filter(|(id, started)| peers.get(*id) != Some(*started))
            .map(|(id, _)| id.clone())
            .collect();
        if !gone.is_empty() {
            info!(nodes = ?gone, "a node left; scanning this node's tenants for what it stored");
            self.rescan_pending = true;
        }
        self.peers = peers;
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
            releasing: self
                .stopping
                .iter()
                .filter(|(_, h)| !h.is_finished())
                .map(|(t, _)| t.clone())
                .collect(),
        };
        // A subtree running here without a lease held (the actor restarted, and the lease
        // moved on meanwhile) stops first.
        for (t, _) in self.args.control.directory().all() {
            let mine = view.leases.get(&t).is_some_and(|l| l.lease.owner == handle.me);
            if !self.held.contains_key(&t) && !mine && !self.stopping(&t) {
                warn!(tenant_id = %t, "tenant running here without its lease; stopping it");
                self.stop(&t, None);
            }
        }
        let steps = decide(&situation);
        for step in steps {
            match step {
                // Still stopping here: claimed again at a later tick.
                Step::Claim(t) | Step::Adopt(t, _) if self.stopping(&t) => {}
                Step::Claim(t) => {
                    let claimed_at = self.args.platform.state_revision().await.ok();
                    match self.take(&t, now_ms(), None).await {
                        Ok(()) => self.start(&t, "claimed", claimed_at).await,
                        Err(LeaseError::Lost) => debug!(tenant_id = %t, "another node claimed the tenant first"),
                        Err(e) => warn!(tenant_id = %t, error = %e, "claim failed; trying next tick"),
                    }
                }
                Step::Adopt(t, rev) => {
                    let claimed_at = self.args.platform.state_revision().await.ok();
                    let since_ms = view.leases.get(&t).map(|l| l.value.since_ms).unwrap_or_else(now_ms);
                    match self.take(&t, since_ms, Some(rev)).await {
                        Ok(()) => self.start(&t, "lease of this node's id adopted", claimed_at).await,
                        Err(e) => debug!(tenant_id = %t, error = %e, "lease of this node's id moved on"),
                    }
                }
                Step::Release(t, rev) => self.stop(&t, Some(rev)),
            }
        }
        self.rescan_if_due();
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
        // A lease without its row yet is a tenant being created on its owner.
        let known: BTreeSet<&TenantId> = tenants.iter().chain(view.leases.keys()).collect();
        for t in known {
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
        for (t, rev) in &held {
            self.stop(t, Some(*rev));
        }
        // Every stop and release, side by side; the waiting requests go to the new owners.
        for (_, task) in std::mem::take(&mut self.stopping) {
            let _ = task.await;
        }
        held.into_iter().map(|(t, _)| t).collect()
    }
}

/// One take-over scan of `t` (states written up to revision `up_to` are re-driven at
/// once, the others at their deadline), tried up to ten times; whether it succeeded.
async fn scan(platform: &Platform, t: &TenantId, up_to: u64, pass: u32) -> bool {
    let mut attempt = 0;
    loop {
        attempt += 1;
        match platform.scan_tenant(t, up_to).await {
            Ok(found) => {
                info!(tenant_id = %t, pass, found, "take-over scan: what another node left is re-driven");
                return true;
            }
            Err(e) if attempt < 10 => {
                warn!(tenant_id = %t, pass, error = %e, "take-over scan failed; trying again");
                tokio::time::sleep(Duration::from_secs(2)).await;
            }
            Err(e) => {
                warn!(tenant_id = %t, pass, error = %e, "take-over scan failed ten times; scanned again later");
                return false;
            }
        }
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
            // Watched again after any error: a lost watch only slows hand-overs to a tick.
            loop {
                match handle.store.watch().await {
                    Ok(mut changes) => {
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
                            if news
                                && !queued.swap(true, Ordering::Relaxed)
                                && me.send_message(ClusterMsg::Tick).is_err()
                            {
                                return;
                            }
                        }
                    }
                    Err(e) => debug!(error = %e, "lease bucket not watched; trying again"),
                }
                tokio::time::sleep(Duration::from_secs(1)).await;
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
            stopping: HashMap::new(),
            tick_queued,
            peers: BTreeMap::new(),
            // Departures while this actor was down (a restart) are unknown: scan once.
            rescan_pending: true,
            rescan_task: None,
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
                let answer = match state.take(&t, now_ms(), None).await {
                    Ok(()) => {
                        state.creating.insert(t.clone(), Instant::now());
                        Ok(())
                    }
                    Err(LeaseError::Lost) => Err(ClaimRefused::Held(format!(
                        "tenant {t} already exists (node {} holds its lease)",
                        state.args.handle.owner(&t).unwrap_or_else(|| "unknown".into())
                    ))),
                    Err(e) => Err(ClaimRefused::Unavailable(format!(
                        "the tenant's lease could not be claimed ({e}); retry shortly"
                    ))),
                };
                let _ = reply.send(answer);
            }
            ClusterMsg::Forget(t, reply) => {
                state.held.remove(&t);
                state.args.handle.set_renewed(&t, None);
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
