//! OpenTelemetry over the real OTLP protocols, received in-process: a node process
//! (`vrsky-test-node serve`) exports to a gRPC `TraceService` and to an HTTP/protobuf
//! `/v1/traces` endpoint run by the test. Asserts the actor-tree parentage, one trace
//! across a delivery that failed once and was retried, and a replay from the DLQ joining
//! the original trace.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use opentelemetry_proto::tonic::collector::trace::v1::trace_service_server::{TraceService, TraceServiceServer};
use opentelemetry_proto::tonic::collector::trace::v1::{ExportTraceServiceRequest, ExportTraceServiceResponse};
use opentelemetry_proto::tonic::common::v1::any_value::Value as AnyValue;
use prost::Message as _;
use serde_json::{Value, json};

use crate::common::node::{NodeProcess, api};
use crate::common::{FailFirst, Sink, spec, wait_until};

/// One received span, ids in hex.
#[derive(Debug, Clone)]
struct Rec {
    trace: String,
    span: String,
    parent: String,
    name: String,
    attrs: HashMap<String, String>,
}

#[derive(Clone, Default)]
struct Collector(Arc<Mutex<Vec<Rec>>>);

fn hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

impl Collector {
    fn take(&self, req: ExportTraceServiceRequest) {
        let mut out = self.0.lock().unwrap();
        for rs in req.resource_spans {
            for ss in rs.scope_spans {
                for s in ss.spans {
                    let attrs = s
                        .attributes
                        .iter()
                        .map(|kv| {
                            let v = match kv.value.as_ref().and_then(|v| v.value.clone()) {
                                Some(AnyValue::StringValue(s)) => s,
                                Some(AnyValue::IntValue(i)) => i.to_string(),
                                Some(AnyValue::BoolValue(b)) => b.to_string(),
                                other => format!("{other:?}"),
                            };
                            (kv.key.clone(), v)
                        })
                        .collect();
                    out.push(Rec {
                        trace: hex(&s.trace_id),
                        span: hex(&s.span_id),
                        parent: hex(&s.parent_span_id),
                        name: s.name,
                        attrs,
                    });
                }
            }
        }
    }

    fn spans(&self) -> Vec<Rec> {
        self.0.lock().unwrap().clone()
    }

    fn actor(&self, name: &str) -> Option<Rec> {
        self.spans()
            .into_iter()
            .find(|s| s.attrs.get("actor.name").map(String::as_str) == Some(name))
    }

    fn of_message(&self, id: &str) -> Vec<Rec> {
        self.spans()
            .into_iter()
            .filter(|s| s.attrs.get("vrsky.message_id").map(String::as_str) == Some(id))
            .collect()
    }
}

#[tonic::async_trait]
impl TraceService for Collector {
    async fn export(
        &self,
        request: tonic::Request<ExportTraceServiceRequest>,
    ) -> Result<tonic::Response<ExportTraceServiceResponse>, tonic::Status> {
        self.take(request.into_inner());
        Ok(tonic::Response::new(ExportTraceServiceResponse::default()))
    }
}

/// Serves OTLP for `protocol`; returns the endpoint to configure.
async fn receiver(protocol: &str, c: Collector) -> String {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    match protocol {
        "grpc" => {
            let incoming = tonic::transport::server::TcpIncoming::from(listener);
            tokio::spawn(
                tonic::transport::Server::builder()
                    .add_service(TraceServiceServer::new(c))
                    .serve_with_incoming(incoming),
            );
        }
        _ => {
            let app = axum::Router::new().route(
                "/v1/traces",
                axum::routing::post(move |body: bytes::Bytes| {
                    let c = c.clone();
                    async move {
                        match ExportTraceServiceRequest::decode(body) {
                            Ok(req) => {
                                c.take(req);
                                (
                                    axum::http::StatusCode::OK,
                                    [("content-type", "application/x-protobuf")],
                                    ExportTraceServiceResponse::default().encode_to_vec(),
                                )
                            }
                            Err(_) => (
                                axum::http::StatusCode::BAD_REQUEST,
                                [("content-type", "text/plain")],
                                b"bad protobuf".to_vec(),
                            ),
                        }
                    }
                }),
            );
            tokio::spawn(async move { axum::serve(listener, app).await });
        }
    }
    format!("http://{addr}")
}

