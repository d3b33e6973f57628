//! The `vrsky.v1` services: each unary RPC is a thin adapter that names its REST
//! operation ([`super::operations`]), fills in its path, query and body from the request,
//! and reshapes the JSON answer where the message nests what REST flattens.

use std::pin::Pin;

use axum::http::HeaderValue;
use futures::Stream;
use serde_json::{Map, Value, json};
use tonic::{Request, Response, Status};

use super::operations::{self as op, Op};
use super::pb;
use super::rest::Rest;
use crate::control::Control;

/// Every service of the gateway: the REST router to run calls through, and the control
/// layer for the tree's change stream.
#[derive(Clone)]
pub(crate) struct Gateway {
    pub(crate) rest: Rest,
    pub(crate) control: std::sync::Arc<Control>,
    /// Turns true when the node stops, ending the open watches.
    pub(crate) stopping: tokio::sync::watch::Receiver<bool>,
}

fn auth<T>(r: &Request<T>) -> Option<HeaderValue> {
    r.metadata()
        .get("authorization")
        .and_then(|v| HeaderValue::from_bytes(v.as_encoded_bytes()).ok())
}

/// A query string of the set parameters (`?a=1&b=x`), or nothing.
fn query(params: &[(&str, Option<String>)]) -> String {
    let mut q = url::form_urlencoded::Serializer::new(String::new());
    let mut any = false;
    for (k, v) in params {
        if let Some(v) = v {
            q.append_pair(k, v);
            any = true;
        }
    }
    if any { format!("?{}", q.finish()) } else { String::new() }
}

/// A page size of 0 means the default (the parameter is left out).
fn limit(n: u32) -> Option<String> {
    (n > 0).then(|| n.to_string())
}

impl Gateway {
    /// Runs `o` at `path` and answers the message `answer`, from the JSON reshaped by
    /// `shape`.
    async fn unary<M: prost::Message + Default>(
        &self,
        o: &Op,
        authorization: Option<HeaderValue>,
        path: String,
        body: Option<Value>,
        answer: &str,
        shape: fn(Value) -> Value,
    ) -> Result<Response<M>, Status> {
        let json = self
            .rest
            .call(o.rpc, authorization.as_ref(), o.method.clone(), &path, body)
            .await?;
        Ok(Response::new(self.rest.decode_json(answer, shape(json))?))
    }

    /// The request as JSON, without the fields that went into the path.
    fn body<M: prost::Message>(&self, name: &str, msg: &M, path_fields: &[&str]) -> Result<Value, Status> {
        let mut v = self.rest.encode_json(name, msg)?;
        if let Value::Object(m) = &mut v {
            for f in path_fields {
                m.remove(*f);
            }
        }
        Ok(v)
    }
}

fn same(v: Value) -> Value {
    v
}

/// REST shows an integration's spec flattened into it; the message nests it in `spec`.
fn integration(v: Value) -> Value {
    let Value::Object(mut m) = v else { return v };
    let mut out = Map::new();
    for k in ["tenant_id", "webhook_path", "created_at", "stats"] {
        if let Some(x) = m.remove(k) {
            out.insert(k.into(), x);
        }
    }
    out.insert("spec".into(), Value::Object(m));
    Value::Object(out)
}

fn integrations(mut v: Value) -> Value {
    if let Some(Value::Array(list)) = v.get_mut("integrations") {
        for i in list.iter_mut() {
            *i = integration(i.take());
        }
    }
    v
}

