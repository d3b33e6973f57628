//! The HTTP producer against real loopback servers: requests, redirects, timeouts,
//! refusals, connection reuse, `Retry-After` and status classes.

#![allow(clippy::unwrap_used)]
use super::*;

fn spec(url: &str) -> HttpProducerSpec {
    HttpProducerSpec {
        url: url.into(),
        method: HttpMethod::Post,
        headers: Default::default(),
        timeout_ms: 1000,
        signing: None,
        payload_delivery: Default::default(),
    }
}

#[test]
fn errors_never_show_a_query() {
    let u = |s: &str| shown_url(&Url::parse(s).unwrap());
    assert_eq!(
        u("https://api.example.com/hook?api_key=s3cret&x=1"),
        "https://api.example.com/hook?..."
    );
    assert_eq!(u("https://api.example.com/hook#frag"), "https://api.example.com/hook");
    assert_eq!(u("http://h:8080/a/b"), "http://h:8080/a/b");
}

#[test]
fn target_checks() {
    let _ = rustls::crypto::ring::default_provider().install_default();
    let c = http_client(false).unwrap();
    for bad in [
        "http://127.0.0.1/x",
        "http://localhost:8080",
        "http://10.1.2.3",
        "http://[::1]/",
        "http://169.254.169.254/",
    ] {
        let e = HttpProducer::new(c.clone(), &spec(bad), false).unwrap_err();
        assert_eq!(e.field, "producer.url", "{bad}");
        assert!(HttpProducer::new(c.clone(), &spec(bad), true).is_ok(), "{bad}");
    }
    assert!(HttpProducer::new(c.clone(), &spec("https://api.example.com/hook"), false).is_ok());
    assert!(HttpProducer::new(c.clone(), &spec("ftp://example.com"), true).is_err());
    assert!(HttpProducer::new(c.clone(), &spec("not a url"), true).is_err());
    assert!(HttpProducer::new(c, &spec("http://u:p@example.com"), true).is_err());
}

fn envelope() -> Envelope {
    Envelope {
        message_id: vrsky_actors::MessageId::generate(),
        tenant_id: vrsky_actors::TenantId::new("t").unwrap(),
        integration_id: vrsky_actors::IntegrationId::new("i").unwrap(),
        headers: vec![("x-request-id".into(), "r1".into())],
        content_type: Some("application/json".into()),
        payload: bytes::Bytes::from_static(b"{}"),
        payload_ref: None,
        trace_context: Some("00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01".into()),
        attempt: 2,
        received_at_ms: 0,
    }
}

async fn serve(app: axum::Router) -> std::net::SocketAddr {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        let _ = axum::serve(listener, app).await;
    });
    addr
}

/// What the destination sees: method, path and query, the envelope's headers, the
/// configured ones, VRSky's own, and the body.
#[tokio::test]
async fn the_request_carries_the_envelope() {
    use std::sync::{Arc, Mutex};

    use axum::extract::State;

    let _ = rustls::crypto::ring::default_provider().install_default();
    type Seen = Arc<Mutex<Option<(String, String, HeaderMap, Bytes)>>>;
    let seen: Seen = Arc::default();
    async fn record(State(seen): State<Seen>, req: axum::extract::Request) -> http::StatusCode {
        let (parts, body) = req.into_parts();
        let body = axum::body::to_bytes(body, 1024).await.unwrap();
        *seen.lock().unwrap() = Some((parts.method.to_string(), parts.uri.to_string(), parts.headers, body));
        http::StatusCode::NO_CONTENT
    }
    let addr = serve(axum::Router::new().fallback(record).with_state(seen.clone())).await;
    let mut s = spec(&format!("http://{addr}/hook?a=1#fragment"));
    s.method = HttpMethod::Put;
    s.headers.insert("Authorization".into(), "Bearer k".into());
    let p = HttpProducer::new(http_client(true).unwrap(), &s, true).unwrap();
    let env = envelope();
    assert_eq!(p.deliver(&env).await.unwrap().status, 204);
    let (method, uri, h, body) = seen.lock().unwrap().take().unwrap();
    assert_eq!(method, "PUT");
    assert_eq!(uri, "/hook?a=1");
    assert_eq!(&body[..], b"{}");
    let get = |n: &str| h.get(n).map(|v| v.to_str().unwrap().to_owned());
    assert_eq!(get("content-type").as_deref(), Some("application/json"));
    assert_eq!(get("x-request-id").as_deref(), Some("r1"));
    assert_eq!(get("authorization").as_deref(), Some("Bearer k"));
    assert_eq!(get("x-vrsky-message-id").as_deref(), Some(env.message_id.as_str()));
    assert_eq!(get("x-vrsky-attempt").as_deref(), Some("2"));
    assert_eq!(get("traceparent"), env.trace_context);
    assert!(get("user-agent").unwrap().starts_with("vrsky/"));
    assert_eq!(get("host"), Some(addr.to_string()));
}

