//! The Kubernetes provisioner: each tenant instance is a single-replica Deployment, a
//! Service (its DNS name) and a Secret (its nats-server config), all named
//! `nats-{tenant}-{N}` in namespace `vrsky-tenants`, applied with server-side apply.
//!
//! **Invariant:** the Service and the Secret carry an owner reference to the Deployment,
//! and every object carries the VRSky labels, so deleting the Deployment (decommission)
//! garbage-collects the rest and `kubectl get all -l app.kubernetes.io/managed-by=vrsky`
//! finds everything VRSky made.

use std::collections::BTreeMap;
use std::time::Duration;

use futures::future::BoxFuture;
use k8s_openapi::api::apps::v1::{Deployment, DeploymentSpec};
use k8s_openapi::api::core::v1::{
    Container, ContainerPort, HTTPGetAction, PodSpec, PodTemplateSpec, Probe, ResourceRequirements, Secret,
    SecretVolumeSource, Service, ServicePort, ServiceSpec, Volume, VolumeMount,
};
use k8s_openapi::apimachinery::pkg::api::resource::Quantity;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{LabelSelector, ObjectMeta, OwnerReference};
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use kube::Api;
use kube::api::{DeleteParams, Patch, PatchParams};
use tokio::sync::oneshot;
use tracing::{info, warn};

use vrsky_actors::nats_instance::{InstanceSpec, ProvisionError, Provisioner, RunningInstance, StopHandle};
use vrsky_actors::tenant::Endpoint;

/// Namespace of tenant instances.
pub const NAMESPACE: &str = "vrsky-tenants";
/// Server-side apply field manager.
pub const FIELD_MANAGER: &str = "vrsky";
const CLIENT_PORT: i32 = 4222;
const MONITOR_PORT: i32 = 8222;

/// Settings of the Kubernetes provisioner.
#[derive(Debug, Clone)]
pub struct KubeSettings {
    /// nats-server image (2.10 or newer), e.g. `nats:2.10-alpine`.
    pub image: String,
    /// The prometheus-nats-exporter sidecar's image.
    pub exporter_image: String,
    /// How long an instance may take to become ready.
    pub ready_timeout: Duration,
    /// How often readiness is polled, during start and afterwards.
    pub poll_interval: Duration,
    /// Secret with the servers' certificate (`tls.crt`, `tls.key`).
    pub tls_secret: String,
}

/// Runs tenant instances as Kubernetes objects.
#[derive(Clone)]
pub struct KubeProvisioner {
    client: kube::Client,
    settings: KubeSettings,
    trust: std::sync::Arc<crate::nats::trust::Trust>,
}

/// Where an instance's certificate is mounted.
const TLS_DIR: &str = "/etc/nats-tls";

/// `nats-{tenant}-{N}`: the name of every object of an instance, and its DNS label.
pub fn instance_name(spec: &InstanceSpec) -> Result<String, ProvisionError> {
    let name = format!("nats-{}-{}", spec.tenant_id, spec.instance_number);
    if name.len() > 63 {
        return Err(ProvisionError::NotReady(format!(
            "{name} is longer than the 63 characters a Kubernetes name allows (tenant id too long for this provisioner)"
        )));
    }
    Ok(name)
}

/// The labels on every object of an instance.
pub fn labels(spec: &InstanceSpec, name: &str) -> BTreeMap<String, String> {
    BTreeMap::from([
        ("app".into(), "nats".into()),
        ("app.kubernetes.io/name".into(), "nats".into()),
        ("app.kubernetes.io/instance".into(), name.into()),
        ("app.kubernetes.io/component".into(), "tenant-nats".into()),
        ("app.kubernetes.io/managed-by".into(), FIELD_MANAGER.into()),
        ("vrsky.io/tenant".into(), spec.tenant_id.to_string()),
        ("vrsky.io/instance".into(), spec.instance_number.to_string()),
    ])
}

fn selector(name: &str) -> BTreeMap<String, String> {
    BTreeMap::from([("app.kubernetes.io/instance".into(), name.into())])
}

fn meta(spec: &InstanceSpec, name: &str, owner: Option<&OwnerReference>) -> ObjectMeta {
    ObjectMeta {
        name: Some(name.into()),
        namespace: Some(NAMESPACE.into()),
        labels: Some(labels(spec, name)),
        owner_references: owner.map(|o| vec![o.clone()]),
        ..Default::default()
    }
}

