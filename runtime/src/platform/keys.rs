//! The platform's keys: the wire MAC key every node signs and checks tenant-NATS
//! messages with (see `vrsky_actors::wire`). Made once, by whichever node starts first
//! (a create-only write; a node that loses the race reads the winner's), and kept in the
//! `vrsky_keys` bucket of the platform JetStream, which only the runtime reaches.

use async_nats::jetstream::{self, kv, stream};
use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use ring::rand::SecureRandom;

use vrsky_actors::subjects::KEYS_BUCKET;
use vrsky_actors::wire::WireKey;

use super::{PlatformError, req};

const WIRE_KEY: &str = "wire_mac";

/// The platform's wire key, made on first use.
pub(super) async fn wire_key(js: &jetstream::Context, replicas: usize) -> Result<WireKey, PlatformError> {
    let bucket = match js.get_key_value(KEYS_BUCKET).await {
        Ok(b) => b,
        Err(_) => js
            .create_key_value(kv::Config {
                bucket: KEYS_BUCKET.into(),
                description: "VRSky runtime keys".into(),
                history: 1,
                storage: stream::StorageType::File,
                num_replicas: replicas,
                ..Default::default()
            })
            .await
            .map_err(|e| PlatformError::config(format!("creating bucket {KEYS_BUCKET}: {e}")))?,
    };
    let decode = |v: &[u8]| {
        STANDARD
            .decode(v)
            .ok()
            .filter(|k| k.len() == 32)
            .map(|k| WireKey::new(&k))
            .ok_or_else(|| PlatformError::config(format!("{KEYS_BUCKET}/{WIRE_KEY} is not a 32-byte key")))
    };
    if let Some(v) = bucket.get(WIRE_KEY).await.map_err(req)? {
        return decode(&v);
    }
    let mut k = [0u8; 32];
    ring::rand::SystemRandom::new()
        .fill(&mut k)
        .map_err(|_| PlatformError::config("the system's random source failed"))?;
    match bucket.create(WIRE_KEY, STANDARD.encode(k).into()).await {
        Ok(_) => Ok(WireKey::new(&k)),
        // Another node made it first: use that one.
        Err(_) => match bucket.get(WIRE_KEY).await.map_err(req)? {
            Some(v) => decode(&v),
            None => Err(PlatformError::request(format!(
                "{KEYS_BUCKET}/{WIRE_KEY} could not be made"
            ))),
        },
    }
}
