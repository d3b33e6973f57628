//! What the RetryScheduler does with one message: a due retry (`handle_due`), or an
//! overdue one from the re-drive index (`redrive`), for a tenant this node holds or one
//! another node holds that this node stored a webhook for (`redrive_elsewhere`). Each
//! loads the message's state, checks it is still what was due, and commits through the
//! `Committer`.

use std::time::Duration;

use async_nats::jetstream::AckKind;
use tracing::{debug, info, warn};

use vrsky_actors::message::{
    Committed, Committer, Due, Event, MessageState, MessageStore, RetryPolicy, Status, StoreError, Stored, deadline_of,
};
use vrsky_actors::{MessageId, TenantId, now_ms};

use super::SchedulerArgs;
use crate::control::{Directory, RouteError};

/// Commits `event` for a loaded message under its integration's retry policy, publishing
/// it if it becomes `received`. A message whose integration is gone from its running
/// tenant, or was received for an earlier integration of the same id, is abandoned
/// instead. `None`: the tenant is (re)starting, or none of its instances is usable and the
/// message would be published, so nothing is decided and the message is left alone.
async fn commit_loaded(
    args: &SchedulerArgs,
    stored: &Stored,
    event: Event,
    now: u64,
) -> Result<Option<Committed>, StoreError> {
    let s = &stored.state;
    let (event, policy) = match args.directory.route(&s.tenant_id, &s.integration_id) {
        Ok(route) if s.incarnation_vs(route.incarnation).is_lt() => (
            Event::abandon_for_predecessor(&s.integration_id),
            RetryPolicy::default(),
        ),
        // Publishing where no instance can take it would only cost a write per round:
        // wait until one is usable (a probe or a reconnect brings it back).
        Ok(route) if s.status != Status::Processing && !route.instances.any_usable() => return Ok(None),
        Ok(route) => (event, route.retry),
        Err(RouteError::Starting(_) | RouteError::Elsewhere(_)) => return Ok(None),
        // A tenant this node does not run is another node's to decide (or, once this
        // node claims it, this node's after its take-over scan): never abandoned here.
        Err(RouteError::NotFound(_)) if !args.directory.holds(&s.tenant_id) => return Ok(None),
        Err(RouteError::NotFound(_)) => (
            Event::Abandon {
                reason: format!("integration {} no longer exists", s.integration_id),
            },
            RetryPolicy::default(),
        ),
    };
    let committer = Committer {
        store: &args.platform,
        publisher: Some(&*args.directory),
        policy: &policy,
    };
    committer
        .commit(s, stored.revision, &event, stored.record.as_ref(), now)
        .await
        .map(Some)
}

/// Handles one retry-queue entry; returns how to answer the server.
pub(super) async fn handle_due(
    args: &SchedulerArgs,
    t: TenantId,
    id: MessageId,
    retry_count: u32,
    due_ms: u64,
) -> AckKind {
    let now = now_ms();
    if due_ms > now + 5 {
        return AckKind::Nak(Some(Duration::from_millis(due_ms - now)));
    }
    let stored = match args.platform.load(&t, &id).await {
        Ok(Some(x)) => x,
        // Gone (expired or deleted): nothing to retry.
        Ok(None) => return AckKind::Ack,
        Err(e) => {
            warn!(tenant_id = %t, message_id = %id, error = %e, "retry: state unavailable; trying again");
            return AckKind::Nak(Some(Duration::from_secs(1)));
        }
    };
    if stored.state.status != Status::Retry || stored.state.retry_count != retry_count {
        // Moved on (re-driven, replayed, or a duplicate entry): nothing to do.
        return AckKind::Ack;
    }
    if !args.directory.holds(&t) {
        // Another node's tenant: the queue is shared, so the entry goes back for the
        // owner's scheduler to take.
        return AckKind::Nak(Some(Duration::from_millis(200)));
    }
    match commit_loaded(args, &stored, Event::RetryDue, now).await {
        Ok(None) => AckKind::Nak(Some(Duration::from_secs(1))),
        Ok(Some(Committed::Written(..))) => {
            debug!(tenant_id = %t, message_id = %id, retry = retry_count, "retry due; published");
            AckKind::Ack
        }
        Ok(Some(Committed::Conflict)) => AckKind::Nak(Some(Duration::from_millis(100))),
        Ok(Some(Committed::Illegal(_) | Committed::Republished(_))) => AckKind::Ack,
        Err(e) => {
            warn!(tenant_id = %t, message_id = %id, error = %e, "retry failed; trying again");
            AckKind::Nak(Some(Duration::from_secs(1)))
        }
    }
}

