//! The message lifecycle as a pure state machine.
//!
//! ```text
//!            ingress (create-only)
//!                   |
//!                   v
//!   +--------> received --claim--> processing --delivered--> completed
//!   |             ^  |                 |  \--filtered--> filtered
//!   |             ^  |                 |
//!   |   redrive   +--+   redrive /     | failed (retryable, budget left)
//!   |  (publish lost)    failed        v
//!   +------ retry due ------------- retry
//!   |                                  | failed (permanent, or budget spent)
//!   +------ replay ---- dead_letter <--+
//! ```
//!
//! Every transition is written with a revision check (compare-and-swap) by the caller;
//! this module decides what the next state is, or refuses the transition.

use serde::{Deserialize, Serialize};

use super::retry::RetryPolicy;
use crate::ids::{IntegrationId, MessageId, TenantId};

/// Where a message is in its life.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Status {
    /// Accepted (202 answered) and published; no worker has claimed it yet.
    Received,
    /// A worker claimed it and is delivering it.
    Processing,
    /// Delivered.
    Completed,
    /// The last attempt failed; another is scheduled at `next_attempt_at_ms`.
    Retry,
    /// Given up; the entry is in the dead-letter queue.
    DeadLetter,
    /// A filter dropped it: processed, deliberately not delivered (`reason` says which
    /// filter, and why).
    Filtered,
}

impl Status {
    /// No further transition happens on its own (only a replay leaves `dead_letter`).
    pub fn is_terminal(self) -> bool {
        matches!(self, Status::Completed | Status::DeadLetter | Status::Filtered)
    }

    /// The status as stored and shown.
    pub fn as_str(self) -> &'static str {
        match self {
            Status::Received => "received",
            Status::Processing => "processing",
            Status::Completed => "completed",
            Status::Retry => "retry",
            Status::DeadLetter => "dead_letter",
            Status::Filtered => "filtered",
        }
    }
}

/// One delivery attempt, kept for the dead-letter queue. Bound: at most
/// `max_retries + 1` entries per message life (a replay starts a new history).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Attempt {
    /// 1-based attempt number.
    pub attempt: u32,
    /// When it ended, ms since the Unix epoch.
    pub at_ms: u64,
    /// The destination's status code, if it answered.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub status: Option<u16>,
    /// What went wrong.
    pub error: String,
}

/// The record kept in the `message_state` bucket: the specification's `MessageState`
/// fields plus what retries and re-drives need.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct MessageState {
    /// Message id.
    pub message_id: MessageId,
    /// Owner tenant.
    pub tenant_id: TenantId,
    /// Integration.
    pub integration_id: IntegrationId,
    /// Current status.
    pub status: Status,
    /// Failed delivery attempts so far in this life (each scheduled a retry or ended the
    /// message). The API shows it as `attempts` and `retry_count` (see
    /// [`MessageState::attempts_made`]).
    pub retry_count: u32,
    /// The last failure.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_error: Option<String>,
    /// Created, ms since the Unix epoch.
    pub created_at_ms: u64,
    /// Last transition, ms since the Unix epoch.
    pub updated_at_ms: u64,
    /// With `retry`: when the next attempt is due.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub next_attempt_at_ms: Option<u64>,
    /// Failed attempts, oldest first.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub attempts: Vec<Attempt>,
    /// With `filtered`: which filter dropped it, and why.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    /// Which life of `integration_id` the message was received (or replayed) for: the
    /// integration's [`new_incarnation`], chosen when it was created. An integration deleted
    /// and created again under the same id has a later one, so it does not take over its
    /// predecessor's unfinished messages. 0: unknown (written before incarnations), matches
    /// any.
    #[serde(default, skip_serializing_if = "is_zero")]
    pub incarnation: u64,
}

fn is_zero(n: &u64) -> bool {
    *n == 0
}

/// A new integration's incarnation: its creation time in ms, shifted past 20 random bits,
/// so a later life of an id has a larger one (clocks allowing) and two are never equal in
/// practice. Non-zero and below 2^63 (it is stored as a signed 64-bit integer).
pub fn new_incarnation(now_ms: u64) -> u64 {
    let random = uuid::Uuid::new_v4().as_u64_pair().0 & 0xF_FFFF;
    (now_ms.clamp(1, (1 << 43) - 1) << 20) | random
}

