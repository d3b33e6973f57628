//! Wiring: starts the platform NATS connection, the metadata store, the root supervisor,
//! the control layer and the HTTP server, and stops them in reverse order.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use tokio::sync::oneshot;
use tracing::{info, warn};

use vrsky_actors::nats_instance::StopHandle;
use vrsky_supervision::{Backoff, ChildSpec, SupervisorArgs, SupervisorExt, spawn_root};

/// Name of the RetryScheduler under the runtime supervisor.
pub const SCHEDULER_CHILD: &str = "retry-scheduler";
/// How long a node that handed its tenants over keeps answering before its HTTP server
/// stops: the other nodes learn of the new owners from the bucket within this.
const HAND_OVER_LINGER: Duration = Duration::from_secs(1);
/// The orphan sweeper of claim-checked payloads (when an object store is configured).
pub const SWEEPER_CHILD: &str = "object-sweeper";

/// Messages a tenant NATS client buffers per subscription before it drops them (a slow
/// consumer), at least: async-nats' default, 65,536. A worker never has more than its
/// integration's unfinished bound outstanding, so the buffer is at least four times that.
const SUBSCRIPTION_CAPACITY: usize = 65_536;

use crate::config::{Config, ProvisionerKind};
use crate::control::{Control, Directory, TenantDeps, TenantSettings};
use crate::db::Db;
use crate::http::{AppState, router};
use crate::k8s::{KubeProvisioner, KubeSettings};
use crate::nats::LocalProvisioner;
use crate::nats::process::{ServerOptions, find_binary, free_port, require_supported};
use crate::nats::trust::Trust;
use crate::platform::{Platform, PlatformSettings};
use crate::producer::http_client;
use crate::scheduler::{RetryScheduler, SchedulerArgs};

/// Installs ring as rustls' process-wide crypto provider (idempotent).
pub fn install_crypto_provider() {
    let _ = rustls::crypto::ring::default_provider().install_default();
}

/// Extra behaviour for `vrsky dev`.
#[derive(Debug, Clone, Copy, Default)]
pub struct RuntimeOptions {
    /// Mount the built-in echo sink at `/dev/echo`.
    pub dev_sink: bool,
}

/// A running runtime node.
pub struct Runtime {
    /// Where the HTTP server listens.
    pub addr: SocketAddr,
    /// The control layer (tests reach the actor tree through it).
    pub control: Arc<Control>,
    /// Platform NATS connection.
    pub platform: async_nats::Client,
    /// The URL of the platform NATS.
    pub platform_url: String,
    /// The creds file this node connects to the platform NATS with.
    pub platform_creds: std::path::PathBuf,
    /// The platform's JetStream `sync_interval` as far as this node knows it.
    pub platform_sync: String,
    /// NATS credentials of tenant servers (tests mint users with it).
    pub trust: Arc<Trust>,
    /// Where the gRPC gateway listens, when it does.
    pub grpc_addr: Option<SocketAddr>,
    platform_server: Option<StopHandle>,
    /// Set at shutdown before the platform connection drains: losing it then is expected.
    platform_closing: Arc<std::sync::atomic::AtomicBool>,
    http_stop: Option<oneshot::Sender<()>>,
    http_task: tokio::task::JoinHandle<()>,
    grpc_stop: Option<oneshot::Sender<()>>,
    grpc_task: Option<tokio::task::JoinHandle<()>>,
    /// This node's membership (tenant leases).
    pub cluster: Arc<crate::cluster::ClusterHandle>,
}

