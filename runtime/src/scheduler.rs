//! RetryScheduler: one per node, supervised. Two duties, both durable in the platform
//! JetStream so a kill -9 loses neither:
//!
//! - **Due retries.** A durable work-queue consumer of `retry_queue`: an entry not yet due
//!   is NAKed with the remaining delay; a due one moves its message `retry -> received` and
//!   publishes it for delivery, then is acknowledged.
//! - **Re-drive.** A watch of every state key keeps [`Deadlines`] of unfinished messages;
//!   every tick, a message past its deadline gets [`Event::Redrive`]: a lost publish is
//!   published again, a claim whose worker died counts as a failed attempt, an overdue
//!   retry is made due.
//!
//! Handling runs in tasks bounded by `concurrency`; the actor itself only routes.

use std::sync::Arc;
use std::time::Duration;

use async_nats::jetstream::AckKind;
use futures::StreamExt;
use ractor::{Actor, ActorProcessingErr, ActorRef};
use tokio::sync::Semaphore;
use tracing::{debug, info, warn};

use vrsky_actors::integration::AbortOnDrop;
use vrsky_actors::message::{Committed, Committer, Deadlines, Event, MessageState, MessageStore, RetryPolicy, Status};
use vrsky_actors::{MessageId, TenantId, message};

use crate::control::Control;
use crate::platform::{Platform, retry_entry_of};

/// Scheduler settings.
#[derive(Clone)]
pub struct SchedulerArgs {
    /// Platform state.
    pub platform: Platform,
    /// Publishes re-driven and due messages, and knows each integration's policy.
    pub control: Arc<Control>,
    /// Grace before a stalled message is re-driven.
    pub redrive_after: Duration,
    /// How often deadlines are checked.
    pub tick: Duration,
    /// Re-drives and due retries handled at once.
    pub concurrency: usize,
}

/// Messages of the scheduler.
#[derive(Debug)]
pub enum SchedulerMsg {
    /// The watch saw a state change (`None`: deleted or expired).
    Observed(TenantId, MessageId, Option<MessageState>, u64),
    /// Time to look for overdue messages.
    Tick,
    /// An input stream ended; the actor fails and is restarted.
    InputEnded(&'static str),
}

/// The actor.
#[derive(Debug, Default, Clone, Copy)]
pub struct RetryScheduler;

/// Running state.
pub struct SchedulerState {
    args: SchedulerArgs,
    deadlines: Deadlines,
    permits: Arc<Semaphore>,
    _retry_pump: AbortOnDrop,
    _watch_pump: AbortOnDrop,
    _ticker: AbortOnDrop,
}

fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

fn policy_of(control: &Control, s: &MessageState) -> RetryPolicy {
    control
        .delivery_policy(&s.tenant_id, &s.integration_id)
        .map(|(p, _)| p)
        .unwrap_or_default()
}

/// Handles one retry-queue entry; returns how to answer the server.
async fn handle_due(args: &SchedulerArgs, t: TenantId, id: MessageId, retry_count: u32, due_ms: u64) -> AckKind {
    let now = now_ms();
    if due_ms > now + 5 {
        return AckKind::Nak(Some(Duration::from_millis(due_ms - now)));
    }
    let (state, rev) = match args.platform.load(&t, &id).await {
        Ok(Some(x)) => x,
        // Gone (expired or deleted): nothing to retry.
        Ok(None) => return AckKind::Ack,
        Err(e) => {
            warn!(tenant_id = %t, message_id = %id, error = %e, "retry: state unavailable; trying again");
            return AckKind::Nak(Some(Duration::from_secs(1)));
        }
    };
    if state.status != Status::Retry || state.retry_count != retry_count {
        // Moved on (re-driven, replayed, or a duplicate entry): nothing to do.
        return AckKind::Ack;
    }
    let policy = policy_of(&args.control, &state);
    let committer = Committer {
        store: &args.platform,
        publisher: Some(&*args.control),
        policy: &policy,
    };
    let event = match args.control.delivery_policy(&state.tenant_id, &state.integration_id) {
        Some(_) => Event::RetryDue,
        None => Event::Abandon {
            reason: format!("integration {} no longer exists", state.integration_id),
        },
    };
    match committer.commit(&state, rev, &event, None, now).await {
        Ok(Committed::Written(..)) => {
            debug!(tenant_id = %t, message_id = %id, retry = retry_count, "retry due; published");
            AckKind::Ack
        }
        Ok(Committed::Conflict) => AckKind::Nak(Some(Duration::from_millis(100))),
        Ok(Committed::Illegal(_)) => AckKind::Ack,
        Err(e) => {
            warn!(tenant_id = %t, message_id = %id, error = %e, "retry failed; trying again");
            AckKind::Nak(Some(Duration::from_secs(1)))
        }
    }
}

/// Re-drives one overdue message.
async fn redrive(args: &SchedulerArgs, t: TenantId, id: MessageId) {
    let Ok(Some((state, rev))) = args.platform.load(&t, &id).await else {
        return;
    };
    if state.status.is_terminal() {
        return;
    }
    let policy = policy_of(&args.control, &state);
    let committer = Committer {
        store: &args.platform,
        publisher: Some(&*args.control),
        policy: &policy,
    };
    let from = state.status;
    let event = match args.control.delivery_policy(&state.tenant_id, &state.integration_id) {
        Some(_) => Event::Redrive,
        None => Event::Abandon {
            reason: format!("integration {} no longer exists", state.integration_id),
        },
    };
    match committer.commit(&state, rev, &event, None, now_ms()).await {
        Ok(Committed::Written(next, _)) => {
            info!(tenant_id = %t, message_id = %id, from = from.as_str(), to = next.status.as_str(), "re-driven")
        }
        Ok(_) => {}
        Err(e) => warn!(tenant_id = %t, message_id = %id, error = %e, "re-drive failed; will try again"),
    }
}

impl Actor for RetryScheduler {
    type Msg = SchedulerMsg;
    type State = SchedulerState;
    type Arguments = SchedulerArgs;

