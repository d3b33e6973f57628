//! The control layer: the one handle the gateway (REST today, gRPC later) holds. It keeps
//! no tenant state of its own. Tenant-scoped requests become typed messages to the
//! tenant's TenantActor (`tenant/`), which owns that tenant's desired state; creating and
//! deleting a tenant starts and stops its subtree under the runtime supervisor; message
//! and dead-letter requests go to the platform state (`messages.rs`). The webhook path and
//! the scheduler read the routing snapshot the tenant actors publish (`directory.rs`).
//!
//! **Invariant:** the metadata store is the desired state. A TenantActor rebuilds its
//! subtree from it on every (re)start; a change that fails is undone before the caller
//! hears about it.

pub mod directory;
pub mod error;
mod messages;
pub mod tenant;

use std::sync::Arc;
use std::time::Duration;

use ractor::rpc::CallResult;
use ractor::{Actor, ActorRef};
use tracing::{info, warn};

use vrsky_actors::components::IntegrationSpec;
use vrsky_actors::nats_instance::InstanceSpec;
use vrsky_actors::tenant::{
    Endpoint, tenant_actor_child_name, tenant_actor_spec, tenant_child_name, tenant_supervisor_spec,
};
use vrsky_actors::{IntegrationId, TenantId};
use vrsky_supervision::{ChildSpec, SupervisorArgs, SupervisorExt, SupervisorMsg, TreeNode};

pub use directory::{Directory, Placement, RemoteRoutes, Route, RouteError, TenantPhase, TenantSnapshot};
pub use error::{ControlError, ControlErrorKind};
pub use messages::{BULK_REPLAY_MAX, ReplayFilter, ReplayReport};
pub use tenant::{
    InstanceInfo, IntegrationInfo, TenantActor, TenantArgs, TenantDeps, TenantMsg, TenantSettings, TenantStats,
};

use crate::db::{DbError, TenantRow};
use crate::platform::Platform;

/// Upper bound on one control request to a tenant actor; starting an instance may wait
/// for a process (or a pod) to come up.
const TENANT_CALL_TIMEOUT: Duration = Duration::from_secs(120);

/// The control layer.
pub struct Control {
    platform: Platform,
    root: ActorRef<SupervisorMsg>,
    deps: Arc<TenantDeps>,
    /// The root tree's change stream, when the root was spawned with one.
    tree_events: Option<vrsky_supervision::TreeEvents>,
    /// Tenant leases (set once the cluster actor exists).
    cluster: std::sync::OnceLock<Arc<crate::cluster::ClusterHandle>>,
}

fn call_failed<E: std::fmt::Display>(t: &TenantId, e: E) -> ControlError {
    ControlError::unavailable(format!("tenant {t} did not answer ({e}); retry shortly"))
}

impl Control {
    /// The object store of claim-checked payloads, when one is configured.
    pub fn objects(&self) -> Option<&Arc<crate::objects::Objects>> {
        self.deps.objects.as_ref()
    }

    /// A control layer over a running root supervisor. Join it to the cluster next
    /// ([`Control::set_cluster`]): the cluster actor starts the tenants this node holds.
    pub fn new(platform: Platform, root: ActorRef<SupervisorMsg>, deps: TenantDeps) -> Self {
        Control {
            platform,
            root,
            deps: Arc::new(deps),
            tree_events: None,
            cluster: std::sync::OnceLock::new(),
        }
    }

    /// Joins the control layer to the cluster: tenants it creates are claimed for this
    /// node, tenants it deletes lose their lease.
    pub fn set_cluster(&self, handle: Arc<crate::cluster::ClusterHandle>) {
        let _ = self.cluster.set(handle);
    }

    /// The cluster handle, once set.
    pub fn cluster(&self) -> Option<&Arc<crate::cluster::ClusterHandle>> {
        self.cluster.get()
    }

    /// Starts a tenant's subtree here (the cluster actor, once this node holds its lease);
    /// nothing when it already runs. Whether it started one.
    pub async fn start_tenant(&self, t: &TenantId) -> Result<bool, ControlError> {
        if self.root.child(&tenant_child_name(t)).await?.is_some() {
            return Ok(false);
        }
        self.deps.directory.publish(t, TenantSnapshot::starting(None));
        self.root.start_child(self.subtree(t)).await?;
        Ok(true)
    }

