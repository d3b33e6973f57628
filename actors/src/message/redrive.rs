//! Deadlines of unfinished messages: the node-local index behind re-drive. A message that
//! makes no progress by its deadline is re-driven: the answer to a worker that died and to
//! a core-NATS publish that was lost.
//!
//! The index is fed by the node's own writes (every stored transition is observed) and, at
//! start, by one scan of the bucket, so a restarted node finds what its predecessor left.
//! Deadlines are computed when asked, so a claimed message's deadline follows its
//! integration's current delivery timeout.

use std::collections::HashMap;

use super::{MessageState, Status};
use crate::ids::{IntegrationId, MessageId, TenantId};

#[derive(Debug, Clone)]
struct Tracked {
    revision: u64,
    status: Status,
    integration: IntegrationId,
    /// `updated_at_ms`, or with `retry` the time the retry is due.
    since_ms: u64,
    /// Not handed out again before this (set when handed out).
    not_before_ms: u64,
    /// Left by a process that is gone (found by the start-up scan): nobody else will move
    /// it on, so it is due at once (a retry at its due time), without the grace.
    orphaned: bool,
    /// Times handed out at this revision: each doubles the next hold-back.
    handed_out: u32,
}

/// Most hold-backs of one revision, in graces: `2^3`.
const HOLD_BACK_DOUBLINGS_MAX: u32 = 3;

/// A message handed out for re-drive.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Due {
    /// Its tenant.
    pub tenant: TenantId,
    /// Its id.
    pub id: MessageId,
    /// The revision tracked when it was handed out.
    pub revision: u64,
    /// Left by a process that is gone: due at once, however recent its last change.
    pub orphaned: bool,
}

/// When a message in `state` is overdue: `grace_ms` after its last transition (after the
/// delivery timeout `processing_ms` too when claimed, after the due time when waiting for a
/// retry); `None` for finished messages.
pub fn deadline_of(state: &MessageState, grace_ms: u64, processing_ms: u64) -> Option<u64> {
    deadline(state.status, since_of(state), grace_ms, processing_ms)
}

fn since_of(state: &MessageState) -> u64 {
    match state.status {
        Status::Retry => state.next_attempt_at_ms.unwrap_or(state.updated_at_ms),
        _ => state.updated_at_ms,
    }
}

fn deadline(status: Status, since_ms: u64, grace_ms: u64, processing_ms: u64) -> Option<u64> {
    match status {
        Status::Received | Status::Retry => Some(since_ms + grace_ms),
        Status::Processing => Some(since_ms + processing_ms + grace_ms),
        Status::Completed | Status::DeadLetter | Status::Filtered => None,
    }
}

/// What the index needs of a stored state: the message, its integration, its status, the
/// time its deadline counts from, and its revision. Sent from the writers to the index's
/// owner (the RetryScheduler) in place of the whole state.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Observed {
    /// The tenant.
    pub tenant: TenantId,
    /// The message.
    pub id: MessageId,
    /// Its integration.
    pub integration: IntegrationId,
    /// Its status.
    pub status: Status,
    /// `updated_at_ms`, or with `retry` the time the retry is due.
    pub since_ms: u64,
    /// The revision it was stored at.
    pub revision: u64,
}

impl Observed {
    /// What the index needs of `state`, stored at `revision`.
    pub fn of(state: &MessageState, revision: u64) -> Self {
        Observed {
            tenant: state.tenant_id.clone(),
            id: state.message_id.clone(),
            integration: state.integration_id.clone(),
            status: state.status,
            since_ms: since_of(state),
            revision,
        }
    }
}

/// The in-memory index of unfinished messages. Bound: one entry per message that is not
/// completed or dead-lettered, i.e. what is in flight plus what is waiting for a retry.
#[derive(Debug, Default)]
pub struct Deadlines {
    map: HashMap<(TenantId, MessageId), Tracked>,
    /// Unfinished messages per integration: what admission control reads. Bound: one
    /// entry per integration with an unfinished message.
    /// Nested so the lookups on every webhook and write clone no id.
    per_integration: HashMap<TenantId, HashMap<IntegrationId, usize>>,
}

