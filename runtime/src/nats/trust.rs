//! Who may talk to tenant NATS servers, and how that changes: the operator, the system
//! account, one account per tenant, and the users this node mints under it.
//!
//! - **Keys.** The operator and system-account seeds, and each tenant's account seed,
//!   are kept in the metadata store, sealed (`nats_trust`, `tenant_credentials`). User
//!   keys are never stored: a node mints an `ingress` user (publish only, on the
//!   tenant's inbox subjects) and a `worker` user (subscribe only, same subjects) per
//!   tenant when it starts, and new ones at each rotation.
//! - **Servers.** A tenant's servers preload the system account and that tenant's
//!   account only (see [`jwt::server_auth_block`]), so another tenant's users, and
//!   anonymous clients, are refused at connect.
//! - **Rotation** (`rotate`): new users are minted in a new second, then the account is
//!   re-issued with `revocations: {"*": <the second before>}` and pushed to each of the
//!   tenant's servers as a claims update. Each server closes every connection of a
//!   revoked user at once; this node's clients reconnect with the new users (their auth
//!   callback reads the current ones), and the tenant's `received` messages are re-driven
//!   at once, so what the closed connections dropped is published again. Claims are
//!   revision-checked, so nothing is delivered twice.
//! - **Revocation** (`revoke_all`, when a tenant is deleted): the same push without new
//!   users.

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use arc_swap::ArcSwap;
use nkeys::KeyPair;
use vrsky_actors::{TenantId, subjects};

use super::jwt::{self, JwtError, UserCreds, UserPermissions};
use super::tls::{LocalCa, TlsError};
use crate::db::{CredentialsRow, Db, DbError};
use crate::secrets::{Sealer, SecretsError};

/// What went wrong with credentials.
#[derive(Debug, thiserror::Error)]
pub enum TrustError {
    /// The metadata store failed.
    #[error(transparent)]
    Db(#[from] DbError),
    /// A stored seed does not open or parse.
    #[error(transparent)]
    Secrets(#[from] SecretsError),
    /// A claim could not be made.
    #[error(transparent)]
    Jwt(#[from] JwtError),
    /// The CA failed.
    #[error(transparent)]
    Tls(#[from] TlsError),
    /// A server did not take a claims update.
    #[error("{0}")]
    Push(String),
}

/// The two users a node has per tenant.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Role {
    /// Publishes webhooks and re-drives.
    Ingress,
    /// Subscribes to its integrations' inboxes.
    Worker,
}

impl Role {
    /// `ingress` or `worker`.
    pub fn as_str(self) -> &'static str {
        match self {
            Role::Ingress => "ingress",
            Role::Worker => "worker",
        }
    }
}

/// The subjects a tenant's users may use: its integrations' inboxes, nothing else (no
/// `$SYS`, no `$JS`, no `_INBOX`, no other tenant's prefix).
pub fn permissions(t: &TenantId, role: Role) -> UserPermissions {
    let inboxes = vec![subjects::tenant_inboxes(t)];
    match role {
        Role::Ingress => UserPermissions {
            publish: inboxes,
            subscribe: vec![],
        },
        Role::Worker => UserPermissions {
            publish: vec![],
            subscribe: inboxes,
        },
    }
}

/// How long until the next automatic rotation: `None` when it is off (a zero period),
/// zero when it is due. A wait is at most a day, then checked again, so a clock that
/// jumps does not postpone a rotation by weeks.
pub fn rotation_wait(rotated_at_ms: u64, now_ms: u64, period: Duration) -> Option<Duration> {
    if period.is_zero() {
        return None;
    }
    let due = rotated_at_ms.saturating_add(period.as_millis() as u64);
    Some(Duration::from_millis(due.saturating_sub(now_ms)).min(Duration::from_secs(24 * 3600)))
}

fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

/// Users in use for a tenant on this node, and the revocation in force.
#[derive(Debug)]
struct Current {
    ingress: UserCreds,
    worker: UserCreds,
    revoked_before_s: u64,
    rotated_at_ms: u64,
}

/// One tenant's account on this node.
pub struct TenantAccount {
    tenant: TenantId,
    key: KeyPair,
    current: ArcSwap<Current>,
}

impl std::fmt::Debug for TenantAccount {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TenantAccount")
            .field("tenant", &self.tenant)
            .field("account", &self.key.public_key())
            .finish()
    }
}

impl TenantAccount {
    fn mint(t: &TenantId, key: &KeyPair, revoked_before_s: u64, rotated_at_ms: u64) -> Result<Current, JwtError> {
        let user = |role: Role| UserCreds::mint(key, &format!("vrsky-{t}-{}", role.as_str()), &permissions(t, role));
        Ok(Current {
            ingress: user(Role::Ingress)?,
            worker: user(Role::Worker)?,
            revoked_before_s,
            rotated_at_ms,
        })
    }

