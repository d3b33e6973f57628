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
        Status::Completed | Status::DeadLetter => None,
    }
}

/// The in-memory index of unfinished messages. Bound: one entry per message that is not
/// completed or dead-lettered, i.e. what is in flight plus what is waiting for a retry.
#[derive(Debug, Default)]
pub struct Deadlines {
    map: HashMap<(TenantId, MessageId), Tracked>,
}

impl Deadlines {
    /// Records a state stored at `revision`; a finished one is forgotten. An observation
    /// older than the one held (a scan racing live writes) is ignored.
    pub fn observe(&mut self, state: &MessageState, revision: u64) {
        let key = (state.tenant_id.clone(), state.message_id.clone());
        if self.map.get(&key).is_some_and(|t| t.revision > revision) {
            return;
        }
        if state.status.is_terminal() {
            self.map.remove(&key);
        } else {
            self.map.insert(
                key,
                Tracked {
                    revision,
                    status: state.status,
                    integration: state.integration_id.clone(),
                    since_ms: since_of(state),
                    not_before_ms: 0,
                },
            );
        }
    }

    /// Forgets a message that is gone from the bucket.
    pub fn forget(&mut self, tenant: &TenantId, id: &MessageId) {
        self.map.remove(&(tenant.clone(), id.clone()));
    }

    /// At most `max` messages past their deadline at `now_ms`; `processing_ms` gives an
    /// integration's delivery timeout, and `admit` is asked for each overdue message's
    /// tenant before it is taken (for fairness between tenants: one it refuses stays due).
    /// Each taken is held back for `grace_ms` so a re-drive that fails is tried again
    /// later rather than on every tick.
    pub fn take_due(
        &mut self,
        now_ms: u64,
        grace_ms: u64,
        max: usize,
        processing_ms: impl Fn(&TenantId, &IntegrationId) -> u64,
        mut admit: impl FnMut(&TenantId) -> bool,
    ) -> Vec<(TenantId, MessageId)> {
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
            if deadline(tracked.status, tracked.since_ms, grace_ms, timeout).is_some_and(|d| d <= now_ms) && admit(t) {
                tracked.not_before_ms = now_ms + grace_ms;
                due.push((t.clone(), id.clone()));
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
        assert_eq!(d.take_due(1500, 100, 10, none, all), vec![(t.clone(), id.clone())]);
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
}