impl Deadlines {
    /// Records a state stored at `revision`; a finished one is forgotten. An observation
    /// older than the one held (a scan racing live writes) is ignored.
    pub fn observe(&mut self, state: &MessageState, revision: u64) {
        self.record(Observed::of(state, revision), false);
    }

    /// Records a state left by a process that is gone (a node killed and restarted, later
    /// a tenant's previous owner): it is re-driven at once rather than after the grace.
    pub fn observe_orphan(&mut self, state: &MessageState, revision: u64) {
        self.record(Observed::of(state, revision), true);
    }

    /// Records an observation (see [`Deadlines::observe`]); `orphaned` as in
    /// [`Deadlines::observe_orphan`].
    pub fn record(&mut self, o: Observed, orphaned: bool) {
        let key = (o.tenant, o.id);
        let held = self.map.get(&key);
        if held.is_some_and(|t| t.revision > o.revision) {
            return;
        }
        // The same revision again (read back, or found by a scan) is nothing new: its
        // hold-back stands, and so does what is known of its writer.
        let (not_before_ms, handed_out, orphaned) = match held {
            Some(t) if t.revision == o.revision => (t.not_before_ms, t.handed_out, t.orphaned || orphaned),
            _ => (0, 0, orphaned),
        };
        if o.status.is_terminal() {
            let _ = self.remove(&key);
        } else {
            if !self.map.contains_key(&key) {
                self.count(&key.0, &o.integration, true);
            }
            self.map.insert(
                key,
                Tracked {
                    revision: o.revision,
                    status: o.status,
                    integration: o.integration,
                    since_ms: o.since_ms,
                    not_before_ms,
                    orphaned,
                    handed_out,
                },
            );
        }
    }

    /// Forgets a message that is gone from the bucket; returns its integration if it was
    /// tracked.
    pub fn forget(&mut self, tenant: &TenantId, id: &MessageId) -> Option<IntegrationId> {
        self.remove(&(tenant.clone(), id.clone()))
    }

    fn remove(&mut self, key: &(TenantId, MessageId)) -> Option<IntegrationId> {
        let t = self.map.remove(key)?;
        self.count(&key.0, &t.integration, false);
        Some(t.integration)
    }

    /// Counts one unfinished message of an integration in (`up`) or out.
    fn count(&mut self, tenant: &TenantId, integration: &IntegrationId, up: bool) {
        let Some(per) = self.per_integration.get_mut(tenant) else {
            if up {
                let per = HashMap::from([(integration.clone(), 1)]);
                self.per_integration.insert(tenant.clone(), per);
            }
            return;
        };
        match (per.get_mut(integration), up) {
            (Some(n), true) => *n += 1,
            (None, true) => {
                per.insert(integration.clone(), 1);
            }
            (Some(n), false) => {
                *n -= 1;
                if *n == 0 {
                    per.remove(integration);
                    if per.is_empty() {
                        self.per_integration.remove(tenant);
                    }
                }
            }
            (None, false) => {}
        }
    }

    /// Unfinished messages of one integration that this node tracks.
    pub fn unfinished(&self, tenant: &TenantId, integration: &IntegrationId) -> usize {
        self.per_integration
            .get(tenant)
            .and_then(|per| per.get(integration))
            .copied()
            .unwrap_or(0)
    }

    /// Makes every `received` message of a tenant due now: its NATS client dropped
    /// messages (a slow consumer), and nothing says which.
    pub fn expedite(&mut self, tenant: &TenantId) {
        for ((t, _), tracked) in self.map.iter_mut() {
            if t == tenant && tracked.status == Status::Received {
                // Like an orphan: nobody will move it on unless it is published again.
                // Due now; its doubling stands, so repeated slow-consumer events do not
                // refill the overflowing subscription with every message each time.
                tracked.orphaned = true;
                tracked.not_before_ms = 0;
            }
        }
    }

    /// A re-drive of `id` at `revision` that published nothing (its tenant starting or
    /// unreachable, its state unavailable), reported at `now_ms`: no copy went to a
    /// worker, so its next try comes a grace later, not a doubled one, and the doubling
    /// starts over.
    pub fn unpublished(&mut self, tenant: &TenantId, id: &MessageId, revision: u64, now_ms: u64, grace_ms: u64) {
        if let Some(t) = self.map.get_mut(&(tenant.clone(), id.clone()))
            && t.revision == revision
        {
            t.handed_out = 0;
            t.not_before_ms = t.not_before_ms.min(now_ms.saturating_add(grace_ms));
        }
    }

