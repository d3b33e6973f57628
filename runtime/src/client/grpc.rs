//! The CLI over the gRPC gateway (`grpc://host:port`): each REST call the commands make
//! is sent as the RPC the gateway maps that operation to (`grpc/operations.rs`), its path
//! parameters, query and body put into the request message by the descriptors, and the
//! answer shaped back into what REST shows, so every command works the same over both.

use base64::Engine as _;
use prost_reflect::{DescriptorPool, DeserializeOptions, DynamicMessage, MessageDescriptor, SerializeOptions};
use reqwest::Method;
use serde_json::{Map, Value, json};

use crate::grpc::operations::{ALL, Op};

/// A connection to a node's gRPC gateway.
pub struct GrpcApi {
    channel: tonic::transport::Channel,
    pool: DescriptorPool,
    token: Option<String>,
    addr: String,
}

impl GrpcApi {
    /// Connects to `grpc://host:port`.
    pub async fn connect(url: &str, token: Option<String>) -> anyhow::Result<GrpcApi> {
        let addr = url.trim_start_matches("grpc://").to_owned();
        let channel = tonic::transport::Channel::from_shared(format!("http://{addr}"))?
            .connect()
            .await
            .map_err(|e| {
                anyhow::anyhow!(
                    "cannot reach {url}: {} (is the node running with a gRPC gateway? set VRSKY_URL, or choose a context with `vrsky context use`)",
                    root_cause(&e)
                )
            })?;
        Ok(GrpcApi {
            channel,
            pool: DescriptorPool::decode(crate::grpc::pb::DESCRIPTOR_SET)?,
            token,
            addr,
        })
    }

    /// The node's gateway address.
    pub fn addr(&self) -> &str {
        &self.addr
    }

    /// The REST call `method path` (`/api/...?query`) with `body`, made as its RPC; the
    /// answer in REST's shape.
    pub async fn call(&self, method: Method, path: &str, body: Option<&Value>) -> anyhow::Result<Value> {
        let (route, query) = path.split_once('?').unwrap_or((path, ""));
        let route = route.strip_prefix("/api").unwrap_or(route);
        let (op, args) = ALL
            .iter()
            .find_map(|o| o.matches(&method, route).map(|a| (*o, a)))
            .ok_or_else(|| anyhow::anyhow!("{method} {route} has no RPC"))?;
        let (service, rpc) = op.rpc.split_once('/').unwrap_or((op.rpc, ""));
        let m = self
            .pool
            .get_service_by_name(service)
            .and_then(|s| s.methods().find(|m| m.name() == rpc))
            .ok_or_else(|| anyhow::anyhow!("{} is not in the descriptors", op.rpc))?;
        let request = request_json(op, &args, query, body, &m.input());
        let input = DynamicMessage::deserialize_with_options(
            m.input(),
            request,
            &DeserializeOptions::new().deny_unknown_fields(false),
        )
        .map_err(|e| anyhow::anyhow!("building {}: {e}", op.rpc))?;
        let mut req = tonic::Request::new(prost::Message::encode_to_vec(&input));
        if let Some(t) = &self.token {
            req.metadata_mut()
                .insert("authorization", format!("Bearer {t}").parse()?);
        }
        let mut grpc = tonic::client::Grpc::new(self.channel.clone());
        grpc.ready()
            .await
            .map_err(|e| anyhow::anyhow!("the gateway is not ready: {e}"))?;
        let path = tonic::codegen::http::uri::PathAndQuery::try_from(format!("/{}", op.rpc))?;
        let reply = grpc.unary(req, path, Raw).await.map_err(status_error)?.into_inner();
        let out = DynamicMessage::decode(m.output(), reply.as_slice())?;
        let json = out.serialize_with_options(
            serde_json::value::Serializer,
            &SerializeOptions::new()
                .stringify_64_bit_integers(false)
                .use_proto_field_name(true)
                .skip_default_fields(false),
        )?;
        let mut shaped = rest_shape(m.output().full_name(), json);
        // A spec's numbers crossed as a Struct's doubles.
        crate::grpc::rest::integral_numbers(&mut shaped);
        Ok(shaped)
    }

