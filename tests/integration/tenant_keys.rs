//! Tenant API keys: a key reaches its own tenant's paths only. Every other tenant's path,
//! under every method and spelling, answers like a tenant that does not exist (404), and
//! platform operations answer 403. Revoked keys stop at once. `/readyz` says only up or
//! down without the admin token. Every change and failed authentication is audited.

use reqwest::Method;
use serde_json::{Value, json};

use crate::common::sink::Sink;
use crate::common::{Backend, TestRuntime, spec};

/// Every `/api` route of the router, with `{t}` for the tenant.
const ROUTES: &[&str] = &[
    "/api/tenants",
    "/api/tenants/{t}",
    "/api/tenants/{t}/integrations",
    "/api/tenants/{t}/integrations/hook",
    "/api/tenants/{t}/integrations/hook/messages",
    "/api/tenants/{t}/nats-instances",
    "/api/tenants/{t}/nats-instances/1",
    "/api/tenants/{t}/nats-instances/1/drain",
    "/api/tenants/{t}/stats",
    "/api/tenants/{t}/messages/0193a1b2c3d4e5f60718293a4b5c6d7e",
    "/api/tenants/{t}/dead-letters",
    "/api/tenants/{t}/dead-letters/retry",
    "/api/tenants/{t}/dead-letters/0193a1b2c3d4e5f60718293a4b5c6d7e",
    "/api/tenants/{t}/dead-letters/0193a1b2c3d4e5f60718293a4b5c6d7e/retry",
    "/api/tenants/{t}/api-keys",
    "/api/tenants/{t}/api-keys/0123456789abcdef",
    "/api/tree",
    "/api/audit",
];

/// Spellings of tenant `b` (and of paths that lead to it) a key of tenant `a` might try.
const TENANT_FORMS: &[&str] = &[
    "b",
    "B",
    "%62",
    "b%20",
    "b.",
    "a/../b",
    "./b",
    "a%2F..%2Fb",
    "b;a",
    "ab",
];

