//! The gRPC gateway (package `vrsky.v1`, `proto/vrsky/v1/*.proto`): every REST operation
//! as an RPC, run through the REST router itself (`rest.rs`), the live actor tree as a
//! stream (`watch.rs`), and the standard health and reflection (v1 and v1alpha) services.
//! It listens on `grpc_addr` (`--grpc-addr`), plaintext HTTP/2.

mod health;
pub(crate) mod operations;
pub mod pb;
pub(crate) mod rest;
mod services;
mod status;
mod watch;

use std::sync::Arc;

use anyhow::Context as _;
use tokio::net::TcpListener;

use crate::control::Control;

pub(crate) use rest::ViaRpc;

/// Serves the gateway on `listener` until `shutdown` resolves. `api` is the node's REST
/// router, which every unary RPC runs through; at most `max_connections` connections are
/// served at once (`http.max_connections`, as on the REST port: past it new ones wait in
/// the listen backlog). Health follows the node's readiness (`/readyz`'s checks, with the
/// platform connection `platform`).
pub async fn serve(
    listener: TcpListener,
    api: axum::Router,
    control: Arc<Control>,
    platform: async_nats::Client,
    max_connections: usize,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> anyhow::Result<()> {
    let (stop, stopping) = tokio::sync::watch::channel(false);
    let gateway = services::Gateway {
        rest: rest::Rest::new(api).context("loading the gRPC descriptors")?,
        control: control.clone(),
        stopping,
    };
    let (health, health_service) = tonic_health::server::health_reporter();
    health::set_all(&health, tonic_health::ServingStatus::Serving).await;
    // Aborted when the gateway stops, however it stops.
    let mut follower = vrsky_actors::integration::AbortOnDrop(tokio::spawn(health::follow(
        health.clone(),
        health::READINESS_POLL,
        move || {
            let (control, platform) = (control.clone(), platform.clone());
            async move { crate::http::Readiness::check(&control, &platform).await.ready() }
        },
    )));
    let reflection_v1 = tonic_reflection::server::Builder::configure()
        .register_encoded_file_descriptor_set(pb::DESCRIPTOR_SET)
        .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET)
        .build_v1()
        .context("building gRPC reflection (v1)")?;
    let reflection_v1alpha = tonic_reflection::server::Builder::configure()
        .register_encoded_file_descriptor_set(pb::DESCRIPTOR_SET)
        .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET)
        .build_v1alpha()
        .context("building gRPC reflection (v1alpha)")?;
    let incoming = tokio_stream_of(listener, max_connections);
    // At shutdown: health says NOT_SERVING and the open watches end, then tonic drains.
    let reporter = health.clone();
    let shutdown = async move {
        shutdown.await;
        // The follower ends first, so nothing sets SERVING again.
        follower.0.abort();
        let _ = (&mut follower.0).await;
        health::set_all(&reporter, tonic_health::ServingStatus::NotServing).await;
        let _ = stop.send(true);
    };
    tonic::transport::Server::builder()
        // Dead peers are found and their connections closed; one connection cannot
        // take more than its share of the node.
        .http2_keepalive_interval(Some(std::time::Duration::from_secs(30)))
        .http2_keepalive_timeout(Some(std::time::Duration::from_secs(10)))
        .tcp_keepalive(Some(std::time::Duration::from_secs(60)))
        .concurrency_limit_per_connection(256)
        .add_service(health_service)
        .add_service(reflection_v1)
        .add_service(reflection_v1alpha)
        .add_service(pb::tenant_service_server::TenantServiceServer::new(gateway.clone()))
        .add_service(pb::integration_service_server::IntegrationServiceServer::new(
            gateway.clone(),
        ))
        .add_service(pb::nats_instance_service_server::NatsInstanceServiceServer::new(
            gateway.clone(),
        ))
        .add_service(pb::message_service_server::MessageServiceServer::new(gateway.clone()))
        .add_service(pb::dead_letter_service_server::DeadLetterServiceServer::new(
            gateway.clone(),
        ))
        .add_service(pb::api_key_service_server::ApiKeyServiceServer::new(gateway.clone()))
        .add_service(pb::audit_service_server::AuditServiceServer::new(gateway.clone()))
        .add_service(pb::cluster_service_server::ClusterServiceServer::new(gateway.clone()))
        .add_service(pb::actor_tree_service_server::ActorTreeServiceServer::new(gateway))
        .serve_with_incoming_shutdown(incoming, shutdown)
        .await
        .context("serving gRPC")
}

/// The gateway's services, as health checks name them.
pub const SERVICES: &[&str] = &[
    "vrsky.v1.TenantService",
    "vrsky.v1.IntegrationService",
    "vrsky.v1.NatsInstanceService",
    "vrsky.v1.MessageService",
    "vrsky.v1.DeadLetterService",
    "vrsky.v1.ApiKeyService",
    "vrsky.v1.AuditService",
    "vrsky.v1.ActorTreeService",
    "vrsky.v1.ClusterService",
];

/// The accepted connections of `listener`, as tonic takes them, at most `max` open at
/// once: the next is accepted only when one has closed.
fn tokio_stream_of(
    listener: TcpListener,
    max: usize,
) -> impl futures::Stream<Item = Result<Capped, std::io::Error>> + Send {
    let slots = Arc::new(tokio::sync::Semaphore::new(max.max(1)));
    futures::stream::unfold((listener, slots), |(l, slots)| async move {
        let permit = slots.clone().acquire_owned().await.ok()?;
        let next = l.accept().await.map(|(s, _)| {
            let _ = s.set_nodelay(true);
            Capped { io: s, _slot: permit }
        });
        if let Err(e) = &next {
            // Out of descriptors, say: tonic retries at once, so wait a little first.
            tracing::warn!(error = %e, "gRPC accept failed");
            tokio::time::sleep(std::time::Duration::from_millis(50)).await;
        }
        Some((next, (l, slots)))
    })
}

/// A connection holding one of the listener's slots until it closes.
struct Capped {
    io: tokio::net::TcpStream,
    _slot: tokio::sync::OwnedSemaphorePermit,
}

impl tonic::transport::server::Connected for Capped {
    type ConnectInfo = <tokio::net::TcpStream as tonic::transport::server::Connected>::ConnectInfo;
    fn connect_info(&self) -> Self::ConnectInfo {
        self.io.connect_info()
    }
}

impl tokio::io::AsyncRead for Capped {
    fn poll_read(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &mut tokio::io::ReadBuf<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        std::pin::Pin::new(&mut self.io).poll_read(cx, buf)
    }
}

impl tokio::io::AsyncWrite for Capped {
    fn poll_write(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &[u8],
    ) -> std::task::Poll<std::io::Result<usize>> {
        std::pin::Pin::new(&mut self.io).poll_write(cx, buf)
    }
    fn poll_flush(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        std::pin::Pin::new(&mut self.io).poll_flush(cx)
    }
    fn poll_shutdown(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        std::pin::Pin::new(&mut self.io).poll_shutdown(cx)
    }
    fn poll_write_vectored(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        bufs: &[std::io::IoSlice<'_>],
    ) -> std::task::Poll<std::io::Result<usize>> {
        std::pin::Pin::new(&mut self.io).poll_write_vectored(cx, bufs)
    }
    fn is_write_vectored(&self) -> bool {
        self.io.is_write_vectored()
    }
}