/// A redirect is an answer, never followed; a destination that does not answer within
/// the timeout is a retryable failure; one that refuses connections is retryable too.
#[tokio::test]
async fn redirects_timeouts_and_refusals() {
    use std::sync::Arc;
    use std::sync::atomic::{AtomicUsize, Ordering};

    use axum::extract::State;

    let _ = rustls::crypto::ring::default_provider().install_default();
    let hits = Arc::new(AtomicUsize::new(0));
    async fn target(State(hits): State<Arc<AtomicUsize>>) -> http::StatusCode {
        hits.fetch_add(1, Ordering::SeqCst);
        http::StatusCode::OK
    }
    let target_addr = serve(axum::Router::new().fallback(target).with_state(hits.clone())).await;
    let to = format!("http://{target_addr}/elsewhere");
    let redirect = serve(axum::Router::new().fallback(move || {
        let to = to.clone();
        async move { (http::StatusCode::FOUND, [(http::header::LOCATION, to)]) }
    }))
    .await;
    let p = HttpProducer::new(http_client(true).unwrap(), &spec(&format!("http://{redirect}/")), true).unwrap();
    let e = p.deliver(&envelope()).await.unwrap_err();
    assert_eq!((e.kind, e.status), (ProduceErrorKind::Permanent, Some(302)));
    assert!(e.message.contains("answered 302 Found"), "{}", e.message);
    assert_eq!(hits.load(Ordering::SeqCst), 0, "the redirect was followed");

    let slow = serve(axum::Router::new().fallback(|| async {
        tokio::time::sleep(Duration::from_secs(30)).await;
        http::StatusCode::OK
    }))
    .await;
    let mut s = spec(&format!("http://{slow}/"));
    s.timeout_ms = 200;
    let p = HttpProducer::new(http_client(true).unwrap(), &s, true).unwrap();
    let e = p.deliver(&envelope()).await.unwrap_err();
    assert_eq!((e.kind, e.status), (ProduceErrorKind::Retryable, None));
    assert!(e.message.contains("no answer within 200 ms"), "{}", e.message);

    let closed = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap();
    let p = HttpProducer::new(http_client(true).unwrap(), &spec(&format!("http://{closed}/")), true).unwrap();
    let e = p.deliver(&envelope()).await.unwrap_err();
    assert_eq!((e.kind, e.status), (ProduceErrorKind::Retryable, None));
    assert!(e.message.contains("refused"), "{}", e.message);
}

/// Destinations answer with bodies; one left unread would cost a new connection per
/// delivery. Five deliveries in a row must arrive over one connection (one client port).
#[tokio::test]
async fn answered_bodies_are_read_so_connections_are_reused() {
    use std::collections::HashSet;
    use std::net::SocketAddr;
    use std::sync::{Arc, Mutex};

    use axum::extract::{ConnectInfo, State};

    let _ = rustls::crypto::ring::default_provider().install_default();
    let ports: Arc<Mutex<HashSet<u16>>> = Arc::default();
    async fn answer(
        State(ports): State<Arc<Mutex<HashSet<u16>>>>,
        ConnectInfo(peer): ConnectInfo<SocketAddr>,
    ) -> String {
        ports.lock().unwrap().insert(peer.port());
        "{\"ok\":true}".repeat(5000)
    }
    let app = axum::Router::new().fallback(answer).with_state(ports.clone());
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        let _ = axum::serve(listener, app.into_make_service_with_connect_info::<SocketAddr>()).await;
    });
    let p = HttpProducer::new(http_client(true).unwrap(), &spec(&format!("http://{addr}/hook")), true).unwrap();
    let env = envelope();
    for _ in 0..5 {
        assert_eq!(p.deliver(&env).await.unwrap().status, 200);
    }
    assert_eq!(ports.lock().unwrap().len(), 1, "a new connection per delivery");
}

#[test]
fn retry_after_seconds_or_date() {
    let now = httpdate::parse_http_date("Wed, 21 Oct 2015 07:28:00 GMT").unwrap();
    let at = |v: &'static str| {
        let mut h = HeaderMap::new();
        h.insert(RETRY_AFTER, HeaderValue::from_static(v));
        retry_after_ms(&h, now)
    };
    assert_eq!(retry_after_ms(&HeaderMap::new(), now), None);
    assert_eq!(at("7"), Some(7000));
    assert_eq!(at(" 120 "), Some(120_000));
    // IMF-fixdate, and the two obsolete forms RFC 9110 still asks recipients to accept.
    assert_eq!(at("Wed, 21 Oct 2015 07:28:30 GMT"), Some(30_000));
    assert_eq!(at("Wednesday, 21-Oct-15 07:29:00 GMT"), Some(60_000));
    assert_eq!(at("Wed Oct 21 07:28:05 2015"), Some(5_000));
    assert_eq!(at("Wed, 21 Oct 2015 07:00:00 GMT"), Some(0), "a past date is no wait");
    assert_eq!(at("-5"), None);
    assert_eq!(at("soon"), None);
}

#[test]
fn status_classes() {
    assert_eq!(classify_status(200), Ok(()));
    assert_eq!(classify_status(204), Ok(()));
    assert_eq!(classify_status(301), Err(ProduceErrorKind::Permanent));
    assert_eq!(classify_status(400), Err(ProduceErrorKind::Permanent));
    assert_eq!(classify_status(408), Err(ProduceErrorKind::Retryable));
    assert_eq!(classify_status(429), Err(ProduceErrorKind::Retryable));
    assert_eq!(classify_status(503), Err(ProduceErrorKind::Retryable));
}
