//! IntegrationActor: one per integration. Subscribes on the tenant's NATS instance, runs
//! filters and converters, calls the producer.

mod messages;

use std::sync::Arc;
use std::sync::atomic::Ordering;

use futures::StreamExt;
use ractor::{Actor, ActorProcessingErr, ActorRef};
use tokio::sync::Semaphore;
use tracing::{Instrument, debug, info, info_span, warn};

pub use messages::{IntegrationArgs, IntegrationCounters, IntegrationMsg, IntegrationStats};

use crate::components::Outcome;
use crate::{subjects, wire};

/// The actor. Its state owns the subscription pump; dropping the state (stop, failure or
/// kill) aborts the pump and unsubscribes. Deliveries already started run to completion.
#[derive(Debug, Default, Clone, Copy)]
pub struct IntegrationActor;

/// Aborts a task when dropped.
#[derive(Debug)]
pub struct AbortOnDrop(pub tokio::task::JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// Running state: the pump task.
#[derive(Debug)]
pub struct IntegrationState {
    _pump: AbortOnDrop,
    counters: Arc<IntegrationCounters>,
}

async fn process(msg: async_nats::Message, args: Arc<IntegrationArgs>) {
    let c = &args.counters;
    c.received.fetch_add(1, Ordering::Relaxed);
    let env = match wire::decode(msg.headers.as_ref(), msg.payload) {
        Ok(env) => env,
        Err(error) => {
            c.malformed.fetch_add(1, Ordering::Relaxed);
            warn!(tenant_id = %args.tenant_id, integration_id = %args.integration_id, %error, "undecodable message dropped");
            return;
        }
    };
    if env.tenant_id != args.tenant_id || env.integration_id != args.integration_id {
        c.malformed.fetch_add(1, Ordering::Relaxed);
        warn!(tenant_id = %args.tenant_id, integration_id = %args.integration_id,
            claimed_tenant = %env.tenant_id, claimed_integration = %env.integration_id,
            "message for another integration dropped");
        return;
    }
    let span = info_span!("integration.deliver", tenant_id = %env.tenant_id,
        integration_id = %env.integration_id, message_id = %env.message_id, attempt = env.attempt);
    let args = args.clone();
    async move {
        let c = &args.counters;
        match args.pipeline.run(env) {
            Outcome::Deliver(env) => match args.producer.deliver(&env).await {
                Ok(d) => {
                    c.delivered.fetch_add(1, Ordering::Relaxed);
                    debug!(status = d.status, "delivered");
                }
                Err(error) => {
                    c.failed.fetch_add(1, Ordering::Relaxed);
                    warn!(status = error.status, kind = ?error.kind, %error, "delivery failed");
                }
            },
            Outcome::Filtered { filter } => {
                c.filtered.fetch_add(1, Ordering::Relaxed);
                debug!(filter, "filtered out");
            }
            Outcome::ConvertFailed { converter, error } => {
                c.failed.fetch_add(1, Ordering::Relaxed);
                warn!(converter, %error, "conversion failed");
            }
        }
    }
    .instrument(span)
    .await;
}

impl Actor for IntegrationActor {
    type Msg = IntegrationMsg;
    type State = IntegrationState;
    type Arguments = IntegrationArgs;

    async fn pre_start(
        &self,
        myself: ActorRef<IntegrationMsg>,
        args: IntegrationArgs,
    ) -> Result<IntegrationState, ActorProcessingErr> {
        let subject = subjects::integration_inbox(&args.tenant_id, &args.integration_id);
        let group = subjects::integration_queue_group(&args.integration_id);
        let mut sub = args.client.queue_subscribe(subject.clone(), group).await?;
        info!(tenant_id = %args.tenant_id, integration_id = %args.integration_id, %subject, "integration subscribed");
        let counters = args.counters.clone();
        // Bound: at most `max_in_flight` deliveries run at once; beyond that the pump
        // stops reading and NATS buffers (and, being core NATS, may drop: see ARCHITECTURE).
        let permits = Arc::new(Semaphore::new(args.max_in_flight));
        let args = Arc::new(args);
        let pump = tokio::spawn(async move {
            while let Some(msg) = sub.next().await {
                let Ok(permit) = permits.clone().acquire_owned().await else {
                    break;
                };
                let args = args.clone();
                tokio::spawn(async move {
                    process(msg, args).await;
                    drop(permit);
                });
            }
            let _ = myself.send_message(IntegrationMsg::SubscriptionEnded);
        });
        Ok(IntegrationState {
            _pump: AbortOnDrop(pump),
            counters,
        })
    }

    async fn handle(
        &self,
        _myself: ActorRef<IntegrationMsg>,
        msg: IntegrationMsg,
        state: &mut IntegrationState,
    ) -> Result<(), ActorProcessingErr> {
        match msg {
            IntegrationMsg::SubscriptionEnded => Err("nats subscription ended".into()),
            IntegrationMsg::GetStats(reply) => {
                let _ = reply.send(state.counters.snapshot());
                Ok(())
            }
        }
    }
}