    /// Waits, up to `wait`, for a tenant's subtree to run.
    pub async fn await_running(&self, t: &TenantId, wait: Duration) -> Result<(), ControlError> {
        match tokio::time::timeout(wait, self.ask(t, TenantMsg::AwaitRunning)).await {
            Ok(r) => r,
            Err(_) => Err(ControlError::unavailable(format!("tenant {t} is not running yet"))),
        }
    }

    /// Stops a tenant's subtree here (its lease is lost or given up); its rows and
    /// messages stay, for the next owner.
    pub async fn stop_tenant(&self, t: &TenantId) {
        self.stop_subtree(t).await;
    }

    async fn cluster_call<T: Send + 'static>(
        &self,
        msg: impl FnOnce(ractor::RpcReplyPort<T>) -> crate::cluster::ClusterMsg,
    ) -> Result<Option<T>, ControlError> {
        let Some(actor) = self.cluster.get().and_then(|h| h.actor()) else {
            return Ok(None);
        };
        match actor.call(msg, Some(TENANT_CALL_TIMEOUT)).await {
            Ok(CallResult::Success(v)) => Ok(Some(v)),
            _ => Err(ControlError::unavailable(
                "the cluster actor did not answer (it is restarting); retry shortly",
            )),
        }
    }

    /// The same control layer, whose root supervisor sends its tree's changes to `events`
    /// (for [`Control::watch_tree`]).
    pub fn with_tree_events(mut self, events: vrsky_supervision::TreeEvents) -> Self {
        self.tree_events = Some(events);
        self
    }

    /// The metadata store.
    pub fn db(&self) -> &crate::db::Db {
        &self.deps.db
    }

    /// The platform state.
    pub fn platform(&self) -> &Platform {
        &self.platform
    }

    /// The routing snapshot.
    pub fn directory(&self) -> &Arc<Directory> {
        &self.deps.directory
    }

    /// Where a webhook goes, from the routing snapshot (no mailbox round trip).
    pub fn route(&self, t: &TenantId, i: &IntegrationId) -> Result<Arc<Route>, ControlError> {
        Ok(self.deps.directory.route(t, i)?)
    }

    /// Where a webhook goes, also for a tenant another node runs (see
    /// [`Directory::ingress_route`]).
    pub async fn ingress_route(&self, t: &TenantId, i: &IntegrationId) -> Result<Arc<Route>, ControlError> {
        Ok(self.deps.directory.ingress_route(t, i).await?)
    }

    /// The route looked up again once a webhook's body is in: a slow upload may have
    /// outlived its integration (404) or seen it replaced. A tenant that began (re)starting
    /// meanwhile (a claim, a hand-over) keeps the route the request began with: the message
    /// is stored with that incarnation, and a publish that finds no connection is re-driven.
    pub async fn ingress_route_again(
        &self,
        t: &TenantId,
        i: &IntegrationId,
        first: &Arc<Route>,
    ) -> Result<Arc<Route>, ControlError> {
        match self.deps.directory.ingress_route(t, i).await {
            Err(RouteError::Starting(_)) => Ok(first.clone()),
            other => Ok(other?),
        }
    }

    /// The adapters tenants use (the cluster's remote ingress shares them).
    pub fn deps(&self) -> &Arc<TenantDeps> {
        &self.deps
    }

    /// The tenant subtree's child spec: a supervisor whose one initial child is the
    /// TenantActor, which starts the rest.
    fn subtree(&self, t: &TenantId) -> ChildSpec {
        let (tenant, deps) = (t.clone(), self.deps.clone());
        let owner = move || {
            let (t, deps) = (tenant.clone(), deps.clone());
            tenant_actor_spec(ChildSpec::worker(tenant_actor_child_name(&t), move |sup| {
                let args = TenantArgs {
                    tenant_id: t.clone(),
                    supervisor: sup.clone().into(),
                    deps: deps.clone(),
                };
                async move {
                    let (r, _) = Actor::spawn_linked(None, TenantActor, args, sup).await?;
                    Ok(r.get_cell())
                }
            }))
        };
        tenant_supervisor_spec(SupervisorArgs {
            name: tenant_child_name(t),
            children: Arc::new(move || {
                let spec = owner();
                Box::pin(async move { Ok(vec![spec]) })
            }),
            span: None,
            events: None,
            path: Vec::new(),
        })
    }

    /// The running TenantActor of a tenant.
    async fn tenant_actor(&self, t: &TenantId) -> Result<ActorRef<TenantMsg>, ControlError> {
        let Some(snapshot) = self.deps.directory.get(t) else {
            return Err(ControlError::not_found(format!("tenant {t} not found")));
        };
        let restarting = || match &snapshot.phase {
            TenantPhase::Starting(Some(why)) => ControlError::unavailable(format!(
                "tenant {t} is starting (last attempt failed: {why}); retry shortly"
            )),
            _ => ControlError::unavailable(format!("tenant {t} is restarting; retry shortly")),
        };
        let sup: ActorRef<SupervisorMsg> = self
            .root
            .child(&tenant_child_name(t))
            .await?
            .ok_or_else(restarting)?
            .into();
        let owner = sup.child(&tenant_actor_child_name(t)).await?.ok_or_else(restarting)?;
        Ok(owner.into())
    }

    /// Sends a request to a tenant's actor and waits for its answer.
    async fn ask<T: Send + 'static>(
        &self,
        t: &TenantId,
        msg: impl FnOnce(tenant::Reply<T>) -> TenantMsg,
    ) -> Result<T, ControlError> {
        let actor = self.tenant_actor(t).await?;
        match actor.call(msg, Some(TENANT_CALL_TIMEOUT)).await {
            Ok(CallResult::Success(answer)) => answer,
            Ok(CallResult::Timeout) => Err(call_failed(t, "timed out")),
            Ok(CallResult::SenderError) => Err(call_failed(t, "it restarted while handling the request")),
            Err(e) => Err(call_failed(t, e)),
        }
    }

    /// Creates a tenant and starts its first NATS instance. Nothing is left behind when
    /// the instance fails to start.
    pub async fn create_tenant(&self, t: &TenantId, name: &str) -> Result<TenantRow, ControlError> {
        if name.trim().is_empty() || name.len() > 255 {
            return Err(ControlError::invalid("name", "must be 1 to 255 characters"));
        }
        let db = &self.deps.db;
        if db.tenant(t).await?.is_some() || self.deps.directory.get(t).is_some() {
            return Err(ControlError::already_exists(format!("tenant {t} already exists")));
        }
        match self
            .cluster_call(|r| crate::cluster::ClusterMsg::ClaimNew(t.clone(), r))
            .await?
        {
            Some(Err(crate::cluster::ClaimRefused::Held(why))) => return Err(ControlError::already_exists(why)),
            Some(Err(crate::cluster::ClaimRefused::Unavailable(why))) => return Err(ControlError::unavailable(why)),
            Some(Ok(())) | None => {}
        }
        let created = self.create_claimed(t, name).await;
        if created.is_err() {
            let _ = self
                .cluster_call(|r| crate::cluster::ClusterMsg::Forget(t.clone(), r))
                .await;
        }
        created
    }

    async fn create_claimed(&self, t: &TenantId, name: &str) -> Result<TenantRow, ControlError> {
        let db = &self.deps.db;
        let endpoint = self
            .deps
            .provisioner
            .endpoint(t, 1)
            .map_err(|e| ControlError::invalid("id", e.to_string()))?;
        db.create_tenant(t, name, &endpoint.dns_name())
            .await
            .map_err(|e| match e {
                DbError::Conflict => ControlError::already_exists(format!("tenant {t} already exists")),
                other => other.into(),
            })?;
        self.deps.directory.publish(t, TenantSnapshot::starting(None));
        let started = async {
            self.root.start_child(self.subtree(t)).await?;
            self.ask(t, TenantMsg::AwaitRunning).await
        }
        .await;
        if let Err(e) = started {
            // The actor's own reason is more precise than "it restarted".
            let e = match self.deps.directory.get(t).map(|s| s.phase.clone()) {
                Some(TenantPhase::Starting(Some(why))) => {
                    ControlError::unavailable(format!("tenant {t} failed to start: {why}"))
                }
                _ => e,
            };
            warn!(tenant_id = %t, error = %e, "tenant start failed; rolling back");
            self.stop_subtree(t).await;
            self.decommission(t).await;
            db.delete_tenant(t).await?;
            return Err(e);
        }
        info!(tenant_id = %t, "tenant created");
        db.tenant(t)
            .await?
            .ok_or_else(|| ControlError::internal(format!("tenant {t} vanished after creation")))
    }

    /// Revokes every NATS user of a tenant that is being deleted, on each of its
    /// instances: their connections close now, before the instances stop (a server
    /// that outlives this, under Kubernetes say, refuses them too). Audited.
    async fn revoke_credentials(&self, t: &TenantId) {
        let urls: Vec<String> = match self.deps.directory.get(t) {
            Some(s) => s.instances.links().iter().map(|l| l.url.clone()).collect(),
            None => Vec::new(),
        };
        let (outcome, detail) = match self.deps.trust.revoke_all(t, &urls).await {
            Ok(n) => ("ok", format!("every user revoked on {n} server(s)")),
            Err(e) => {
                warn!(tenant_id = %t, error = %e, "revoking the tenant's NATS users failed; its servers are stopped anyway");
                ("failed", e.to_string())
            }
        };
        let entry = crate::db::AuditEntry::runtime(t.as_str(), "credentials.revoke", outcome, Some(detail));
        self.deps.db.record_audit(&entry).await;
    }

    /// Rotates a tenant's NATS users now (`POST /api/tenants/{t}/credentials/rotate`).
    pub async fn rotate_credentials(&self, t: &TenantId) -> Result<crate::nats::trust::Rotation, ControlError> {
        self.ask(t, TenantMsg::RotateCredentials).await
    }

    async fn stop_subtree(&self, t: &TenantId) {
        if let Ok(false) | Err(_) = self.root.stop_child(&tenant_child_name(t)).await {
            warn!(tenant_id = %t, "tenant subtree was not running");
        }
        if let Some(snapshot) = self.deps.directory.get(t) {
            for link in snapshot.instances.links() {
                tokio::spawn(async move { link.drain().await });
            }
        }
        self.deps.directory.remove(t);
    }

    /// Removes what the tenant's instances left (processes' directories, Kubernetes
    /// objects), from the stored rows.
    async fn decommission(&self, t: &TenantId) {
        let rows = match self.deps.db.instances(t).await {
            Ok(rows) => rows,
            Err(e) => return warn!(tenant_id = %t, error = %e, "instances unknown; nothing decommissioned"),
        };
        for row in rows {
            let port = match Endpoint::parse(&row.dns_name) {
                Ok(e) => e.port,
                Err(e) => {
                    warn!(tenant_id = %t, instance = row.instance_number, error = %e, "decommission skipped");
                    continue;
                }
            };
            let spec = InstanceSpec {
                tenant_id: t.clone(),
                instance_number: row.instance_number as u32,
                client_port: port,
            };
            if let Err(e) = self.deps.provisioner.decommission(spec).await {
                warn!(tenant_id = %t, instance = row.instance_number, error = %e, "decommission failed");
            }
        }
    }

    /// Deletes a tenant: stops its subtree (and so its NATS instances), removes what the
    /// instances left, purges its messages and deletes its metadata.
    pub async fn delete_tenant(&self, t: &TenantId) -> Result<(), ControlError> {
        if self.deps.db.tenant(t).await?.is_none() {
            return Err(ControlError::not_found(format!("tenant {t} not found")));
        }
        self.revoke_credentials(t).await;
        self.stop_subtree(t).await;
        self.decommission(t).await;
        self.platform.purge_tenant(t).await?;
        if let Some(objects) = &self.deps.objects {
            // What is left (the store down) the orphan sweeper removes: no state holds it.
            match objects.delete_tenant(t).await {
                Ok(n) => info!(tenant_id = %t, objects = n, "tenant payload objects deleted"),
                Err(e) => warn!(tenant_id = %t, error = %e, "tenant payload objects not all deleted; the sweeper will"),
            }
        }
        self.deps.db.delete_tenant(t).await?;
        let _ = self
            .cluster_call(|r| crate::cluster::ClusterMsg::Forget(t.clone(), r))
            .await;
        info!(tenant_id = %t, "tenant deleted");
        Ok(())
    }

    /// One tenant.
    pub async fn tenant(&self, t: &TenantId) -> Result<TenantRow, ControlError> {
        self.deps
            .db
            .tenant(t)
            .await?
            .ok_or_else(|| ControlError::not_found(format!("tenant {t} not found")))
    }

    /// All tenants.
    pub async fn tenants(&self) -> Result<Vec<TenantRow>, ControlError> {
        Ok(self.deps.db.tenants().await?)
    }

    /// Creates an integration and starts its worker.
    pub async fn create_integration(
        &self,
        t: &TenantId,
        spec: IntegrationSpec,
    ) -> Result<IntegrationInfo, ControlError> {
        self.ask(t, |r| TenantMsg::CreateIntegration(Box::new(spec), r)).await
    }

    /// Replaces an integration's spec and restarts its worker with it; the previous spec
    /// stays when the new one cannot start.
    pub async fn update_integration(
        &self,
        t: &TenantId,
        spec: IntegrationSpec,
    ) -> Result<IntegrationInfo, ControlError> {
        self.ask(t, |r| TenantMsg::UpdateIntegration(Box::new(spec), r)).await
    }

    /// Deletes an integration and stops its worker.
    pub async fn delete_integration(&self, t: &TenantId, i: &IntegrationId) -> Result<(), ControlError> {
        let i = i.clone();
        self.ask(t, |r| TenantMsg::DeleteIntegration(i, r)).await
    }

    /// One integration with its counters.
    pub async fn integration(&self, t: &TenantId, i: &IntegrationId) -> Result<IntegrationInfo, ControlError> {
        let i = i.clone();
        self.ask(t, |r| TenantMsg::GetIntegration(i, r)).await
    }

    /// A tenant's integrations.
    pub async fn integrations(&self, t: &TenantId) -> Result<Vec<IntegrationInfo>, ControlError> {
        self.ask(t, TenantMsg::ListIntegrations).await
    }

    /// Provisions one more NATS instance for a tenant and moves its integrations onto the
    /// enlarged set; nothing is left behind when it fails.
    pub async fn add_instance(&self, t: &TenantId) -> Result<InstanceInfo, ControlError> {
        self.ask(t, TenantMsg::AddInstance).await
    }

    /// Takes an instance out of the publish rotation; the workers empty it.
    pub async fn drain_instance(&self, t: &TenantId, n: u32) -> Result<InstanceInfo, ControlError> {
        self.ask(t, |r| TenantMsg::DrainInstance(n, r)).await
    }

    /// Stops a drained instance and marks it terminated.
    pub async fn remove_instance(&self, t: &TenantId, n: u32) -> Result<(), ControlError> {
        self.ask(t, |r| TenantMsg::RemoveInstance(n, r)).await
    }

    /// A tenant's figures on this node.
    pub async fn stats(&self, t: &TenantId) -> Result<TenantStats, ControlError> {
        self.ask(t, TenantMsg::Stats).await
    }

    /// A tenant's live instances (discovery filters the usable ones).
    pub async fn instances(&self, t: &TenantId) -> Result<Vec<InstanceInfo>, ControlError> {
        self.ask(t, TenantMsg::ListInstances).await
    }

    /// A running child of the runtime supervisor (`retry-scheduler`, `tenant:{t}`), if it
    /// runs now.
    pub async fn runtime_child(&self, name: &str) -> Result<Option<ractor::ActorCell>, ControlError> {
        Ok(self.root.child(name).await?)
    }

    /// The running IntegrationActor of an integration, if it runs now.
    pub async fn integration_cell(
        &self,
        t: &TenantId,
        i: &IntegrationId,
    ) -> Result<Option<ractor::ActorCell>, ControlError> {
        let Some(sup) = self.root.child(&tenant_child_name(t)).await? else {
            return Ok(None);
        };
        let sup: ActorRef<SupervisorMsg> = sup.into();
        Ok(sup.child(&vrsky_actors::tenant::integration_child_name(i)).await?)
    }

    /// The live supervision tree.
    pub async fn tree(&self) -> Result<TreeNode, ControlError> {
        Ok(self.root.tree().await?)
    }

    /// The live tree, then its changes: the receiver gets every change numbered above the
    /// returned number (the changes made while the snapshot was taken may be in it too,
    /// so a watcher applies them idempotently).
    pub async fn watch_tree(
        &self,
    ) -> Result<
        (
            TreeNode,
            u64,
            tokio::sync::broadcast::Receiver<vrsky_supervision::TreeEvent>,
        ),
        ControlError,
    > {
        let events = self
            .tree_events
            .as_ref()
            .ok_or_else(|| ControlError::unavailable("this node does not stream its tree's changes"))?;
        // Subscribed before the snapshot, so nothing between the two is missed.
        let rx = events.subscribe();
        let after = events.last_seq();
        Ok((self.tree().await?, after, rx))
    }

    /// Stops every subtree (and so every tenant nats-server).
    pub async fn shutdown(&self) {
        let _ = self
            .root
            .stop_and_wait(Some("runtime shutting down".into()), Some(Duration::from_secs(15)))
            .await;
        for (t, _) in self.deps.directory.all() {
            self.deps.directory.remove(&t);
        }
    }
}
