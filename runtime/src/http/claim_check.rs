//! The HTTP side of the claim check: a webhook body streamed into the object store at
//! ingress, and `GET /objects/{key}`, which serves an object of the filesystem store to
//! whoever holds its presigned URL.

use std::sync::Arc;
use std::sync::atomic::Ordering;

use axum::body::Body;
use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use futures::StreamExt;
use object_store::ObjectStoreExt;
use tracing::warn;
use vrsky_actors::components::WebhookConsumer;
use vrsky_actors::{IntegrationId, MessageId, PayloadRef, Payloads, TenantId, now_ms};

use super::AppState;
use super::error::ApiError;
use crate::objects::Objects;
use crate::objects::upload::{UploadError, upload};

/// Streams a webhook body (`first`, then `rest`) into the store under a new key of this
/// message, checking its signature on the way when the integration requires one.
pub(super) async fn store_body(
    objects: &Objects,
    consumer: &WebhookConsumer,
    headers: &HeaderMap,
    (t, i, m): (&TenantId, &IntegrationId, &MessageId),
    first: bytes::Bytes,
    mut rest: axum::body::BodyDataStream,
) -> Result<PayloadRef, ApiError> {
    // The signature's headers are checked before any byte is stored; the body's HMAC is
    // computed as it streams, and a mismatch deletes what was stored.
    let verifier = consumer
        .verifier(|name| headers.get(name).and_then(|v| v.to_str().ok()), now_ms() / 1000)
        .map_err(|e| super::webhook::bad_signature(e).closing())?;
    // Memory is bounded per upload (5 MiB parts); the number of uploads at once is too.
    let Ok(_permit) = objects.uploads.clone().try_acquire_owned() else {
        super::webhook::drain(rest).await;
        let mut err = ApiError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "too_many_uploads",
            format!(
                "{} large bodies are streaming into the object store already \
                 (claim_check.uploads_in_flight_max); retry later",
                objects.settings.uploads_in_flight_max
            ),
        )
        .closing();
        err.retry_after_s = Some(1);
        return Err(err);
    };
    let key = crate::objects::keys::payload_key(t, i, m);
    let limit = objects.settings.body_bytes_max;
    match upload(objects.store(), &key, first, &mut rest, limit, verifier).await {
        Ok(r) => {
            objects.counters.stored.fetch_add(1, Ordering::Relaxed);
            objects.counters.stored_bytes.fetch_add(r.size, Ordering::Relaxed);
            Ok(r)
        }
        Err(UploadError::TooLarge(max)) => {
            // Read a little more so the client, still sending, sees the answer.
            super::webhook::drain(rest).await;
            Err(ApiError::new(
                StatusCode::PAYLOAD_TOO_LARGE,
                "payload_too_large",
                format!("body exceeds the {max}-byte limit"),
            )
            .closing())
        }
        Err(UploadError::Body(e)) => Err(match e.downcast_ref::<axum::Error>() {
            Some(e) => super::serve::body_error(e),
            None => ApiError::new(StatusCode::BAD_REQUEST, "bad_body", format!("cannot read body: {e}")).closing(),
        }),
        Err(UploadError::Signature(e)) => Err(super::webhook::bad_signature(e)),
        Err(UploadError::Store(e)) => {
            super::webhook::drain(rest).await;
            objects.counters.store_failures.fetch_add(1, Ordering::Relaxed);
            warn!(tenant_id = %t, integration_id = %i, message_id = %m, error = %e,
                "payload not stored in the object store; webhook refused with 503");
            let mut err = ApiError::new(
                StatusCode::SERVICE_UNAVAILABLE,
                "object_store_unavailable",
                format!("cannot store the payload: {e}"),
            )
            .closing();
            err.retry_after_s = Some(1);
            Err(err)
        }
    }
}

/// Deletes an upload that belongs to no message (a refused or repeated webhook), in the
/// background; one left behind is the orphan sweeper's.
pub(super) fn release(objects: &Arc<Objects>, r: &PayloadRef) {
    let (objects, key) = (objects.clone(), r.key.clone());
    tokio::spawn(async move {
        if let Err(e) = objects.delete(&key).await {
            warn!(key, error = %e, "unused payload object not deleted; the sweeper will");
        }
    });
}

/// The query of a presigned URL.
#[derive(Debug, serde::Deserialize)]
pub(crate) struct Presigned {
    expires: Option<String>,
    signature: Option<String>,
}

/// `GET /objects/{key}?expires=..&signature=..`: an object of the filesystem store,
/// streamed, to the holder of its presigned URL; 403 for a tampered or expired URL, 404
/// when the object is gone, and 404 on a node whose store presigns its own URLs (S3).
pub(crate) async fn get_object(
    State(s): State<AppState>,
    Path(key): Path<String>,
    Query(q): Query<Presigned>,
) -> Result<Response, ApiError> {
    let not_found = || ApiError::not_found(format!("no object {key:?}"));
    let objects = s.objects.as_ref().ok_or_else(not_found)?;
    let signer = objects.url_signer().ok_or_else(not_found)?;
    signer
        .check(&key, q.expires.as_deref(), q.signature.as_deref(), now_ms() / 1000)
        .map_err(|e| ApiError::new(StatusCode::FORBIDDEN, "bad_presigned_url", e.to_string()))?;
    let got = objects
        .store()
        .get(&object_store::path::Path::from(key.as_str()))
        .await
        .map_err(|e| match e {
            object_store::Error::NotFound { .. } => not_found(),
            e => ApiError::new(
                StatusCode::SERVICE_UNAVAILABLE,
                "object_store_unavailable",
                e.to_string(),
            ),
        })?;
    let size = got.meta.size;
    let body = Body::from_stream(got.into_stream().map(|c| c.map_err(std::io::Error::other)));
    let mut resp = (StatusCode::OK, body).into_response();
    let h = resp.headers_mut();
    h.insert(header::CONTENT_LENGTH, HeaderValue::from(size));
    h.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/octet-stream"),
    );
    Ok(resp)
}
