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
    /// Left for the next pass: its message could not be read, or the delete failed.
    pub undecided: usize,
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

/// Staging files (`{key}#{n}`) of the filesystem store older than `grace`: what a node
/// killed in the middle of writing an object leaves, which listings do not show.
fn sweep_staging(dir: &std::path::Path, grace: Duration) -> usize {
    let Ok(entries) = std::fs::read_dir(dir) else { return 0 };
    let mut removed = 0;
    for e in entries.flatten() {
        let p = e.path();
        let Ok(meta) = e.metadata() else { continue };
        if meta.is_dir() {
            removed += sweep_staging(&p, grace);
        } else if p.file_name().and_then(|n| n.to_str()).is_some_and(|n| n.contains('#'))
            && meta
                .modified()
                .ok()
                .and_then(|m| m.elapsed().ok())
                .is_some_and(|age| age > grace)
            && std::fs::remove_file(&p).is_ok()
        {
            info!(path = %p.display(), "stale staging file of the object store removed");
            removed += 1;
        }
    }
    removed
}

/// One pass over the store: removes objects older than `grace` that nothing holds.
pub async fn sweep_once(objects: &Objects, platform: &Platform, grace: Duration) -> Result<SweepReport, String> {
    let cutoff = chrono_cutoff(grace);
    let staged = match objects.fs_root.clone() {
        Some(dir) => tokio::task::spawn_blocking(move || sweep_staging(&dir, grace))
            .await
            .unwrap_or(0),
        None => 0,
    };
    let mut listing = objects.store().list(Some(&keys::root()));
    let mut report = SweepReport {
        removed: staged,
        ..SweepReport::default()
    };
    while let Some(meta) = listing.next().await {
        let meta = meta.map_err(|e| e.to_string())?;
        report.seen += 1;
        if meta.last_modified.timestamp_millis() > cutoff {
            continue;
        }
        let key = meta.location.to_string();
        // One object that cannot be decided (its state unreadable) is left for the next
        // pass; the others are still swept.
        match held(platform, &key).await {
            Ok(true) => continue,
            Ok(false) => {}
            Err(error) => {
                report.undecided += 1;
                warn!(key, %error, "payload object not swept: its message could not be read");
                continue;
            }
        }
        match objects.store().delete(&Path::from(key.as_str())).await {
            Ok(()) | Err(object_store::Error::NotFound { .. }) => {
                report.removed += 1;
                info!(key, "orphaned payload object removed");
            }
            Err(error) => {
                report.undecided += 1;
                warn!(key, %error, "orphaned payload object not deleted");
            }
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
    fn stale_staging_files_are_swept_and_objects_are_not() {
        let dir = tempfile::tempdir().unwrap();
        let sub = dir.path().join("payloads/t/i/m");
        std::fs::create_dir_all(&sub).unwrap();
        std::fs::write(sub.join("u"), b"object").unwrap();
        std::fs::write(sub.join("u#3"), b"half written").unwrap();
        assert_eq!(sweep_staging(dir.path(), Duration::from_secs(3600)), 0, "too young");
        std::thread::sleep(Duration::from_millis(20));
        assert_eq!(sweep_staging(dir.path(), Duration::from_millis(1)), 1);
        assert!(sub.join("u").exists() && !sub.join("u#3").exists());
    }

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