/// What happened to a message.
#[derive(Debug, Clone, PartialEq)]
pub enum Event {
    /// A worker takes it (`received -> processing`).
    Claim,
    /// The destination accepted it (`processing -> completed`).
    Delivered,
    /// A filter dropped it (`processing -> filtered`).
    Filtered {
        /// Which filter, and why.
        reason: String,
    },
    /// The attempt failed.
    Failed {
        /// What went wrong.
        error: String,
        /// Destination status, if any.
        status: Option<u16>,
        /// Whether trying again may help.
        retryable: bool,
        /// The destination's `Retry-After`, in ms.
        retry_after_ms: Option<u64>,
        /// Jitter sample in [0, 1).
        jitter_sample: f64,
    },
    /// A scheduled retry is due (`retry -> received`).
    RetryDue,
    /// Its deadline passed without progress. From `received` (publish lost) it is
    /// published again; from `processing` (worker lost) it counts as a failed attempt;
    /// from an overdue `retry` it is made due.
    Redrive,
    /// A tenant replays it from the dead-letter queue: attempts start over, for the
    /// integration's current life.
    Replay {
        /// The incarnation of the integration it is replayed into.
        incarnation: u64,
    },
    /// It can no longer be delivered (its envelope expired, its integration was
    /// deleted): dead-letter it with the reason, whatever it was doing.
    Abandon {
        /// Why.
        reason: String,
    },
    /// Its claim's worker is known to be gone (the process that claimed it died: a node
    /// restarted after kill -9). Like [`Event::Redrive`] from `processing` it counts as a
    /// failed attempt, but the retry is due at once: the destination did not fail, so
    /// there is nothing to back off from.
    WorkerGone,
    /// Its worker dead-lettered this claim (the entry is in the queue) and died before
    /// writing the state: the state becomes the entry's (`processing -> dead_letter`).
    /// Legal only when `dead` was written for this very claim.
    FoundDeadLettered {
        /// The state in the dead-letter entry.
        dead: Box<MessageState>,
    },
}

impl Event {
    /// Dead-letters a message received for an earlier life of its integration id.
    pub fn abandon_for_predecessor(integration: &IntegrationId) -> Event {
        Event::Abandon {
            reason: format!(
                "integration {integration} was deleted and created again since this message was received; \
                 replay it to deliver it with the new definition"
            ),
        }
    }
}

/// A transition the lifecycle does not allow.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("illegal transition: {event} in status {from}")]
pub struct IllegalTransition {
    /// Status it was in.
    pub from: &'static str,
    /// What was attempted.
    pub event: &'static str,
}

pub(crate) fn event_name(e: &Event) -> &'static str {
    match e {
        Event::Claim => "claim",
        Event::Delivered => "delivered",
        Event::Filtered { .. } => "filtered",
        Event::Failed { .. } => "failed",
        Event::RetryDue => "retry_due",
        Event::Redrive => "redrive",
        Event::Replay { .. } => "replay",
        Event::Abandon { .. } => "abandon",
        Event::FoundDeadLettered { .. } => "found_dead_lettered",
        Event::WorkerGone => "worker_gone",
    }
}

/// Bound on stored error text.
const ERROR_CHARS_MAX: usize = 1024;

fn clip(s: &str) -> String {
    s.chars().take(ERROR_CHARS_MAX).collect()
}

impl MessageState {
    /// A message just accepted by ingress.
    pub fn received(message_id: MessageId, tenant_id: TenantId, integration_id: IntegrationId, now_ms: u64) -> Self {
        MessageState {
            message_id,
            tenant_id,
            integration_id,
            status: Status::Received,
            retry_count: 0,
            last_error: None,
            created_at_ms: now_ms,
            updated_at_ms: now_ms,
            next_attempt_at_ms: None,
            attempts: Vec::new(),
            reason: None,
            incarnation: 0,
        }
    }

    /// Delivery attempts made in this life: the failed ones, plus the one in progress or
    /// the one that succeeded. A message dead-lettered after `max_retries: 3` made 4.
    pub fn attempts_made(&self) -> u32 {
        match self.status {
            Status::Processing | Status::Completed => self.retry_count + 1,
            _ => self.retry_count,
        }
    }

    /// Retries made: the attempts after the first (3 for a message dead-lettered after
    /// `max_retries: 3`). A scheduled retry counts once it is attempted.
    pub fn retries_made(&self) -> u32 {
        self.attempts_made().saturating_sub(1)
    }

