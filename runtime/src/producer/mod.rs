//! The HTTP producer: one request per delivery, never following redirects.

use std::net::IpAddr;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use futures::StreamExt;
use futures::future::BoxFuture;
use futures::stream::BoxStream;
use http::header::{CONTENT_TYPE, HeaderMap, HeaderName, HeaderValue, RETRY_AFTER, USER_AGENT};
use http::{Method, Request, Uri};
use http_body::Frame;
use http_body_util::{BodyExt, Either, Full, StreamBody};
use hyper_rustls::HttpsConnector;
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;
use url::Url;

use crate::objects::Objects;
use crate::targets::{CheckedResolver, blocked_in, is_blocked};
use vrsky_actors::components::signature::Secret;
use vrsky_actors::components::{
    Delivered, HttpMethod, HttpProducerSpec, PayloadDelivery, ProduceError, ProduceErrorKind, Producer, SpecError,
};
use vrsky_actors::{Envelope, PayloadError, PayloadRef};

/// A request body: the payload in memory, or a claim-checked payload streamed from the
/// object store (with its `Content-Length`, so it is never chunked).
pub type RequestBody = Either<Full<Bytes>, StreamBody<BoxStream<'static, Result<Frame<Bytes>, object_store::Error>>>>;

/// The runtime's one delivery client: hyper's connection pool over TCP or rustls (ring,
/// the platform's trust store), HTTP/1.1 or HTTP/2 by ALPN. It never follows redirects
/// (a 3xx is an answer, classified as permanent) and retries nothing itself: retries
/// are the message's, with backoff and a dead-letter queue.
/// Host names are resolved by [`CheckedResolver`], so it connects only to addresses a
/// producer may reach (see `targets.rs`).
pub type HttpClient = Client<HttpsConnector<HttpConnector<CheckedResolver>>, RequestBody>;

/// Most idle connections kept per destination.
const IDLE_PER_HOST: usize = 64;
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);

/// Builds the delivery client; with `allow_private_targets` false it never connects to
/// a blocked address. Fails only if the platform trust store cannot be read.
pub fn http_client(allow_private_targets: bool) -> Result<HttpClient, rustls::Error> {
    let mut tcp = HttpConnector::new_with_resolver(CheckedResolver {
        allow_private: allow_private_targets,
    });
    tcp.enforce_http(false);
    tcp.set_nodelay(true);
    tcp.set_connect_timeout(Some(CONNECT_TIMEOUT));
    let connector = hyper_rustls::HttpsConnectorBuilder::new()
        .try_with_platform_verifier()?
        .https_or_http()
        .enable_all_versions()
        .wrap_connector(tcp);
    Ok(Client::builder(TokioExecutor::new())
        .pool_max_idle_per_host(IDLE_PER_HOST)
        .build(connector))
}

const USER_AGENT_VALUE: HeaderValue = HeaderValue::from_static(concat!("vrsky/", env!("CARGO_PKG_VERSION")));

/// Delivers envelopes with an HTTP request.
#[derive(Debug, Clone)]
pub struct HttpProducer {
    client: HttpClient,
    /// The URL as errors and logs show it: without its query, which may carry secrets.
    shown: String,
    uri: Uri,
    method: Method,
    headers: HeaderMap,
    timeout: Duration,
    /// Standard Webhooks secret each delivery is signed with.
    signing: Option<Secret>,
    /// Where claim-checked payloads are read from.
    objects: Option<Arc<Objects>>,
    /// Body or presigned URL, for a claim-checked payload.
    payload_delivery: PayloadDelivery,
}

fn spec_err(field: &str, message: impl Into<String>) -> SpecError {
    SpecError {
        field: field.into(),
        message: message.into(),
    }
}

