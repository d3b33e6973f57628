//! The lease bucket `vrsky_cluster` in the platform JetStream: one key per tenant lease
//! (`lease.{tenant}`) and one per live node (`node.{id}`). The bucket's max age is the
//! lease TTL, so the server itself forgets a lease (or a node) nobody renewed: no clock of
//! ours decides an expiry. A claim is a create-only write, a renewal a revision-checked
//! update, a release a revision-checked delete.

use std::collections::BTreeMap;
use std::time::Duration;

use async_nats::jetstream::{self, kv, stream};
use futures::StreamExt;
use serde::{Deserialize, Serialize};

use vrsky_actors::TenantId;

use super::decide::Lease;

/// The bucket's name.
pub const CLUSTER_BUCKET: &str = "vrsky_cluster";

const LEASE_PREFIX: &str = "lease.";
const NODE_PREFIX: &str = "node.";
/// Longest a read of the whole bucket may wait for its next entry.
const VIEW_READ_MAX: std::time::Duration = std::time::Duration::from_secs(2);

/// What a lease's value says.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LeaseValue {
    /// The holder.
    pub node: String,
    /// When the holder first claimed it (ms since the epoch); kept across renewals.
    pub since_ms: u64,
}

/// What a node's record says.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct NodeValue {
    /// Where other nodes reach its HTTP server.
    pub url: String,
    /// When it started (ms since the epoch).
    pub started_ms: u64,
    /// It is handing its tenants over (SIGTERM).
    pub draining: bool,
}

/// A lease read from the bucket.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LeaseEntry {
    /// Holder and revision.
    pub lease: Lease,
    /// Its value.
    pub value: LeaseValue,
    /// How long ago it was last written (renewed), by the server's clock.
    pub age_ms: u64,
}

/// A node record read from the bucket.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NodeEntry {
    /// Its id.
    pub id: String,
    /// Its value.
    pub value: NodeValue,
    /// How long ago it was last renewed.
    pub age_ms: u64,
}

/// Everything in the bucket.
#[derive(Debug, Clone, Default)]
pub struct BucketView {
    /// Leases by tenant.
    pub leases: BTreeMap<TenantId, LeaseEntry>,
    /// Live nodes by id.
    pub nodes: BTreeMap<String, NodeEntry>,
}

/// Why a lease write did not happen.
#[derive(Debug, thiserror::Error)]
pub enum LeaseError {
    /// Someone else holds it, or it moved on (expired and claimed again).
    #[error("the lease is held by another node, or it moved on")]
    Lost,
    /// The platform did not answer.
    #[error("platform kv: {0}")]
    Unavailable(String),
}

fn unavailable(e: impl std::fmt::Display) -> LeaseError {
    LeaseError::Unavailable(e.to_string())
}

/// The bucket.
#[derive(Clone)]
pub struct LeaseStore {
    kv: kv::Store,
}

fn lease_key(t: &TenantId) -> String {
    format!("{LEASE_PREFIX}{t}")
}

fn age_ms(created: time::OffsetDateTime) -> u64 {
    let age = time::OffsetDateTime::now_utc() - created;
    age.whole_milliseconds().clamp(0, u64::MAX as i128) as u64
}

impl LeaseStore {
    /// Opens the bucket, creating it with `ttl` as its max age. A bucket made with another
    /// TTL is refused: every node of a cluster must agree on when a lease expires.
    pub async fn open(client: async_nats::Client, ttl: Duration, replicas: usize) -> anyhow::Result<LeaseStore> {
        let js = jetstream::new(client);
        let kv = match js.get_key_value(CLUSTER_BUCKET).await {
            Ok(kv) => kv,
            Err(_) => js
                .create_key_value(kv::Config {
                    bucket: CLUSTER_BUCKET.into(),
                    description: "VRSky tenant leases and live nodes".into(),
                    history: 1,
                    max_age: ttl,
                    storage: stream::StorageType::File,
                    num_replicas: replicas,
                    ..Default::default()
                })
                .await
                .map_err(|e| anyhow::anyhow!("creating bucket {CLUSTER_BUCKET}: {e}"))?,
        };
        let mut s = js
            .get_stream(format!("KV_{CLUSTER_BUCKET}"))
            .await
            .map_err(|e| anyhow::anyhow!("reading bucket {CLUSTER_BUCKET}: {e}"))?;
        let have = s
            .info()
            .await
            .map_err(|e| anyhow::anyhow!("reading bucket {CLUSTER_BUCKET}: {e}"))?
            .config
            .max_age;
        if have != ttl {
            anyhow::bail!(
                "cluster.lease_ttl_ms: this node has {} ms but the cluster's bucket {CLUSTER_BUCKET} was made with {} ms; every node must use the same value",
                ttl.as_millis(),
                have.as_millis()
            );
        }
        Ok(LeaseStore { kv })
    }