/// REST flattens the message into the dead letter, shows headers as pairs, and the
/// payload as text or base64; the message nests the first, names the pair's parts, and
/// carries the payload as bytes (base64 in JSON).
fn dead_letter(v: Value) -> Value {
    use base64::Engine as _;
    let Value::Object(mut m) = v else { return v };
    let mut out = Map::new();
    for k in ["attempt_history", "content_type", "payload_bytes", "payload_ref"] {
        if let Some(x) = m.remove(k) {
            out.insert(k.into(), x);
        }
    }
    if let Some(Value::Array(pairs)) = m.remove("headers") {
        let headers: Vec<Value> = pairs
            .into_iter()
            .filter_map(|p| match p {
                Value::Array(kv) if kv.len() == 2 => Some(json!({"name": kv[0], "value": kv[1]})),
                _ => None,
            })
            .collect();
        out.insert("headers".into(), Value::Array(headers));
    }
    let payload = match (m.remove("payload"), m.remove("payload_base64")) {
        (_, Some(Value::String(b64))) => Some(b64),
        (Some(Value::String(text)), _) => Some(base64::engine::general_purpose::STANDARD.encode(text)),
        _ => None,
    };
    if let Some(p) = payload {
        out.insert("payload".into(), Value::String(p));
    }
    out.insert("message".into(), Value::Object(m));
    Value::Object(out)
}

/// REST lists failed replays as `[id, why]` pairs.
fn replay_report(mut v: Value) -> Value {
    if let Some(Value::Array(list)) = v.get_mut("failed") {
        for f in list.iter_mut() {
            if let Value::Array(pair) = f
                && pair.len() == 2
            {
                *f = json!({"message_id": pair[0], "error": pair[1]});
            }
        }
    }
    v
}

#[tonic::async_trait]
impl pb::tenant_service_server::TenantService for Gateway {
    async fn list_tenants(
        &self,
        r: Request<pb::ListTenantsRequest>,
    ) -> Result<Response<pb::ListTenantsResponse>, Status> {
        let o = &op::LIST_TENANTS;
        self.unary(o, auth(&r), o.path(&[]), None, "vrsky.v1.ListTenantsResponse", same)
            .await
    }

    async fn get_tenant(&self, r: Request<pb::GetTenantRequest>) -> Result<Response<pb::Tenant>, Status> {
        let o = &op::GET_TENANT;
        let path = o.path(&[&r.get_ref().tenant_id]);
        self.unary(o, auth(&r), path, None, "vrsky.v1.Tenant", same).await
    }

    async fn create_tenant(&self, r: Request<pb::CreateTenantRequest>) -> Result<Response<pb::Tenant>, Status> {
        let o = &op::CREATE_TENANT;
        let body = self.body("vrsky.v1.CreateTenantRequest", r.get_ref(), &[])?;
        self.unary(o, auth(&r), o.path(&[]), Some(body), "vrsky.v1.Tenant", same)
            .await
    }

    async fn delete_tenant(
        &self,
        r: Request<pb::DeleteTenantRequest>,
    ) -> Result<Response<pb::DeleteTenantResponse>, Status> {
        let o = &op::DELETE_TENANT;
        let path = o.path(&[&r.get_ref().tenant_id]);
        self.unary(o, auth(&r), path, None, "vrsky.v1.DeleteTenantResponse", same)
            .await
    }

    async fn get_tenant_stats(
        &self,
        r: Request<pb::GetTenantStatsRequest>,
    ) -> Result<Response<pb::TenantStats>, Status> {
        let o = &op::GET_TENANT_STATS;
        let path = o.path(&[&r.get_ref().tenant_id]);
        self.unary(o, auth(&r), path, None, "vrsky.v1.TenantStats", same).await
    }

    async fn rotate_credentials(
        &self,
        r: Request<pb::RotateCredentialsRequest>,
    ) -> Result<Response<pb::RotateCredentialsResponse>, Status> {
        let o = &op::ROTATE_CREDENTIALS;
        let path = o.path(&[&r.get_ref().tenant_id]);
        self.unary(o, auth(&r), path, None, "vrsky.v1.RotateCredentialsResponse", same)
            .await
    }
}

#[tonic::async_trait]
impl pb::integration_service_server::IntegrationService for Gateway {
    async fn list_integrations(
        &self,
        r: Request<pb::ListIntegrationsRequest>,
    ) -> Result<Response<pb::ListIntegrationsResponse>, Status> {
        let o = &op::LIST_INTEGRATIONS;
        let path = o.path(&[&r.get_ref().tenant_id]);
        self.unary(
            o,
            auth(&r),
            path,
            None,
            "vrsky.v1.ListIntegrationsResponse",
            integrations,
        )
        .await
    }