    /// Follows `WatchActorTree`: `on` gets the snapshot, then each change, as JSON.
    pub async fn watch_tree(&self, mut on: impl FnMut(Value)) -> anyhow::Result<()> {
        use crate::grpc::pb;
        let mut client = pb::actor_tree_service_client::ActorTreeServiceClient::new(self.channel.clone());
        let mut req = tonic::Request::new(pb::WatchActorTreeRequest {});
        if let Some(t) = &self.token {
            req.metadata_mut()
                .insert("authorization", format!("Bearer {t}").parse()?);
        }
        let mut stream = client.watch_actor_tree(req).await.map_err(status_error)?.into_inner();
        let desc = self
            .pool
            .get_message_by_name("vrsky.v1.WatchActorTreeResponse")
            .ok_or_else(|| anyhow::anyhow!("no WatchActorTreeResponse descriptor"))?;
        while let Some(msg) = stream.message().await.map_err(status_error)? {
            let dynamic = DynamicMessage::decode(desc.clone(), prost::Message::encode_to_vec(&msg).as_slice())?;
            on(dynamic.serialize_with_options(
                serde_json::value::Serializer,
                &SerializeOptions::new()
                    .stringify_64_bit_integers(false)
                    .use_proto_field_name(true)
                    .skip_default_fields(false),
            )?);
        }
        Ok(())
    }
}

