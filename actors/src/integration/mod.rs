//! IntegrationActor: one per integration. Subscribes on the tenant's NATS instance, runs
//! filters and converters, calls the producer.

mod claims;
mod journey;
mod messages;

use std::sync::Arc;
use std::sync::atomic::Ordering;

use futures::stream::FuturesUnordered;
use futures::{FutureExt, StreamExt};
use opentelemetry::context::FutureExt as _;
use ractor::{Actor, ActorProcessingErr, ActorRef};
use tokio::sync::Semaphore;
use tracing::{Instrument, debug, debug_span, info, warn};

pub mod histogram;

pub use messages::{IntegrationArgs, IntegrationCounters, IntegrationMsg, IntegrationStats};

use crate::components::{Outcome, ProduceErrorKind};
use crate::envelope::Envelope;
use crate::message::{Committed, Committer, Event, Status};
use crate::payload::PayloadError;
use crate::{now_ms, subjects, wire};

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

/// Most messages taken off NATS into one delivery task.
const BATCH_MAX: usize = 32;

/// Takes messages off `sub` and runs `process` on each, at most `max_in_flight` at once;
/// returns when the subscription ends. Beyond the bound it stops reading, and NATS
/// buffers (and, being core NATS, may drop: see ARCHITECTURE). Deliveries already started
/// run to completion even if the pump is aborted.
pub async fn pump<S, F, Fut>(mut sub: S, max_in_flight: usize, process: F)
where
    S: futures::Stream<Item = async_nats::Message> + Unpin,
    F: Fn(async_nats::Message) -> Fut + Clone + Send + 'static,
    Fut: Future<Output = ()> + Send + 'static,
{
    let permits = Arc::new(Semaphore::new(max_in_flight));
    let mut ended = false;
    while !ended && let Some(first) = sub.next().await {
        let Ok(permit) = permits.clone().acquire_owned().await else {
            break;
        };
        // What else has already arrived joins this message in one task, so their claims
        // (and, when deliveries finish together, their outcomes) leave in one socket write
        // and their acknowledgements wake one task: fewer wake-ups per message under load,
        // and no wait for anything that has not arrived.
        let mut batch = vec![(first, permit)];
        while batch.len() < BATCH_MAX {
            let Ok(permit) = permits.clone().try_acquire_owned() else {
                break;
            };
            match sub.next().now_or_never() {
                Some(Some(msg)) => batch.push((msg, permit)),
                Some(None) => {
                    ended = true;
                    break;
                }
                None => break,
            }
        }
        let process = process.clone();
        tokio::spawn(async move {
            let mut running: FuturesUnordered<_> = batch
                .into_iter()
                .map(|(msg, permit)| {
                    let run = process(msg);
                    async move {
                        run.await;
                        drop(permit);
                    }
                })
                .collect();
            while running.next().await.is_some() {}
        });
    }
}

/// Running state: the pump task.
#[derive(Debug)]
pub struct IntegrationState {
    _pump: AbortOnDrop,
}

/// A warning about one message, naming it (and its trace): per-message `tracing` spans
/// are debug-level.
macro_rules! warn_message {
    ($state:expr, $ids:expr, $($rest:tt)+) => {{
        let (trace_id, span_id) = $ids;
        warn!(tenant_id = %$state.tenant_id, integration_id = %$state.integration_id,
            message_id = %$state.message_id, attempt = $state.next_attempt(),
            trace_id = %trace_id, span_id = %span_id, $($rest)+)
    }};
}

/// Runs `f`, recording how long it took in `h`.
async fn timed<T>(h: &histogram::Histogram, f: impl std::future::Future<Output = T>) -> T {
    let started = std::time::Instant::now();
    let out = f.await;
    h.record(started.elapsed());
    out
}

/// A jitter sample in [0, 1).
fn jitter_sample() -> f64 {
    (uuid::Uuid::new_v4().as_u128() >> 75) as f64 / (1u64 << 53) as f64
}

/// The envelope the pipeline runs on: a claim-checked body is loaded (at most
/// `pipeline_read_max` bytes) only when there are filters or converters to read it; the
/// producer streams it from the store otherwise.
async fn load_for_pipeline(args: &IntegrationArgs, env: Envelope) -> Result<Envelope, PayloadError> {
    let Some(reference) = env.payload_in_store() else {
        return Ok(env);
    };
    if args.pipeline.is_empty() {
        return Ok(env);
    }
    let store = args
        .payloads
        .as_ref()
        .ok_or_else(|| PayloadError::Unavailable("this node has no object store configured".into()))?;
    let payload = store.read(reference, args.pipeline_read_max).await?;
    Ok(Envelope { payload, ..env })
}

/// Releases the object of a message that has finished without a dead letter; one left
/// behind (the store down) is removed by the runtime's orphan sweeper.
async fn release_payload(args: &IntegrationArgs, key: &str) {
    if let Some(store) = &args.payloads
        && let Err(error) = store.delete(key).await
    {
        warn!(tenant_id = %args.tenant_id, integration_id = %args.integration_id, key, %error,
            "payload object not deleted; the orphan sweeper will remove it");
    }
}

