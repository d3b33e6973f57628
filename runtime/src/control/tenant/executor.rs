//! The TenantActor's executor: carries out the [`Command`]s its pure decisions return,
//! against the metadata store, the tenant supervisor, the tenant's NATS connections and
//! the routing snapshot. It holds the actor's state; only the actor calls it.

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use tracing::warn;

use vrsky_actors::components::{IntegrationSpec, Pipeline, ProducerSpec, WebhookConsumer};
use vrsky_actors::integration::{IntegrationArgs, IntegrationCounters};
use vrsky_actors::nats_instance::{InstanceSpec, NatsInstanceArgs};
use vrsky_actors::tenant::{
    Command, Endpoint, InstanceModel, InstanceStatus, IntegrationModel, TenantModel, instance_child_name,
    instance_spec, integration_child_name, integration_spec,
};
use vrsky_actors::{IntegrationId, subjects};
use vrsky_supervision::{SupervisorError, SupervisorExt};

use super::messages::{InstanceInfo, IntegrationInfo, TenantArgs};
use crate::control::directory::{Route, TenantPhase, TenantSnapshot};
use crate::control::error::ControlError;
use crate::db::{InstanceRow, IntegrationRow};
use crate::instances::{InstanceLink, InstanceSet};
use crate::nats::connect_tenant;
use crate::nats::trust::Role;
use crate::producer::HttpProducer;

/// A TenantActor's state: the desired state, the connections and counters it hands to
/// its children, and whether the subtree runs.
pub struct TenantActorState {
    pub(super) args: TenantArgs,
    pub(super) model: TenantModel,
    /// This node's connections to the tenant's instances. Bound: one per live instance.
    pub(super) instances: Arc<InstanceSet>,
    /// Counters by integration; they outlive restarts of the workers and of this actor
    /// (they are kept in the snapshot). Bound: one per integration.
    pub(super) counters: HashMap<IntegrationId, Arc<IntegrationCounters>>,
    /// Connections taken out of the set the workers listen on, closed when their
    /// instance stops. Bound: instances being removed (one at a time).
    pub(super) detached: HashMap<u32, Arc<crate::instances::InstanceLink>>,
    /// Every instance runs and every integration listens.
    pub(super) running: bool,
    /// Callers waiting for the subtree to run. Bound: concurrent control calls.
    pub(super) waiting: Vec<super::messages::Reply<()>>,
}

pub(crate) fn instance_model(row: &InstanceRow) -> Result<InstanceModel, ControlError> {
    let corrupt = |m: String| ControlError::internal(format!("nats_instances row {}: {m}", row.instance_number));
    Ok(InstanceModel {
        number: u32::try_from(row.instance_number).map_err(|e| corrupt(e.to_string()))?,
        endpoint: Endpoint::parse(&row.dns_name).map_err(corrupt)?,
        status: InstanceStatus::parse(&row.status).map_err(corrupt)?,
    })
}

pub(crate) fn integration_model(
    row: &IntegrationRow,
    sealer: &crate::secrets::Sealer,
) -> Result<IntegrationModel, ControlError> {
    let spec: IntegrationSpec = serde_json::from_str(&row.spec)
        .map_err(|e| ControlError::internal(format!("stored spec of {}/{}: {e}", row.tenant_id, row.id)))?;
    let spec = sealer
        .open_spec(&row.tenant_id, spec)
        .map_err(|e| ControlError::internal(e.to_string()))?;
    Ok(IntegrationModel {
        spec,
        incarnation: row.incarnation,
        created_at: row.created_at.clone(),
    })
}

impl TenantActorState {
    /// Reads the desired state from the metadata store.
    pub(super) async fn load(&mut self) -> Result<(), ControlError> {
        let deps = &self.args.deps;
        let t = &self.args.tenant_id;
        let mut model = TenantModel::new(t.clone(), deps.settings.instances_per_tenant_max);
        for row in deps.db.instances(t).await? {
            let m = instance_model(&row)?;
            model.instances.insert(m.number, m);
        }
        for row in deps.db.integrations(t).await? {
            let m = integration_model(&row, &self.args.deps.sealer)?;
            // A stored spec that no longer builds (e.g. private targets now refused) is
            // left out with a warning rather than keeping the whole tenant down.
            if let Err(error) = self.integration_args(&m) {
                warn!(tenant_id = %t, integration_id = %row.id, %error, "stored integration cannot start; left out");
                continue;
            }
            model.integrations.insert(m.spec.id.clone(), m);
        }
        self.model = model;
        Ok(())
    }

    /// Carries out `commands` in order; stops at the first failure.
    pub(super) async fn execute(&mut self, commands: &[Command]) -> Result<(), ControlError> {
        for c in commands {
            self.run(c).await?;
        }
        Ok(())
    }

