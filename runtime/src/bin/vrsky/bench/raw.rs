//! The raw limits `vrsky bench` compares VRSky with, measured in the same run: core NATS
//! publish -> subscribe, pipelined KV puts on a JetStream server configured like the
//! platform's, and a loopback HTTP server under the same load generator.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use axum::Router;
use axum::body::Bytes;
use axum::http::StatusCode;
use futures::StreamExt;

use vrsky_runtime::nats::process::{ServerOptions, ServerProcess, ServerSecurity, free_port, start_server};

use super::{Phase, cpu_per_msg, cpu_seconds, percentile};

/// A nats-server for a baseline, run like VRSky's (see `nats.go_max_procs`); with
/// JetStream at `sync` when that is given, and TLS (a certificate from the bench's local
/// CA in `dir/tls`, as VRSky's servers have) when `tls` is set.
pub(super) async fn bench_server(
    bin: &std::path::Path,
    dir: &std::path::Path,
    name: &str,
    sync: Option<&str>,
    tls: bool,
) -> anyhow::Result<ServerProcess> {
    let security = if tls {
        let ca = vrsky_runtime::nats::tls::LocalCa::load_or_create(&dir.join("tls"))?;
        Some(ServerSecurity {
            auth: String::new(),
            tls: ca.issue_loopback_into(&dir.join(name))?,
        })
    } else {
        None
    };
    let options = ServerOptions {
        server_name: name.into(),
        client_port: free_port()?,
        dir: dir.join(name),
        jetstream: sync.is_some(),
        sync_interval: sync.unwrap_or_default().to_owned(),
        adopt: false,
        startup_timeout: Duration::from_secs(10),
        go_max_procs: vrsky_runtime::config::NatsConfig::default().go_max_procs,
        security,
    };
    Ok(start_server(bin, &options).await?)
}

/// A client of a [`bench_server`] started with TLS.
pub(super) async fn tls_client(dir: &std::path::Path, url: &str) -> anyhow::Result<async_nats::Client> {
    Ok(async_nats::ConnectOptions::new()
        .add_root_certificates(dir.join("tls").join("ca.pem"))
        .require_tls(true)
        .connect(url)
        .await?)
}

pub(super) async fn raw_nats(
    bin: &std::path::Path,
    dir: &std::path::Path,
    n: usize,
    size: usize,
) -> anyhow::Result<Phase> {
    let server = bench_server(bin, dir, "raw-nats", None, false).await?;
    let sub_client = async_nats::connect(server.url.as_str()).await?;
    let pub_client = async_nats::connect(server.url.as_str()).await?;
    let mut sub = sub_client.subscribe("bench.raw").await?;
    sub_client.flush().await?;
    let payload = Bytes::from(vec![b'x'; size]);
    // Core NATS drops what a slow subscriber cannot take, so the publisher may run at most
    // WINDOW messages ahead of the subscriber: the figure is the sustainable rate with
    // nothing dropped.
    const WINDOW: usize = 8192;
    let received = Arc::new(AtomicUsize::new(0));
    let start = Instant::now();
    let cpu0 = cpu_seconds();
    let counter = {
        let received = received.clone();
        tokio::spawn(async move {
            let mut last = Instant::now();
            while received.load(Ordering::Relaxed) < n {
                match tokio::time::timeout(Duration::from_secs(5), sub.next()).await {
                    Ok(Some(_)) => {
                        received.fetch_add(1, Ordering::Relaxed);
                        last = Instant::now();
                    }
                    _ => break,
                }
            }
            (received.load(Ordering::Relaxed), last)
        })
    };
    for i in 0..n {
        pub_client.publish("bench.raw", payload.clone()).await?;
        if i % 256 == 0 {
            while i.saturating_sub(received.load(Ordering::Relaxed)) > WINDOW {
                if counter.is_finished() {
                    break;
                }
                tokio::task::yield_now().await;
            }
        }
    }
    pub_client.flush().await?;
    let (got, end) = counter.await?;
    let cpu_us_per_msg = cpu_per_msg(cpu0, cpu_seconds(), got);
    server.stop.stop().await;
    Ok(Phase {
        completed: got,
        rate_per_s: got as f64 / (end - start).as_secs_f64(),
        p50_ms: None,
        p99_ms: None,
        cpu_us_per_msg,
    })
}

