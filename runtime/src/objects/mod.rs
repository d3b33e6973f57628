//! Claim check: the object store that holds payloads above `claim_check.threshold_bytes`
//! (S3-compatible, or a local directory), the streams in and out of it, presigned URLs,
//! and the sweeper of objects whose message is gone.
//!
//! One object per stored body, keyed by [`keys`]. Its life: written by ingress before the
//! `received` state (so a crash in between leaves an orphan, never a message without its
//! body); released by the worker when the message completes or is filtered; kept while a
//! dead letter holds it (a replay finds it again) and released when the dead letter is
//! deleted; removed with its tenant; and anything else left (an expired dead letter, a
//! failed delete) removed by the [`sweeper`] after `claim_check.orphan_grace_s`.

pub mod config;
pub mod keys;
pub mod presign;
pub mod sweeper;
pub mod upload;

use std::net::SocketAddr;
use std::path::Path as FsPath;
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use bytes::Bytes;
use futures::StreamExt;
use futures::future::BoxFuture;
use futures::stream::BoxStream;
use object_store::aws::{AmazonS3, AmazonS3Builder};
use object_store::local::LocalFileSystem;
use object_store::path::Path;
use object_store::signer::Signer;
use object_store::{ObjectStore, ObjectStoreExt};
use vrsky_actors::payload::sha256_hex;
use vrsky_actors::{PayloadError, PayloadRef, Payloads, TenantId};

pub use config::{ClaimCheckConfig, ObjectStoreConfig, StoreKind};
use presign::UrlSigner;

/// The node's object store, with the claim-check settings.
pub struct Objects {
    store: Arc<dyn ObjectStore>,
    /// Set for S3: it presigns its own URLs.
    s3: Option<Arc<AmazonS3>>,
    /// The runtime's own URLs (fs): set once the HTTP address is known.
    urls: OnceLock<UrlSigner>,
    url_key: ring::hmac::Key,
    /// The claim-check settings.
    pub settings: ClaimCheckConfig,
    /// What the store is, for logs: `fs:<dir>` or `s3:<bucket>@<endpoint>`.
    pub description: String,
    /// The orphan sweeper's counters.
    pub sweep_counters: Arc<sweeper::SweepCounters>,
    /// Claim-check counters of this node.
    pub counters: ClaimCheckCounters,
    /// Uploads in flight (`claim_check.uploads_in_flight_max`).
    pub uploads: Arc<tokio::sync::Semaphore>,
    /// The directory of a filesystem store (its staging files are swept too).
    pub fs_root: Option<std::path::PathBuf>,
}

/// What the claim check did on this node (for `/metrics`).
#[derive(Debug, Default)]
pub struct ClaimCheckCounters {
    /// Bodies stored in the object store at ingress.
    pub stored: std::sync::atomic::AtomicU64,
    /// Their bytes.
    pub stored_bytes: std::sync::atomic::AtomicU64,
    /// Bodies refused at ingress because the store failed.
    pub store_failures: std::sync::atomic::AtomicU64,
}

impl std::fmt::Debug for Objects {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Objects").field("store", &self.description).finish()
    }
}

fn store_err(key: &str, e: object_store::Error) -> PayloadError {
    match e {
        object_store::Error::NotFound { .. } => PayloadError::Missing(key.to_owned()),
        e => PayloadError::Unavailable(e.to_string()),
    }
}

impl Objects {
    /// The store the configuration names; `None` for `kind = "none"`. Nothing is
    /// contacted yet: an unreachable S3 shows at the first upload (503).
    pub fn open(
        store: &ObjectStoreConfig,
        settings: &ClaimCheckConfig,
        data_dir: &FsPath,
        url_key: ring::hmac::Key,
    ) -> anyhow::Result<Option<Arc<Objects>>> {
        use anyhow::Context;
        let (dyn_store, s3, description, fs_root): (Arc<dyn ObjectStore>, _, _, _) = match store.kind {
            StoreKind::None => return Ok(None),
            StoreKind::Fs => {
                let dir = store.path.clone().unwrap_or_else(|| data_dir.join("objects"));
                std::fs::create_dir_all(&dir)
                    .with_context(|| format!("creating the object store directory {}", dir.display()))?;
                let fs = LocalFileSystem::new_with_prefix(&dir)
                    .with_context(|| format!("opening the object store directory {}", dir.display()))?
                    .with_automatic_cleanup(true)
                    // A 202 promises the body is on disk: each object is synced (file and
                    // directory) before its write returns, as the state write is.
                    .with_fsync(true);
                (Arc::new(fs), None, format!("fs:{}", dir.display()), Some(dir))
            }
            StoreKind::S3 => {
                let bucket = store.bucket.clone().unwrap_or_default();
                let mut b = AmazonS3Builder::from_env()
                    .with_bucket_name(&bucket)
                    .with_virtual_hosted_style_request(!store.path_style);
                if let Some(e) = &store.endpoint {
                    b = b.with_endpoint(e).with_allow_http(e.starts_with("http://"));
                }
                if let Some(r) = &store.region {
                    b = b.with_region(r);
                }
                if let Some(k) = &store.access_key_id {
                    b = b.with_access_key_id(k);
                }
                if let Some(k) = &store.secret_access_key {
                    b = b.with_secret_access_key(k);
                }
                let s3 = Arc::new(b.build().context("configuring the S3 object store ([object_store])")?);
                let endpoint = store.endpoint.as_deref().unwrap_or("aws");
                (s3.clone(), Some(s3), format!("s3:{bucket}@{endpoint}"), None)
            }
        };
        let objects = Objects {
            store: dyn_store,
            s3,
            urls: OnceLock::new(),
            url_key: url_key.clone(),
            settings: settings.clone(),
            description,
            sweep_counters: Arc::default(),
            counters: ClaimCheckCounters::default(),
            uploads: Arc::new(tokio::sync::Semaphore::new(settings.uploads_in_flight_max)),
            fs_root,
        };
        if let Some(base) = &settings.public_url {
            let _ = objects.urls.set(UrlSigner::new(url_key, base));
        }
        Ok(Some(Arc::new(objects)))
    }

