//! Deadlines of messages that are not finished, fed by a watch of the state bucket. A
//! message that makes no progress by its deadline is re-driven: the answer to a worker
//! that died and to a core-NATS publish that was lost.

use std::collections::HashMap;

use super::{MessageState, Status};
use crate::ids::{MessageId, TenantId};

#[derive(Debug, Clone, Copy)]
struct Tracked {
    revision: u64,
    due_ms: u64,
}

/// The in-memory index of unfinished messages. Bound: one entry per message that is not
/// completed or dead-lettered, i.e. what is in flight plus what is waiting for a retry.
#[derive(Debug, Default)]
pub struct Deadlines {
    map: HashMap<(TenantId, MessageId), Tracked>,
}

impl Deadlines {
    /// Records the latest state of a message (`None`: deleted or expired). `grace_ms` is
    /// added to every deadline; `processing_ms` (the delivery timeout) to a claimed one.
    pub fn observe(
        &mut self,
        tenant: TenantId,
        id: MessageId,
        state: Option<&MessageState>,
        revision: u64,
        grace_ms: u64,
        processing_ms: u64,
    ) {
        let key = (tenant, id);
        let redrive_after_ms = grace_ms;
        let due = state.and_then(|s| match s.status {
            Status::Received => Some(s.updated_at_ms + redrive_after_ms),
            Status::Processing => Some(s.updated_at_ms + processing_ms + redrive_after_ms),
            Status::Retry => Some(s.next_attempt_at_ms.unwrap_or(s.updated_at_ms) + redrive_after_ms),
            Status::Completed | Status::DeadLetter => None,
        });
        match due {
            Some(due_ms) => {
                // Watch events can arrive out of order after a reconnect; keep the newest.
                let newer = self.map.get(&key).is_none_or(|t| t.revision <= revision);
                if newer {
                    self.map.insert(key, Tracked { revision, due_ms });
                }
            }
            None => {
                if self.map.get(&key).is_none_or(|t| t.revision <= revision) {
                    self.map.remove(&key);
                }
            }
        }
    }

    /// Messages past their deadline at `now_ms`. Each is pushed back by `retry_in_ms` so a
    /// re-drive that fails is tried again later rather than on every tick.
    pub fn take_due(&mut self, now_ms: u64, retry_in_ms: u64, max: usize) -> Vec<(TenantId, MessageId)> {
        let mut due = Vec::new();
        for ((t, id), tracked) in self.map.iter_mut() {
            if due.len() >= max {
                break;
            }
            if tracked.due_ms <= now_ms {
                tracked.due_ms = now_ms + retry_in_ms;
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
    use crate::ids::IntegrationId;
    use crate::message::{Event, RetryPolicy};

    #[test]
    fn tracks_unfinished_and_forgets_finished() {
        let t = TenantId::new("t").unwrap();
        let id = MessageId::generate();
        let p = RetryPolicy::default();
        let s = MessageState::received(id.clone(), t.clone(), IntegrationId::new("i").unwrap(), 1000);
        let mut d = Deadlines::default();
        d.observe(t.clone(), id.clone(), Some(&s), 1, 500, 0);
        assert!(d.take_due(1499, 100, 10).is_empty());
        assert_eq!(d.take_due(1500, 100, 10), vec![(t.clone(), id.clone())]);
        // Pushed back after being handed out.
        assert!(d.take_due(1550, 100, 10).is_empty());
        assert_eq!(d.take_due(1600, 100, 10).len(), 1);

        let claimed = s.apply(&Event::Claim, &p, 2000).unwrap();
        d.observe(t.clone(), id.clone(), Some(&claimed), 2, 500, 1000);
        // An older event arriving late does not win.
        d.observe(t.clone(), id.clone(), Some(&s), 1, 500, 1000);
        assert!(d.take_due(3499, 100, 10).is_empty());
        let done = claimed.apply(&Event::Delivered, &p, 2100).unwrap();
        d.observe(t.clone(), id.clone(), Some(&done), 3, 500, 1000);
        assert!(d.is_empty());
    }

    #[test]
    fn retries_are_due_after_their_time_plus_grace() {
        let t = TenantId::new("t").unwrap();
        let id = MessageId::generate();
        let p = RetryPolicy::default();
        let s = MessageState::received(id.clone(), t.clone(), IntegrationId::new("i").unwrap(), 0)
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
        d.observe(t, id, Some(&s), 5, 1000, 0);
        assert!(d.take_due(2999, 10, 10).is_empty());
        assert_eq!(d.take_due(3000, 10, 10).len(), 1);
    }
}
