//! RetryScheduler: one per node, supervised. Two duties, both durable in the platform
//! JetStream so a kill -9 loses neither:
//!
//! - **Due retries.** A durable work-queue consumer of `retry_queue`: an entry not yet due
//!   is NAKed with the remaining delay; a due one moves its message `retry -> received` and
//!   publishes it for delivery, then is acknowledged.
//! - **Re-drive.** A message past its deadline in the re-drive index gets
//!   [`Event::Redrive`](vrsky_actors::message::Event::Redrive): a lost publish is published
//!   again, a claim whose worker died
//!   counts as a failed attempt, an overdue retry is made due.
//!
//! The index ([`Deadlines`]) is this actor's own state.
//! The platform reports every state this node writes to it (`Observation`s through a
//! channel a forwarder batches into `Observed` messages); at each start the actor scans the
//! bucket, so what a crashed predecessor left (orphans, due at once) and what a previous
//! instance of the actor tracked are found again. From the index it keeps each
//! integration's `unfinished` gauge, which admission control reads. A drain task asks it
//! for overdue messages (`TakeDue`) and runs the re-drives in tasks bounded by
//! `concurrency`.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use async_nats::jetstream::AckKind;
use futures::StreamExt;
use ractor::{Actor, ActorProcessingErr, ActorRef};
use std::sync::atomic::Ordering;

use ractor::RpcReplyPort;
use ractor::rpc::CallResult;
use tokio::sync::{Semaphore, mpsc};
use tracing::{info, warn};

use vrsky_actors::integration::AbortOnDrop;
use vrsky_actors::message::{Deadlines, Due};
use vrsky_actors::{IntegrationId, TenantId, now_ms};

use crate::control::Directory;
use crate::platform::{Observation, Platform, retry_entry_of};

mod redrive;
use redrive::{handle_due, processing_ms, redrive};

/// Scheduler settings.
#[derive(Clone)]
pub struct SchedulerArgs {
    /// Platform state.
    pub platform: Platform,
    /// The routing snapshot: publishes re-driven and due messages, and knows each
    /// integration's policy and whether its tenant is running.
    pub directory: Arc<Directory>,
    /// Grace before a stalled message is re-driven.
    pub redrive_after: Duration,
    /// How often deadlines are checked.
    pub tick: Duration,
    /// Re-drives and due retries handled at once.
    pub concurrency: usize,
}

/// Most observations handed to the actor in one message.
const OBSERVATIONS_BATCH_MAX: usize = 1024;
/// How long the drain waits for the actor to hand out overdue messages.
const TAKE_DUE_TIMEOUT: Duration = Duration::from_secs(5);

/// What the drain asks the actor for: at most `max` overdue messages, at most `cap` in
/// flight per tenant counting those `in_flight` already.
#[derive(Debug)]
pub struct TakeDue {
    max: usize,
    cap: usize,
    in_flight: HashMap<TenantId, usize>,
}

