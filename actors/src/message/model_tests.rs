//! Model-based property test of the message lifecycle: random interleavings of ingress
//! (with duplicate idempotency keys), claims, lost core-NATS publishes, worker crashes,
//! failures, clock advances (re-drive, due retries) and replays, run against the real
//! [`MessageState::apply`] over a model store with revision-checked writes.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::{HashMap, HashSet};

use proptest::prelude::*;

use super::*;
use crate::ids::{IntegrationId, MessageId, TenantId};

const REDRIVE_AFTER_MS: u64 = 30_000;

/// The store: message id -> (state, revision). Writes are compare-and-swap on revision.
#[derive(Default)]
struct Store {
    rows: HashMap<MessageId, (MessageState, u64)>,
    next_rev: u64,
}

impl Store {
    fn create(&mut self, s: MessageState) -> Option<u64> {
        if self.rows.contains_key(&s.message_id) {
            return None;
        }
        self.next_rev += 1;
        self.rows.insert(s.message_id.clone(), (s, self.next_rev));
        Some(self.next_rev)
    }

    fn cas(&mut self, s: MessageState, expected: u64) -> Option<u64> {
        let row = self.rows.get_mut(&s.message_id)?;
        if row.1 != expected {
            return None;
        }
        self.next_rev += 1;
        *row = (s, self.next_rev);
        Some(self.next_rev)
    }
}

#[derive(Debug, Clone, Copy)]
enum Outcome {
    Success,
    Retryable,
    Permanent,
}

#[derive(Debug, Clone)]
enum Op {
    /// A webhook with idempotency key `k` (small range: duplicates are common).
    Ingress(u8),
    /// A worker takes the i-th published token off the bus.
    Take(usize),
    /// Core NATS drops the i-th token.
    Lose(usize),
    /// The i-th in-flight worker finishes.
    Finish(usize, Outcome),
    /// The i-th in-flight worker dies; `after_send` says whether the sink got it first.
    Crash(usize, bool),
    /// Time passes; the re-driver and the retry scheduler run.
    Advance(u64),
    /// The tenant replays the k-th message from the dead-letter queue.
    Replay(u8),
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        4 => (0u8..12).prop_map(Op::Ingress),
        6 => (0usize..16).prop_map(Op::Take),
        1 => (0usize..16).prop_map(Op::Lose),
        6 => (0usize..16, prop_oneof![3 => Just(Outcome::Success), 2 => Just(Outcome::Retryable), 1 => Just(Outcome::Permanent)])
            .prop_map(|(i, o)| Op::Finish(i, o)),
        1 => (0usize..16, any::<bool>()).prop_map(|(i, a)| Op::Crash(i, a)),
        2 => (1u64..40_000).prop_map(Op::Advance),
        1 => (0u8..12).prop_map(Op::Replay),
    ]
}

struct World {
    policy: RetryPolicy,
    store: Store,
    now: u64,
    /// Published (id, revision) tokens on the tenant's core NATS.
    bus: Vec<(MessageId, u64)>,
    /// Workers holding a claim: (id, revision their claim wrote, life).
    in_flight: Vec<(MessageId, u64, u32)>,
    ids: HashMap<u8, MessageId>,
    /// Replays so far per message: a "life" is the span between replays.
    life: HashMap<MessageId, u32>,
    /// Successful claims per (id, life): attempts.
    attempts: HashMap<(MessageId, u32), u32>,
    /// Tokens that were claimed successfully, to prove one claim per revision.
    claimed_tokens: HashSet<(MessageId, u64)>,
    sink_successes: HashMap<MessageId, u32>,
    /// Messages for which a duplicate is explained (crash after send, or re-drive of a
    /// live claim, or a replay of a delivered message).
    explained: HashSet<MessageId>,
    tenant: TenantId,
    integration: IntegrationId,
}

impl World {
    fn new(policy: RetryPolicy) -> Self {
        World {
            policy,
            store: Store::default(),
            now: 0,
            bus: Vec::new(),
            in_flight: Vec::new(),
            ids: HashMap::new(),
            life: HashMap::new(),
            attempts: HashMap::new(),
            claimed_tokens: HashSet::new(),
            sink_successes: HashMap::new(),
            explained: HashSet::new(),
            tenant: TenantId::new("t").unwrap(),
            integration: IntegrationId::new("i").unwrap(),
        }
    }

