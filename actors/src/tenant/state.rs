//! A tenant's desired state and the pure decisions over it. The TenantActor hands its
//! state and a request in and gets back either a [`Refusal`] or the [`Command`]s to carry
//! out, in order; its executor does the I/O. Nothing here waits, reads a clock or touches
//! the network, so every decision is tested without actors.

use std::collections::BTreeMap;
use std::fmt;

use serde::{Deserialize, Serialize};

use crate::components::IntegrationSpec;
use crate::ids::{IntegrationId, TenantId};

/// Lifecycle of a tenant NATS instance: the `status` column of `nats_instances`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum InstanceStatus {
    /// Serving the tenant.
    Active,
    /// Being emptied before it is removed.
    Draining,
    /// Removed; kept as a record only.
    Terminated,
}

impl InstanceStatus {
    /// The stored and displayed name.
    pub fn as_str(self) -> &'static str {
        match self {
            InstanceStatus::Active => "active",
            InstanceStatus::Draining => "draining",
            InstanceStatus::Terminated => "terminated",
        }
    }

    /// Parses a stored status.
    pub fn parse(s: &str) -> Result<Self, String> {
        match s {
            "active" => Ok(InstanceStatus::Active),
            "draining" => Ok(InstanceStatus::Draining),
            "terminated" => Ok(InstanceStatus::Terminated),
            other => Err(format!("unknown instance status {other:?}")),
        }
    }

    /// Whether the instance still runs (is not terminated).
    pub fn is_live(self) -> bool {
        self != InstanceStatus::Terminated
    }
}

impl fmt::Display for InstanceStatus {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Where a tenant instance accepts clients: a host and a port, typed, so a provisioner
/// whose instances listen on the default port (Kubernetes services) and one that picks a
/// port per instance (local processes) are handled alike.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Endpoint {
    /// Host name or address.
    pub host: String,
    /// Client port.
    pub port: u16,
}

impl Endpoint {
    /// The NATS client port when none is written.
    pub const DEFAULT_PORT: u16 = 4222;

    /// Parses the stored `dns_name`: `host` (port 4222) or `host:port`.
    pub fn parse(dns_name: &str) -> Result<Self, String> {
        let bad = |why: &str| format!("instance address {dns_name:?}: {why}");
        let (host, port) = match dns_name.rsplit_once(':') {
            Some((host, port)) => (
                host,
                port.parse::<u16>()
                    .ok()
                    .filter(|p| *p != 0)
                    .ok_or_else(|| bad("the port must be 1 to 65535"))?,
            ),
            None => (dns_name, Self::DEFAULT_PORT),
        };
        if host.is_empty() || host.contains(['/', ' ', '@']) {
            return Err(bad("no host name"));
        }
        Ok(Endpoint {
            host: host.to_owned(),
            port,
        })
    }

    /// The form stored in `nats_instances.dns_name`: `host` on the default port, else
    /// `host:port`.
    pub fn dns_name(&self) -> String {
        if self.port == Self::DEFAULT_PORT {
            self.host.clone()
        } else {
            format!("{}:{}", self.host, self.port)
        }
    }

    /// The client URL.
    pub fn url(&self) -> String {
        format!("nats://{}:{}", self.host, self.port)
    }
}

/// One instance as the tenant wants it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct InstanceModel {
    /// 1-based number (`nats-{tenant}-{N}`).
    pub number: u32,
    /// Where it listens.
    pub endpoint: Endpoint,
    /// Its lifecycle.
    pub status: InstanceStatus,
}

/// One integration as the tenant wants it.
#[derive(Debug, Clone, PartialEq)]
pub struct IntegrationModel {
    /// The validated spec.
    pub spec: IntegrationSpec,
    /// Which life of the id this is (see [`crate::message::MessageState::incarnation`]).
    pub incarnation: u64,
    /// Creation time as stored.
    pub created_at: String,
}

/// A tenant's desired state, owned by its TenantActor. Bound: at most
/// `instances_max` live instances; integrations as many as the tenant creates.
#[derive(Debug, Clone, PartialEq)]
pub struct TenantModel {
    /// The tenant.
    pub tenant_id: TenantId,
    /// Every instance ever numbered, by number (terminated ones too, so numbers are not
    /// reused).
    pub instances: BTreeMap<u32, InstanceModel>,
    /// Integrations by id.
    pub integrations: BTreeMap<IntegrationId, IntegrationModel>,
    /// Most live instances (`nats.instances_per_tenant_max`).
    pub instances_max: usize,
}