/// Messages of the scheduler.
#[derive(Debug)]
pub enum SchedulerMsg {
    /// Time to look for overdue messages.
    Tick,
    /// An input stream ended (or the start-up scan failed); the actor fails and is
    /// restarted.
    InputEnded(&'static str),
    /// What the platform wrote or found, in order (batched by the forwarder).
    Observed(Vec<Observation>),
    /// The drain asks for overdue messages; the answer says whether more than one tenant
    /// has re-drives due or running.
    TakeDue(TakeDue, RpcReplyPort<(Vec<Due>, bool)>),
}

/// The actor.
#[derive(Debug, Default, Clone, Copy)]
pub struct RetryScheduler;

/// Running state.
pub struct SchedulerState {
    args: SchedulerArgs,
    permits: Arc<Semaphore>,
    /// The re-drive index: unfinished messages and their deadlines, owned here and fed
    /// by the platform's observations and the scan.
    deadlines: Deadlines,
    _retry_pump: AbortOnDrop,
    _forwarder: AbortOnDrop,
    _scan: AbortOnDrop,
    _ticker: AbortOnDrop,
    /// The running re-drive drain, if any.
    drain: Option<AbortOnDrop>,
}

/// Re-drives everything overdue, as fast as the permits allow, until nothing is due and
/// nothing it started is still running. Fair between tenants: while more than one tenant
/// has re-drives due or running, each has at most half of the permits, so a tenant whose
/// NATS is down (each of its publishes waits up to the publish bound) cannot starve the
/// others; a tenant alone may use them all.
async fn drain(me: ActorRef<SchedulerMsg>, args: SchedulerArgs, permits: Arc<Semaphore>) {
    let half = (args.concurrency / 2).max(1);
    let mut cap = half;
    let mut redriven = 0usize;
    let started = std::time::Instant::now();
    // Bound: one entry per tenant with a re-drive in flight, and one completion per
    // re-drive in flight (at most `concurrency`).
    let mut in_flight: HashMap<TenantId, usize> = HashMap::new();
    let (done_tx, mut done_rx) = mpsc::unbounded_channel::<TenantId>();
    let release = |in_flight: &mut HashMap<TenantId, usize>, t: TenantId| {
        if let Some(n) = in_flight.get_mut(&t) {
            *n -= 1;
            if *n == 0 {
                in_flight.remove(&t);
            }
        }
    };
    loop {
        while let Ok(t) = done_rx.try_recv() {
            release(&mut in_flight, t);
        }
        let ask = TakeDue {
            max: permits.available_permits(),
            cap,
            in_flight: in_flight.clone(),
        };
        let (due, several) = match me.call(|r| SchedulerMsg::TakeDue(ask, r), Some(TAKE_DUE_TIMEOUT)).await {
            Ok(CallResult::Success(answer)) => answer,
            _ => return,
        };
        cap = if several { half } else { args.concurrency };
        if due.is_empty() {
            if in_flight.is_empty() {
                if redriven > 0 {
                    info!(
                        redriven,
                        elapsed_ms = started.elapsed().as_millis() as u64,
                        "re-drive drained"
                    );
                }
                return;
            }
            match done_rx.recv().await {
                Some(t) => release(&mut in_flight, t),
                None => return,
            }
            continue;
        }
        redriven += due.len();
        for due in due {
            let t = due.tenant.clone();
            let Ok(permit) = permits.clone().acquire_owned().await else {
                return;
            };
            *in_flight.entry(t.clone()).or_default() += 1;
            let (a, done) = (args.clone(), done_tx.clone());
            tokio::spawn(async move {
                redrive(&a, due).await;
                drop(permit);
                let _ = done.send(t);
            });
        }
    }
}

impl SchedulerState {
    /// Applies observations to the index, then sets the `unfinished` gauge of every
    /// integration they touched.
    fn observe(&mut self, batch: Vec<Observation>) {
        // Bound: the distinct integrations of one batch.
        let mut touched: Vec<(TenantId, IntegrationId)> = Vec::new();
        let mut touch = |t: &TenantId, i: &IntegrationId| {
            if !touched.iter().any(|(a, b)| a == t && b == i) {
                touched.push((t.clone(), i.clone()));
            }
        };
        for o in batch {
            match o {
                Observation::Stored(o) => {
                    touch(&o.tenant, &o.integration);
                    self.deadlines.record(o, false);
                }
                Observation::Orphan(o) => {
                    touch(&o.tenant, &o.integration);
                    self.deadlines.record(o, true);
                }
                Observation::Gone(t, id) => {
                    if let Some(i) = self.deadlines.forget(&t, &id) {
                        touch(&t, &i);
                    }
                }
                Observation::Expedite(t) => self.deadlines.expedite(&t),
                Observation::Unpublished(t, id, revision) => {
                    let grace = self.args.redrive_after.as_millis() as u64;
                    self.deadlines.unpublished(&t, &id, revision, now_ms(), grace);
                }
            }
        }
        for (t, i) in touched {
            // A tenant another node runs: the gauge of what this node stored for it, which
            // its admission reads.
            let counters = self
                .args
                .directory
                .get(&t)
                .and_then(|s| s.counters.get(&i).cloned())
                .or_else(|| self.args.directory.remote().and_then(|r| r.counters(&t, &i)));
            if let Some(c) = counters {
                c.unfinished
                    .store(self.deadlines.unfinished(&t, &i) as u64, Ordering::Relaxed);
            }
        }
    }

