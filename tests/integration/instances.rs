//! Issue 4: several NATS instances per tenant as real processes: discovery, round-robin
//! publishing, health, on-demand provisioning, adoption after a node is killed.

use std::path::Path;
use std::time::Duration;

use reqwest::Method;
use serde_json::{Value, json};

use crate::common::node::NodeProcess;
use crate::common::{Backend, Sink, TOKEN, TestRuntime, spec, wait_until};

const WAIT: Duration = Duration::from_secs(60);

async fn start() -> TestRuntime {
    TestRuntime::start_with(Backend::Sqlite, |c| {
        c.nats.health_interval_ms = 300;
        c.nats.instances_per_tenant_max = 2;
    })
    .await
}

fn instance_dir(data: &Path, tenant: &str, n: u32) -> std::path::PathBuf {
    data.join("tenants").join(tenant).join(n.to_string())
}

fn pid_of(data: &Path, tenant: &str, n: u32) -> u32 {
    std::fs::read_to_string(instance_dir(data, tenant, n).join("nats-server.pid"))
        .unwrap()
        .trim()
        .parse()
        .unwrap()
}

/// Messages the instance received from clients, from its own monitoring endpoint.
async fn in_msgs(data: &Path, tenant: &str, n: u32) -> u64 {
    let conf = std::fs::read_to_string(instance_dir(data, tenant, n).join("nats.conf")).unwrap();
    let monitor = conf
        .lines()
        .find_map(|l| l.trim().strip_prefix("http: "))
        .unwrap()
        .trim_matches('"')
        .to_owned();
    let v: Value = reqwest::get(format!("http://{monitor}/varz"))
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    v["in_msgs"].as_u64().unwrap()
}

/// nats-server processes whose command line names a directory under `dir`.
fn servers_under(dir: &Path) -> Vec<u32> {
    let needle = dir.to_string_lossy().to_string();
    std::fs::read_dir("/proc")
        .unwrap()
        .flatten()
        .filter_map(|e| e.file_name().to_str()?.parse::<u32>().ok())
        .filter(|pid| {
            std::fs::read(format!("/proc/{pid}/cmdline"))
                .map(|c| String::from_utf8_lossy(&c).contains(&needle))
                .unwrap_or(false)
                && std::fs::read_to_string(format!("/proc/{pid}/stat"))
                    .map(|s| !s.rsplit(')').next().unwrap_or("").trim_start().starts_with('Z'))
                    .unwrap_or(false)
        })
        .collect()
}

async fn discovered(t: &TestRuntime, tenant: &str) -> Vec<u64> {
    t.nats_instances(tenant)
        .await
        .iter()
        .map(|i| i["instance_number"].as_u64().unwrap())
        .collect()
}

/// Two tenants with two instances each: four separate servers, discovery lists exactly
/// them, and webhooks are spread evenly across each tenant's instances.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_tenants_two_instances_round_robin() {
    let t = start().await;
    let sink = Sink::start().await;
    let data = t.dir.path().to_path_buf();
    let mut urls = Vec::new();
    for tenant in ["alpha", "beta"] {
        t.create_tenant(tenant).await;
        t.create_integration(tenant, spec("hook", &sink.url(&format!("/{tenant}")), json!({})))
            .await;
        let (s, v) = t
            .api(Method::POST, &format!("/api/tenants/{tenant}/nats-instances"), None)
            .await;
        assert_eq!(s, 201, "{v}");
        assert_eq!(v["instance_number"], 2);
        assert_eq!(v["status"], "active");
        let (_, list) = t
            .api(Method::GET, &format!("/api/tenants/{tenant}/nats-instances"), None)
            .await;
        let instances = list["nats_instances"].as_array().unwrap();
        assert_eq!(instances.len(), 2, "{list}");
        for i in instances {
            assert_eq!(i["integration_count"], 1, "{list}");
            urls.push(i["url"].as_str().unwrap().to_owned());
        }
    }
    urls.sort();
    urls.dedup();
    assert_eq!(urls.len(), 4, "instances share a server: {urls:?}");
    let pids: std::collections::HashSet<u32> = [("alpha", 1), ("alpha", 2), ("beta", 1), ("beta", 2)]
        .iter()
        .map(|(t, n)| pid_of(&data, t, *n))
        .collect();
    assert_eq!(pids.len(), 4);
    assert_eq!(servers_under(&data.join("tenants")).len(), 4);

    let mut before = Vec::new();
    for (tenant, n) in [("alpha", 1), ("alpha", 2), ("beta", 1), ("beta", 2)] {
        before.push(in_msgs(&data, tenant, n).await);
    }
    for i in 0..100 {
        for tenant in ["alpha", "beta"] {
            assert_eq!(t.webhook(tenant, "hook", format!("{i}").into_bytes(), &[]).await, 202);
        }
    }
    sink.wait_for("/alpha", 100, WAIT).await;
    sink.wait_for("/beta", 100, WAIT).await;
    let mut after = Vec::new();
    for (tenant, n) in [("alpha", 1), ("alpha", 2), ("beta", 1), ("beta", 2)] {
        after.push(in_msgs(&data, tenant, n).await);
    }
    let d: Vec<i64> = after.iter().zip(&before).map(|(a, b)| (*a - *b) as i64).collect();
    assert_eq!(d[0] + d[1], 100, "alpha publishes {d:?}");
    assert_eq!(d[2] + d[3], 100, "beta publishes {d:?}");
    assert!(
        (d[0] - d[1]).abs() <= 1 && (d[2] - d[3]).abs() <= 1,
        "not round-robin: {d:?}"
    );
    sink.stop();
    t.shutdown().await;
    assert!(
        servers_under(&data.join("tenants")).is_empty(),
        "servers survived shutdown"
    );
}

