//! NATS decentralized auth, as data: operator, account and user JWTs signed with nkeys,
//! creds files, and the server config block that trusts an operator. Pure functions;
//! where keys live and when they rotate is `nats/trust.rs`.
//!
//! A server in operator mode accepts a client only with a user JWT signed by an account
//! it knows (here: preloaded in its config, `resolver: MEMORY`) plus a signature of the
//! server's nonce by the user's own key. Each tenant's servers preload only that tenant's
//! account, so another tenant's users are unknown there.

use std::collections::BTreeMap;

use nats_jwt_rs::Claims;
use nats_jwt_rs::account::{Account, AccountLimits, JetStreamLimits, OperatorLimits};
use nats_jwt_rs::operator::Operator;
use nats_jwt_rs::types::{Permission, Permissions};
use nats_jwt_rs::user::User;
use nkeys::KeyPair;

/// A key that cannot be used or a claim that cannot be signed.
#[derive(Debug, thiserror::Error)]
#[error("nats credentials: {0}")]
pub struct JwtError(pub String);

fn err(e: impl std::fmt::Display) -> JwtError {
    JwtError(e.to_string())
}

/// What a user may publish and subscribe to: allow lists, everything else denied.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct UserPermissions {
    /// Subjects it may publish on.
    pub publish: Vec<String>,
    /// Subjects it may subscribe to.
    pub subscribe: Vec<String>,
}

impl UserPermissions {
    fn to_jwt(&self) -> Permissions {
        // An empty allow list means "everything" to nats-server; deny `>` instead.
        let side = |allow: &[String]| Permission {
            allow: allow.to_vec(),
            deny: if allow.is_empty() { vec![">".into()] } else { vec![] },
        };
        Permissions {
            publish: side(&self.publish),
            subscribe: side(&self.subscribe),
            resp: None,
        }
    }
}

/// The operator JWT (self-signed), naming its system account.
pub fn operator_jwt(operator: &KeyPair, name: &str, system_account: &str) -> Result<String, JwtError> {
    let mut c = Operator::new_claims(name.into(), operator.public_key());
    c.nats.system_account = Some(system_account.into());
    c.encode(operator).map_err(err)
}

/// An account JWT signed by the operator. `jetstream` gives it unlimited JetStream (off
/// otherwise: an operator-mode account has none unless its limits say so). `revocations`
/// maps user public keys (or `*`, every user) to the time (Unix seconds) at or before
/// which their JWTs were issued and are refused; the server closes their connections
/// when it learns of it.
pub fn account_jwt(
    operator: &KeyPair,
    account: &str,
    name: &str,
    jetstream: bool,
    revocations: &BTreeMap<String, u64>,
) -> Result<String, JwtError> {
    let mut c = Account::new_claims(name.into(), account.into());
    let mut limits = OperatorLimits {
        account: Some(AccountLimits {
            // A user must sign the server's nonce: a leaked JWT alone is not enough.
            disallow_bearer: Some(true),
            ..AccountLimits::default()
        }),
        ..OperatorLimits::default()
    };
    if jetstream {
        limits.jetstream = Some(JetStreamLimits {
            memory_storage: Some(-1),
            disk_storage: Some(-1),
            streams: Some(-1),
            consumer: Some(-1),
            max_ack_pending: Some(-1),
            mem_max_stream_bytes: Some(-1),
            disk_max_stream_bytes: Some(-1),
            max_bytes_required: Some(false),
        });
    }
    c.nats.limits = Some(limits);
    if !revocations.is_empty() {
        c.nats.revocations = Some(revocations.clone());
    }
    c.encode(operator).map_err(err)
}

/// A user JWT signed by its account.
pub fn user_jwt(account: &KeyPair, user: &str, name: &str, perms: &UserPermissions) -> Result<String, JwtError> {
    let mut c: Claims<User> = User::new_claims(name.into(), user.into());
    c.nats.permissions.permissions = perms.to_jwt();
    c.encode(account).map_err(err)
}

/// A user's credentials: its JWT and its key (which signs each server's nonce).
#[derive(Clone)]
pub struct UserCreds {
    /// The user JWT.
    pub jwt: String,
    /// The user's key pair.
    pub key: std::sync::Arc<KeyPair>,
}

impl std::fmt::Debug for UserCreds {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("UserCreds")
            .field("user", &self.key.public_key())
            .finish()
    }
}

impl UserCreds {
    /// Mints a new user key and its JWT under `account`.
    pub fn mint(account: &KeyPair, name: &str, perms: &UserPermissions) -> Result<UserCreds, JwtError> {
        let key = KeyPair::new_user();
        let jwt = user_jwt(account, &key.public_key(), name, perms)?;
        Ok(UserCreds {
            jwt,
            key: std::sync::Arc::new(key),
        })
    }

    /// The user's public key (`U...`).
    pub fn public_key(&self) -> String {
        self.key.public_key()
    }

