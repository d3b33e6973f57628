//! The gRPC gateway against a running node: every service round trip, the refusals REST
//! makes answered with their gRPC codes, `WatchActorTree` while an integration actor is
//! killed and restarted, and health and reflection through clients that have no .proto
//! files.

use std::time::Duration;

use serde_json::{Value, json};
use tonic::transport::Channel;
use tonic::{Code, Request};
use vrsky_runtime::client::grpc::Raw;
use vrsky_runtime::grpc::pb;

use crate::common::{Backend, Sink, TOKEN, TestRuntime, spec};

async fn node(sink: &Sink) -> (TestRuntime, Channel) {
    let _ = sink;
    node_with(|c| c.nats.instances_per_tenant_max = 2).await
}

/// A node with its gateway on a free port, configured further by `tweak`, and a channel to
/// the gateway.
async fn node_with(tweak: impl FnOnce(&mut vrsky_runtime::config::Config)) -> (TestRuntime, Channel) {
    let t = TestRuntime::start_with(Backend::Sqlite, |c| {
        c.grpc_addr = Some("127.0.0.1:0".parse().unwrap());
        tweak(c);
    })
    .await;
    let addr = t.rt().grpc_addr.expect("the gateway listens");
    let channel = Channel::from_shared(format!("http://{addr}"))
        .unwrap()
        .connect()
        .await
        .unwrap();
    (t, channel)
}

/// A request with `token` as its bearer (none when `None`).
fn with<T>(msg: T, token: Option<&str>) -> Request<T> {
    let mut r = Request::new(msg);
    if let Some(t) = token {
        r.metadata_mut()
            .insert("authorization", format!("Bearer {t}").parse().unwrap());
    }
    r
}

fn admin<T>(msg: T) -> Request<T> {
    with(msg, Some(TOKEN))
}

fn to_struct(v: &Value) -> prost_types::Struct {
    fn value(v: &Value) -> prost_types::Value {
        use prost_types::value::Kind;
        let kind = match v {
            Value::Null => Kind::NullValue(0),
            Value::Bool(b) => Kind::BoolValue(*b),
            Value::Number(n) => Kind::NumberValue(n.as_f64().unwrap()),
            Value::String(s) => Kind::StringValue(s.clone()),
            Value::Array(a) => Kind::ListValue(prost_types::ListValue {
                values: a.iter().map(value).collect(),
            }),
            Value::Object(_) => Kind::StructValue(to_struct(v)),
        };
        prost_types::Value { kind: Some(kind) }
    }
    prost_types::Struct {
        fields: v
            .as_object()
            .unwrap()
            .iter()
            .map(|(k, x)| (k.clone(), value(x)))
            .collect(),
    }
}

fn field<'a>(s: &'a prost_types::Struct, name: &str) -> Option<&'a prost_types::value::Kind> {
    s.fields.get(name).and_then(|v| v.kind.as_ref())
}

async fn refused<T: std::fmt::Debug>(r: Result<tonic::Response<T>, tonic::Status>, code: Code, says: &str) {
    let e = r.expect_err("refused");
    assert_eq!(e.code(), code, "{e:?}");
    assert!(e.message().contains(says), "{:?} does not say {says:?}", e.message());
}