/// kill -9 of one instance: it leaves discovery at once, traffic goes on over the other,
/// its actor starts it again, and it comes back.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn killed_instance_leaves_discovery_and_returns() {
    let t = start().await;
    let sink = Sink::start().await;
    let data = t.dir.path().to_path_buf();
    t.create_tenant("acme").await;
    t.create_integration("acme", spec("hook", &sink.url("/acme"), json!({})))
        .await;
    let (s, _) = t.api(Method::POST, "/api/tenants/acme/nats-instances", None).await;
    assert_eq!(s, 201);
    assert_eq!(discovered(&t, "acme").await, vec![1, 2]);

    let pid = pid_of(&data, "acme", 2);
    assert!(
        std::process::Command::new("kill")
            .args(["-9", &pid.to_string()])
            .status()
            .unwrap()
            .success()
    );
    wait_until(WAIT, || async { discovered(&t, "acme").await == vec![1] })
        .await
        .expect("left discovery");
    // Traffic continues while it is gone (a publish that raced the kill is re-driven).
    for i in 0..20 {
        assert_eq!(t.webhook("acme", "hook", format!("{i}").into_bytes(), &[]).await, 202);
    }
    sink.wait_for("/acme", 20, WAIT).await;
    wait_until(WAIT, || async { discovered(&t, "acme").await == vec![1, 2] })
        .await
        .expect("came back");
    assert_ne!(pid_of(&data, "acme", 2), pid, "not restarted");
    let (_, ready) = t.api(Method::GET, "/readyz", None).await;
    assert_eq!(ready["tenants"][0]["instances"].as_array().unwrap().len(), 2, "{ready}");
    assert!(
        ready["tenants"][0]["instances"]
            .as_array()
            .unwrap()
            .iter()
            .all(|i| i["healthy"] == true),
        "{ready}"
    );
    for i in 0..20 {
        assert_eq!(
            t.webhook("acme", "hook", format!("after {i}").into_bytes(), &[]).await,
            202
        );
    }
    sink.wait_for("/acme", 40, WAIT).await;
    t.shutdown().await;
}

