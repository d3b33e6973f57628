//! The platform nats-server a node starts when `nats.platform_url` is unset (`vrsky dev`,
//! tests): JetStream, TLS from the local CA, and operator mode with one account (`VRSKY`,
//! JetStream on) whose only user is this runtime. Its keys stay in `<dir>/trust.json`
//! (mode 0600) so the account, and with it the JetStream store, is the same at every
//! start; the runtime's user is minted at each start into `<dir>/runtime.creds`.
//! The runtime connects to it exactly as to an external platform server: a creds file
//! and a CA (`nats.platform_creds`, `nats.platform_ca`).

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use nkeys::KeyPair;
use serde::{Deserialize, Serialize};
use tracing::info;
use vrsky_actors::nats_instance::ProvisionError;

use super::jwt::{self, UserCreds, UserPermissions};
use super::process::{ServerOptions, ServerProcess, ServerSecurity, start_server};
use super::tls::{LocalCa, write_private};

/// A running platform server and what a client needs to reach it.
#[derive(Debug)]
pub struct PlatformServer {
    /// The process.
    pub process: ServerProcess,
    /// The runtime's creds file.
    pub creds_file: PathBuf,
    /// The CA that signed the server's certificate.
    pub ca_file: PathBuf,
}

#[derive(Serialize, Deserialize)]
struct Seeds {
    operator: String,
    system: String,
    account: String,
}

fn io(e: impl std::fmt::Display) -> ProvisionError {
    ProvisionError::NotReady(format!("platform nats credentials: {e}"))
}

fn load_or_create_seeds(dir: &Path) -> Result<(KeyPair, KeyPair, KeyPair), ProvisionError> {
    let path = dir.join("trust.json");
    let seeds = match std::fs::read_to_string(&path) {
        Ok(text) => serde_json::from_str::<Seeds>(&text).map_err(io)?,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            let s = Seeds {
                operator: KeyPair::new_operator().seed().map_err(io)?,
                system: KeyPair::new_account().seed().map_err(io)?,
                account: KeyPair::new_account().seed().map_err(io)?,
            };
            std::fs::create_dir_all(dir)?;
            write_private(&path, &serde_json::to_string(&s).map_err(io)?)?;
            s
        }
        Err(e) => return Err(e.into()),
    };
    let kp = |s: &str| KeyPair::from_seed(s).map_err(io);
    Ok((kp(&seeds.operator)?, kp(&seeds.system)?, kp(&seeds.account)?))
}

/// JetStream keeps each account's streams under its name. A store written before the
/// server ran in operator mode is the global account's (`$G`); it becomes the `VRSKY`
/// account's, so nothing stored then is lost.
fn adopt_global_store(store_dir: &Path, account: &str) -> std::io::Result<()> {
    let (global, mine) = (
        store_dir.join("jetstream").join("$G"),
        store_dir.join("jetstream").join(account),
    );
    if global.is_dir() && !mine.exists() {
        std::fs::rename(&global, &mine)?;
        info!(from = %global.display(), to = %mine.display(), "moved the platform's JetStream store to its account");
    }
    Ok(())
}

/// Starts the platform server in `dir`.
pub async fn start_platform(
    bin: &Path,
    mut options: ServerOptions,
    ca: &LocalCa,
) -> Result<PlatformServer, ProvisionError> {
    let dir = options.dir.clone();
    std::fs::create_dir_all(&dir)?;
    let (operator, system, account) = load_or_create_seeds(&dir)?;
    adopt_global_store(&dir.join("jetstream"), &account.public_key())?;
    let none = BTreeMap::new();
    let sys_jwt = jwt::account_jwt(&operator, &system.public_key(), "SYS", false, &none).map_err(io)?;
    let acc_jwt = jwt::account_jwt(&operator, &account.public_key(), "VRSKY", true, &none).map_err(io)?;
    let op_jwt = jwt::operator_jwt(&operator, "vrsky-platform", &system.public_key()).map_err(io)?;
    let auth = jwt::server_auth_block(
        &op_jwt,
        &system.public_key(),
        &[(system.public_key(), sys_jwt), (account.public_key(), acc_jwt)],
    );
    let all = UserPermissions {
        publish: vec![">".into()],
        subscribe: vec![">".into()],
    };
    let user = UserCreds::mint(&account, "vrsky-runtime", &all).map_err(io)?;
    let creds_file = dir.join("runtime.creds");
    write_private(&creds_file, &user.creds_file().map_err(io)?)?;
    let tls = ca.issue_loopback_into(&dir).map_err(io)?;
    options.security = Some(ServerSecurity { auth, tls });
    let process = start_server(bin, &options).await?;
    Ok(PlatformServer {
        process,
        creds_file,
        ca_file: ca.ca_file().to_path_buf(),
    })
}

/// Connect options for a platform server: its creds file and CA.
pub async fn platform_options(creds: &Path, ca: Option<&Path>) -> std::io::Result<async_nats::ConnectOptions> {
    let o = async_nats::ConnectOptions::with_credentials_file(creds).await?;
    Ok(match ca {
        Some(ca) => o.add_root_certificates(ca.to_path_buf()).require_tls(true),
        None => o,
    })
}