/// A step the TenantActor's executor carries out. Each either succeeds or leaves the
/// executor to undo the steps before it, so a refused change leaves nothing behind.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Command {
    /// Write the integration's row (the durable desired state).
    StoreIntegration(IntegrationId),
    /// Rewrite the integration's stored spec with the one in the model.
    UpdateIntegration(IntegrationId),
    /// Start (or replace) the integration's IntegrationActor.
    StartIntegration(IntegrationId),
    /// Stop the integration's IntegrationActor for good.
    StopIntegration(IntegrationId),
    /// Delete the integration's row.
    DeleteIntegration(IntegrationId),
    /// Drop the integration's counters: a later integration of the id starts from zero.
    ResetCounters(IntegrationId),
    /// Write the instance's row.
    StoreInstance(u32),
    /// Start the instance's NatsInstanceActor and wait until this node is connected.
    StartInstance(u32),
    /// Restart every integration on the current instance set (workers listen on every
    /// instance).
    RestartIntegrations,
    /// Put the instance in the publish rotation.
    AdmitInstance(u32),
    /// Take the instance out of the publish rotation: no new message goes to it, and the
    /// workers still take what it holds.
    WithdrawInstance(u32),
    /// Set the instance's status, in the model and in its row.
    MarkInstance(u32, InstanceStatus),
    /// Drop this node's connection to the instance from the set the workers listen on
    /// (the next [`Command::RestartIntegrations`] leaves it out).
    DetachInstance(u32),
    /// Stop the instance's NatsInstanceActor (which stops the server) and remove what the
    /// provisioner made for it.
    StopInstance(u32),
    /// Publish the routing snapshot the webhook path and the scheduler read.
    PublishRoutes,
}

/// Why a request is refused, decided before anything is done.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Refusal {
    /// The named thing exists already (409).
    Exists(String),
    /// The named thing does not exist (404).
    Missing(String),
    /// A limit is reached (409).
    AtLimit(String),
    /// The request does not fit the current state (409).
    Conflict(String),
}

impl fmt::Display for Refusal {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Refusal::Exists(m) | Refusal::Missing(m) | Refusal::AtLimit(m) | Refusal::Conflict(m) => f.write_str(m),
        }
    }
}

impl TenantModel {
    /// An empty model.
    pub fn new(tenant_id: TenantId, instances_max: usize) -> Self {
        TenantModel {
            tenant_id,
            instances: BTreeMap::new(),
            integrations: BTreeMap::new(),
            instances_max,
        }
    }

    /// Instances that are not terminated, by number.
    pub fn live_instances(&self) -> impl Iterator<Item = &InstanceModel> {
        self.instances.values().filter(|i| i.status.is_live())
    }

    /// What starting (or restarting) the tenant does: instances first, so integrations
    /// subscribe on running servers; then the integrations; then each instance joins the
    /// publish rotation and the routes are published.
    pub fn decide_start(&self) -> Vec<Command> {
        let mut out: Vec<Command> = self
            .live_instances()
            .map(|i| Command::StartInstance(i.number))
            .collect();
        out.extend(self.integrations.keys().cloned().map(Command::StartIntegration));
        out.extend(
            self.live_instances()
                .filter(|i| i.status == InstanceStatus::Active)
                .map(|i| Command::AdmitInstance(i.number)),
        );
        out.push(Command::PublishRoutes);
        out
    }

    /// Creating an integration: stored first (the desired state), then its worker, then
    /// its route, so a webhook is accepted only once a worker listens.
    pub fn decide_create_integration(&self, id: &IntegrationId) -> Result<Vec<Command>, Refusal> {
        if self.integrations.contains_key(id) {
            return Err(Refusal::Exists(format!(
                "integration {id} already exists in tenant {}",
                self.tenant_id
            )));
        }
        Ok(vec![
            Command::StoreIntegration(id.clone()),
            Command::StartIntegration(id.clone()),
            Command::PublishRoutes,
        ])
    }