/// Unknown tenant, the instance limit, and a start that fails: precise answers and
/// nothing half-made.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn provisioning_errors_leave_nothing_behind() {
    let t = start().await;
    let data = t.dir.path().to_path_buf();
    let (s, _) = t.api(Method::POST, "/api/tenants/nobody/nats-instances", None).await;
    assert_eq!(s, 404);
    t.create_tenant("acme").await;
    // Instance 2 cannot start: its directory is taken by a file.
    std::fs::write(instance_dir(&data, "acme", 2), b"in the way").unwrap();
    let (s, v) = t.api(Method::POST, "/api/tenants/acme/nats-instances", None).await;
    assert_eq!(s, 503, "{v}");
    assert!(v["error"]["message"].as_str().unwrap().contains("nats:acme-2"), "{v}");
    assert_eq!(discovered(&t, "acme").await, vec![1]);
    assert!(
        crate::common::find(&t.tree().await, "nats:acme-2").is_none(),
        "half-made actor left"
    );
    assert_eq!(servers_under(&data.join("tenants")).len(), 1);
    // Once the way is clear the same number is used again.
    std::fs::remove_file(instance_dir(&data, "acme", 2)).unwrap();
    let (s, v) = t.api(Method::POST, "/api/tenants/acme/nats-instances", None).await;
    assert_eq!(s, 201, "{v}");
    assert_eq!(v["instance_number"], 2);
    // At the limit (2 in these tests).
    let (s, v) = t.api(Method::POST, "/api/tenants/acme/nats-instances", None).await;
    assert_eq!(s, 409, "{v}");
    assert!(v["error"]["message"].as_str().unwrap().contains("limit is 2"), "{v}");
    assert_eq!(discovered(&t, "acme").await, vec![1, 2]);
    t.shutdown().await;
}

/// A node killed with kill -9 and restarted adopts the instances that kept running: no
/// duplicate processes, the table and reality agree, delivery works.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn restarted_node_adopts_running_instances() {
    crate::common::init_logging();
    let dir = tempfile::tempdir().unwrap();
    let platform = crate::common::external_platform(dir.path(), "adopt-platform").await;
    let sink = Sink::start().await;
    let data = dir.path().join("node");
    let mut node = NodeProcess::start(data.clone(), &platform, &[]).await;
    let http = reqwest::Client::new();
    let call = |m: Method, path: String, body: Option<Value>| {
        let (http, url) = (http.clone(), node.url(&path));
        async move {
            let mut r = http.request(m, url).bearer_auth(TOKEN);
            if let Some(b) = body {
                r = r.json(&b);
            }
            let r = r.send().await.unwrap();
            (r.status().as_u16(), r.json::<Value>().await.unwrap_or(Value::Null))
        }
    };
    assert_eq!(
        call(
            Method::POST,
            "/api/tenants".into(),
            Some(json!({"id": "acme", "name": "A"}))
        )
        .await
        .0,
        201
    );
    assert_eq!(
        call(
            Method::POST,
            "/api/tenants/acme/integrations".into(),
            Some(spec("hook", &sink.url("/acme"), json!({})))
        )
        .await
        .0,
        201
    );
    assert_eq!(
        call(Method::POST, "/api/tenants/acme/nats-instances".into(), None)
            .await
            .0,
        201
    );
    let pids = [pid_of(&data, "acme", 1), pid_of(&data, "acme", 2)];
    node.kill9().await;
    // The instances outlive the node.
    assert_eq!(servers_under(&data.join("tenants")).len(), 2);
    node.restart().await;
    assert_eq!(
        [pid_of(&data, "acme", 1), pid_of(&data, "acme", 2)],
        pids,
        "instances were replaced, not adopted"
    );
    assert_eq!(
        servers_under(&data.join("tenants")).len(),
        2,
        "duplicate nats-server processes"
    );
    let call = |m: Method, path: String| {
        let (http, url) = (http.clone(), node.url(&path));
        async move {
            let r = http.request(m, url).bearer_auth(TOKEN).send().await.unwrap();
            r.json::<Value>().await.unwrap()
        }
    };
    let list = call(Method::GET, "/api/tenants/acme/nats-instances".into()).await;
    assert_eq!(list["nats_instances"].as_array().unwrap().len(), 2, "{list}");
    for i in 0..10 {
        let r = http
            .post(node.url("/webhooks/acme/hook"))
            .body(format!("{i}"))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 202);
    }
    sink.wait_for("/acme", 10, WAIT).await;
    node.stop().await;
    assert!(
        servers_under(&data.join("tenants")).is_empty(),
        "servers survived a clean stop"
    );
    platform.process.stop.stop().await;
}

