//! `GET /metrics`: this node's figures in the Prometheus text format (0.0.4), with the
//! admin token. Read at scrape time from what the node keeps anyway (each integration's
//! counters and histograms in the routing snapshot, the supervision tree), so the series
//! agree exactly with the API's `stats`. Labels are tenant, integration, instance,
//! outcome and kind: never a message id.

use std::fmt::Write;

use axum::extract::State;
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};

use vrsky_actors::integration::IntegrationStats;
use vrsky_actors::integration::histogram::{BOUNDS_S, HistogramSnapshot};
use vrsky_supervision::TreeNode;

use super::AppState;
use super::auth::{bearer, is_admin};
use super::error::ApiError;

/// One integration's figures.
#[derive(Debug, Clone)]
pub struct IntegrationFigures {
    /// Tenant id.
    pub tenant: String,
    /// Integration id.
    pub integration: String,
    /// Its counters.
    pub stats: IntegrationStats,
    /// Delivery attempts' HTTP exchanges.
    pub delivery: HistogramSnapshot,
    /// Webhook to delivery.
    pub end_to_end: HistogramSnapshot,
}

/// What a scrape shows.
#[derive(Debug, Clone, Default)]
pub struct Figures {
    /// Per integration.
    pub integrations: Vec<IntegrationFigures>,
    /// (tenant, instance number, integrations it serves).
    pub instances: Vec<(String, u32, usize)>,
    /// Restarts by actor kind, summed over the tree.
    pub restarts: Vec<(&'static str, u64)>,
    /// Platform buckets and streams: (stream, messages, bytes); empty when the platform
    /// did not answer in time.
    pub platform: Vec<(String, u64, u64)>,
    /// Dead letters held, by tenant; `None` when the platform did not answer in time.
    pub dead_letters: Option<Vec<(String, u64)>>,
    /// Each tenant NATS server's own figures (its `/varz`).
    pub servers: Vec<super::metrics_tenant_nats::ServerSample>,
    /// This node's state writes: alone, in atomic batches, batches refused.
    pub commit: crate::platform::CommitFigures,
    /// The claim check: stored bodies, their bytes, store failures, orphans removed
    /// (`None` without an object store).
    pub claim_check: Option<[u64; 4]>,
}

/// A counter series: name, help, and how to read it from an integration's stats.
type Counter = (&'static str, &'static str, fn(&IntegrationStats) -> u64);

/// The kind of an actor, from its tree name (`tenant:acme` is `tenant`).
pub fn actor_kind(name: &str) -> &'static str {
    match name.split(':').next().unwrap_or(name) {
        "runtime" => "runtime",
        "retry-scheduler" => "retry_scheduler",
        "tenant" => "tenant_supervisor",
        "tenant-actor" => "tenant",
        "nats" => "nats_instance",
        "integration" => "integration",
        _ => "other",
    }
}

/// Restarts by kind over a tree (every kind present, zeros included).
pub fn restarts_by_kind(tree: &TreeNode) -> Vec<(&'static str, u64)> {
    let mut by = std::collections::BTreeMap::<&'static str, u64>::new();
    fn walk(n: &TreeNode, by: &mut std::collections::BTreeMap<&'static str, u64>) {
        *by.entry(actor_kind(&n.name)).or_default() += u64::from(n.restarts);
        for c in &n.children {
            walk(c, by);
        }
    }
    walk(tree, &mut by);
    by.into_iter().collect()
}

/// A label value, escaped as the text format wants.
fn label(v: &str) -> String {
    v.replace('\\', "\\\\").replace('"', "\\\"").replace('\n', "\\n")
}

pub(super) fn head(out: &mut String, name: &str, kind: &str, help: &str) {
    let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} {kind}");
}

fn histogram(out: &mut String, name: &str, labels: &str, h: &HistogramSnapshot) {
    for (bound, n) in BOUNDS_S.iter().zip(&h.cumulative) {
        let _ = writeln!(out, "{name}_bucket{{{labels},le=\"{bound}\"}} {n}");
    }
    let _ = writeln!(out, "{name}_bucket{{{labels},le=\"+Inf\"}} {}", h.count);
    let _ = writeln!(out, "{name}_sum{{{labels}}} {}", h.sum_s);
    let _ = writeln!(out, "{name}_count{{{labels}}} {}", h.count);
}