    /// Deleting an integration: its row, then its route (webhooks get 404 from here on),
    /// then its worker and counters.
    pub fn decide_delete_integration(&self, id: &IntegrationId) -> Result<Vec<Command>, Refusal> {
        if !self.integrations.contains_key(id) {
            return Err(self.missing_integration(id));
        }
        Ok(vec![
            Command::DeleteIntegration(id.clone()),
            Command::PublishRoutes,
            Command::StopIntegration(id.clone()),
            Command::ResetCounters(id.clone()),
        ])
    }

    /// Adding an instance: the number it gets and the steps. Refused at the tenant's
    /// limit. The new instance joins the publish rotation only after every integration
    /// listens on it.
    pub fn decide_add_instance(&self) -> Result<(u32, Vec<Command>), Refusal> {
        let live = self.live_instances().count();
        if live >= self.instances_max {
            return Err(Refusal::AtLimit(format!(
                "tenant {} has {live} nats instances, the limit is {} (nats.instances_per_tenant_max)",
                self.tenant_id, self.instances_max
            )));
        }
        let number = self.instances.keys().next_back().copied().unwrap_or(0) + 1;
        Ok((
            number,
            vec![
                Command::StoreInstance(number),
                Command::StartInstance(number),
                Command::RestartIntegrations,
                Command::AdmitInstance(number),
                Command::PublishRoutes,
            ],
        ))
    }
    /// Updating an integration: the new spec is stored, then its worker is replaced (it
    /// takes the messages still queued for it, under the same incarnation), then its
    /// route. The id cannot change.
    pub fn decide_update_integration(&self, id: &IntegrationId) -> Result<Vec<Command>, Refusal> {
        if !self.integrations.contains_key(id) {
            return Err(self.missing_integration(id));
        }
        Ok(vec![
            Command::UpdateIntegration(id.clone()),
            Command::StartIntegration(id.clone()),
            Command::PublishRoutes,
        ])
    }

    fn missing_integration(&self, id: &IntegrationId) -> Refusal {
        Refusal::Missing(format!("integration {id} not found in tenant {}", self.tenant_id))
    }

    fn live_instance(&self, n: u32) -> Result<&InstanceModel, Refusal> {
        self.instances
            .get(&n)
            .filter(|i| i.status.is_live())
            .ok_or_else(|| Refusal::Missing(format!("nats instance {n} not found in tenant {}", self.tenant_id)))
    }

    /// Draining an instance: it leaves the publish rotation, so new messages go to the
    /// other active instances, while the workers keep taking what it holds. Draining a
    /// draining instance changes nothing. The last active instance cannot be drained:
    /// the tenant's messages would have nowhere to go.
    pub fn decide_drain_instance(&self, n: u32) -> Result<Vec<Command>, Refusal> {
        let instance = self.live_instance(n)?;
        if instance.status == InstanceStatus::Draining {
            return Ok(Vec::new());
        }
        let others = self
            .live_instances()
            .filter(|i| i.number != n && i.status == InstanceStatus::Active)
            .count();
        if others == 0 {
            return Err(Refusal::Conflict(format!(
                "nats instance {n} is the last active instance of tenant {}; add one before draining it",
                self.tenant_id
            )));
        }
        Ok(vec![
            Command::MarkInstance(n, InstanceStatus::Draining),
            Command::WithdrawInstance(n),
            Command::PublishRoutes,
        ])
    }

