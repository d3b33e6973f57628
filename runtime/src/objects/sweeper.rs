//! The orphan sweeper: a supervised actor that, every `claim_check.sweep_interval_s`,
//! removes payload objects older than `claim_check.orphan_grace_s` that no message and no
//! dead letter holds any more. Orphans come from a crash between the object write and the
//! state write, from dead letters that expired, and from deletes that failed.
//!
//! An object is held when the message's stored record or its dead letter names its key.
//! The checks run dead letter, state, dead letter: a message moving between the two
//! (dead-lettered: the entry is written before the state; replayed: the state before the
//! entry is removed) is seen holding it by one of the three reads.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use bytes::Bytes;
use futures::StreamExt;
use object_store::ObjectStoreExt;
use object_store::path::Path;
use ractor::{Actor, ActorProcessingErr, ActorRef};
use tracing::{info, warn};
use vrsky_actors::message::{MessageStore, payload_ref_of};

use super::{Objects, keys};
use crate::platform::Platform;

/// What one sweep did.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct SweepReport {
    /// Payload objects looked at.
    pub seen: usize,
    /// Removed: old enough, and held by nothing.
    pub removed: usize,
}

/// Objects removed by the sweeper since start (for `/metrics`).
#[derive(Debug, Default)]
pub struct SweepCounters {
    /// Orphans removed.
    pub removed: AtomicU64,
}

fn holds(record: Option<&Bytes>, key: &str) -> bool {
    record.and_then(payload_ref_of).is_some_and(|r| r.key == key)
}

async fn held(platform: &Platform, key: &str) -> Result<bool, String> {
    let Some((t, _, m)) = keys::parse(key) else {
        // Not one of ours: never touched.
        return Ok(true);
    };
    let dead_letter = |platform: &Platform| {
        let (t, m) = (t.clone(), m.clone());
        let platform = platform.clone();
        async move {
            platform
                .dead_letter(&t, &m)
                .await
                .map(|d| d.is_some_and(|d| holds(Some(&d.record), key)))
                .map_err(|e| e.to_string())
        }
    };
    if dead_letter(platform).await? {
        return Ok(true);
    }
    let stored = platform.load(&t, &m).await.map_err(|e| e.to_string())?;
    if stored.is_some_and(|s| holds(s.record.as_ref(), key)) {
        return Ok(true);
    }
    dead_letter(platform).await
}

/// One pass over the store: removes objects older than `grace` that nothing holds.
pub async fn sweep_once(objects: &Objects, platform: &Platform, grace: Duration) -> Result<SweepReport, String> {
    let cutoff = chrono_cutoff(grace);
    let mut listing = objects.store().list(Some(&keys::root()));
    let mut report = SweepReport::default();
    while let Some(meta) = listing.next().await {
        let meta = meta.map_err(|e| e.to_string())?;
        report.seen += 1;
        if meta.last_modified.timestamp_millis() > cutoff {
            continue;
        }
        let key = meta.location.to_string();
        if held(platform, &key).await? {
            continue;
        }
        match objects.store().delete(&Path::from(key.as_str())).await {
            Ok(()) | Err(object_store::Error::NotFound { .. }) => {
                report.removed += 1;
                info!(key, "orphaned payload object removed");
            }
            Err(e) => return Err(e.to_string()),
        }
    }
    Ok(report)
}

fn chrono_cutoff(grace: Duration) -> i64 {
    let now = i64::try_from(vrsky_actors::now_ms()).unwrap_or(i64::MAX);
    now.saturating_sub(i64::try_from(grace.as_millis()).unwrap_or(i64::MAX))
}

/// The sweeper actor.
#[derive(Debug, Default, Clone, Copy)]
pub struct Sweeper;

/// What the sweeper is started with.
#[derive(Clone)]
pub struct SweeperArgs {
    /// The store.
    pub objects: Arc<Objects>,
    /// Message state and dead letters.
    pub platform: Platform,
    /// Counters it adds to.
    pub counters: Arc<SweepCounters>,
}

/// The sweeper's one message: sweep now.
#[derive(Debug)]
pub struct Sweep;

impl Actor for Sweeper {
    type Msg = Sweep;
    type State = (SweeperArgs, ractor::concurrency::JoinHandle<()>);
    type Arguments = SweeperArgs;

    async fn pre_start(&self, myself: ActorRef<Sweep>, args: SweeperArgs) -> Result<Self::State, ActorProcessingErr> {
        let every = Duration::from_secs(args.objects.settings.sweep_interval_s);
        let timer = myself.send_interval(every, || Sweep);
        Ok((args, timer))
    }

    async fn post_stop(&self, _: ActorRef<Sweep>, state: &mut Self::State) -> Result<(), ActorProcessingErr> {
        state.1.abort();
        Ok(())
    }

    async fn handle(&self, _: ActorRef<Sweep>, _: Sweep, state: &mut Self::State) -> Result<(), ActorProcessingErr> {
        let args = &state.0;
        let grace = Duration::from_secs(args.objects.settings.orphan_grace_s);
        match sweep_once(&args.objects, &args.platform, grace).await {
            Ok(r) => {
                args.counters.removed.fetch_add(r.removed as u64, Ordering::Relaxed);
            }
            // The platform or the store is down: the next tick tries again.
            Err(error) => warn!(%error, "orphan sweep failed"),
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use vrsky_actors::message::encode_envelope;

    #[test]
    fn an_object_is_held_only_by_a_record_naming_its_key() {
        let mut env = vrsky_actors::message::empty_envelope(&vrsky_actors::message::MessageState::received(
            vrsky_actors::MessageId::generate(),
            vrsky_actors::TenantId::new("t").unwrap(),
            vrsky_actors::IntegrationId::new("i").unwrap(),
            1,
        ));
        assert!(!holds(None, "k"));
        assert!(!holds(Some(&encode_envelope(&env).unwrap()), "k"));
        env.payload_ref = Some(vrsky_actors::PayloadRef {
            key: "k".into(),
            size: 1,
            sha256: String::new(),
        });
        let record = encode_envelope(&env).unwrap();
        assert!(holds(Some(&record), "k"));
        assert!(!holds(Some(&record), "k2"), "another upload of the same message");
    }
}
