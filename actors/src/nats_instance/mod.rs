//! NatsInstanceActor: one per tenant NATS instance. Owns the instance's life through a
//! [`Provisioner`]: starts it, notices when it dies (the actor then fails, and its
//! supervisor restarts it, which starts the instance again), stops it on a normal stop.

mod health;
mod port;

use std::sync::Arc;
use std::time::Duration;

use ractor::{Actor, ActorProcessingErr, ActorRef};
use tracing::{info, warn};

pub use health::{InstanceHealth, probe};
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
    pub provisioner: Arc<dyn Provisioner>,
    /// Written by the actor, read by discovery and publishing.
    pub health: Arc<InstanceHealth>,
    /// How often the instance is probed.
    pub health_interval: Duration,
}

/// Messages a NatsInstanceActor accepts.
#[derive(Debug)]
pub enum NatsInstanceMsg {
    /// The instance's process (or pod) went away.
    Exited(String),
    /// Time to probe the instance.
    HealthTick,
}

/// Running state. Dropping it (stop, failure, kill) marks the instance unhealthy.
#[derive(Debug)]
pub struct NatsInstanceState {
    /// Client URL.
    url: String,
    stop: Option<StopHandle>,
    health: Arc<InstanceHealth>,
    _ticker: crate::integration::AbortOnDrop,
}

impl Drop for NatsInstanceState {
    fn drop(&mut self) {
        self.health.set(false, Some("instance actor stopped".into()));
    }
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
            monitor_url,
            exited,
            stop,
        } = running;
        args.health.set_monitor_url(monitor_url);
        info!(tenant_id = %args.spec.tenant_id, instance = args.spec.instance_number, %url,
            version = %server_version, "nats instance running");
        let me = myself.clone();
        tokio::spawn(async move {
            if let Ok(reason) = exited.await {
                let _ = me.send_message(NatsInstanceMsg::Exited(reason));
            }
        });
        args.health.set(true, None);
        let ticker = myself.send_interval(args.health_interval, || NatsInstanceMsg::HealthTick);
        Ok(NatsInstanceState {
            url,
            stop: Some(stop),
            health: args.health.clone(),
            _ticker: crate::integration::AbortOnDrop(ticker),
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
                warn!(url = %state.url, %reason, "nats instance exited");
                // Nothing left to stop; fail so the supervisor restarts the instance.
                state.stop = None;
                state.health.set(false, Some(format!("exited: {reason}")));
                Err(format!("nats instance {} exited: {reason}", state.url).into())
            }
            NatsInstanceMsg::HealthTick => {
                match probe(&state.url, Duration::from_secs(2)).await {
                    Ok(()) => state.health.set(true, None),
                    Err(e) => {
                        warn!(url = %state.url, error = %e, "nats instance failed its health check");
                        state.health.set(false, Some(e));
                    }
                }
                Ok(())
            }
        }
    }
}

#[cfg(test)]
mod tests;
