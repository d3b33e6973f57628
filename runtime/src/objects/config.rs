//! The object store and claim-check settings (`[object_store]`, `[claim_check]`).

use std::path::PathBuf;

use serde::{Deserialize, Serialize};

/// Which object store holds claim-checked payloads.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum StoreKind {
    /// No store: bodies above `webhook.body_bytes_max` are refused.
    None,
    /// A directory on this node (the embedded default).
    Fs,
    /// An S3-compatible service (AWS S3, MinIO, ...).
    S3,
}

/// `[object_store]`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ObjectStoreConfig {
    /// `fs` (default), `s3` or `none`.
    pub kind: StoreKind,
    /// `fs`: the directory; default `<data_dir>/objects`.
    pub path: Option<PathBuf>,
    /// `s3`: the service URL, e.g. `http://127.0.0.1:9000` (default: AWS, or
    /// `AWS_ENDPOINT_URL`).
    pub endpoint: Option<String>,
    /// `s3`: the region (default `AWS_REGION`, else `us-east-1`).
    pub region: Option<String>,
    /// `s3`: the bucket, which must exist.
    pub bucket: Option<String>,
    /// `s3`: path-style requests (`endpoint/bucket/key`), as MinIO wants; off:
    /// virtual-hosted style (`bucket.endpoint/key`).
    pub path_style: bool,
    /// `s3`: the access key id (default `AWS_ACCESS_KEY_ID`).
    pub access_key_id: Option<String>,
    /// `s3`: the secret access key (default `AWS_SECRET_ACCESS_KEY`).
    pub secret_access_key: Option<String>,
}

impl Default for ObjectStoreConfig {
    fn default() -> Self {
        ObjectStoreConfig {
            kind: StoreKind::Fs,
            path: None,
            endpoint: None,
            region: None,
            bucket: None,
            path_style: true,
            access_key_id: None,
            secret_access_key: None,
        }
    }
}

/// `[claim_check]`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ClaimCheckConfig {
    /// Bodies larger than this go to the object store; smaller ones travel in the
    /// message.
    pub threshold_bytes: u64,
    /// Largest accepted body when a store is configured; larger ones get 413 before the
    /// body is read.
    pub body_bytes_max: u64,
    /// Most bytes of a stored payload that filters and converters load; a larger one
    /// fails permanently (dead letter) on an integration that has them.
    pub pipeline_read_bytes_max: u64,
    /// How long a presigned GET URL is valid.
    pub presign_ttl_s: u64,
    /// The base of the runtime's own presigned URLs (`fs` store), as destinations reach
    /// this node; default `http://<http_addr>`.
    pub public_url: Option<String>,
    /// How often the orphan sweeper runs.
    pub sweep_interval_s: u64,
    /// How old an object without a message must be before the sweeper removes it.
    pub orphan_grace_s: u64,
    /// Bodies streaming into the store at once on this node (each holds up to 15 MiB);
    /// past it a large webhook gets 503 with `Retry-After`.
    pub uploads_in_flight_max: usize,
}

impl Default for ClaimCheckConfig {
    fn default() -> Self {
        ClaimCheckConfig {
            threshold_bytes: 256 * 1024,
            body_bytes_max: 256 * 1024 * 1024,
            pipeline_read_bytes_max: 8 * 1024 * 1024,
            presign_ttl_s: 3600,
            public_url: None,
            sweep_interval_s: 300,
            orphan_grace_s: 3600,
            uploads_in_flight_max: 16,
        }
    }
}

/// Upper bound of `claim_check.threshold_bytes`: an inline body travels in a NATS
/// message (8 MiB `max_payload` on tenant servers).
pub const THRESHOLD_MAX: u64 = 4 * 1024 * 1024;

impl ClaimCheckConfig {
    /// Checks ranges serde cannot: the field at fault and why.
    pub fn check(&self, store: &ObjectStoreConfig) -> Result<(), (&'static str, String)> {
        if self.threshold_bytes == 0 || self.threshold_bytes > THRESHOLD_MAX {
            return Err(("claim_check.threshold_bytes", format!("must be 1 to {THRESHOLD_MAX}")));
        }
        if self.body_bytes_max < self.threshold_bytes {
            return Err((
                "claim_check.body_bytes_max",
                "must be at least claim_check.threshold_bytes".into(),
            ));
        }
        if self.pipeline_read_bytes_max == 0 {
            return Err(("claim_check.pipeline_read_bytes_max", "must be at least 1".into()));
        }
        if self.presign_ttl_s == 0 || self.presign_ttl_s > 7 * 86_400 {
            return Err((
                "claim_check.presign_ttl_s",
                "must be 1 to 604800 (S3 presigned URLs last 7 days at most)".into(),
            ));
        }
        if self.uploads_in_flight_max == 0 || self.uploads_in_flight_max > 1024 {
            return Err(("claim_check.uploads_in_flight_max", "must be 1 to 1024".into()));
        }
        if self.sweep_interval_s == 0 {
            return Err(("claim_check.sweep_interval_s", "must be at least 1".into()));
        }
        if let Some(u) = &self.public_url
            && !url::Url::parse(u).is_ok_and(|u| matches!(u.scheme(), "http" | "https"))
        {
            return Err(("claim_check.public_url", format!("{u:?} is not an http(s) URL")));
        }
        if store.kind == StoreKind::S3 && store.bucket.as_deref().is_none_or(str::is_empty) {
            return Err((
                "object_store.bucket",
                "is required with object_store.kind = \"s3\"".into(),
            ));
        }
        Ok(())
    }
}