    /// At most `max` messages past their deadline at `now_ms`; `processing_ms` gives an
    /// integration's delivery timeout, and `admit` is asked for each overdue message's
    /// tenant before it is taken (for fairness between tenants: one it refuses stays due).
    /// Each taken is held back so a re-drive that fails is tried again later rather than on
    /// every tick: for `grace_ms`, doubled at each hand-out of the same revision up to 8
    /// graces. A message re-driven without a write (`received`, published again) thus adds
    /// a copy to a backlogged worker's queue ever more rarely, not once per grace.
    pub fn take_due(
        &mut self,
        now_ms: u64,
        grace_ms: u64,
        max: usize,
        processing_ms: impl Fn(&TenantId, &IntegrationId) -> u64,
        mut admit: impl FnMut(&TenantId) -> bool,
    ) -> Vec<Due> {
        let mut due = Vec::new();
        for ((t, id), tracked) in self.map.iter_mut() {
            if due.len() >= max {
                break;
            }
            if tracked.not_before_ms > now_ms {
                continue;
            }
            let timeout = match tracked.status {
                Status::Processing => processing_ms(t, &tracked.integration),
                _ => 0,
            };
            let at = match (tracked.orphaned, tracked.status) {
                (true, Status::Retry) => Some(tracked.since_ms),
                (true, _) => Some(0),
                (false, status) => deadline(status, tracked.since_ms, grace_ms, timeout),
            };
            if at.is_some_and(|d| d <= now_ms) && admit(t) {
                let doublings = tracked.handed_out.min(HOLD_BACK_DOUBLINGS_MAX);
                tracked.not_before_ms = now_ms.saturating_add(grace_ms.saturating_mul(1 << doublings));
                tracked.handed_out = tracked.handed_out.saturating_add(1);
                due.push(Due {
                    tenant: t.clone(),
                    id: id.clone(),
                    revision: tracked.revision,
                    orphaned: tracked.orphaned,
                });
            }
        }
        due
    }

    /// Messages tracked.
    pub fn len(&self) -> usize {
        self.map.len()
    }