    async fn get_integration(
        &self,
        r: Request<pb::GetIntegrationRequest>,
    ) -> Result<Response<pb::Integration>, Status> {
        let o = &op::GET_INTEGRATION;
        let m = r.get_ref();
        let path = o.path(&[&m.tenant_id, &m.integration_id]);
        self.unary(o, auth(&r), path, None, "vrsky.v1.Integration", integration)
            .await
    }

    async fn create_integration(
        &self,
        r: Request<pb::CreateIntegrationRequest>,
    ) -> Result<Response<pb::Integration>, Status> {
        let o = &op::CREATE_INTEGRATION;
        let path = o.path(&[&r.get_ref().tenant_id]);
        let spec = self.body("vrsky.v1.CreateIntegrationRequest", r.get_ref(), &[])?;
        let spec = spec.get("spec").cloned().unwrap_or_else(|| json!({}));
        self.unary(o, auth(&r), path, Some(spec), "vrsky.v1.Integration", integration)
            .await
    }

    async fn update_integration(
        &self,
        r: Request<pb::UpdateIntegrationRequest>,
    ) -> Result<Response<pb::Integration>, Status> {
        let o = &op::UPDATE_INTEGRATION;
        let m = r.get_ref();
        let path = o.path(&[&m.tenant_id, &m.integration_id]);
        let spec = self.body("vrsky.v1.UpdateIntegrationRequest", m, &[])?;
        let spec = spec.get("spec").cloned().unwrap_or_else(|| json!({}));
        self.unary(o, auth(&r), path, Some(spec), "vrsky.v1.Integration", integration)
            .await
    }

    async fn delete_integration(
        &self,
        r: Request<pb::DeleteIntegrationRequest>,
    ) -> Result<Response<pb::DeleteIntegrationResponse>, Status> {
        let o = &op::DELETE_INTEGRATION;
        let m = r.get_ref();
        let path = o.path(&[&m.tenant_id, &m.integration_id]);
        self.unary(o, auth(&r), path, None, "vrsky.v1.DeleteIntegrationResponse", same)
            .await
    }
}

#[tonic::async_trait]
impl pb::nats_instance_service_server::NatsInstanceService for Gateway {
    async fn list_nats_instances(
        &self,
        r: Request<pb::ListNatsInstancesRequest>,
    ) -> Result<Response<pb::ListNatsInstancesResponse>, Status> {
        let o = &op::LIST_NATS_INSTANCES;
        let path = o.path(&[&r.get_ref().tenant_id]);
        self.unary(o, auth(&r), path, None, "vrsky.v1.ListNatsInstancesResponse", same)
            .await
    }

    async fn add_nats_instance(
        &self,
        r: Request<pb::AddNatsInstanceRequest>,
    ) -> Result<Response<pb::NatsInstance>, Status> {
        let o = &op::ADD_NATS_INSTANCE;
        let path = o.path(&[&r.get_ref().tenant_id]);
        self.unary(o, auth(&r), path, None, "vrsky.v1.NatsInstance", same).await
    }

    async fn drain_nats_instance(
        &self,
        r: Request<pb::DrainNatsInstanceRequest>,
    ) -> Result<Response<pb::NatsInstance>, Status> {
        let o = &op::DRAIN_NATS_INSTANCE;
        let m = r.get_ref();
        let path = o.path(&[&m.tenant_id, &m.instance_number.to_string()]);
        self.unary(o, auth(&r), path, None, "vrsky.v1.NatsInstance", same).await
    }

    async fn remove_nats_instance(
        &self,
        r: Request<pb::RemoveNatsInstanceRequest>,
    ) -> Result<Response<pb::RemoveNatsInstanceResponse>, Status> {
        let o = &op::REMOVE_NATS_INSTANCE;
        let m = r.get_ref();
        let path = o.path(&[&m.tenant_id, &m.instance_number.to_string()]);
        self.unary(o, auth(&r), path, None, "vrsky.v1.RemoveNatsInstanceResponse", same)
            .await
    }
}

