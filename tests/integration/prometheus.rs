//! A real Prometheus (Debian's `prometheus`, installed by `scripts/test`) scrapes a node
//! under load with the runtime job of `deploy/monitoring/prometheus.yml` (bearer token,
//! `honor_labels`) and the alert rules loaded. Every PromQL expression of every dashboard
//! and rule must parse, and the core ones must return data.

use std::process::Stdio;
use std::time::Duration;

use serde_json::{Value, json};

use crate::common::{Backend, FailFirst, Sink, TOKEN, TestRuntime, spec, wait_until};

const MONITORING: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/../deploy/monitoring");

/// Every `expr` in a dashboard (panel targets and annotations), with Grafana's variables
/// as a user would have them (`.*` for All).
fn dashboard_exprs(v: &Value, out: &mut Vec<String>) {
    match v {
        Value::Object(m) => {
            for (k, v) in m {
                match (k.as_str(), v) {
                    ("expr", Value::String(e)) if !e.trim().is_empty() => out.push(grafana_vars(e)),
                    _ => dashboard_exprs(v, out),
                }
            }
        }
        Value::Array(a) => a.iter().for_each(|v| dashboard_exprs(v, out)),
        _ => {}
    }
}

fn grafana_vars(e: &str) -> String {
    e.replace("$__rate_interval", "1m")
        .replace("$__interval", "15s")
        .replace("$__range", "1h")
        .replace("${tenant}", ".*")
        .replace("$tenant", ".*")
        .replace("${integration}", ".*")
        .replace("$integration", ".*")
}

struct Prometheus {
    child: tokio::process::Child,
    url: String,
}

impl Drop for Prometheus {
    fn drop(&mut self) {
        let _ = self.child.start_kill();
    }
}

async fn start_prometheus(dir: &std::path::Path, target: &str) -> Prometheus {
    let token = dir.join("token");
    std::fs::write(&token, TOKEN).unwrap();
    let rules = format!("{MONITORING}/alerts.yml");
    let config = format!(
        "global:\n  scrape_interval: 1s\n  evaluation_interval: 1s\nrule_files:\n  - {rules}\nscrape_configs:\n  - job_name: vrsky-runtime\n    metrics_path: /metrics\n    honor_labels: true\n    authorization:\n      type: Bearer\n      credentials_file: {}\n    static_configs:\n      - targets: ['{target}']\n",
        token.display()
    );
    std::fs::write(dir.join("prometheus.yml"), config).unwrap();
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let bin = std::env::var("PROMETHEUS_BIN").unwrap_or_else(|_| "prometheus".into());
    let log = std::fs::File::create(dir.join("prometheus.log")).unwrap();
    let child = tokio::process::Command::new(&bin)
        .arg(format!("--config.file={}", dir.join("prometheus.yml").display()))
        .arg(format!("--storage.tsdb.path={}", dir.join("data").display()))
        .arg(format!("--web.listen-address=127.0.0.1:{port}"))
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::from(log))
        .kill_on_drop(true)
        .spawn()
        .unwrap_or_else(|e| panic!("{bin}: {e} (scripts/test installs Debian's prometheus)"));
    Prometheus {
        child,
        url: format!("http://127.0.0.1:{port}"),
    }
}