const METHODS: &[&str] = &["GET", "POST", "PUT", "DELETE", "PATCH", "HEAD"];

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_tenant_key_reaches_its_own_tenant_only() {
    let sink = Sink::start().await;
    let t = TestRuntime::start(Backend::Sqlite).await;
    for tenant in ["a", "b"] {
        t.create_tenant(tenant).await;
        t.create_integration(tenant, spec("hook", &sink.url(&format!("/{tenant}")), json!({})))
            .await;
    }
    let (s, created) = t.api(Method::POST, "/api/tenants/a/api-keys", None).await;
    assert_eq!(s, 201, "{created}");
    let key = created["key"].as_str().unwrap().to_owned();
    let key_id = created["id"].as_str().unwrap().to_owned();
    assert!(key.starts_with("vrsky_") && key.contains(&key_id), "{created}");
    let (_, listed) = t.api(Method::GET, "/api/tenants/a/api-keys", None).await;
    assert_eq!(listed["api_keys"][0]["id"], key_id.as_str(), "{listed}");
    assert!(
        !listed.to_string().contains(&key[20..]),
        "the key's secret is listed: {listed}"
    );

    let with_key = |method: &str, path: &str, body: Option<Value>| {
        let mut r = t.http.request(method.parse().unwrap(), t.url(path)).bearer_auth(&key);
        if let Some(b) = body {
            r = r.json(&b);
        }
        async move {
            let r = r.send().await.unwrap();
            let status = r.status().as_u16();
            (status, r.json::<Value>().await.unwrap_or(Value::Null))
        }
    };
    // Its own tenant works.
    let (s, v) = with_key("GET", "/api/tenants/a", None).await;
    assert_eq!(s, 200, "{v}");
    let (s, v) = with_key(
        "POST",
        "/api/tenants/a/integrations",
        Some(spec("second", &sink.url("/a2"), json!({}))),
    )
    .await;
    assert_eq!(s, 201, "{v}");
    assert_eq!(t.webhook("a", "second", b"x".to_vec(), &[]).await, 202);
    // What a tenant that does not exist answers, to compare with.
    let (s, missing) = t.api(Method::GET, "/api/tenants/nobody/integrations", None).await;
    assert_eq!(s, 404);

    // The matrix: every route, method and spelling of tenant b; nothing succeeds.
    let body = json!({"id": "hook", "producer": {"type": "http", "url": "http://127.0.0.1:9/x"}});
    let (mut attempts, mut not_found, mut forbidden) = (0, 0, 0);
    for route in ROUTES {
        for form in TENANT_FORMS {
            let path = route.replace("{t}", form);
            for method in METHODS {
                let (s, v) = with_key(method, &path, Some(body.clone())).await;
                attempts += 1;
                assert!(!(200..300).contains(&s), "{method} {path} answered {s}: {v}");
                match s {
                    404 => not_found += 1,
                    403 => forbidden += 1,
                    // The router's own answers (405 for a method a route lacks).
                    405 => {}
                    other => panic!("{method} {path} answered {other}: {v}"),
                }
                if s == 404 && *method == "GET" && path.starts_with("/api/tenants/b/") {
                    assert_eq!(v["error"]["code"], missing["error"]["code"], "{v}");
                    assert_eq!(v["error"]["message"], "tenant b not found", "{v}");
                }
            }
        }
    }
    eprintln!("{attempts} attempts: {not_found} not found, {forbidden} forbidden, 0 succeeded");
    assert!(attempts >= 1000, "{attempts}");
    // B is untouched.
    let (_, b) = t.api(Method::GET, "/api/tenants/b/integrations", None).await;
    assert_eq!(b["integrations"].as_array().map(Vec::len), Some(1), "{b}");
    let (s, _) = t.api(Method::GET, "/api/tenants/b/integrations/hook", None).await;
    assert_eq!(s, 200);

    // Revoked: the key stops working at once.
    let (s, _) = t
        .api(Method::DELETE, &format!("/api/tenants/a/api-keys/{key_id}"), None)
        .await;
    assert_eq!(s, 204);
    let (s, v) = with_key("GET", "/api/tenants/a", None).await;
    assert_eq!((s, v["error"]["message"].as_str()), (401, Some("invalid token")), "{v}");

    // Readiness without the admin token says only up or down.
    let anonymous: Value = t.http.get(t.url("/readyz")).send().await.unwrap().json().await.unwrap();
    assert_eq!(anonymous, json!({"ready": true}));
    let (_, detailed) = t.api(Method::GET, "/readyz", None).await;
    assert!(detailed["tenants"].is_array(), "{detailed}");

    // The audit log has the key's life, its change, and the failed authentication.
    let (s, audit) = t.api(Method::GET, "/api/audit?tenant=a", None).await;
    assert_eq!(s, 200, "{audit}");
    let has = |action: &str, actor: &str, outcome: &str| {
        audit["entries"].as_array().unwrap().iter().any(|e| {
            e["action"] == action && e["actor"].as_str().unwrap().starts_with(actor) && e["outcome"] == outcome
        })
    };
    assert!(has("api_key.create", "admin", "ok"), "{audit}");
    assert!(has("integration.create", &format!("api_key:{key_id}"), "ok"), "{audit}");
    assert!(has("api_key.revoke", "admin", "ok"), "{audit}");
    let (_, audit) = t.api(Method::GET, "/api/audit", None).await;
    let failed = audit["entries"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|e| e["action"] == "auth.failed")
        .count();
    assert!(failed >= 1, "{audit}");
    let (s, v) = t.api(Method::GET, "/api/audit?since=yesterday", None).await;
    assert_eq!(s, 400, "{v}");
    sink.stop();
    t.shutdown().await;
}

/// The audit log refuses updates and deletes in the database itself, on both backends.
async fn audit_log_is_append_only(backend: Backend) {
    use sqlx::Connection;
    let t = TestRuntime::start(backend).await;
    t.create_tenant("acme").await;
    let url = match &t.pg {
        Some(pg) => pg.url.clone(),
        None => format!("sqlite:{}", t.dir.path().join("vrsky.db").display()),
    };
    let (_, audit) = t.api(Method::GET, "/api/audit?tenant=acme", None).await;
    assert_eq!(audit["entries"][0]["action"], "tenant.create", "{audit}");
    let attempts = ["UPDATE audit_log SET outcome = 'forged'", "DELETE FROM audit_log"];
    for sql in attempts {
        let e = match backend {
            Backend::Postgres => {
                let mut c = sqlx::PgConnection::connect(&url).await.unwrap();
                sqlx::raw_sql(sqlx::AssertSqlSafe(sql))
                    .execute(&mut c)
                    .await
                    .map(|_| ())
            }
            Backend::Sqlite => {
                let mut c = sqlx::SqliteConnection::connect(&url).await.unwrap();
                sqlx::raw_sql(sqlx::AssertSqlSafe(sql))
                    .execute(&mut c)
                    .await
                    .map(|_| ())
            }
        };
        let e = e.expect_err(sql).to_string();
        assert!(e.contains("append-only"), "{sql}: {e}");
    }
    let (_, after) = t.api(Method::GET, "/api/audit?tenant=acme", None).await;
    assert_eq!(after, audit, "the log changed");
    t.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn audit_log_is_append_only_sqlite() {
    audit_log_is_append_only(Backend::Sqlite).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn audit_log_is_append_only_postgres() {
    audit_log_is_append_only(Backend::Postgres).await;
}