pub(super) fn processing_ms(directory: &Directory, t: &TenantId, i: &vrsky_actors::IntegrationId) -> u64 {
    directory.route(t, i).map(|r| r.timeout_ms).unwrap_or(0)
}

/// Re-drives one overdue message, after checking it is still overdue: the index may hold
/// an older state than the bucket (another node moved the message on).
pub(super) async fn redrive(args: &SchedulerArgs, due: Due) {
    let Due {
        tenant: t,
        id,
        revision: tracked,
        orphaned,
    } = due;
    if !args.directory.holds(&t) {
        return redrive_elsewhere(args, t, id, tracked, orphaned).await;
    }
    let stored = match args.platform.load(&t, &id).await {
        Ok(Some(x)) => x,
        Ok(None) => return args.platform.forget(&t, &id),
        Err(e) => {
            args.platform.unpublished(&t, &id, tracked);
            return warn!(tenant_id = %t, message_id = %id, error = %e, "re-drive: state unavailable; will try again");
        }
    };
    let state = &stored.state;
    let grace = args.redrive_after.as_millis() as u64;
    let timeout = processing_ms(&args.directory, &state.tenant_id, &state.integration_id);
    let now = now_ms();
    // Left by a process that is gone and unchanged since: overdue at once (a retry at its
    // due time), since nobody else will move it on.
    let orphan_due = orphaned
        && stored.revision == tracked
        && (state.status != Status::Retry || state.next_attempt_at_ms.is_none_or(|at| at <= now));
    match deadline_of(state, grace, timeout) {
        _ if orphan_due => {}
        Some(due) if due <= now => {}
        // Finished, or moved on and not overdue yet: track what the bucket has.
        _ => return args.platform.observe(state, stored.revision),
    }
    if state.status == Status::Processing {
        // A worker that dead-letters writes the entry, then the state: if it died in
        // between, the entry is there and the state still says `processing`. Retrying would
        // deliver a message that is also in the dead-letter queue; finish its commit.
        match args.platform.dead_letter(&t, &id).await {
            Ok(Some(dl)) if dl.state.is_dead_letter_of(state) => {
                return roll_forward(args, &stored, dl.state).await;
            }
            Ok(_) => {}
            // Unreadable (a corrupt entry must not hold the message forever): re-drive as
            // usual; if the platform itself is down, that write fails too and is retried.
            Err(e) => warn!(tenant_id = %t, message_id = %id, error = %e, "re-drive: dead-letter entry unreadable"),
        }
    }
    let from = state.status;
    // An orphaned claim's worker is known to be gone: retried at once, not after backoff.
    let event = if orphan_due && from == Status::Processing {
        Event::WorkerGone
    } else {
        Event::Redrive
    };
    match commit_loaded(args, &stored, event, now).await {
        Ok(Some(Committed::Written(next, _))) => {
            debug!(tenant_id = %t, message_id = %id, from = from.as_str(), to = next.status.as_str(), "re-driven")
        }
        Ok(Some(Committed::Republished(revision))) => {
            if revision != tracked {
                // The index held another revision (a write whose outcome it never heard):
                // it tracks what was published now.
                args.platform.observe(state, revision);
            }
            debug!(tenant_id = %t, message_id = %id, revision, "still received; published again")
        }
        Ok(None) => {
            args.platform.unpublished(&t, &id, stored.revision);
            debug!(tenant_id = %t, message_id = %id, "tenant starting or unreachable; re-drive later")
        }
        Ok(Some(_)) => {}
        Err(e) => {
            args.platform.unpublished(&t, &id, stored.revision);
            warn!(tenant_id = %t, message_id = %id, error = %e, "re-drive failed; will try again")
        }
    }
}

