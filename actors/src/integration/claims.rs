//! The claims this worker made lately. The re-driver publishes a message still `received`
//! again at the same revision, so a worker with a backlog can hold several copies of it;
//! only the first claim of a revision can win, and each losing one would cost a
//! revision-checked write (with group commit, a failed check fails the whole batch it
//! rides in, whose writes then go one by one). A copy of a revision this worker already
//! claimed is skipped without a write.

use std::collections::{HashSet, VecDeque};
use std::sync::Mutex;

use crate::ids::MessageId;

/// Claims remembered per worker: the oldest are forgotten first, and a copy of one of
/// those costs one losing write, as without the set. Near the default bound of unfinished
/// messages per integration (`webhook.unfinished_per_integration_max`, 10,000), so a
/// backlog that large is covered; about 2 MB when full.
pub(super) const RECENT_CLAIMS_MAX: usize = 10_000;

/// A bounded set of `(message, revision)` claims, oldest forgotten first.
#[derive(Debug)]
pub(super) struct RecentClaims {
    capacity: usize,
    inner: Mutex<Inner>,
}

#[derive(Debug, Default)]
struct Inner {
    order: VecDeque<(MessageId, u64)>,
    held: HashSet<(MessageId, u64)>,
}

impl RecentClaims {
    pub(super) fn new(capacity: usize) -> Self {
        RecentClaims {
            capacity: capacity.max(1),
            inner: Mutex::default(),
        }
    }

    /// Whether this worker has not tried to claim `id` at `revision` yet; records the try.
    pub(super) fn begin(&self, id: &MessageId, revision: u64) -> bool {
        let mut inner = self.inner.lock().unwrap_or_else(|p| p.into_inner());
        let key = (id.clone(), revision);
        if inner.held.contains(&key) {
            return false;
        }
        while inner.order.len() >= self.capacity {
            if let Some(old) = inner.order.pop_front() {
                inner.held.remove(&old);
            }
        }
        inner.held.insert(key.clone());
        inner.order.push_back(key);
        true
    }

    /// Forgets a try whose outcome is unknown (the write failed): a later copy at this
    /// revision may still win.
    pub(super) fn forget(&self, id: &MessageId, revision: u64) {
        let mut inner = self.inner.lock().unwrap_or_else(|p| p.into_inner());
        let key = (id.clone(), revision);
        inner.held.remove(&key);
        inner.order.retain(|k| k != &key);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_revision_is_claimed_once_until_forgotten_and_the_oldest_go_first() {
        let claims = RecentClaims::new(2);
        let (a, b, c) = (MessageId::generate(), MessageId::generate(), MessageId::generate());
        assert!(claims.begin(&a, 1));
        assert!(!claims.begin(&a, 1), "a second copy of one revision");
        assert!(claims.begin(&a, 2), "a later revision is a new claim");
        claims.forget(&a, 2);
        assert!(claims.begin(&a, 2), "forgotten after an unknown outcome");
        // Full: `a@1` went first, then `a@2`.
        assert!(claims.begin(&b, 1));
        assert!(claims.begin(&a, 1));
        assert!(claims.begin(&c, 1));
        assert!(!claims.begin(&c, 1));
    }
}
