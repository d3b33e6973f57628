//! TenantActor: one per tenant, the first child of its tenant supervisor. It owns the
//! tenant's desired state (instances, integrations, routes), answers typed requests one
//! at a time, decides with the pure functions of `vrsky_actors::tenant` and carries the
//! decisions out through its executor. It starts its instances and integrations as
//! siblings under the tenant supervisor, which restarts them by their policies.
//!
//! A start that fails (an instance that cannot run, a metadata store that is down) marks
//! the tenant `starting` in the routing snapshot, with the reason, and fails the actor:
//! its supervisor starts it again with backoff (500 ms to 30 s) for as long as the tenant
//! exists. Meanwhile its webhooks get 503 and the scheduler leaves its messages alone.

mod executor;
mod messages;

use std::collections::HashMap;

use ractor::{Actor, ActorProcessingErr, ActorRef};
use tracing::{info, warn};

use vrsky_actors::message::new_incarnation;
use vrsky_actors::now_ms;
use vrsky_actors::tenant::{Command, IntegrationModel, TenantModel};

pub use executor::TenantActorState;
pub(crate) use executor::{instance_model, integration_model};
pub use messages::{
    InstanceInfo, IntegrationInfo, Reply, TenantArgs, TenantDeps, TenantMsg, TenantSettings, TenantStats,
};

use super::error::{ControlError, ControlErrorKind};

/// The actor.
#[derive(Debug, Default, Clone, Copy)]
pub struct TenantActor;

fn copy(e: &ControlError) -> ControlError {
    ControlError::new(e.kind(), e.to_string())
}

impl TenantActorState {
    fn not_running(&self) -> ControlError {
        ControlError::unavailable(format!("tenant {} is starting; retry shortly", self.args.tenant_id))
    }

    async fn start(&mut self) -> Result<(), ControlError> {
        self.running = false;
        self.load().await?;
        let steps = self.model.decide_start();
        self.execute(&steps).await?;
        self.running = true;
        self.publish();
        Ok(())
    }

    async fn create_integration(
        &mut self,
        spec: vrsky_actors::components::IntegrationSpec,
    ) -> Result<IntegrationInfo, ControlError> {
        if !self.running {
            return Err(self.not_running());
        }
        spec.validate()?;
        spec.retry.validate(self.args.deps.settings.retention)?;
        let steps = self.model.decide_create_integration(&spec.id)?;
        // A new life of this id: messages an earlier integration of the same id left
        // unfinished are not delivered by this one (see `MessageState::incarnation`).
        let id = spec.id.clone();
        self.model.integrations.insert(
            id.clone(),
            IntegrationModel {
                spec,
                incarnation: new_incarnation(now_ms()),
                created_at: String::new(),
            },
        );
        if let Err(e) = self.execute(&steps).await {
            warn!(tenant_id = %self.args.tenant_id, integration_id = %id, error = %e,
                "integration start failed; rolling back");
            let stored = !e.kind().is_conflict();
            self.model.integrations.remove(&id);
            self.execute(&[Command::StopIntegration(id.clone()), Command::PublishRoutes])
                .await?;
            if stored {
                self.args.deps.db.delete_integration(&self.args.tenant_id, &id).await?;
            }
            return Err(e);
        }
        info!(tenant_id = %self.args.tenant_id, integration_id = %id, "integration created");
        let m = self
            .model
            .integrations
            .get(&id)
            .ok_or_else(|| ControlError::internal("integration vanished"))?;
        Ok(self.integration_info(m))
    }

