//! Creating the bucket and streams, reading their configuration back, and refusing to
//! start when the server dropped a setting.

use std::sync::Arc;
use std::sync::atomic::AtomicBool;
use std::time::Duration;

use async_nats::jetstream::{self, kv, stream};

use vrsky_actors::subjects;

use super::{
    CommitLimits, DEAD_LETTER_STREAM, Platform, PlatformError, PlatformSettings, RETRY_STREAM, STATE_BUCKET, req,
};

/// Compares what we asked for with what the server kept.
fn check<T: PartialEq + std::fmt::Debug>(what: &str, field: &str, want: &T, got: &T) -> Result<(), PlatformError> {
    if want == got {
        Ok(())
    } else {
        Err(PlatformError::config(format!(
            "{what}: the server kept {field} = {got:?} instead of {want:?} (is it older than 2.10, or was the {what} changed by hand?)"
        )))
    }
}

async fn ensure_stream(js: &jetstream::Context, want: stream::Config) -> Result<stream::Stream, PlatformError> {
    let name = want.name.clone();
    match js.get_stream(&name).await {
        Ok(mut s) => {
            let have = s.info().await.map_err(req)?.config.clone();
            if have.max_age != want.max_age
                || have.subjects != want.subjects
                || have.max_messages_per_subject != want.max_messages_per_subject
            {
                js.update_stream(want.clone())
                    .await
                    .map_err(|e| PlatformError::config(format!("updating stream {name}: {e}")))?;
            }
        }
        Err(_) => {
            js.create_stream(want.clone())
                .await
                .map_err(|e| PlatformError::config(format!("creating stream {name}: {e}")))?;
        }
    }
    let mut s = js.get_stream(&name).await.map_err(req)?;
    let got = s.info().await.map_err(req)?.config.clone();
    let what = format!("stream {name}");
    check(&what, "subjects", &want.subjects, &got.subjects)?;
    check(&what, "max_age", &want.max_age, &got.max_age)?;
    check(&what, "retention", &want.retention, &got.retention)?;
    check(&what, "storage", &want.storage, &got.storage)?;
    // The server reports "unlimited" as -1 whether it was asked for 0 or -1.
    let unlimited = |v: i64| if v <= 0 { -1 } else { v };
    check(
        &what,
        "max_messages_per_subject",
        &unlimited(want.max_messages_per_subject),
        &unlimited(got.max_messages_per_subject),
    )?;
    check(&what, "allow_direct", &want.allow_direct, &got.allow_direct)?;
    check(&what, "num_replicas", &want.num_replicas, &got.num_replicas)?;
    Ok(s)
}

/// Allows atomic batches on the bucket's stream (nats-server 2.12+): whether the server
/// kept it. Through the API itself, since the client's typed configuration has the field
/// only behind a feature this build does not enable; every typed update above is made
/// first, as it would drop the field.
async fn allow_atomic(js: &jetstream::Context) -> Result<bool, PlatformError> {
    let api = |verb: &str| format!("$JS.API.STREAM.{verb}.{}", subjects::state_stream());
    let client = js.client();
    let info = client.request(api("INFO"), Default::default()).await.map_err(req)?;
    let mut info: serde_json::Value = serde_json::from_slice(&info.payload).map_err(req)?;
    let mut config = info["config"].take();
    if config["allow_atomic"] == true {
        return Ok(true);
    }
    config["allow_atomic"] = true.into();
    let body = serde_json::to_vec(&config).map_err(req)?;
    let answer = client.request(api("UPDATE"), body.into()).await.map_err(req)?;
    let answer: serde_json::Value = serde_json::from_slice(&answer.payload).map_err(req)?;
    Ok(answer["config"]["allow_atomic"] == true)
}

