//! What a new user meets first: precise 401s, the router's errors in the API's shape,
//! a producer URL without a scheme, the `filtered` status with its reason, attempts and
//! retries counted apart, and an integration's recent messages, paged.

use std::time::Duration;

use reqwest::Method;
use serde_json::{Value, json};

use crate::common::sink::{FailFirst, Sink};
use crate::common::{Backend, TestRuntime, spec};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_router_and_auth_answer_in_the_error_shape_and_say_what_is_wrong() {
    let t = TestRuntime::start(Backend::Sqlite).await;
    t.create_tenant("acme").await;
    let call = |method: Method, path: &str, auth: Option<&'static str>| {
        let mut r = t.http.request(method, t.url(path));
        if let Some(a) = auth {
            r = r.header("authorization", a);
        }
        async move {
            let r = r.send().await.unwrap();
            let status = r.status().as_u16();
            let body: Value = serde_json::from_str(&r.text().await.unwrap()).unwrap_or(Value::Null);
            (status, body)
        }
    };
    // 405 and 404 of the router itself.
    let (s, v) = call(Method::GET, "/webhooks/acme/hook", None).await;
    assert_eq!(
        (s, v["error"]["code"].as_str()),
        (405, Some("method_not_allowed")),
        "{v}"
    );
    assert!(v["error"]["message"].as_str().unwrap().contains("GET"), "{v}");
    let (s, v) = call(Method::GET, "/no/such/thing", None).await;
    assert_eq!((s, v["error"]["code"].as_str()), (404, Some("not_found")), "{v}");
    // Each wrong Authorization header says what is wrong with it.
    let message = |v: &Value| v["error"]["message"].as_str().unwrap().to_owned();
    let (s, v) = call(Method::GET, "/api/tenants", None).await;
    assert_eq!(s, 401);
    assert!(message(&v).contains("missing Authorization header"), "{v}");
    let (s, v) = call(Method::GET, "/api/tenants", Some("test-admin-token-0123456789")).await;
    assert_eq!(s, 401);
    assert!(message(&v).contains("expected `Authorization: Bearer <token>`"), "{v}");
    // `-H "Authorization: Bearer $VRSKY_ADMIN_TOKEN"` with the variable unset.
    let (s, v) = call(Method::GET, "/api/tenants", Some("Bearer ")).await;
    assert_eq!(s, 401);
    assert!(message(&v).contains("VRSKY_ADMIN_TOKEN"), "{v}");
    let (s, v) = call(Method::GET, "/api/tenants", Some("Bearer wrong-token-0123456789")).await;
    assert_eq!((s, message(&v).as_str()), (401, "invalid token"));

    // A producer URL without a scheme.
    let (s, v) = t
        .api(
            Method::POST,
            "/api/tenants/acme/integrations",
            Some(spec("hook", "api.example.com/orders", json!({}))),
        )
        .await;
    assert_eq!(s, 400, "{v}");
    assert!(message(&v).contains("missing scheme: use http:// or https://"), "{v}");
    t.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn filtered_messages_say_why_and_recent_messages_are_listed_newest_first() {
    let t = TestRuntime::start(Backend::Sqlite).await;
    let sink = Sink::start().await;
    t.create_tenant("acme").await;
    t.create_tenant("other").await;
    let filter = json!({"filters": [{"type": "json_field", "path": "/type", "op": "eq", "value": "order"}]});
    t.create_integration("acme", spec("orders", &sink.url("/orders"), filter.clone()))
        .await;
    t.create_integration("other", spec("orders", &sink.url("/other"), filter))
        .await;
    let rt = &t;
    let send = |tenant: &'static str, body: &'static str| async move {
        let (s, v) = rt.webhook_json(tenant, "orders", body.as_bytes().to_vec(), &[]).await;
        assert_eq!(s, 202, "{v}");
        v["message_id"].as_str().unwrap().to_owned()
    };
    let order = send("acme", r#"{"type":"order"}"#).await;
    let refund = send("acme", r#"{"type":"refund"}"#).await;
    let garbage = send("acme", "<order/>").await;
    let foreign = send("other", r#"{"type":"order"}"#).await;

    let m = t.wait_status("acme", &order, "completed").await;
    assert_eq!(
        (m["attempts"].as_u64(), m["retry_count"].as_u64()),
        (Some(1), Some(0)),
        "{m}"
    );
    assert!(m.get("reason").is_none(), "{m}");
    let m = t.wait_status("acme", &refund, "filtered").await;
    assert_eq!(
        m["reason"], r#"filter 0 (json_field /type eq "order") did not match"#,
        "{m}"
    );
    assert_eq!(m["attempts"], 0, "{m}");
    let m = t.wait_status("acme", &garbage, "filtered").await;
    assert!(
        m["reason"]
            .as_str()
            .unwrap()
            .contains("the body is not JSON (expected value at line 1 column 1)"),
        "{m}"
    );
    t.wait_status("other", &foreign, "completed").await;
    // Filtered messages never reach the destination; the counter agrees.
    assert_eq!(sink.count("/orders"), 1);
    let (_, hook) = t.api(Method::GET, "/api/tenants/acme/integrations/orders", None).await;
    assert_eq!(hook["stats"]["filtered"], 2, "{hook}");

    // Newest first, one tenant only, paged without gaps or repeats.
    let list = "/api/tenants/acme/integrations/orders/messages";
    let (s, all) = t.api(Method::GET, list, None).await;
    assert_eq!(s, 200, "{all}");
    let ids = |v: &Value| -> Vec<String> {
        v["messages"]
            .as_array()
            .unwrap()
            .iter()
            .map(|m| m["message_id"].as_str().unwrap().to_owned())
            .collect()
    };
    assert_eq!(ids(&all), vec![garbage.clone(), refund.clone(), order.clone()], "{all}");
    assert_eq!(all["next_cursor"], Value::Null);
    let (_, first) = t.api(Method::GET, &format!("{list}?limit=2"), None).await;
    assert_eq!(ids(&first), vec![garbage.clone(), refund.clone()], "{first}");
    let cursor = first["next_cursor"].as_str().unwrap().to_owned();
    let (_, second) = t
        .api(Method::GET, &format!("{list}?limit=2&cursor={cursor}"), None)
        .await;
    assert_eq!(ids(&second), vec![order.clone()], "{second}");
    assert_eq!(second["next_cursor"], Value::Null, "{second}");
    let (_, filtered) = t.api(Method::GET, &format!("{list}?status=filtered"), None).await;
    assert_eq!(ids(&filtered), vec![garbage, refund], "{filtered}");
    let (_, other) = t
        .api(Method::GET, "/api/tenants/other/integrations/orders/messages", None)
        .await;
    assert_eq!(ids(&other), vec![foreign], "{other}");

    // Bad queries are refused precisely.
    for (query, expect) in [
        ("?status=done", "unknown status \"done\""),
        ("?limit=0", "limit must be 1 to 500"),
        ("?cursor=nope", "cursor must be a value from next_cursor"),
        ("?page=2", "unknown parameter \"page\""),
    ] {
        let (s, v) = t.api(Method::GET, &format!("{list}{query}"), None).await;
        assert_eq!(s, 400, "{query}: {v}");
        assert!(v["error"]["message"].as_str().unwrap().contains(expect), "{query}: {v}");
    }
    let (s, v) = t
        .api(Method::GET, "/api/tenants/acme/integrations/nope/messages", None)
        .await;
    assert_eq!(s, 404, "{v}");
    sink.stop();
    t.shutdown().await;
}

/// A message waiting for a retry counts its attempts and retries apart, and shows when
/// the next attempt is due.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_waiting_retry_shows_its_attempts_and_when_it_is_due() {
    let t = TestRuntime::start(Backend::Sqlite).await;
    let sink = Sink::start().await;
    sink.fail_first(FailFirst {
        n: 100,
        status: 503,
        ..Default::default()
    });
    t.create_tenant("acme").await;
    t.create_integration(
        "acme",
        spec(
            "hook",
            &sink.url("/hook"),
            json!({"retry": {"max_retries": 3, "backoff_base_s": 60, "backoff_max_s": 300}}),
        ),
    )
    .await;
    let (_, v) = t.webhook_json("acme", "hook", b"x".to_vec(), &[]).await;
    let id = v["message_id"].as_str().unwrap().to_owned();
    let m = t.wait_status("acme", &id, "retry").await;
    assert_eq!(
        (m["attempts"].as_u64(), m["retry_count"].as_u64()),
        (Some(1), Some(0)),
        "{m}"
    );
    let due = m["next_attempt_at"].as_str().unwrap();
    assert!(due.ends_with('Z') && due > m["updated_at"].as_str().unwrap(), "{m}");
    assert_eq!(m["integration_id"], "hook");
    sink.wait_for("/hook", 1, Duration::from_secs(5)).await;
    sink.stop();
    t.shutdown().await;
}

/// One curl of the README: method, URL, headers, body.
type Call = (String, String, Vec<(String, String)>, String);

/// The curl commands of the README's "Using it" example, with `$API` and `$AUTH`
/// substituted.
fn readme_calls(api: &str) -> Vec<Call> {
    let readme = include_str!("../../README.md");
    let start = readme.find("## Using it").unwrap();
    let block = &readme[start..];
    let block = &block[block.find("```sh").unwrap() + 5..];
    let block = &block[..block.find("```").unwrap()];
    // Join continued lines and multi-line quoted bodies into one command each.
    let mut commands: Vec<String> = Vec::new();
    let mut open = false;
    for line in block.lines() {
        let line = line.trim_end();
        let continues = open || commands.last().is_some_and(|c| c.ends_with('\\'));
        if continues {
            let last = commands.last_mut().unwrap();
            if last.ends_with('\\') {
                last.pop();
            }
            last.push('\n');
            last.push_str(line);
        } else if line.trim_start().starts_with("curl ") {
            commands.push(line.trim_start().to_owned());
        } else {
            continue;
        }
        open = commands.last().unwrap().matches('\'').count() % 2 == 1;
    }
    commands
        .into_iter()
        .map(|c| {
            let c = c.replace("$API", api);
            let method = if c.contains("-X POST") { "POST" } else { "GET" }.to_owned();
            let quoted: Vec<&str> = c.split('\'').collect();
            let mut headers = Vec::new();
            let mut body = String::new();
            for (k, part) in quoted.iter().enumerate() {
                if k % 2 == 1 {
                    let before = quoted[k - 1].trim_end();
                    if before.ends_with("-H") {
                        let (n, v) = part.split_once(':').unwrap();
                        headers.push((n.trim().to_owned(), v.trim().to_owned()));
                    } else if before.ends_with("-d") {
                        body = (*part).to_owned();
                    }
                }
            }
            if c.contains("-d '") && body.is_empty() {
                panic!("no body parsed from {c}");
            }
            if c.contains(r#"-H "$AUTH""#) {
                headers.push(("authorization".into(), "Bearer test-admin-token-0123456789".into()));
            }
            let url = c
                .split_whitespace()
                .map(|w| w.trim_matches('"'))
                .find(|w| w.starts_with(api))
                .unwrap()
                .to_owned();
            (method, url, headers, body)
        })
        .collect()
}

/// The README's "Using it" example, run as written against a node with the dev echo
/// sink: the order is delivered (converted) to the sink, the refund is filtered, and
/// the listing and the sink show both as the README says.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_readmes_example_delivers_to_the_echo_sink() {
    let t = TestRuntime::start_with_options(
        Backend::Sqlite,
        vrsky_runtime::app::RuntimeOptions { dev_sink: true },
        |_| {},
    )
    .await;
    let api = t.url("");
    let api = api.trim_end_matches('/');
    let calls = readme_calls("http://127.0.0.1:8080");
    assert!(calls.len() >= 6, "{calls:?}");
    let mut answers = Vec::new();
    for (method, url, headers, body) in &calls {
        let url = url.replace("http://127.0.0.1:8080", api);
        let body = body.replace("http://127.0.0.1:8080", api);
        let mut r = t.http.request(method.parse().unwrap(), &url);
        for (k, v) in headers {
            r = r.header(k.as_str(), v.as_str());
        }
        if !body.is_empty() {
            r = r.body(body.clone());
        }
        let r = r.send().await.unwrap();
        let status = r.status().as_u16();
        let v: Value = r.json().await.unwrap_or(Value::Null);
        assert!(status < 300, "{method} {url} {body}: {status} {v}");
        answers.push(v);
        // The example's reads follow its webhooks: let those finish first.
        if url.contains("/webhooks/") {
            let id = answers.last().unwrap()["message_id"].as_str().unwrap().to_owned();
            let (_, m) = t
                .api(Method::GET, &format!("/api/tenants/acme/messages/{id}"), None)
                .await;
            let done = crate::common::wait_until(Duration::from_secs(30), || async {
                let (_, m) = t
                    .api(Method::GET, &format!("/api/tenants/acme/messages/{id}"), None)
                    .await;
                m["status"] == "completed" || m["status"] == "filtered"
            })
            .await;
            assert!(done.is_ok(), "{m}");
        }
    }
    let listing = answers.iter().find(|v| v.get("messages").is_some()).unwrap();
    let statuses: Vec<&str> = listing["messages"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["status"].as_str().unwrap())
        .collect();
    assert_eq!(statuses, vec!["filtered", "completed"], "{listing}");
    let echo = answers.iter().find(|v| v.get("requests").is_some()).unwrap();
    assert_eq!(echo["requests"][0]["body"], r#"{"id":42,"source":"vrsky"}"#, "{echo}");
    assert_eq!(
        echo["requests"].as_array().unwrap().len(),
        1,
        "the refund was not delivered"
    );
    t.shutdown().await;
}