/// The exposition.
pub fn render(f: &Figures) -> String {
    let mut out = String::with_capacity(4096 + f.integrations.len() * 4096);
    head(&mut out, "vrsky_build_info", "gauge", "The running build.");
    let _ = writeln!(out, "vrsky_build_info{{version=\"{}\"}} 1", env!("CARGO_PKG_VERSION"));
    let il = |i: &IntegrationFigures| {
        format!(
            "tenant=\"{}\",integration=\"{}\"",
            label(&i.tenant),
            label(&i.integration)
        )
    };
    let counters: [Counter; 5] = [
        (
            "vrsky_messages_received_total",
            "Webhooks accepted (answered 202; duplicates not counted).",
            |s| s.accepted,
        ),
        (
            "vrsky_messages_delivered_total",
            "Messages delivered (the destination answered 2xx).",
            |s| s.delivered,
        ),
        ("vrsky_messages_filtered_total", "Messages a filter dropped.", |s| {
            s.filtered
        }),
        (
            "vrsky_messages_dead_lettered_total",
            "Messages moved to the dead-letter queue.",
            |s| s.dead_lettered,
        ),
        (
            "vrsky_messages_retried_total",
            "Failed attempts that scheduled a retry.",
            |s| s.retried,
        ),
    ];
    for (name, help, get) in counters {
        head(&mut out, name, "counter", help);
        for i in &f.integrations {
            let _ = writeln!(out, "{name}{{{}}} {}", il(i), get(&i.stats));
        }
    }
    head(
        &mut out,
        "vrsky_delivery_attempts_total",
        "counter",
        "Delivery and conversion attempts by outcome (success: 2xx; failure: anything else).",
    );
    for i in &f.integrations {
        let _ = writeln!(
            out,
            "vrsky_delivery_attempts_total{{{},outcome=\"success\"}} {}",
            il(i),
            i.stats.delivered
        );
        let _ = writeln!(
            out,
            "vrsky_delivery_attempts_total{{{},outcome=\"failure\"}} {}",
            il(i),
            i.stats.failed
        );
    }
    head(
        &mut out,
        "vrsky_messages_unfinished",
        "gauge",
        "Messages received, processing or waiting for a retry on this node.",
    );
    for i in &f.integrations {
        let _ = writeln!(out, "vrsky_messages_unfinished{{{}}} {}", il(i), i.stats.unfinished);
    }
    head(
        &mut out,
        "vrsky_delivery_duration_seconds",
        "histogram",
        "The HTTP exchange of each delivery attempt.",
    );
    for i in &f.integrations {
        histogram(&mut out, "vrsky_delivery_duration_seconds", &il(i), &i.delivery);
    }
    head(
        &mut out,
        "vrsky_message_end_to_end_seconds",
        "histogram",
        "From a webhook's acceptance to its successful delivery, retries included.",
    );
    for i in &f.integrations {
        histogram(&mut out, "vrsky_message_end_to_end_seconds", &il(i), &i.end_to_end);
    }
    head(
        &mut out,
        "vrsky_nats_instance_integrations",
        "gauge",
        "Integrations each tenant NATS instance serves.",
    );
    for (t, n, count) in &f.instances {
        let _ = writeln!(
            out,
            "vrsky_nats_instance_integrations{{tenant=\"{}\",instance=\"{n}\"}} {count}",
            label(t)
        );
    }
    head(
        &mut out,
        "vrsky_platform_stream_messages",
        "gauge",
        "Messages held by each platform stream (KV_message_state, retry_queue, dead_letter_queue).",
    );
    for (stream, messages, _) in &f.platform {
        let _ = writeln!(
            out,
            "vrsky_platform_stream_messages{{stream=\"{}\"}} {messages}",
            label(stream)
        );
    }
    head(
        &mut out,
        "vrsky_platform_stream_bytes",
        "gauge",
        "Bytes held by each platform stream.",
    );
    for (stream, _, bytes) in &f.platform {
        let _ = writeln!(
            out,
            "vrsky_platform_stream_bytes{{stream=\"{}\"}} {bytes}",
            label(stream)
        );
    }
    if let Some((_, messages, _)) = f.platform.iter().find(|p| p.0 == crate::platform::RETRY_STREAM) {
        head(
            &mut out,
            "vrsky_retry_backlog",
            "gauge",
            "Retries scheduled and not yet taken.",
        );
        let _ = writeln!(out, "vrsky_retry_backlog {messages}");
    }
    if let Some(dead) = &f.dead_letters {
        head(&mut out, "vrsky_dead_letters", "gauge", "Dead letters held, by tenant.");
        for (t, n) in dead {
            let _ = writeln!(out, "vrsky_dead_letters{{tenant=\"{}\"}} {n}", label(t));
        }
    }
    head(
        &mut out,
        "vrsky_actor_restarts_total",
        "counter",
        "Actor restarts by kind, over the live tree.",
    );
    for (kind, n) in &f.restarts {
        let _ = writeln!(out, "vrsky_actor_restarts_total{{kind=\"{kind}\"}} {n}");
    }
    commit(&mut out, &f.commit);
    if let Some(c) = &f.claim_check {
        claim_check(&mut out, c);
    }
    super::metrics_tenant_nats::render(&mut out, &f.servers, label);
    out
}