impl Runtime {
    /// Starts a node from a validated configuration.
    pub async fn start(cfg: Config, opts: RuntimeOptions) -> anyhow::Result<Runtime> {
        raise_open_files_limit();
        let sealer = crate::secrets::Sealer::new(cfg.security.secrets_key.as_deref())?;
        if !sealer.encrypts() {
            warn!("security.secrets_key is unset: producer header values and signing secrets are stored in plain text");
        }
        install_crypto_provider();
        std::fs::create_dir_all(&cfg.data_dir)
            .with_context(|| format!("creating data dir {}", cfg.data_dir.display()))?;
        let (bin, version) = find_binary(cfg.nats.server_bin.as_deref()).await?;
        info!(bin = %bin.display(), %version, "nats-server found");
        let startup_timeout = Duration::from_millis(cfg.nats.startup_timeout_ms);

        // Every nats-server this node starts serves TLS from the local CA; under
        // Kubernetes, tenant servers' certificates come from a Secret instead.
        let local_ca = Arc::new(crate::nats::tls::LocalCa::load_or_create(&cfg.data_dir.join("tls"))?);
        let (platform_url, platform_server, platform_creds, platform_ca) = match &cfg.nats.platform_url {
            Some(url) => (
                url.clone(),
                None,
                cfg.nats
                    .platform_creds
                    .clone()
                    .context("nats.platform_creds is required with nats.platform_url")?,
                cfg.nats.platform_ca.clone(),
            ),
            None => {
                let p = crate::nats::platform_server::start_platform(
                    &bin,
                    ServerOptions {
                        server_name: "vrsky-platform".into(),
                        client_port: free_port()?,
                        dir: cfg.data_dir.join("platform-nats"),
                        jetstream: true,
                        sync_interval: cfg.state.platform_sync_interval.clone(),
                        adopt: false,
                        startup_timeout,
                        go_max_procs: cfg.nats.go_max_procs,
                        security: None,
                    },
                    &local_ca,
                )
                .await?;
                info!(url = %p.process.url, version = %p.process.version, sync_interval = %cfg.state.platform_sync_interval,
                    "platform nats started (jetstream, tls, operator mode)");
                (p.process.url, Some(p.process.stop), p.creds_file, Some(p.ca_file))
            }
        };
        let platform_sync = match (&cfg.nats.platform_url, cfg.state.platform_sync_interval.as_str()) {
            (Some(_), _) => "set by the external platform server".to_owned(),
            (None, s) => s.to_owned(),
        };
        info!(sync_interval = %platform_sync, "platform jetstream durability (see ARCHITECTURE.md, Durability)");
        // Once the client drains (shutdown), losing the connection is expected.
        let platform_closing = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let platform = crate::nats::platform_server::platform_options(&platform_creds, platform_ca.as_deref())
            .await
            .with_context(|| format!("reading nats.platform_creds {}", platform_creds.display()))?
            .name("vrsky-platform")
            .max_reconnects(None)
            .event_callback({
                let closing = platform_closing.clone();
                move |event| {
                    let closing = closing.clone();
                    async move { log_platform_event(&event, &closing) }
                }
            })
            .connect(platform_url.as_str())
            .await
            .with_context(|| format!("connecting to platform nats at {platform_url}"))?;
        require_supported(
            &format!("platform nats at {platform_url}"),
            &platform.server_info().version,
        )?;

        let st = &cfg.state;
        let platform_state = Platform::open(
            platform.clone(),
            PlatformSettings {
                message_state_ttl: Duration::from_secs(st.message_state_ttl_s),
                retry_queue_max_age: Duration::from_secs(st.retry_queue_max_age_s),
                dead_letter_max_age: Duration::from_secs(st.dead_letter_max_age_s),
                replicas: st.replicas,
                commit: crate::platform::CommitLimits {
                    batch_max: st.commit_batch_max_for(cfg.nats.platform_url.is_some()),
                    in_flight_max: st.commit_in_flight_max,
                },
            },
        )
        .await?;
        info!("platform state ready (message_state, retry_queue, dead_letter_queue)");
        let objects = crate::objects::Objects::open(
            &cfg.object_store,
            &cfg.claim_check,
            &cfg.data_dir,
            platform_state.wire_key().derive(crate::objects::presign::KEY_LABEL),
        )?;
        match &objects {
            Some(o) => info!(store = %o.description, threshold_bytes = o.threshold(),
                body_bytes_max = o.settings.body_bytes_max, "claim check on: larger payloads go to the object store"),
            None => info!("claim check off (object_store.kind = none)"),
        }

        let db_url = cfg.database_url();
        let db = Db::connect(&db_url)
            .await
            .with_context(|| format!("opening metadata store ({})", redact(&db_url)))?;
        info!(backend = db.backend(), "metadata store ready");

        let sealer = Arc::new(sealer);
        let (ca, ca_file) = match cfg.nats.provisioner {
            ProvisionerKind::Local => (Some(local_ca.clone()), local_ca.ca_file().to_path_buf()),
            ProvisionerKind::Kubernetes => (
                None,
                cfg.nats
                    .kubernetes
                    .ca_file
                    .clone()
                    .context("nats.kubernetes.ca_file is required")?,
            ),
        };
        let trust = Arc::new(
            Trust::open(db.clone(), sealer.clone(), ca, ca_file)
                .await
                .context("loading the NATS operator and system account")?,
        );
        // Watchers of the tree (`WatchActorTree`) may fall this many changes behind.
        let tree_events = vrsky_supervision::TreeEvents::new(4096);
        let (root, _) = spawn_root(SupervisorArgs::empty("runtime").with_events(tree_events.clone())).await?;
        let provisioner: crate::nats::SharedProvisioner = match cfg.nats.provisioner {
            ProvisionerKind::Local => Arc::new(LocalProvisioner::new(
                bin,
                cfg.data_dir.clone(),
                startup_timeout,
                cfg.nats.go_max_procs,
                trust.clone(),
            )),
            ProvisionerKind::Kubernetes => {
                let client = kube::Client::try_default()
                    .await
                    .context("connecting to the Kubernetes API (nats.provisioner = kubernetes)")?;
                let k = &cfg.nats.kubernetes;
                Arc::new(KubeProvisioner::new(
                    client,
                    KubeSettings {
                        image: k.image.clone(),
                        exporter_image: k.exporter_image.clone(),
                        ready_timeout: Duration::from_millis(k.ready_timeout_ms),
                        poll_interval: Duration::from_millis(k.poll_interval_ms),
                        tls_secret: k.tls_secret.clone(),
                    },
                    trust.clone(),
                ))
            }
        };
        let platform_settings = platform_state.settings().clone();
        let expediter = platform_state.clone();
        let directory = Arc::new(Directory::default());
        let control = Arc::new(
            Control::new(
                platform_state.clone(),
                root.clone(),
                TenantDeps {
                    db,
                    provisioner,
                    http: http_client(cfg.producer.allow_private_targets)?,
                    store: Arc::new(platform_state.clone()),
                    directory: directory.clone(),
                    settings: TenantSettings {
                        allow_private_targets: cfg.producer.allow_private_targets,
                        connect_timeout: startup_timeout,
                        health_interval: Duration::from_millis(cfg.nats.health_interval_ms),
                        instances_per_tenant_max: cfg.nats.instances_per_tenant_max,
                        retention: platform_settings.retention(),
                        subscription_capacity: SUBSCRIPTION_CAPACITY
                            .max(4 * cfg.webhook.unfinished_per_integration_max),
                        credential_rotation: Duration::from_secs_f64(cfg.security.credential_rotation_days * 86_400.0),
                        pipeline_read_max: cfg.claim_check.pipeline_read_bytes_max,
                    },
                    redrive_now: Arc::new(move |t| expediter.expedite(t)),
                    sealer,
                    wire_key: platform_state.wire_key().clone(),
                    trust: trust.clone(),
                    objects: objects.clone(),
                },
            )
            .with_tree_events(tree_events),
        );
        // Bound before the cluster starts, so this node can advertise where it listens;
        // connections wait in the backlog until the server runs.
        let listener = tokio::net::TcpListener::bind(cfg.http_addr)
            .await
            .with_context(|| format!("binding {}", cfg.http_addr))?;
        let addr = listener.local_addr()?;
        let cluster = crate::cluster::ClusterHandle::new(
            crate::cluster::node_id(cfg.cluster.node_id.as_deref()),
            advertise_url(cfg.cluster.advertise_url.as_deref(), addr),
            Duration::from_millis(cfg.cluster.lease_ttl_ms),
            Duration::from_millis(cfg.cluster.forward_wait_ms),
            crate::cluster::LeaseStore::open(
                platform.clone(),
                Duration::from_millis(cfg.cluster.lease_ttl_ms),
                st.replicas,
            )
            .await?,
        );
        // Two live nodes with one id would take each other's leases in turn: a record of
        // this id with another URL is another node (a restart has the same URL).
        if let Ok(view) = cluster.store.view().await
            && let Some(n) = view.nodes.get(&cluster.me)
            && n.value.url != cluster.url
        {
            anyhow::bail!(
                "cluster.node_id: node {} is already live at {} (last seen {} ms ago); give this node another id (VRSKY_NODE_ID), or wait {} ms if that node is gone",
                cluster.me,
                n.value.url,
                n.age_ms,
                cluster.ttl.as_millis()
            );
        }
        control.set_cluster(cluster.clone());
        // A claim is refused unless this node's lease of the tenant is current.
        let fence = cluster.clone();
        control
            .platform()
            .set_claim_fence(Arc::new(move |t| fence.may_claim(t)));
        // Webhooks for tenants other nodes run are stored here and published on the
        // tenant's NATS, not forwarded.
        control
            .directory()
            .set_remote(Arc::new(crate::cluster::ingress::RemoteIngress::new(
                control.deps().clone(),
                cluster.me.clone(),
            )));
        let cluster_args = crate::cluster::ClusterArgs {
            handle: cluster.clone(),
            control: control.clone(),
            platform: platform_state.clone(),
            rescan_after: Duration::from_millis(st.redrive_after_ms),
        };
        let member = ChildSpec::worker(crate::cluster::CLUSTER_CHILD, move |sup| {
            let args = cluster_args.clone();
            async move {
                let (r, _) = ractor::Actor::spawn_linked(None, crate::cluster::ClusterActor, args, sup).await?;
                Ok(r.get_cell())
            }
        })
        // Back fast: while it is down nobody renews this node's leases.
        .backoff(Backoff {
            initial: Duration::from_millis(100),
            max: Duration::from_secs(1),
        })
        .intensity(None);
        root.start_child(member).await?;
        settle(&cluster, &control, startup_timeout * 2).await;
        let scheduler_args = SchedulerArgs {
            platform: platform_state.clone(),
            directory,
            redrive_after: Duration::from_millis(st.redrive_after_ms),
            tick: Duration::from_millis(st.redrive_tick_ms),
            concurrency: st.scheduler_concurrency,
        };
        let scheduler = ChildSpec::worker(SCHEDULER_CHILD, move |sup| {
            let args = scheduler_args.clone();
            async move {
                let (r, _) = ractor::Actor::spawn_linked(None, RetryScheduler, args, sup).await?;
                Ok(r.get_cell())
            }
        })
        .backoff(Backoff {
            initial: Duration::from_millis(500),
            max: Duration::from_secs(10),
        })
        // A platform outage must not take the node down: keep trying, with backoff.
        .intensity(None);
        root.start_child(scheduler).await?;
        if let Some(objects) = &objects {
            let args = crate::objects::sweeper::SweeperArgs {
                objects: objects.clone(),
                platform: platform_state.clone(),
                counters: objects.sweep_counters.clone(),
            };
            let sweeper = ChildSpec::worker(SWEEPER_CHILD, move |sup| {
                let args = args.clone();
                async move {
                    let (r, _) = ractor::Actor::spawn_linked(None, crate::objects::sweeper::Sweeper, args, sup).await?;
                    Ok(r.get_cell())
                }
            })
            .backoff(Backoff {
                initial: Duration::from_millis(500),
                max: Duration::from_secs(30),
            })
            .intensity(None);
            root.start_child(sweeper).await?;
        }

        let state = AppState {
            control: control.clone(),
            admin_token: cfg.admin_token.as_deref().map(Arc::from),
            body_bytes_max: cfg.webhook.body_bytes_max,
            unfinished_max: cfg.webhook.unfinished_per_integration_max,
            refusal_delay: Duration::from_millis(cfg.webhook.refusal_delay_ms),
            platform: platform.clone(),
            platform_sync: Arc::from(platform_sync.as_str()),
            failed_auth_budget: Arc::default(),
            objects: objects.clone(),
            forwarder: crate::http::forward::node_client(),
        };
        if let Some(o) = &objects {
            o.set_http_addr(addr);
        }
        let (http_stop, stop_rx) = oneshot::channel::<()>();
        let app = router(state, opts.dev_sink);
        let (grpc_addr, grpc_stop, grpc_task) = match cfg.grpc_addr {
            None => (None, None, None),
            Some(want) => {
                let l = tokio::net::TcpListener::bind(want)
                    .await
                    .with_context(|| format!("binding the gRPC gateway to {want} (grpc_addr)"))?;
                let grpc_addr = l.local_addr()?;
                let (tx, rx) = oneshot::channel::<()>();
                let serve = crate::grpc::serve(
                    l,
                    app.clone(),
                    control.clone(),
                    platform.clone(),
                    cfg.http.max_connections,
                    async {
                        let _ = rx.await;
                    },
                );
                let task = tokio::spawn(async move {
                    if let Err(e) = serve.await {
                        tracing::error!(error = %format!("{e:#}"), "gRPC gateway stopped");
                    }
                });
                info!(addr = %grpc_addr, "vrsky gRPC gateway listening");
                (Some(grpc_addr), Some(tx), Some(task))
            }
        };
        let limits = crate::http::serve::ServeLimits {
            header_read_timeout: Duration::from_millis(cfg.http.header_read_timeout_ms),
            body_read_timeout: Duration::from_millis(cfg.http.body_read_timeout_ms),
            max_connections: cfg.http.max_connections,
        };
        let http_task = tokio::spawn(crate::http::serve::serve(listener, app, limits, async {
            let _ = stop_rx.await;
        }));
        info!(%addr, "vrsky listening");
        Ok(Runtime {
            addr,
            control,
            platform,
            platform_url,
            platform_creds,
            platform_sync,
            trust,
            grpc_addr,
            platform_server,
            platform_closing,
            http_stop: Some(http_stop),
            http_task,
            grpc_stop,
            grpc_task,
            cluster,
        })
    }