    /// Reads every lease and node record: the last value of each key, in one stream (a
    /// watch with history, ended at its last pending entry), not a read per key.
    pub async fn view(&self) -> Result<BucketView, LeaseError> {
        let mut view = BucketView::default();
        // A watch of an empty bucket would wait for a first write (asked of the server:
        // `Store::status` answers from what was read at open).
        if self.kv.stream.get_info().await.map_err(unavailable)?.state.messages == 0 {
            return Ok(view);
        }
        let mut entries = self.kv.watch_with_history(">").await.map_err(unavailable)?;
        loop {
            // A key that expired between the count and the watch leaves nothing to read:
            // no view this time (a partial one could make this node give tenants up).
            let entry = match tokio::time::timeout(VIEW_READ_MAX, entries.next()).await {
                Ok(Some(e)) => e.map_err(unavailable)?,
                Ok(None) => return Err(LeaseError::Unavailable("the bucket watch ended".into())),
                Err(_) => return Err(LeaseError::Unavailable("the bucket was not read in time".into())),
            };
            let last = entry.delta == 0;
            if entry.operation == kv::Operation::Put {
                view.add(entry);
            } else {
                // Deleted after its value was read (a release, a retirement).
                view.remove(&entry.key);
            }
            if last {
                return Ok(view);
            }
        }
    }
}

impl BucketView {
    /// Forgets a key.
    fn remove(&mut self, key: &str) {
        if let Some(t) = key.strip_prefix(LEASE_PREFIX).and_then(|t| TenantId::new(t).ok()) {
            self.leases.remove(&t);
        } else if let Some(id) = key.strip_prefix(NODE_PREFIX) {
            self.nodes.remove(id);
        }
    }

    /// Takes in one key's last value.
    fn add(&mut self, entry: kv::Entry) {
        let key = entry.key.as_str();
        let age_ms = age_ms(entry.created);
        if let Some(t) = key.strip_prefix(LEASE_PREFIX) {
            let (Ok(t), Ok(value)) = (TenantId::new(t), serde_json::from_slice::<LeaseValue>(&entry.value)) else {
                return tracing::warn!(key, "unreadable lease in {CLUSTER_BUCKET}; ignored");
            };
            let lease = Lease {
                owner: value.node.clone(),
                revision: entry.revision,
            };
            self.leases.insert(t, LeaseEntry { lease, value, age_ms });
        } else if let Some(id) = key.strip_prefix(NODE_PREFIX) {
            let Ok(value) = serde_json::from_slice::<NodeValue>(&entry.value) else {
                return tracing::warn!(key, "unreadable node record in {CLUSTER_BUCKET}; ignored");
            };
            let id = id.to_owned();
            self.nodes.insert(id.clone(), NodeEntry { id, value, age_ms });
        }
    }
}

impl LeaseStore {
    /// Writes (renews) this node's record.
    pub async fn announce(&self, id: &str, value: &NodeValue) -> Result<(), LeaseError> {
        let body = serde_json::to_vec(value).map_err(unavailable)?;
        self.kv
            .put(format!("{NODE_PREFIX}{id}"), body.into())
            .await
            .map_err(unavailable)?;
        Ok(())
    }

    /// Removes this node's record (a clean stop).
    pub async fn retire(&self, id: &str) -> Result<(), LeaseError> {
        self.kv.delete(format!("{NODE_PREFIX}{id}")).await.map_err(unavailable)
    }

    /// Claims a tenant nobody holds: the new revision, or `Lost` when it is held.
    pub async fn claim(&self, t: &TenantId, value: &LeaseValue) -> Result<u64, LeaseError> {
        let body = serde_json::to_vec(value).map_err(unavailable)?;
        match self.kv.create(lease_key(t), body.into()).await {
            Ok(rev) => Ok(rev),
            Err(e) if e.kind() == kv::CreateErrorKind::AlreadyExists => Err(LeaseError::Lost),
            Err(e) => Err(unavailable(e)),
        }
    }

    /// Renews (or takes over) a lease at the revision this node knows: the new revision,
    /// or `Lost` when it moved on.
    pub async fn renew(&self, t: &TenantId, value: &LeaseValue, revision: u64) -> Result<u64, LeaseError> {
        let body = serde_json::to_vec(value).map_err(unavailable)?;
        match self.kv.update(lease_key(t), body.into(), revision).await {
            Ok(rev) => Ok(rev),
            Err(e) if e.kind() == kv::UpdateErrorKind::WrongLastRevision => Err(LeaseError::Lost),
            Err(e) => Err(unavailable(e)),
        }
    }

    /// Gives a lease up, if it is still at `revision`.
    pub async fn release(&self, t: &TenantId, revision: u64) -> Result<(), LeaseError> {
        self.kv
            .delete_expect_revision(lease_key(t), Some(revision))
            .await
            .map_err(|e| match e.kind() {
                kv::DeleteErrorKind::WrongLastRevision => LeaseError::Lost,
                _ => unavailable(e),
            })
    }

    /// Removes a deleted tenant's lease whoever holds it.
    pub async fn forget(&self, t: &TenantId) -> Result<(), LeaseError> {
        self.kv.delete(lease_key(t)).await.map_err(unavailable)
    }

    /// Wakes `on_change` on every change of the bucket (a release, a claim), so a node
    /// does not wait for its next tick to claim a tenant another node handed over.
    pub async fn watch(&self) -> Result<kv::Watch, LeaseError> {
        self.kv.watch_all().await.map_err(unavailable)
    }
}