/// Polls a message over gRPC until it reaches `status`.
async fn wait_status(c: &mut pb::message_service_client::MessageServiceClient<Channel>, id: &str, status: &str) {
    for _ in 0..500 {
        let m = c
            .get_message(admin(pb::GetMessageRequest {
                tenant_id: "acme".into(),
                message_id: id.into(),
            }))
            .await;
        if let Ok(m) = m
            && m.get_ref().status == status
        {
            return;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    panic!("message {id} never reached {status}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_service_round_trips_and_refuses_like_rest() {
    use pb::api_key_service_client::ApiKeyServiceClient;
    use pb::audit_service_client::AuditServiceClient;
    use pb::dead_letter_service_client::DeadLetterServiceClient;
    use pb::integration_service_client::IntegrationServiceClient;
    use pb::message_service_client::MessageServiceClient;
    use pb::nats_instance_service_client::NatsInstanceServiceClient;
    use pb::tenant_service_client::TenantServiceClient;

    let sink = Sink::start().await;
    let (t, ch) = node(&sink).await;
    let mut tenants = TenantServiceClient::new(ch.clone());

    // Authentication: the same answers as REST, as UNAUTHENTICATED.
    refused(
        tenants.list_tenants(with(pb::ListTenantsRequest {}, None)).await,
        Code::Unauthenticated,
        "missing Authorization header",
    )
    .await;
    refused(
        tenants
            .list_tenants(with(pb::ListTenantsRequest {}, Some("nope")))
            .await,
        Code::Unauthenticated,
        "invalid token",
    )
    .await;

    // Tenants.
    let created = tenants
        .create_tenant(admin(pb::CreateTenantRequest {
            id: "acme".into(),
            name: "Acme".into(),
        }))
        .await
        .unwrap()
        .into_inner();
    assert_eq!((created.id.as_str(), created.name.as_str()), ("acme", "Acme"));
    assert!(created.created_at.is_some());
    refused(
        tenants
            .create_tenant(admin(pb::CreateTenantRequest {
                id: "acme".into(),
                name: "again".into(),
            }))
            .await,
        Code::AlreadyExists,
        "tenant acme already exists",
    )
    .await;
    refused(
        tenants
            .create_tenant(admin(pb::CreateTenantRequest {
                id: "Bad Id".into(),
                name: "x".into(),
            }))
            .await,
        Code::InvalidArgument,
        "id:",
    )
    .await;
    let got = tenants
        .get_tenant(admin(pb::GetTenantRequest {
            tenant_id: "acme".into(),
        }))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(got, created);
    refused(
        tenants
            .get_tenant(admin(pb::GetTenantRequest {
                tenant_id: "../tree".into(),
            }))
            .await,
        Code::NotFound,
        "not found",
    )
    .await;
    let list = tenants
        .list_tenants(admin(pb::ListTenantsRequest {}))
        .await
        .unwrap()
        .into_inner();
    assert!(list.tenants.iter().any(|x| x.id == "acme"));

    // Integrations.
    let mut integrations = IntegrationServiceClient::new(ch.clone());
    let hook = spec("hook", &sink.url("/hook"), json!({}));
    let made = integrations
        .create_integration(admin(pb::CreateIntegrationRequest {
            tenant_id: "acme".into(),
            spec: Some(to_struct(&hook)),
        }))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(made.webhook_path, "/webhooks/acme/hook");
    let spec_of = |i: &pb::Integration| i.spec.clone().unwrap();
    assert!(matches!(field(&spec_of(&made), "id"), Some(prost_types::value::Kind::StringValue(s)) if s == "hook"));
    let mut bad = hook.clone();
    bad["producer"]["url"] = json!("not a url");
    bad["id"] = json!("bad");
    refused(
        integrations
            .create_integration(admin(pb::CreateIntegrationRequest {
                tenant_id: "acme".into(),
                spec: Some(to_struct(&bad)),
            }))
            .await,
        Code::InvalidArgument,
        "producer.url",
    )
    .await;
    let mut changed = hook.clone();
    changed["max_in_flight"] = json!(7);
    let updated = integrations
        .update_integration(admin(pb::UpdateIntegrationRequest {
            tenant_id: "acme".into(),
            integration_id: "hook".into(),
            spec: Some(to_struct(&changed)),
        }))
        .await
        .unwrap()
        .into_inner();
    assert!(
        matches!(field(&spec_of(&updated), "max_in_flight"), Some(prost_types::value::Kind::NumberValue(n)) if *n == 7.0)
    );
    let one = integrations
        .get_integration(admin(pb::GetIntegrationRequest {
            tenant_id: "acme".into(),
            integration_id: "hook".into(),
        }))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(one.spec, updated.spec);
    let all = integrations
        .list_integrations(admin(pb::ListIntegrationsRequest {
            tenant_id: "acme".into(),
        }))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(all.integrations.len(), 1);

    // Messages: a webhook delivered, seen over gRPC.
    let (status, body) = t.webhook_json("acme", "hook", b"{\"n\":1}".to_vec(), &[]).await;
    assert_eq!(status, 202);
    let id = body["message_id"].as_str().unwrap().to_owned();
    let mut messages = MessageServiceClient::new(ch.clone());
    wait_status(&mut messages, &id, "completed").await;
    let page = messages
        .list_messages(admin(pb::ListMessagesRequest {
            tenant_id: "acme".into(),
            integration_id: "hook".into(),
            limit: 10,
            ..Default::default()
        }))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(page.messages.len(), 1);
    assert_eq!(page.messages[0].message_id, id);
    refused(
        messages
            .list_messages(admin(pb::ListMessagesRequest {
                tenant_id: "acme".into(),
                integration_id: "hook".into(),
                status: Some("lost".into()),
                ..Default::default()
            }))
            .await,
        Code::InvalidArgument,
        "unknown status",
    )
    .await;

    // Dead letters: the destination refuses with 400, so the message is dead at once.
    sink.set_status(400);
    let (_, body) = t.webhook_json("acme", "hook", b"dead payload".to_vec(), &[]).await;
    let dead = body["message_id"].as_str().unwrap().to_owned();
    wait_status(&mut messages, &dead, "dead_letter").await;
    let mut dlq = DeadLetterServiceClient::new(ch.clone());
    let listed = dlq
        .list_dead_letters(admin(pb::ListDeadLettersRequest {
            tenant_id: "acme".into(),
            ..Default::default()
        }))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(listed.dead_letters.len(), 1);
    assert_eq!(listed.dead_letters[0].message_id, dead);
    let letter = dlq
        .get_dead_letter(admin(pb::GetDeadLetterRequest {
            tenant_id: "acme".into(),
            message_id: dead.clone(),
        }))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(letter.payload, b"dead payload");
    assert_eq!(letter.payload_bytes, 12);
    assert_eq!(letter.message.as_ref().unwrap().status, "dead_letter");
    assert_eq!(letter.attempt_history[0].status, Some(400));
    let dry = dlq
        .replay_dead_letters(admin(pb::ReplayDeadLettersRequest {
            tenant_id: "acme".into(),
            integration_id: Some("hook".into()),
            dry_run: true,
            ..Default::default()
        }))
        .await
        .unwrap()
        .into_inner();
    assert_eq!((dry.matched, dry.replayed), (1, 0));
    sink.set_status(200);
    let replayed = dlq
        .replay_dead_letter(admin(pb::ReplayDeadLetterRequest {
            tenant_id: "acme".into(),
            message_id: dead.clone(),
        }))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(replayed.message_id, dead);
    wait_status(&mut messages, &dead, "completed").await;
    sink.set_status(400);
    let (_, body) = t.webhook_json("acme", "hook", b"second".to_vec(), &[]).await;
    let second = body["message_id"].as_str().unwrap().to_owned();
    wait_status(&mut messages, &second, "dead_letter").await;
    dlq.delete_dead_letter(admin(pb::DeleteDeadLetterRequest {
        tenant_id: "acme".into(),
        message_id: second.clone(),
    }))
    .await
    .unwrap();
    refused(
        dlq.get_dead_letter(admin(pb::GetDeadLetterRequest {
            tenant_id: "acme".into(),
            message_id: second,
        }))
        .await,
        Code::NotFound,
        "not found",
    )
    .await;

    // NATS instances: add, drain, remove; the last one cannot be drained.
    let mut instances = NatsInstanceServiceClient::new(ch.clone());
    let added = instances
        .add_nats_instance(admin(pb::AddNatsInstanceRequest {
            tenant_id: "acme".into(),
        }))
        .await
        .unwrap()
        .into_inner();
    assert_eq!((added.instance_number, added.status.as_str()), (2, "active"));
    refused(
        instances
            .add_nats_instance(admin(pb::AddNatsInstanceRequest {
                tenant_id: "acme".into(),
            }))
            .await,
        Code::ResourceExhausted,
        "",
    )
    .await;
    let usable = instances
        .list_nats_instances(admin(pb::ListNatsInstancesRequest {
            tenant_id: "acme".into(),
        }))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(usable.nats_instances.len(), 2);
    let drained = instances
        .drain_nats_instance(admin(pb::DrainNatsInstanceRequest {
            tenant_id: "acme".into(),
            instance_number: 2,
        }))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(drained.status, "draining");
    refused(
        instances
            .drain_nats_instance(admin(pb::DrainNatsInstanceRequest {
                tenant_id: "acme".into(),
                instance_number: 1,
            }))
            .await,
        Code::FailedPrecondition,
        "",
    )
    .await;
    instances
        .remove_nats_instance(admin(pb::RemoveNatsInstanceRequest {
            tenant_id: "acme".into(),
            instance_number: 2,
        }))
        .await
        .unwrap();

    // API keys: a tenant's key reaches its tenant only, as in REST.
    tenants
        .create_tenant(admin(pb::CreateTenantRequest {
            id: "other".into(),
            name: "Other".into(),
        }))
        .await
        .unwrap();
    let mut keys = ApiKeyServiceClient::new(ch.clone());
    let key = keys
        .create_api_key(admin(pb::CreateApiKeyRequest {
            tenant_id: "acme".into(),
        }))
        .await
        .unwrap()
        .into_inner();
    assert!(key.key.starts_with("vrsky_"));
    let own = tenants
        .get_tenant(with(
            pb::GetTenantRequest {
                tenant_id: "acme".into(),
            },
            Some(&key.key),
        ))
        .await
        .unwrap();
    assert_eq!(own.get_ref().id, "acme");
    refused(
        tenants
            .get_tenant(with(
                pb::GetTenantRequest {
                    tenant_id: "other".into(),
                },
                Some(&key.key),
            ))
            .await,
        Code::NotFound,
        "tenant other not found",
    )
    .await;
    refused(
        tenants
            .list_tenants(with(pb::ListTenantsRequest {}, Some(&key.key)))
            .await,
        Code::PermissionDenied,
        "operator call",
    )
    .await;
    let listed = keys
        .list_api_keys(admin(pb::ListApiKeysRequest {
            tenant_id: "acme".into(),
        }))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(listed.api_keys.len(), 1);
    assert_eq!(listed.api_keys[0].id, key.id);
    keys.revoke_api_key(admin(pb::RevokeApiKeyRequest {
        tenant_id: "acme".into(),
        id: key.id.clone(),
    }))
    .await
    .unwrap();
    refused(
        tenants
            .get_tenant(with(
                pb::GetTenantRequest {
                    tenant_id: "acme".into(),
                },
                Some(&key.key),
            ))
            .await,
        Code::Unauthenticated,
        "invalid token",
    )
    .await;

    // Stats, credentials, the tree and the audit log.
    let stats = tenants
        .get_tenant_stats(admin(pb::GetTenantStatsRequest {
            tenant_id: "acme".into(),
        }))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(stats.integrations, 1);
    assert!(stats.totals.unwrap().delivered >= 2);
    let rotated = tenants
        .rotate_credentials(admin(pb::RotateCredentialsRequest {
            tenant_id: "acme".into(),
        }))
        .await
        .unwrap()
        .into_inner();
    assert!(rotated.servers_updated >= 1);
    let tree = pb::actor_tree_service_client::ActorTreeServiceClient::new(ch.clone())
        .get_actor_tree(admin(pb::GetActorTreeRequest {}))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(tree.name, "runtime");
    assert!(tree.children.iter().any(|c| c.name == "tenant:acme"));
    let audit = AuditServiceClient::new(ch.clone())
        .list_audit_entries(admin(pb::ListAuditEntriesRequest {
            tenant: Some("acme".into()),
            limit: 1000,
            ..Default::default()
        }))
        .await
        .unwrap()
        .into_inner();
    assert!(
        audit.entries.iter().any(|e| e.action == "tenant.create"
            && e.detail.as_deref() == Some("gRPC vrsky.v1.TenantService/CreateTenant (POST /tenants)")),
        "{:?}",
        audit.entries
    );

    // Deleting.
    integrations
        .delete_integration(admin(pb::DeleteIntegrationRequest {
            tenant_id: "acme".into(),
            integration_id: "hook".into(),
        }))
        .await
        .unwrap();
    tenants
        .delete_tenant(admin(pb::DeleteTenantRequest {
            tenant_id: "acme".into(),
        }))
        .await
        .unwrap();
    refused(
        tenants
            .get_tenant(admin(pb::GetTenantRequest {
                tenant_id: "acme".into(),
            }))
            .await,
        Code::NotFound,
        "tenant acme not found",
    )
    .await;
    t.shutdown().await;
}

fn event(r: &pb::WatchActorTreeResponse) -> Option<&pb::ActorTreeEvent> {
    match &r.update {
        Some(pb::watch_actor_tree_response::Update::Event(e)) => Some(e),
        _ => None,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn watch_actor_tree_streams_a_kill_and_restart_in_order() {
    let sink = Sink::start().await;
    let (t, ch) = node(&sink).await;
    t.create_tenant("acme").await;
    t.create_integration("acme", spec("hook", &sink.url("/hook"), json!({})))
        .await;
    let mut client = pb::actor_tree_service_client::ActorTreeServiceClient::new(ch);
    refused(
        client.watch_actor_tree(with(pb::WatchActorTreeRequest {}, None)).await,
        Code::Unauthenticated,
        "missing Authorization header",
    )
    .await;
    let mut stream = client
        .watch_actor_tree(admin(pb::WatchActorTreeRequest {}))
        .await
        .unwrap()
        .into_inner();
    let first = stream.message().await.unwrap().unwrap();
    let Some(pb::watch_actor_tree_response::Update::Snapshot(snap)) = first.update else {
        panic!("the first message is not the snapshot: {first:?}");
    };
    let root = snap.root.unwrap();
    let tenant = root.children.iter().find(|c| c.name == "tenant:acme").unwrap();
    assert!(format!("{tenant:?}").contains("integration:hook"));

    let cell = t
        .rt()
        .control
        .integration_cell(
            &vrsky_actors::TenantId::new("acme").unwrap(),
            &vrsky_actors::IntegrationId::new("hook").unwrap(),
        )
        .await
        .unwrap()
        .unwrap();
    let killed = cell.get_id().to_string();
    cell.kill();
    let mut got = Vec::new();
    while got.len() < 2 {
        let next = tokio::time::timeout(Duration::from_secs(20), stream.message())
            .await
            .expect("the restart is streamed")
            .unwrap()
            .unwrap();
        let e = event(&next).expect("events after the snapshot").clone();
        if e.name == "integration:hook" {
            got.push(e);
        }
    }
    assert_eq!((got[0].kind.as_str(), got[1].kind.as_str()), ("exited", "restarted"));
    assert!(got[0].seq < got[1].seq && got[0].seq > snap.after_seq);
    assert_eq!(got[0].actor_id.as_deref(), Some(killed.as_str()));
    assert_ne!(got[1].actor_id.as_deref(), Some(killed.as_str()));
    assert_eq!(got[1].restarts, 1);
    assert_eq!(got[1].supervisor_path.last().map(String::as_str), Some("tenant:acme"));

    // A new integration is a spawn on the same stream.
    t.create_integration("acme", spec("second", &sink.url("/second"), json!({})))
        .await;
    loop {
        let next = tokio::time::timeout(Duration::from_secs(20), stream.message())
            .await
            .expect("the spawn is streamed")
            .unwrap()
            .unwrap();
        let e = event(&next).unwrap();
        assert!(e.seq > got[1].seq);
        if e.name == "integration:second" {
            assert_eq!(e.kind, "spawned");
            break;
        }
    }
    t.shutdown().await;
}

/// gRPC health follows readiness: the tenant's only nats-server stops answering
/// (SIGSTOP), `/readyz` says 503 and health `NOT_SERVING`, overall and per service; it
/// answers again and both come back.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn grpc_health_follows_readiness() {
    use tonic_health::pb::health_check_response::ServingStatus;
    let (t, ch) = node_with(|c| c.nats.health_interval_ms = 300).await;
    t.create_tenant("acme").await;
    let health = tonic_health::pb::health_client::HealthClient::new(ch);
    let all_are = |want: ServingStatus| {
        let health = health.clone();
        async move {
            for service in ["", "vrsky.v1.TenantService", "vrsky.v1.MessageService"] {
                let got = health
                    .clone()
                    .check(tonic_health::pb::HealthCheckRequest {
                        service: service.into(),
                    })
                    .await
                    .unwrap()
                    .into_inner()
                    .status;
                if got != want as i32 {
                    return false;
                }
            }
            true
        }
    };
    let wait = Duration::from_secs(20);
    assert!(all_are(ServingStatus::Serving).await);
    let pid = std::fs::read_to_string(t.dir.path().join("tenants/acme/1/nats-server.pid")).unwrap();
    let signal = |sig: &str| {
        assert!(
            std::process::Command::new("kill")
                .args([sig, pid.trim()])
                .status()
                .unwrap()
                .success()
        )
    };
    signal("-STOP");
    let down = crate::common::wait_until(wait, || all_are(ServingStatus::NotServing)).await;
    let (code, _) = t.api(reqwest::Method::GET, "/readyz", None).await;
    signal("-CONT");
    down.expect("health stayed SERVING while the tenant's NATS did not answer");
    assert_eq!(code, 503);
    crate::common::wait_until(wait, || all_are(ServingStatus::Serving))
        .await
        .expect("health came back");
    let (code, _) = t.api(reqwest::Method::GET, "/readyz", None).await;
    assert_eq!(code, 200);
    t.shutdown().await;
}

/// What `grpcurl list` and `grpcurl describe` do: services and their descriptors from
/// reflection (v1 and v1alpha), then a call built from those descriptors alone.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reflection_and_health_serve_clients_without_proto_files() {
    use tonic_reflection::pb::v1::server_reflection_client::ServerReflectionClient;
    use tonic_reflection::pb::v1::server_reflection_request::MessageRequest;
    use tonic_reflection::pb::v1::server_reflection_response::MessageResponse;
    use tonic_reflection::pb::v1::{ServerReflectionRequest, ServerReflectionResponse};

    let sink = Sink::start().await;
    let (t, ch) = node(&sink).await;
    t.create_tenant("acme").await;

    // Health, overall and per service.
    let mut health = tonic_health::pb::health_client::HealthClient::new(ch.clone());
    for service in ["", "vrsky.v1.TenantService", "vrsky.v1.ActorTreeService"] {
        let s = health
            .check(tonic_health::pb::HealthCheckRequest {
                service: service.into(),
            })
            .await
            .unwrap()
            .into_inner();
        assert_eq!(
            s.status,
            tonic_health::pb::health_check_response::ServingStatus::Serving as i32,
            "{service}"
        );
    }
    refused(
        health
            .check(tonic_health::pb::HealthCheckRequest {
                service: "vrsky.v1.Nope".into(),
            })
            .await,
        Code::NotFound,
        "",
    )
    .await;

    async fn ask(ch: &Channel, req: MessageRequest) -> MessageResponse {
        let mut c = ServerReflectionClient::new(ch.clone());
        let mut out = c
            .server_reflection_info(futures::stream::iter([ServerReflectionRequest {
                host: String::new(),
                message_request: Some(req),
            }]))
            .await
            .unwrap()
            .into_inner();
        let r: ServerReflectionResponse = out.message().await.unwrap().unwrap();
        r.message_response.unwrap()
    }
    let MessageResponse::ListServicesResponse(list) = ask(&ch, MessageRequest::ListServices(String::new())).await
    else {
        panic!("not a service list");
    };
    let names: Vec<_> = list.service.iter().map(|s| s.name.as_str()).collect();
    for s in vrsky_runtime::grpc::SERVICES {
        assert!(names.contains(s), "{s} missing from {names:?}");
    }
    assert!(names.contains(&"grpc.health.v1.Health"));

    // The file of the service, then each file it imports, by name, as grpcurl asks.
    let mut protos: Vec<prost_types::FileDescriptorProto> = Vec::new();
    let mut wanted = vec![MessageRequest::FileContainingSymbol("vrsky.v1.TenantService".into())];
    while let Some(req) = wanted.pop() {
        let MessageResponse::FileDescriptorResponse(files) = ask(&ch, req).await else {
            panic!("no descriptors");
        };
        for b in &files.file_descriptor_proto {
            let f: prost_types::FileDescriptorProto = prost::Message::decode(b.as_slice()).unwrap();
            if protos.iter().any(|p| p.name == f.name) {
                continue;
            }
            for dep in &f.dependency {
                if !protos.iter().any(|p| p.name.as_deref() == Some(dep)) {
                    wanted.push(MessageRequest::FileByFilename(dep.clone()));
                }
            }
            protos.push(f);
        }
    }
    let mut pool = prost_reflect::DescriptorPool::new();
    // Dependencies first.
    protos.reverse();
    for f in protos {
        pool.add_file_descriptor_proto(f).unwrap();
    }
    let service = pool.get_service_by_name("vrsky.v1.TenantService").unwrap();
    let method = service.methods().find(|m| m.name() == "GetTenant").unwrap();

    // The call, from the descriptors alone.
    let input = prost_reflect::DynamicMessage::deserialize(method.input(), json!({"tenant_id": "acme"})).unwrap();
    let mut grpc = tonic::client::Grpc::new(ch.clone());
    grpc.ready().await.unwrap();
    let reply = grpc
        .unary(
            admin(prost::Message::encode_to_vec(&input)),
            tonic::codegen::http::uri::PathAndQuery::from_static("/vrsky.v1.TenantService/GetTenant"),
            Raw,
        )
        .await
        .unwrap()
        .into_inner();
    let out = prost_reflect::DynamicMessage::decode(method.output(), reply.as_slice()).unwrap();
    let out = serde_json::to_value(&out).unwrap();
    assert_eq!(out["id"], "acme", "{out}");

    // v1alpha answers too (older clients).
    {
        use tonic_reflection::pb::v1alpha::server_reflection_client::ServerReflectionClient as Alpha;
        use tonic_reflection::pb::v1alpha::server_reflection_request::MessageRequest as AlphaReq;
        use tonic_reflection::pb::v1alpha::server_reflection_response::MessageResponse as AlphaResp;
        let mut c = Alpha::new(ch.clone());
        let mut out = c
            .server_reflection_info(futures::stream::iter([
                tonic_reflection::pb::v1alpha::ServerReflectionRequest {
                    host: String::new(),
                    message_request: Some(AlphaReq::ListServices(String::new())),
                },
            ]))
            .await
            .unwrap()
            .into_inner();
        let r = out.message().await.unwrap().unwrap();
        let Some(AlphaResp::ListServicesResponse(l)) = r.message_response else {
            panic!("v1alpha gave no list");
        };
        assert!(l.service.iter().any(|s| s.name == "vrsky.v1.DeadLetterService"));
    }
    t.shutdown().await;
}

/// The gateway serves at most `http.max_connections` connections at once, as the REST
/// port does: the next waits until one closes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connections_past_the_cap_wait_for_one_to_close() {
    let t = TestRuntime::start_with(Backend::Sqlite, |c| {
        c.grpc_addr = Some("127.0.0.1:0".parse().unwrap());
        c.http.max_connections = 1;
    })
    .await;
    t.create_tenant("acme").await;
    let addr = t.rt().grpc_addr.unwrap();
    let get = |ch: Channel| async move {
        pb::tenant_service_client::TenantServiceClient::new(ch)
            .get_tenant(admin(pb::GetTenantRequest {
                tenant_id: "acme".into(),
            }))
            .await
    };
    let lazy = || {
        Channel::from_shared(format!("http://{addr}"))
            .unwrap()
            .timeout(Duration::from_millis(800))
            .connect_lazy()
    };
    // One idle connection holds the only slot.
    // Accepted first: the listen backlog is served in order.
    let idle = tokio::net::TcpStream::connect(addr).await.unwrap();
    let waited = get(lazy()).await;
    assert!(waited.is_err(), "served past the cap: {waited:?}");
    drop(idle);
    let served = crate::common::wait_until(Duration::from_secs(10), || async { get(lazy()).await.is_ok() }).await;
    assert!(served.is_ok(), "not served once the slot was free");
    t.shutdown().await;
}