/// Group commit (ARCHITECTURE.md, Group commit): writes by how they went, batches, and
/// batches refused and sent again one by one.
fn commit(out: &mut String, c: &crate::platform::CommitFigures) {
    head(
        out,
        "vrsky_state_commit_writes_total",
        "counter",
        "State writes of this node to the platform bucket, by unit: alone (single) or in an atomic batch (batch).",
    );
    let _ = writeln!(out, "vrsky_state_commit_writes_total{{unit=\"single\"}} {}", c.singles);
    let _ = writeln!(
        out,
        "vrsky_state_commit_writes_total{{unit=\"batch\"}} {}",
        c.batched_writes
    );
    head(
        out,
        "vrsky_state_commit_batches_total",
        "counter",
        "Atomic batches of state writes committed by this node.",
    );
    let _ = writeln!(out, "vrsky_state_commit_batches_total {}", c.batches);
    head(
        out,
        "vrsky_state_commit_batch_fallbacks_total",
        "counter",
        "Atomic batches the platform refused (a stale revision check in one write), whose writes went again one by one.",
    );
    let _ = writeln!(out, "vrsky_state_commit_batch_fallbacks_total {}", c.fallbacks);
}

/// The claim check's counters (ARCHITECTURE.md, Claim check).
fn claim_check(out: &mut String, [stored, bytes, failures, orphans]: &[u64; 4]) {
    for (name, help, v) in [
        (
            "vrsky_claim_check_objects_stored_total",
            "Webhook bodies this node stored in the object store (above claim_check.threshold_bytes).",
            stored,
        ),
        (
            "vrsky_claim_check_stored_bytes_total",
            "Bytes of the webhook bodies this node stored in the object store.",
            bytes,
        ),
        (
            "vrsky_claim_check_store_failures_total",
            "Webhooks refused with 503 because the object store failed.",
            failures,
        ),
        (
            "vrsky_claim_check_orphans_removed_total",
            "Payload objects no message held any more, removed by this node's sweeper.",
            orphans,
        ),
    ] {
        head(out, name, "counter", help);
        let _ = writeln!(out, "{name} {v}");
    }
}

