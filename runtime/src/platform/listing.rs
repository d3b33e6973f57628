//! Recent messages of an integration, newest first, from the `message_state` bucket: the
//! last value of each of the tenant's keys (unfinished messages, and the finished ones of
//! the last `state.message_state_ttl_s`), read once with an ordered consumer. A page keeps
//! only its `limit` newest entries in memory; the read costs one pass over the tenant's
//! keys per page (see ARCHITECTURE.md, Message path).

use std::collections::BinaryHeap;
use std::time::Duration;

use async_nats::jetstream::consumer;
use futures::StreamExt;

use vrsky_actors::message::{MessageState, Status, decode_stored, parse_state_key};
use vrsky_actors::{IntegrationId, MessageId, TenantId, subjects};

use super::{Platform, PlatformError, req};

/// Where a page starts: strictly older than this message (by creation time, then id).
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub struct MessageCursor {
    /// Creation time of the last message of the previous page, ms since the Unix epoch.
    pub created_at_ms: u64,
    /// Its id (ties on the same millisecond).
    pub message_id: String,
}

impl MessageCursor {
    /// The cursor after `s`.
    pub fn after(s: &MessageState) -> Self {
        MessageCursor {
            created_at_ms: s.created_at_ms,
            message_id: s.message_id.as_str().to_owned(),
        }
    }

    /// Parses `next_cursor` (`{created_at_ms}.{message_id}`).
    pub fn parse(s: &str) -> Option<Self> {
        let (ms, id) = s.split_once('.')?;
        let message_id = MessageId::new(id).ok()?.as_str().to_owned();
        Some(MessageCursor {
            created_at_ms: ms.parse().ok()?,
            message_id,
        })
    }
}

impl std::fmt::Display for MessageCursor {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}.{}", self.created_at_ms, self.message_id)
    }
}

/// A page of messages, newest first, and the cursor of the next page when there is one.
pub type MessagePage = (Vec<MessageState>, Option<MessageCursor>);

/// Collects the `limit` newest states older than a cursor from a stream of states in any
/// order, holding at most `limit + 1` of them. Pure: the listing's selection, tested
/// without a server.
#[derive(Debug)]
pub struct NewestPage {
    limit: usize,
    before: Option<MessageCursor>,
    // A min-heap by position (Reverse), so the oldest kept entry is dropped first.
    kept: BinaryHeap<std::cmp::Reverse<(MessageCursor, Keep)>>,
}

#[derive(Debug)]
struct Keep(MessageState);

impl PartialEq for Keep {
    fn eq(&self, _: &Self) -> bool {
        true
    }
}
impl Eq for Keep {}
impl PartialOrd for Keep {
    fn partial_cmp(&self, other: &Self) -> Option<std::cmp::Ordering> {
        Some(self.cmp(other))
    }
}
impl Ord for Keep {
    // Entries are ordered by their cursor alone, which is unique per message.
    fn cmp(&self, _: &Self) -> std::cmp::Ordering {
        std::cmp::Ordering::Equal
    }
}

impl NewestPage {
    /// An empty page of at most `limit` entries older than `before`.
    pub fn new(limit: usize, before: Option<MessageCursor>) -> Self {
        NewestPage {
            limit,
            before,
            kept: BinaryHeap::with_capacity(limit + 2),
        }
    }

    /// Offers one state.
    pub fn offer(&mut self, s: MessageState) {
        let at = MessageCursor::after(&s);
        if self.before.as_ref().is_some_and(|b| at >= *b) {
            return;
        }
        self.kept.push(std::cmp::Reverse((at, Keep(s))));
        // One more than the page, to know whether another page follows.
        if self.kept.len() > self.limit + 1 {
            self.kept.pop();
        }
    }

    /// The page, newest first, and the next page's cursor.
    pub fn finish(self) -> MessagePage {
        let limit = self.limit;
        let mut all: Vec<(MessageCursor, MessageState)> = self
            .kept
            .into_iter()
            .map(|std::cmp::Reverse((c, Keep(s)))| (c, s))
            .collect();
        all.sort_by(|a, b| b.0.cmp(&a.0));
        let more = all.len() > limit;
        all.truncate(limit);
        let next = if more { all.last().map(|(c, _)| c.clone()) } else { None };
        (all.into_iter().map(|(_, s)| s).collect(), next)
    }
}

