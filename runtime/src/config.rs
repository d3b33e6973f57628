//! One typed configuration tree, layered: defaults < TOML file < `VRSKY_*` environment
//! (nested keys split by `__`, e.g. `VRSKY_NATS__SERVER_BIN`) < command-line flags.
//! Unknown keys are rejected at every layer.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use figment::Figment;
use figment::providers::{Env, Format, Serialized, Toml};
use serde::{Deserialize, Serialize};

/// The whole runtime configuration.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Config {
    /// Address of the HTTP server (REST API, webhooks, health).
    pub http_addr: SocketAddr,
    /// Address of the gRPC gateway (`vrsky.v1`, plaintext HTTP/2); none: no gateway.
    /// `vrsky dev` sets 127.0.0.1:50051.
    pub grpc_addr: Option<SocketAddr>,
    /// Directory for local state: the SQLite file and nats-server directories.
    pub data_dir: PathBuf,
    /// Metadata database: `postgres://...` or `sqlite://...`. Defaults to
    /// `sqlite://<data_dir>/vrsky.db`.
    pub database_url: Option<String>,
    /// Bearer token required on `/api/*`. `serve` refuses to start without one.
    pub admin_token: Option<String>,
    /// NATS settings.
    pub nats: NatsConfig,
    /// Webhook ingress settings.
    pub webhook: WebhookConfig,
    /// Limits of the HTTP server against slow and numerous clients.
    pub http: HttpConfig,
    /// Secrets at rest.
    pub security: SecurityConfig,
    /// Producer settings.
    pub producer: ProducerConfig,
    /// Logging settings.
    pub log: LogConfig,
    /// Durable message state in the platform NATS.
    pub state: StateConfig,
    /// Where claim-checked payloads are stored.
    pub object_store: crate::objects::ObjectStoreConfig,
    /// Payloads above a threshold travel by reference through the object store.
    pub claim_check: crate::objects::ClaimCheckConfig,
    /// Nodes sharing one platform NATS and metadata store: who owns which tenant.
    pub cluster: ClusterConfig,
}

/// Several nodes on one platform NATS and one metadata store. Each tenant's subtree runs on
/// exactly one node, the holder of its lease in the platform KV (`vrsky_cluster`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ClusterConfig {
    /// This node's identity (`VRSKY_NODE_ID`): letters, digits, `-` and `_`, at most 64.
    /// Unset: the host name (a StatefulSet pod's name). A node restarted with the same id
    /// takes its own leases back at once.
    pub node_id: Option<String>,
    /// A tenant lease's time to live: a node that has not renewed it this long has lost
    /// it, and another node claims the tenant. Renewed every quarter of it; a node that
    /// could not renew for half of it stops the tenant first. Every node of
    /// a cluster must use the same value (the bucket's max age; a node with another one is
    /// refused at start-up).
    pub lease_ttl_ms: u64,
    /// The base URL other nodes reach this node's HTTP server at, for requests about a
    /// tenant this node owns. Unset: `http://<http_addr>`, with the host name in place of
    /// an unspecified address (`0.0.0.0`).
    pub advertise_url: Option<String>,
    /// How long a request for a tenant that is changing owner (a fail-over, a hand-over)
    /// waits at the node that received it for the new owner, before it is answered 503.
    pub forward_wait_ms: u64,
}

impl Default for ClusterConfig {
    fn default() -> Self {
        ClusterConfig {
            node_id: None,
            lease_ttl_ms: 10_000,
            advertise_url: None,
            forward_wait_ms: 15_000,
        }
    }
}

/// Secrets at rest and NATS credentials.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct SecurityConfig {
    /// Base64 of 32 random bytes: the AES-256-GCM key producer header values, signing
    /// secrets and NATS account keys are stored under. Unset: stored in plain text (a
    /// warning at start); `vrsky dev` generates one and keeps it in
    /// `<data_dir>/secrets-key`.
    pub secrets_key: Option<String>,
    /// Days between automatic rotations of each tenant's NATS users (fractions allowed;
    /// 0: never, rotate by hand with `POST /api/tenants/{t}/credentials/rotate`).
    pub credential_rotation_days: f64,
}

