//! `POST /webhooks/{tenant_id}/{integration_id}`: the HTTP consumer's front door.

use axum::Json;
use axum::body::Body;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::IntoResponse;
use futures::StreamExt;
use tracing::{Instrument, debug_span, warn};

use opentelemetry::KeyValue;
use opentelemetry::trace::SpanKind;
use vrsky_actors::components::{Consumer, InboundRequest};
use vrsky_actors::message::idempotent_message_id;
use vrsky_actors::telemetry::{self, Hop};
use vrsky_actors::{IntegrationId, MessageId, TenantId, now_ms};

use crate::platform::Accepted;

/// Longest accepted idempotency key.
const IDEMPOTENCY_KEY_MAX: usize = 256;

use super::AppState;
use super::error::ApiError;

/// After a body crosses the limit, this much more is read and discarded (or for this
/// long) before answering 413: closing a socket with unread bytes makes the kernel reset
/// the connection, and the client could lose the 413. Past this, the connection is cut.
const DRAIN_BYTES_MAX: usize = 1024 * 1024;
const DRAIN_TIME_MAX: std::time::Duration = std::time::Duration::from_secs(2);

/// A body read up to a limit.
enum Read {
    /// All of it, within the limit.
    Whole(bytes::Bytes),
    /// It crossed the limit: what was read (the crossing chunk included) and the rest.
    Crossed(bytes::Bytes, axum::body::BodyDataStream),
}

/// Reads at most `limit` bytes of body; stops at the first chunk that crosses it.
async fn read_until(mut stream: axum::body::BodyDataStream, limit: usize) -> Result<Read, axum::Error> {
    let mut buf = bytes::BytesMut::new();
    while let Some(chunk) = stream.next().await {
        let chunk = chunk?;
        buf.extend_from_slice(&chunk);
        if buf.len() > limit {
            return Ok(Read::Crossed(buf.freeze(), stream));
        }
    }
    Ok(Read::Whole(buf.freeze()))
}

/// Reads and discards what is left of a refused body, within bounds (see
/// [`DRAIN_BYTES_MAX`]).
pub(super) async fn drain(mut stream: axum::body::BodyDataStream) {
    let deadline = tokio::time::Instant::now() + DRAIN_TIME_MAX;
    let mut drained = 0usize;
    while drained < DRAIN_BYTES_MAX {
        match tokio::time::timeout_at(deadline, stream.next()).await {
            Ok(Some(Ok(c))) => drained += c.len(),
            _ => break,
        }
    }
}

/// The message id: derived from `Idempotency-Key` (or Standard Webhooks' `webhook-id`),
/// so a repeat maps to the same message, or a new one.
fn message_id_of(headers: &HeaderMap, t: &TenantId, i: &IntegrationId) -> Result<MessageId, ApiError> {
    match headers.get("idempotency-key").or_else(|| headers.get("webhook-id")) {
        None => Ok(MessageId::generate()),
        Some(v) => {
            let key = v
                .to_str()
                .ok()
                .filter(|k| !k.is_empty() && k.len() <= IDEMPOTENCY_KEY_MAX && k.bytes().all(|b| b.is_ascii_graphic()))
                .ok_or_else(|| {
                    ApiError::new(
                        StatusCode::BAD_REQUEST,
                        "bad_idempotency_key",
                        format!("idempotency key must be 1 to {IDEMPOTENCY_KEY_MAX} visible ASCII characters"),
                    )
                })?;
            Ok(idempotent_message_id(t, i, key))
        }
    }
}

/// 401 for a signature that does not check.
pub(super) fn bad_signature(e: vrsky_actors::components::signature::SignatureError) -> ApiError {
    ApiError::new(StatusCode::UNAUTHORIZED, "bad_signature", e.to_string())
}

/// A new W3C traceparent (version 00, sampled) when the caller sent none.
fn new_traceparent() -> String {
    let trace = uuid::Uuid::new_v4().simple().to_string();
    let span = &uuid::Uuid::new_v4().simple().to_string()[..16];
    format!("00-{trace}-{span}-01")
}

fn valid_traceparent(v: &str) -> bool {
    let parts: Vec<&str> = v.split('-').collect();
    parts.len() == 4
        && parts[0].len() == 2
        && parts[1].len() == 32
        && parts[2].len() == 16
        && parts[3].len() == 2
        && v.bytes().all(|b| b.is_ascii_hexdigit() || b == b'-')
}