impl HttpProducer {
    /// Checks the spec's URL and headers and builds the producer. Unless
    /// `allow_private_targets`, a URL naming a blocked IP literal (see `targets.rs`) or
    /// `localhost` is refused; other host names are checked when they are resolved, at
    /// each delivery.
    pub fn new(client: HttpClient, spec: &HttpProducerSpec, allow_private_targets: bool) -> Result<Self, SpecError> {
        let url = Url::parse(&spec.url).map_err(|e| match e {
            url::ParseError::RelativeUrlWithoutBase => spec_err(
                "producer.url",
                format!("{:?}: missing scheme: use http:// or https://", spec.url),
            ),
            e => spec_err("producer.url", format!("{:?} is not a URL: {e}", spec.url)),
        })?;
        if url.scheme() != "http" && url.scheme() != "https" {
            return Err(spec_err(
                "producer.url",
                format!(
                    "{:?}: scheme must be http or https, not {:?} (a host:port needs http:// or https:// before it)",
                    spec.url,
                    url.scheme()
                ),
            ));
        }
        if !url.username().is_empty() || url.password().is_some() {
            return Err(spec_err(
                "producer.url",
                "credentials in the URL are not allowed; use producer.headers",
            ));
        }
        let private = match url.host() {
            None => return Err(spec_err("producer.url", "has no host")),
            Some(url::Host::Domain(d)) => {
                let d = d.trim_end_matches('.');
                d == "localhost" || d.ends_with(".localhost")
            }
            Some(url::Host::Ipv4(v4)) => is_blocked(IpAddr::V4(v4)),
            Some(url::Host::Ipv6(v6)) => is_blocked(IpAddr::V6(v6)),
        };
        if private && !allow_private_targets {
            return Err(spec_err(
                "producer.url",
                format!(
                    "{:?} names a loopback, private, link-local or reserved address, which producers may not \
                     reach on this runtime (producer.allow_private_targets is off)",
                    url.host_str().unwrap_or("")
                ),
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
        // Fragments never reach the server (and `Uri` has none).
        let mut target = url.clone();
        target.set_fragment(None);
        let uri: Uri = target
            .as_str()
            .parse()
            .map_err(|e| spec_err("producer.url", format!("{:?} is not a URL: {e}", spec.url)))?;
        let signing = match &spec.signing {
            None => None,
            Some(s) => Some(Secret::parse(&s.secret).map_err(|m| spec_err("producer.signing.secret", m))?),
        };
        Ok(HttpProducer {
            client,
            shown: shown_url(&url),
            uri,
            method,
            headers,
            timeout: Duration::from_millis(spec.timeout_ms),
            signing,
            objects: None,
            payload_delivery: spec.payload_delivery,
        })
    }

    /// Whether a delivered message's object may be deleted at once: not when the
    /// destination got only its URL, which it may fetch later (the sweeper removes the
    /// object `claim_check.orphan_grace_s` after it was stored).
    pub fn releases_payloads(&self) -> bool {
        self.payload_delivery == PayloadDelivery::Body
    }

    /// Reads claim-checked payloads from `objects`.
    pub fn with_objects(mut self, objects: Option<Arc<Objects>>) -> Self {
        self.objects = objects;
        self
    }

    fn request_headers(&self, env: &Envelope) -> HeaderMap {
        let mut h = HeaderMap::with_capacity(env.headers.len() + self.headers.len() + 5);
        h.insert(USER_AGENT, USER_AGENT_VALUE);
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

    /// Standard Webhooks headers over the body sent: the id is the message id, the same
    /// on every attempt, so the destination can deduplicate; the timestamp is this
    /// attempt's. A body in the store is read once to sign it, then again to send it.
    async fn sign(&self, h: &mut HeaderMap, env: &Envelope, body: &Body<'_>) -> Result<(), ProduceError> {
        let Some(secret) = &self.signing else {
            return Ok(());
        };
        let now_s = vrsky_actors::now_ms() / 1000;
        let id = env.message_id.as_str();
        let mut signer = secret.signer(id, now_s);
        match body {
            Body::Bytes(b) => signer.update(b),
            Body::Stored(r, objects) => {
                let mut s = objects.stream(r).await.map_err(|e| self.payload_error(&e))?;
                while let Some(chunk) = s.next().await {
                    let chunk = chunk.map_err(|e| self.unanswered(format!("reading the payload to sign it: {e}")))?;
                    signer.update(&chunk);
                }
            }
        }
        for (name, value) in [
            ("webhook-id", id.to_owned()),
            ("webhook-timestamp", now_s.to_string()),
            ("webhook-signature", signer.finish()),
        ] {
            if let Ok(v) = HeaderValue::from_str(&value) {
                h.insert(name, v);
            }
        }
        Ok(())
    }

    /// The claim check's headers: where the payload is (a presigned GET URL), its size
    /// and SHA-256, so a destination can fetch it or check what it got. With
    /// `payload_delivery: url` the URL is the payload: without one nothing is sent.
    async fn payload_headers(&self, h: &mut HeaderMap, r: &PayloadRef) -> Result<(), ProduceError> {
        let url_only = self.payload_delivery == PayloadDelivery::Url;
        let url = match &self.objects {
            Some(objects) => objects.presigned_url(&r.key).await,
            None => Err(PayloadError::Unavailable(
                "this node has no object store configured".into(),
            )),
        };
        match url.map(|u| HeaderValue::from_str(&u)) {
            Ok(Ok(v)) => {
                h.insert("vrsky-payload-url", v);
            }
            Ok(Err(e)) if url_only => return Err(self.unanswered(format!("presigned URL not a header value: {e}"))),
            Err(e) if url_only => return Err(self.payload_error(&PayloadError::Unavailable(e.to_string()))),
            Ok(Err(e)) => tracing::warn!(key = %r.key, error = %e, "no presigned URL for the payload"),
            Err(e) => tracing::warn!(key = %r.key, error = %e, "no presigned URL for the payload"),
        }
        h.insert("vrsky-payload-size", HeaderValue::from(r.size));
        if let Ok(v) = HeaderValue::from_str(&r.sha256) {
            h.insert("vrsky-payload-sha256", v);
        }
        Ok(())
    }

    /// A payload that cannot be read: retried while the store is down, permanent when
    /// the object is gone or damaged.
    fn payload_error(&self, e: &PayloadError) -> ProduceError {
        ProduceError {
            kind: if e.is_retryable() {
                ProduceErrorKind::Retryable
            } else {
                ProduceErrorKind::Permanent
            },
            status: None,
            message: format!("delivery to {} not sent: {e}", self.shown),
            retry_after_ms: None,
        }
    }

    /// What this delivery sends.
    fn body<'a>(&'a self, env: &'a Envelope) -> Result<Body<'a>, ProduceError> {
        if env.payload_ref.is_some() && self.payload_delivery == PayloadDelivery::Url {
            return Ok(Body::Bytes(Bytes::new()));
        }
        match env.payload_in_store() {
            None => Ok(Body::Bytes(env.payload.clone())),
            Some(r) => {
                let objects = self.objects.as_deref().ok_or_else(|| {
                    self.payload_error(&PayloadError::Unavailable(
                        "this node has no object store configured".into(),
                    ))
                })?;
                Ok(Body::Stored(r, objects))
            }
        }
    }
}

/// The body of one delivery, before it is sent.
enum Body<'a> {
    Bytes(Bytes),
    Stored(&'a PayloadRef, &'a Objects),
}

/// A URL as `last_error`, dead letters and logs show it: scheme, host, port and path;
/// a query (API keys often travel in it) is replaced by `?...`.
pub fn shown_url(url: &Url) -> String {
    let mut shown = url.clone();
    shown.set_fragment(None);
    let had_query = shown.query().is_some_and(|q| !q.is_empty());
    shown.set_query(None);
    let mut s = shown.to_string();
    if had_query {
        s.push_str("?...");
    }
    s
}

/// Most bytes of a response body read (and discarded) to keep its connection reusable.
const RESPONSE_DRAIN_MAX: usize = 64 * 1024;

/// `Retry-After` as a wait from `now`: delta-seconds, or an HTTP-date (a date already
/// past is no wait). Anything else is ignored and the backoff applies.
fn retry_after_ms(h: &HeaderMap, now: std::time::SystemTime) -> Option<u64> {
    let value = h.get(RETRY_AFTER)?.to_str().ok()?.trim();
    if let Ok(secs) = value.parse::<u64>() {
        return Some(secs.saturating_mul(1000));
    }
    let at = httpdate::parse_http_date(value).ok()?;
    Some(
        at.duration_since(now)
            .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX)),
    )
}

/// Classifies an HTTP status: 2xx success; 408, 429 and 5xx retryable; the rest permanent.
pub fn classify_status(status: u16) -> Result<(), ProduceErrorKind> {
    match status {
        200..=299 => Ok(()),
        408 | 429 | 500..=599 => Err(ProduceErrorKind::Retryable),
        _ => Err(ProduceErrorKind::Permanent),
    }
}

impl HttpProducer {
    /// A delivery that got no answer: worth retrying.
    fn unanswered(&self, message: String) -> ProduceError {
        ProduceError {
            kind: ProduceErrorKind::Retryable,
            status: None,
            message: format!("request to {} failed: {message}", self.shown),
            retry_after_ms: None,
        }
    }