impl Platform {
    /// Creates (or updates) the bucket and streams and verifies their configuration.
    pub async fn open(client: async_nats::Client, mut settings: PlatformSettings) -> Result<Platform, PlatformError> {
        let js = jetstream::new(client);
        let kv_want = kv::Config {
            bucket: STATE_BUCKET.into(),
            description: "VRSky message state: {tenant}.{message_id} -> state line, then the envelope until finished"
                .into(),
            history: 1,
            storage: stream::StorageType::File,
            num_replicas: settings.replicas,
            ..Default::default()
        };
        let kv = match js.get_key_value(STATE_BUCKET).await {
            Ok(kv) => kv,
            Err(_) => js
                .create_key_value(kv_want.clone())
                .await
                .map_err(|e| PlatformError::config(format!("creating bucket {STATE_BUCKET}: {e}")))?,
        };
        // Finished states expire by their own `Nats-TTL`; unfinished ones never do, so a
        // node (or the platform) down for longer than the TTL loses no accepted message.
        // The stream therefore has no max age and allows per-message TTLs (2.11.2+; once
        // allowed it cannot be disallowed, and every later update must say so again).
        let mut kv_stream = js.get_stream(subjects::state_stream()).await.map_err(req)?;
        let mut have = kv_stream.info().await.map_err(req)?.config.clone();
        let migrating = !have.allow_message_ttl;
        if migrating || have.max_age != Duration::ZERO {
            have.allow_message_ttl = true;
            have.max_age = Duration::ZERO;
            js.update_stream(have).await.map_err(|e| {
                PlatformError::config(format!(
                    "bucket {STATE_BUCKET}: allowing per-message TTLs: {e} (nats-server 2.11.2 or newer is needed)"
                ))
            })?;
        }
        let info = kv_stream.info().await.map_err(req)?;
        let (got, opened_at_seq) = (info.config.clone(), info.state.last_sequence);
        let what = format!("bucket {STATE_BUCKET}");
        check(&what, "allow_msg_ttl", &true, &got.allow_message_ttl).map_err(|_| {
            PlatformError::config(format!(
                "{what}: the server did not keep allow_msg_ttl, so finished states could not expire on their own \
                 while unfinished ones are kept: nats-server 2.11.2 or newer is needed"
            ))
        })?;
        check(&what, "max_age", &Duration::ZERO, &got.max_age)?;
        check(&what, "history", &1, &got.max_messages_per_subject)?;
        check(&what, "storage", &stream::StorageType::File, &got.storage)?;
        if settings.commit.enabled() && !allow_atomic(&js).await? {
            tracing::warn!(
                "bucket {STATE_BUCKET}: the server does not keep allow_atomic (nats-server 2.12 or newer is needed): \
                 group commit is off, every state write goes alone"
            );
            settings.commit = CommitLimits::OFF;
        }

        let retry = ensure_stream(
            &js,
            stream::Config {
                name: RETRY_STREAM.into(),
                description: Some("VRSky scheduled retries (work queue)".into()),
                subjects: vec![subjects::RETRY_QUEUE_SUBJECTS.into()],
                retention: stream::RetentionPolicy::WorkQueue,
                max_age: settings.retry_queue_max_age,
                storage: stream::StorageType::File,
                num_replicas: settings.replicas,
                ..Default::default()
            },
        )
        .await?;
        let dlq = ensure_stream(
            &js,
            stream::Config {
                name: DEAD_LETTER_STREAM.into(),
                description: Some("VRSky dead letters: vrsky.dlq.{tenant}.{message_id}".into()),
                subjects: vec![subjects::DEAD_LETTER_SUBJECTS.into()],
                retention: stream::RetentionPolicy::Limits,
                max_age: settings.dead_letter_max_age,
                max_messages_per_subject: 1,
                allow_direct: true,
                storage: stream::StorageType::File,
                num_replicas: settings.replicas,
                ..Default::default()
            },
        )
        .await?;
        let wire_key = super::keys::wire_key(&js, settings.replicas).await?;
        Ok(Platform {
            commits: super::batch::GroupCommit::start(js.clone(), settings.commit),
            claim_fence: Arc::default(),
            wire_key,
            js,
            kv,
            retry,
            dlq,
            settings,
            observer: Arc::default(),
            migrate_ttl: Arc::new(AtomicBool::new(migrating)),
            opened_at_seq,
        })
    }
}