    async fn run(&mut self, command: &Command) -> Result<(), ControlError> {
        let t = self.args.tenant_id.clone();
        let deps = self.args.deps.clone();
        let sup = self.args.supervisor.clone();
        match command {
            Command::StoreIntegration(id) => {
                let m = self.integration(id)?;
                let json = self.stored_spec(&m.spec)?;
                let incarnation = m.incarnation;
                deps.db
                    .create_integration(&t, id, &json, incarnation)
                    .await
                    .map_err(|e| match e {
                        crate::db::DbError::Conflict => {
                            ControlError::already_exists(format!("integration {id} already exists in tenant {t}"))
                        }
                        other => other.into(),
                    })?;
                if let Some(row) = deps.db.integration(&t, id).await?
                    && let Some(m) = self.model.integrations.get_mut(id)
                {
                    m.created_at = row.created_at;
                }
            }
            Command::StartIntegration(id) => {
                self.counters_of(id);
                let args = self.integration_args(self.integration(id)?)?;
                // Replaces a worker left from before (a restart of this actor, or an
                // earlier integration of the id), so the one running has these arguments.
                sup.stop_child(&integration_child_name(id)).await?;
                match sup.start_child(integration_spec(args)).await {
                    Ok(_) => {}
                    Err(SupervisorError::DuplicateChild(_)) => {
                        return Err(ControlError::unavailable(format!(
                            "integration {id} was started concurrently; retry"
                        )));
                    }
                    Err(e) => return Err(e.into()),
                }
            }
            Command::UpdateIntegration(id) => {
                let json = self.stored_spec(&self.integration(id)?.spec)?;
                if !deps.db.update_integration(&t, id, &json).await? {
                    return Err(ControlError::not_found(format!(
                        "integration {id} not found in tenant {t}"
                    )));
                }
            }
            Command::StopIntegration(id) => {
                sup.stop_child(&integration_child_name(id)).await?;
            }
            Command::DeleteIntegration(id) => {
                deps.db.delete_integration(&t, id).await?;
                self.model.integrations.remove(id);
            }
            Command::ResetCounters(id) => {
                self.counters.remove(id);
            }
            Command::StoreInstance(n) => {
                let m = self.instance(*n)?;
                let count = self.model.integrations.len() as i32;
                deps.db
                    .insert_instance(&t, *n as i32, &m.endpoint.dns_name(), count)
                    .await
                    .map_err(|e| match e {
                        crate::db::DbError::Conflict => {
                            ControlError::conflict(format!("instance {n} of {t} was created concurrently; retry"))
                        }
                        other => other.into(),
                    })?;
            }
            Command::StartInstance(n) => self.start_instance(*n).await?,
            Command::RestartIntegrations => {
                let ids: Vec<IntegrationId> = self.model.integrations.keys().cloned().collect();
                for id in ids {
                    Box::pin(self.run(&Command::StartIntegration(id))).await?;
                }
                // A message published while a worker was being replaced found no
                // subscriber: re-drive the tenant's received messages now rather than
                // after `state.redrive_after_ms` (claims keep each processed once).
                (deps.redrive_now)(&t);
            }
            Command::AdmitInstance(n) => {
                if let Some(link) = self.link(*n) {
                    link.accepting.store(true, Ordering::Relaxed);
                }
            }
            Command::WithdrawInstance(n) => {
                if let Some(link) = self.link(*n) {
                    link.accepting.store(false, Ordering::Relaxed);
                }
            }
            Command::MarkInstance(n, status) => {
                if !deps.db.set_instance_status(&t, *n as i32, status.as_str()).await? {
                    return Err(ControlError::internal(format!("nats instance {n} of {t} has no row")));
                }
                if let Some(m) = self.model.instances.get_mut(n) {
                    m.status = *status;
                }
            }
            Command::DetachInstance(n) => {
                if let Some(link) = self.instances.remove(*n) {
                    self.detached.insert(*n, link);
                }
            }
            Command::StopInstance(n) => {
                let port = self.instance(*n)?.endpoint.port;
                if let Some(link) = self.detached.remove(n) {
                    // The workers left it; flush what this node still had for it, then close.
                    let _ = tokio::time::timeout(deps.settings.connect_timeout, link.drain()).await;
                }
                sup.stop_child(&instance_child_name(&t, *n)).await?;
                let spec = InstanceSpec {
                    tenant_id: t.clone(),
                    instance_number: *n,
                    client_port: port,
                };
                if let Err(e) = deps.provisioner.decommission(spec).await {
                    warn!(tenant_id = %t, instance = n, error = %e, "decommission failed; the instance is stopped");
                }
            }
            Command::PublishRoutes => self.publish(),
        }
        Ok(())
    }

    fn integration(&self, id: &IntegrationId) -> Result<&IntegrationModel, ControlError> {
        self.model
            .integrations
            .get(id)
            .ok_or_else(|| ControlError::internal(format!("integration {id} is not in the desired state")))
    }

