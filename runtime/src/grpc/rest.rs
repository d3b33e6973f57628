//! The gateway's one implementation: each RPC is the REST operation it names, run
//! in-process through the same router (authentication, authorization, validation, audit
//! and handlers), with the messages transcoded to and from that operation's JSON by the
//! .proto descriptors. The gateway holds no state of its own.

use axum::Router;
use axum::body::Body;
use axum::http::{HeaderValue, Method, Request, StatusCode, header};
use prost::Message as _;
use prost_reflect::{DescriptorPool, DeserializeOptions, DynamicMessage, SerializeOptions};
use serde_json::Value;
use tower::ServiceExt as _;

use super::status::status_of;

/// Largest REST answer the gateway reads (a dead letter holds at most a 4 MiB payload).
const ANSWER_BYTES_MAX: usize = 64 << 20;

/// Marks a REST call made by the gateway, with the RPC's full name, for the audit log.
/// Only the gateway can set it: it is a request extension, not a header.
#[derive(Debug, Clone, Copy)]
pub(crate) struct ViaRpc(pub &'static str);

/// The REST router and the descriptors to transcode with.
#[derive(Clone)]
pub(crate) struct Rest {
    router: Router,
    pool: DescriptorPool,
}

impl Rest {
    pub(crate) fn new(router: Router) -> Result<Rest, prost_reflect::DescriptorError> {
        Ok(Rest {
            router,
            pool: DescriptorPool::decode(super::pb::DESCRIPTOR_SET)?,
        })
    }

    /// Runs `method path` (under `/api`) with `body` as JSON and the caller's
    /// `authorization`, and answers its JSON, or the gRPC status its error maps to.
    pub(crate) async fn call(
        &self,
        rpc: &'static str,
        authorization: Option<&HeaderValue>,
        method: Method,
        path: &str,
        body: Option<Value>,
    ) -> Result<Value, tonic::Status> {
        let mut req = Request::builder().method(method).uri(format!("/api{path}"));
        if let Some(a) = authorization {
            req = req.header(header::AUTHORIZATION, a);
        }
        let body = match body {
            Some(v) => {
                req = req.header(header::CONTENT_TYPE, "application/json");
                Body::from(serde_json::to_vec(&v).map_err(|e| internal(rpc, e))?)
            }
            None => Body::empty(),
        };
        let mut req = req.body(body).map_err(|e| internal(rpc, e))?;
        req.extensions_mut().insert(ViaRpc(rpc));
        let resp = match self.router.clone().oneshot(req).await {
            Ok(r) => r,
            Err(never) => match never {},
        };
        let status = resp.status();
        let bytes = axum::body::to_bytes(resp.into_body(), ANSWER_BYTES_MAX)
            .await
            .map_err(|e| internal(rpc, e))?;
        if !status.is_success() {
            return Err(error_status(status, &bytes));
        }
        if status == StatusCode::NO_CONTENT || bytes.is_empty() {
            return Ok(Value::Object(Default::default()));
        }
        serde_json::from_slice(&bytes).map_err(|e| internal(rpc, e))
    }

    /// A request message as JSON, with the proto field names (the REST API's) and 64-bit
    /// numbers as numbers; unset fields are left out.
    pub(crate) fn encode_json<M: prost::Message>(&self, full_name: &str, msg: &M) -> Result<Value, tonic::Status> {
        let desc = self
            .pool
            .get_message_by_name(full_name)
            .ok_or_else(|| tonic::Status::internal(format!("no descriptor for {full_name}")))?;
        let dynamic = DynamicMessage::decode(desc, msg.encode_to_vec().as_slice())
            .map_err(|e| tonic::Status::internal(format!("{full_name}: {e}")))?;
        // Defaults included, so an empty field reaches REST's validation (`name: ""` is
        // refused as REST refuses it, not as a missing field); unset optional fields stay
        // out.
        let options = SerializeOptions::new()
            .stringify_64_bit_integers(false)
            .use_proto_field_name(true)
            .skip_default_fields(false);
        let mut json = dynamic
            .serialize_with_options(serde_json::value::Serializer, &options)
            .map_err(|e| tonic::Status::internal(format!("{full_name}: {e}")))?;
        integral_numbers(&mut json);
        Ok(json)
    }

    /// A REST answer as the response message `full_name` (fields it does not have are
    /// ignored).
    pub(crate) fn decode_json<M: prost::Message + Default>(
        &self,
        full_name: &str,
        json: Value,
    ) -> Result<M, tonic::Status> {
        let desc = self
            .pool
            .get_message_by_name(full_name)
            .ok_or_else(|| tonic::Status::internal(format!("no descriptor for {full_name}")))?;
        let options = DeserializeOptions::new().deny_unknown_fields(false);
        let dynamic = DynamicMessage::deserialize_with_options(desc, json, &options)
            .map_err(|e| tonic::Status::internal(format!("transcoding the answer to {full_name}: {e}")))?;
        M::decode(dynamic.encode_to_vec().as_slice())
            .map_err(|e| tonic::Status::internal(format!("transcoding the answer to {full_name}: {e}")))
    }
}

/// A `google.protobuf.Struct` has only doubles, so an integration spec's `5000` arrives
/// as `5000.0`, which the REST API's integer fields refuse: whole numbers become integers
/// again (fractions stay as they are, and are refused where an integer is due).
pub(crate) fn integral_numbers(v: &mut Value) {
    match v {
        Value::Number(n) => {
            if let Some(f) = n
                .as_f64()
                .filter(|f| f.fract() == 0.0 && f.abs() < 9.007_199_254_740_992e15)
            {
                // Exact: |f| < 2^53.
                #[allow(clippy::cast_possible_truncation)]
                let i = f as i64;
                *n = serde_json::Number::from(i);
            }
        }
        Value::Array(a) => a.iter_mut().for_each(integral_numbers),
        Value::Object(m) => m.values_mut().for_each(integral_numbers),
        _ => {}
    }
}

fn internal(rpc: &str, e: impl std::fmt::Display) -> tonic::Status {
    tonic::Status::internal(format!("{rpc}: {e}"))
}

/// The status of a REST error answer `{"error": {"code", "message"}}`.
fn error_status(status: StatusCode, body: &[u8]) -> tonic::Status {
    let parsed: Option<(String, String)> = serde_json::from_slice::<Value>(body).ok().and_then(|v| {
        let e = v.get("error")?;
        Some((
            e.get("code")?.as_str()?.to_owned(),
            e.get("message")?.as_str()?.to_owned(),
        ))
    });
    let (code, message) = parsed.unwrap_or_else(|| (String::new(), String::from_utf8_lossy(body).into_owned()));
    tonic::Status::new(status_of(status, &code), message)
}

/// One path segment, percent-encoded: whatever a request field holds stays one segment
/// (`a/b` or `..` cannot reach another route).
pub(crate) fn segment(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.' | b'~') && !(s == "." || s == "..") {
            out.push(char::from(b));
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    if out.is_empty() {
        // An empty id is a segment too (answered like a missing one), not a shorter path.
        out.push_str("%20");
    }
    out
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn whole_doubles_become_integers_and_fractions_stay() {
        let mut v = serde_json::json!({"timeout_ms": 5000.0, "ratio": 0.5, "list": [1.0, -2.0], "s": "3.0"});
        integral_numbers(&mut v);
        assert_eq!(
            serde_json::to_string(&v).unwrap(),
            r#"{"list":[1,-2],"ratio":0.5,"s":"3.0","timeout_ms":5000}"#
        );
    }

    #[test]
    fn a_field_stays_one_segment() {
        assert_eq!(segment("acme"), "acme");
        assert_eq!(segment("a-b_c.d~"), "a-b_c.d~");
        assert_eq!(segment("a/b"), "a%2Fb");
        assert_eq!(segment(".."), "%2E%2E");
        assert_eq!(segment("x?y#z"), "x%3Fy%23z");
        assert_eq!(segment(""), "%20");
    }

    #[test]
    fn errors_keep_the_rest_message() {
        let body = br#"{"error":{"code":"already_exists","message":"tenant acme already exists"}}"#;
        let s = error_status(StatusCode::CONFLICT, body);
        assert_eq!(
            (s.code(), s.message()),
            (tonic::Code::AlreadyExists, "tenant acme already exists")
        );
        let s = error_status(StatusCode::BAD_GATEWAY, b"not json");
        assert_eq!((s.code(), s.message()), (tonic::Code::Unknown, "not json"));
    }

    #[test]
    fn messages_transcode_with_the_rest_field_names() {
        use crate::grpc::pb;
        let rest = Rest::new(Router::new()).unwrap();
        let req = pb::ReplayDeadLettersRequest {
            tenant_id: "acme".into(),
            since_ms: Some(1_700_000_000_000),
            dry_run: true,
            ..Default::default()
        };
        let json = rest.encode_json("vrsky.v1.ReplayDeadLettersRequest", &req).unwrap();
        assert_eq!(
            json,
            serde_json::json!({"tenant_id": "acme", "since_ms": 1_700_000_000_000u64, "dry_run": true})
        );
        let t: pb::Tenant = rest
            .decode_json(
                "vrsky.v1.Tenant",
                serde_json::json!({"id": "acme", "name": "Acme", "created_at": "2026-12-02T10:00:00.250Z", "extra": 1}),
            )
            .unwrap();
        assert_eq!((t.id.as_str(), t.created_at.unwrap().nanos), ("acme", 250_000_000));
    }
}