/// Pipelined KV puts: up to `window` acknowledgements outstanding, as VRSky's many
/// concurrent messages keep them.
pub(super) async fn raw_kv_put(
    bin: &std::path::Path,
    dir: &std::path::Path,
    n: usize,
    size: usize,
    sync: &str,
) -> anyhow::Result<Phase> {
    let server = bench_server(bin, dir, "raw-kv", Some(sync), false).await?;
    let client = async_nats::connect(server.url.as_str()).await?;
    let js = async_nats::jetstream::new(client);
    js.create_key_value(async_nats::jetstream::kv::Config {
        bucket: "bench".into(),
        history: 1,
        max_age: Duration::from_secs(900),
        ..Default::default()
    })
    .await?;
    let payload = Bytes::from(vec![b'x'; size]);
    const WINDOW: usize = 256;
    let mut acks = std::collections::VecDeque::with_capacity(WINDOW);
    let start = Instant::now();
    let cpu0 = cpu_seconds();
    let mut done = 0usize;
    for i in 0..n {
        acks.push_back(js.publish(format!("$KV.bench.k{i}"), payload.clone()).await?);
        if acks.len() >= WINDOW
            && let Some(a) = acks.pop_front()
        {
            a.await?;
            done += 1;
        }
    }
    for a in acks {
        a.await?;
        done += 1;
    }
    let elapsed = start.elapsed();
    let cpu_us_per_msg = cpu_per_msg(cpu0, cpu_seconds(), done);
    server.stop.stop().await;
    Ok(Phase {
        completed: done,
        rate_per_s: done as f64 / elapsed.as_secs_f64(),
        p50_ms: None,
        p99_ms: None,
        cpu_us_per_msg,
    })
}

/// Closed-loop load: `concurrency` workers, each sending its share of `n` requests back
/// to back. Returns per-request latencies (request start -> response) and elapsed time.
pub(super) async fn closed_loop<F, Fut>(n: usize, concurrency: usize, send: F) -> (Vec<Duration>, Duration)
where
    F: Fn(usize) -> Fut + Clone + Send + 'static,
    Fut: std::future::Future<Output = bool> + Send,
{
    let next = Arc::new(AtomicUsize::new(0));
    let start = Instant::now();
    let mut tasks = Vec::new();
    for _ in 0..concurrency {
        let next = next.clone();
        let send = send.clone();
        tasks.push(tokio::spawn(async move {
            let mut lat = Vec::new();
            loop {
                let i = next.fetch_add(1, Ordering::Relaxed);
                if i >= n {
                    break;
                }
                let t0 = Instant::now();
                if send(i).await {
                    lat.push(t0.elapsed());
                }
            }
            lat
        }));
    }
    let mut all = Vec::with_capacity(n);
    for t in tasks {
        if let Ok(l) = t.await {
            all.extend(l);
        }
    }
    (all, start.elapsed())
}

pub(super) async fn ok_handler() -> StatusCode {
    StatusCode::OK
}

pub(super) async fn serve(app: Router) -> anyhow::Result<(std::net::SocketAddr, tokio::sync::oneshot::Sender<()>)> {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let addr = listener.local_addr()?;
    let (tx, rx) = tokio::sync::oneshot::channel::<()>();
    tokio::spawn(async move {
        let _ = axum::serve(listener, app)
            .with_graceful_shutdown(async {
                let _ = rx.await;
            })
            .await;
    });
    Ok((addr, tx))
}

pub(super) async fn raw_http(
    client: &reqwest::Client,
    n: usize,
    concurrency: usize,
    size: usize,
) -> anyhow::Result<Phase> {
    let (addr, stop) = serve(Router::new().fallback(ok_handler)).await?;
    let url = format!("http://{addr}/raw");
    let body = Bytes::from(vec![b'x'; size]);
    let client = client.clone();
    let cpu0 = cpu_seconds();
    let (mut lat, elapsed) = closed_loop(n, concurrency, move |_| {
        let (client, url, body) = (client.clone(), url.clone(), body.clone());
        async move { matches!(client.post(&url).body(body).send().await, Ok(r) if r.status().is_success()) }
    })
    .await;
    let cpu_us_per_msg = cpu_per_msg(cpu0, cpu_seconds(), lat.len());
    let _ = stop.send(());
    lat.sort();
    Ok(Phase {
        completed: lat.len(),
        rate_per_s: lat.len() as f64 / elapsed.as_secs_f64(),
        p50_ms: percentile(&lat, 0.5),
        p99_ms: percentile(&lat, 0.99),
        cpu_us_per_msg,
    })
}