/// A message of a tenant another node runs, which this node stored (a webhook it took,
/// `cluster/ingress.rs`). While it is `received`, the owner may never have heard of it (its
/// index holds what it wrote itself), so this node publishes it again on the tenant's
/// NATS when it is overdue; nothing is written, and the owner's claim keeps it processed
/// once. Anything else is the owner's to decide: it is forgotten here. So is what the
/// start-up scan found for another node's tenant: its owner scans again when it sees this
/// node start (`cluster/actor.rs`), and this node need not connect to every tenant's NATS.
/// If this node takes the tenant over, its take-over scan reports it again.
async fn redrive_elsewhere(args: &SchedulerArgs, t: TenantId, id: MessageId, tracked: u64, orphaned: bool) {
    let Some(remote) = args.directory.remote().filter(|_| !orphaned) else {
        return args.platform.forget(&t, &id);
    };
    let stored = match args.platform.load(&t, &id).await {
        Ok(Some(x)) if x.state.status == Status::Received => x,
        Ok(_) => return args.platform.forget(&t, &id),
        Err(e) => {
            args.platform.unpublished(&t, &id, tracked);
            return warn!(tenant_id = %t, message_id = %id, error = %e, "re-drive: state unavailable; will try again");
        }
    };
    let state = &stored.state;
    let now = now_ms();
    let grace = args.redrive_after.as_millis() as u64;
    let overdue = deadline_of(state, grace, 0).is_some_and(|d| d <= now);
    if !overdue {
        return args.platform.observe(state, stored.revision);
    }
    let (route, event) = match remote.route(&t, &state.integration_id).await {
        Ok(r) => (Some(r), Event::Redrive),
        // Deleted since (the store was read just now): nobody else tracks it, so it is
        // abandoned here, as its owner would (revision-checked, like every transition).
        Err(RouteError::NotFound(_)) => (
            None,
            Event::Abandon {
                reason: format!("integration {} no longer exists", state.integration_id),
            },
        ),
        Err(e) => {
            args.platform.unpublished(&t, &id, stored.revision);
            return debug!(tenant_id = %t, message_id = %id, error = ?e, "re-drive: no route here yet; will try again");
        }
    };
    let policy = route.as_ref().map(|r| r.retry).unwrap_or_default();
    let committer = Committer {
        store: &args.platform,
        publisher: route
            .as_deref()
            .map(|r| r as &dyn vrsky_actors::message::TenantPublisher),
        policy: &policy,
    };
    match committer
        .commit(state, stored.revision, &event, stored.record.as_ref(), now)
        .await
    {
        Ok(Committed::Republished(revision)) => {
            if revision != tracked {
                args.platform.observe(state, revision);
            }
            debug!(tenant_id = %t, message_id = %id, revision, "another node's tenant: still received; published again")
        }
        // Abandoned (deleted integration, or a record without its envelope), or moved on
        // meanwhile: written or refused by the revision check; tracked as usual.
        Ok(_) => {}
        Err(e) => {
            args.platform.unpublished(&t, &id, stored.revision);
            warn!(tenant_id = %t, message_id = %id, error = %e, "re-drive failed; will try again")
        }
    }
}

/// Writes the dead-letter state a crashed worker had already put in the queue, through
/// the `Committer` like every transition.
async fn roll_forward(args: &SchedulerArgs, stored: &Stored, dead: MessageState) {
    let (t, id) = (dead.tenant_id.clone(), dead.message_id.clone());
    let policy = RetryPolicy::default();
    let committer = Committer {
        store: &args.platform,
        publisher: None,
        policy: &policy,
    };
    let event = Event::FoundDeadLettered { dead: Box::new(dead) };
    match committer
        .commit(&stored.state, stored.revision, &event, stored.record.as_ref(), now_ms())
        .await
    {
        Ok(Committed::Written(..)) => {
            info!(tenant_id = %t, message_id = %id, "found in the dead-letter queue; state set to dead_letter")
        }
        // Moved on meanwhile: the index tracks what the bucket has now.
        Ok(Committed::Conflict | Committed::Illegal(_) | Committed::Republished(_)) => {}
        Err(e) => warn!(tenant_id = %t, message_id = %id, error = %e, "re-drive failed; will try again"),
    }
}
