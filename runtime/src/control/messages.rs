//! Message and dead-letter requests: reads of the platform state scoped by the tenant in
//! the path, and replays, which are state transitions written through the `Committer`.

use tracing::{info, warn};

use opentelemetry::KeyValue;
use opentelemetry::trace::SpanKind;
use vrsky_actors::message::{
    Committed, Committer, Event, MessageState, MessageStore, Status, Stored, payload_ref_of, trace_context_of,
};
use vrsky_actors::telemetry::{self, Hop};
use vrsky_actors::{IntegrationId, MessageId, Payloads, TenantId, now_ms};

use super::{Control, ControlError};
use crate::platform::{DeadLetter, DeadLetterSummary};

/// Which dead letters a bulk replay takes.
#[derive(Debug, Clone, Default, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ReplayFilter {
    /// Only this integration's.
    #[serde(default)]
    pub integration_id: Option<IntegrationId>,
    /// Only those dead-lettered at or after this time (ms since the Unix epoch).
    #[serde(default)]
    pub since_ms: Option<u64>,
    /// Only those dead-lettered before this time (ms since the Unix epoch).
    #[serde(default)]
    pub until_ms: Option<u64>,
    /// Count the matches and replay nothing.
    #[serde(default)]
    pub dry_run: bool,
}

/// Upper bound on one bulk replay; call again for more.
pub const BULK_REPLAY_MAX: usize = 10_000;

/// Result of a bulk replay.
#[derive(Debug, Clone, serde::Serialize)]
pub struct ReplayReport {
    /// Dead letters matching the filter.
    pub matched: usize,
    /// Replayed now (0 on a dry run).
    pub replayed: usize,
    /// Replays that failed, with why.
    pub failed: Vec<(MessageId, String)>,
    /// Whether more matched than one call replays.
    pub truncated: bool,
    /// The `until_ms` the filter was read with: the one asked for, or this node's clock
    /// when none was (a caller replaying in several calls passes it on, so what fails
    /// again during the run is not replayed twice).
    pub until_ms: u64,
}

impl Control {
    fn known(&self, t: &TenantId) -> Result<(), ControlError> {
        match self.directory().get(t) {
            Some(_) => Ok(()),
            None => Err(ControlError::not_found(format!("tenant {t} not found"))),
        }
    }

    /// A message's state. After the state TTL, a dead letter still answers from the
    /// dead-letter queue.
    pub async fn message(&self, t: &TenantId, id: &MessageId) -> Result<MessageState, ControlError> {
        self.known(t)?;
        if let Some(stored) = self.platform().load(t, id).await? {
            return Ok(stored.state);
        }
        match self.platform().dead_letter(t, id).await? {
            Some(d) => Ok(d.state),
            None => Err(ControlError::not_found(format!("message {id} not found in tenant {t}"))),
        }
    }

    /// Recent messages of an integration, newest first (see
    /// [`Platform::recent_messages`](crate::platform::Platform::recent_messages)).
    pub async fn recent_messages(
        &self,
        t: &TenantId,
        i: &vrsky_actors::IntegrationId,
        status: Option<vrsky_actors::message::Status>,
        limit: usize,
        before: Option<crate::platform::MessageCursor>,
    ) -> Result<crate::platform::MessagePage, ControlError> {
        self.known(t)?;
        self.route(t, i)?;
        Ok(self.platform().recent_messages(t, i, status, limit, before).await?)
    }

    /// A page of a tenant's dead letters, newest first.
    pub async fn dead_letters(
        &self,
        t: &TenantId,
        limit: usize,
        cursor: Option<u64>,
    ) -> Result<(Vec<DeadLetterSummary>, Option<u64>), ControlError> {
        self.known(t)?;
        Ok(self.platform().dead_letters(t, None, limit, cursor).await?)
    }

    /// One dead letter with its payload.
    pub async fn dead_letter(&self, t: &TenantId, id: &MessageId) -> Result<DeadLetter, ControlError> {
        self.known(t)?;
        self.platform()
            .dead_letter(t, id)
            .await?
            .ok_or_else(|| ControlError::not_found(format!("dead letter {id} not found in tenant {t}")))
    }

    /// Deletes a dead letter, and its claim-checked payload unless the message holds it
    /// again (a replay that raced the delete).
    pub async fn delete_dead_letter(&self, t: &TenantId, id: &MessageId) -> Result<(), ControlError> {
        self.known(t)?;
        let gone = || ControlError::not_found(format!("dead letter {id} not found in tenant {t}"));
        let d = self.platform().dead_letter(t, id).await?.ok_or_else(gone)?;
        // Exactly the entry read: its payload is the one released below.
        if !self.platform().delete_dead_letter_at(d.sequence).await? {
            return Err(gone());
        }
        if let (Some(r), Some(objects)) = (payload_ref_of(&d.record), self.objects()) {
            let held = match self.platform().load(t, id).await {
                Ok(s) => s.is_some_and(|s| {
                    s.record
                        .as_ref()
                        .and_then(payload_ref_of)
                        .is_some_and(|p| p.key == r.key)
                }),
                // Unknown: keep it; the sweeper decides later.
                Err(_) => true,
            };
            if !held && let Err(e) = objects.delete(&r.key).await {
                warn!(tenant_id = %t, message_id = %id, error = %e, "payload object not deleted; the sweeper will");
            }
        }
        Ok(())
    }