    fn instance(&self, n: u32) -> Result<&InstanceModel, ControlError> {
        self.model
            .instances
            .get(&n)
            .ok_or_else(|| ControlError::internal(format!("instance {n} is not in the desired state")))
    }

    pub(super) fn link(&self, n: u32) -> Option<Arc<InstanceLink>> {
        self.instances.links().into_iter().find(|l| l.number == n)
    }

    fn counters_of(&mut self, id: &IntegrationId) -> Arc<IntegrationCounters> {
        self.counters.entry(id.clone()).or_default().clone()
    }

    /// A worker's arguments; fails when the spec's producer is refused (a private target).
    pub(super) fn integration_args(&self, m: &IntegrationModel) -> Result<IntegrationArgs, ControlError> {
        let deps = &self.args.deps;
        let ProducerSpec::Http(http) = &m.spec.producer;
        let producer = HttpProducer::new(deps.http.clone(), http, deps.settings.allow_private_targets)?
            .with_objects(deps.objects.clone());
        let release_payloads = producer.releases_payloads();
        Ok(IntegrationArgs {
            tenant_id: self.args.tenant_id.clone(),
            integration_id: m.spec.id.clone(),
            pipeline: Arc::new(Pipeline::from_specs(&m.spec.filters, &m.spec.converters)),
            producer: Arc::new(producer),
            clients: self.instances.clients(),
            max_in_flight: m.spec.max_in_flight,
            counters: self.counters.get(&m.spec.id).cloned().unwrap_or_default(),
            store: deps.store.clone(),
            retry: m.spec.retry,
            incarnation: m.incarnation,
            wire_key: deps.wire_key.clone(),
            payloads: deps.objects.clone().map(|o| o as Arc<dyn vrsky_actors::Payloads>),
            pipeline_read_max: deps.settings.pipeline_read_max,
            release_payloads,
        })
    }

    /// Connects to the instance (keeping a connection from before this actor's restart),
    /// starts its NatsInstanceActor, and waits until the instance runs and this node is
    /// connected. A new connection joins the publish rotation only when admitted.
    async fn start_instance(&mut self, n: u32) -> Result<(), ControlError> {
        let t = self.args.tenant_id.clone();
        let deps = self.args.deps.clone();
        let endpoint = self.instance(n)?.endpoint.clone();
        let url = endpoint.url();
        let link = match self.link(n) {
            Some(l) if l.url == url => l,
            _ => {
                let slow_consumers = Arc::new(std::sync::atomic::AtomicU64::new(0));
                let unavailable =
                    |e: &dyn std::fmt::Display| ControlError::unavailable(format!("tenant {t} nats instance {n}: {e}"));
                // Refreshed: another node may have rotated the users while it held the tenant.
                let (account, _) = deps.trust.refresh(&t).await.map_err(|e| unavailable(&e))?;
                let connect = |role: Role| {
                    let (count, redrive, tenant) = (slow_consumers.clone(), deps.redrive_now.clone(), t.clone());
                    let (options, urls) = (deps.trust.tenant_options(&account, role), vec![url.clone()]);
                    let name = format!("vrsky-{t}-{n}-{}", role.as_str());
                    let capacity = deps.settings.subscription_capacity;
                    async move {
                        connect_tenant(
                            options,
                            &urls,
                            &name,
                            capacity,
                            Arc::new(move || {
                                count.fetch_add(1, Ordering::Relaxed);
                                redrive(&tenant);
                            }),
                        )
                        .await
                    }
                };
                let publisher = connect(Role::Ingress).await.map_err(|e| unavailable(&e))?;
                let subscriber = match connect(Role::Worker).await {
                    Ok(c) => c,
                    Err(e) => {
                        drop(publisher.drain().await);
                        return Err(unavailable(&e));
                    }
                };
                let auth_events =
                    crate::nats::auth_events::watch(deps.trust.clone(), deps.db.clone(), t.clone(), n, url.clone());
                let link = Arc::new(InstanceLink {
                    number: n,
                    url,
                    publisher,
                    subscriber,
                    health: Arc::default(),
                    accepting: std::sync::atomic::AtomicBool::new(false),
                    slow_consumers,
                    auth_events: Some(auth_events),
                });
                self.instances.insert(link.clone());
                link
            }
        };
        let sup = &self.args.supervisor;
        let name = instance_child_name(&t, n);
        let spec = instance_spec(NatsInstanceArgs {
            spec: InstanceSpec {
                tenant_id: t.clone(),
                instance_number: n,
                client_port: endpoint.port,
            },
            provisioner: deps.provisioner.clone(),
            health: link.health.clone(),
            health_interval: deps.settings.health_interval,
        });
        match sup.start_child(spec).await {
            Ok(_) | Err(SupervisorError::DuplicateChild(_)) => {}
            Err(e) => return Err(e.into()),
        }
        if sup.child(&name).await?.is_none() {
            let why = sup
                .tree()
                .await?
                .find(&name)
                .and_then(|n| n.last_exit.clone())
                .unwrap_or_else(|| "not running".into());
            return Err(ControlError::unavailable(format!(
                "nats instance {name} failed to start: {why}"
            )));
        }
        wait_connected(&link, deps.settings.connect_timeout).await
    }