    /// Whether nothing is tracked.
    pub fn is_empty(&self) -> bool {
        self.map.is_empty()
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use crate::message::{Event, RetryPolicy};

    fn none(_: &TenantId, _: &IntegrationId) -> u64 {
        0
    }

    fn all(_: &TenantId) -> bool {
        true
    }

    #[test]
    fn tracks_unfinished_and_forgets_finished() {
        let t = TenantId::new("t").unwrap();
        let id = MessageId::generate();
        let p = RetryPolicy::default();
        let s = MessageState::received(id.clone(), t.clone(), IntegrationId::new("i").unwrap(), 1000);
        let mut d = Deadlines::default();
        d.observe(&s, 1);
        assert_eq!(deadline_of(&s, 500, 0), Some(1500));
        assert!(d.take_due(1499, 500, 10, none, all).is_empty());
        let taken = d.take_due(1500, 100, 10, none, all);
        assert_eq!(
            taken.iter().map(|d| (&d.tenant, &d.id, d.orphaned)).collect::<Vec<_>>(),
            vec![(&t, &id, false)]
        );
        // Held back after being handed out.
        assert!(d.take_due(1550, 100, 10, none, all).is_empty());
        assert_eq!(d.take_due(1600, 100, 10, none, all).len(), 1);

        let claimed = s.apply(&Event::Claim, &p, 2000).unwrap();
        d.observe(&claimed, 2);
        // An older observation arriving late does not win.
        d.observe(&s, 1);
        // The delivery timeout is asked for when the deadline is checked.
        assert!(d.take_due(3499, 500, 10, |_, _| 1000, all).is_empty());
        assert!(d.take_due(3500, 500, 10, |_, _| 2000, all).is_empty());
        assert_eq!(d.take_due(3500, 500, 10, |_, _| 1000, all).len(), 1);
        let done = claimed.apply(&Event::Delivered, &p, 2100).unwrap();
        d.observe(&done, 3);
        assert!(d.is_empty());
        d.observe(&claimed, 4);
        d.forget(&t, &id);
        assert!(d.is_empty());
    }

    #[test]
    fn orphans_are_due_at_once_and_their_retries_at_their_time() {
        let t = TenantId::new("t").unwrap();
        let p = RetryPolicy::default();
        let i = IntegrationId::new("i").unwrap();
        let received = MessageState::received(MessageId::generate(), t.clone(), i.clone(), 10_000);
        let claimed = MessageState::received(MessageId::generate(), t.clone(), i.clone(), 10_000)
            .apply(&Event::Claim, &p, 10_000)
            .unwrap();
        let waiting = MessageState::received(MessageId::generate(), t.clone(), i, 10_000)
            .apply(&Event::Claim, &p, 10_000)
            .unwrap()
            .apply(
                &Event::Failed {
                    error: "e".into(),
                    status: None,
                    retryable: true,
                    retry_after_ms: None,
                    jitter_sample: 0.0,
                },
                &p,
                10_000,
            )
            .unwrap();
        let mut d = Deadlines::default();
        d.observe_orphan(&received, 1);
        d.observe_orphan(&claimed, 2);
        d.observe_orphan(&waiting, 3);
        // At the time of the scan, long before any grace or delivery timeout would pass.
        let now = 10_001;
        let due = d.take_due(now, 30_000, 10, |_, _| 60_000, all);
        let mut ids: Vec<_> = due.iter().map(|d| d.id.clone()).collect();
        ids.sort_by(|a, b| a.as_str().cmp(b.as_str()));
        let mut want = vec![received.message_id.clone(), claimed.message_id.clone()];
        want.sort_by(|a, b| a.as_str().cmp(b.as_str()));
        assert_eq!(ids, want);
        assert!(due.iter().all(|d| d.orphaned));
        // The retry at its due time (backoff 2 s), without the grace.
        assert_eq!(d.take_due(12_000, 30_000, 10, none, all).len(), 1);
        // A newer state written by this process is not an orphan any more.
        let mut d = Deadlines::default();
        d.observe_orphan(&received, 1);
        d.observe(&received, 5);
        assert!(d.take_due(now, 30_000, 10, none, all).is_empty());
    }

    #[test]
    fn unfinished_messages_are_counted_per_integration() {
        let p = RetryPolicy::default();
        let t = TenantId::new("t").unwrap();
        let (a, b) = (IntegrationId::new("a").unwrap(), IntegrationId::new("b").unwrap());
        let mut d = Deadlines::default();
        let m1 = MessageState::received(MessageId::generate(), t.clone(), a.clone(), 0);
        let m2 = MessageState::received(MessageId::generate(), t.clone(), a.clone(), 0);
        d.observe(&m1, 1);
        d.observe(&m2, 2);
        d.observe(
            &MessageState::received(MessageId::generate(), t.clone(), b.clone(), 0),
            3,
        );
        assert_eq!((d.unfinished(&t, &a), d.unfinished(&t, &b)), (2, 1));
        // A new state of a tracked message is not a new message.
        let claimed = m1.apply(&Event::Claim, &p, 1).unwrap();
        d.observe(&claimed, 4);
        assert_eq!(d.unfinished(&t, &a), 2);
        d.observe(&claimed.apply(&Event::Delivered, &p, 2).unwrap(), 5);
        assert_eq!(d.unfinished(&t, &a), 1);
        d.forget(&t, &m2.message_id);
        assert_eq!(d.unfinished(&t, &a), 0);
        d.forget(&t, &m2.message_id);
        assert_eq!(d.unfinished(&t, &a), 0);
    }

    #[test]
    fn expedited_received_messages_are_due_now() {
        let t = TenantId::new("t").unwrap();
        let i = IntegrationId::new("i").unwrap();
        let mut d = Deadlines::default();
        d.observe(&MessageState::received(MessageId::generate(), t.clone(), i, 10_000), 1);
        assert!(d.take_due(10_001, 30_000, 10, none, all).is_empty());
        d.expedite(&t);
        assert_eq!(d.take_due(10_001, 30_000, 10, none, all).len(), 1);
    }

    #[test]
    fn a_refused_tenant_stays_due() {
        let (a, b) = (TenantId::new("a").unwrap(), TenantId::new("b").unwrap());
        let i = IntegrationId::new("i").unwrap();
        let mut d = Deadlines::default();
        d.observe(
            &MessageState::received(MessageId::generate(), a.clone(), i.clone(), 0),
            1,
        );
        d.observe(&MessageState::received(MessageId::generate(), b.clone(), i, 0), 2);
        let only_b = d.take_due(5_000, 1_000, 10, none, |t| *t == b);
        assert_eq!(only_b.iter().map(|d| &d.tenant).collect::<Vec<_>>(), vec![&b]);
        // A's message was not handed out, so it is still due now.
        let rest = d.take_due(5_000, 1_000, 10, none, all);
        assert_eq!(rest.iter().map(|d| &d.tenant).collect::<Vec<_>>(), vec![&a]);
    }

    #[test]
    fn retries_are_due_after_their_time_plus_grace() {
        let t = TenantId::new("t").unwrap();
        let id = MessageId::generate();
        let p = RetryPolicy::default();
        let s = MessageState::received(id, t, IntegrationId::new("i").unwrap(), 0)
            .apply(&Event::Claim, &p, 0)
            .unwrap()
            .apply(
                &Event::Failed {
                    error: "e".into(),
                    status: None,
                    retryable: true,
                    retry_after_ms: None,
                    jitter_sample: 0.0,
                },
                &p,
                0,
            )
            .unwrap();
        let mut d = Deadlines::default();
        d.observe(&s, 5);
        assert_eq!(deadline_of(&s, 1000, 0), Some(3000));
        assert!(d.take_due(2999, 1000, 10, none, all).is_empty());
        assert_eq!(d.take_due(3000, 1000, 10, none, all).len(), 1);
    }

    #[test]
    fn each_hand_out_of_one_revision_doubles_its_hold_back_up_to_eight_graces() {
        let t = TenantId::new("t").unwrap();
        let p = RetryPolicy::default();
        let s = MessageState::received(MessageId::generate(), t, IntegrationId::new("i").unwrap(), 0);
        let mut d = Deadlines::default();
        d.observe(&s, 1);
        // Handed out at 1 000 (held back 1 g), 2 000 (2 g), 4 000 (4 g), 8 000 (8 g),
        // then every 8 graces.
        let mut taken = Vec::new();
        for now in (1_000..=40_000).step_by(100) {
            if !d.take_due(now, 1_000, 10, none, all).is_empty() {
                taken.push(now);
            }
            // Read back at its revision (a load, a scan): the hold-back stands.
            d.observe(&s, 1);
        }
        assert_eq!(taken, vec![1_000, 2_000, 4_000, 8_000, 16_000, 24_000, 32_000, 40_000]);
        // A re-drive that published nothing (its tenant was down) is tried a grace later,
        // and the doubling starts over.
        d.unpublished(&s.tenant_id, &s.message_id, 1, 40_010, 1_000);
        assert!(d.take_due(41_009, 1_000, 10, none, all).is_empty());
        assert_eq!(d.take_due(41_010, 1_000, 10, none, all).len(), 1);
        assert_eq!(d.take_due(42_010, 1_000, 10, none, all).len(), 1);
        assert!(d.take_due(43_010, 1_000, 10, none, all).is_empty());
        // Another revision's report changes nothing.
        d.unpublished(&s.tenant_id, &s.message_id, 7, 43_010, 1_000);
        assert!(d.take_due(44_009, 1_000, 10, none, all).is_empty());
        // Progress (a new revision) starts the hold-back over.
        let claimed = s.apply(&Event::Claim, &p, 40_000).unwrap();
        d.observe(&claimed, 2);
        let mut back = s.clone();
        back.updated_at_ms = 40_000;
        d.observe(&back, 3);
        assert_eq!(d.take_due(41_000, 1_000, 10, none, all).len(), 1);
        assert!(d.take_due(41_999, 1_000, 10, none, all).is_empty());
        assert_eq!(d.take_due(42_000, 1_000, 10, none, all).len(), 1);
    }
}