/// Gathers this node's figures.
pub async fn gather(s: &AppState) -> Figures {
    let mut f = Figures::default();
    let mut servers = Vec::new();
    for (t, snapshot) in s.control.directory().all() {
        let mut ids: Vec<_> = snapshot.counters.iter().collect();
        ids.sort_by(|a, b| a.0.as_str().cmp(b.0.as_str()));
        for (id, c) in ids {
            f.integrations.push(IntegrationFigures {
                tenant: t.to_string(),
                integration: id.to_string(),
                stats: c.snapshot(),
                delivery: c.delivery_duration.snapshot(),
                end_to_end: c.end_to_end.snapshot(),
            });
        }
        // Every integration subscribes on every instance of its tenant.
        for link in snapshot.instances.links() {
            f.instances.push((t.to_string(), link.number, snapshot.routes.len()));
            servers.push((t.to_string(), link.number, link.health.monitor_url()));
        }
    }
    // Webhooks this node stored for tenants another node ran at the time
    // (`cluster/ingress.rs`): counted here, in the one series of their integration.
    if let Some(remote) = s.control.directory().remote() {
        let empty = vrsky_actors::integration::histogram::Histogram::default().snapshot();
        for (t, i, accepted) in remote.accepted() {
            let (t, i) = (t.to_string(), i.to_string());
            match f.integrations.iter_mut().find(|x| x.tenant == t && x.integration == i) {
                Some(x) => x.stats.accepted += accepted,
                None => f.integrations.push(IntegrationFigures {
                    tenant: t,
                    integration: i,
                    stats: IntegrationStats {
                        accepted,
                        ..Default::default()
                    },
                    delivery: empty.clone(),
                    end_to_end: empty.clone(),
                }),
            }
        }
    }
    f.integrations
        .sort_by(|a, b| (&a.tenant, &a.integration).cmp(&(&b.tenant, &b.integration)));
    // Sampled while the platform is read below; each server bounded to 1 s.
    let servers = tokio::spawn(super::metrics_tenant_nats::sample(servers));
    if let Ok(tree) = s.control.tree().await {
        f.restarts = restarts_by_kind(&tree);
    }
    // The platform's figures are bounded in time: a slow platform costs a scrape these
    // series, never the scrape.
    let platform = s.control.platform();
    f.commit = platform.commit_figures();
    f.claim_check = s.objects.as_ref().map(|o| {
        use std::sync::atomic::Ordering::Relaxed;
        [
            o.counters.stored.load(Relaxed),
            o.counters.stored_bytes.load(Relaxed),
            o.counters.store_failures.load(Relaxed),
            o.sweep_counters.removed.load(Relaxed),
        ]
    });
    match tokio::time::timeout(PLATFORM_TIMEOUT, platform.usage()).await {
        Ok(Ok(u)) => f.platform = u.into_iter().map(|(name, m, b, _)| (name, m, b)).collect(),
        Ok(Err(e)) => tracing::warn!(error = %e, "metrics: platform usage unavailable"),
        Err(_) => tracing::warn!("metrics: platform usage timed out"),
    }
    match tokio::time::timeout(PLATFORM_TIMEOUT, platform.dead_letters_by_tenant()).await {
        Ok(Ok(d)) => f.dead_letters = Some(d.into_iter().collect()),
        Ok(Err(e)) => tracing::warn!(error = %e, "metrics: dead-letter counts unavailable"),
        Err(_) => tracing::warn!("metrics: dead-letter counts timed out"),
    }
    f.servers = servers.await.unwrap_or_default();
    f
}

/// How long a scrape waits for each platform reading.
const PLATFORM_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(2);