    async fn pre_start(
        &self,
        myself: ActorRef<SchedulerMsg>,
        args: SchedulerArgs,
    ) -> Result<SchedulerState, ActorProcessingErr> {
        let permits = Arc::new(Semaphore::new(args.concurrency));
        // Due retries.
        let consumer = args.platform.retry_consumer(Duration::from_secs(30)).await?;
        let mut entries = consumer.messages().await?;
        let (me, a, p) = (myself.clone(), args.clone(), permits.clone());
        let retry_pump = tokio::spawn(async move {
            while let Some(Ok(msg)) = entries.next().await {
                let Some((t, id, count, due)) = retry_entry_of(&msg) else {
                    warn!(subject = %msg.subject, "malformed retry entry dropped");
                    let _ = msg.ack_with(AckKind::Term).await;
                    continue;
                };
                let Ok(permit) = p.clone().acquire_owned().await else {
                    break;
                };
                let a = a.clone();
                tokio::spawn(async move {
                    let answer = handle_due(&a, t, id, count, due).await;
                    let _ = msg.ack_with(answer).await;
                    drop(permit);
                });
            }
            let _ = me.send_message(SchedulerMsg::InputEnded("retry queue"));
        });
        // State changes, for deadlines.
        let mut watch = args.platform.watch_states().await?;
        let me = myself.clone();
        let watch_pump = tokio::spawn(async move {
            while let Some(Ok(entry)) = watch.next().await {
                let Some((t, id)) = message::parse_state_key(&entry.key) else {
                    continue;
                };
                let state = match entry.operation {
                    async_nats::jetstream::kv::Operation::Put => serde_json::from_slice(&entry.value).ok(),
                    _ => None,
                };
                if me
                    .send_message(SchedulerMsg::Observed(t, id, state, entry.revision))
                    .is_err()
                {
                    return;
                }
            }
            let _ = me.send_message(SchedulerMsg::InputEnded("state watch"));
        });
        let ticker = myself.send_interval(args.tick, || SchedulerMsg::Tick);
        info!(
            redrive_after_ms = args.redrive_after.as_millis() as u64,
            "retry scheduler running"
        );
        Ok(SchedulerState {
            args,
            deadlines: Deadlines::default(),
            permits,
            _retry_pump: AbortOnDrop(retry_pump),
            _watch_pump: AbortOnDrop(watch_pump),
            _ticker: AbortOnDrop(ticker),
        })
    }

    async fn handle(
        &self,
        _myself: ActorRef<SchedulerMsg>,
        msg: SchedulerMsg,
        state: &mut SchedulerState,
    ) -> Result<(), ActorProcessingErr> {
        match msg {
            SchedulerMsg::Observed(t, id, s, rev) => {
                let grace = state.args.redrive_after.as_millis() as u64;
                let timeout = s
                    .as_ref()
                    .and_then(|s| state.args.control.delivery_policy(&s.tenant_id, &s.integration_id))
                    .map(|(_, timeout)| timeout)
                    .unwrap_or(0);
                state.deadlines.observe(t, id, s.as_ref(), rev, grace, timeout);
            }
            SchedulerMsg::Tick => {
                let grace = state.args.redrive_after.as_millis() as u64;
                let available = state.permits.available_permits();
                for (t, id) in state.deadlines.take_due(now_ms(), grace, available) {
                    let Ok(permit) = state.permits.clone().try_acquire_owned() else {
                        break;
                    };
                    let a = state.args.clone();
                    tokio::spawn(async move {
                        redrive(&a, t, id).await;
                        drop(permit);
                    });
                }
            }
            SchedulerMsg::InputEnded(what) => return Err(format!("{what} ended").into()),
        }
        Ok(())
    }
}