impl Default for SecurityConfig {
    fn default() -> Self {
        SecurityConfig {
            secrets_key: None,
            credential_rotation_days: 30.0,
        }
    }
}

/// Limits of the HTTP server, so slow or numerous clients cannot hold its sockets.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct HttpConfig {
    /// A connection that has not sent a request's headers this long after it opened (or
    /// after its previous response) is closed.
    pub header_read_timeout_ms: u64,
    /// A request body not received in full this long after its headers is refused with
    /// 408 and its connection closed.
    pub body_read_timeout_ms: u64,
    /// Connections served at once; past it, new ones wait in the listen backlog.
    pub max_connections: usize,
}

impl Default for HttpConfig {
    fn default() -> Self {
        HttpConfig {
            header_read_timeout_ms: 10_000,
            body_read_timeout_ms: 30_000,
            max_connections: 10_000,
        }
    }
}

/// Durable message state: retention in the platform JetStream and re-drive timing.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct StateConfig {
    /// How long a finished message's state (and so its idempotency key) is remembered in
    /// the `message_state` bucket: the specification's 15 minutes, as a per-message TTL.
    /// Unfinished states never expire.
    pub message_state_ttl_s: u64,
    /// Max age of the `retry_queue` stream (1 hour).
    pub retry_queue_max_age_s: u64,
    /// Max age of the `dead_letter_queue` stream (7 days).
    pub dead_letter_max_age_s: u64,
    /// Replicas of the bucket and streams: 3 on a production cluster, 1 on one server.
    pub replicas: usize,
    /// Grace before a stalled message is re-driven: `received` (a lost core-NATS publish)
    /// after this long; `processing` (a worker that died) after the integration's
    /// `timeout_ms` plus this; `retry` this long after its due time.
    pub redrive_after_ms: u64,
    /// How often the re-driver looks for overdue messages.
    pub redrive_tick_ms: u64,
    /// Re-drives and due retries handled at once.
    pub scheduler_concurrency: usize,
    /// JetStream `sync_interval` of the platform server `vrsky` spawns (when
    /// `nats.platform_url` is unset): `always` fsyncs before acknowledging each write (no
    /// acknowledged message is lost even on power failure, at the disk's fsync rate), or a
    /// duration like `1s` (much faster; writes acknowledged within the last interval can be
    /// lost if the machine itself dies, not when a process is killed).
    pub platform_sync_interval: String,
    /// Group commit: the state writes of concurrent messages go to the platform as one
    /// JetStream atomic batch of at most this many writes (2 to 1000), or every write
    /// alone (1). 0, the default, chooses: 1000 when `vrsky` spawns the platform with
    /// `platform_sync_interval = always` (where it measured 4.3x the throughput), 1
    /// otherwise (with `1s` batches measured 1.5x slower than single writes; set it for an
    /// external platform whose servers fsync every write). Needs nats-server 2.12 or newer;
    /// an older one gets every write alone.
    pub commit_batch_max: usize,
    /// Commit units (a write alone, or a batch) in flight at once before writes queue into
    /// the next batch (1 to 50, the server's limit of atomic batches in flight per stream,
    /// shared by every node). Below it what waits goes out at once, a lone write alone.
    /// The default, 1, measured best: a batch costs the server about as much however
    /// large it is, so one at a time, as large as the queue, gives the most per second.
    pub commit_in_flight_max: usize,
}

impl Default for StateConfig {
    fn default() -> Self {
        StateConfig {
            message_state_ttl_s: 15 * 60,
            retry_queue_max_age_s: 60 * 60,
            dead_letter_max_age_s: 7 * 24 * 60 * 60,
            replicas: 1,
            redrive_after_ms: 30_000,
            redrive_tick_ms: 1_000,
            scheduler_concurrency: 256,
            platform_sync_interval: "always".into(),
            commit_batch_max: 0,
            commit_in_flight_max: 1,
        }
    }
}

