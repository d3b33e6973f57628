//! `GET /metrics`: the Prometheus text format with the admin token, and counters that
//! agree exactly with what the sinks saw after a run with failures, retries, dead letters
//! and filtered messages.

use std::collections::HashMap;
use std::time::Duration;

use reqwest::Method;
use serde_json::json;

use crate::common::sink::{FailFirst, Sink};
use crate::common::{Backend, TOKEN, TestRuntime, spec, wait_until};

/// Samples by their full series text (`name{labels}`).
fn parse(text: &str) -> HashMap<String, f64> {
    text.lines()
        .filter(|l| !l.starts_with('#') && !l.is_empty())
        .map(|l| {
            let (series, value) = l.rsplit_once(' ').unwrap();
            (series.to_owned(), value.parse().unwrap())
        })
        .collect()
}

async fn scrape(t: &TestRuntime) -> HashMap<String, f64> {
    let r = t.http.get(t.url("/metrics")).bearer_auth(TOKEN).send().await.unwrap();
    assert_eq!(r.status(), 200);
    assert!(
        r.headers()["content-type"]
            .to_str()
            .unwrap()
            .starts_with("text/plain; version=0.0.4")
    );
    parse(&r.text().await.unwrap())
}

fn get(m: &HashMap<String, f64>, name: &str, integration: &str, extra: &str) -> u64 {
    let key = format!("{name}{{tenant=\"acme\",integration=\"{integration}\"{extra}}}");
    *m.get(&key).unwrap_or_else(|| panic!("no series {key}")) as u64
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn counters_agree_with_what_the_sinks_saw() {
    let sink = Sink::start().await;
    sink.fail_first(FailFirst {
        n: 1,
        status: 503,
        ..Default::default()
    });
    let plain = Sink::start().await;
    let refusing = Sink::start().await;
    refusing.set_status(400);
    let t = TestRuntime::start(Backend::Sqlite).await;
    t.create_tenant("acme").await;
    let retry = json!({"retry": {"max_retries": 3, "backoff_base_s": 0.05}});
    t.create_integration("acme", spec("hook", &sink.url("/hook"), retry.clone()))
        .await;
    t.create_integration("acme", spec("dead", &refusing.url("/dead"), retry))
        .await;
    t.create_integration(
        "acme",
        spec(
            "picky",
            &plain.url("/picky"),
            json!({"filters": [{"type": "json_field", "path": "/type", "op": "eq", "value": "order"}]}),
        ),
    )
    .await;

    // Unauthenticated scrapes are refused like the API.
    let r = t.http.get(t.url("/metrics")).send().await.unwrap();
    assert_eq!(r.status(), 401);

    let mut ids = Vec::new();
    for i in 0..10 {
        let (s, v) = t
            .webhook_json("acme", "hook", format!("{{\"n\":{i}}}").into_bytes(), &[])
            .await;
        assert_eq!(s, 202, "{v}");
        ids.push(v["message_id"].as_str().unwrap().to_owned());
    }
    for i in 0..5 {
        assert_eq!(
            t.webhook("acme", "dead", format!("{{\"n\":{i}}}").into_bytes(), &[])
                .await,
            202
        );
    }
    for i in 0..7 {
        let kind = if i < 4 { "order" } else { "ping" };
        let body = json!({"type": kind, "n": i}).to_string().into_bytes();
        assert_eq!(t.webhook("acme", "picky", body, &[]).await, 202);
    }
    // A duplicate is not a new message.
    let (s, _) = t
        .webhook_json("acme", "hook", b"{}".to_vec(), &[("idempotency-key", "k1")])
        .await;
    assert_eq!(s, 202);
    let (s, v) = t
        .webhook_json("acme", "hook", b"{}".to_vec(), &[("idempotency-key", "k1")])
        .await;
    assert_eq!((s, v["duplicate"].as_bool()), (200, Some(true)), "{v}");

    // Everything finishes: 11 delivered on /hook, 4 on /picky, 5 dead letters.
    plain.wait_for("/picky", 4, Duration::from_secs(30)).await;
    let done = wait_until(Duration::from_secs(30), || async {
        let (_, d) = t
            .api(Method::GET, "/api/tenants/acme/dead-letters?limit=100", None)
            .await;
        sink.ids("/hook").len() == 11 && d["dead_letters"].as_array().map_or(0, Vec::len) == 5
    })
    .await;
    assert!(done.is_ok(), "hook {:?}", sink.ids("/hook").len());
    let (_, dlq) = t
        .api(Method::GET, "/api/tenants/acme/dead-letters?limit=100", None)
        .await;
    let dead_letters = dlq["dead_letters"].as_array().unwrap().len() as u64;

    // The counters move just after each outcome is written; wait for them to settle.
    let settled = wait_until(Duration::from_secs(30), || async {
        let m = scrape(&t).await;
        get(&m, "vrsky_messages_delivered_total", "hook", "") == 11
            && get(&m, "vrsky_messages_dead_lettered_total", "dead", "") == 5
            && get(&m, "vrsky_messages_delivered_total", "picky", "") == 4
            && get(&m, "vrsky_messages_filtered_total", "picky", "") == 3
    })
    .await;
    assert!(settled.is_ok(), "{:?}", scrape(&t).await);
    let m = scrape(&t).await;
    let hook_requests = sink.count("/hook") as u64;
    let hook_delivered = sink.ids("/hook").len() as u64;
    assert_eq!(get(&m, "vrsky_messages_received_total", "hook", ""), 11);
    assert_eq!(get(&m, "vrsky_messages_delivered_total", "hook", ""), hook_delivered);
    assert_eq!(
        get(&m, "vrsky_delivery_attempts_total", "hook", ",outcome=\"success\"")
            + get(&m, "vrsky_delivery_attempts_total", "hook", ",outcome=\"failure\""),
        hook_requests,
        "every request the sink saw is an attempt"
    );
    assert_eq!(
        get(&m, "vrsky_delivery_attempts_total", "hook", ",outcome=\"failure\""),
        11
    );
    assert_eq!(get(&m, "vrsky_messages_retried_total", "hook", ""), 11);
    assert_eq!(
        get(&m, "vrsky_message_end_to_end_seconds_count", "hook", ""),
        hook_delivered
    );
    assert_eq!(
        get(&m, "vrsky_delivery_duration_seconds_count", "hook", ""),
        hook_requests
    );
    assert_eq!(get(&m, "vrsky_messages_received_total", "dead", ""), 5);
    assert_eq!(get(&m, "vrsky_messages_dead_lettered_total", "dead", ""), dead_letters);
    assert_eq!(
        get(&m, "vrsky_delivery_attempts_total", "dead", ",outcome=\"failure\""),
        refusing.count("/dead") as u64
    );
    assert_eq!(get(&m, "vrsky_messages_delivered_total", "dead", ""), 0);
    assert_eq!(get(&m, "vrsky_messages_filtered_total", "picky", ""), 3);
    assert_eq!(
        get(&m, "vrsky_messages_delivered_total", "picky", ""),
        plain.count("/picky") as u64
    );
    assert_eq!(get(&m, "vrsky_messages_unfinished", "hook", ""), 0);
    assert_eq!(
        m["vrsky_nats_instance_integrations{tenant=\"acme\",instance=\"1\"}"],
        3.0
    );
    // The tenant server's own figures, from its /varz: this node's two connections
    // (ingress and worker) at least, and the webhooks it carried.
    let inst = "{tenant=\"acme\",instance=\"1\"}";
    assert_eq!(m[&format!("vrsky_tenant_nats_up{inst}")], 1.0, "{m:?}");
    assert!(m[&format!("vrsky_tenant_nats_connections{inst}")] >= 2.0);
    assert!(m[&format!("vrsky_tenant_nats_memory_bytes{inst}")] > 0.0);
    assert!(m[&format!("vrsky_tenant_nats_in_msgs_total{inst}")] >= plain.count("/hook") as f64);
    assert!(m[&format!("vrsky_tenant_nats_out_msgs_total{inst}")] >= plain.count("/hook") as f64);
    assert!(
        m.contains_key("vrsky_actor_restarts_total{kind=\"integration\"}"),
        "{m:?}"
    );
    assert!(m.keys().any(|k| k.starts_with("vrsky_build_info{version=")));
    assert_eq!(
        m.get("vrsky_dead_letters{tenant=\"acme\"}").copied(),
        Some(dead_letters as f64)
    );
    assert_eq!(
        m["vrsky_platform_stream_messages{stream=\"dead_letter_queue\"}"] as u64, dead_letters,
        "one entry per dead letter"
    );
    assert_eq!(m["vrsky_retry_backlog"], 0.0, "every retry was taken");
    assert!(
        m["vrsky_platform_stream_bytes{stream=\"KV_message_state\"}"] > 0.0,
        "{m:?}"
    );
    // No message id is ever a label.
    for id in &ids {
        assert!(!m.keys().any(|k| k.contains(id.as_str())), "{id} became a label");
    }
    sink.stop();
    plain.stop();
    refusing.stop();
    t.shutdown().await;
}