    /// Replays a dead letter: same message id, attempts start over, delivered by the
    /// integration that now has its id (also when that is a newer one of the same id).
    pub async fn replay(&self, t: &TenantId, id: &MessageId) -> Result<(), ControlError> {
        let d = self.dead_letter(t, id).await?;
        let integration = d.state.integration_id.clone();
        let route = self.directory().route(t, &integration).map_err(|e| match e {
            super::RouteError::NotFound(_) => {
                ControlError::conflict(format!("integration {integration} of message {id} no longer exists"))
            }
            starting => starting.into(),
        })?;
        let changed = || ControlError::conflict(format!("message {id} changed meanwhile; try again"));
        // The dead letter has the envelope: a replayed message is stored with it again.
        let committer = Committer {
            store: self.platform(),
            publisher: Some(&**self.directory()),
            policy: &route.retry,
        };
        match self.platform().load(t, id).await? {
            Some(Stored {
                state, revision: rev, ..
            }) => {
                if state.status != Status::DeadLetter {
                    return Err(ControlError::conflict(format!(
                        "message {id} is {}, not dead-lettered",
                        state.status.as_str()
                    )));
                }
                let replay = Event::Replay {
                    incarnation: route.incarnation,
                };
                match committer
                    .commit(&state, rev, &replay, Some(&d.record), now_ms())
                    .await?
                {
                    Committed::Written(..) => {}
                    Committed::Conflict | Committed::Illegal(_) | Committed::Republished(_) => return Err(changed()),
                }
            }
            None => {
                let mut fresh = MessageState::received(id.clone(), t.clone(), integration, d.state.created_at_ms);
                fresh.updated_at_ms = now_ms();
                fresh.incarnation = route.incarnation;
                let (stored, rev) = self.platform().recreate(&fresh, &d.record).await?.ok_or_else(changed)?;
                // The replay of an expired state: its own span, in the original trace.
                let ids = (t, &fresh.integration_id, id);
                let replay = telemetry::start(
                    telemetry::span::REPLAY,
                    SpanKind::Internal,
                    &telemetry::context_from(trace_context_of(&d.record).as_deref()),
                    ids,
                    [],
                );
                let hop = {
                    let _in_replay = replay.clone().attach();
                    Hop::publish(ids)
                };
                let published = route.publish(stored, rev, hop).await;
                let outcome = if published.is_ok() {
                    "received"
                } else {
                    "publish_failed"
                };
                telemetry::end(&replay, [KeyValue::new(telemetry::OUTCOME, outcome)]);
                if let Err(e) = published {
                    warn!(message_id = %id, error = %e, "replay publish failed; re-drive will retry");
                }
            }
        }
        // Exactly the entry replayed: a new one (the replay failed again at once) stays.
        self.platform().delete_dead_letter_at(d.sequence).await?;
        info!(tenant_id = %t, message_id = %id, "dead letter replayed");
        Ok(())
    }

    /// Replays (or, with `dry_run`, counts) the dead letters matching a filter.
    pub async fn replay_matching(&self, t: &TenantId, f: &ReplayFilter) -> Result<ReplayReport, ControlError> {
        self.known(t)?;
        let until = f.until_ms.unwrap_or_else(vrsky_actors::now_ms);
        let all = self.platform().scan_dead_letters(t).await?;
        let matching: Vec<_> = all
            .into_iter()
            .filter(|d| f.integration_id.as_ref().is_none_or(|i| d.integration_id == i.as_str()))
            .filter(|d| f.since_ms.is_none_or(|s| d.dead_at_ms >= s))
            .filter(|d| d.dead_at_ms < until)
            .collect();
        let mut report = ReplayReport {
            matched: matching.len(),
            replayed: 0,
            failed: Vec::new(),
            truncated: matching.len() > BULK_REPLAY_MAX,
            until_ms: until,
        };
        if f.dry_run {
            return Ok(report);
        }
        for d in matching.into_iter().take(BULK_REPLAY_MAX) {
            match self.replay(t, &d.message_id).await {
                Ok(()) => report.replayed += 1,
                Err(e) => report.failed.push((d.message_id, e.to_string())),
            }
        }
        Ok(report)
    }
}