    async fn update_integration(
        &mut self,
        mut spec: vrsky_actors::components::IntegrationSpec,
    ) -> Result<IntegrationInfo, ControlError> {
        if !self.running {
            return Err(self.not_running());
        }
        if let Some(previous) = self.model.integrations.get(&spec.id) {
            spec.keep_secrets_from(&previous.spec);
        }
        spec.validate()?;
        spec.retry.validate(self.args.deps.settings.retention)?;
        let id = spec.id.clone();
        let steps = self.model.decide_update_integration(&id)?;
        let previous = self
            .model
            .integrations
            .get(&id)
            .cloned()
            .ok_or_else(|| ControlError::internal("integration vanished"))?;
        // The same life of the id: messages already accepted are delivered by the new spec.
        let updated = IntegrationModel {
            spec,
            incarnation: previous.incarnation,
            created_at: previous.created_at.clone(),
        };
        // A producer the node refuses (a private target) is refused before anything changes.
        self.integration_args(&updated)?;
        self.model.integrations.insert(id.clone(), updated);
        if let Err(e) = self.execute(&steps).await {
            warn!(tenant_id = %self.args.tenant_id, integration_id = %id, error = %e,
                "integration update failed; restoring the previous spec");
            self.model.integrations.insert(id.clone(), previous);
            self.execute(&steps).await?;
            return Err(e);
        }
        info!(tenant_id = %self.args.tenant_id, integration_id = %id, "integration updated");
        let m = self
            .model
            .integrations
            .get(&id)
            .ok_or_else(|| ControlError::internal("integration vanished"))?;
        Ok(self.integration_info(m))
    }

    async fn drain_instance(&mut self, n: u32) -> Result<InstanceInfo, ControlError> {
        if !self.running {
            return Err(self.not_running());
        }
        let steps = self.model.decide_drain_instance(n)?;
        self.execute(&steps).await?;
        info!(tenant_id = %self.args.tenant_id, instance = n, "nats instance draining");
        let m = self
            .model
            .instances
            .get(&n)
            .ok_or_else(|| ControlError::internal("instance vanished"))?;
        Ok(self.instance_info(m))
    }

    async fn remove_instance(&mut self, n: u32) -> Result<(), ControlError> {
        if !self.running {
            return Err(self.not_running());
        }
        let steps = self.model.decide_remove_instance(n)?;
        // Each step is safe to repeat, so a removal that failed half-way is finished by
        // asking again.
        self.execute(&steps).await?;
        info!(tenant_id = %self.args.tenant_id, instance = n, "nats instance removed");
        Ok(())
    }

    fn stats(&self) -> TenantStats {
        let mut totals = vrsky_actors::integration::IntegrationStats::default();
        for id in self.model.integrations.keys() {
            if let Some(c) = self.counters.get(id) {
                totals.add(&c.snapshot());
            }
        }
        let live: Vec<_> = self.model.live_instances().collect();
        let count = |s: vrsky_actors::tenant::InstanceStatus| live.iter().filter(|i| i.status == s).count();
        TenantStats {
            tenant_id: self.args.tenant_id.clone(),
            integrations: self.model.integrations.len(),
            instances_active: count(vrsky_actors::tenant::InstanceStatus::Active),
            instances_draining: count(vrsky_actors::tenant::InstanceStatus::Draining),
            instances_usable: live
                .iter()
                .filter(|i| self.link(i.number).is_some_and(|l| l.usable()))
                .count(),
            totals,
        }
    }

    async fn delete_integration(&mut self, id: &vrsky_actors::IntegrationId) -> Result<(), ControlError> {
        if !self.running {
            return Err(self.not_running());
        }
        let steps = self.model.decide_delete_integration(id)?;
        self.execute(&steps).await?;
        info!(tenant_id = %self.args.tenant_id, integration_id = %id, "integration deleted");
        Ok(())
    }