async fn wait_for(what: &str, c: &Collector, cond: impl Fn(&Collector) -> bool) {
    let ok = wait_until(Duration::from_secs(30), || {
        let seen = cond(c);
        async move { seen }
    })
    .await;
    let names: Vec<_> = c.spans().iter().map(|s| s.name.clone()).collect();
    assert!(ok.is_ok(), "{what}: not received; spans so far: {names:?}");
}

async fn webhook(http: &reqwest::Client, node: &NodeProcess, integration: &str, traceparent: &str) -> String {
    let r = http
        .post(node.url(&format!("/webhooks/acme/{integration}")))
        .header("traceparent", traceparent)
        .json(&json!({"n": 1}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 202);
    r.json::<Value>().await.unwrap()["message_id"]
        .as_str()
        .unwrap()
        .to_owned()
}

/// What every trace test runs: a platform, a node process exporting to an in-process
/// receiver, tenant `acme` with `hook` (a passing filter, so its journey has a pipeline
/// span; delivering to a sink that answers 503 once) and `strict` (to a sink answering 400).
struct Fixture {
    _dir: tempfile::TempDir,
    _platform: vrsky_runtime::nats::platform_server::PlatformServer,
    collector: Collector,
    sink: Sink,
    refusing: Sink,
    node: NodeProcess,
    http: reqwest::Client,
}

async fn fixture(protocol: &str, env: &[(&str, &str)]) -> Fixture {
    crate::common::init_logging();
    let dir = tempfile::tempdir().unwrap();
    let platform = crate::common::external_platform(dir.path(), "platform").await;
    let collector = Collector::default();
    let endpoint = receiver(protocol, collector.clone()).await;
    let sink = Sink::start().await;
    sink.fail_first(FailFirst {
        n: 1,
        status: 503,
        ..FailFirst::default()
    });
    let refusing = Sink::start().await;
    refusing.set_status(400);
    let mut node_env = vec![
        ("OTEL_EXPORTER_OTLP_ENDPOINT", endpoint.as_str()),
        ("OTEL_EXPORTER_OTLP_PROTOCOL", protocol),
        ("OTEL_BSP_SCHEDULE_DELAY", "100"),
    ];
    node_env.extend_from_slice(env);
    let node = NodeProcess::start(dir.path().join("node"), &platform, &node_env).await;
    let http = reqwest::Client::new();
    let (s, v) = api(
        &http,
        &node,
        reqwest::Method::POST,
        "/api/tenants",
        Some(json!({"id": "acme", "name": "Acme"})),
    )
    .await;
    assert_eq!(s, 201, "{v}");
    let retry = json!({"retry": {"max_retries": 3, "backoff_base_s": 0.1, "jitter": 0.0}});
    let mut filtered = retry.clone();
    filtered["filters"] = json!([{"type": "json_field", "path": "/n", "op": "eq", "value": 1}]);
    for (id, url, extra) in [
        ("hook", sink.url("/hook"), filtered),
        ("strict", refusing.url("/strict"), retry),
    ] {
        let (s, v) = api(
            &http,
            &node,
            reqwest::Method::POST,
            "/api/tenants/acme/integrations",
            Some(spec(id, &url, extra)),
        )
        .await;
        assert_eq!(s, 201, "{v}");
    }
    Fixture {
        _dir: dir,
        _platform: platform,
        collector,
        sink,
        refusing,
        node,
        http,
    }
}

async fn exports_traces_over(protocol: &str) {
    let Fixture {
        _dir,
        _platform,
        collector,
        sink,
        refusing,
        mut node,
        http,
    } = fixture(
        protocol,
        &[("OTEL_SERVICE_NAME", "vrsky-test"), ("VRSKY_LOG__FORMAT", "json")],
    )
    .await;

    // The actor tree: integration:hook under tenant:acme under runtime, one trace.
    wait_for("the actor tree", &collector, |c| c.actor("integration:hook").is_some()).await;
    let runtime = collector.actor("runtime").unwrap();
    let tenant = collector.actor("tenant:acme").unwrap();
    let integration = collector.actor("integration:hook").unwrap();
    assert_eq!(runtime.parent, "", "runtime is the root");
    assert_eq!(tenant.parent, runtime.span, "tenant:acme under runtime");
    assert_eq!(integration.parent, tenant.span, "integration:hook under tenant:acme");
    assert!(tenant.trace == runtime.trace && integration.trace == runtime.trace);
    assert_eq!(integration.attrs["actor.kind"], "integration");
    assert_eq!(integration.attrs["actor.restart_count"], "0");
    assert!(integration.attrs["actor.id"].len() > 1);
    assert!(
        collector
            .actor("retry-scheduler")
            .is_some_and(|s| s.parent == runtime.span)
    );

    // A delivery that failed once (503) and was retried: one trace, continued from the
    // sender's traceparent.
    let trace = "4bf92f3577b34da6a3ce929d0e0e4736";
    let id = webhook(&http, &node, "hook", &format!("00-{trace}-00f067aa0ba902b7-01")).await;
    wait_for("two delivery attempts", &collector, |c| {
        c.of_message(&id).iter().filter(|s| s.name == "vrsky.deliver").count() == 2
            && c.of_message(&id).iter().any(|s| s.name == "vrsky.complete")
    })
    .await;
    let journey = collector.of_message(&id);
    assert!(journey.iter().all(|s| s.trace == trace), "one trace: {journey:#?}");
    for s in &journey {
        assert_eq!(s.attrs["vrsky.tenant_id"], "acme", "{s:?}");
        assert_eq!(s.attrs["vrsky.integration_id"], "hook", "{s:?}");
    }
    let names: Vec<&str> = journey.iter().map(|s| s.name.as_str()).collect();
    for expected in [
        "POST /webhooks/{tenant}/{integration}",
        "vrsky.store received",
        "send vrsky.t.{tenant}.i.{integration}.in",
        "process vrsky.t.{tenant}.i.{integration}.in",
        "vrsky.claim",
        "vrsky.pipeline",
        "vrsky.retry.schedule",
        "vrsky.redrive",
        "vrsky.complete",
    ] {
        assert!(names.contains(&expected), "{expected} missing from {names:?}");
    }
    let server = journey.iter().find(|s| s.name.starts_with("POST /webhooks")).unwrap();
    assert_eq!(
        server.parent, "00f067aa0ba902b7",
        "the incoming traceparent is continued"
    );
    let publish = journey.iter().find(|s| s.name.starts_with("send ")).unwrap();
    assert_eq!(publish.attrs["messaging.system"], "nats");
    assert_eq!(
        publish.attrs["messaging.destination.template"],
        "vrsky.t.{tenant}.i.{integration}.in"
    );
    let consumers: Vec<_> = journey.iter().filter(|s| s.name.starts_with("process ")).collect();
    let publishes: Vec<_> = journey
        .iter()
        .filter(|s| s.name.starts_with("send "))
        .map(|s| s.span.clone())
        .collect();
    assert!(
        consumers.iter().all(|c| publishes.contains(&c.parent)),
        "each consumer span is a child of a publish"
    );
    let mut codes: Vec<_> = journey
        .iter()
        .filter(|s| s.name == "vrsky.deliver")
        .map(|s| {
            (
                s.attrs["vrsky.attempt"].clone(),
                s.attrs["http.response.status_code"].clone(),
            )
        })
        .collect();
    codes.sort();
    assert_eq!(codes, [("1".into(), "503".into()), ("2".into(), "200".into())]);
    // The destination's traceparent names the attempt's span.
    let delivered = sink.for_message(&id);
    let last = delivered.last().unwrap().header("traceparent").unwrap().to_owned();
    let second = journey
        .iter()
        .find(|s| s.name == "vrsky.deliver" && s.attrs["vrsky.attempt"] == "2")
        .unwrap();
    assert_eq!(last, format!("00-{trace}-{}-01", second.span));
    // The JSON log's warning about the failed attempt names the message and its trace.
    let failed: Value = node
        .log()
        .lines()
        .filter_map(|l| serde_json::from_str::<Value>(l).ok())
        .find(|l| l["message"] == "delivery failed" && l["message_id"] == id.as_str())
        .unwrap_or_else(|| panic!("no JSON warning for {id}:\n{}", node.log()));
    assert_eq!(failed["level"], "WARN");
    assert_eq!(
        (failed["tenant_id"].as_str(), failed["integration_id"].as_str()),
        (Some("acme"), Some("hook"))
    );
    assert_eq!(failed["trace_id"], trace);
    let first = journey
        .iter()
        .find(|s| s.name.starts_with("process ") && s.attrs["vrsky.attempt"] == "1")
        .unwrap();
    assert_eq!(
        failed["span_id"],
        first.span.as_str(),
        "the span of the attempt's processing"
    );

    // Dead-lettered (400, permanent), then replayed into a sink that accepts: the replay
    // and its delivery join the original trace.
    let trace2 = "0af7651916cd43dd8448eb211c80319c";
    let dead = webhook(&http, &node, "strict", &format!("00-{trace2}-b7ad6b7169203331-01")).await;
    wait_for("the dead-lettering", &collector, |c| {
        c.of_message(&dead).iter().any(|s| s.name == "vrsky.dead_letter")
    })
    .await;
    refusing.set_status(200);
    let (s, v) = api(
        &http,
        &node,
        reqwest::Method::POST,
        &format!("/api/tenants/acme/dead-letters/{dead}/retry"),
        None,
    )
    .await;
    assert!(s == 200 || s == 202, "{s} {v}");
    wait_for("the replay's delivery", &collector, |c| {
        let spans = c.of_message(&dead);
        spans.iter().any(|s| s.name == "vrsky.replay") && spans.iter().any(|s| s.name == "vrsky.complete")
    })
    .await;
    let spans = collector.of_message(&dead);
    assert!(
        spans.iter().all(|s| s.trace == trace2),
        "the replay joins the original trace: {spans:#?}"
    );
    let dl = spans
        .iter()
        .find(|s| s.name == "vrsky.deliver" && s.attrs["vrsky.outcome"] == "dead_letter");
    assert!(
        dl.is_some_and(|s| s.attrs["http.response.status_code"] == "400"),
        "{spans:#?}"
    );
    node.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn otlp_grpc_traces_show_the_actor_tree_a_retried_journey_and_a_replay() {
    exports_traces_over("grpc").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn otlp_http_protobuf_traces_show_the_actor_tree_a_retried_journey_and_a_replay() {
    exports_traces_over("http/protobuf").await;
}

/// With a ratio of 0 nothing of the happy path is recorded, yet the actor tree, the
/// attempts after the first and everything of a dead-lettered message's end are.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn at_ratio_zero_the_tree_retries_and_dead_letters_are_still_recorded() {
    let Fixture {
        _dir,
        _platform,
        collector,
        sink: _sink,
        refusing: _refusing,
        mut node,
        http,
    } = fixture(
        "http/protobuf",
        &[
            ("OTEL_TRACES_SAMPLER", "parentbased_traceidratio"),
            ("OTEL_TRACES_SAMPLER_ARG", "0"),
        ],
    )
    .await;
    let plain = "00-11111111111111111111111111111111-2222222222222222-00";
    let retried = webhook(&http, &node, "hook", plain).await;
    let dead = webhook(&http, &node, "strict", plain.replace("1111", "3333").as_str()).await;
    wait_for("the retried attempt and the dead letter", &collector, |c| {
        c.of_message(&retried).iter().any(|s| s.name == "vrsky.complete")
            && c.of_message(&dead).iter().any(|s| s.name == "vrsky.dead_letter")
            && c.of_message(&dead).iter().any(|s| s.name == "vrsky.deliver")
    })
    .await;
    assert!(
        collector.actor("integration:hook").is_some(),
        "the actor tree is always recorded"
    );
    let r = collector.of_message(&retried);
    assert!(
        r.iter()
            .all(|s| s.attrs.get("vrsky.attempt").map(String::as_str) != Some("1")),
        "nothing of the sampled-out first attempt: {r:#?}"
    );
    assert!(
        r.iter()
            .any(|s| s.name == "vrsky.deliver" && s.attrs["http.response.status_code"] == "200")
    );
    assert!(
        !r.iter().any(|s| s.name.starts_with("POST /webhooks")),
        "the webhook itself was sampled out"
    );
    let d = collector.of_message(&dead);
    let attempt = d.iter().find(|s| s.name == "vrsky.deliver").unwrap();
    assert_eq!(
        (
            attempt.attrs["vrsky.outcome"].as_str(),
            attempt.attrs["http.response.status_code"].as_str()
        ),
        ("dead_letter", "400"),
        "the attempt that dead-lettered the message is kept by the tail decision"
    );
    node.stop().await;
}
