//! Test harness: a runtime node in-process over real nats-server processes, a real
//! metadata store (a fresh PostgreSQL database, or SQLite in a temp dir), and a real
//! HTTP sink. Everything a test starts is stopped by `shutdown`, and by drop on panic
//! (child processes are `kill_on_drop`; the PostgreSQL database is dropped by name).

#![allow(dead_code, clippy::unwrap_used, clippy::expect_used)]

pub mod node;
pub mod payloads;
pub mod s3;
pub mod sink;

use std::path::PathBuf;
use std::time::Duration;

use serde_json::Value;
use sqlx::Connection;
use tempfile::TempDir;

use vrsky_runtime::{Config, Runtime, RuntimeOptions};

pub use sink::{FailFirst, Sink};

/// The admin token every test runtime uses.
pub const TOKEN: &str = "test-admin-token-0123456789";

/// Which metadata store a test runs against.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Backend {
    /// A fresh PostgreSQL database on the local server.
    Postgres,
    /// A SQLite file in the test's temp dir.
    Sqlite,
}

/// Base URL of the PostgreSQL server used by tests (`PG_TEST_URL`).
fn pg_admin_url() -> String {
    std::env::var("PG_TEST_URL").unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/postgres".into())
}

/// A throwaway PostgreSQL database.
pub struct PgDatabase {
    pub name: String,
    pub url: String,
}

impl PgDatabase {
    pub async fn create() -> PgDatabase {
        let name = format!("vrsky_t_{}", uuid::Uuid::new_v4().simple());
        let admin = pg_admin_url();
        let mut conn = sqlx::PgConnection::connect(&admin)
            .await
            .expect("PostgreSQL must run on 127.0.0.1:5432 (see README; .ci/run starts it)");
        sqlx::raw_sql(sqlx::AssertSqlSafe(format!("CREATE DATABASE {name}")))
            .execute(&mut conn)
            .await
            .unwrap();
        let base = admin.rsplit_once('/').unwrap().0;
        PgDatabase {
            url: format!("{base}/{name}"),
            name,
        }
    }

    pub async fn drop_db(&self) {
        if let Ok(mut conn) = sqlx::PgConnection::connect(&pg_admin_url()).await {
            let _ = sqlx::raw_sql(sqlx::AssertSqlSafe(format!(
                "DROP DATABASE IF EXISTS {} WITH (FORCE)",
                self.name
            )))
            .execute(&mut conn)
            .await;
        }
    }
}

/// A runtime node under test.
pub struct TestRuntime {
    pub rt: Option<Runtime>,
    pub dir: TempDir,
    pub cfg: Config,
    pub pg: Option<PgDatabase>,
    pub http: reqwest::Client,
}

pub fn init_logging() {
    vrsky_runtime::install_crypto_provider();
    let _ = tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "warn".into()))
        .with_test_writer()
        .try_init();
}

/// The configuration tests use: free port, temp data dir, loopback producer targets.
pub fn test_config(dir: &std::path::Path, database_url: Option<String>) -> Config {
    let mut cfg = Config {
        http_addr: "127.0.0.1:0".parse().unwrap(),
        data_dir: dir.to_path_buf(),
        database_url,
        admin_token: Some(TOKEN.into()),
        ..Config::default()
    };
    // Secrets at rest are encrypted in every test, as in production.
    cfg.security.secrets_key = Some("dGVzdC1zZWNyZXRzLWtleS0wMTIzNDU2Nzg5YWJjZGU=".into());
    cfg.producer.allow_private_targets = true;
    cfg.webhook.body_bytes_max = 64 * 1024;
    // No claim check unless a test asks for it (`claim_check::` tests do): the webhook
    // limit above is then the limit.
    cfg.object_store.kind = vrsky_runtime::objects::StoreKind::None;
    // Re-drive quickly so tests of lost publishes and dead workers take seconds.
    cfg.state.redrive_after_ms = 1_000;
    cfg.state.redrive_tick_ms = 100;
    cfg.nats.server_bin = std::env::var_os("VRSKY_NATS__SERVER_BIN").map(PathBuf::from);
    cfg
}

impl TestRuntime {
    pub async fn start(backend: Backend) -> TestRuntime {
        Self::start_with(backend, |_| {}).await
    }

    /// Starts a node with a configuration adjusted by `tweak`.
    pub async fn start_with(backend: Backend, tweak: impl FnOnce(&mut Config)) -> TestRuntime {
        Self::start_with_options(backend, RuntimeOptions::default(), tweak).await
    }

    /// Starts a node with options (`vrsky dev`'s echo sink) and an adjusted configuration.
    pub async fn start_with_options(
        backend: Backend,
        options: RuntimeOptions,
        tweak: impl FnOnce(&mut Config),
    ) -> TestRuntime {
        init_logging();
        let dir = tempfile::tempdir().unwrap();
        let pg = match backend {
            Backend::Postgres => Some(PgDatabase::create().await),
            Backend::Sqlite => None,
        };
        let mut cfg = test_config(dir.path(), pg.as_ref().map(|p| p.url.clone()));
        tweak(&mut cfg);
        let rt = Runtime::start(cfg.clone(), options).await.unwrap();
        TestRuntime {
            rt: Some(rt),
            dir,
            cfg,
            pg,
            http: reqwest::Client::new(),
        }
    }