/// NATS settings.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct NatsConfig {
    /// Path of the `nats-server` binary (>= 2.10). Default: the first `nats-server` on
    /// `PATH` that is new enough.
    pub server_bin: Option<PathBuf>,
    /// URL of the platform NATS (JetStream). Default: a local server spawned in
    /// `<data_dir>/platform-nats` (TLS and operator mode; the runtime is its only user).
    pub platform_url: Option<String>,
    /// Creds file (user JWT and seed) the runtime connects to an external platform NATS
    /// with; required with `platform_url`.
    pub platform_creds: Option<PathBuf>,
    /// CA certificate (PEM) of the external platform NATS; TLS is then required. Unset:
    /// the system's roots verify it, and TLS is used if the server offers it.
    pub platform_ca: Option<PathBuf>,
    /// How long a spawned nats-server may take to accept clients.
    pub startup_timeout_ms: u64,
    /// `GOMAXPROCS` of every nats-server this node spawns (the local platform server and
    /// local tenant instances); 0 leaves Go's default of one per core. The default, 1,
    /// keeps each server's Go scheduler on one core: on a small machine shared with the
    /// runtime it halved the latency tail at moderate load (`vrsky bench`).
    pub go_max_procs: u16,
    /// How often each tenant instance is probed; an unreachable one leaves discovery at
    /// the next probe (or at once when its process exits).
    pub health_interval_ms: u64,
    /// Most NATS instances one tenant may have.
    pub instances_per_tenant_max: usize,
    /// Who runs tenant instances: `local` processes (the default, `vrsky dev`, tests) or
    /// `kubernetes` objects in namespace `vrsky-tenants`.
    pub provisioner: ProvisionerKind,
    /// Settings of the Kubernetes provisioner.
    pub kubernetes: KubernetesConfig,
}

/// Who runs tenant NATS instances.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ProvisionerKind {
    /// A `nats-server` process per instance on this machine.
    Local,
    /// A Deployment, Service and Secret per instance, through the Kubernetes API
    /// (in-cluster service account, or the local kubeconfig).
    Kubernetes,
}

/// Settings of the Kubernetes provisioner.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct KubernetesConfig {
    /// nats-server image, 2.10 or newer.
    pub image: String,
    /// The prometheus-nats-exporter sidecar of every tenant server (its port `metrics`,
    /// 7777, is what `deploy/monitoring/prometheus.yml` scrapes).
    pub exporter_image: String,
    /// How long an instance may take to become ready.
    pub ready_timeout_ms: u64,
    /// How often readiness is polled.
    pub poll_interval_ms: u64,
    /// Secret in `vrsky-tenants` with the tenant servers' certificate (`tls.crt`,
    /// `tls.key`, for `*.vrsky-tenants.svc`), mounted into every instance; made by the
    /// operator or cert-manager.
    pub tls_secret: String,
    /// The CA (PEM) that signed that certificate, as the runtime sees it (a mounted
    /// Secret). Required with this provisioner.
    pub ca_file: Option<PathBuf>,
}

impl Default for KubernetesConfig {
    fn default() -> Self {
        KubernetesConfig {
            image: "nats:2.10-alpine".into(),
            exporter_image: "natsio/prometheus-nats-exporter:0.15.0".into(),
            ready_timeout_ms: 120_000,
            poll_interval_ms: 2_000,
            tls_secret: "vrsky-tenant-nats-tls".into(),
            ca_file: None,
        }
    }
}