/// `GET /metrics`.
pub(crate) async fn metrics(State(s): State<AppState>, headers: HeaderMap) -> Response {
    let auth = headers.get(header::AUTHORIZATION).and_then(|v| v.to_str().ok());
    if !is_admin(auth, s.admin_token.as_deref()) {
        let why = bearer(auth).err().unwrap_or_else(|| "invalid token".into());
        super::audit::record_failed_auth(&s, &axum::http::Method::GET, "/metrics", &why);
        return ApiError::new(StatusCode::UNAUTHORIZED, "unauthorized", why).into_response();
    }
    let body = render(&gather(&s).await);
    (
        [(header::CONTENT_TYPE, "text/plain; version=0.0.4; charset=utf-8")],
        body,
    )
        .into_response()
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use vrsky_actors::integration::histogram::Histogram;

    #[test]
    fn exposition_names_types_and_labels() {
        let h = Histogram::default();
        h.record(std::time::Duration::from_millis(3));
        let f = Figures {
            integrations: vec![IntegrationFigures {
                tenant: "acme".into(),
                integration: "or\"ders".into(),
                stats: IntegrationStats {
                    accepted: 5,
                    delivered: 4,
                    failed: 2,
                    dead_lettered: 1,
                    ..Default::default()
                },
                delivery: h.snapshot(),
                end_to_end: h.snapshot(),
            }],
            instances: vec![("acme".into(), 1, 1)],
            restarts: vec![("integration", 2)],
            platform: vec![("retry_queue".into(), 3, 300)],
            dead_letters: Some(vec![("acme".into(), 1)]),
            servers: Vec::new(),
            commit: crate::platform::CommitFigures {
                singles: 7,
                batches: 2,
                batched_writes: 30,
                fallbacks: 1,
            },
            claim_check: Some([3, 3 * 300 * 1024, 1, 2]),
        };
        let text = render(&f);
        assert!(text.contains("vrsky_claim_check_objects_stored_total 3\n"), "{text}");
        assert!(text.contains("vrsky_claim_check_stored_bytes_total 921600\n"));
        assert!(text.contains("vrsky_claim_check_store_failures_total 1\n"));
        assert!(text.contains("vrsky_claim_check_orphans_removed_total 2\n"));
        assert!(
            text.contains("vrsky_state_commit_writes_total{unit=\"single\"} 7"),
            "{text}"
        );
        assert!(text.contains("vrsky_state_commit_writes_total{unit=\"batch\"} 30"));
        assert!(text.contains("vrsky_state_commit_batches_total 2"));
        assert!(text.contains("vrsky_state_commit_batch_fallbacks_total 1"));
        assert!(text.contains("vrsky_build_info{version=\""), "{text}");
        assert!(
            text.contains("vrsky_messages_received_total{tenant=\"acme\",integration=\"or\\\"ders\"} 5"),
            "{text}"
        );
        assert!(text.contains(
            "vrsky_delivery_attempts_total{tenant=\"acme\",integration=\"or\\\"ders\",outcome=\"failure\"} 2"
        ));
        assert!(text.contains("# TYPE vrsky_delivery_duration_seconds histogram"));
        assert!(text.contains(
            "vrsky_delivery_duration_seconds_bucket{tenant=\"acme\",integration=\"or\\\"ders\",le=\"0.005\"} 1"
        ));
        assert!(text.contains("le=\"+Inf\"} 1"));
        assert!(text.contains("vrsky_nats_instance_integrations{tenant=\"acme\",instance=\"1\"} 1"));
        assert!(text.contains("vrsky_actor_restarts_total{kind=\"integration\"} 2"));
        assert!(text.contains("vrsky_retry_backlog 3") && text.contains("vrsky_dead_letters{tenant=\"acme\"} 1"));
        assert!(text.contains("vrsky_platform_stream_bytes{stream=\"retry_queue\"} 300"));
        // Every sample line's metric has a TYPE line before it.
        let mut typed = std::collections::HashSet::new();
        for line in text.lines() {
            if let Some(rest) = line.strip_prefix("# TYPE ") {
                typed.insert(rest.split(' ').next().unwrap().to_owned());
            } else if !line.starts_with('#') {
                let name = line.split(['{', ' ']).next().unwrap();
                let base = ["_bucket", "_sum", "_count"]
                    .iter()
                    .find_map(|s| name.strip_suffix(s).filter(|b| typed.contains(*b)))
                    .unwrap_or(name);
                assert!(typed.contains(base), "{line}");
            }
        }
    }

    #[test]
    fn kinds_come_from_tree_names() {
        assert_eq!(actor_kind("integration:orders"), "integration");
        assert_eq!(actor_kind("nats:acme-1"), "nats_instance");
        assert_eq!(actor_kind("tenant-actor:acme"), "tenant");
        assert_eq!(actor_kind("retry-scheduler"), "retry_scheduler");
    }
}