async fn process(msg: async_nats::Message, args: Arc<IntegrationArgs>, claims: Arc<claims::RecentClaims>) {
    let c = &args.counters;
    c.received.fetch_add(1, Ordering::Relaxed);
    let claim = match wire::decode(&args.wire_key, msg.headers.as_ref(), &msg.payload) {
        Ok(d) => d,
        Err(error) => {
            c.malformed.fetch_add(1, Ordering::Relaxed);
            warn!(tenant_id = %args.tenant_id, integration_id = %args.integration_id, %error, "undecodable message dropped");
            return;
        }
    };
    if claim.state.tenant_id != args.tenant_id || claim.state.integration_id != args.integration_id {
        c.malformed.fetch_add(1, Ordering::Relaxed);
        warn!(tenant_id = %args.tenant_id, integration_id = %args.integration_id,
            claimed_tenant = %claim.state.tenant_id, claimed_integration = %claim.state.integration_id,
            "message for another integration dropped");
        return;
    }
    // The span is debug-level: at `info` a span per message cost about 5% of the node's
    // CPU for nothing on the happy path. Warnings name the message themselves.
    let span = debug_span!("integration.deliver", tenant_id = %claim.state.tenant_id,
        integration_id = %claim.state.integration_id, message_id = %claim.state.message_id,
        attempt = claim.state.next_attempt());
    let args = args.clone();
    let cx = journey::consumer(&msg, &claim);
    let traced = cx.clone();
    async move {
        // Read only when a warning is written: the happy path parses nothing.
        let ids = || crate::telemetry::log_ids(&cx, crate::message::trace_context_of(&claim.record).as_deref());
        let c = &args.counters;
        let committer = Committer {
            store: &*args.store,
            publisher: None,
            policy: &args.retry,
        };
        // The claim: received -> processing at the published revision. One worker wins.
        // A message received for an earlier integration of this id is dead-lettered
        // instead, under the same revision check. One for a later integration means this
        // worker is out of date: it leaves the message alone for the re-driver.
        let first = match claim.state.incarnation_vs(args.incarnation) {
            std::cmp::Ordering::Equal => Event::Claim,
            std::cmp::Ordering::Less => Event::abandon_for_predecessor(&args.integration_id),
            std::cmp::Ordering::Greater => {
                c.skipped.fetch_add(1, Ordering::Relaxed);
                warn_message!(
                    claim.state,
                    ids(),
                    worker_incarnation = args.incarnation,
                    message_incarnation = claim.state.incarnation,
                    "message of a later integration with this id; this worker is out of date; left for re-drive"
                );
                return;
            }
        };
        if !claims.begin(&claim.state.message_id, claim.revision) {
            // A copy of a revision this worker already claimed (re-driven while the first
            // copy waited): that claim won or lost; this one could only lose.
            c.skipped.fetch_add(1, Ordering::Relaxed);
            debug!("a copy of a claim already made here; skipped");
            return;
        }
        let committed = committer
            .commit(&claim.state, claim.revision, &first, Some(&claim.record), now_ms())
            .await;
        if committed.is_err() {
            claims.forget(&claim.state.message_id, claim.revision);
        }
        let (state, revision) = match committed {
            Ok(Committed::Written(s, _)) if s.status == Status::DeadLetter => {
                c.dead_lettered.fetch_add(1, Ordering::Relaxed);
                warn_message!(
                    claim.state,
                    ids(),
                    error = s.last_error.as_deref().unwrap_or(""),
                    "dead-lettered"
                );
                return;
            }
            Ok(Committed::Written(s, r)) => (s, r),
            Ok(Committed::Conflict | Committed::Illegal(_) | Committed::Republished(_)) => {
                c.skipped.fetch_add(1, Ordering::Relaxed);
                debug!("claimed elsewhere or already handled; skipped");
                return;
            }
            Err(error) => {
                // Still `received`: the re-driver publishes it again after the deadline.
                c.skipped.fetch_add(1, Ordering::Relaxed);
                warn_message!(claim.state, ids(), %error, "claim failed; left for re-drive");
                return;
            }
        };
        let payload_key = claim.envelope.payload_ref.as_ref().map(|r| r.key.clone());
        let ran = match load_for_pipeline(&args, claim.envelope).await {
            Ok(envelope) => Ok(journey::pipeline(args.pipeline.is_empty(), &cx, &claim.state, || args.pipeline.run(envelope), |o| match o {
                Outcome::Deliver(_) => "deliver",
                Outcome::Filtered { .. } => "filtered",
                Outcome::ConvertFailed { .. } => "convert_failed",
            })),
            Err(error) => Err(error),
        };
        let mut attempt = None;
        let mut answered = (None, None);
        let event = match ran {
            Err(error) => {
                c.failed.fetch_add(1, Ordering::Relaxed);
                warn_message!(claim.state, ids(), %error, "payload not loaded for the filters and converters");
                Event::Failed {
                    error: error.to_string(),
                    status: None,
                    retryable: error.is_retryable(),
                    retry_after_ms: None,
                    jitter_sample: jitter_sample(),
                }
            }
            Ok(Outcome::Deliver(mut out)) => {
                attempt = journey::Attempt::begin(&cx);
                if let Some(a) = &attempt {
                    out.trace_context = Some(a.traceparent.clone());
                }
                let result = timed(&c.delivery_duration, args.producer.deliver(&out)).await;
                if let Some(a) = &mut attempt {
                    a.ended();
                }
                answered = match &result {
                    Ok(d) => (Some(d.status), None),
                    Err(e) => (
                        e.status,
                        Some(match e.kind {
                            ProduceErrorKind::Retryable => "retryable",
                            ProduceErrorKind::Permanent => "permanent",
                        }),
                    ),
                };
                match result {
                Ok(d) => {
                    c.delivered.fetch_add(1, Ordering::Relaxed);
                    c.end_to_end.record(std::time::Duration::from_millis(
                        now_ms().saturating_sub(claim.state.created_at_ms),
                    ));
                    debug!(status = d.status, "delivered");
                    Event::Delivered
                }
                Err(error) => {
                    c.failed.fetch_add(1, Ordering::Relaxed);
                    warn_message!(claim.state, ids(), status = error.status, kind = ?error.kind, %error, "delivery failed");
                    Event::Failed {
                        error: error.message,
                        status: error.status,
                        retryable: error.kind == ProduceErrorKind::Retryable,
                        retry_after_ms: error.retry_after_ms,
                        jitter_sample: jitter_sample(),
                    }
                }
            }
            }
            Ok(Outcome::Filtered { filter, reason }) => {
                c.filtered.fetch_add(1, Ordering::Relaxed);
                debug!(filter, %reason, "filtered out");
                Event::Filtered { reason }
            }
            Ok(Outcome::ConvertFailed { converter, error }) => {
                c.failed.fetch_add(1, Ordering::Relaxed);
                warn_message!(claim.state, ids(), converter, %error, "conversion failed");
                Event::Failed {
                    error: format!("converter {converter}: {error}"),
                    status: None,
                    retryable: false,
                    retry_after_ms: None,
                    jitter_sample: 0.0,
                }
            }
        };
        let committed = committer
            .commit(&state, revision, &event, Some(&claim.record), now_ms())
            .await;
        if let Some(a) = attempt {
            let outcome = match &committed {
                Ok(Committed::Written(s, _)) => s.status.as_str(),
                _ => "not_recorded",
            };
            a.finish(&cx, &claim.state, answered.0, answered.1, outcome);
        }
        match committed {
            Ok(Committed::Written(s, _)) => match s.status {
                Status::Retry => {
                    c.retried.fetch_add(1, Ordering::Relaxed);
                }
                Status::DeadLetter => {
                    c.dead_lettered.fetch_add(1, Ordering::Relaxed);
                    warn_message!(
                        claim.state,
                        ids(),
                        error = s.last_error.as_deref().unwrap_or(""),
                        "dead-lettered"
                    );
                }
                Status::Completed | Status::Filtered if args.release_payloads => {
                    if let Some(key) = &payload_key {
                        release_payload(&args, key).await;
                    }
                }
                _ => {}
            },
            Ok(Committed::Conflict) => warn_message!(
                claim.state,
                ids(),
                "re-driven while delivering; the message may be delivered again"
            ),
            Ok(Committed::Illegal(e)) => warn_message!(claim.state, ids(), error = %e, "outcome not recorded"),
            // An outcome is never a re-drive.
            Ok(Committed::Republished(_)) => {}
            // Still `processing`: re-driven after the deadline (counted as a failed attempt).
            Err(error) => warn_message!(claim.state, ids(), %error, "outcome not recorded; left for re-drive"),
        }
        crate::telemetry::end(&cx, []);
    }
    .instrument(span)
    .with_context(traced)
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
        // One queue subscription per instance: publishers round-robin across instances,
        // so the worker must listen on all of them.
        let mut subs = Vec::with_capacity(args.clients.len());
        for client in &args.clients {
            subs.push(client.queue_subscribe(subject.clone(), group.clone()).await?);
        }
        let sub = futures::stream::select_all(subs);
        info!(tenant_id = %args.tenant_id, integration_id = %args.integration_id, %subject,
            instances = args.clients.len(), "integration subscribed");
        let args = Arc::new(args);
        let max_in_flight = args.max_in_flight;
        let claims = Arc::new(claims::RecentClaims::new(claims::RECENT_CLAIMS_MAX));
        let pump = tokio::spawn(async move {
            pump(sub, max_in_flight, move |msg| {
                process(msg, args.clone(), claims.clone())
            })
            .await;
            let _ = myself.send_message(IntegrationMsg::SubscriptionEnded);
        });
        Ok(IntegrationState {
            _pump: AbortOnDrop(pump),
        })
    }

    async fn handle(
        &self,
        _myself: ActorRef<IntegrationMsg>,
        msg: IntegrationMsg,
        _state: &mut IntegrationState,
    ) -> Result<(), ActorProcessingErr> {
        match msg {
            IntegrationMsg::SubscriptionEnded => Err("nats subscription ended".into()),
        }
    }
}

#[cfg(test)]
mod tests;