    /// The account's public key (`A...`).
    pub fn public_key(&self) -> String {
        self.key.public_key()
    }

    /// The user this node uses for `role` now.
    pub fn creds(&self, role: Role) -> UserCreds {
        let c = self.current.load();
        match role {
            Role::Ingress => c.ingress.clone(),
            Role::Worker => c.worker.clone(),
        }
    }

    /// When the users were last rotated (or first made), ms since the Unix epoch.
    pub fn rotated_at_ms(&self) -> u64 {
        self.current.load().rotated_at_ms
    }

    /// Client options that authenticate as `role`, with whichever user is current at
    /// each (re)connect.
    pub fn connect_options(self: &Arc<Self>, role: Role) -> async_nats::ConnectOptions {
        let this = self.clone();
        async_nats::ConnectOptions::with_auth_callback(move |nonce| {
            let creds = this.creds(role);
            async move { creds.auth(&nonce) }
        })
    }

    /// A user for tests and tools, with `perms`, signed by this account.
    pub fn mint_user(&self, name: &str, perms: &UserPermissions) -> Result<UserCreds, JwtError> {
        UserCreds::mint(&self.key, name, perms)
    }
}

/// The outcome of a rotation.
#[derive(Debug, Clone, serde::Serialize)]
pub struct Rotation {
    /// Users issued at or before this Unix second are now refused.
    pub revoked_before_s: u64,
    /// When, ms since the Unix epoch.
    pub rotated_at_ms: u64,
    /// Servers that took the update.
    pub servers_updated: usize,
}

/// The trust store of this node.
pub struct Trust {
    db: Db,
    sealer: Arc<Sealer>,
    operator: KeyPair,
    system: KeyPair,
    system_user: UserCreds,
    ca_file: PathBuf,
    ca: Option<Arc<LocalCa>>,
    tenants: Mutex<HashMap<TenantId, Arc<TenantAccount>>>,
    push_timeout: Duration,
}

impl std::fmt::Debug for Trust {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Trust")
            .field("operator", &self.operator.public_key())
            .field("ca_file", &self.ca_file)
            .finish()
    }
}

async fn stored_key(db: &Db, sealer: &Sealer, name: &str, make: fn() -> KeyPair) -> Result<KeyPair, TrustError> {
    let aad = format!("nats_trust/{name}");
    let fresh = make().seed().map_err(|e| JwtError(e.to_string()))?;
    let stored = db.trust_seed(name, &sealer.seal(&aad, &fresh)?).await?;
    let seed = sealer.open(&aad, &stored)?;
    KeyPair::from_seed(&seed).map_err(|e| TrustError::Jwt(JwtError(format!("{name}: {e}"))))
}

impl Trust {
    /// Loads (or makes, once for every node) the operator and system account. `ca` is the
    /// local CA this node issues server certificates with (local servers), or `None`
    /// when certificates come from elsewhere (Kubernetes Secrets); `ca_file` is the CA
    /// clients trust.
    pub async fn open(
        db: Db,
        sealer: Arc<Sealer>,
        ca: Option<Arc<LocalCa>>,
        ca_file: PathBuf,
    ) -> Result<Trust, TrustError> {
        let operator = stored_key(&db, &sealer, "operator", KeyPair::new_operator).await?;
        let system = stored_key(&db, &sealer, "system_account", KeyPair::new_account).await?;
        let system_user = UserCreds::mint(
            &system,
            "vrsky-system",
            &UserPermissions {
                publish: vec!["$SYS.REQ.ACCOUNT.*.CLAIMS.UPDATE".into()],
                subscribe: vec!["_INBOX.>".into(), "$SYS.SERVER.*.CLIENT.AUTH.ERR".into()],
            },
        )?;
        Ok(Trust {
            db,
            sealer,
            operator,
            system,
            system_user,
            ca_file,
            ca,
            tenants: Mutex::default(),
            push_timeout: Duration::from_secs(5),
        })
    }