    /// The base URL of the HTTP server.
    pub fn base_url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// Stops the HTTP server, every actor (and so every tenant nats-server), the platform
    /// server if this node spawned it, and the metadata store.
    pub async fn shutdown(mut self) {
        // With other live nodes the tenants go to them first, while this one still
        // forwards their requests to the new owners; then the servers stop. Alone, the
        // servers stop first (nobody would take the tenants), then the leases go.
        let others = match self.cluster.store.view().await {
            Ok(v) => v.nodes.values().any(|n| n.id != self.cluster.me && !n.value.draining),
            Err(_) => false,
        };
        if others {
            self.hand_over().await;
        }
        if let Some(tx) = self.http_stop.take() {
            let _ = tx.send(());
        }
        if let Some(tx) = self.grpc_stop.take() {
            let _ = tx.send(());
        }
        let _ = tokio::time::timeout(Duration::from_secs(10), &mut self.http_task).await;
        if let Some(mut task) = self.grpc_task.take() {
            // The open watches end at the stop signal; this waits for the unary calls.
            if tokio::time::timeout(Duration::from_secs(5), &mut task).await.is_err() {
                task.abort();
            }
        }
        if !others {
            self.hand_over().await;
        }
        // What was stored here for other nodes' tenants is flushed to their NATS; only then
        // does the node record go, so the owners' departure scans (which follow it) see
        // every state this node wrote.
        if let Some(remote) = self.control.directory().remote() {
            let _ = tokio::time::timeout(Duration::from_secs(5), remote.close()).await;
        }
        if let Err(e) = self.cluster.store.retire(&self.cluster.me).await {
            warn!(error = %e, "node record not removed; it expires");
        }
        self.control.shutdown().await;
        // Closed before its server stops, so stopping reads as a shutdown, not an error.
        // `drain` only asks the connection to drain: the flag is set first, so a server
        // stopped before the connection has drained is not reported as an outage either.
        self.platform_closing.store(true, std::sync::atomic::Ordering::Relaxed);
        let _ = tokio::time::timeout(Duration::from_secs(5), self.platform.drain()).await;
        if let Some(p) = self.platform_server.take() {
            p.stop().await;
        }
        self.control.db().close().await;
        info!("vrsky stopped");
    }