fn root_cause(e: &(dyn std::error::Error + 'static)) -> String {
    let mut cur = e;
    while let Some(next) = cur.source() {
        cur = next;
    }
    cur.to_string()
}

fn status_error(s: tonic::Status) -> anyhow::Error {
    let hint = match s.code() {
        tonic::Code::Unauthenticated => " (set VRSKY_TOKEN, or a context's token)",
        tonic::Code::PermissionDenied => " (this needs the admin token)",
        tonic::Code::Unavailable => " (the node is starting or a dependency is down; retry shortly)",
        _ => "",
    };
    anyhow::anyhow!("{}{hint}", s.message())
}

/// The request message's JSON: the path parameters by the names the message gives them,
/// the query's parameters, and the body (under `spec` for a message that has one).
fn request_json(op: &Op, args: &[&str], query: &str, body: Option<&Value>, input: &MessageDescriptor) -> Value {
    let mut m = Map::new();
    let names: Vec<&str> = op.route.split('/').filter(|s| s.starts_with('{')).collect();
    for (name, value) in names.iter().zip(args) {
        let value = percent_decode(value);
        let field = match *name {
            "{t}" => "tenant_id",
            "{i}" => "integration_id",
            "{n}" => "instance_number",
            _ if input.get_field_by_name("message_id").is_some() => "message_id",
            _ => "id",
        };
        m.insert(field.into(), json!(value));
    }
    for (k, v) in url::form_urlencoded::parse(query.as_bytes()) {
        m.insert(k.into_owned(), json!(v.into_owned()));
    }
    match body {
        Some(b) if input.get_field_by_name("spec").is_some() => {
            m.insert("spec".into(), b.clone());
        }
        Some(Value::Object(b)) => m.extend(b.clone()),
        _ => {}
    }
    Value::Object(m)
}

fn percent_decode(s: &str) -> String {
    url::form_urlencoded::parse(format!("x={s}").as_bytes())
        .next()
        .map(|(_, v)| v.into_owned())
        .unwrap_or_default()
}

/// The inverse of the gateway's reshaping: integrations with their spec flattened, dead
/// letters with their message flattened, headers as pairs and the payload as text or
/// base64, failed replays as pairs.
fn rest_shape(message: &str, mut v: Value) -> Value {
    fn integration(v: Value) -> Value {
        let Value::Object(mut m) = v else { return v };
        if let Some(Value::Object(spec)) = m.remove("spec") {
            m.extend(spec);
        }
        Value::Object(m)
    }
    match message {
        "vrsky.v1.Integration" => integration(v),
        "vrsky.v1.ListIntegrationsResponse" => {
            if let Some(Value::Array(list)) = v.get_mut("integrations") {
                for i in list.iter_mut() {
                    *i = integration(i.take());
                }
            }
            v
        }
        "vrsky.v1.DeadLetter" => {
            let Value::Object(mut m) = v else { return v };
            if let Some(Value::Object(msg)) = m.remove("message") {
                m.extend(msg);
            }
            if let Some(Value::Array(hs)) = m.remove("headers") {
                let pairs: Vec<Value> = hs.iter().map(|h| json!([h["name"], h["value"]])).collect();
                m.insert("headers".into(), Value::Array(pairs));
            }
            let bytes = m
                .remove("payload")
                .and_then(|p| p.as_str().map(str::to_owned))
                .and_then(|b| base64::engine::general_purpose::STANDARD.decode(b).ok())
                .unwrap_or_default();
            match String::from_utf8(bytes) {
                Ok(text) => m.insert("payload".into(), json!(text)),
                Err(e) => m.insert(
                    "payload_base64".into(),
                    json!(base64::engine::general_purpose::STANDARD.encode(e.into_bytes())),
                ),
            };
            Value::Object(m)
        }
        "vrsky.v1.ReplayDeadLettersResponse" => {
            if let Some(Value::Array(list)) = v.get_mut("failed") {
                for f in list.iter_mut() {
                    *f = json!([f["message_id"], f["error"]]);
                }
            }
            v
        }
        _ => v,
    }
}

/// A gRPC codec of raw bytes in and out, for clients that build their messages from
/// descriptors (this one, and tests that use only what reflection gives them).
#[derive(Debug, Clone, Copy, Default)]
pub struct Raw;

impl tonic::codec::Codec for Raw {
    type Encode = Vec<u8>;
    type Decode = Vec<u8>;
    type Encoder = Raw;
    type Decoder = Raw;
    fn encoder(&mut self) -> Raw {
        Raw
    }
    fn decoder(&mut self) -> Raw {
        Raw
    }
}

impl tonic::codec::Encoder for Raw {
    type Item = Vec<u8>;
    type Error = tonic::Status;
    fn encode(&mut self, item: Vec<u8>, dst: &mut tonic::codec::EncodeBuf<'_>) -> Result<(), tonic::Status> {
        bytes::BufMut::put_slice(dst, &item);
        Ok(())
    }
}

impl tonic::codec::Decoder for Raw {
    type Item = Vec<u8>;
    type Error = tonic::Status;
    fn decode(&mut self, src: &mut tonic::codec::DecodeBuf<'_>) -> Result<Option<Vec<u8>>, tonic::Status> {
        let n = bytes::Buf::remaining(src);
        Ok(Some(bytes::Buf::copy_to_bytes(src, n).to_vec()))
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn rest_calls_become_their_rpc_requests() {
        let pool = DescriptorPool::decode(crate::grpc::pb::DESCRIPTOR_SET).unwrap();
        let input = |n: &str| pool.get_message_by_name(n).unwrap();
        let op = ALL.iter().find(|o| o.rpc.ends_with("/ListMessages")).unwrap();
        let args = op
            .matches(&Method::GET, "/tenants/acme/integrations/a%20b/messages")
            .unwrap();
        let v = request_json(
            op,
            &args,
            "limit=10&status=retry",
            None,
            &input("vrsky.v1.ListMessagesRequest"),
        );
        assert_eq!(
            v,
            json!({"tenant_id": "acme", "integration_id": "a b", "limit": "10", "status": "retry"})
        );
        let op = ALL.iter().find(|o| o.rpc.ends_with("/UpdateIntegration")).unwrap();
        let args = op.matches(&Method::PUT, "/tenants/acme/integrations/orders").unwrap();
        let v = request_json(
            op,
            &args,
            "",
            Some(&json!({"id": "orders"})),
            &input("vrsky.v1.UpdateIntegrationRequest"),
        );
        assert_eq!(v["spec"], json!({"id": "orders"}));
        let op = ALL.iter().find(|o| o.rpc.ends_with("/RevokeApiKey")).unwrap();
        let args = op.matches(&Method::DELETE, "/tenants/acme/api-keys/k1").unwrap();
        let v = request_json(op, &args, "", None, &input("vrsky.v1.RevokeApiKeyRequest"));
        assert_eq!(v, json!({"tenant_id": "acme", "id": "k1"}));
        assert!(op.matches(&Method::GET, "/tenants/acme/api-keys/k1").is_none());
    }

    #[test]
    fn answers_take_the_rest_shape_back() {
        let dl = rest_shape(
            "vrsky.v1.DeadLetter",
            json!({"message": {"message_id": "m"}, "headers": [{"name": "a", "value": "b"}], "payload": "aGk="}),
        );
        assert_eq!(dl, json!({"message_id": "m", "headers": [["a", "b"]], "payload": "hi"}));
        let i = rest_shape("vrsky.v1.Integration", json!({"tenant_id": "t", "spec": {"id": "x"}}));
        assert_eq!(i, json!({"tenant_id": "t", "id": "x"}));
    }
}