/// The nats-server configuration of an instance (NATS core, no JetStream): operator
/// mode with `auth` (the tenant's account only, `Trust::server_auth`), and TLS with the
/// certificate mounted from the TLS Secret.
pub fn server_config(name: &str, auth: &str) -> String {
    let tls = crate::nats::tls::server_tls_block(
        &std::path::Path::new(TLS_DIR).join("tls.crt"),
        &std::path::Path::new(TLS_DIR).join("tls.key"),
    );
    format!(
        "server_name: \"{name}\"\nlisten: \"0.0.0.0:{CLIENT_PORT}\"\nhttp: \"0.0.0.0:{MONITOR_PORT}\"\nmax_payload: 8MB\nmax_pending: 64MB\n{auth}{tls}"
    )
}

/// The Deployment: one replica, 2 CPU and 4 GiB, ready when `/healthz` answers; its
/// config from the instance's Secret, its certificate from `tls_secret`.
pub fn deployment(
    spec: &InstanceSpec,
    image: &str,
    exporter_image: &str,
    tls_secret: &str,
) -> Result<Deployment, ProvisionError> {
    let name = instance_name(spec)?;
    let resources = BTreeMap::from([
        ("cpu".to_owned(), Quantity("2".into())),
        ("memory".to_owned(), Quantity("4Gi".into())),
    ]);
    let health = |initial: i32, period: i32| Probe {
        http_get: Some(HTTPGetAction {
            path: Some("/healthz".into()),
            port: IntOrString::Int(MONITOR_PORT),
            ..Default::default()
        }),
        initial_delay_seconds: Some(initial),
        period_seconds: Some(period),
        ..Default::default()
    };
    Ok(Deployment {
        metadata: meta(spec, &name, None),
        spec: Some(DeploymentSpec {
            replicas: Some(1),
            selector: LabelSelector {
                match_labels: Some(selector(&name)),
                ..Default::default()
            },
            template: PodTemplateSpec {
                metadata: Some(ObjectMeta {
                    labels: Some(labels(spec, &name)),
                    ..Default::default()
                }),
                spec: Some(PodSpec {
                    containers: vec![
                        Container {
                            name: "nats".into(),
                            image: Some(image.into()),
                            args: Some(vec!["-c".into(), "/etc/nats/nats.conf".into()]),
                            ports: Some(vec![
                                ContainerPort {
                                    name: Some("client".into()),
                                    container_port: CLIENT_PORT,
                                    ..Default::default()
                                },
                                ContainerPort {
                                    name: Some("monitor".into()),
                                    container_port: MONITOR_PORT,
                                    ..Default::default()
                                },
                            ]),
                            resources: Some(ResourceRequirements {
                                requests: Some(resources.clone()),
                                limits: Some(resources),
                                ..Default::default()
                            }),
                            readiness_probe: Some(health(2, 5)),
                            liveness_probe: Some(health(10, 10)),
                            volume_mounts: Some(vec![
                                VolumeMount {
                                    name: "config".into(),
                                    mount_path: "/etc/nats".into(),
                                    read_only: Some(true),
                                    ..Default::default()
                                },
                                VolumeMount {
                                    name: "tls".into(),
                                    mount_path: TLS_DIR.into(),
                                    read_only: Some(true),
                                    ..Default::default()
                                },
                            ]),
                            ..Default::default()
                        },
                        exporter(exporter_image),
                    ],
                    volumes: Some(vec![
                        Volume {
                            name: "config".into(),
                            secret: Some(SecretVolumeSource {
                                secret_name: Some(name.clone()),
                                ..Default::default()
                            }),
                            ..Default::default()
                        },
                        Volume {
                            name: "tls".into(),
                            secret: Some(SecretVolumeSource {
                                secret_name: Some(tls_secret.into()),
                                ..Default::default()
                            }),
                            ..Default::default()
                        },
                    ]),
                    ..Default::default()
                }),
            },
            ..Default::default()
        }),
        status: None,
    })
}

/// Port of the prometheus-nats-exporter sidecar (named `metrics`).
pub const EXPORTER_PORT: i32 = 7777;