    /// Hands out overdue messages to the drain (see [`TakeDue`]).
    fn take_due(&mut self, ask: TakeDue) -> (Vec<Due>, bool) {
        let TakeDue { max, cap, in_flight } = ask;
        let grace = self.args.redrive_after.as_millis() as u64;
        let directory = &self.args.directory;
        let mut admitted: HashMap<TenantId, usize> = HashMap::new();
        let mut seen: std::collections::HashSet<TenantId> = in_flight.keys().cloned().collect();
        let due = self.deadlines.take_due(
            now_ms(),
            grace,
            max,
            |t, i| processing_ms(directory, t, i),
            |t| {
                if !seen.contains(t) {
                    seen.insert(t.clone());
                }
                let n = in_flight.get(t).copied().unwrap_or(0) + admitted.get(t).copied().unwrap_or(0);
                let ok = n < cap;
                if ok {
                    *admitted.entry(t.clone()).or_default() += 1;
                }
                ok
            },
        );
        (due, seen.len() > 1)
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
        // The re-drive index is this actor's: the platform reports every write to it from
        // now on, and the scan below (after attaching) finds everything written before,
        // including what a previous instance of this actor had tracked.
        let (tx, mut rx) = mpsc::unbounded_channel();
        args.platform.attach_observer(tx);
        for (_, snapshot) in args.directory.all() {
            for c in snapshot.counters.values() {
                c.unfinished.store(0, Ordering::Relaxed);
            }
        }
        let me = myself.clone();
        let forwarder = tokio::spawn(async move {
            // Bound: the channel holds what arrives between two batches.
            let mut batch = Vec::with_capacity(OBSERVATIONS_BATCH_MAX);
            while rx.recv_many(&mut batch, OBSERVATIONS_BATCH_MAX).await > 0 {
                let full = std::mem::replace(&mut batch, Vec::with_capacity(OBSERVATIONS_BATCH_MAX));
                if me.send_message(SchedulerMsg::Observed(full)).is_err() {
                    break;
                }
            }
        });
        // What a crashed predecessor left unfinished, and what this actor's index held.
        let (me, platform) = (myself.clone(), args.platform.clone());
        let scan = tokio::spawn(async move {
            match platform.scan_unfinished().await {
                Ok(found) => {
                    info!(found, "message_state scanned for unfinished messages");
                    // What the scan found left by a dead process is due now: drain at once.
                    let _ = me.send_message(SchedulerMsg::Tick);
                }
                Err(e) => {
                    warn!(error = %e, "message_state scan failed");
                    let _ = me.send_message(SchedulerMsg::InputEnded("message_state scan"));
                }
            }
        });
        let ticker = myself.send_interval(args.tick, || SchedulerMsg::Tick);
        info!(
            redrive_after_ms = args.redrive_after.as_millis() as u64,
            "retry scheduler running"
        );
        Ok(SchedulerState {
            args,
            permits,
            deadlines: Deadlines::default(),
            _retry_pump: AbortOnDrop(retry_pump),
            _forwarder: AbortOnDrop(forwarder),
            _scan: AbortOnDrop(scan),
            _ticker: AbortOnDrop(ticker),
            drain: None,
        })
    }

    async fn handle(
        &self,
        myself: ActorRef<SchedulerMsg>,
        msg: SchedulerMsg,
        state: &mut SchedulerState,
    ) -> Result<(), ActorProcessingErr> {
        match msg {
            SchedulerMsg::Tick => {
                // One drain at a time; it runs until nothing is due, so a backlog is
                // re-driven at the speed of normal delivery, not one batch per tick.
                if state.drain.as_ref().is_none_or(|d| d.0.is_finished()) {
                    let (args, permits) = (state.args.clone(), state.permits.clone());
                    state.drain = Some(AbortOnDrop(tokio::spawn(drain(myself, args, permits))));
                }
            }
            SchedulerMsg::Observed(batch) => state.observe(batch),
            SchedulerMsg::TakeDue(ask, reply) => {
                let _ = reply.send(state.take_due(ask));
            }
            SchedulerMsg::InputEnded(what) => return Err(format!("{what} ended").into()),
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use vrsky_actors::message::{Event, MessageState, RetryPolicy};
    use vrsky_actors::{IntegrationId, MessageId};

    fn failed() -> Event {
        Event::Failed {
            error: "answered 400".into(),
            status: Some(400),
            retryable: false,
            retry_after_ms: None,
            jitter_sample: 0.0,
        }
    }

    /// Only the entry written for this very claim finishes it; an entry left from before a
    /// replay, or from an earlier life of the same id, does not.
    #[test]
    fn only_the_claims_own_dead_letter_rolls_forward() {
        let p = RetryPolicy::default();
        let (t, i) = (TenantId::new("t").unwrap(), IntegrationId::new("i").unwrap());
        let id = MessageId::generate();
        let claimed = MessageState::received(id.clone(), t.clone(), i.clone(), 1_000)
            .apply(&Event::Claim, &p, 2_000)
            .unwrap();
        let dead = claimed.apply(&failed(), &p, 2_500).unwrap();
        assert!(dead.is_dead_letter_of(&claimed));
        assert!(!claimed.is_dead_letter_of(&claimed), "not a dead-letter state");

        // Replayed, claimed again: the old entry (deleted after the replay's publish, unless
        // that node died first) is older than the new claim.
        let reclaimed = dead
            .apply(&Event::Replay { incarnation: 0 }, &p, 3_000)
            .unwrap()
            .apply(&Event::Claim, &p, 4_000)
            .unwrap();
        assert!(!dead.is_dead_letter_of(&reclaimed));
        let dead_again = reclaimed.apply(&failed(), &p, 4_100).unwrap();
        assert!(dead_again.is_dead_letter_of(&reclaimed));

        // The same id in another lifetime (its state expired, then re-created), claimed on a
        // node whose clock is behind: the creation time tells them apart.
        let other = MessageState::received(id, t, i, 5_000)
            .apply(&Event::Claim, &p, 1_500)
            .unwrap();
        assert!(!dead.is_dead_letter_of(&other));
        // Through the lifecycle: only the claim's own entry is adopted.
        let adopt = |d: &MessageState| Event::FoundDeadLettered {
            dead: Box::new(d.clone()),
        };
        assert_eq!(claimed.apply(&adopt(&dead), &p, 2_600).unwrap(), dead);
        assert!(reclaimed.apply(&adopt(&dead), &p, 4_200).is_err());
    }
}