    pub fn rt(&self) -> &Runtime {
        self.rt.as_ref().unwrap()
    }

    pub fn url(&self, path: &str) -> String {
        format!("{}{}", self.rt().base_url(), path)
    }

    /// Stops the node and starts a new one on the same data dir and database.
    pub async fn restart(&mut self) {
        self.rt.take().unwrap().shutdown().await;
        let rt = Runtime::start(self.cfg.clone(), RuntimeOptions::default())
            .await
            .unwrap();
        self.rt = Some(rt);
    }

    pub async fn shutdown(mut self) {
        if let Some(rt) = self.rt.take() {
            rt.shutdown().await;
        }
        if let Some(pg) = self.pg.take() {
            pg.drop_db().await;
        }
    }

    /// An authorized API call; returns status and JSON body (Null when empty).
    pub async fn api(&self, method: reqwest::Method, path: &str, body: Option<Value>) -> (u16, Value) {
        let mut req = self.http.request(method, self.url(path)).bearer_auth(TOKEN);
        if let Some(b) = body {
            req = req.json(&b);
        }
        let resp = req.send().await.unwrap();
        let status = resp.status().as_u16();
        let text = resp.text().await.unwrap();
        (status, serde_json::from_str(&text).unwrap_or(Value::Null))
    }

    pub async fn create_tenant(&self, id: &str) {
        let (s, b) = self
            .api(
                reqwest::Method::POST,
                "/api/tenants",
                Some(serde_json::json!({"id": id, "name": id})),
            )
            .await;
        assert_eq!(s, 201, "{b}");
    }

    pub async fn create_integration(&self, tenant: &str, spec: Value) -> Value {
        let (s, b) = self
            .api(
                reqwest::Method::POST,
                &format!("/api/tenants/{tenant}/integrations"),
                Some(spec),
            )
            .await;
        assert_eq!(s, 201, "{b}");
        b
    }

    /// Posts a webhook; returns the status.
    pub async fn webhook(&self, tenant: &str, integration: &str, body: Vec<u8>, headers: &[(&str, &str)]) -> u16 {
        self.webhook_json(tenant, integration, body, headers).await.0
    }

    /// A webhook's full answer: status and JSON body.
    pub async fn webhook_json(
        &self,
        tenant: &str,
        integration: &str,
        body: Vec<u8>,
        headers: &[(&str, &str)],
    ) -> (u16, Value) {
        let mut req = self
            .http
            .post(self.url(&format!("/webhooks/{tenant}/{integration}")))
            .body(body);
        for (k, v) in headers {
            req = req.header(*k, *v);
        }
        let r = req.send().await.unwrap();
        let status = r.status().as_u16();
        (status, r.json().await.unwrap_or(Value::Null))
    }

    /// Waits until a message reaches `status`; returns its state.
    pub async fn wait_status(&self, tenant: &str, id: &str, status: &str) -> Value {
        let last = std::sync::Mutex::new(Value::Null);
        let ok = wait_until(Duration::from_secs(60), || async {
            let (_, v) = self
                .api(
                    reqwest::Method::GET,
                    &format!("/api/tenants/{tenant}/messages/{id}"),
                    None,
                )
                .await;
            let done = v["status"] == status;
            *last.lock().unwrap() = v;
            done
        })
        .await;
        let last = last.into_inner().unwrap();
        assert!(ok.is_ok(), "message {id} never reached {status}: {last}");
        last
    }

    /// The tenant's discovered NATS instances (`GET .../nats-instances`).
    pub async fn nats_instances(&self, tenant: &str) -> Vec<Value> {
        let (s, v) = self
            .api(
                reqwest::Method::GET,
                &format!("/api/tenants/{tenant}/nats-instances"),
                None,
            )
            .await;
        assert_eq!(s, 200, "{v}");
        v["nats_instances"].as_array().unwrap().clone()
    }

    /// The live tree as JSON.
    pub async fn tree(&self) -> Value {
        let (s, b) = self.api(reqwest::Method::GET, "/api/tree", None).await;
        assert_eq!(s, 200);
        b
    }

    /// Waits until `name` shows up running in the tree with at least `restarts` restarts.
    pub async fn wait_running(&self, name: &str, restarts: u64) {
        wait_until(Duration::from_secs(30), || async {
            let tree = self.tree().await;
            find(&tree, name).is_some_and(|n| n["running"] == true && n["restarts"].as_u64().unwrap() >= restarts)
        })
        .await
        .unwrap_or_else(|_| panic!("{name} not running with {restarts} restarts"));
    }
}

/// The nats-server binary the tests use.
pub async fn nats_bin() -> PathBuf {
    let configured = std::env::var_os("VRSKY_NATS__SERVER_BIN").map(PathBuf::from);
    vrsky_runtime::nats::process::find_binary(configured.as_deref())
        .await
        .unwrap()
        .0
}