    /// How the message's incarnation compares with an integration's (see
    /// [`MessageState::incarnation`]): `Equal` when it belongs to it (0 on either side
    /// matches), `Less` when it was received for an earlier integration of the id,
    /// `Greater` for a later one (the integration asking is out of date).
    pub fn incarnation_vs(&self, incarnation: u64) -> std::cmp::Ordering {
        if self.incarnation == 0 || incarnation == 0 {
            std::cmp::Ordering::Equal
        } else {
            self.incarnation.cmp(&incarnation)
        }
    }

    /// The attempt number the next delivery will carry (1-based).
    pub fn next_attempt(&self) -> u32 {
        self.retry_count + 1
    }

    fn fail(&self, mut next: MessageState, policy: &RetryPolicy, failure: FailureInfo, now_ms: u64) -> MessageState {
        next.attempts.push(Attempt {
            attempt: self.next_attempt(),
            at_ms: now_ms,
            status: failure.status,
            error: clip(&failure.error),
        });
        next.last_error = Some(clip(&failure.error));
        next.retry_count = self.retry_count + 1;
        if failure.retryable && self.retry_count < policy.max_retries {
            let delay = policy.delay(
                next.retry_count,
                failure.jitter_sample,
                failure.retry_after_ms.map(std::time::Duration::from_millis),
            );
            next.status = Status::Retry;
            next.next_attempt_at_ms = Some(now_ms + delay.as_millis() as u64);
        } else {
            next.status = Status::DeadLetter;
            next.next_attempt_at_ms = None;
        }
        next
    }

    /// The state after `event` at `now_ms`, or why it cannot happen.
    pub fn apply(&self, event: &Event, policy: &RetryPolicy, now_ms: u64) -> Result<MessageState, IllegalTransition> {
        let illegal = || IllegalTransition {
            from: self.status.as_str(),
            event: event_name(event),
        };
        let mut next = self.clone();
        next.updated_at_ms = now_ms;
        match (self.status, event) {
            (Status::Received, Event::Claim) => {
                next.status = Status::Processing;
                Ok(next)
            }
            (Status::Processing, Event::Delivered) => {
                next.status = Status::Completed;
                next.next_attempt_at_ms = None;
                Ok(next)
            }
            (Status::Processing, Event::Filtered { reason }) => {
                next.status = Status::Filtered;
                next.reason = Some(clip(reason));
                next.next_attempt_at_ms = None;
                Ok(next)
            }
            (
                Status::Processing,
                Event::Failed {
                    error,
                    status,
                    retryable,
                    retry_after_ms,
                    jitter_sample,
                },
            ) => Ok(self.fail(
                next,
                policy,
                FailureInfo {
                    error: error.clone(),
                    status: *status,
                    retryable: *retryable,
                    retry_after_ms: *retry_after_ms,
                    jitter_sample: *jitter_sample,
                },
                now_ms,
            )),
            (Status::Retry, Event::RetryDue | Event::Redrive) => {
                next.status = Status::Received;
                next.next_attempt_at_ms = None;
                Ok(next)
            }
            (Status::Received, Event::Redrive) => Ok(next),
            (Status::Processing, Event::Redrive) => Ok(self.fail(
                next,
                policy,
                FailureInfo {
                    error: "worker lost while processing (deadline passed); re-driven".into(),
                    status: None,
                    retryable: true,
                    retry_after_ms: None,
                    jitter_sample: 0.0,
                },
                now_ms,
            )),
            (Status::Received | Status::Processing | Status::Retry, Event::Abandon { reason }) => {
                next.status = Status::DeadLetter;
                next.last_error = Some(clip(reason));
                next.next_attempt_at_ms = None;
                Ok(next)
            }
            (Status::Processing, Event::WorkerGone) => {
                let mut next = self.fail(
                    next,
                    policy,
                    FailureInfo {
                        error: "worker lost while processing (its process is gone); re-driven".into(),
                        status: None,
                        retryable: true,
                        retry_after_ms: None,
                        jitter_sample: 0.0,
                    },
                    now_ms,
                );
                if next.status == Status::Retry {
                    next.next_attempt_at_ms = Some(now_ms);
                }
                Ok(next)
            }
            (Status::Processing, Event::FoundDeadLettered { dead }) if dead.is_dead_letter_of(self) => {
                Ok(MessageState::clone(dead))
            }
            (Status::DeadLetter, Event::Replay { incarnation }) => {
                next.status = Status::Received;
                next.incarnation = *incarnation;
                next.retry_count = 0;
                next.attempts.clear();
                next.reason = None;
                next.next_attempt_at_ms = None;
                Ok(next)
            }
            _ => Err(illegal()),
        }
    }
}