/// Webhook ingress settings.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct WebhookConfig {
    /// Largest accepted body; larger requests get 413 before the body is read.
    pub body_bytes_max: usize,
    /// Most unfinished messages (received, processing or waiting for a retry) one
    /// integration may have on this node; past it a webhook gets 429 with `Retry-After`
    /// instead of a backlog that takes minutes to drain. Concurrent webhooks may overshoot
    /// it by the number in flight at once.
    pub unfinished_per_integration_max: usize,
    /// How long a webhook refused with 429 waits before its answer. A sender that ignores
    /// `Retry-After` and retries in a loop is slowed to this pace per connection, so a
    /// storm of refusals cannot take the CPU that delivering the backlog needs. 0 answers
    /// at once; at most 1,000 (the `Retry-After` given).
    pub refusal_delay_ms: u64,
}

/// Producer settings.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ProducerConfig {
    /// Allow producer URLs on loopback, private and link-local addresses (dev and tests).
    pub allow_private_targets: bool,
}

/// Log output format.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum LogFormat {
    /// Human-readable lines.
    Text,
    /// One JSON object per line, with span fields (tenant, integration, message ids).
    Json,
}

/// Logging settings.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct LogConfig {
    /// `text` or `json`.
    pub format: LogFormat,
    /// `tracing` filter directive, e.g. `info,vrsky_runtime=debug`. `RUST_LOG` wins.
    pub filter: String,
}

/// Upper bound of `webhook.body_bytes_max`: tenant nats-servers run with an 8 MiB
/// `max_payload`, and headers need room too.
pub const BODY_BYTES_MAX_LIMIT: usize = 4 * 1024 * 1024;

impl Default for Config {
    fn default() -> Self {
        Config {
            http_addr: SocketAddr::from(([127, 0, 0, 1], 8080)),
            grpc_addr: None,
            data_dir: PathBuf::from(".vrsky"),
            database_url: None,
            admin_token: None,
            nats: NatsConfig::default(),
            webhook: WebhookConfig::default(),
            http: HttpConfig::default(),
            security: SecurityConfig::default(),
            producer: ProducerConfig::default(),
            log: LogConfig::default(),
            state: StateConfig::default(),
            object_store: crate::objects::ObjectStoreConfig::default(),
            claim_check: crate::objects::ClaimCheckConfig::default(),
            cluster: ClusterConfig::default(),
        }
    }
}

impl Default for NatsConfig {
    fn default() -> Self {
        NatsConfig {
            server_bin: None,
            platform_url: None,
            platform_creds: None,
            platform_ca: None,
            startup_timeout_ms: 10_000,
            go_max_procs: 1,
            health_interval_ms: 10_000,
            instances_per_tenant_max: 8,
            provisioner: ProvisionerKind::Local,
            kubernetes: KubernetesConfig::default(),
        }
    }
}

impl Default for WebhookConfig {
    fn default() -> Self {
        WebhookConfig {
            body_bytes_max: 1024 * 1024,
            unfinished_per_integration_max: 10_000,
            refusal_delay_ms: 100,
        }
    }
}

impl Default for LogConfig {
    fn default() -> Self {
        LogConfig {
            format: LogFormat::Text,
            // async-nats logs every connection event at info; VRSky logs the ones that
            // matter itself (platform outages, slow consumers).
            filter: "info,async_nats=warn".into(),
        }
    }
}

/// A configuration that cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// A layer failed to parse, or has unknown keys.
    #[error("configuration: {0}")]
    Parse(String),
    /// A value is out of range.
    #[error("configuration: {field}: {message}")]
    Invalid {
        /// Dotted key.
        field: &'static str,
        /// What is wrong.
        message: String,
    },
}