/// The prometheus-nats-exporter sidecar: the server's `/varz`, `/connz` and `/subsz` in
/// the Prometheus format on port `metrics`, for the `vrsky-tenant-nats` scrape job.
fn exporter(image: &str) -> Container {
    let resources = |cpu: &str, mem: &str| {
        BTreeMap::from([
            ("cpu".to_owned(), Quantity(cpu.into())),
            ("memory".to_owned(), Quantity(mem.into())),
        ])
    };
    Container {
        name: "metrics-exporter".into(),
        image: Some(image.into()),
        args: Some(
            [
                "-varz",
                "-connz",
                "-subz",
                "-port",
                "7777",
                &format!("http://localhost:{MONITOR_PORT}"),
            ]
            .map(str::to_owned)
            .to_vec(),
        ),
        ports: Some(vec![ContainerPort {
            name: Some("metrics".into()),
            container_port: EXPORTER_PORT,
            ..Default::default()
        }]),
        resources: Some(ResourceRequirements {
            requests: Some(resources("10m", "32Mi")),
            limits: Some(resources("100m", "64Mi")),
            ..Default::default()
        }),
        ..Default::default()
    }
}

/// The Service: the instance's DNS name, client and monitoring ports.
pub fn service(spec: &InstanceSpec, owner: Option<&OwnerReference>) -> Result<Service, ProvisionError> {
    let name = instance_name(spec)?;
    Ok(Service {
        metadata: meta(spec, &name, owner),
        spec: Some(ServiceSpec {
            selector: Some(selector(&name)),
            ports: Some(vec![
                ServicePort {
                    name: Some("client".into()),
                    port: CLIENT_PORT,
                    target_port: Some(IntOrString::Int(CLIENT_PORT)),
                    ..Default::default()
                },
                ServicePort {
                    name: Some("monitor".into()),
                    port: MONITOR_PORT,
                    target_port: Some(IntOrString::Int(MONITOR_PORT)),
                    ..Default::default()
                },
            ]),
            ..Default::default()
        }),
        status: None,
    })
}

/// The Secret holding the instance's nats-server configuration (with its operator and
/// account JWTs: public claims, no seeds).
pub fn secret(spec: &InstanceSpec, owner: Option<&OwnerReference>, auth: &str) -> Result<Secret, ProvisionError> {
    let name = instance_name(spec)?;
    Ok(Secret {
        metadata: meta(spec, &name, owner),
        string_data: Some(BTreeMap::from([("nats.conf".into(), server_config(&name, auth))])),
        type_: Some("Opaque".into()),
        ..Default::default()
    })
}

/// The client URL of an instance: its Service's cluster DNS name.
pub fn instance_url(spec: &InstanceSpec) -> Result<String, ProvisionError> {
    Ok(format!(
        "nats://{}.{NAMESPACE}.svc.cluster.local:{CLIENT_PORT}",
        instance_name(spec)?
    ))
}

/// The instance's monitoring endpoint through its Service (port `monitor`, 8222).
pub fn monitor_url(spec: &InstanceSpec) -> Result<String, ProvisionError> {
    Ok(format!(
        "http://{}.{NAMESPACE}.svc.cluster.local:{MONITOR_PORT}",
        instance_name(spec)?
    ))
}

fn api_err(e: kube::Error) -> ProvisionError {
    ProvisionError::NotReady(format!("kubernetes api: {e}"))
}

fn ready(d: &Deployment) -> bool {
    d.status.as_ref().and_then(|s| s.ready_replicas).unwrap_or(0) >= 1
}

impl KubeProvisioner {
    /// A provisioner over a kube client; `trust` gives each instance its accounts.
    pub fn new(client: kube::Client, settings: KubeSettings, trust: std::sync::Arc<crate::nats::trust::Trust>) -> Self {
        KubeProvisioner {
            client,
            settings,
            trust,
        }
    }

    async fn apply(&self, spec: &InstanceSpec) -> Result<(), ProvisionError> {
        let name = instance_name(spec)?;
        let fail =
            |e: &dyn std::fmt::Display| ProvisionError::NotReady(format!("credentials of {}: {e}", spec.tenant_id));
        let account = self.trust.tenant(&spec.tenant_id).await.map_err(|e| fail(&e))?;
        let auth = self.trust.server_auth(&account).map_err(|e| fail(&e))?;
        let pp = PatchParams::apply(FIELD_MANAGER).force();
        let deployments: Api<Deployment> = Api::namespaced(self.client.clone(), NAMESPACE);
        let d = deployments
            .patch(
                &name,
                &pp,
                &Patch::Apply(&deployment(
                    spec,
                    &self.settings.image,
                    &self.settings.exporter_image,
                    &self.settings.tls_secret,
                )?),
            )
            .await
            .map_err(api_err)?;
        let owner = OwnerReference {
            api_version: "apps/v1".into(),
            kind: "Deployment".into(),
            name: name.clone(),
            uid: d.metadata.uid.clone().unwrap_or_default(),
            controller: Some(true),
            block_owner_deletion: Some(true),
        };
        let services: Api<Service> = Api::namespaced(self.client.clone(), NAMESPACE);
        services
            .patch(&name, &pp, &Patch::Apply(&service(spec, Some(&owner))?))
            .await
            .map_err(api_err)?;
        let secrets: Api<Secret> = Api::namespaced(self.client.clone(), NAMESPACE);
        secrets
            .patch(&name, &pp, &Patch::Apply(&secret(spec, Some(&owner), &auth)?))
            .await
            .map_err(api_err)?;
        Ok(())
    }

