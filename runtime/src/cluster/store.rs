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

    /// Reads every lease and node record.
    pub async fn view(&self) -> Result<BucketView, LeaseError> {
        let mut view = BucketView::default();
        let mut keys = self.kv.keys().await.map_err(unavailable)?;
        let mut names = Vec::new();
        while let Some(k) = keys.next().await {
            names.push(k.map_err(unavailable)?);
        }
        for key in names {
            // Gone between the listing and the read: expired, not an error.
            let Some(entry) = self.kv.entry(key.clone()).await.map_err(unavailable)? else {
                continue;
            };
            if entry.operation != kv::Operation::Put {
                continue;
            }
            let age = age_ms(entry.created);
            if let Some(t) = key.strip_prefix(LEASE_PREFIX) {
                let (Ok(t), Ok(value)) = (TenantId::new(t), serde_json::from_slice::<LeaseValue>(&entry.value)) else {
                    tracing::warn!(key, "unreadable lease in {CLUSTER_BUCKET}; ignored");
                    continue;
                };
                let lease = Lease {
                    owner: value.node.clone(),
                    revision: entry.revision,
                };
                view.leases.insert(
                    t,
                    LeaseEntry {
                        lease,
                        value,
                        age_ms: age,
                    },
                );
            } else if let Some(id) = key.strip_prefix(NODE_PREFIX) {
                let Ok(value) = serde_json::from_slice::<NodeValue>(&entry.value) else {
                    tracing::warn!(key, "unreadable node record in {CLUSTER_BUCKET}; ignored");
                    continue;
                };
                view.nodes.insert(
                    id.to_owned(),
                    NodeEntry {
                        id: id.to_owned(),
                        value,
                        age_ms: age,
                    },
                );
            }
        }
        Ok(view)
    }

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