    /// Hands this node's tenants over (make-before-break is the next owner's take-over
    /// scan): each subtree stops, its lease is released, and the node waits, up to
    /// `cluster.forward_wait_ms`, until other live nodes hold them.
    async fn hand_over(&self) {
        let Some(actor) = self.cluster.actor() else { return };
        let handed = match actor
            .call(crate::cluster::ClusterMsg::Drain, Some(Duration::from_secs(60)))
            .await
        {
            Ok(ractor::rpc::CallResult::Success(t)) => t,
            _ => return warn!("tenant hand-over did not finish; their leases expire instead"),
        };
        let me = self.cluster.me.clone();
        let deadline = tokio::time::Instant::now() + self.cluster.forward_wait;
        loop {
            let view = match self.cluster.store.view().await {
                Ok(v) => v,
                Err(_) => break,
            };
            if !view.nodes.values().any(|n| n.id != me && !n.value.draining) {
                break;
            }
            let owned = handed
                .iter()
                .all(|t| view.leases.get(t).is_some_and(|l| l.lease.owner != me));
            if owned {
                info!(tenants = handed.len(), "tenants handed over to other nodes");
                // Requests the others sent here before they heard are answered (forwarded
                // on, or "not the owner" for them to retry) before the server stops.
                tokio::time::sleep(HAND_OVER_LINGER).await;
                break;
            }
            if tokio::time::Instant::now() >= deadline {
                warn!("not every tenant was taken over in time; the others claim them later");
                break;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
}

/// The base URL other nodes reach this one at: the configured one, else the bound
/// address, with the host name in place of an unspecified IP.
fn advertise_url(configured: Option<&str>, addr: SocketAddr) -> String {
    if let Some(url) = configured {
        return url.trim_end_matches('/').to_owned();
    }
    if addr.ip().is_unspecified() {
        let host = std::fs::read_to_string("/proc/sys/kernel/hostname").unwrap_or_else(|_| "localhost".into());
        return format!("http://{}:{}", host.trim(), addr.port());
    }
    format!("http://{addr}")
}

/// Waits for the cluster actor's first tick (its claims), then, up to `wait` in all, for
/// the tenants it started here to run. A tenant that does not start keeps being retried
/// by its actor, with backoff; meanwhile its webhooks get 503.
async fn settle(cluster: &crate::cluster::ClusterHandle, control: &Control, wait: Duration) {
    if let Some(actor) = cluster.actor() {
        let _ = actor.call(crate::cluster::ClusterMsg::Settled, Some(wait)).await;
    }
    let waits = control.directory().all().into_iter().map(|(t, _)| async move {
        if let Err(e) = control.await_running(&t, wait).await {
            warn!(tenant_id = %t, error = %e, "tenant not running yet; its actor keeps trying");
        }
    });
    futures::future::join_all(waits).await;
}

/// Raises this process's open-files soft limit to its hard limit: every connection, tenant
/// NATS client and nats-server pipe is a descriptor, and the usual soft limit of 1,024 is
/// reached long before the connection cap.
fn raise_open_files_limit() {
    match rlimit::increase_nofile_limit(u64::MAX) {
        Ok(n) => tracing::debug!(limit = n, "open files limit"),
        Err(e) => warn!(error = %e, "cannot raise the open files limit"),
    }
}

/// Logs an event of the platform NATS connection (async-nats' own event log is at `info`,
/// which the default filter leaves out): an outage warns, a shutdown is quiet.
fn log_platform_event(event: &async_nats::Event, closing: &std::sync::atomic::AtomicBool) {
    use async_nats::Event;
    use std::sync::atomic::Ordering;
    match event {
        Event::Draining | Event::Closed => {
            closing.store(true, Ordering::Relaxed);
            tracing::debug!(%event, "platform nats");
        }
        _ if closing.load(Ordering::Relaxed) => tracing::debug!(%event, "platform nats"),
        Event::Connected => info!("platform nats connected"),
        Event::Disconnected => warn!("platform nats disconnected; reconnecting"),
        other => warn!(event = %other, "platform nats"),
    }
}

/// Hides a password in a database URL for logs.
fn redact(url: &str) -> String {
    match (url.find("://"), url.rfind('@')) {
        (Some(s), Some(at)) if at > s => {
            let creds = &url[s + 3..at];
            match creds.split_once(':') {
                Some((user, _)) => format!("{}{}:***{}", &url[..s + 3], user, &url[at..]),
                None => url.to_owned(),
            }
        }
        _ => url.to_owned(),
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn redacts_passwords() {
        assert_eq!(super::redact("postgres://u:secret@h/db"), "postgres://u:***@h/db");
        assert_eq!(super::redact("postgres://u@h/db"), "postgres://u@h/db");
        assert_eq!(super::redact("sqlite://x.db"), "sqlite://x.db");
    }
}
