//! NATS adapters: local nats-server processes (tenant instances and the dev platform
//! server), and client connections.

pub mod auth_events;
pub mod jwt;
pub mod platform_server;
pub mod process;
pub mod tls;
pub mod trust;

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use futures::future::BoxFuture;
use vrsky_actors::nats_instance::{InstanceSpec, ProvisionError, Provisioner, RunningInstance};
use vrsky_actors::tenant::Endpoint;

use process::{ServerOptions, ServerSecurity, start_server};
use trust::Trust;

/// Runs each tenant instance as a local `nats-server` process (NATS core, no JetStream)
/// in `<data_dir>/tenants/<tenant>/<N>/`, on the instance's fixed client port, in
/// operator mode (the tenant's account only) with TLS from the local CA.
#[derive(Debug, Clone)]
pub struct LocalProvisioner {
    bin: PathBuf,
    base_dir: PathBuf,
    startup_timeout: Duration,
    go_max_procs: u16,
    trust: Arc<Trust>,
}

impl LocalProvisioner {
    /// A provisioner using a binary already checked by [`process::find_binary`].
    /// `go_max_procs` is each server's `GOMAXPROCS` (0: Go's default). `trust` must have
    /// a local CA.
    pub fn new(
        bin: PathBuf,
        base_dir: PathBuf,
        startup_timeout: Duration,
        go_max_procs: u16,
        trust: Arc<Trust>,
    ) -> Self {
        LocalProvisioner {
            bin,
            base_dir,
            startup_timeout,
            go_max_procs,
            trust,
        }
    }

    fn instance_dir(&self, spec: &InstanceSpec) -> PathBuf {
        self.base_dir
            .join("tenants")
            .join(spec.tenant_id.as_str())
            .join(spec.instance_number.to_string())
    }
}

impl Provisioner for LocalProvisioner {
    fn endpoint(&self, _tenant: &vrsky_actors::TenantId, _number: u32) -> Result<Endpoint, ProvisionError> {
        Ok(Endpoint {
            host: "127.0.0.1".into(),
            port: process::free_port()?,
        })
    }

    fn decommission(&self, spec: InstanceSpec) -> BoxFuture<'static, Result<(), ProvisionError>> {
        let dir = self.instance_dir(&spec);
        Box::pin(async move {
            match std::fs::remove_dir_all(&dir) {
                Ok(()) => Ok(()),
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
                Err(e) => Err(e.into()),
            }
        })
    }

    fn start(&self, spec: InstanceSpec) -> BoxFuture<'static, Result<RunningInstance, ProvisionError>> {
        let this = self.clone();
        Box::pin(async move {
            let dir = this.instance_dir(&spec);
            let fail =
                |e: &dyn std::fmt::Display| ProvisionError::NotReady(format!("credentials of {}: {e}", spec.tenant_id));
            let account = this.trust.tenant(&spec.tenant_id).await.map_err(|e| fail(&e))?;
            let auth = this.trust.server_auth(&account).map_err(|e| fail(&e))?;
            let ca = this
                .trust
                .local_ca()
                .ok_or_else(|| ProvisionError::NotReady("the local provisioner needs a local CA".into()))?;
            let tls = ca.issue_loopback_into(&dir).map_err(|e| fail(&e))?;
            let opts = ServerOptions {
                server_name: format!("nats-{}-{}", spec.tenant_id, spec.instance_number),
                client_port: spec.client_port,
                dir,
                jetstream: false,
                sync_interval: String::new(),
                adopt: true,
                startup_timeout: this.startup_timeout,
                go_max_procs: this.go_max_procs,
                security: Some(ServerSecurity { auth, tls }),
            };
            let p = start_server(&this.bin, &opts).await?;
            Ok(RunningInstance {
                url: p.url,
                server_version: p.version,
                monitor_url: Some(p.monitor_url),
                exited: p.exited,
                stop: p.stop,
            })
        })
    }
}

/// Shared handle to a provisioner.
pub type SharedProvisioner = Arc<dyn Provisioner>;

/// Connects a client that reconnects forever and buffers while disconnected. Each of its
/// subscriptions holds up to `subscription_capacity` messages before the client drops
/// (a "slow consumer", logged with the client's name); callers size it above what a
/// worker can have outstanding (the admission bound), so drops are not how load is shed.
/// `options` carry its credentials and TLS (`Trust::tenant_options`).
pub async fn connect_tenant(
    options: async_nats::ConnectOptions,
    urls: &[String],
    name: &str,
    subscription_capacity: usize,
    on_slow_consumer: Arc<dyn Fn() + Send + Sync>,
) -> Result<async_nats::Client, async_nats::ConnectError> {
    let client_name = name.to_owned();
    options
        .name(name)
        .subscription_capacity(subscription_capacity.max(1))
        .event_callback(move |event| {
            let (client_name, on_slow_consumer) = (client_name.clone(), on_slow_consumer.clone());
            async move {
                if let async_nats::Event::SlowConsumer(sid) = event {
                    tracing::warn!(client = %client_name, sid, "slow consumer: the subscription buffer was full and messages were dropped; they are re-driven now");
                    on_slow_consumer();
                }
            }
        })
        .retry_on_initial_connect()
        .max_reconnects(None)
        .reconnect_delay_callback(|attempts| {
            // 0, 50, 100, ... ms, capped at 1 s: a restarted local instance is back fast.
            Duration::from_millis((attempts as u64 * 50).min(1000))
        })
        .connect(urls)
        .await
}