/// An instance whose process is alive but does not answer (SIGSTOP) fails its health
/// probe and leaves discovery within the check interval; it returns once it answers.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unresponsive_instance_leaves_discovery_by_probe() {
    let t = start().await;
    let data = t.dir.path().to_path_buf();
    t.create_tenant("acme").await;
    let (s, _) = t.api(Method::POST, "/api/tenants/acme/nats-instances", None).await;
    assert_eq!(s, 201);
    let pid = pid_of(&data, "acme", 2).to_string();
    assert!(
        std::process::Command::new("kill")
            .args(["-STOP", &pid])
            .status()
            .unwrap()
            .success()
    );
    let left = wait_until(WAIT, || async { discovered(&t, "acme").await == vec![1] }).await;
    let (_, ready) = t.api(Method::GET, "/readyz", None).await;
    assert!(
        std::process::Command::new("kill")
            .args(["-CONT", &pid])
            .status()
            .unwrap()
            .success()
    );
    left.expect("a stopped instance stayed in discovery");
    let reason = ready["tenants"][0]["instances"][1]["reason"]
        .as_str()
        .unwrap_or("")
        .to_owned();
    assert!(reason.contains("did not answer"), "{ready}");
    wait_until(WAIT, || async { discovered(&t, "acme").await == vec![1, 2] })
        .await
        .expect("came back");
    assert_eq!(
        pid_of(&data, "acme", 2).to_string(),
        pid,
        "restarted instead of waiting for it"
    );
    t.shutdown().await;
}

/// `nats.go_max_procs` reaches every nats-server the node spawns: the platform server
/// and the tenant's instance.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn spawned_servers_get_the_configured_gomaxprocs() {
    let t = TestRuntime::start_with(Backend::Sqlite, |c| c.nats.go_max_procs = 3).await;
    t.create_tenant("acme").await;
    fn pid_files(dir: &Path, out: &mut Vec<std::path::PathBuf>) {
        for entry in std::fs::read_dir(dir).unwrap().flatten() {
            let path = entry.path();
            if path.is_dir() {
                pid_files(&path, out);
            } else if path.file_name() == Some(std::ffi::OsStr::new(vrsky_runtime::nats::process::PID_FILE)) {
                out.push(path);
            }
        }
    }
    let mut files = Vec::new();
    pid_files(t.dir.path(), &mut files);
    assert_eq!(files.len(), 2, "platform and one tenant instance: {files:?}");
    for f in files {
        let pid = std::fs::read_to_string(&f).unwrap().trim().to_owned();
        let env = std::fs::read(format!("/proc/{pid}/environ")).unwrap();
        let vars: Vec<&[u8]> = env.split(|b| *b == 0).collect();
        assert!(
            vars.contains(&&b"GOMAXPROCS=3"[..]),
            "{} runs without GOMAXPROCS=3",
            f.display()
        );
    }
    t.shutdown().await;
}

async fn instance_status(t: &TestRuntime, tenant: &str) -> Vec<(u64, String)> {
    let (s, v) = t.api(Method::GET, &format!("/api/tenants/{tenant}/stats"), None).await;
    assert_eq!(s, 200, "{v}");
    let (_, list) = t
        .api(Method::GET, &format!("/api/tenants/{tenant}/nats-instances"), None)
        .await;
    list["nats_instances"]
        .as_array()
        .unwrap()
        .iter()
        .map(|i| {
            (
                i["instance_number"].as_u64().unwrap(),
                i["status"].as_str().unwrap().to_owned(),
            )
        })
        .collect()
}

/// Waits until `n` distinct messages arrived on `path`.
async fn wait_distinct(sink: &Sink, path: &str, n: usize) {
    wait_until(WAIT, || async { sink.ids(path).len() >= n })
        .await
        .unwrap_or_else(|()| panic!("{} of {n} distinct messages on {path}", sink.ids(path).len()));
}

