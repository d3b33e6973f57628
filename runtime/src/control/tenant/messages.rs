//! What a TenantActor is started with and the typed messages it answers.

use std::sync::Arc;
use std::time::Duration;

use ractor::{ActorRef, RpcReplyPort};

use vrsky_actors::IntegrationId;
use vrsky_actors::TenantId;
use vrsky_actors::components::IntegrationSpec;
use vrsky_actors::integration::IntegrationStats;
use vrsky_actors::message::SharedStore;
use vrsky_actors::tenant::{Endpoint, InstanceStatus};
use vrsky_supervision::SupervisorMsg;

use crate::control::directory::Directory;
use crate::control::error::ControlError;
use crate::db::Db;
use crate::nats::SharedProvisioner;
use crate::producer::HttpClient;

/// Settings the tenant actors take from the configuration.
#[derive(Debug, Clone)]
pub struct TenantSettings {
    /// Allow loopback/private producer targets.
    pub allow_private_targets: bool,
    /// How long to wait for an instance's NATS connection.
    pub connect_timeout: Duration,
    /// How often each instance is probed.
    pub health_interval: Duration,
    /// Most live instances one tenant may have.
    pub instances_per_tenant_max: usize,
    /// How long the platform keeps a message waiting for retries (a retry policy must fit).
    pub retention: Duration,
    /// Messages a tenant NATS client buffers per subscription before it drops (the
    /// admission bound plus headroom, so a worker's backlog never overflows it).
    pub subscription_capacity: usize,
    /// How often the tenant's NATS users are rotated (`security.credential_rotation_days`);
    /// zero turns automatic rotation off.
    pub credential_rotation: Duration,
    /// Most bytes of a claim-checked payload filters and converters load.
    pub pipeline_read_max: u64,
}

/// The adapters a TenantActor's executor uses. Shared by every tenant of the node; none
/// of them holds tenant state.
pub struct TenantDeps {
    /// The metadata store (the durable desired state).
    pub db: Db,
    /// Runs instances.
    pub provisioner: SharedProvisioner,
    /// The producers' HTTP client.
    pub http: HttpClient,
    /// Durable message state, handed to the workers.
    pub store: SharedStore,
    /// Where the actor publishes its routing snapshot.
    pub directory: Arc<Directory>,
    /// Settings.
    pub settings: TenantSettings,
    /// Called when a tenant's NATS client dropped messages (a slow consumer): makes the
    /// tenant's `received` messages due for re-drive now.
    pub redrive_now: Arc<dyn Fn(&TenantId) + Send + Sync>,
    /// Seals and opens the secrets of stored specs.
    pub sealer: Arc<crate::secrets::Sealer>,
    /// The platform's wire MAC key: routes sign with it, workers check it.
    pub wire_key: vrsky_actors::wire::WireKey,
    /// NATS credentials: tenant accounts, this node's users, rotation and revocation.
    pub trust: Arc<crate::nats::trust::Trust>,
    /// The object store of claim-checked payloads, when one is configured.
    pub objects: Option<Arc<crate::objects::Objects>>,
}

/// Arguments of a TenantActor; cloned for every restart.
#[derive(Clone)]
pub struct TenantArgs {
    /// The tenant.
    pub tenant_id: TenantId,
    /// The tenant supervisor the actor starts its instances and integrations under (its
    /// own parent).
    pub supervisor: ActorRef<SupervisorMsg>,
    /// Adapters.
    pub deps: Arc<TenantDeps>,
}

/// An integration as the tenant knows it.
#[derive(Debug, Clone)]
pub struct IntegrationInfo {
    /// Owner.
    pub tenant_id: TenantId,
    /// The stored spec.
    pub spec: IntegrationSpec,
    /// Which life of the id.
    pub incarnation: u64,
    /// Creation time as stored.
    pub created_at: String,
    /// Outcome counters on this node.
    pub stats: IntegrationStats,
}

/// An instance as the tenant knows it.
#[derive(Debug, Clone)]
pub struct InstanceInfo {
    /// 1-based number.
    pub number: u32,
    /// Where it listens.
    pub endpoint: Endpoint,
    /// Its lifecycle.
    pub status: InstanceStatus,
    /// Integrations it serves.
    pub integration_count: usize,
    /// Healthy by its probe and connected from this node.
    pub usable: bool,
}

/// A tenant's figures on this node.
#[derive(Debug, Clone)]
pub struct TenantStats {
    /// The tenant.
    pub tenant_id: vrsky_actors::TenantId,
    /// Its integrations.
    pub integrations: usize,
    /// Live instances taking new messages.
    pub instances_active: usize,
    /// Live instances being emptied.
    pub instances_draining: usize,
    /// Live instances that are healthy and connected from this node.
    pub instances_usable: usize,
    /// The integrations' counters added up.
    pub totals: IntegrationStats,
}

/// Reply of a request to a tenant.
pub type Reply<T> = RpcReplyPort<Result<T, ControlError>>;

/// Messages a TenantActor answers. Requests that change the tenant are handled one at a
/// time, so changes never interleave.
#[derive(Debug)]
pub enum TenantMsg {
    /// Start (or restart) the subtree from the desired state; sent by the actor to itself.
    Start,
    /// Answers once the subtree runs (or with why it does not).
    AwaitRunning(Reply<()>),
    /// Create an integration and start its worker.
    CreateIntegration(Box<IntegrationSpec>, Reply<IntegrationInfo>),
    /// Replace an integration's spec (same id) and restart its worker with it.
    UpdateIntegration(Box<IntegrationSpec>, Reply<IntegrationInfo>),
    /// Delete an integration and stop its worker.
    DeleteIntegration(IntegrationId, Reply<()>),
    /// One integration.
    GetIntegration(IntegrationId, Reply<IntegrationInfo>),
    /// Every integration, by id.
    ListIntegrations(Reply<Vec<IntegrationInfo>>),
    /// Provision one more instance and move the integrations onto the enlarged set.
    AddInstance(Reply<InstanceInfo>),
    /// Every live instance.
    ListInstances(Reply<Vec<InstanceInfo>>),
    /// Take an instance out of the publish rotation; the workers empty it.
    DrainInstance(u32, Reply<InstanceInfo>),
    /// Stop a drained instance and mark it terminated.
    RemoveInstance(u32, Reply<()>),
    /// The tenant's figures.
    Stats(Reply<TenantStats>),
    /// Rotate the tenant's NATS users now and revoke the old ones.
    RotateCredentials(Reply<crate::nats::trust::Rotation>),
    /// The rotation timer fired: rotate when due, else wait again.
    RotationDue,
}