impl Config {
    /// Loads defaults < `file` < `VRSKY_*` env < `overrides` (already serialized flags).
    pub fn load(file: Option<&Path>, overrides: impl Serialize) -> Result<Config, ConfigError> {
        let mut fig = Figment::from(Serialized::defaults(Config::default()));
        if let Some(path) = file {
            if !path.exists() {
                return Err(ConfigError::Parse(format!("file {} does not exist", path.display())));
            }
            fig = fig.merge(Toml::file_exact(path));
        }
        fig = fig
            .merge(Env::prefixed("VRSKY_").split("__").ignore(&["config", "node_id"]))
            // The name for the node's identity, beside `VRSKY_CLUSTER__NODE_ID`.
            .merge(Env::raw().only(&["vrsky_node_id"]).map(|_| "cluster.node_id".into()))
            .merge(Serialized::defaults(overrides));
        let cfg: Config = fig.extract().map_err(|e| ConfigError::Parse(e.to_string()))?;
        cfg.validate()?;
        Ok(cfg)
    }

    /// Checks ranges serde cannot.
    pub fn validate(&self) -> Result<(), ConfigError> {
        self.claim_check
            .check(&self.object_store)
            .map_err(|(field, message)| ConfigError::Invalid { field, message })?;
        if self.webhook.body_bytes_max == 0 || self.webhook.body_bytes_max > BODY_BYTES_MAX_LIMIT {
            return Err(ConfigError::Invalid {
                field: "webhook.body_bytes_max",
                message: format!("must be 1 to {BODY_BYTES_MAX_LIMIT}"),
            });
        }
        if self.nats.health_interval_ms == 0 || self.nats.health_interval_ms > 50_000 {
            return Err(ConfigError::Invalid {
                field: "nats.health_interval_ms",
                message: "must be 1 to 50000 (an unreachable instance must leave discovery within 60 s)".into(),
            });
        }
        let image_version = self.nats.kubernetes.image.rsplit(':').next().unwrap_or("");
        if self.nats.provisioner == ProvisionerKind::Kubernetes
            && !crate::nats::process::Version::parse(image_version).is_some_and(|v| v.supported())
        {
            return Err(ConfigError::Invalid {
                field: "nats.kubernetes.image",
                message: format!(
                    "the image tag must name nats-server 2.10 or newer, got {:?}",
                    self.nats.kubernetes.image
                ),
            });
        }
        if self.nats.provisioner == ProvisionerKind::Kubernetes && self.nats.kubernetes.ca_file.is_none() {
            return Err(ConfigError::Invalid {
                field: "nats.kubernetes.ca_file",
                message: "required with the kubernetes provisioner: the CA that signed nats.kubernetes.tls_secret"
                    .into(),
            });
        }
        if self
            .nats
            .server_bin
            .as_deref()
            .is_some_and(|p| p.as_os_str().is_empty())
        {
            return Err(ConfigError::Invalid {
                field: "nats.server_bin",
                message: "is empty (VRSKY_NATS__SERVER_BIN set to nothing?): unset it to search PATH, or name a nats-server 2.10 or newer".into(),
            });
        }
        if let Some(id) = &self.cluster.node_id
            && let Err(why) = crate::cluster::check_node_id(id)
        {
            return Err(ConfigError::Invalid {
                field: "cluster.node_id",
                message: why,
            });
        }
        if !(1_000..=600_000).contains(&self.cluster.lease_ttl_ms) {
            return Err(ConfigError::Invalid {
                field: "cluster.lease_ttl_ms",
                message: format!("1000 to 600000, got {}", self.cluster.lease_ttl_ms),
            });
        }
        if self.cluster.forward_wait_ms > 120_000 {
            return Err(ConfigError::Invalid {
                field: "cluster.forward_wait_ms",
                message: format!("at most 120000, got {}", self.cluster.forward_wait_ms),
            });
        }
        let days = self.security.credential_rotation_days;
        if !days.is_finite() || !(0.0..=3650.0).contains(&days) {
            return Err(ConfigError::Invalid {
                field: "security.credential_rotation_days",
                message: format!("0 (never) to 3650 days, got {days}"),
            });
        }
        if self.nats.platform_url.is_some() && self.nats.platform_creds.is_none() {
            return Err(ConfigError::Invalid {
                field: "nats.platform_creds",
                message: "an external nats.platform_url needs the creds file of the runtime's user".into(),
            });
        }
        if self.webhook.unfinished_per_integration_max == 0 {
            return Err(ConfigError::Invalid {
                field: "webhook.unfinished_per_integration_max",
                message: "must be positive".into(),
            });
        }
        if self.webhook.refusal_delay_ms > 1000 {
            return Err(ConfigError::Invalid {
                field: "webhook.refusal_delay_ms",
                message: format!(
                    "at most 1000 (the Retry-After of a refusal), got {}",
                    self.webhook.refusal_delay_ms
                ),
            });
        }
        for (field, value) in [
            ("http.header_read_timeout_ms", self.http.header_read_timeout_ms),
            ("http.body_read_timeout_ms", self.http.body_read_timeout_ms),
            ("http.max_connections", self.http.max_connections as u64),
        ] {
            if value == 0 {
                return Err(ConfigError::Invalid {
                    field,
                    message: "must be positive".into(),
                });
            }
        }
        if self.nats.instances_per_tenant_max == 0 {
            return Err(ConfigError::Invalid {
                field: "nats.instances_per_tenant_max",
                message: "must be positive".into(),
            });
        }
        if self.nats.startup_timeout_ms == 0 {
            return Err(ConfigError::Invalid {
                field: "nats.startup_timeout_ms",
                message: "must be positive".into(),
            });
        }
        let st = &self.state;
        if st.message_state_ttl_s == 0 || st.retry_queue_max_age_s == 0 || st.dead_letter_max_age_s == 0 {
            return Err(ConfigError::Invalid {
                field: "state",
                message: "retention periods must be positive".into(),
            });
        }
        if st.redrive_after_ms == 0 || st.redrive_after_ms / 1000 >= st.message_state_ttl_s {
            return Err(ConfigError::Invalid {
                field: "state.redrive_after_ms",
                message: "must be positive and shorter than state.message_state_ttl_s".into(),
            });
        }
        if st.redrive_tick_ms == 0 || st.scheduler_concurrency == 0 || !(1..=5).contains(&st.replicas) {
            return Err(ConfigError::Invalid {
                field: "state",
                message: "redrive_tick_ms and scheduler_concurrency must be positive, replicas 1 to 5".into(),
            });
        }
        if !valid_sync_interval(&st.platform_sync_interval) {
            return Err(ConfigError::Invalid {
                field: "state.platform_sync_interval",
                message: "must be `always` or a duration such as 500ms, 1s or 2m".into(),
            });
        }
        if st.commit_batch_max > 1000 {
            return Err(ConfigError::Invalid {
                field: "state.commit_batch_max",
                message: "must be 0 (chosen by the platform's sync interval), 1 (group commit off) or up to 1000 (the server's largest atomic batch)".into(),
            });
        }
        if !(1..=50).contains(&st.commit_in_flight_max) {
            return Err(ConfigError::Invalid {
                field: "state.commit_in_flight_max",
                message: "must be 1 to 50 (the server's limit of atomic batches in flight per stream)".into(),
            });
        }
        if let Some(t) = &self.admin_token
            && t.len() < 16
        {
            return Err(ConfigError::Invalid {
                field: "admin_token",
                message: "must be at least 16 characters".into(),
            });
        }
        if let Some(url) = &self.database_url
            && !(url.starts_with("postgres://") || url.starts_with("postgresql://") || url.starts_with("sqlite:"))
        {
            return Err(ConfigError::Invalid {
                field: "database_url",
                message: "must start with postgres://, postgresql:// or sqlite:".into(),
            });
        }
        Ok(())
    }

