//! The design's floor: VRSky's per-message I/O with none of VRSky's own work.
//!
//! Each webhook costs what the message path must cost: a `received` KV create carrying
//! the body, a core-NATS publish on a tenant server, a `processing` compare-and-set claim,
//! an HTTP POST to the sink, and a `completed` compare-and-set. It goes through the same
//! libraries (axum, async-nats, the producer's hyper client), nats-servers started the same
//! way (TLS on both hops, as VRSky's), and the IntegrationActor's own pump (its bound and
//! batching). What it leaves out is authentication (NATS JWTs cost only at connect),
//! routing, the state machine and its JSON, the envelope, actors, deadlines, error
//! handling and tracing.
//!
//! So its rate against raw HTTP is about the most this design can reach on the machine,
//! and VRSky's rate against it is what VRSky's own logic costs. It is a measuring device,
//! not a message path: nothing here is durable or retried.

use std::sync::Arc;
use std::time::Duration;

use async_nats::jetstream::kv;
use axum::Router;
use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use http_body_util::{BodyExt, Full};
use tokio::sync::oneshot;
use vrsky_actors::integration::pump;

use super::{Arrivals, bench_server, record, serve, tls_client};
use vrsky_runtime::nats::process::ServerProcess;
use vrsky_runtime::producer::HttpClient;

const SUBJECT: &str = "floor.in";
/// As the bench's integration's `max_in_flight`.
const IN_FLIGHT: usize = 256;
const H_KEY: &str = "k";
const H_REVISION: &str = "r";
const H_SEQ: &str = "x-seq";

/// A running floor pipeline: its webhook URL, and what to stop.
pub(super) struct Floor {
    /// Where to POST webhooks (the bench's `x-seq` header names the sink slot).
    pub webhook: String,
    stops: [oneshot::Sender<()>; 2],
    worker: tokio::task::JoinHandle<()>,
    servers: [ServerProcess; 2],
}

#[derive(Clone)]
struct Ingress {
    store: kv::Store,
    tenant: async_nats::Client,
}

impl Floor {
    /// Starts a platform server (JetStream, `sync`), a tenant server, the ingress, the
    /// worker and a sink recording into `arrivals`.
    pub(super) async fn start(
        bin: &std::path::Path,
        dir: &std::path::Path,
        sync: &str,
        arrivals: Arc<Arrivals>,
    ) -> anyhow::Result<Floor> {
        // TLS on both hops, as VRSky has them.
        let platform = bench_server(bin, dir, "floor-platform", Some(sync), true).await?;
        let tenant_server = bench_server(bin, dir, "floor-tenant", None, true).await?;
        let js = async_nats::jetstream::new(tls_client(dir, &platform.url).await?);
        let store = js
            .create_key_value(kv::Config {
                bucket: "floor".into(),
                history: 1,
                max_age: Duration::from_secs(900),
                storage: async_nats::jetstream::stream::StorageType::File,
                ..Default::default()
            })
            .await?;
        let tenant = tls_client(dir, &tenant_server.url).await?;
        let (sink, sink_stop) = serve(Router::new().fallback(record).with_state(arrivals)).await?;
        let sub = tenant.queue_subscribe(SUBJECT, "floor".into()).await?;
        tenant.flush().await?;
        let client = vrsky_runtime::producer::http_client(true)?;
        let sink: http::Uri = format!("http://{sink}/sink").parse()?;
        let worker = {
            let store = store.clone();
            tokio::spawn(pump(sub, IN_FLIGHT, move |msg| {
                let (store, client, sink) = (store.clone(), client.clone(), sink.clone());
                async move { deliver(msg, &store, &client, sink).await }
            }))
        };
        let (addr, ingress_stop) = serve(
            Router::new()
                .route("/webhooks/{tenant}/{integration}", axum::routing::post(ingress))
                .with_state(Ingress { store, tenant }),
        )
        .await?;
        Ok(Floor {
            webhook: format!("http://{addr}/webhooks/bench/floor"),
            stops: [ingress_stop, sink_stop],
            worker,
            servers: [platform, tenant_server],
        })
    }

    /// Stops the worker and the servers, and waits for the nats-servers to exit.
    pub(super) async fn stop(self) {
        self.worker.abort();
        for s in self.stops {
            let _ = s.send(());
        }
        for server in self.servers {
            server.stop.stop().await;
        }
    }
}

/// `received`: the KV create, then the publish; answers 202.
async fn ingress(State(s): State<Ingress>, headers: HeaderMap, body: Bytes) -> StatusCode {
    let key = format!("bench.{}", uuid::Uuid::new_v4().simple());
    let mut value = Vec::with_capacity(body.len() + 128);
    value.extend_from_slice(br#"{"status":"received","message_id":""#);
    value.extend_from_slice(key.as_bytes());
    value.extend_from_slice(b"\"}\n");
    value.extend_from_slice(&body);
    let value = Bytes::from(value);
    let Ok(revision) = s.store.create(&key, value.clone()).await else {
        return StatusCode::SERVICE_UNAVAILABLE;
    };
    let mut h = async_nats::HeaderMap::new();
    h.insert(H_KEY, key.as_str());
    h.insert(H_REVISION, revision.to_string().as_str());
    if let Some(seq) = headers.get(H_SEQ).and_then(|v| v.to_str().ok()) {
        h.insert(H_SEQ, seq);
    }
    let _ = s.tenant.publish_with_headers(SUBJECT, h, value).await;
    StatusCode::ACCEPTED
}

async fn deliver(msg: async_nats::Message, store: &kv::Store, client: &HttpClient, sink: http::Uri) {
    let header = |name: &str| {
        msg.headers
            .as_ref()
            .and_then(|h| h.get(name))
            .map(|v| v.as_str().to_owned())
    };
    let (Some(key), Some(Ok(revision))) = (header(H_KEY), header(H_REVISION).map(|r| r.parse::<u64>())) else {
        return;
    };
    let Ok(revision) = store.update(&key, msg.payload.clone(), revision).await else {
        return;
    };
    let mut req = http::Request::new(http_body_util::Either::Left(Full::new(msg.payload.clone())));
    *req.method_mut() = http::Method::POST;
    *req.uri_mut() = sink;
    if let Some(Ok(seq)) = header(H_SEQ).map(http::HeaderValue::try_from) {
        req.headers_mut().insert(H_SEQ, seq);
    }
    if let Ok(resp) = client.request(req).await {
        let _ = resp.into_body().collect().await;
    }
    let _ = store
        .update(&key, Bytes::from_static(br#"{"status":"completed"}"#), revision)
        .await;
}