impl MessageState {
    /// Whether `self` is the dead-letter state a worker wrote for the `processing` claim
    /// `claim` (and not an entry left from before a replay, or from an earlier life of the
    /// id): same message life, written at or after the claim (the worker's own clock both
    /// times), extending the claim's attempt history.
    pub fn is_dead_letter_of(&self, claim: &MessageState) -> bool {
        self.status == Status::DeadLetter
            && claim.status == Status::Processing
            && self.message_id == claim.message_id
            && self.created_at_ms == claim.created_at_ms
            && self.updated_at_ms >= claim.updated_at_ms
            && self.attempts.len() > claim.attempts.len()
            && self.attempts.starts_with(&claim.attempts)
    }
}

struct FailureInfo {
    error: String,
    status: Option<u16>,
    retryable: bool,
    retry_after_ms: Option<u64>,
    jitter_sample: f64,
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    fn msg() -> MessageState {
        MessageState::received(
            MessageId::generate(),
            TenantId::new("t").unwrap(),
            IntegrationId::new("i").unwrap(),
            1000,
        )
    }

    fn fail(retryable: bool) -> Event {
        Event::Failed {
            error: "boom".into(),
            status: Some(503),
            retryable,
            retry_after_ms: None,
            jitter_sample: 0.0,
        }
    }

    #[test]
    fn incarnations_match_unless_both_are_known_and_differ() {
        use std::cmp::Ordering::{Equal, Greater, Less};
        let mut s = msg();
        assert_eq!(s.incarnation_vs(7), Equal, "a message from before incarnations matches");
        s.incarnation = 7;
        assert_eq!(s.incarnation_vs(7), Equal);
        assert_eq!(
            s.incarnation_vs(0),
            Equal,
            "an integration from before incarnations matches"
        );
        assert_eq!(s.incarnation_vs(8), Less, "received for an earlier integration");
        assert_eq!(s.incarnation_vs(6), Greater, "received for a later integration");
        let (earlier, later) = (new_incarnation(1_000), new_incarnation(1_001));
        assert!(0 < earlier && earlier < later && later < 1 << 63);
        assert!(new_incarnation(u64::MAX) < 1 << 63);
        // Stored without the field while unknown; read back as unknown from old records.
        let old = serde_json::to_string(&msg()).unwrap();
        assert!(!old.contains("incarnation"), "{old}");
        assert_eq!(serde_json::from_str::<MessageState>(&old).unwrap().incarnation, 0);
        let json = serde_json::to_string(&s).unwrap();
        assert_eq!(serde_json::from_str::<MessageState>(&json).unwrap(), s);
    }

    #[test]
    fn a_gone_worker_costs_an_attempt_and_is_retried_at_once() {
        let p = RetryPolicy::default();
        let claimed = msg().apply(&Event::Claim, &p, 2_000).unwrap();
        let next = claimed.apply(&Event::WorkerGone, &p, 3_000).unwrap();
        assert_eq!(
            (next.status, next.retry_count, next.next_attempt_at_ms),
            (Status::Retry, 1, Some(3_000))
        );
        assert!(next.last_error.as_deref().unwrap().contains("process is gone"));
        // The budget still holds: past max_retries it is dead-lettered.
        let mut spent = claimed.clone();
        spent.retry_count = p.max_retries;
        assert_eq!(
            spent.apply(&Event::WorkerGone, &p, 3_000).unwrap().status,
            Status::DeadLetter
        );
        // Only a claim has a worker.
        assert!(msg().apply(&Event::WorkerGone, &p, 3_000).is_err());
    }

    #[test]
    fn a_replay_belongs_to_the_integration_it_is_replayed_into() {
        let p = RetryPolicy::default();
        let mut s = msg();
        s.incarnation = 7;
        let dead = s
            .apply(&Event::abandon_for_predecessor(&s.integration_id), &p, 1)
            .unwrap();
        assert_eq!(dead.status, Status::DeadLetter);
        assert!(
            dead.last_error.as_deref().unwrap().contains("created again"),
            "{dead:?}"
        );
        let replayed = dead.apply(&Event::Replay { incarnation: 8 }, &p, 2).unwrap();
        assert_eq!((replayed.status, replayed.incarnation), (Status::Received, 8));
    }