    /// The CA certificate clients trust.
    pub fn ca_file(&self) -> &Path {
        &self.ca_file
    }

    /// The local CA, when this node issues certificates itself.
    pub fn local_ca(&self) -> Option<&Arc<LocalCa>> {
        self.ca.as_ref()
    }

    /// A tenant's account: loaded, or made and stored on first use.
    pub async fn tenant(&self, t: &TenantId) -> Result<Arc<TenantAccount>, TrustError> {
        if let Some(a) = self.lock().get(t) {
            return Ok(a.clone());
        }
        let aad = format!("tenant_credentials/{t}");
        let fresh = KeyPair::new_account().seed().map_err(|e| JwtError(e.to_string()))?;
        let row = self
            .db
            .tenant_credentials(
                t,
                &CredentialsRow {
                    account_seed: self.sealer.seal(&aad, &fresh)?,
                    revoked_before_s: 0,
                    rotated_at_ms: now_ms(),
                },
            )
            .await?;
        let key = KeyPair::from_seed(&self.sealer.open(&aad, &row.account_seed)?)
            .map_err(|e| JwtError(format!("account of {t}: {e}")))?;
        let current = TenantAccount::mint(t, &key, row.revoked_before_s, row.rotated_at_ms)?;
        let account = Arc::new(TenantAccount {
            tenant: t.clone(),
            key,
            current: ArcSwap::from_pointee(current),
        });
        Ok(self.lock().entry(t.clone()).or_insert(account).clone())
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<TenantId, Arc<TenantAccount>>> {
        self.tenants.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The account JWT as it stands (with its revocation).
    fn account_jwt(&self, a: &TenantAccount, revoked_before_s: u64) -> Result<String, JwtError> {
        let revocations = if revoked_before_s > 0 {
            BTreeMap::from([("*".to_owned(), revoked_before_s)])
        } else {
            BTreeMap::new()
        };
        jwt::account_jwt(&self.operator, &a.public_key(), a.tenant.as_str(), false, &revocations)
    }

    /// The config block of a tenant server: trust the operator, know the system account
    /// and this tenant's account only.
    pub fn server_auth(&self, a: &TenantAccount) -> Result<String, JwtError> {
        let sys = self.system.public_key();
        let sys_jwt = jwt::account_jwt(&self.operator, &sys, "SYS", false, &BTreeMap::new())?;
        let op = jwt::operator_jwt(&self.operator, "vrsky-tenants", &sys)?;
        let acc = self.account_jwt(a, a.current.load().revoked_before_s)?;
        Ok(jwt::server_auth_block(
            &op,
            &sys,
            &[(sys.clone(), sys_jwt), (a.public_key(), acc)],
        ))
    }

    /// Client options of the system user (claims updates, auth-error events), with TLS.
    pub fn system_options(&self) -> async_nats::ConnectOptions {
        let creds = self.system_user.clone();
        creds
            .connect_options()
            .add_root_certificates(self.ca_file.clone())
            .require_tls(true)
    }

    /// Client options for a tenant's `role`, with TLS.
    pub fn tenant_options(&self, a: &Arc<TenantAccount>, role: Role) -> async_nats::ConnectOptions {
        a.connect_options(role)
            .add_root_certificates(self.ca_file.clone())
            .require_tls(true)
    }

    /// A tenant's account with the users the stored revocation allows: when another node
    /// rotated them since this one minted its own (it held the tenant before, or takes
    /// webhooks for it), they are minted again, so the next (re)connect authenticates.
    /// Returns whether they changed.
    pub async fn refresh(&self, t: &TenantId) -> Result<(Arc<TenantAccount>, bool), TrustError> {
        let a = self.tenant(t).await?;
        let Some((revoked_before_s, rotated_at_ms)) = self.db.credentials_revision(t).await? else {
            return Ok((a, false));
        };
        if rotated_at_ms == a.rotated_at_ms() {
            return Ok((a, false));
        }
        a.current.store(Arc::new(TenantAccount::mint(
            t,
            &a.key,
            revoked_before_s,
            rotated_at_ms,
        )?));
        Ok((a, true))
    }

    /// New users for `t`, and every older user revoked on each of `urls` (its servers).
    /// Takes up to a second: the new users must be issued in a later second than the
    /// revocation, which is what servers compare.
    pub async fn rotate(&self, t: &TenantId, urls: &[String]) -> Result<Rotation, TrustError> {
        let a = self.tenant(t).await?;
        let revoked_before_s = now_ms() / 1000;
        let next_second = (revoked_before_s + 1) * 1000;
        tokio::time::sleep(Duration::from_millis(next_second.saturating_sub(now_ms()) + 5)).await;
        let rotated_at_ms = now_ms();
        let current = TenantAccount::mint(t, &a.key, revoked_before_s, rotated_at_ms)?;
        self.db.rotate_credentials(t, revoked_before_s, rotated_at_ms).await?;
        a.current.store(Arc::new(current));
        let servers_updated = self.push(&a, revoked_before_s, urls).await?;
        Ok(Rotation {
            revoked_before_s,
            rotated_at_ms,
            servers_updated,
        })
    }

    /// Revokes every user of `t` on `urls`: their connections close now.
    pub async fn revoke_all(&self, t: &TenantId, urls: &[String]) -> Result<usize, TrustError> {
        let a = self.tenant(t).await?;
        let now_s = now_ms() / 1000;
        let n = self.push(&a, now_s, urls).await;
        self.lock().remove(t);
        n
    }

    /// Pushes the account, with `revoked_before_s`, to each server; fails when one
    /// refuses (one that cannot be reached still gets it from its config when it
    /// restarts: the revocation is stored first).
    async fn push(&self, a: &TenantAccount, revoked_before_s: u64, urls: &[String]) -> Result<usize, TrustError> {
        let jwt = self.account_jwt(a, revoked_before_s)?;
        let subject = format!("$SYS.REQ.ACCOUNT.{}.CLAIMS.UPDATE", a.public_key());
        let mut updated = 0;
        let mut failures = Vec::new();
        for url in urls {
            match self.push_one(url, &subject, &jwt).await {
                Ok(()) => updated += 1,
                Err(e) => failures.push(format!("{url}: {e}")),
            }
        }
        if failures.is_empty() {
            Ok(updated)
        } else {
            Err(TrustError::Push(format!(
                "claims update of tenant {} not taken by {}",
                a.tenant,
                failures.join("; ")
            )))
        }
    }

    async fn push_one(&self, url: &str, subject: &str, jwt: &str) -> Result<(), String> {
        let client = tokio::time::timeout(
            self.push_timeout,
            self.system_options().name("vrsky-system").connect(url),
        )
        .await
        .map_err(|_| "connect timed out".to_owned())?
        .map_err(|e| e.to_string())?;
        let reply = tokio::time::timeout(
            self.push_timeout,
            client.request(subject.to_owned(), jwt.to_owned().into()),
        )
        .await
        .map_err(|_| "no answer".to_owned())
        .and_then(|r| r.map_err(|e| e.to_string()));
        let _ = client.drain().await;
        let reply = reply?;
        let v: serde_json::Value = serde_json::from_slice(&reply.payload).map_err(|e| e.to_string())?;
        match v["data"]["code"].as_u64() {
            Some(200) => Ok(()),
            _ => Err(format!("server answered {v}")),
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn rotation_waits_for_its_period_a_day_at_a_time() {
        let day = Duration::from_secs(24 * 3600);
        let thirty = day * 30;
        assert_eq!(rotation_wait(0, 0, Duration::ZERO), None, "zero turns it off");
        assert_eq!(
            rotation_wait(0, 0, thirty),
            Some(day),
            "a long wait is re-checked daily"
        );
        let rotated = 1_000_000;
        let due = rotated + thirty.as_millis() as u64;
        assert_eq!(
            rotation_wait(rotated, due - 5_000, thirty),
            Some(Duration::from_secs(5))
        );
        assert_eq!(rotation_wait(rotated, due, thirty), Some(Duration::ZERO));
        assert_eq!(
            rotation_wait(rotated, due + 99, thirty),
            Some(Duration::ZERO),
            "overdue: now"
        );
    }

    #[test]
    fn users_get_only_their_tenants_inboxes() {
        let t = TenantId::new("acme").unwrap();
        let i = permissions(&t, Role::Ingress);
        assert_eq!(i.publish, vec!["vrsky.t.acme.i.*.in"]);
        assert!(i.subscribe.is_empty());
        let w = permissions(&t, Role::Worker);
        assert_eq!(w.subscribe, vec!["vrsky.t.acme.i.*.in"]);
        assert!(w.publish.is_empty());
    }
}