    /// The request, its answer and the drain of a small answer body, within the timeout.
    async fn exchange(&self, env: &Envelope) -> Result<(http::StatusCode, Option<u64>), ProduceError> {
        let body = self.body(env)?;
        let mut headers = self.request_headers(env);
        if let Some(r) = &env.payload_ref {
            self.payload_headers(&mut headers, r).await?;
        }
        self.sign(&mut headers, env, &body).await?;
        let body = match body {
            Body::Bytes(b) => Either::Left(Full::new(b)),
            Body::Stored(r, objects) => {
                let stream = objects.stream(r).await.map_err(|e| self.payload_error(&e))?;
                headers.insert(http::header::CONTENT_LENGTH, HeaderValue::from(r.size));
                Either::Right(StreamBody::new(stream.map(|c| c.map(Frame::data)).boxed()))
            }
        };
        let mut req = Request::new(body);
        *req.method_mut() = self.method.clone();
        *req.uri_mut() = self.uri.clone();
        *req.headers_mut() = headers;
        let resp = self.client.request(req).await.map_err(|e| match blocked_in(&e) {
            // Refused before any connection: the reason says nothing of the port.
            Some(b) => ProduceError {
                kind: ProduceErrorKind::Permanent,
                status: None,
                message: format!("request to {} refused: {b}", self.shown),
                retry_after_ms: None,
            },
            None => self.unanswered(error_chain(&e)),
        })?;
        let status = resp.status();
        let retry_after = retry_after_ms(resp.headers(), std::time::SystemTime::now());
        // A response body left unread keeps its connection out of the pool: read and
        // discard a small one; a large one is cut off and its connection closed.
        let mut body = resp.into_body();
        let mut left = RESPONSE_DRAIN_MAX;
        while left > 0 {
            match body.frame().await {
                Some(Ok(frame)) => left = left.saturating_sub(frame.data_ref().map_or(0, Bytes::len)),
                _ => break,
            }
        }
        Ok((status, retry_after))
    }
}

/// An error and its causes, one line ("client error (Connect): tcp connect error: ...").
fn error_chain(e: &dyn std::error::Error) -> String {
    let mut out = e.to_string();
    let mut cause = e.source();
    while let Some(c) = cause {
        out.push_str(": ");
        out.push_str(&c.to_string());
        cause = c.source();
    }
    out
}

impl Producer for HttpProducer {
    fn deliver<'a>(&'a self, env: &'a Envelope) -> BoxFuture<'a, Result<Delivered, ProduceError>> {
        Box::pin(async move {
            let (status, retry_after) = tokio::time::timeout(self.timeout, self.exchange(env))
                .await
                .map_err(|_| self.unanswered(format!("no answer within {} ms", self.timeout.as_millis())))??;
            match classify_status(status.as_u16()) {
                Ok(()) => Ok(Delivered {
                    status: status.as_u16(),
                }),
                Err(kind) => Err(ProduceError {
                    kind,
                    status: Some(status.as_u16()),
                    message: format!("{} answered {status}", self.shown),
                    retry_after_ms: retry_after,
                }),
            }
        })
    }
}

#[cfg(test)]
mod tests;