    #[test]
    fn happy_path() {
        let p = RetryPolicy::default();
        let s = msg().apply(&Event::Claim, &p, 1001).unwrap();
        assert_eq!(s.status, Status::Processing);
        let s = s.apply(&Event::Delivered, &p, 1002).unwrap();
        assert_eq!(s.status, Status::Completed);
        assert_eq!(s.updated_at_ms, 1002);
        assert!(s.apply(&Event::Claim, &p, 1003).is_err());
    }

    #[test]
    fn retries_with_backoff_then_dead_letter_after_max_plus_one_attempts() {
        let p = RetryPolicy::default();
        let mut s = msg();
        let mut now = 0;
        for n in 1..=3u32 {
            s = s.apply(&Event::Claim, &p, now).unwrap();
            s = s.apply(&fail(true), &p, now).unwrap();
            assert_eq!(s.status, Status::Retry);
            assert_eq!(s.retry_count, n);
            assert_eq!(s.next_attempt_at_ms, Some(now + 1000 * 2u64.pow(n)));
            now = s.next_attempt_at_ms.unwrap();
            s = s.apply(&Event::RetryDue, &p, now).unwrap();
            assert_eq!(s.status, Status::Received);
        }
        s = s.apply(&Event::Claim, &p, now).unwrap();
        assert_eq!(s.next_attempt(), 4);
        s = s.apply(&fail(true), &p, now).unwrap();
        assert_eq!(s.status, Status::DeadLetter);
        assert_eq!(s.attempts.len(), 4);
        assert_eq!(
            s.attempts.iter().map(|a| a.attempt).collect::<Vec<_>>(),
            vec![1, 2, 3, 4]
        );
        // Replay starts over with the same id.
        let r = s.apply(&Event::Replay { incarnation: 0 }, &p, now + 1).unwrap();
        assert_eq!((r.status, r.retry_count, r.attempts.len()), (Status::Received, 0, 0));
        assert_eq!(r.message_id, s.message_id);
    }

    #[test]
    fn permanent_failure_dead_letters_at_once() {
        let p = RetryPolicy::default();
        let s = msg()
            .apply(&Event::Claim, &p, 1)
            .unwrap()
            .apply(&fail(false), &p, 2)
            .unwrap();
        assert_eq!(s.status, Status::DeadLetter);
        assert_eq!(s.last_error.as_deref(), Some("boom"));
    }

    #[test]
    fn redrive_from_processing_counts_as_an_attempt() {
        let p = RetryPolicy {
            max_retries: 0,
            ..RetryPolicy::default()
        };
        let s = msg().apply(&Event::Claim, &p, 1).unwrap();
        let s = s.apply(&Event::Redrive, &p, 2).unwrap();
        assert_eq!(s.status, Status::DeadLetter);
        assert!(s.last_error.unwrap().contains("worker lost"));
    }

    #[test]
    fn abandon_dead_letters_unfinished_messages_only() {
        let p = RetryPolicy::default();
        let a = Event::Abandon {
            reason: "integration gone".into(),
        };
        let s = msg().apply(&a, &p, 5).unwrap();
        assert_eq!(
            (s.status, s.last_error.as_deref()),
            (Status::DeadLetter, Some("integration gone"))
        );
        let done = msg()
            .apply(&Event::Claim, &p, 1)
            .unwrap()
            .apply(&Event::Delivered, &p, 2)
            .unwrap();
        assert!(done.apply(&a, &p, 3).is_err());
        assert!(s.apply(&a, &p, 6).is_err());
    }

    #[test]
    fn illegal_transitions_are_refused() {
        let p = RetryPolicy::default();
        let e = msg().apply(&Event::Delivered, &p, 1).unwrap_err();
        assert_eq!(e.to_string(), "illegal transition: delivered in status received");
        assert!(msg().apply(&Event::Replay { incarnation: 0 }, &p, 1).is_err());
        assert!(msg().apply(&Event::RetryDue, &p, 1).is_err());
    }

    #[test]
    fn stored_form_is_the_spec_fields() {
        let s = msg();
        let v = serde_json::to_value(&s).unwrap();
        for k in [
            "message_id",
            "tenant_id",
            "integration_id",
            "status",
            "retry_count",
            "created_at_ms",
            "updated_at_ms",
        ] {
            assert!(v.get(k).is_some(), "{k}");
        }
        assert_eq!(v["status"], "received");
        let back: MessageState = serde_json::from_value(v).unwrap();
        assert_eq!(back, s);
    }
}