    /// Removing an instance: only a drained one, so nothing new was sent to it. The
    /// workers stop listening on it before its server stops; anything it still held is
    /// re-driven from the durable state. Its row stays, `terminated`, so its number is
    /// not reused.
    pub fn decide_remove_instance(&self, n: u32) -> Result<Vec<Command>, Refusal> {
        let instance = self.live_instance(n)?;
        if instance.status != InstanceStatus::Draining {
            return Err(Refusal::Conflict(format!(
                "nats instance {n} of tenant {} is {}; drain it before removing it",
                self.tenant_id, instance.status
            )));
        }
        Ok(vec![
            Command::WithdrawInstance(n),
            Command::DetachInstance(n),
            Command::RestartIntegrations,
            Command::StopInstance(n),
            Command::MarkInstance(n, InstanceStatus::Terminated),
            Command::PublishRoutes,
        ])
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    fn model(instances: &[(u32, InstanceStatus)], integrations: &[&str], max: usize) -> TenantModel {
        let mut m = TenantModel::new(TenantId::new("acme").unwrap(), max);
        for (n, status) in instances {
            m.instances.insert(
                *n,
                InstanceModel {
                    number: *n,
                    endpoint: Endpoint::parse(&format!("127.0.0.1:{}", 4000 + n)).unwrap(),
                    status: *status,
                },
            );
        }
        for i in integrations {
            let spec: IntegrationSpec = serde_json::from_value(serde_json::json!({
                "id": i, "producer": {"type": "http", "url": "https://example.com/x"}
            }))
            .unwrap();
            m.integrations.insert(
                spec.id.clone(),
                IntegrationModel {
                    spec,
                    incarnation: 1,
                    created_at: String::new(),
                },
            );
        }
        m
    }

    fn id(s: &str) -> IntegrationId {
        IntegrationId::new(s).unwrap()
    }

    #[test]
    fn endpoints_carry_their_port() {
        let k = Endpoint::parse("nats-acme-1.vrsky-tenants.svc.cluster.local").unwrap();
        assert_eq!(k.port, 4222);
        assert_eq!(k.url(), "nats://nats-acme-1.vrsky-tenants.svc.cluster.local:4222");
        assert_eq!(k.dns_name(), "nats-acme-1.vrsky-tenants.svc.cluster.local");
        let l = Endpoint::parse("127.0.0.1:14222").unwrap();
        assert_eq!((l.host.as_str(), l.port), ("127.0.0.1", 14222));
        assert_eq!(l.dns_name(), "127.0.0.1:14222");
        assert_eq!(Endpoint::parse(&l.dns_name()).unwrap(), l);
        for bad in ["", ":4222", "h:0", "h:70000", "h:x", "a b:1"] {
            assert!(Endpoint::parse(bad).is_err(), "{bad:?} accepted");
        }
    }

    #[test]
    fn statuses_round_trip_and_only_terminated_is_dead() {
        for s in [
            InstanceStatus::Active,
            InstanceStatus::Draining,
            InstanceStatus::Terminated,
        ] {
            assert_eq!(InstanceStatus::parse(s.as_str()).unwrap(), s);
        }
        assert!(InstanceStatus::parse("gone").is_err());
        assert!(InstanceStatus::Draining.is_live());
        assert!(!InstanceStatus::Terminated.is_live());
    }

    #[test]
    fn start_runs_live_instances_before_integrations_and_admits_the_active_ones_after() {
        let m = model(
            &[
                (1, InstanceStatus::Active),
                (2, InstanceStatus::Terminated),
                (3, InstanceStatus::Draining),
            ],
            &["a", "b"],
            8,
        );
        assert_eq!(
            m.decide_start(),
            vec![
                Command::StartInstance(1),
                Command::StartInstance(3),
                Command::StartIntegration(id("a")),
                Command::StartIntegration(id("b")),
                Command::AdmitInstance(1),
                Command::PublishRoutes,
            ],
            "a draining instance runs (its messages are taken) but gets no new ones"
        );
    }

    #[test]
    fn creating_an_integration_stores_then_starts_then_routes() {
        let m = model(&[(1, InstanceStatus::Active)], &["a"], 8);
        assert!(matches!(m.decide_create_integration(&id("a")), Err(Refusal::Exists(_))));
        assert_eq!(
            m.decide_create_integration(&id("b")).unwrap(),
            vec![
                Command::StoreIntegration(id("b")),
                Command::StartIntegration(id("b")),
                Command::PublishRoutes
            ]
        );
    }

    #[test]
    fn deleting_an_integration_unroutes_before_stopping() {
        let m = model(&[(1, InstanceStatus::Active)], &["a"], 8);
        assert!(matches!(
            m.decide_delete_integration(&id("b")),
            Err(Refusal::Missing(_))
        ));
        let steps = m.decide_delete_integration(&id("a")).unwrap();
        let at = |c: &Command| steps.iter().position(|s| s == c).unwrap();
        assert!(at(&Command::DeleteIntegration(id("a"))) < at(&Command::PublishRoutes));
        assert!(at(&Command::PublishRoutes) < at(&Command::StopIntegration(id("a"))));
        assert!(steps.contains(&Command::ResetCounters(id("a"))));
    }

    #[test]
    fn an_added_instance_is_numbered_past_every_earlier_one_and_admitted_last() {
        let m = model(&[(1, InstanceStatus::Active), (2, InstanceStatus::Terminated)], &[], 2);
        let (n, steps) = m.decide_add_instance().unwrap();
        assert_eq!(n, 3, "a terminated instance's number is not reused");
        assert_eq!(steps.first(), Some(&Command::StoreInstance(3)));
        let at = |c: &Command| steps.iter().position(|s| s == c).unwrap();
        assert!(at(&Command::RestartIntegrations) < at(&Command::AdmitInstance(3)));
        assert!(at(&Command::StartInstance(3)) < at(&Command::RestartIntegrations));
    }

    #[test]
    fn instances_stop_at_the_limit_counting_only_live_ones() {
        let full = model(&[(1, InstanceStatus::Active), (2, InstanceStatus::Draining)], &[], 2);
        match full.decide_add_instance() {
            Err(Refusal::AtLimit(m)) => assert!(m.contains("nats.instances_per_tenant_max"), "{m}"),
            other => panic!("{other:?}"),
        }
        let room = model(&[(1, InstanceStatus::Active), (2, InstanceStatus::Terminated)], &[], 2);
        assert!(room.decide_add_instance().is_ok());
        assert_eq!(model(&[], &[], 1).decide_add_instance().unwrap().0, 1);
    }

    #[test]
    fn updating_an_integration_stores_then_replaces_its_worker() {
        let m = model(&[(1, InstanceStatus::Active)], &["a"], 8);
        assert!(matches!(
            m.decide_update_integration(&id("b")),
            Err(Refusal::Missing(_))
        ));
        assert_eq!(
            m.decide_update_integration(&id("a")).unwrap(),
            vec![
                Command::UpdateIntegration(id("a")),
                Command::StartIntegration(id("a")),
                Command::PublishRoutes
            ]
        );
    }

    #[test]
    fn draining_withdraws_an_instance_but_never_the_last_active_one() {
        let m = model(&[(1, InstanceStatus::Active), (2, InstanceStatus::Active)], &["a"], 8);
        assert_eq!(
            m.decide_drain_instance(1).unwrap(),
            vec![
                Command::MarkInstance(1, InstanceStatus::Draining),
                Command::WithdrawInstance(1),
                Command::PublishRoutes
            ]
        );
        assert!(matches!(m.decide_drain_instance(3), Err(Refusal::Missing(_))));
        let last = model(&[(1, InstanceStatus::Draining), (2, InstanceStatus::Active)], &[], 8);
        assert!(
            matches!(last.decide_drain_instance(2), Err(Refusal::Conflict(ref why)) if why.contains("last active")),
            "{:?}",
            last.decide_drain_instance(2)
        );
        assert_eq!(
            last.decide_drain_instance(1).unwrap(),
            vec![],
            "draining twice changes nothing"
        );
        let gone = model(&[(1, InstanceStatus::Terminated), (2, InstanceStatus::Active)], &[], 8);
        assert!(matches!(gone.decide_drain_instance(1), Err(Refusal::Missing(_))));
    }

    #[test]
    fn only_a_drained_instance_is_removed_and_workers_leave_it_before_it_stops() {
        let m = model(&[(1, InstanceStatus::Active), (2, InstanceStatus::Draining)], &["a"], 8);
        assert!(matches!(m.decide_remove_instance(1), Err(Refusal::Conflict(ref why)) if why.contains("drain it")));
        assert!(matches!(m.decide_remove_instance(9), Err(Refusal::Missing(_))));
        let steps = m.decide_remove_instance(2).unwrap();
        let at = |c: &Command| steps.iter().position(|s| s == c).unwrap();
        assert_eq!(steps.first(), Some(&Command::WithdrawInstance(2)));
        assert!(at(&Command::DetachInstance(2)) < at(&Command::RestartIntegrations));
        assert!(at(&Command::RestartIntegrations) < at(&Command::StopInstance(2)));
        assert!(at(&Command::StopInstance(2)) < at(&Command::MarkInstance(2, InstanceStatus::Terminated)));
        assert_eq!(steps.last(), Some(&Command::PublishRoutes));
        let removed = model(&[(1, InstanceStatus::Active), (2, InstanceStatus::Terminated)], &[], 8);
        assert!(matches!(removed.decide_remove_instance(2), Err(Refusal::Missing(_))));
    }
}
