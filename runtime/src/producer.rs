//! The HTTP producer: one request per delivery, never following redirects.

use std::net::IpAddr;
use std::time::Duration;

use futures::future::BoxFuture;
use reqwest::header::{CONTENT_TYPE, HeaderMap, HeaderName, HeaderValue};
use reqwest::{Method, Url};

use vrsky_actors::Envelope;
use vrsky_actors::components::{
    Delivered, HttpMethod, HttpProducerSpec, ProduceError, ProduceErrorKind, Producer, SpecError,
};

/// Builds the runtime's one HTTP client: rustls (ring), no redirects, pooled.
pub fn http_client() -> Result<reqwest::Client, reqwest::Error> {
    reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .pool_max_idle_per_host(64)
        .connect_timeout(Duration::from_secs(5))
        .user_agent(concat!("vrsky/", env!("CARGO_PKG_VERSION")))
        .build()
}

/// Delivers envelopes with an HTTP request.
#[derive(Debug, Clone)]
pub struct HttpProducer {
    client: reqwest::Client,
    url: Url,
    method: Method,
    headers: HeaderMap,
    timeout: Duration,
}

fn spec_err(field: &str, message: impl Into<String>) -> SpecError {
    SpecError {
        field: field.into(),
        message: message.into(),
    }
}

fn is_private(ip: IpAddr) -> bool {
    match ip {
        IpAddr::V4(v4) => {
            v4.is_loopback() || v4.is_private() || v4.is_link_local() || v4.is_unspecified() || v4.is_broadcast()
        }
        IpAddr::V6(v6) => {
            v6.is_loopback()
                || v6.is_unspecified()
                || (v6.segments()[0] & 0xfe00) == 0xfc00 // unique local
                || (v6.segments()[0] & 0xffc0) == 0xfe80 // link local
                || v6.to_ipv4_mapped().is_some_and(|v4| is_private(IpAddr::V4(v4)))
        }
    }
}

impl HttpProducer {
    /// Checks the spec's URL and headers and builds the producer. Unless
    /// `allow_private_targets`, URLs naming loopback, private or link-local addresses (or
    /// `localhost`) are refused. Host names are not resolved here.
    pub fn new(
        client: reqwest::Client,
        spec: &HttpProducerSpec,
        allow_private_targets: bool,
    ) -> Result<Self, SpecError> {
        let url =
            Url::parse(&spec.url).map_err(|e| spec_err("producer.url", format!("{:?} is not a URL: {e}", spec.url)))?;
        if url.scheme() != "http" && url.scheme() != "https" {
            return Err(spec_err("producer.url", "scheme must be http or https"));
        }
        if !url.username().is_empty() || url.password().is_some() {
            return Err(spec_err(
                "producer.url",
                "credentials in the URL are not allowed; use producer.headers",
            ));
        }
        let private = match url.host() {
            None => return Err(spec_err("producer.url", "has no host")),
            Some(url::Host::Domain(d)) => d == "localhost" || d.ends_with(".localhost"),
            Some(url::Host::Ipv4(v4)) => is_private(IpAddr::V4(v4)),
            Some(url::Host::Ipv6(v6)) => is_private(IpAddr::V6(v6)),
        };
        if private && !allow_private_targets {
            return Err(spec_err(
                "producer.url",
                "loopback, private and link-local targets are not allowed on this runtime",
            ));
        }
        let mut headers = HeaderMap::new();
        for (k, v) in &spec.headers {
            let name = HeaderName::from_bytes(k.as_bytes())
                .map_err(|e| spec_err("producer.headers", format!("{k:?}: {e}")))?;
            let value = HeaderValue::from_str(v).map_err(|e| spec_err("producer.headers", format!("{k:?}: {e}")))?;
            headers.insert(name, value);
        }
        let method = match spec.method {
            HttpMethod::Post => Method::POST,
            HttpMethod::Put => Method::PUT,
            HttpMethod::Patch => Method::PATCH,
            HttpMethod::Delete => Method::DELETE,
            HttpMethod::Get => Method::GET,
        };
        Ok(HttpProducer {
            client,
            url,
            method,
            headers,
            timeout: Duration::from_millis(spec.timeout_ms),
        })
    }

