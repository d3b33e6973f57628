//! The control plane's latency: `GetTenant` over the gRPC gateway and `GET
//! /api/tenants/{t}` over REST, each paced at a fixed rate against the node under test, so
//! the gateway's own cost (its in-process REST call and JSON transcoding) shows against
//! the REST call it runs.

use std::time::{Duration, Instant};

use serde::Serialize;
use vrsky_runtime::grpc::pb;

use super::{Phase, percentile};

/// The two paced phases.
#[derive(Debug, Clone, Serialize)]
pub(crate) struct ControlCalls {
    /// Calls per second asked for.
    pub rate_per_s: f64,
    /// `vrsky.v1.TenantService/GetTenant` over gRPC (one HTTP/2 connection).
    pub grpc_get_tenant: Phase,
    /// `GET /api/tenants/{t}` over REST (pooled HTTP/1.1 keep-alive connections).
    pub rest_get_tenant: Phase,
}

/// Paces `n` calls of `call` at `rate` per second (each on its own task, so a slow one
/// does not hold the next back), and measures each from when it is made.
async fn paced<F, Fut>(n: usize, rate: f64, call: F) -> anyhow::Result<Phase>
where
    F: Fn() -> Fut,
    Fut: std::future::Future<Output = anyhow::Result<()>> + Send + 'static,
{
    let mut tick = tokio::time::interval(Duration::from_secs_f64(1.0 / rate));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Burst);
    let mut tasks = tokio::task::JoinSet::new();
    let start = Instant::now();
    for _ in 0..n {
        tick.tick().await;
        // Timed from when the call is made: Tokio's timer fires up to a millisecond after
        // the tick is due, and that lag is the load generator's, not the node's.
        let at = Instant::now();
        let fut = call();
        tasks.spawn(async move { fut.await.map(|()| at.elapsed()) });
    }
    let mut lat = Vec::with_capacity(n);
    while let Some(r) = tasks.join_next().await {
        lat.push(r??);
    }
    let elapsed = start.elapsed().as_secs_f64();
    lat.sort();
    Ok(Phase {
        completed: lat.len(),
        rate_per_s: lat.len() as f64 / elapsed,
        p50_ms: percentile(&lat, 0.5),
        p99_ms: percentile(&lat, 0.99),
        cpu_us_per_msg: None,
    })
}

/// `n` calls of each at `rate`, REST first.
pub(super) async fn measure(
    grpc: std::net::SocketAddr,
    rest: &str,
    token: &str,
    tenant: &str,
    n: usize,
    rate: f64,
) -> anyhow::Result<ControlCalls> {
    let channel = tonic::transport::Channel::from_shared(format!("http://{grpc}"))?
        .connect()
        .await?;
    let client = pb::tenant_service_client::TenantServiceClient::new(channel);
    let bearer: tonic::metadata::MetadataValue<tonic::metadata::Ascii> = format!("Bearer {token}").parse()?;
    // Warm the connection and the node's code paths.
    for _ in 0..100 {
        let mut r = tonic::Request::new(pb::GetTenantRequest {
            tenant_id: tenant.into(),
        });
        r.metadata_mut().insert("authorization", bearer.clone());
        client.clone().get_tenant(r).await?;
    }
    let http = reqwest::Client::new();
    let url = format!("{rest}/api/tenants/{tenant}");
    for _ in 0..100 {
        http.get(&url).bearer_auth(token).send().await?.error_for_status()?;
    }
    let rest_get_tenant = paced(n, rate, || {
        let req = http.get(&url).bearer_auth(token);
        async move {
            req.send().await?.error_for_status()?.bytes().await?;
            Ok(())
        }
    })
    .await?;
    let grpc_get_tenant = paced(n, rate, || {
        let mut client = client.clone();
        let mut r = tonic::Request::new(pb::GetTenantRequest {
            tenant_id: tenant.into(),
        });
        r.metadata_mut().insert("authorization", bearer.clone());
        async move {
            client.get_tenant(r).await?;
            Ok(())
        }
    })
    .await?;
    Ok(ControlCalls {
        rate_per_s: rate,
        grpc_get_tenant,
        rest_get_tenant,
    })
}