#[tonic::async_trait]
impl pb::message_service_server::MessageService for Gateway {
    async fn get_message(&self, r: Request<pb::GetMessageRequest>) -> Result<Response<pb::Message>, Status> {
        let o = &op::GET_MESSAGE;
        let m = r.get_ref();
        let path = o.path(&[&m.tenant_id, &m.message_id]);
        self.unary(o, auth(&r), path, None, "vrsky.v1.Message", same).await
    }

    async fn list_messages(
        &self,
        r: Request<pb::ListMessagesRequest>,
    ) -> Result<Response<pb::ListMessagesResponse>, Status> {
        let o = &op::LIST_MESSAGES;
        let m = r.get_ref();
        let path = o.path(&[&m.tenant_id, &m.integration_id])
            + &query(&[
                ("limit", limit(m.limit)),
                ("status", m.status.clone()),
                ("cursor", m.cursor.clone()),
            ]);
        self.unary(o, auth(&r), path, None, "vrsky.v1.ListMessagesResponse", same)
            .await
    }
}

#[tonic::async_trait]
impl pb::dead_letter_service_server::DeadLetterService for Gateway {
    async fn list_dead_letters(
        &self,
        r: Request<pb::ListDeadLettersRequest>,
    ) -> Result<Response<pb::ListDeadLettersResponse>, Status> {
        let o = &op::LIST_DEAD_LETTERS;
        let m = r.get_ref();
        let path =
            o.path(&[&m.tenant_id]) + &query(&[("limit", limit(m.limit)), ("cursor", m.cursor.map(|c| c.to_string()))]);
        self.unary(o, auth(&r), path, None, "vrsky.v1.ListDeadLettersResponse", same)
            .await
    }

    async fn get_dead_letter(&self, r: Request<pb::GetDeadLetterRequest>) -> Result<Response<pb::DeadLetter>, Status> {
        let o = &op::GET_DEAD_LETTER;
        let m = r.get_ref();
        let path = o.path(&[&m.tenant_id, &m.message_id]);
        self.unary(o, auth(&r), path, None, "vrsky.v1.DeadLetter", dead_letter)
            .await
    }

    async fn replay_dead_letter(
        &self,
        r: Request<pb::ReplayDeadLetterRequest>,
    ) -> Result<Response<pb::ReplayDeadLetterResponse>, Status> {
        let o = &op::REPLAY_DEAD_LETTER;
        let m = r.get_ref();
        let path = o.path(&[&m.tenant_id, &m.message_id]);
        self.unary(o, auth(&r), path, None, "vrsky.v1.ReplayDeadLetterResponse", same)
            .await
    }

    async fn replay_dead_letters(
        &self,
        r: Request<pb::ReplayDeadLettersRequest>,
    ) -> Result<Response<pb::ReplayDeadLettersResponse>, Status> {
        let o = &op::REPLAY_DEAD_LETTERS;
        let path = o.path(&[&r.get_ref().tenant_id]);
        let body = self.body("vrsky.v1.ReplayDeadLettersRequest", r.get_ref(), &["tenant_id"])?;
        self.unary(
            o,
            auth(&r),
            path,
            Some(body),
            "vrsky.v1.ReplayDeadLettersResponse",
            replay_report,
        )
        .await
    }

    async fn delete_dead_letter(
        &self,
        r: Request<pb::DeleteDeadLetterRequest>,
    ) -> Result<Response<pb::DeleteDeadLetterResponse>, Status> {
        let o = &op::DELETE_DEAD_LETTER;
        let m = r.get_ref();
        let path = o.path(&[&m.tenant_id, &m.message_id]);
        self.unary(o, auth(&r), path, None, "vrsky.v1.DeleteDeadLetterResponse", same)
            .await
    }
}

#[tonic::async_trait]
impl pb::api_key_service_server::ApiKeyService for Gateway {
    async fn create_api_key(&self, r: Request<pb::CreateApiKeyRequest>) -> Result<Response<pb::CreatedApiKey>, Status> {
        let o = &op::CREATE_API_KEY;
        let path = o.path(&[&r.get_ref().tenant_id]);
        self.unary(o, auth(&r), path, None, "vrsky.v1.CreatedApiKey", same)
            .await
    }