/// Scale-in through the TenantActor: a drained instance takes no new messages, survives a
/// node restart as draining, and is removed under load without losing a message; its
/// number is not reused. Refusals are precise.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_instance_is_drained_then_removed_under_load_and_nothing_is_lost() {
    let mut t = start().await;
    let sink = Sink::start().await;
    let data = t.dir.path().to_path_buf();
    t.create_tenant("acme").await;
    t.create_integration("acme", spec("hook", &sink.url("/acme"), json!({})))
        .await;
    let (s, _) = t.api(Method::POST, "/api/tenants/acme/nats-instances", None).await;
    assert_eq!(s, 201);

    // Refusals: unknown numbers, removing an active instance, draining the last active one.
    for path in [
        "/api/tenants/acme/nats-instances/9/drain",
        "/api/tenants/acme/nats-instances/x/drain",
    ] {
        let (s, v) = t.api(Method::POST, path, None).await;
        assert_eq!(s, 404, "{path}: {v}");
        assert_eq!(v["error"]["code"], "not_found", "{v}");
    }
    let (s, v) = t.api(Method::DELETE, "/api/tenants/acme/nats-instances/1", None).await;
    assert_eq!(s, 409, "{v}");
    assert!(
        v["error"]["message"]
            .as_str()
            .unwrap()
            .contains("drain it before removing it"),
        "{v}"
    );

    let (s, v) = t
        .api(Method::POST, "/api/tenants/acme/nats-instances/1/drain", None)
        .await;
    assert_eq!((s, v["status"].as_str()), (200, Some("draining")), "{v}");
    let (s, _) = t
        .api(Method::POST, "/api/tenants/acme/nats-instances/1/drain", None)
        .await;
    assert_eq!(s, 200, "draining twice is not an error");
    let (s, v) = t
        .api(Method::POST, "/api/tenants/acme/nats-instances/2/drain", None)
        .await;
    assert_eq!(s, 409, "{v}");
    assert!(v["error"]["message"].as_str().unwrap().contains("last active"), "{v}");

    // A draining instance gets no new messages, also after a restart of the node.
    t.restart().await;
    assert_eq!(
        instance_status(&t, "acme").await,
        vec![(1, "draining".to_owned()), (2, "active".to_owned())]
    );
    let on_1 = in_msgs(&data, "acme", 1).await;
    for i in 0..50 {
        assert_eq!(t.webhook("acme", "hook", format!("{i}").into_bytes(), &[]).await, 202);
    }
    wait_distinct(&sink, "/acme", 50).await;
    assert_eq!(
        in_msgs(&data, "acme", 1).await,
        on_1,
        "a draining instance got new messages"
    );
    let (_, stats) = t.api(Method::GET, "/api/tenants/acme/stats", None).await;
    assert_eq!(stats["integrations"], 1, "{stats}");
    assert_eq!(stats["nats_instances"]["active"], 1, "{stats}");
    assert_eq!(stats["nats_instances"]["draining"], 1, "{stats}");
    assert_eq!(stats["totals"]["delivered"], 50, "{stats}");

    // Removal while webhooks keep coming: every accepted message is delivered.
    let pid_1 = pid_of(&data, "acme", 1);
    let load = async {
        let mut accepted = 0;
        for i in 0..200 {
            if t.webhook("acme", "hook", format!("load {i}").into_bytes(), &[]).await == 202 {
                accepted += 1;
            }
        }
        accepted
    };
    let remove = async {
        tokio::time::sleep(Duration::from_millis(100)).await;
        t.api(Method::DELETE, "/api/tenants/acme/nats-instances/1", None).await
    };
    let (accepted, (s, v)) = tokio::join!(load, remove);
    assert_eq!(s, 204, "{v}");
    assert_eq!(accepted, 200);
    wait_distinct(&sink, "/acme", 250).await;
    assert_eq!(sink.ids("/acme").len(), 250);
    assert!(
        std::fs::read_to_string(format!("/proc/{pid_1}/stat"))
            .map(|s| s.rsplit(')').next().unwrap_or("").trim_start().starts_with('Z'))
            .unwrap_or(true),
        "instance 1's server (pid {pid_1}) still runs"
    );
    assert_eq!(
        servers_under(&data.join("tenants")).len(),
        1,
        "the removed instance's server still runs"
    );
    assert_eq!(discovered(&t, "acme").await, vec![2]);
    let (s, _) = t
        .api(Method::POST, "/api/tenants/acme/nats-instances/1/drain", None)
        .await;
    assert_eq!(s, 404, "a removed instance is gone");

    // Room again under the limit (live instances only), with a fresh number.
    let (s, v) = t.api(Method::POST, "/api/tenants/acme/nats-instances", None).await;
    assert_eq!((s, v["instance_number"].as_u64()), (201, Some(3)), "{v}");
    sink.stop();
    t.shutdown().await;
}