    fn transition(&mut self, id: &MessageId, event: Event) -> Option<MessageState> {
        let (state, rev) = self.store.rows.get(id).cloned()?;
        let next = state.apply(&event, &self.policy, self.now).ok()?;
        self.store.cas(next.clone(), rev)?;
        Some(next)
    }

    fn publish_current(&mut self, id: &MessageId) {
        let rev = self.store.rows[id].1;
        self.bus.push((id.clone(), rev));
    }

    fn step(&mut self, op: &Op) {
        match op {
            Op::Ingress(k) => {
                let id = self.ids.get(k).cloned().unwrap_or_else(|| {
                    crate::message::idempotent_message_id(&self.tenant, &self.integration, &format!("key-{k}"))
                });
                let s = MessageState::received(id.clone(), self.tenant.clone(), self.integration.clone(), self.now);
                if let Some(rev) = self.store.create(s) {
                    self.ids.insert(*k, id.clone());
                    self.bus.push((id, rev));
                }
                // A duplicate is answered with the original id and not published again.
            }
            Op::Take(i) => {
                if self.bus.is_empty() {
                    return;
                }
                let (id, rev) = self.bus.remove(i % self.bus.len());
                let Some((state, current)) = self.store.rows.get(&id).cloned() else {
                    return;
                };
                if current != rev {
                    return; // stale token: a newer publish carries the current revision
                }
                let Ok(next) = state.apply(&Event::Claim, &self.policy, self.now) else {
                    return;
                };
                if let Some(new_rev) = self.store.cas(next, rev) {
                    assert!(
                        self.claimed_tokens.insert((id.clone(), rev)),
                        "two claims won for one revision"
                    );
                    let life = *self.life.get(&id).unwrap_or(&0);
                    *self.attempts.entry((id.clone(), life)).or_default() += 1;
                    self.in_flight.push((id, new_rev, life));
                }
            }
            Op::Lose(i) => {
                if !self.bus.is_empty() {
                    let n = self.bus.len();
                    self.bus.remove(i % n);
                }
            }
            Op::Finish(i, outcome) => {
                if self.in_flight.is_empty() {
                    return;
                }
                let n = self.in_flight.len();
                let (id, rev, _) = self.in_flight.remove(i % n);
                let event = match outcome {
                    Outcome::Success => {
                        *self.sink_successes.entry(id.clone()).or_default() += 1;
                        Event::Delivered
                    }
                    Outcome::Retryable | Outcome::Permanent => Event::Failed {
                        error: "e".into(),
                        status: Some(500),
                        retryable: matches!(outcome, Outcome::Retryable),
                        retry_after_ms: None,
                        jitter_sample: 0.5,
                    },
                };
                let (state, current) = self.store.rows[&id].clone();
                if current != rev {
                    // Re-driven while this worker was slow: its write is refused.
                    self.explained.insert(id);
                    return;
                }
                let next = state.apply(&event, &self.policy, self.now).unwrap();
                self.store.cas(next, rev).unwrap();
            }
            Op::Crash(i, after_send) => {
                if self.in_flight.is_empty() {
                    return;
                }
                let n = self.in_flight.len();
                let (id, _, _) = self.in_flight.remove(i % n);
                if *after_send {
                    *self.sink_successes.entry(id.clone()).or_default() += 1;
                    self.explained.insert(id);
                }
            }
            Op::Advance(ms) => {
                self.now += ms;
                self.run_timers();
            }
            Op::Replay(k) => {
                let Some(id) = self.ids.get(k).cloned() else { return };
                if self.store.rows[&id].0.status != Status::DeadLetter {
                    return;
                }
                if self.transition(&id, Event::Replay { incarnation: 0 }).is_some() {
                    *self.life.entry(id.clone()).or_default() += 1;
                    if self.sink_successes.contains_key(&id) {
                        self.explained.insert(id.clone());
                    }
                    self.publish_current(&id);
                }
            }
        }
    }