    fn request_headers(&self, env: &Envelope) -> HeaderMap {
        let mut h = HeaderMap::with_capacity(env.headers.len() + self.headers.len() + 4);
        if let Some(ct) = env.content_type.as_deref().and_then(|c| HeaderValue::from_str(c).ok()) {
            h.insert(CONTENT_TYPE, ct);
        }
        for (k, v) in &env.headers {
            if let (Ok(name), Ok(value)) = (HeaderName::from_bytes(k.as_bytes()), HeaderValue::from_str(v)) {
                h.append(name, value);
            }
        }
        for (k, v) in &self.headers {
            h.insert(k.clone(), v.clone());
        }
        if let Ok(v) = HeaderValue::from_str(env.message_id.as_str()) {
            h.insert("x-vrsky-message-id", v);
        }
        h.insert("x-vrsky-attempt", HeaderValue::from(env.attempt));
        if let Some(tp) = env.trace_context.as_deref().and_then(|t| HeaderValue::from_str(t).ok()) {
            h.insert("traceparent", tp);
        }
        h
    }
}

/// Most bytes of a response body read (and discarded) to keep its connection reusable.
const RESPONSE_DRAIN_MAX: usize = 64 * 1024;

/// `Retry-After` in delta-seconds (an HTTP-date is not understood and ignored: the
/// backoff applies).
fn retry_after_ms(h: &HeaderMap) -> Option<u64> {
    let secs: u64 = h
        .get(reqwest::header::RETRY_AFTER)?
        .to_str()
        .ok()?
        .trim()
        .parse()
        .ok()?;
    Some(secs.saturating_mul(1000))
}

/// Classifies an HTTP status: 2xx success; 408, 429 and 5xx retryable; the rest permanent.
pub fn classify_status(status: u16) -> Result<(), ProduceErrorKind> {
    match status {
        200..=299 => Ok(()),
        408 | 429 | 500..=599 => Err(ProduceErrorKind::Retryable),
        _ => Err(ProduceErrorKind::Permanent),
    }
}

impl Producer for HttpProducer {
    fn deliver<'a>(&'a self, env: &'a Envelope) -> BoxFuture<'a, Result<Delivered, ProduceError>> {
        Box::pin(async move {
            let resp = self
                .client
                .request(self.method.clone(), self.url.clone())
                .headers(self.request_headers(env))
                .timeout(self.timeout)
                .body(env.payload.clone())
                .send()
                .await
                .map_err(|e| ProduceError {
                    kind: if e.is_builder() {
                        ProduceErrorKind::Permanent
                    } else {
                        ProduceErrorKind::Retryable
                    },
                    status: None,
                    message: format!("request to {} failed: {e}", self.url),
                    retry_after_ms: None,
                })?;
            let status = resp.status().as_u16();
            let retry_after = retry_after_ms(resp.headers());
            // A response body left unread keeps its connection out of the pool: read and
            // discard a small one; a large one is cut off and its connection closed.
            let mut resp = resp;
            let mut left = RESPONSE_DRAIN_MAX;
            while left > 0 {
                match resp.chunk().await {
                    Ok(Some(chunk)) => left = left.saturating_sub(chunk.len()),
                    _ => break,
                }
            }
            match classify_status(status) {
                Ok(()) => Ok(Delivered { status }),
                Err(kind) => Err(ProduceError {
                    kind,
                    status: Some(status),
                    message: format!("{} answered {}", self.url, resp.status()),
                    retry_after_ms: retry_after,
                }),
            }
        })
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    fn spec(url: &str) -> HttpProducerSpec {
        HttpProducerSpec {
            url: url.into(),
            method: HttpMethod::Post,
            headers: Default::default(),
            timeout_ms: 1000,
        }
    }

    #[test]
    fn target_checks() {
        let _ = rustls::crypto::ring::default_provider().install_default();
        let c = http_client().unwrap();
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
        let p = HttpProducer::new(http_client().unwrap(), &spec(&format!("http://{addr}/hook")), true).unwrap();
        let env = Envelope {
            message_id: vrsky_actors::MessageId::generate(),
            tenant_id: vrsky_actors::TenantId::new("t").unwrap(),
            integration_id: vrsky_actors::IntegrationId::new("i").unwrap(),
            headers: vec![],
            content_type: None,
            payload: bytes::Bytes::from_static(b"x"),
            trace_context: None,
            attempt: 1,
            received_at_ms: 0,
        };
        for _ in 0..5 {
            assert_eq!(p.deliver(&env).await.unwrap().status, 200);
        }
        assert_eq!(ports.lock().unwrap().len(), 1, "a new connection per delivery");
    }

    #[test]
    fn retry_after_seconds() {
        let mut h = HeaderMap::new();
        assert_eq!(retry_after_ms(&h), None);
        h.insert(reqwest::header::RETRY_AFTER, HeaderValue::from_static("7"));
        assert_eq!(retry_after_ms(&h), Some(7000));
        h.insert(
            reqwest::header::RETRY_AFTER,
            HeaderValue::from_static("Wed, 21 Oct 2015 07:28:00 GMT"),
        );
        assert_eq!(retry_after_ms(&h), None);
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
}