    async fn wait_ready(&self, name: &str) -> Result<(), ProvisionError> {
        let deployments: Api<Deployment> = Api::namespaced(self.client.clone(), NAMESPACE);
        let deadline = tokio::time::Instant::now() + self.settings.ready_timeout;
        loop {
            if let Some(d) = deployments.get_opt(name).await.map_err(api_err)?
                && ready(&d)
            {
                return Ok(());
            }
            if tokio::time::Instant::now() >= deadline {
                return Err(ProvisionError::NotReady(format!(
                    "{name} not ready within {} s",
                    self.settings.ready_timeout.as_secs()
                )));
            }
            tokio::time::sleep(self.settings.poll_interval).await;
        }
    }

    /// Deletes the instance: the Deployment in the foreground, so its owned Service and
    /// Secret are collected with it.
    pub async fn delete(&self, spec: &InstanceSpec) -> Result<(), ProvisionError> {
        let name = instance_name(spec)?;
        let deployments: Api<Deployment> = Api::namespaced(self.client.clone(), NAMESPACE);
        match deployments.delete(&name, &DeleteParams::foreground()).await {
            Ok(_) => Ok(()),
            Err(kube::Error::Api(s)) if s.code == 404 => Ok(()),
            Err(e) => Err(api_err(e)),
        }
    }
}

impl Provisioner for KubeProvisioner {
    fn endpoint(&self, tenant: &vrsky_actors::TenantId, number: u32) -> Result<Endpoint, ProvisionError> {
        let spec = InstanceSpec {
            tenant_id: tenant.clone(),
            instance_number: number,
            client_port: CLIENT_PORT as u16,
        };
        Ok(Endpoint {
            host: format!("{}.{NAMESPACE}.svc.cluster.local", instance_name(&spec)?),
            port: CLIENT_PORT as u16,
        })
    }

    fn decommission(&self, spec: InstanceSpec) -> BoxFuture<'static, Result<(), ProvisionError>> {
        let this = self.clone();
        Box::pin(async move { this.delete(&spec).await })
    }

    fn start(&self, spec: InstanceSpec) -> BoxFuture<'static, Result<RunningInstance, ProvisionError>> {
        let this = self.clone();
        Box::pin(async move {
            let name = instance_name(&spec)?;
            this.apply(&spec).await?;
            this.wait_ready(&name).await?;
            info!(instance = %name, "kubernetes nats instance ready");
            // Watch readiness; the actor restarts (re-applies) an instance that goes away.
            let (exit_tx, exited) = oneshot::channel();
            let (stop_tx, mut stop_rx) = oneshot::channel::<()>();
            let (done_tx, done_rx) = oneshot::channel();
            let deployments: Api<Deployment> = Api::namespaced(this.client.clone(), NAMESPACE);
            let poll = this.settings.poll_interval;
            let watched = name.clone();
            tokio::spawn(async move {
                let mut misses = 0u32;
                loop {
                    tokio::select! {
                        _ = tokio::time::sleep(poll) => {}
                        // Stopping the actor stops watching; the instance stays (delete is
                        // a decommission, not a restart).
                        _ = &mut stop_rx => break,
                    }
                    match deployments.get_opt(&watched).await {
                        Ok(Some(d)) if ready(&d) => misses = 0,
                        Ok(None) => {
                            let _ = exit_tx.send(format!("deployment {watched} was deleted"));
                            break;
                        }
                        Ok(Some(_)) | Err(_) => {
                            misses += 1;
                            if misses >= 3 {
                                warn!(instance = %watched, "kubernetes nats instance not ready");
                                let _ = exit_tx.send(format!("{watched} not ready for 3 checks"));
                                break;
                            }
                        }
                    }
                }
                let _ = done_tx.send(());
            });
            Ok(RunningInstance {
                url: instance_url(&spec)?,
                server_version: this.settings.image.clone(),
                monitor_url: Some(monitor_url(&spec)?),
                exited,
                stop: StopHandle::new(stop_tx, done_rx),
            })
        })
    }
}

#[cfg(test)]
mod tests;