    /// Undoes an instance addition that failed: stops its actor, drops its connection,
    /// puts the integrations back on the old set and forgets its row.
    pub(super) async fn forget_instance(&mut self, n: u32) -> Result<(), ControlError> {
        let t = self.args.tenant_id.clone();
        let sup = &self.args.supervisor;
        let _ = sup.stop_child(&instance_child_name(&t, n)).await;
        if let Some(link) = self.instances.remove(n) {
            tokio::spawn(async move { link.drain().await });
        }
        self.model.instances.remove(&n);
        self.run(&Command::RestartIntegrations).await?;
        self.args.deps.db.delete_instance(&t, n as i32).await?;
        Ok(())
    }

    /// A spec as the metadata store keeps it: JSON with its secrets sealed.
    fn stored_spec(&self, spec: &IntegrationSpec) -> Result<String, ControlError> {
        let sealed = self
            .args
            .deps
            .sealer
            .seal_spec(&self.args.tenant_id, spec)
            .map_err(|e| ControlError::internal(e.to_string()))?;
        serde_json::to_string(&sealed).map_err(|e| ControlError::internal(e.to_string()))
    }

    /// Publishes this tenant's entry of the routing snapshot.
    pub(super) fn publish(&mut self) {
        let t = self.args.tenant_id.clone();
        let ids: Vec<IntegrationId> = self.model.integrations.keys().cloned().collect();
        let counters: HashMap<IntegrationId, Arc<IntegrationCounters>> =
            ids.iter().map(|id| (id.clone(), self.counters_of(id))).collect();
        let routes = self
            .model
            .integrations
            .values()
            .filter_map(|m| {
                let ProducerSpec::Http(http) = &m.spec.producer;
                // A stored spec passed validation; one whose secret no longer parses gets
                // no route (404) rather than a consumer that skips verification.
                let consumer = match WebhookConsumer::from_spec(&m.spec.consumer) {
                    Ok(c) => c,
                    Err(e) => {
                        warn!(tenant_id = %t, integration_id = %m.spec.id, error = %e, "integration not routed");
                        return None;
                    }
                };
                let route = Route {
                    subject: subjects::integration_inbox(&t, &m.spec.id),
                    consumer,
                    instances: self.instances.clone(),
                    retry: m.spec.retry,
                    timeout_ms: http.timeout_ms,
                    incarnation: m.incarnation,
                    counters: counters.get(&m.spec.id).cloned().unwrap_or_default(),
                    wire_key: self.args.deps.wire_key.clone(),
                };
                Some((m.spec.id.clone(), Arc::new(route)))
            })
            .collect();
        self.args.deps.directory.publish(
            &t,
            TenantSnapshot {
                phase: if self.running {
                    TenantPhase::Running
                } else {
                    TenantPhase::Starting(None)
                },
                routes,
                instances: self.instances.clone(),
                counters,
            },
        );
    }

    /// Marks the tenant as starting, with why the last start failed.
    pub(super) fn publish_starting(&self, reason: Option<String>) {
        self.args.deps.directory.update(&self.args.tenant_id, |s| {
            s.phase = TenantPhase::Starting(reason.clone())
        });
    }

    /// An integration as the API shows it.
    pub(super) fn integration_info(&self, m: &IntegrationModel) -> IntegrationInfo {
        IntegrationInfo {
            tenant_id: self.args.tenant_id.clone(),
            spec: m.spec.clone(),
            incarnation: m.incarnation,
            created_at: m.created_at.clone(),
            stats: self.counters.get(&m.spec.id).map(|c| c.snapshot()).unwrap_or_default(),
        }
    }

    /// An instance as the API shows it.
    pub(super) fn instance_info(&self, m: &InstanceModel) -> InstanceInfo {
        InstanceInfo {
            number: m.number,
            endpoint: m.endpoint.clone(),
            status: m.status,
            integration_count: self.model.integrations.len(),
            usable: self.link(m.number).is_some_and(|l| l.usable()),
        }
    }
}

async fn wait_connected(link: &InstanceLink, timeout: Duration) -> Result<(), ControlError> {
    let deadline = tokio::time::Instant::now() + timeout;
    while !link.connected() {
        if tokio::time::Instant::now() >= deadline {
            return Err(ControlError::unavailable(format!(
                "nats instance {} not reachable",
                link.url
            )));
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    Ok(())
}