    /// The database URL in effect.
    pub fn database_url(&self) -> String {
        match &self.database_url {
            Some(u) => u.clone(),
            None => format!("sqlite://{}/vrsky.db?mode=rwc", self.data_dir.display()),
        }
    }
}

impl StateConfig {
    /// The group-commit batch bound in force (see `commit_batch_max`): `external` when the
    /// platform is not spawned by `vrsky`.
    pub fn commit_batch_max_for(&self, external: bool) -> usize {
        match self.commit_batch_max {
            0 if !external && self.platform_sync_interval == "always" => 1000,
            0 => 1,
            n => n,
        }
    }
}

/// `always`, or a positive whole number followed by `ms`, `s` or `m`.
pub fn valid_sync_interval(s: &str) -> bool {
    if s == "always" {
        return true;
    }
    let unit_at = s.find(|c: char| !c.is_ascii_digit()).unwrap_or(s.len());
    let (num, unit) = s.split_at(unit_at);
    matches!(unit, "ms" | "s" | "m") && num.parse::<u64>().is_ok_and(|n| n > 0)
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[derive(Serialize)]
    struct NoFlags {}

    #[test]
    #[allow(clippy::result_large_err)]
    fn layers_apply_in_order_and_unknown_keys_fail() {
        figment::Jail::expect_with(|jail| {
            jail.create_file(
                "vrsky.toml",
                "http_addr = \"127.0.0.1:9000\"\n[webhook]\nbody_bytes_max = 2048\n",
            )?;
            jail.set_env("VRSKY_WEBHOOK__BODY_BYTES_MAX", "4096");
            #[derive(Serialize)]
            struct Flags {
                http_addr: &'static str,
            }
            let cfg = Config::load(
                Some(Path::new("vrsky.toml")),
                Flags {
                    http_addr: "127.0.0.1:9100",
                },
            )
            .unwrap();
            assert_eq!(cfg.http_addr.port(), 9100);
            assert_eq!(cfg.webhook.body_bytes_max, 4096);

            jail.set_env("VRSKY_NOT_A_KEY", "1");
            let err = Config::load(None, NoFlags {}).unwrap_err().to_string();
            assert!(err.contains("not_a_key"), "{err}");
            Ok(())
        });
    }

    /// Every `vrsky.toml` the Helm chart renders (its golden copies, which
    /// `deploy/helm/check.py` keeps equal to the chart's output) loads with this parser:
    /// no unknown key, every value in range. The pod's env (its `VRSKY_NODE_ID`, the
    /// secrets) is set as the chart sets it.
    #[test]
    #[allow(clippy::result_large_err)]
    fn the_helm_charts_configurations_load() {
        let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../deploy/helm/vrsky/tests");
        let mut files: Vec<_> = std::fs::read_dir(&dir)
            .unwrap()
            .filter_map(|e| e.ok().map(|e| e.path()))
            .filter(|p| {
                p.file_name()
                    .and_then(|n| n.to_str())
                    .is_some_and(|n| n.starts_with("config-") && n.ends_with(".toml"))
            })
            .collect();
        files.sort();
        assert!(
            files.len() >= 3,
            "the chart's golden configurations in {}",
            dir.display()
        );
        for file in files {
            figment::Jail::expect_with(|jail| {
                jail.clear_env();
                jail.set_env("VRSKY_NODE_ID", "vrsky-0");
                jail.set_env("VRSKY_ADMIN_TOKEN", "a-token-of-sixteen-chars");
                let cfg = Config::load(Some(&file), NoFlags {}).unwrap_or_else(|e| panic!("{}: {e}", file.display()));
                assert_eq!(cfg.cluster.node_id.as_deref(), Some("vrsky-0"), "{}", file.display());
                Ok(())
            });
        }
    }

    #[test]
    #[allow(clippy::result_large_err)]
    fn node_id_comes_from_vrsky_node_id_and_is_checked() {
        figment::Jail::expect_with(|jail| {
            jail.set_env("VRSKY_NODE_ID", "vrsky-2");
            assert_eq!(
                Config::load(None, NoFlags {}).unwrap().cluster.node_id.as_deref(),
                Some("vrsky-2")
            );
            jail.set_env("VRSKY_NODE_ID", "pod.example");
            let err = Config::load(None, NoFlags {}).unwrap_err().to_string();
            assert!(err.contains("cluster.node_id"), "{err}");
            jail.set_env("VRSKY_NODE_ID", "ok");
            jail.set_env("VRSKY_CLUSTER__LEASE_TTL_MS", "10");
            let err = Config::load(None, NoFlags {}).unwrap_err().to_string();
            assert!(err.contains("cluster.lease_ttl_ms"), "{err}");
            jail.set_env("VRSKY_CLUSTER__LEASE_TTL_MS", "3000");
            jail.set_env("VRSKY_NATS__SERVER_BIN", "");
            let err = Config::load(None, NoFlags {}).unwrap_err().to_string();
            assert!(err.contains("nats.server_bin") && err.contains("empty"), "{err}");
            Ok(())
        });
    }

    #[test]
    #[allow(clippy::result_large_err)]
    fn kubernetes_image_must_be_new_enough() {
        figment::Jail::expect_with(|jail| {
            jail.set_env("VRSKY_NATS__PROVISIONER", "kubernetes");
            jail.set_env("VRSKY_NATS__KUBERNETES__IMAGE", "nats:2.9.10");
            let err = Config::load(None, NoFlags {}).unwrap_err().to_string();
            assert!(err.contains("nats.kubernetes.image"), "{err}");
            jail.set_env("VRSKY_NATS__KUBERNETES__IMAGE", "nats:2.10.24-alpine");
            let err = Config::load(None, NoFlags {}).unwrap_err().to_string();
            assert!(err.contains("nats.kubernetes.ca_file"), "{err}");
            jail.set_env("VRSKY_NATS__KUBERNETES__CA_FILE", "/etc/vrsky/tenant-nats-ca.crt");
            assert_eq!(
                Config::load(None, NoFlags {}).unwrap().nats.provisioner,
                ProvisionerKind::Kubernetes
            );
            jail.set_env("VRSKY_NATS__PROVISIONER", "docker");
            assert!(Config::load(None, NoFlags {}).is_err());
            Ok(())
        });
    }

    #[test]
    fn group_commit_is_chosen_by_the_platforms_sync_interval() {
        let mut st = StateConfig::default();
        assert_eq!(st.commit_batch_max_for(false), 1000);
        assert_eq!(st.commit_batch_max_for(true), 1);
        st.platform_sync_interval = "1s".into();
        assert_eq!(st.commit_batch_max_for(false), 1);
        st.commit_batch_max = 16;
        assert_eq!(
            (st.commit_batch_max_for(false), st.commit_batch_max_for(true)),
            (16, 16)
        );
    }

    #[test]
    fn sync_intervals() {
        for ok in ["always", "1s", "500ms", "2m"] {
            assert!(valid_sync_interval(ok), "{ok}");
        }
        for bad in ["", "never", "0s", "1h", "s", "1.5s", "-1s"] {
            assert!(!valid_sync_interval(bad), "{bad}");
        }
    }

    #[test]
    #[allow(clippy::result_large_err)]
    fn out_of_range_values_are_named() {
        figment::Jail::expect_with(|jail| {
            jail.set_env("VRSKY_WEBHOOK__BODY_BYTES_MAX", "0");
            let err = Config::load(None, NoFlags {}).unwrap_err().to_string();
            assert!(err.contains("webhook.body_bytes_max"), "{err}");
            jail.set_env("VRSKY_WEBHOOK__BODY_BYTES_MAX", "1024");
            jail.set_env("VRSKY_WEBHOOK__REFUSAL_DELAY_MS", "1001");
            let err = Config::load(None, NoFlags {}).unwrap_err().to_string();
            assert!(
                err.contains("webhook.refusal_delay_ms") && err.contains("1001"),
                "{err}"
            );
            jail.set_env("VRSKY_WEBHOOK__REFUSAL_DELAY_MS", "0");
            assert_eq!(Config::load(None, NoFlags {}).unwrap().webhook.refusal_delay_ms, 0);
            Ok(())
        });
    }
}