    async fn list_api_keys(
        &self,
        r: Request<pb::ListApiKeysRequest>,
    ) -> Result<Response<pb::ListApiKeysResponse>, Status> {
        let o = &op::LIST_API_KEYS;
        let path = o.path(&[&r.get_ref().tenant_id]);
        self.unary(o, auth(&r), path, None, "vrsky.v1.ListApiKeysResponse", same)
            .await
    }

    async fn revoke_api_key(
        &self,
        r: Request<pb::RevokeApiKeyRequest>,
    ) -> Result<Response<pb::RevokeApiKeyResponse>, Status> {
        let o = &op::REVOKE_API_KEY;
        let m = r.get_ref();
        let path = o.path(&[&m.tenant_id, &m.id]);
        self.unary(o, auth(&r), path, None, "vrsky.v1.RevokeApiKeyResponse", same)
            .await
    }
}

#[tonic::async_trait]
impl pb::audit_service_server::AuditService for Gateway {
    async fn list_audit_entries(
        &self,
        r: Request<pb::ListAuditEntriesRequest>,
    ) -> Result<Response<pb::ListAuditEntriesResponse>, Status> {
        let o = &op::LIST_AUDIT_ENTRIES;
        let m = r.get_ref();
        let path = o.path(&[])
            + &query(&[
                ("tenant", m.tenant.clone()),
                ("since", m.since.clone()),
                ("after", m.after.map(|a| a.to_string())),
                ("limit", limit(m.limit)),
            ]);
        self.unary(o, auth(&r), path, None, "vrsky.v1.ListAuditEntriesResponse", same)
            .await
    }
}

#[tonic::async_trait]
impl pb::cluster_service_server::ClusterService for Gateway {
    async fn get_cluster(&self, r: Request<pb::GetClusterRequest>) -> Result<Response<pb::Cluster>, Status> {
        let o = &op::GET_CLUSTER;
        self.unary(o, auth(&r), o.path(&[]), None, "vrsky.v1.Cluster", same)
            .await
    }
}

/// The stream of `WatchActorTree`.
type TreeStream = Pin<Box<dyn Stream<Item = Result<pb::WatchActorTreeResponse, Status>> + Send>>;

#[tonic::async_trait]
impl pb::actor_tree_service_server::ActorTreeService for Gateway {
    async fn get_actor_tree(&self, r: Request<pb::GetActorTreeRequest>) -> Result<Response<pb::ActorTreeNode>, Status> {
        let o = &op::GET_ACTOR_TREE;
        self.unary(o, auth(&r), o.path(&[]), None, "vrsky.v1.ActorTreeNode", same)
            .await
    }

    type WatchActorTreeStream = TreeStream;

    async fn watch_actor_tree(&self, r: Request<pb::WatchActorTreeRequest>) -> Result<Response<TreeStream>, Status> {
        // Authorized exactly as `GET /api/tree` (the operator's token).
        let o = &op::GET_ACTOR_TREE;
        self.rest
            .call(
                "vrsky.v1.ActorTreeService/WatchActorTree",
                auth(&r).as_ref(),
                o.method.clone(),
                &o.path(&[]),
                None,
            )
            .await?;
        let (tree, after_seq, rx) = self.control.watch_tree().await.map_err(|e| {
            let e = crate::http::error::ApiError::from(e);
            Status::new(super::status::status_of(e.status, e.code), e.message)
        })?;
        let root: pb::ActorTreeNode = self.rest.decode_json(
            "vrsky.v1.ActorTreeNode",
            serde_json::to_value(&tree).map_err(|e| Status::internal(e.to_string()))?,
        )?;
        let first = pb::WatchActorTreeResponse {
            update: Some(pb::watch_actor_tree_response::Update::Snapshot(pb::ActorTreeSnapshot {
                root: Some(root),
                after_seq,
            })),
        };
        Ok(Response::new(Box::pin(super::watch::changes(
            first,
            after_seq,
            rx,
            self.stopping.clone(),
        ))))
    }
}