async fn query(http: &reqwest::Client, p: &Prometheus, q: &str) -> Value {
    let url = reqwest::Url::parse_with_params(&format!("{}/api/v1/query", p.url), [("query", q)]).unwrap();
    match http.get(url).send().await {
        Ok(r) => r.json().await.unwrap_or(Value::Null),
        // Not listening yet (at start); callers that need an answer check `status`.
        Err(e) => json!({"status": "unreachable", "error": e.to_string()}),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_real_prometheus_parses_every_dashboard_and_rule_and_the_core_ones_have_data() {
    crate::common::init_logging();
    let dir = tempfile::tempdir().unwrap();
    let t = TestRuntime::start(Backend::Sqlite).await;
    let sink = Sink::start().await;
    sink.fail_first(FailFirst {
        n: 1,
        status: 503,
        ..FailFirst::default()
    });
    t.create_tenant("acme").await;
    let retry = json!({"retry": {"max_retries": 1, "backoff_base_s": 0.1, "jitter": 0.0}});
    t.create_integration("acme", spec("orders", &sink.url("/orders"), retry))
        .await;
    let target = t.url("").trim_start_matches("http://").trim_end_matches('/').to_owned();
    let prom = start_prometheus(dir.path(), &target).await;
    let http = reqwest::Client::new();

    // Load while Prometheus scrapes: webhooks for 6 s.
    let load = {
        let (http, url) = (http.clone(), t.url("/webhooks/acme/orders"));
        tokio::spawn(async move {
            let until = tokio::time::Instant::now() + Duration::from_secs(6);
            let mut sent = 0u32;
            while tokio::time::Instant::now() < until {
                let r = http.post(&url).json(&json!({"n": sent})).send().await.unwrap();
                assert_eq!(r.status(), 202);
                sent += 1;
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            sent
        })
    };
    let up = wait_until(Duration::from_secs(30), || {
        let (http, p) = (http.clone(), &prom);
        async move {
            let v = query(&http, p, "up{job=\"vrsky-runtime\"} == 1").await;
            v["data"]["result"].as_array().is_some_and(|r| !r.is_empty())
        }
    })
    .await;
    let log = || std::fs::read_to_string(dir.path().join("prometheus.log")).unwrap_or_default();
    assert!(up.is_ok(), "Prometheus never scraped the node; its log:\n{}", log());
    let sent = load.await.unwrap();
    assert!(sent > 50, "{sent}");
    // Until a scrape after the load has counted every webhook (the scrapes during it give
    // rates over 1m their samples).
    let counted = wait_until(Duration::from_secs(30), || {
        let (http, p) = (http.clone(), &prom);
        async move {
            let v = query(&http, p, "sum(vrsky_messages_received_total)").await;
            v["data"]["result"][0]["value"][1]
                .as_str()
                .and_then(|n| n.parse::<f64>().ok())
                .is_some_and(|n| n >= f64::from(sent))
        }
    })
    .await;
    assert!(
        counted.is_ok(),
        "Prometheus never counted the {sent} webhooks; its log:\n{}",
        log()
    );
    // And until it has two samples of the counters, which a rate over them needs: on a
    // busy machine the first scrape with the series can come after the load ended.
    let two = wait_until(Duration::from_secs(30), || {
        let (http, p) = (http.clone(), &prom);
        async move {
            let v = query(&http, p, "count_over_time(vrsky_messages_received_total[1m]) >= 2").await;
            v["data"]["result"].as_array().is_some_and(|r| !r.is_empty())
        }
    })
    .await;
    assert!(
        two.is_ok(),
        "Prometheus never took a second sample; its log:\n{}",
        log()
    );

    let mut exprs = Vec::new();
    let mut dashboards = 0;
    for entry in std::fs::read_dir(format!("{MONITORING}/dashboards")).unwrap() {
        let path = entry.unwrap().path();
        if path.extension().is_some_and(|e| e == "json") {
            let v: Value = serde_json::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap();
            assert!(
                v["uid"].as_str().is_some_and(|u| u.starts_with("vrsky-")),
                "{path:?} has a stable uid"
            );
            dashboard_exprs(&v, &mut exprs);
            dashboards += 1;
        }
    }
    assert!(dashboards >= 4, "four dashboards at least, found {dashboards}");
    // The rules, as Prometheus loaded them (a rule that did not parse stops its start).
    let rules: Value = http
        .get(format!("{}/api/v1/rules", prom.url))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let mut rule_count = 0;
    for g in rules["data"]["groups"].as_array().unwrap() {
        for r in g["rules"].as_array().unwrap() {
            exprs.push(r["query"].as_str().unwrap().to_owned());
            rule_count += 1;
        }
    }
    assert!(rule_count >= 5, "the five alert rules are loaded: {rules}");
    exprs.sort();
    exprs.dedup();
    let mut failures = Vec::new();
    for e in &exprs {
        let v = query(&http, &prom, e).await;
        if v["status"] != "success" {
            failures.push(format!("{e}\n  -> {}", v["error"]));
        }
    }
    assert!(
        failures.is_empty(),
        "{} of {} expressions failed:\n{}",
        failures.len(),
        exprs.len(),
        failures.join("\n")
    );

    // The core expressions return data (each is one a dashboard uses).
    let core = [
        "sum(rate(vrsky_messages_received_total{tenant=~\".*\"}[1m]))",
        "sum(rate(vrsky_messages_delivered_total{tenant=~\".*\"}[1m]))",
        "histogram_quantile(0.95, sum by (le) (rate(vrsky_message_end_to_end_seconds_bucket{tenant=~\".*\"}[1m])))",
        "sum(rate(vrsky_delivery_attempts_total{tenant=~\".*\", outcome=\"success\"}[1m])) / sum(rate(vrsky_delivery_attempts_total{tenant=~\".*\"}[1m]))",
        "max by (tenant, instance) (label_replace(vrsky_nats_instance_integrations{tenant=~\".*\"}, \"instance\", \"$1\", \"exported_instance\", \"(.+)\"))",
        "max by (tenant, instance) (label_replace(vrsky_tenant_nats_connections{tenant=~\".*\"}, \"instance\", \"$1\", \"exported_instance\", \"(.+)\"))",
        "max by (stream) (vrsky_platform_stream_bytes)",
        "max(vrsky_retry_backlog)",
        "count by (version) (vrsky_build_info)",
    ];
    for c in core {
        assert!(exprs.iter().any(|e| e == c), "not in any dashboard: {c}");
        let v = query(&http, &prom, c).await;
        let result = v["data"]["result"].as_array().cloned().unwrap_or_default();
        assert!(!result.is_empty(), "no data for {c}: {v}");
    }
    let received = query(&http, &prom, "sum(vrsky_messages_received_total)").await;
    let n: f64 = received["data"]["result"][0]["value"][1]
        .as_str()
        .unwrap()
        .parse()
        .unwrap();
    assert!(
        n >= f64::from(sent) * 0.9,
        "Prometheus saw {n} of {sent} accepted webhooks"
    );
    t.shutdown().await;
}