    /// New NATS users for this tenant, the old ones revoked on every live instance; then
    /// the tenant's `received` messages are re-driven, so what the closed connections
    /// dropped is published again (claims are revision-checked: nothing runs twice).
    async fn rotate_credentials(&mut self) -> Result<crate::nats::trust::Rotation, ControlError> {
        if !self.running {
            return Err(self.not_running());
        }
        let t = self.args.tenant_id.clone();
        let deps = self.args.deps.clone();
        let links = self.instances.links();
        let urls: Vec<String> = links.iter().map(|l| l.url.clone()).collect();
        let connects = |c: &async_nats::Client| c.statistics().connects.load(std::sync::atomic::Ordering::Relaxed);
        let before: Vec<(u64, u64)> = links
            .iter()
            .map(|l| (connects(&l.publisher), connects(&l.subscriber)))
            .collect();
        let rotation = deps
            .trust
            .rotate(&t, &urls)
            .await
            .map_err(|e| ControlError::unavailable(format!("rotating the NATS credentials of {t}: {e}")))?;
        // The servers close the old users' connections; each client comes back with the
        // new user (its auth callback reads it), and only then is anything re-driven.
        let back = || {
            links
                .iter()
                .zip(&before)
                .all(|(l, (p, s))| l.connected() && connects(&l.publisher) > *p && connects(&l.subscriber) > *s)
        };
        let deadline = tokio::time::Instant::now() + deps.settings.connect_timeout;
        while !back() && tokio::time::Instant::now() < deadline {
            tokio::time::sleep(std::time::Duration::from_millis(20)).await;
        }
        (deps.redrive_now)(&t);
        info!(tenant_id = %t, servers = rotation.servers_updated, "nats credentials rotated");
        Ok(rotation)
    }

    /// Arms the automatic rotation timer for when it is next due.
    fn arm_rotation(&self, myself: &ActorRef<TenantMsg>, rotated_at_ms: u64) {
        if let Some(wait) =
            crate::nats::trust::rotation_wait(rotated_at_ms, now_ms(), self.args.deps.settings.credential_rotation)
        {
            myself.send_after(wait.max(std::time::Duration::from_secs(1)), || TenantMsg::RotationDue);
        }
    }

    async fn rotated_at_ms(&self) -> Option<u64> {
        self.args
            .deps
            .trust
            .tenant(&self.args.tenant_id)
            .await
            .ok()
            .map(|a| a.rotated_at_ms())
    }

    async fn add_instance(&mut self) -> Result<InstanceInfo, ControlError> {
        if !self.running {
            return Err(self.not_running());
        }
        let (n, steps) = self.model.decide_add_instance()?;
        let endpoint = self
            .args
            .deps
            .provisioner
            .endpoint(&self.args.tenant_id, n)
            .map_err(|e| ControlError::caused(ControlErrorKind::Unavailable, "choosing the instance's address", e))?;
        self.model.instances.insert(
            n,
            vrsky_actors::tenant::InstanceModel {
                number: n,
                endpoint,
                status: vrsky_actors::tenant::InstanceStatus::Active,
            },
        );
        if let Err(e) = self.execute(&steps).await {
            warn!(tenant_id = %self.args.tenant_id, instance = n, error = %e, "instance start failed; rolling back");
            if e.kind().is_conflict() {
                self.model.instances.remove(&n);
            } else {
                self.forget_instance(n).await?;
            }
            return Err(e);
        }
        info!(tenant_id = %self.args.tenant_id, instance = n, "nats instance added");
        let m = self
            .model
            .instances
            .get(&n)
            .ok_or_else(|| ControlError::internal("instance vanished"))?;
        Ok(self.instance_info(m))
    }
}

impl Actor for TenantActor {
    type Msg = TenantMsg;
    type State = TenantActorState;
    type Arguments = TenantArgs;

    async fn pre_start(
        &self,
        myself: ActorRef<TenantMsg>,
        args: TenantArgs,
    ) -> Result<TenantActorState, ActorProcessingErr> {
        // Connections and counters from before a restart of this actor are kept: they are
        // in the snapshot it published.
        let previous = args.deps.directory.get(&args.tenant_id);
        let (instances, counters) = match &previous {
            Some(p) => (p.instances.clone(), p.counters.clone()),
            None => (Default::default(), HashMap::new()),
        };
        if previous.is_none() {
            args.deps
                .directory
                .publish(&args.tenant_id, super::directory::TenantSnapshot::starting(None));
        }
        let model = TenantModel::new(args.tenant_id.clone(), args.deps.settings.instances_per_tenant_max);
        myself.send_message(TenantMsg::Start)?;
        Ok(TenantActorState {
            args,
            model,
            instances,
            counters,
            detached: HashMap::new(),
            running: false,
            waiting: Vec::new(),
        })
    }

