//! `vrsky dev`: everything local in one command. A platform NATS (JetStream) and one
//! nats-server per tenant instance as child processes, SQLite in the data directory, a
//! demo tenant whose integration delivers to the built-in echo sink.

use std::time::Duration;

use anyhow::Context;
use vrsky_actors::components::{IntegrationSpec, ProducerSpec};
use vrsky_actors::{IntegrationId, TenantId};

use crate::app::{Runtime, RuntimeOptions};
use crate::config::Config;
use crate::control::ControlErrorKind;

/// The demo tenant and integration ids.
pub const DEMO_TENANT: &str = "demo";
/// The demo integration id.
pub const DEMO_INTEGRATION: &str = "echo";

/// A random token for a dev data dir.
pub fn random_token() -> String {
    format!("dev-{}", uuid::Uuid::new_v4().simple())
}

/// Where `vrsky dev` keeps its generated admin token.
pub const TOKEN_FILE: &str = "dev-admin-token";

/// The admin token of a dev data dir: the one kept in `<data_dir>/dev-admin-token`, or a
/// new one written there (mode 0600) on the first start.
pub fn kept_token(data_dir: &std::path::Path) -> anyhow::Result<String> {
    kept(data_dir, TOKEN_FILE, random_token)
}

/// Where `vrsky dev` keeps its secrets-at-rest key.
pub const SECRETS_KEY_FILE: &str = "secrets-key";

/// The secrets-at-rest key of a dev data dir, kept like its token.
pub fn kept_secrets_key(data_dir: &std::path::Path) -> anyhow::Result<String> {
    kept(data_dir, SECRETS_KEY_FILE, || {
        crate::secrets::Sealer::generate_key().unwrap_or_default()
    })
}

/// A value kept in `<data_dir>/<file>` (mode 0600), made by `make` on the first start.
fn kept(data_dir: &std::path::Path, file: &str, make: impl FnOnce() -> String) -> anyhow::Result<String> {
    let path = data_dir.join(file);
    match std::fs::read_to_string(&path) {
        Ok(t) if t.trim().len() >= 16 => return Ok(t.trim().to_owned()),
        Ok(_) => anyhow::bail!(
            "{} holds no usable value (16+ characters); delete it to have a new one generated",
            path.display()
        ),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => return Err(anyhow::Error::new(e).context(format!("reading {}", path.display()))),
    }
    std::fs::create_dir_all(data_dir).with_context(|| format!("creating {}", data_dir.display()))?;
    let token = make();
    anyhow::ensure!(token.len() >= 16, "could not generate {}", path.display());
    let mut open = std::fs::OpenOptions::new();
    open.write(true).create_new(true);
    #[cfg(unix)]
    std::os::unix::fs::OpenOptionsExt::mode(&mut open, 0o600);
    let mut file = open
        .open(&path)
        .with_context(|| format!("writing {}", path.display()))?;
    std::io::Write::write_all(&mut file, format!("{token}\n").as_bytes())
        .with_context(|| format!("writing {}", path.display()))?;
    Ok(token)
}

/// Where `vrsky dev`'s gRPC gateway listens unless `grpc_addr` says otherwise.
pub const DEFAULT_GRPC_ADDR: std::net::SocketAddr =
    std::net::SocketAddr::new(std::net::IpAddr::V4(std::net::Ipv4Addr::LOCALHOST), 50051);

fn demo_spec(base_url: &str) -> anyhow::Result<IntegrationSpec> {
    let spec = serde_json::json!({
        "id": DEMO_INTEGRATION,
        "consumer": {"forward_headers": ["x-request-id"]},
        "filters": [],
        "converters": [],
        "producer": {"type": "http", "url": format!("{base_url}/dev/echo"), "method": "POST", "timeout_ms": 5000}
    });
    Ok(serde_json::from_value(spec)?)
}