    /// The `.creds` file format `nats` tools and every client library read.
    pub fn creds_file(&self) -> Result<String, JwtError> {
        let seed = self.key.seed().map_err(err)?;
        Ok(format!(
            "-----BEGIN NATS USER JWT-----\n{}\n------END NATS USER JWT------\n\n************************* IMPORTANT *************************\nNKEY Seed printed below can be used to sign and prove identity.\nNKEYs are sensitive and should be treated as secrets.\n\n-----BEGIN USER NKEY SEED-----\n{seed}\n------END USER NKEY SEED------\n\n*************************************************************\n",
            self.jwt
        ))
    }

    /// The client options that authenticate as this user on every (re)connect.
    pub fn connect_options(&self) -> async_nats::ConnectOptions {
        let creds = self.clone();
        async_nats::ConnectOptions::with_auth_callback(move |nonce| {
            let creds = creds.clone();
            async move { creds.auth(&nonce) }
        })
    }

    /// Signs a server nonce.
    pub fn auth(&self, nonce: &[u8]) -> Result<async_nats::Auth, async_nats::AuthError> {
        let mut auth = async_nats::Auth::new();
        auth.jwt = Some(self.jwt.clone());
        auth.signature = Some(
            self.key
                .sign(nonce)
                .map_err(|e| async_nats::AuthError::new(e.to_string()))?,
        );
        Ok(auth)
    }
}

/// The config block that makes a server trust `operator_jwt`, with the accounts it knows
/// (public key, JWT), the system account among them.
pub fn server_auth_block(operator_jwt: &str, system_account: &str, accounts: &[(String, String)]) -> String {
    let mut c = format!(
        "operator: \"{operator_jwt}\"\nsystem_account: \"{system_account}\"\nresolver: MEMORY\nresolver_preload: {{\n"
    );
    for (public, jwt) in accounts {
        c.push_str(&format!("  {public}: \"{jwt}\"\n"));
    }
    c.push_str("}\n");
    c
}

/// The account public key a user JWT names as its issuer, and the user's public key.
pub fn user_identity(jwt: &str) -> Result<(String, String), JwtError> {
    let c: Claims<User> = Claims::decode(jwt).map_err(err)?;
    Ok((c.iss, c.sub))
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn claims_chain_and_permissions() {
        let op = KeyPair::new_operator();
        let sys = KeyPair::new_account();
        let acc = KeyPair::new_account();
        let o: Claims<Operator> = Claims::decode(&operator_jwt(&op, "vrsky", &sys.public_key()).unwrap()).unwrap();
        assert_eq!(o.nats.system_account.as_deref(), Some(sys.public_key().as_str()));
        let revoked = BTreeMap::from([("*".to_owned(), 42)]);
        let a: Claims<Account> =
            Claims::decode(&account_jwt(&op, &acc.public_key(), "t", false, &revoked).unwrap()).unwrap();
        assert_eq!(
            (a.iss.as_str(), a.sub.as_str()),
            (op.public_key().as_str(), acc.public_key().as_str())
        );
        assert_eq!(a.nats.revocations.unwrap()["*"], 42);
        let no_js = a.nats.limits.unwrap().jetstream.and_then(|j| j.disk_storage);
        assert!(
            no_js.is_none_or(|d| d == 0),
            "a tenant account has no JetStream: {no_js:?}"
        );
        let js: Claims<Account> =
            Claims::decode(&account_jwt(&op, &acc.public_key(), "p", true, &BTreeMap::new()).unwrap()).unwrap();
        assert_eq!(js.nats.limits.unwrap().jetstream.unwrap().disk_storage, Some(-1));

        let perms = UserPermissions {
            publish: vec!["vrsky.t.a.i.*.in".into()],
            subscribe: vec![],
        };
        let u = UserCreds::mint(&acc, "ingress", &perms).unwrap();
        let (issuer, user) = user_identity(&u.jwt).unwrap();
        assert_eq!((issuer, user), (acc.public_key(), u.public_key()));
        let c: Claims<User> = Claims::decode(&u.jwt).unwrap();
        let p = &c.nats.permissions.permissions;
        assert_eq!(p.publish.allow, vec!["vrsky.t.a.i.*.in"]);
        assert_eq!(p.subscribe.deny, vec![">"], "an empty allow list must deny everything");
        assert!(u.creds_file().unwrap().contains(&u.jwt));
        let auth = u.auth(b"nonce").unwrap();
        u.key.verify(b"nonce", &auth.signature.unwrap()).unwrap();
    }

    #[test]
    fn server_block_preloads_accounts() {
        let b = server_auth_block(
            "OJWT",
            "ASYS",
            &[("ASYS".into(), "SJWT".into()), ("AT".into(), "TJWT".into())],
        );
        assert!(b.contains("operator: \"OJWT\"") && b.contains("resolver: MEMORY"));
        assert!(b.contains("  AT: \"TJWT\"\n") && b.contains("system_account: \"ASYS\""));
    }
}
