//! NatsInstanceActor: one per tenant NATS instance. Owns the instance's life through a
//! [`Provisioner`]: starts it, notices when it dies (the actor then fails, and its
//! supervisor restarts it, which starts the instance again), stops it on a normal stop.

mod port;

use ractor::{Actor, ActorProcessingErr, ActorRef, RpcReplyPort};
use tracing::{info, warn};

pub use port::{InstanceSpec, ProvisionError, Provisioner, RunningInstance, StopHandle};

/// The actor.
#[derive(Debug, Default, Clone, Copy)]
pub struct NatsInstanceActor;

/// Arguments; cloned for every restart.
#[derive(Clone)]
pub struct NatsInstanceArgs {
    /// Which instance.
    pub spec: InstanceSpec,
    /// Who runs it.
    pub provisioner: std::sync::Arc<dyn Provisioner>,
}

/// Messages a NatsInstanceActor accepts.
#[derive(Debug)]
pub enum NatsInstanceMsg {
    /// The instance's process (or pod) went away.
    Exited(String),
    /// Where it listens and what it runs.
    GetStatus(RpcReplyPort<InstanceStatus>),
}

/// What a running instance reports.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct InstanceStatus {
    /// Client URL.
    pub url: String,
    /// nats-server version.
    pub server_version: String,
}

/// Running state.
#[derive(Debug)]
pub struct NatsInstanceState {
    status: InstanceStatus,
    stop: Option<StopHandle>,
}

impl Actor for NatsInstanceActor {
    type Msg = NatsInstanceMsg;
    type State = NatsInstanceState;
    type Arguments = NatsInstanceArgs;

    async fn pre_start(
        &self,
        myself: ActorRef<NatsInstanceMsg>,
        args: NatsInstanceArgs,
    ) -> Result<NatsInstanceState, ActorProcessingErr> {
        let running = args.provisioner.start(args.spec.clone()).await?;
        let RunningInstance {
            url,
            server_version,
            exited,
            stop,
        } = running;
        info!(tenant_id = %args.spec.tenant_id, instance = args.spec.instance_number, %url,
            version = %server_version, "nats instance running");
        tokio::spawn(async move {
            if let Ok(reason) = exited.await {
                let _ = myself.send_message(NatsInstanceMsg::Exited(reason));
            }
        });
        Ok(NatsInstanceState {
            status: InstanceStatus { url, server_version },
            stop: Some(stop),
        })
    }

    async fn post_stop(
        &self,
        _myself: ActorRef<NatsInstanceMsg>,
        state: &mut NatsInstanceState,
    ) -> Result<(), ActorProcessingErr> {
        if let Some(stop) = state.stop.take() {
            stop.stop().await;
        }
        Ok(())
    }

    async fn handle(
        &self,
        _myself: ActorRef<NatsInstanceMsg>,
        msg: NatsInstanceMsg,
        state: &mut NatsInstanceState,
    ) -> Result<(), ActorProcessingErr> {
        match msg {
            NatsInstanceMsg::Exited(reason) => {
                warn!(url = %state.status.url, %reason, "nats instance exited");
                // Nothing left to stop; fail so the supervisor restarts the instance.
                state.stop = None;
                Err(format!("nats instance {} exited: {reason}", state.status.url).into())
            }
            NatsInstanceMsg::GetStatus(reply) => {
                let _ = reply.send(state.status.clone());
                Ok(())
            }
        }
    }
}