    /// The re-driver and the retry scheduler.
    fn run_timers(&mut self) {
        let ids: Vec<MessageId> = self.store.rows.keys().cloned().collect();
        for id in ids {
            let state = self.store.rows[&id].0.clone();
            let overdue = state.updated_at_ms + REDRIVE_AFTER_MS <= self.now;
            let event = match state.status {
                Status::Retry if state.next_attempt_at_ms.unwrap() <= self.now => Event::RetryDue,
                // Still `received`: published again at its revision, nothing written (so
                // copies already on the bus stay claimable), as the `Committer` does.
                Status::Received if overdue => {
                    self.publish_current(&id);
                    continue;
                }
                Status::Processing if overdue => Event::Redrive,
                _ => continue,
            };
            if state.status == Status::Processing && self.in_flight.iter().any(|(i, _, _)| *i == id) {
                // A live but slow worker is re-driven: a duplicate delivery is possible.
                self.explained.insert(id.clone());
            }
            if let Some(next) = self.transition(&id, event)
                && next.status == Status::Received
            {
                self.publish_current(&id);
            }
        }
    }

    /// Lets everything finish: every token is taken, every worker succeeds or fails as
    /// asked, time passes until no message is left in a non-terminal state.
    fn drain(&mut self) {
        for _ in 0..200 {
            while !self.bus.is_empty() {
                self.step(&Op::Take(0));
            }
            while !self.in_flight.is_empty() {
                self.step(&Op::Finish(0, Outcome::Success));
            }
            if self.store.rows.values().all(|(s, _)| s.status.is_terminal()) {
                return;
            }
            self.step(&Op::Advance(REDRIVE_AFTER_MS + 600_000));
        }
    }
}

proptest! {
    #![proptest_config(ProptestConfig {
        cases: 512,
        ..crate::testkit::proptest_config("../proptest-regressions/actors-lifecycle.txt")
    })]

    #[test]
    fn lifecycle_loses_nothing_and_never_double_claims(
        ops in proptest::collection::vec(op(), 0..150),
        max_retries in 0u32..4,
    ) {
        let mut w = World::new(RetryPolicy { max_retries, jitter: 0.5, ..RetryPolicy::default() });
        for o in &ops {
            w.step(o);
            // Attempt budget holds at every step, in every life.
            for ((id, life), n) in &w.attempts {
                prop_assert!(*n <= max_retries + 1, "{id} life {life}: {n} attempts");
            }
        }
        w.drain();
        for (id, (state, _)) in &w.store.rows {
            // No lost message: every accepted message ends delivered or dead-lettered.
            prop_assert!(state.status.is_terminal(), "{id} stuck in {:?}", state.status);
            prop_assert!(state.retry_count <= max_retries + 1);
            if state.status == Status::Completed {
                prop_assert!(w.sink_successes.get(id).copied().unwrap_or(0) >= 1, "{id} completed but never reached the sink");
            }
            let successes = w.sink_successes.get(id).copied().unwrap_or(0);
            prop_assert!(successes <= 1 || w.explained.contains(id), "{id} delivered {successes} times without a crash or re-drive");
        }
        for ((id, life), n) in &w.attempts {
            prop_assert!(*n <= max_retries + 1, "{id} life {life}: {n} attempts");
        }
        // Duplicate ingress never created a second message.
        prop_assert_eq!(w.store.rows.len(), w.ids.len());
    }
}

/// The livelock seen under load after kill -9: a worker that takes the oldest copy on its
/// queue, and a re-drive of every `received` message before each take (its queue is
/// longer than the grace). Had a re-drive written a new revision, every copy the worker
/// reached would be stale and no message would ever be claimed.
#[test]
fn a_worker_behind_the_re_driver_still_claims_every_message() {
    let mut w = World::new(RetryPolicy::default());
    let n = 8u8;
    for k in 0..n {
        w.step(&Op::Ingress(k));
    }
    for _ in 0..(4 * usize::from(n)) {
        w.step(&Op::Advance(REDRIVE_AFTER_MS));
        w.step(&Op::Take(0));
    }
    let claimed: HashSet<&MessageId> = w.in_flight.iter().map(|(id, _, _)| id).collect();
    assert_eq!(claimed.len(), usize::from(n), "claimed {} of {n}", claimed.len());
}