/// Creates (or repairs) the demo tenant and integration so they point at this run's sink.
pub async fn ensure_demo(rt: &Runtime) -> anyhow::Result<()> {
    let t = TenantId::new(DEMO_TENANT)?;
    let i = IntegrationId::new(DEMO_INTEGRATION)?;
    let c = &rt.control;
    match c.tenant(&t).await {
        Ok(_) => {}
        Err(e) if e.kind() == ControlErrorKind::NotFound => {
            c.create_tenant(&t, "Demo tenant").await?;
        }
        Err(e) => return Err(e.into()),
    }
    let want = demo_spec(&rt.base_url())?;
    match c.integration(&t, &i).await {
        Ok(view) => {
            let ProducerSpec::Http(have) = &view.spec.producer;
            let ProducerSpec::Http(wanted) = &want.producer;
            if have.url != wanted.url {
                c.delete_integration(&t, &i).await?;
                c.create_integration(&t, want).await?;
            }
        }
        Err(e) if e.kind() == ControlErrorKind::NotFound => {
            c.create_integration(&t, want).await?;
        }
        Err(e) => return Err(e.into()),
    }
    Ok(())
}

/// Runs until Ctrl-C (or SIGTERM), then stops every child process.
pub async fn run(cfg: Config) -> anyhow::Result<()> {
    let token = cfg.admin_token.clone().unwrap_or_default();
    let kept = cfg.data_dir.join(TOKEN_FILE);
    let token_source = match std::fs::read_to_string(&kept) {
        Ok(t) if t.trim() == token => format!("the token is kept in {}", kept.display()),
        _ => "the token is the configured admin_token".to_owned(),
    };
    let rt = Runtime::start(cfg, RuntimeOptions { dev_sink: true })
        .await
        .context("starting vrsky dev")?;
    if let Err(e) = ensure_demo(&rt).await {
        rt.shutdown().await;
        return Err(e.context("creating the demo tenant"));
    }
    let base = rt.base_url();
    let grpc = rt.grpc_addr.map_or_else(
        || "off".to_owned(),
        |a| format!("grpc://{a}   (vrsky.v1, health, reflection: grpcurl -plaintext {a} list)"),
    );
    println!(
        "\nVRSky dev is running.\n\
         \n  API:            {base}/api   (Authorization: Bearer {token})\
         \n  gRPC:           {grpc}\
         \n  Echo sink:      {base}/dev/echo   (GET: its last 100 requests)\
         \n  Health:         {base}/healthz   {base}/readyz\
         \n  Platform NATS:  {platform}   (TLS, creds {creds})\
         \n  NATS CA:        {ca}   (every local nats-server's certificate; no anonymous clients)\
         \n  Demo webhook:   {base}/webhooks/{DEMO_TENANT}/{DEMO_INTEGRATION} -> {base}/dev/echo\
         \n\nSend a webhook (the echo sink logs it):\n\
         \n  curl -i -X POST {base}/webhooks/{DEMO_TENANT}/{DEMO_INTEGRATION} -H 'content-type: application/json' -H 'x-request-id: hello-1' -d '{{\"hello\":\"world\"}}'\n\
         \nSee the tenant's NATS instances and the actor tree:\n\
         \n  curl -s -H 'Authorization: Bearer {token}' {base}/api/tenants/{DEMO_TENANT}/nats-instances\
         \n  curl -s -H 'Authorization: Bearer {token}' {base}/api/tree\n\
         \nFor the README's examples, in your shell ({token_source}):\n\
         \n  export VRSKY_ADMIN_TOKEN={token}\n\
         \nCtrl-C stops everything.\n",
        platform = rt.platform_url,
        creds = rt.platform_creds.display(),
        ca = rt.trust.ca_file().display(),
    );
    wait_for_signal().await;
    println!("stopping...");
    tokio::time::timeout(Duration::from_secs(30), rt.shutdown())
        .await
        .context("shutdown took longer than 30 s")?;
    Ok(())
}

/// Resolves on Ctrl-C or SIGTERM.
pub async fn wait_for_signal() {
    let ctrl_c = tokio::signal::ctrl_c();
    #[cfg(unix)]
    {
        let mut term = match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(s) => s,
            Err(_) => {
                let _ = ctrl_c.await;
                return;
            }
        };
        tokio::select! {
            _ = ctrl_c => {}
            _ = term.recv() => {}
        }
    }
    #[cfg(not(unix))]
    {
        let _ = ctrl_c.await;
    }
}