/// A platform JetStream server owned by the test (as in production, it outlives nodes):
/// TLS and operator mode, as `vrsky` starts its own, with the runtime's creds file.
pub async fn external_platform(
    dir: &std::path::Path,
    name: &str,
) -> vrsky_runtime::nats::platform_server::PlatformServer {
    external_platform_at(dir, name, vrsky_runtime::nats::process::free_port().unwrap()).await
}

/// As [`external_platform`], on `port`: started again with the same arguments, it is the
/// same server (same data, same credentials).
pub async fn external_platform_at(
    dir: &std::path::Path,
    name: &str,
    port: u16,
) -> vrsky_runtime::nats::platform_server::PlatformServer {
    let ca = vrsky_runtime::nats::tls::LocalCa::load_or_create(&dir.join(format!("{name}-ca"))).unwrap();
    vrsky_runtime::nats::platform_server::start_platform(
        &nats_bin().await,
        vrsky_runtime::nats::process::ServerOptions {
            server_name: name.into(),
            client_port: port,
            dir: dir.join(name),
            jetstream: true,
            sync_interval: "always".into(),
            adopt: false,
            startup_timeout: Duration::from_secs(10),
            go_max_procs: 1,
            security: None,
        },
        &ca,
    )
    .await
    .unwrap()
}

/// Serves `app` on a free loopback port until the returned sender is sent or dropped.
pub async fn serve(app: axum::Router) -> (std::net::SocketAddr, tokio::sync::oneshot::Sender<()>) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let (tx, rx) = tokio::sync::oneshot::channel::<()>();
    tokio::spawn(async move {
        axum::serve(listener, app)
            .with_graceful_shutdown(async {
                let _ = rx.await;
            })
            .await
            .unwrap();
    });
    (addr, tx)
}

/// Points a configuration at an external platform server.
pub fn use_platform(cfg: &mut Config, p: &vrsky_runtime::nats::platform_server::PlatformServer) {
    cfg.nats.platform_url = Some(p.process.url.clone());
    cfg.nats.platform_creds = Some(p.creds_file.clone());
    cfg.nats.platform_ca = Some(p.ca_file.clone());
}

/// A client of an external platform server, as the runtime's user.
pub async fn platform_client(p: &vrsky_runtime::nats::platform_server::PlatformServer) -> async_nats::Client {
    vrsky_runtime::nats::platform_server::platform_options(&p.creds_file, Some(&p.ca_file))
        .await
        .unwrap()
        .connect(p.process.url.as_str())
        .await
        .unwrap()
}

/// A client of a tenant's NATS instance at `url` as one of the runtime's own users of
/// that tenant (what someone holding leaked credentials could do).
pub async fn tenant_client(
    rt: &Runtime,
    tenant: &str,
    role: vrsky_runtime::nats::trust::Role,
    url: &str,
) -> Result<async_nats::Client, async_nats::ConnectError> {
    let t = vrsky_actors::TenantId::new(tenant).unwrap();
    let account = rt.trust.tenant(&t).await.unwrap();
    rt.trust.tenant_options(&account, role).connect(url).await
}

/// Finds a node by name in a tree JSON.
pub fn find<'a>(node: &'a Value, name: &str) -> Option<&'a Value> {
    if node["name"] == name {
        return Some(node);
    }
    node["children"].as_array()?.iter().find_map(|c| find(c, name))
}

/// Polls `cond` every 20 ms until it holds or `timeout` passes. Real time: these tests
/// wait on real processes.
pub async fn wait_until<F, Fut>(timeout: Duration, mut cond: F) -> Result<(), ()>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let deadline = tokio::time::Instant::now() + timeout;
    loop {
        if cond().await {
            return Ok(());
        }
        if tokio::time::Instant::now() >= deadline {
            return Err(());
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// An integration spec delivering to `url` with the given extra fields.
pub fn spec(id: &str, url: &str, extra: Value) -> Value {
    let mut s = serde_json::json!({"id": id, "producer": {"type": "http", "url": url, "timeout_ms": 5000}});
    if let (Some(obj), Some(extra)) = (s.as_object_mut(), extra.as_object()) {
        for (k, v) in extra {
            obj.insert(k.clone(), v.clone());
        }
    }
    s
}

/// An envelope of acme/hook with message id `id` and body `payload`, as ingress builds it.
pub fn acme_hook_envelope(id: &vrsky_actors::MessageId, payload: &'static [u8]) -> vrsky_actors::Envelope {
    vrsky_actors::Envelope {
        message_id: id.clone(),
        tenant_id: vrsky_actors::TenantId::new("acme").unwrap(),
        integration_id: vrsky_actors::IntegrationId::new("hook").unwrap(),
        headers: vec![],
        content_type: Some("text/plain".into()),
        payload: bytes::Bytes::from_static(payload),
        payload_ref: None,
        trace_context: None,
        attempt: 1,
        received_at_ms: vrsky_actors::now_ms(),
    }
}