    /// Where the runtime's own presigned URLs point when `claim_check.public_url` is not
    /// set: the HTTP server's address, once it is bound.
    pub fn set_http_addr(&self, addr: SocketAddr) {
        let host = if addr.ip().is_unspecified() {
            SocketAddr::from(([127, 0, 0, 1], addr.port()))
        } else {
            addr
        };
        let _ = self
            .urls
            .set(UrlSigner::new(self.url_key.clone(), &format!("http://{host}")));
    }

    /// The store itself.
    pub fn store(&self) -> &dyn ObjectStore {
        &*self.store
    }

    /// Bodies larger than this are claim-checked.
    pub fn threshold(&self) -> u64 {
        self.settings.threshold_bytes
    }

    /// The runtime's URL signer (fs stores), for the `/objects/` route.
    pub fn url_signer(&self) -> Option<&UrlSigner> {
        if self.s3.is_some() { None } else { self.urls.get() }
    }

    /// A presigned GET URL of `key`, valid for `claim_check.presign_ttl_s`.
    pub async fn presigned_url(&self, key: &str) -> Result<String, PayloadError> {
        self.presigned_url_for(key, Duration::from_secs(self.settings.presign_ttl_s))
            .await
    }

    /// A presigned GET URL of `key`, valid for `ttl` (whole seconds).
    pub async fn presigned_url_for(&self, key: &str, ttl: Duration) -> Result<String, PayloadError> {
        if let Some(s3) = &self.s3 {
            let url = s3
                .signed_url(object_store::signer::Method::GET, &Path::from(key), ttl)
                .await
                .map_err(|e| store_err(key, e))?;
            return Ok(url.to_string());
        }
        let signer = self
            .urls
            .get()
            .ok_or_else(|| PayloadError::Unavailable("the HTTP address is not bound yet".into()))?;
        Ok(signer.url(key, vrsky_actors::now_ms() / 1000 + ttl.as_secs()))
    }

    /// The object as a stream of chunks, after checking that it is there with the size
    /// recorded (the hash is the destination's to check: the bytes are not held).
    pub async fn stream(
        &self,
        r: &PayloadRef,
    ) -> Result<BoxStream<'static, Result<Bytes, object_store::Error>>, PayloadError> {
        let got = self
            .store
            .get(&Path::from(r.key.as_str()))
            .await
            .map_err(|e| store_err(&r.key, e))?;
        if got.meta.size != r.size {
            return Err(PayloadError::Corrupt(r.key.clone()));
        }
        Ok(got.into_stream())
    }

    /// Removes every object of a tenant; how many were removed.
    pub async fn delete_tenant(&self, t: &TenantId) -> Result<usize, object_store::Error> {
        let prefix = keys::tenant_prefix(t);
        let locations = self.store.list(Some(&prefix)).map(|m| m.map(|m| m.location)).boxed();
        let mut removed = 0;
        let mut deleted = self.store.delete_stream(locations);
        while let Some(d) = deleted.next().await {
            match d {
                Ok(_) => removed += 1,
                Err(object_store::Error::NotFound { .. }) => {}
                Err(e) => return Err(e),
            }
        }
        Ok(removed)
    }
}

impl Payloads for Objects {
    fn read<'a>(&'a self, r: &'a PayloadRef, max: u64) -> BoxFuture<'a, Result<Bytes, PayloadError>> {
        Box::pin(async move {
            if r.size > max {
                return Err(PayloadError::TooLarge { size: r.size, max });
            }
            let got = self
                .store
                .get(&Path::from(r.key.as_str()))
                .await
                .map_err(|e| store_err(&r.key, e))?;
            let bytes = got.bytes().await.map_err(|e| store_err(&r.key, e))?;
            let digest = ring::digest::digest(&ring::digest::SHA256, &bytes);
            if bytes.len() as u64 != r.size || sha256_hex(digest.as_ref()) != r.sha256 {
                return Err(PayloadError::Corrupt(r.key.clone()));
            }
            Ok(bytes)
        })
    }

    fn delete<'a>(&'a self, key: &'a str) -> BoxFuture<'a, Result<(), PayloadError>> {
        Box::pin(async move {
            match self.store.delete(&Path::from(key)).await {
                Ok(()) | Err(object_store::Error::NotFound { .. }) => Ok(()),
                Err(e) => Err(PayloadError::Unavailable(e.to_string())),
            }
        })
    }
}