impl Platform {
    /// Recent messages of one integration, newest first: at most `limit`, older than
    /// `before`, only `status` when given.
    pub async fn recent_messages(
        &self,
        tenant: &TenantId,
        integration: &IntegrationId,
        status: Option<Status>,
        limit: usize,
        before: Option<MessageCursor>,
    ) -> Result<MessagePage, PlatformError> {
        let mut page = NewestPage::new(limit, before);
        let stream = self.js.get_stream(subjects::state_stream()).await.map_err(req)?;
        let consumer = stream
            .create_consumer(consumer::pull::OrderedConfig {
                filter_subject: subjects::tenant_state_values(tenant),
                deliver_policy: consumer::DeliverPolicy::LastPerSubject,
                ..Default::default()
            })
            .await
            .map_err(req)?;
        // An ordered consumer with nothing to deliver would wait for a first message.
        let mut left = consumer.cached_info().num_pending;
        let mut messages = consumer.messages().await.map_err(req)?;
        while left > 0 {
            let m = match tokio::time::timeout(Duration::from_secs(10), messages.next()).await {
                Ok(Some(m)) => m.map_err(req)?,
                Ok(None) => break,
                Err(_) => return Err(PlatformError::request("listing the message_state bucket stalled")),
            };
            left = m.info().map(|i| i.pending).map_err(req)?;
            let key = subjects::state_key_of(&m.subject).unwrap_or("");
            if let (Some((t, id)), Ok((state, _))) = (parse_state_key(key), decode_stored(&m.payload))
                && t == *tenant
                && state.tenant_id == t
                && state.message_id == id
                && state.integration_id == *integration
                && status.is_none_or(|s| state.status == s)
            {
                page.offer(state);
            }
        }
        Ok(page.finish())
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    fn state(created_at_ms: u64) -> MessageState {
        MessageState::received(
            MessageId::generate(),
            TenantId::new("acme").unwrap(),
            IntegrationId::new("hook").unwrap(),
            created_at_ms,
        )
    }

    fn times(p: &[MessageState]) -> Vec<u64> {
        p.iter().map(|s| s.created_at_ms).collect()
    }

    #[test]
    fn pages_walk_newest_first_without_gaps_or_repeats() {
        // Offered in scrambled order, with two messages on the same millisecond.
        let all: Vec<MessageState> = [5, 1, 9, 3, 7, 7, 2, 8].into_iter().map(state).collect();
        let mut seen = Vec::new();
        let mut cursor = None;
        loop {
            let mut p = NewestPage::new(3, cursor.clone());
            for s in &all {
                p.offer(s.clone());
            }
            let (page, next) = p.finish();
            assert!(page.len() <= 3);
            seen.extend(page);
            match next {
                Some(c) => cursor = Some(c),
                None => break,
            }
        }
        assert_eq!(times(&seen), vec![9, 8, 7, 7, 5, 3, 2, 1]);
        let mut ids: Vec<_> = seen.iter().map(|s| s.message_id.clone()).collect();
        ids.sort_by(|a, b| a.as_str().cmp(b.as_str()));
        ids.dedup();
        assert_eq!(ids.len(), all.len(), "no message twice");
    }

    #[test]
    fn an_exact_page_has_no_next_cursor() {
        let mut p = NewestPage::new(2, None);
        p.offer(state(1));
        p.offer(state(2));
        let (page, next) = p.finish();
        assert_eq!(times(&page), vec![2, 1]);
        assert_eq!(next, None);
    }

    #[test]
    fn cursors_round_trip_and_bad_ones_are_refused() {
        let s = state(1_764_618_733_521);
        let c = MessageCursor::after(&s);
        assert_eq!(MessageCursor::parse(&c.to_string()), Some(c));
        assert_eq!(MessageCursor::parse("x.y"), None);
        assert_eq!(MessageCursor::parse("12"), None);
        assert_eq!(MessageCursor::parse("12.a/b"), None, "not a message id");
    }
}
