//! The Kubernetes provisioner without an API server: pure object checks, strict schema
//! validation (PyPI `kubernetes-validate`), and kube's `tower_test` verifier pattern that
//! asserts every request the provisioner makes.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::time::Duration;

use http::{Method, Request, Response};
use kube::client::Body;
use serde_json::{Value, json};

use super::*;
use vrsky_actors::TenantId;

/// A trust store over a throwaway SQLite file holding tenant `acme`, certificates from a
/// Secret.
async fn trust(dir: &std::path::Path) -> std::sync::Arc<crate::nats::trust::Trust> {
    let db = crate::db::Db::connect(&format!("sqlite://{}/trust.db?mode=rwc", dir.display()))
        .await
        .unwrap();
    db.create_tenant(&TenantId::new("acme").unwrap(), "Acme", "x")
        .await
        .unwrap();
    trust_on(db, dir).await
}

async fn trust_on(db: crate::db::Db, dir: &std::path::Path) -> std::sync::Arc<crate::nats::trust::Trust> {
    let sealer = std::sync::Arc::new(crate::secrets::Sealer::new(None).unwrap());
    std::sync::Arc::new(
        crate::nats::trust::Trust::open(db, sealer, None, dir.join("ca.pem"))
            .await
            .unwrap(),
    )
}

fn settings(ready_timeout: Duration, poll_interval: Duration) -> KubeSettings {
    KubeSettings {
        image: "nats:2.10-alpine".into(),
        exporter_image: "natsio/prometheus-nats-exporter:0.15.0".into(),
        ready_timeout,
        poll_interval,
        tls_secret: "vrsky-tenant-nats-tls".into(),
    }
}

fn spec() -> InstanceSpec {
    InstanceSpec {
        tenant_id: TenantId::new("acme").unwrap(),
        instance_number: 1,
        client_port: 0,
    }
}

#[test]
fn objects_are_named_labelled_sized_and_probed() {
    let d = deployment(
        &spec(),
        "nats:2.10-alpine",
        "natsio/prometheus-nats-exporter:0.15.0",
        "vrsky-tenant-nats-tls",
    )
    .unwrap();
    assert_eq!(d.metadata.name.as_deref(), Some("nats-acme-1"));
    assert_eq!(d.metadata.namespace.as_deref(), Some(NAMESPACE));
    let l = d.metadata.labels.as_ref().unwrap();
    assert_eq!(l["app"], "nats");
    assert_eq!(l["app.kubernetes.io/managed-by"], "vrsky");
    assert_eq!(l["vrsky.io/tenant"], "acme");
    let pod = d.spec.as_ref().unwrap().template.spec.as_ref().unwrap();
    let c = &pod.containers[0];
    let r = c.resources.as_ref().unwrap();
    assert_eq!(r.limits.as_ref().unwrap()["cpu"].0, "2");
    assert_eq!(r.limits.as_ref().unwrap()["memory"].0, "4Gi");
    assert_eq!(
        c.readiness_probe
            .as_ref()
            .unwrap()
            .http_get
            .as_ref()
            .unwrap()
            .path
            .as_deref(),
        Some("/healthz")
    );
    assert_eq!(d.spec.as_ref().unwrap().replicas, Some(1));
    // The exporter sidecar: Prometheus format on the port the scrape configuration keeps.
    let exporter = pod.containers.iter().find(|c| c.name == "metrics-exporter").unwrap();
    let port = &exporter.ports.as_ref().unwrap()[0];
    assert_eq!((port.name.as_deref(), port.container_port), (Some("metrics"), 7777));
    assert!(
        exporter
            .args
            .as_ref()
            .unwrap()
            .iter()
            .any(|a| a == "http://localhost:8222")
    );
    let conf = server_config("nats-acme-1", "operator: \"OJWT\"\n");
    assert!(conf.contains("listen: \"0.0.0.0:4222\""));
    assert!(!conf.contains("jetstream"));
    assert!(
        conf.contains("operator: \"OJWT\"") && conf.contains("cert_file: \"/etc/nats-tls/tls.crt\""),
        "{conf}"
    );
    let mounts = c.volume_mounts.as_ref().unwrap();
    assert!(
        mounts
            .iter()
            .any(|m| m.name == "tls" && m.mount_path == "/etc/nats-tls")
    );
    let volumes = pod.volumes.as_ref().unwrap();
    let tls = volumes.iter().find(|v| v.name == "tls").unwrap();
    assert_eq!(
        tls.secret.as_ref().unwrap().secret_name.as_deref(),
        Some("vrsky-tenant-nats-tls")
    );
    assert_eq!(
        instance_url(&spec()).unwrap(),
        "nats://nats-acme-1.vrsky-tenants.svc.cluster.local:4222"
    );
    let long = InstanceSpec {
        tenant_id: TenantId::new("a".repeat(60)).unwrap(),
        ..spec()
    };
    assert!(instance_name(&long).unwrap_err().to_string().contains("63"));
}

