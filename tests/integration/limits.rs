//! Slow clients: hundreds of half-sent requests neither block a normal webhook nor hold
//! their sockets; the server closes them at `http.header_read_timeout_ms` (headers never
//! finished, or a keep-alive connection idle between requests) or answers 408 at
//! `http.body_read_timeout_ms` (body never finished).

use std::time::Duration;

use serde_json::json;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::common::sink::Sink;
use crate::common::{Backend, TestRuntime, spec};

/// Reads until the server closes the connection; returns what it sent.
async fn until_closed(mut s: TcpStream) -> Vec<u8> {
    let mut got = Vec::new();
    let mut buf = [0u8; 1024];
    loop {
        match s.read(&mut buf).await {
            Ok(0) | Err(_) => return got,
            Ok(n) => got.extend_from_slice(&buf[..n]),
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slow_clients_are_cut_off_and_do_not_block_a_normal_webhook() {
    let sink = Sink::start().await;
    let t = TestRuntime::start_with(Backend::Sqlite, |c| {
        c.http.header_read_timeout_ms = 1_000;
        c.http.body_read_timeout_ms = 1_500;
    })
    .await;
    t.create_tenant("acme").await;
    t.create_integration("acme", spec("hook", &sink.url("/hook"), json!({})))
        .await;
    let addr = t.rt().addr;
    let (headers_slow, body_slow) = (400, 400);
    // A keep-alive connection that made one request and then says nothing.
    let mut idle = TcpStream::connect(addr).await.unwrap();
    idle.write_all(b"GET /healthz HTTP/1.1\r\nhost: x\r\n\r\n")
        .await
        .unwrap();
    let mut first = [0u8; 12];
    idle.read_exact(&mut first).await.unwrap();
    assert_eq!(
        &first, b"HTTP/1.1 200",
        "the idle connection's first request was served"
    );
    let mut slow = Vec::new();
    for k in 0..headers_slow + body_slow {
        let mut s = TcpStream::connect(addr).await.unwrap();
        let half = if k < headers_slow {
            // The headers never end.
            "POST /webhooks/acme/hook HTTP/1.1\r\nhost: x\r\ncontent-type: text/plain\r\n".to_owned()
        } else {
            // The headers end; a tenth of the body follows, then nothing.
            "POST /webhooks/acme/hook HTTP/1.1\r\nhost: x\r\ncontent-length: 100\r\n\r\n0123456789".to_owned()
        };
        s.write_all(half.as_bytes()).await.unwrap();
        slow.push(s);
    }
    // A normal webhook is served meanwhile, promptly.
    let answered = tokio::time::timeout(
        Duration::from_secs(1),
        t.webhook("acme", "hook", b"normal".to_vec(), &[]),
    )
    .await;
    assert_eq!(answered, Ok(202), "a normal webhook was held up by slow clients");
    // Every slow connection is closed by the server; the slow bodies get 408 first.
    let closed = tokio::time::timeout(
        Duration::from_secs(20),
        futures::future::join_all(slow.into_iter().map(until_closed)),
    )
    .await
    .expect("slow connections were left open");
    let answers: Vec<String> = closed.iter().map(|b| String::from_utf8_lossy(b).into_owned()).collect();
    let timed_out = answers.iter().filter(|a| a.starts_with("HTTP/1.1 408")).count();
    assert_eq!(
        timed_out,
        body_slow,
        "{:?}",
        answers.iter().find(|a| !a.starts_with("HTTP/1.1 408"))
    );
    assert!(
        answers[headers_slow..].iter().all(|a| a.contains("request_timeout")),
        "408s carry the error shape"
    );
    // The idle keep-alive connection is closed too: hyper's header timer also runs while
    // a connection waits for its next request.
    let closed_idle = tokio::time::timeout(Duration::from_secs(20), until_closed(idle)).await;
    assert!(closed_idle.is_ok(), "an idle keep-alive connection was left open");
    sink.wait_for("/hook", 1, Duration::from_secs(30)).await;
    assert_eq!(sink.count("/hook"), 1, "only the normal webhook was delivered");
    sink.stop();
    t.shutdown().await;
}
