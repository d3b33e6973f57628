//! The provisioner port: how an instance is run (local process, Kubernetes objects).

use futures::future::BoxFuture;
use tokio::sync::oneshot;

use crate::ids::TenantId;
use crate::tenant::Endpoint;

/// Which instance to run.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct InstanceSpec {
    /// Owner tenant.
    pub tenant_id: TenantId,
    /// 1-based instance number (`nats-{tenant}-{N}`).
    pub instance_number: u32,
    /// Client port for local processes, fixed for the instance's life so clients can
    /// reconnect after a restart.
    pub client_port: u16,
}

/// Why an instance could not be started.
#[derive(Debug, thiserror::Error)]
pub enum ProvisionError {
    /// The server binary is missing or too old.
    #[error("nats-server unusable: {0}")]
    Binary(String),
    /// It started but did not become ready.
    #[error("nats instance did not become ready: {0}")]
    NotReady(String),
    /// Local I/O failed.
    #[error("nats instance i/o: {0}")]
    Io(#[from] std::io::Error),
}

/// A started instance.
#[derive(Debug)]
pub struct RunningInstance {
    /// Client URL (`nats://host:port`).
    pub url: String,
    /// The server's version string.
    pub server_version: String,
    /// The server's monitoring endpoint (`/varz`), when it has one the runtime can reach.
    pub monitor_url: Option<String>,
    /// Resolves, with a description, when the instance exits on its own.
    pub exited: oneshot::Receiver<String>,
    /// Stops it; dropping the handle stops it too.
    pub stop: StopHandle,
}

/// Stops a running instance. Dropping it asks for a stop without waiting.
#[derive(Debug)]
pub struct StopHandle {
    stop: Option<oneshot::Sender<()>>,
    done: Option<oneshot::Receiver<()>>,
}

impl StopHandle {
    /// A handle over a stop channel and a completion channel.
    pub fn new(stop: oneshot::Sender<()>, done: oneshot::Receiver<()>) -> Self {
        StopHandle {
            stop: Some(stop),
            done: Some(done),
        }
    }

    /// Asks the instance to stop and waits until it has.
    pub async fn stop(mut self) {
        if let Some(tx) = self.stop.take() {
            let _ = tx.send(());
        }
        if let Some(done) = self.done.take() {
            let _ = done.await;
        }
    }
}

/// Runs tenant NATS instances.
pub trait Provisioner: Send + Sync + 'static {
    /// Where a new instance will listen, chosen once for the instance's life (stored as
    /// `nats_instances.dns_name`, see [`Endpoint::dns_name`]).
    fn endpoint(&self, tenant: &TenantId, instance_number: u32) -> Result<Endpoint, ProvisionError>;
    /// Starts the instance (or takes over one still running) and returns once it accepts
    /// clients.
    fn start(&self, spec: InstanceSpec) -> BoxFuture<'static, Result<RunningInstance, ProvisionError>>;
    /// Removes what the instance left (objects, directories) once it is stopped for good.
    fn decommission(&self, spec: InstanceSpec) -> BoxFuture<'static, Result<(), ProvisionError>>;
}
