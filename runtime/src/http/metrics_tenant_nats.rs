//! The tenant NATS servers' own figures in `/metrics`, sampled at scrape time from each
//! instance's monitoring endpoint (`/varz`): up, connections, memory, CPU, and the message
//! and byte counters the server keeps since it started. One request per instance, all at
//! once, each bounded to [`VARZ_TIMEOUT`]; an instance that does not answer is reported
//! `vrsky_tenant_nats_up 0` and its other series are left out of that scrape.

use std::fmt::Write;
use std::sync::OnceLock;
use std::time::Duration;

/// How long a scrape waits for one server's `/varz`.
pub const VARZ_TIMEOUT: Duration = Duration::from_secs(1);

/// What one server reported.
#[derive(Debug, Clone, Default, PartialEq, serde::Deserialize)]
pub struct Varz {
    /// Client connections now.
    pub connections: u64,
    /// Resident memory, bytes.
    pub mem: u64,
    /// CPU, percent of one core.
    pub cpu: f64,
    /// Messages received from clients since the server started.
    pub in_msgs: u64,
    /// Messages sent to clients.
    pub out_msgs: u64,
    /// Bytes received from clients.
    pub in_bytes: u64,
    /// Bytes sent to clients.
    pub out_bytes: u64,
}

/// One instance's sample: `None` when it did not answer.
#[derive(Debug, Clone)]
pub struct ServerSample {
    /// Tenant id.
    pub tenant: String,
    /// Instance number.
    pub instance: u32,
    /// Its figures.
    pub varz: Option<Varz>,
}

fn client() -> &'static reqwest::Client {
    static CLIENT: OnceLock<reqwest::Client> = OnceLock::new();
    CLIENT.get_or_init(|| {
        reqwest::Client::builder()
            .timeout(VARZ_TIMEOUT)
            .redirect(reqwest::redirect::Policy::none())
            .build()
            .unwrap_or_default()
    })
}

/// Reads one server's `/varz`.
pub async fn varz(monitor_url: &str) -> Option<Varz> {
    let url = format!("{}/varz", monitor_url.trim_end_matches('/'));
    let resp = tokio::time::timeout(VARZ_TIMEOUT, client().get(url).send())
        .await
        .ok()?
        .ok()?;
    if !resp.status().is_success() {
        return None;
    }
    tokio::time::timeout(VARZ_TIMEOUT, resp.json::<Varz>()).await.ok()?.ok()
}

/// Samples every `(tenant, instance, monitor url)` at once.
pub async fn sample(targets: Vec<(String, u32, Option<String>)>) -> Vec<ServerSample> {
    futures::future::join_all(targets.into_iter().map(|(tenant, instance, url)| async move {
        let varz = match url {
            Some(u) => varz(&u).await,
            None => None,
        };
        ServerSample { tenant, instance, varz }
    }))
    .await
}

/// Appends the series.
pub fn render(out: &mut String, samples: &[ServerSample], label: impl Fn(&str) -> String) {
    if samples.is_empty() {
        return;
    }
    let labels = |s: &ServerSample| format!("tenant=\"{}\",instance=\"{}\"", label(&s.tenant), s.instance);
    super::metrics::head(
        out,
        "vrsky_tenant_nats_up",
        "gauge",
        "1 when the tenant NATS server's monitoring endpoint answered this scrape.",
    );
    for s in samples {
        let _ = writeln!(
            out,
            "vrsky_tenant_nats_up{{{}}} {}",
            labels(s),
            u8::from(s.varz.is_some())
        );
    }
    type Series = (&'static str, &'static str, &'static str, fn(&Varz) -> String);
    let series: [Series; 7] = [
        (
            "vrsky_tenant_nats_connections",
            "gauge",
            "Client connections to the tenant NATS server.",
            |v| v.connections.to_string(),
        ),
        (
            "vrsky_tenant_nats_memory_bytes",
            "gauge",
            "Resident memory of the tenant NATS server.",
            |v| v.mem.to_string(),
        ),
        (
            "vrsky_tenant_nats_cpu_ratio",
            "gauge",
            "CPU of the tenant NATS server, in cores (1 = one core busy).",
            |v| format!("{}", v.cpu / 100.0),
        ),
        (
            "vrsky_tenant_nats_in_msgs_total",
            "counter",
            "Messages the tenant NATS server received from clients.",
            |v| v.in_msgs.to_string(),
        ),
        (
            "vrsky_tenant_nats_out_msgs_total",
            "counter",
            "Messages the tenant NATS server sent to clients.",
            |v| v.out_msgs.to_string(),
        ),
        (
            "vrsky_tenant_nats_in_bytes_total",
            "counter",
            "Bytes the tenant NATS server received from clients.",
            |v| v.in_bytes.to_string(),
        ),
        (
            "vrsky_tenant_nats_out_bytes_total",
            "counter",
            "Bytes the tenant NATS server sent to clients.",
            |v| v.out_bytes.to_string(),
        ),
    ];
    for (name, kind, help, get) in series {
        super::metrics::head(out, name, kind, help);
        for s in samples {
            if let Some(v) = &s.varz {
                let _ = writeln!(out, "{name}{{{}}} {}", labels(s), get(v));
            }
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn a_silent_server_is_down_and_has_no_other_series() {
        let samples = vec![
            ServerSample {
                tenant: "acme".into(),
                instance: 1,
                varz: Some(Varz {
                    connections: 3,
                    mem: 1024,
                    cpu: 12.5,
                    in_msgs: 7,
                    out_msgs: 9,
                    in_bytes: 70,
                    out_bytes: 90,
                }),
            },
            ServerSample {
                tenant: "acme".into(),
                instance: 2,
                varz: None,
            },
        ];
        let mut out = String::new();
        render(&mut out, &samples, str::to_owned);
        assert!(out.contains("vrsky_tenant_nats_up{tenant=\"acme\",instance=\"1\"} 1"));
        assert!(out.contains("vrsky_tenant_nats_up{tenant=\"acme\",instance=\"2\"} 0"));
        assert!(out.contains("vrsky_tenant_nats_cpu_ratio{tenant=\"acme\",instance=\"1\"} 0.125"));
        assert!(out.contains("vrsky_tenant_nats_in_msgs_total{tenant=\"acme\",instance=\"1\"} 7"));
        assert!(
            !out.contains("instance=\"2\"} 7")
                && !out.contains("vrsky_tenant_nats_connections{tenant=\"acme\",instance=\"2\"}")
        );
        assert!(out.contains("# TYPE vrsky_tenant_nats_out_bytes_total counter"));
    }

    #[test]
    fn varz_parses_what_nats_server_sends() {
        let v: Varz = serde_json::from_str(
            r#"{"server_id":"x","connections":2,"mem":4096,"cpu":1.5,"in_msgs":10,"out_msgs":20,"in_bytes":100,"out_bytes":200,"extra":{}}"#,
        )
        .unwrap();
        assert_eq!((v.connections, v.mem, v.in_msgs, v.out_bytes), (2, 4096, 10, 200));
    }
}