    async fn handle(
        &self,
        myself: ActorRef<TenantMsg>,
        msg: TenantMsg,
        state: &mut TenantActorState,
    ) -> Result<(), ActorProcessingErr> {
        match msg {
            TenantMsg::Start => match state.start().await {
                Ok(()) => {
                    info!(tenant_id = %state.args.tenant_id, instances = state.model.live_instances().count(),
                        integrations = state.model.integrations.len(), "tenant running");
                    for w in state.waiting.drain(..) {
                        let _ = w.send(Ok(()));
                    }
                    if let Some(at) = state.rotated_at_ms().await {
                        state.arm_rotation(&myself, at);
                    }
                }
                Err(e) => {
                    warn!(tenant_id = %state.args.tenant_id, error = %e, "tenant failed to start; retrying with backoff");
                    state.publish_starting(Some(e.to_string()));
                    for w in state.waiting.drain(..) {
                        let _ = w.send(Err(copy(&e)));
                    }
                    // The supervisor starts this actor again after its backoff.
                    return Err(Box::new(e));
                }
            },
            TenantMsg::AwaitRunning(reply) => {
                if state.running {
                    let _ = reply.send(Ok(()));
                } else {
                    state.waiting.push(reply);
                }
            }
            TenantMsg::CreateIntegration(spec, reply) => {
                let _ = reply.send(state.create_integration(*spec).await);
            }
            TenantMsg::UpdateIntegration(spec, reply) => {
                let _ = reply.send(state.update_integration(*spec).await);
            }
            TenantMsg::DeleteIntegration(id, reply) => {
                let _ = reply.send(state.delete_integration(&id).await);
            }
            TenantMsg::GetIntegration(id, reply) => {
                let found = state.model.integrations.get(&id).map(|m| state.integration_info(m));
                let _ = reply.send(found.ok_or_else(|| {
                    ControlError::not_found(format!("integration {id} not found in tenant {}", state.args.tenant_id))
                }));
            }
            TenantMsg::ListIntegrations(reply) => {
                let all = state
                    .model
                    .integrations
                    .values()
                    .map(|m| state.integration_info(m))
                    .collect();
                let _ = reply.send(Ok(all));
            }
            TenantMsg::AddInstance(reply) => {
                let _ = reply.send(state.add_instance().await);
            }
            TenantMsg::ListInstances(reply) => {
                let all = state.model.live_instances().map(|m| state.instance_info(m)).collect();
                let _ = reply.send(Ok(all));
            }
            TenantMsg::DrainInstance(n, reply) => {
                let _ = reply.send(state.drain_instance(n).await);
            }
            TenantMsg::RemoveInstance(n, reply) => {
                let _ = reply.send(state.remove_instance(n).await);
            }
            TenantMsg::Stats(reply) => {
                let _ = reply.send(Ok(state.stats()));
            }
            TenantMsg::RotateCredentials(reply) => {
                let _ = reply.send(state.rotate_credentials().await);
            }
            TenantMsg::RotationDue => {
                let Some(at) = state.rotated_at_ms().await else {
                    return Ok(());
                };
                let due = crate::nats::trust::rotation_wait(at, now_ms(), state.args.deps.settings.credential_rotation);
                if due == Some(std::time::Duration::ZERO) {
                    let t = state.args.tenant_id.to_string();
                    let entry = match state.rotate_credentials().await {
                        Ok(r) => crate::db::AuditEntry::runtime(
                            &t,
                            "credentials.rotate",
                            "ok",
                            Some(format!(
                                "automatic; users issued at or before {} revoked",
                                r.revoked_before_s
                            )),
                        ),
                        Err(e) => {
                            warn!(tenant_id = %t, error = %e, "automatic credential rotation failed; retrying in a minute");
                            myself.send_after(std::time::Duration::from_secs(60), || TenantMsg::RotationDue);
                            let e =
                                crate::db::AuditEntry::runtime(&t, "credentials.rotate", "failed", Some(e.to_string()));
                            state.args.deps.db.record_audit(&e).await;
                            return Ok(());
                        }
                    };
                    state.args.deps.db.record_audit(&entry).await;
                }
                if let Some(at) = state.rotated_at_ms().await {
                    state.arm_rotation(&myself, at);
                }
            }
        }
        Ok(())
    }
}