/// Accepts a webhook: 202 `{"message_id"}` once the message is stored in the platform
/// JetStream; it is published on the tenant's NATS after the answer. 503 with
/// `Retry-After` while the tenant's subtree is starting.
pub(crate) async fn receive(
    State(s): State<AppState>,
    Path((t, i)): Path<(String, String)>,
    headers: HeaderMap,
    body: Body,
) -> Result<impl IntoResponse, ApiError> {
    let not_found = || ApiError::not_found(format!("no integration {i:?} in tenant {t:?}"));
    let tenant = TenantId::new(&t).map_err(|_| not_found())?;
    let integration = IntegrationId::new(&i).map_err(|_| not_found())?;
    // Unknown: 404 before any byte of the body is read.
    let started_with = s.control.ingress_route(&tenant, &integration).await?;
    // Overload is refused, not queued: past the integration's bound of unfinished
    // messages the sender is asked to come back (Standard Webhooks senders retry on 429).
    // The gauge is the RetryScheduler's count from its re-drive index.
    let unfinished = started_with
        .counters
        .unfinished
        .load(std::sync::atomic::Ordering::Relaxed) as usize;
    if unfinished >= s.unfinished_max {
        let mut e = ApiError::new(
            StatusCode::TOO_MANY_REQUESTS,
            "too_many_unfinished",
            format!(
                "integration {integration} has {unfinished} unfinished messages, the limit is {} \
                 (webhook.unfinished_per_integration_max); retry later",
                s.unfinished_max
            ),
        );
        e.retry_after_s = Some(1);
        // A sender looping on refusals is slowed to one per delay per connection; the
        // wait is a timer, so the CPU goes to delivering what was accepted.
        if !s.refusal_delay.is_zero() {
            tokio::time::sleep(s.refusal_delay).await;
        }
        return Err(e);
    }

    // With an object store, bodies above the threshold go there and the limit is the
    // claim check's; without one, the webhook limit is the limit.
    let objects = s.objects.clone();
    let (inline_max, limit) = match &objects {
        Some(o) => (o.threshold() as usize, o.settings.body_bytes_max),
        None => (s.body_bytes_max, s.body_bytes_max as u64),
    };
    let too_large = || {
        ApiError::new(
            StatusCode::PAYLOAD_TOO_LARGE,
            "payload_too_large",
            format!("body exceeds the {limit}-byte limit"),
        )
        .closing()
    };
    // Refuse on the declared length before reading anything.
    let declared = headers
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    if declared.is_some_and(|len| len > limit) {
        return Err(too_large());
    }
    // Idempotency-Key, or Standard Webhooks' webhook-id: a repeat within the state TTL
    // maps to the same message id, and the create-only state write refuses it.
    let message_id = message_id_of(&headers, &tenant, &integration);
    let stream = body.into_data_stream();
    let read = match (&objects, declared) {
        // Known to be large: straight to the store, nothing buffered.
        (Some(_), Some(len)) if len > inline_max as u64 => Read::Crossed(bytes::Bytes::new(), stream),
        _ => read_until(stream, inline_max)
            .await
            .map_err(|e| super::serve::body_error(&e))?,
    };
    // The route is looked up again once the body is in: a slow upload may have outlived
    // the integration it started with, and the message must carry the one that will
    // deliver it.
    let (body, payload_ref, message_id, route) = match (read, &objects) {
        (Read::Whole(body), _) => {
            let route = s
                .control
                .ingress_route_again(&tenant, &integration, &started_with)
                .await?;
            // A signed integration refuses what is not signed by its secret, before
            // anything is stored (a repeated webhook-id is deduplicated below, as for any
            // idempotency key).
            route
                .consumer
                .verify(
                    |name| headers.get(name).and_then(|v| v.to_str().ok()),
                    &body,
                    now_ms() / 1000,
                )
                .map_err(bad_signature)?;
            (body, None, message_id, Some(route))
        }
        (Read::Crossed(_, rest), None) => {
            drain(rest).await;
            return Err(too_large());
        }
        (Read::Crossed(first, rest), Some(o)) => {
            let message_id = message_id?;
            let stored = super::claim_check::store_body(
                o,
                &s.control
                    .ingress_route_again(&tenant, &integration, &started_with)
                    .await?
                    .consumer,
                &headers,
                (&tenant, &integration, &message_id),
                first,
                rest,
            )
            .await?;
            (bytes::Bytes::new(), Some(stored), Ok(message_id), None)
        }
    };
    let release = {
        let (objects, payload_ref) = (objects.clone(), payload_ref.clone());
        move || {
            if let (Some(o), Some(r)) = (&objects, &payload_ref) {
                super::claim_check::release(o, r);
            }
        }
    };
    let route = match route {
        Some(r) => r,
        None => match s
            .control
            .ingress_route_again(&tenant, &integration, &started_with)
            .await
        {
            Ok(r) => r,
            Err(e) => {
                release();
                return Err(e.into());
            }
        },
    };
    let message_id = message_id?;
    let span =
        debug_span!("webhook.receive", tenant_id = %tenant, integration_id = %integration, message_id = %message_id);
    // The journey's root: the server span, continuing an incoming `traceparent`. Its
    // context is stored with the message, so every later step joins this trace.
    let incoming = headers
        .get("traceparent")
        .and_then(|v| v.to_str().ok())
        .filter(|v| valid_traceparent(v))
        .map(str::to_owned);
    let parent = if telemetry::enabled() {
        telemetry::context_from(incoming.as_deref())
    } else {
        opentelemetry::Context::new()
    };
    let server = telemetry::start(
        "POST /webhooks/{tenant}/{integration}",
        SpanKind::Server,
        &parent,
        (&tenant, &integration, &message_id),
        [
            KeyValue::new("http.request.method", "POST"),
            KeyValue::new("http.route", "/webhooks/{tenant}/{integration}"),
        ],
    );
    let in_server = server.clone();
    let answered: Result<_, ApiError> = async move {
        let server = in_server;
        let traced = if telemetry::enabled() {
            telemetry::traceparent_of(&server)
        } else {
            None
        };
        let trace_context = traced.or(incoming).unwrap_or_else(new_traceparent);
        let received_at_ms = now_ms();
        let request = InboundRequest {
            message_id: message_id.clone(),
            tenant_id: tenant,
            integration_id: integration,
            headers: headers
                .iter()
                .map(|(k, v)| (k.as_str().to_owned(), v.as_bytes().to_vec()))
                .collect(),
            body,
            trace_context: Some(trace_context),
            received_at_ms,
        };
        let mut envelope = route
            .consumer
            .accept(request)
            .map_err(|e| ApiError::new(StatusCode::BAD_REQUEST, "bad_header", e.to_string()))
            .inspect_err(|_| release())?;
        envelope.payload_ref = payload_ref.clone();
        // The durability point: the `received` state with its envelope is acknowledged by
        // the platform JetStream before the 202.
        let ids = (&envelope.tenant_id, &envelope.integration_id, &envelope.message_id);
        let store = telemetry::start(telemetry::span::STORE_RECEIVED, SpanKind::Internal, &server, ids, []);
        let accepted = s
            .control
            .platform()
            .accept(&envelope, route.incarnation, received_at_ms)
            .await;
        telemetry::end(
            &store,
            [KeyValue::new(
                telemetry::OUTCOME,
                match &accepted {
                    Ok(Accepted::New { .. }) => "received",
                    Ok(Accepted::Duplicate) => "duplicate",
                    Err(_) => "error",
                },
            )],
        );
        if matches!(accepted, Ok(Accepted::Duplicate)) {
            // A repeat: the message it repeats has its own object; this upload belongs to
            // no message. After a failed write it is kept: the outcome may be unknown (a
            // lost acknowledgement), and the sweeper removes it if no state names it.
            release();
        }
        let accepted = accepted.map_err(|e| {
            warn!(tenant_id = %envelope.tenant_id, integration_id = %envelope.integration_id,
                    message_id = %envelope.message_id, error = %e, "message state not stored");
            ApiError::new(
                StatusCode::SERVICE_UNAVAILABLE,
                "unavailable",
                format!("cannot store the message: {e}"),
            )
        })?;
        match accepted {
            Accepted::Duplicate => Ok((
                StatusCode::OK,
                Json(serde_json::json!({"message_id": message_id, "duplicate": true})),
            )),
            Accepted::New {
                state,
                revision,
                stored,
            } => {
                // Core NATS, the bytes just stored, without holding the answer: a tenant
                // whose NATS is down or stuck never delays the 202 (the publish is
                // bounded, and a lost one is re-driven).
                route
                    .counters
                    .accepted
                    .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                let hop = {
                    let _in_server = server.clone().attach();
                    Hop::publish((&state.tenant_id, &state.integration_id, &state.message_id))
                };
                route.publish_detached(stored, revision, hop, move |e| {
                    warn!(tenant_id = %state.tenant_id, integration_id = %state.integration_id,
                        message_id = %state.message_id, error = %e, "publish failed; the message will be re-driven");
                });
                Ok((
                    StatusCode::ACCEPTED,
                    Json(serde_json::json!({"message_id": message_id})),
                ))
            }
        }
    }
    .instrument(span)
    .await;
    let status = match &answered {
        Ok((code, _)) => *code,
        Err(e) => e.status,
    };
    telemetry::end(
        &server,
        [KeyValue::new("http.response.status_code", i64::from(status.as_u16()))],
    );
    answered
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn traceparents() {
        assert!(valid_traceparent(&new_traceparent()));
        assert!(valid_traceparent(
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"
        ));
        assert!(!valid_traceparent("00-xyz-00f067aa0ba902b7-01"));
        assert!(!valid_traceparent("garbage"));
    }
}