/// Runs `kubernetes-validate --strict` against the 1.33 schemas on `files`.
fn validate_strict(files: &[std::path::PathBuf]) {
    let out = std::process::Command::new("kubernetes-validate")
        .args(["--strict", "--kubernetes-version", "1.33.0"])
        .args(files)
        .output()
        .expect("kubernetes-validate is needed: scripts/test installs it (pip install kubernetes-validate)");
    assert!(
        out.status.success(),
        "strict validation failed:\n{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

/// `deploy/k8s/network-policies.yaml`: valid against the 1.33 schemas, and it isolates:
/// tenant and platform NATS take traffic from the runtime only (the platform's members
/// also from each other), and the runtime's egress has no allow-all rule and keeps the
/// private ranges out of its internet rule.
#[test]
fn network_policies_pass_strict_validation_and_isolate() {
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/../deploy/k8s/network-policies.yaml");
    validate_strict(&[std::path::PathBuf::from(path)]);
    let check = r#"
import sys, yaml
docs = {d["metadata"]["name"]: d for d in yaml.safe_load_all(open(sys.argv[1])) if d}
def sources(rule):
    return [(p.get("namespaceSelector", {}).get("matchLabels", {}).get("kubernetes.io/metadata.name"),
             p.get("podSelector", {}).get("matchLabels", {}).get("app.kubernetes.io/component"))
            for p in rule.get("from", [])]
t = docs["tenant-nats-from-runtime-only"]["spec"]
assert t["podSelector"]["matchLabels"] == {"app.kubernetes.io/component": "tenant-nats"}, t
assert set(t["policyTypes"]) == {"Ingress", "Egress"}, t
assert [s for r in t["ingress"] for s in sources(r)] == [("vrsky", "runtime"), ("vrsky-monitoring", None)], t
assert [p["port"] for p in t["ingress"][1]["ports"]] == [7777], "monitoring reaches the exporter only"
p = docs["platform-nats-from-runtime-only"]["spec"]
assert {s for r in p["ingress"] for s in sources(r)} == {(None, "runtime"), (None, "platform-nats")}, p
e = docs["runtime-egress"]["spec"]
assert e["policyTypes"] == ["Egress"], e
for rule in e["egress"]:
    assert rule.get("to"), "an egress rule without 'to' allows everything: %r" % rule
    for peer in rule["to"]:
        block = peer.get("ipBlock")
        if block and block["cidr"] in ("0.0.0.0/0", "::/0"):
            must = {"0.0.0.0/0": {"10.0.0.0/8", "172.16.0.0/12", "192.168.0.0/16", "169.254.0.0/16", "100.64.0.0/10"},
                    "::/0": {"fc00::/7", "fe80::/10"}}[block["cidr"]]
            assert must <= set(block.get("except", [])), block
print("ok")
"#;
    let python = std::env::var("TOOLS_PYTHON").unwrap_or_else(|_| "python3".into());
    let out = std::process::Command::new(&python)
        .args(["-c", check, path])
        .output()
        .unwrap_or_else(|e| panic!("{python}: {e}"));
    assert!(
        out.status.success(),
        "the policies do not isolate as they should:\n{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn objects_pass_strict_schema_validation() {
    let owner = OwnerReference {
        api_version: "apps/v1".into(),
        kind: "Deployment".into(),
        name: "nats-acme-1".into(),
        uid: "0b1c2d3e-0000-4000-8000-000000000001".into(),
        controller: Some(true),
        block_owner_deletion: Some(true),
    };
    let dir = tempfile::tempdir().unwrap();
    let objects = [
        (
            "deployment.json",
            serde_json::to_vec(
                &deployment(
                    &spec(),
                    "nats:2.10-alpine",
                    "natsio/prometheus-nats-exporter:0.15.0",
                    "vrsky-tenant-nats-tls",
                )
                .unwrap(),
            )
            .unwrap(),
        ),
        (
            "service.json",
            serde_json::to_vec(&service(&spec(), Some(&owner)).unwrap()).unwrap(),
        ),
        (
            "secret.json",
            serde_json::to_vec(&secret(&spec(), Some(&owner), "operator: \"OJWT\"\n").unwrap()).unwrap(),
        ),
    ];
    let mut files = Vec::new();
    for (name, bytes) in objects {
        let v: Value = serde_json::from_slice(&bytes).unwrap();
        assert!(v.get("apiVersion").is_some() && v.get("kind").is_some(), "{name}: {v}");
        let p = dir.path().join(name);
        std::fs::write(&p, &bytes).unwrap();
        files.push(p);
    }
    validate_strict(&files);
}

type Handle = tower_test::mock::Handle<Request<Body>, Response<Body>>;

async fn body_json(req: Request<Body>) -> Value {
    let bytes = req.into_body().collect_bytes().await.unwrap();
    if bytes.is_empty() {
        Value::Null
    } else {
        serde_json::from_slice(&bytes).unwrap()
    }
}

fn respond(v: Value) -> Response<Body> {
    Response::builder()
        .status(200)
        .body(Body::from(serde_json::to_vec(&v).unwrap()))
        .unwrap()
}

/// One expected request: method, path, and what to check of its query and body.
async fn expect(
    handle: &mut Handle,
    method: Method,
    path: &str,
) -> (Value, String, tower_test::mock::SendResponse<Response<Body>>) {
    let (req, send) = tokio::time::timeout(Duration::from_secs(5), handle.next_request())
        .await
        .unwrap_or_else(|_| panic!("no request; expected {method} {path}"))
        .expect("service dropped");
    assert_eq!(req.method(), method, "{}", req.uri());
    assert_eq!(req.uri().path(), path);
    let query = req.uri().query().unwrap_or("").to_owned();
    (body_json(req).await, query, send)
}

fn apply_query_ok(q: &str) {
    assert!(q.contains("fieldManager=vrsky"), "{q}");
    assert!(q.contains("force=true"), "{q}");
}

#[tokio::test]
async fn verifier_create_wait_ready_delete() {
    let (mock, mut handle) = tower_test::mock::pair::<Request<Body>, Response<Body>>();
    let client = kube::Client::new(mock, "default");
    let dir = tempfile::tempdir().unwrap();
    let p = KubeProvisioner::new(
        client,
        settings(Duration::from_secs(10), Duration::from_millis(10)),
        trust(dir.path()).await,
    );
    let starting = tokio::spawn({
        let p = p.clone();
        async move { p.start(spec()).await }
    });
    let base = "/apis/apps/v1/namespaces/vrsky-tenants/deployments/nats-acme-1";

    // 1. Deployment applied first; the API server answers with its uid.
    let (body, q, send) = expect(&mut handle, Method::PATCH, base).await;
    apply_query_ok(&q);
    assert_eq!(
        (body["kind"].as_str(), body["metadata"]["name"].as_str()),
        (Some("Deployment"), Some("nats-acme-1"))
    );
    assert_eq!(body["metadata"]["labels"]["vrsky.io/tenant"], "acme");
    let mut created = body.clone();
    created["metadata"]["uid"] = json!("uid-1");
    send.send_response(respond(created.clone()));
    // 2 and 3. Service and Secret, owned by the Deployment so they are never orphaned.
    for (path, kind) in [
        ("/api/v1/namespaces/vrsky-tenants/services/nats-acme-1", "Service"),
        ("/api/v1/namespaces/vrsky-tenants/secrets/nats-acme-1", "Secret"),
    ] {
        let (body, q, send) = expect(&mut handle, Method::PATCH, path).await;
        apply_query_ok(&q);
        assert_eq!(body["kind"], kind);
        assert_eq!(body["metadata"]["ownerReferences"][0]["uid"], "uid-1", "{kind}: {body}");
        assert_eq!(body["metadata"]["ownerReferences"][0]["kind"], "Deployment");
        assert_eq!(body["metadata"]["labels"]["app.kubernetes.io/managed-by"], "vrsky");
        send.send_response(respond(body));
    }
    // 4. Not ready yet, then ready.
    let (_, _, send) = expect(&mut handle, Method::GET, base).await;
    let mut status = created.clone();
    status["status"] = json!({"replicas": 1, "readyReplicas": 0});
    send.send_response(respond(status.clone()));
    let (_, _, send) = expect(&mut handle, Method::GET, base).await;
    status["status"] = json!({"replicas": 1, "readyReplicas": 1});
    send.send_response(respond(status.clone()));
    let running = tokio::time::timeout(Duration::from_secs(5), starting)
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    assert_eq!(running.url, "nats://nats-acme-1.vrsky-tenants.svc.cluster.local:4222");
    // Stopping the actor stops the watch and deletes nothing; it may have polled once.
    let stopper = tokio::spawn(running.stop.stop());
    if let Ok(Some((req, send))) = tokio::time::timeout(Duration::from_millis(200), handle.next_request()).await {
        assert_eq!(req.method(), Method::GET, "stopping must not delete");
        send.send_response(respond(status.clone()));
    }
    stopper.await.unwrap();

    // 5. Decommission: one foreground delete of the Deployment.
    let deleting = tokio::spawn({
        let p = p.clone();
        async move { p.delete(&spec()).await }
    });
    let (body, _, send) = expect(&mut handle, Method::DELETE, base).await;
    assert_eq!(body["propagationPolicy"], "Foreground", "{body}");
    send.send_response(respond(
        json!({"kind": "Status", "apiVersion": "v1", "status": "Success"}),
    ));
    deleting.await.unwrap().unwrap();
}

#[tokio::test]
async fn verifier_readiness_times_out_with_a_clear_error() {
    let (mock, mut handle) = tower_test::mock::pair::<Request<Body>, Response<Body>>();
    let dir = tempfile::tempdir().unwrap();
    let p = KubeProvisioner::new(
        kube::Client::new(mock, "default"),
        settings(Duration::from_millis(100), Duration::from_millis(20)),
        trust(dir.path()).await,
    );
    let starting = tokio::spawn(async move { p.start(spec()).await });
    // Answer every request: applies echo, readiness never comes.
    let responder = tokio::spawn(async move {
        while let Some((req, send)) = handle.next_request().await {
            let is_get = req.method() == Method::GET;
            let mut v = body_json(req).await;
            if is_get {
                v = json!({"apiVersion": "apps/v1", "kind": "Deployment", "metadata": {"name": "nats-acme-1"},
                           "status": {"readyReplicas": 0}});
            }
            send.send_response(respond(v));
        }
    });
    let err = starting.await.unwrap().unwrap_err().to_string();
    assert!(err.contains("nats-acme-1 not ready"), "{err}");
    responder.abort();
}

/// Tenant creation, end to end through the control layer, the TenantActor, the
/// NatsInstanceActor and this provisioner against the request verifier. The instance's
/// address carries no port (`nats-acme-1.vrsky-tenants.svc.cluster.local`): it used to be
/// refused before anything was provisioned ("has no local port"). Now the instance is
/// provisioned and the node connects to it on 4222; no API server or cluster DNS runs
/// here, so the connection is what fails, and the rollback decommissions the instance.
#[tokio::test]
async fn tenant_creation_provisions_on_kubernetes_and_connects_on_the_default_port() {
    use std::sync::{Arc, Mutex};

    use crate::control::{Control, Directory, TenantDeps, TenantSettings};
    use crate::nats::process::{ServerOptions, find_binary, free_port, start_server};
    use crate::platform::{Platform, PlatformSettings};

    crate::install_crypto_provider();
    let dir = tempfile::tempdir().unwrap();
    let bin = std::env::var_os("VRSKY_NATS__SERVER_BIN").map(std::path::PathBuf::from);
    let (bin, _) = find_binary(bin.as_deref())
        .await
        .expect("nats-server >= 2.10 (scripts/test installs it)");
    let server = start_server(
        &bin,
        &ServerOptions {
            server_name: "platform".into(),
            client_port: free_port().unwrap(),
            dir: dir.path().join("platform"),
            jetstream: true,
            sync_interval: "1s".into(),
            adopt: false,
            startup_timeout: Duration::from_secs(10),
            go_max_procs: 1,
            security: None,
        },
    )
    .await
    .unwrap();
    let nc = async_nats::connect(server.url.as_str()).await.unwrap();
    let platform = Platform::open(
        nc,
        PlatformSettings {
            message_state_ttl: Duration::from_secs(900),
            retry_queue_max_age: Duration::from_secs(3600),
            dead_letter_max_age: Duration::from_secs(86_400),
            replicas: 1,
            commit: Default::default(),
        },
    )
    .await
    .unwrap();
    let db = crate::db::Db::connect(&format!("sqlite://{}/meta.db?mode=rwc", dir.path().display()))
        .await
        .unwrap();

    // The API server: applies are echoed with a uid, the Deployment is ready, deletes
    // succeed. Every request is recorded.
    let (mock, mut handle) = tower_test::mock::pair::<Request<Body>, Response<Body>>();
    let seen = Arc::new(Mutex::new(Vec::<(Method, String)>::new()));
    let log = seen.clone();
    let api = tokio::spawn(async move {
        while let Some((req, send)) = handle.next_request().await {
            let (method, path) = (req.method().clone(), req.uri().path().to_owned());
            log.lock().unwrap().push((method.clone(), path));
            let mut v = body_json(req).await;
            if method == Method::GET {
                v = json!({"apiVersion": "apps/v1", "kind": "Deployment",
                    "metadata": {"name": "nats-acme-1", "namespace": NAMESPACE, "uid": "uid-1"},
                    "status": {"replicas": 1, "readyReplicas": 1}});
            } else if method == Method::DELETE {
                v = json!({"kind": "Status", "apiVersion": "v1", "status": "Success"});
            } else {
                v["metadata"]["uid"] = json!("uid-1");
            }
            send.send_response(respond(v));
        }
    });
    let trust = trust_on(db.clone(), dir.path()).await;
    let provisioner = Arc::new(KubeProvisioner::new(
        kube::Client::new(mock, "default"),
        settings(Duration::from_secs(5), Duration::from_millis(50)),
        trust.clone(),
    ));
    let (root, _) = vrsky_supervision::spawn_root(vrsky_supervision::SupervisorArgs::empty("runtime"))
        .await
        .unwrap();
    let control = Control::new(
        platform.clone(),
        root.clone(),
        TenantDeps {
            db: db.clone(),
            provisioner,
            http: crate::producer::http_client(false).unwrap(),
            store: Arc::new(platform),
            directory: Arc::new(Directory::default()),
            settings: TenantSettings {
                allow_private_targets: false,
                connect_timeout: Duration::from_millis(500),
                health_interval: Duration::from_secs(60),
                instances_per_tenant_max: 2,
                retention: Duration::from_secs(900),
                subscription_capacity: 1024,
                credential_rotation: Duration::ZERO,
                pipeline_read_max: 1 << 20,
            },
            redrive_now: Arc::new(|_| {}),
            sealer: Arc::new(crate::secrets::Sealer::new(None).unwrap()),
            wire_key: vrsky_actors::wire::WireKey::new(b"k"),
            trust,
            objects: None,
        },
    );
    let t = TenantId::new("acme").unwrap();
    let err = control.create_tenant(&t, "Acme").await.unwrap_err().to_string();
    assert!(
        err.contains("nats://nats-acme-1.vrsky-tenants.svc.cluster.local:4222 not reachable"),
        "{err}"
    );
    assert!(
        !err.contains("port"),
        "the address is no longer refused for its missing port: {err}"
    );
    let seen = seen.lock().unwrap().clone();
    let deployment = "/apis/apps/v1/namespaces/vrsky-tenants/deployments/nats-acme-1";
    assert!(
        seen.contains(&(Method::PATCH, deployment.to_owned())),
        "not provisioned: {seen:?}"
    );
    assert!(
        seen.contains(&(Method::GET, deployment.to_owned())),
        "readiness not awaited: {seen:?}"
    );
    assert_eq!(
        seen.last(),
        Some(&(Method::DELETE, deployment.to_owned())),
        "not decommissioned: {seen:?}"
    );
    assert!(control.tenant(&t).await.is_err(), "the tenant row was rolled back");
    root.stop(None);
    api.abort();
    server.stop.stop().await;
}

/// The objects the chart `deploy/helm/nats-tenant` must render identically for the inputs
/// of its `tests/values-golden.yaml` (`deploy/helm/check.py` compares the two): this test
/// fails when the provisioner changes and the golden file does not. `UPDATE_GOLDEN=1`
/// rewrites the file; then make the chart match it (`scripts/test` checks).
#[test]
fn the_nats_tenant_charts_golden_file_is_what_the_provisioner_makes() {
    use serde::Deserialize;
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../deploy/helm/nats-tenant/tests");
    let values: Value =
        serde_norway::from_str(&std::fs::read_to_string(dir.join("values-golden.yaml")).unwrap()).unwrap();
    assert_eq!(
        (values["tenant"].as_str(), values["instance"].as_u64()),
        (Some("acme"), Some(1)),
        "the golden values name acme-1, as spec() does"
    );
    let auth = values["auth"].as_str().unwrap();
    let d = deployment(
        &spec(),
        values["image"].as_str().unwrap(),
        values["exporterImage"].as_str().unwrap(),
        values["tlsSecret"].as_str().unwrap(),
    )
    .unwrap();
    let objects = vec![
        serde_json::to_value(d).unwrap(),
        serde_json::to_value(service(&spec(), None).unwrap()).unwrap(),
        serde_json::to_value(secret(&spec(), None, auth).unwrap()).unwrap(),
    ];
    let path = dir.join("provisioner-objects.yaml");
    if std::env::var_os("UPDATE_GOLDEN").is_some() {
        let mut text = String::from(
            "# What runtime/src/k8s.rs applies for tenant acme, instance 1, with the inputs of\n\
             # values-golden.yaml. Written by `UPDATE_GOLDEN=1 cargo test -p vrsky-runtime\n\
             # golden_file`; deploy/helm/check.py renders the chart and compares.\n",
        );
        for o in &objects {
            text.push_str("---\n");
            text.push_str(&serde_norway::to_string(o).unwrap());
        }
        std::fs::write(&path, text).unwrap();
    }
    let text = std::fs::read_to_string(&path).expect("no golden file: run with UPDATE_GOLDEN=1");
    let golden: Vec<Value> = serde_norway::Deserializer::from_str(&text)
        .map(|doc| Value::deserialize(doc).unwrap())
        .filter(|v| !v.is_null())
        .collect();
    assert_eq!(
        golden, objects,
        "the provisioner's objects changed: run UPDATE_GOLDEN=1 cargo test -p vrsky-runtime golden_file, then make deploy/helm/nats-tenant render them (scripts/test checks)"
    );
}
