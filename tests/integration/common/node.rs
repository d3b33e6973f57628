//! A runtime node as a separate process (`vrsky-test-node serve`), for kill -9 tests.
//! Its platform NATS is external (owned by the test) so it survives the node's deaths, as
//! in production. Drop kills the node and every nats-server it left behind.

#![allow(dead_code, clippy::unwrap_used, clippy::expect_used)]

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use serde_json::Value;

use super::{TOKEN, wait_until};

/// A node process.
pub struct NodeProcess {
    child: Option<tokio::process::Child>,
    pub port: u16,
    pub dir: PathBuf,
    platform_url: String,
    platform_creds: PathBuf,
    platform_ca: PathBuf,
    extra_env: Vec<(String, String)>,
    starts: u32,
}

/// Kills every nats-server whose pid file lies under `dir` (what a kill -9'd node leaves).
pub fn kill_servers_under(dir: &Path) {
    let Ok(entries) = std::fs::read_dir(dir) else { return };
    for e in entries.flatten() {
        let p = e.path();
        if p.is_dir() {
            kill_servers_under(&p);
        } else if p.file_name().is_some_and(|n| n == "nats-server.pid")
            && let Ok(pid) = std::fs::read_to_string(&p)
        {
            let _ = std::process::Command::new("kill")
                .args(["-9", pid.trim()])
                .stderr(std::process::Stdio::null())
                .status();
        }
    }
}

impl NodeProcess {
    pub async fn start(
        dir: PathBuf,
        platform: &vrsky_runtime::nats::platform_server::PlatformServer,
        extra_env: &[(&str, &str)],
    ) -> NodeProcess {
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let mut n = NodeProcess {
            child: None,
            port,
            dir,
            platform_url: platform.process.url.clone(),
            platform_creds: platform.creds_file.clone(),
            platform_ca: platform.ca_file.clone(),
            extra_env: extra_env.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect(),
            starts: 0,
        };
        n.spawn().await;
        n
    }

    /// The node process's id, while it runs.
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().and_then(|c| c.id())
    }

    pub fn url(&self, path: &str) -> String {
        format!("http://127.0.0.1:{}{}", self.port, path)
    }

    /// The last `lines` lines of each of the node's lives' logs, oldest life first.
    pub fn logs_tail(&self, lines: usize) -> String {
        (1..=self.starts)
            .map(|k| {
                let text = std::fs::read_to_string(self.dir.join(format!("node-{k}.log"))).unwrap_or_default();
                let all: Vec<&str> = text.lines().collect();
                let tail = all[all.len().saturating_sub(lines)..].join("\n");
                format!("--- life {k} ---\n{tail}")
            })
            .collect::<Vec<_>>()
            .join("\n")
    }

    fn log_path(&self) -> PathBuf {
        self.dir.join(format!("node-{}.log", self.starts))
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(self.log_path()).unwrap_or_default()
    }

    async fn spawn(&mut self) {
        std::fs::create_dir_all(&self.dir).unwrap();
        self.starts += 1;
        let log = std::fs::File::create(self.log_path()).unwrap();
        let mut cmd = tokio::process::Command::new(env!("CARGO_BIN_EXE_vrsky-test-node"));
        cmd.arg("serve")
            .env("VRSKY_HTTP_ADDR", format!("127.0.0.1:{}", self.port))
            .env("VRSKY_DATA_DIR", &self.dir)
            .env("VRSKY_ADMIN_TOKEN", TOKEN)
            .env("VRSKY_NATS__PLATFORM_URL", &self.platform_url)
            .env("VRSKY_NATS__PLATFORM_CREDS", &self.platform_creds)
            .env("VRSKY_NATS__PLATFORM_CA", &self.platform_ca)
            .env("VRSKY_PRODUCER__ALLOW_PRIVATE_TARGETS", "true")
            .env("VRSKY_STATE__REDRIVE_AFTER_MS", "1000")
            .env("VRSKY_STATE__REDRIVE_TICK_MS", "100")
            // `TEST_NODE_LOG` (a filter) makes the nodes' logs say more when debugging.
            .env(
                "VRSKY_LOG__FILTER",
                std::env::var("TEST_NODE_LOG").unwrap_or_else(|_| "warn".into()),
            )
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::from(log))
            .kill_on_drop(true);
        for (k, v) in &self.extra_env {
            cmd.env(k, v);
        }
        self.child = Some(cmd.spawn().unwrap());
        let http = reqwest::Client::new();
        let url = self.url("/readyz");
        let ready = wait_until(Duration::from_secs(60), || {
            let (http, url) = (http.clone(), url.clone());
            async move { matches!(http.get(&url).send().await, Ok(r) if r.status() == 200) }
        })
        .await;
        assert!(ready.is_ok(), "node not ready; log:\n{}", self.log());
    }

    /// kill -9: no shutdown code runs; its nats-servers are orphaned.
    pub async fn kill9(&mut self) {
        let mut child = self.child.take().unwrap();
        let pid = child.id().unwrap();
        let status = std::process::Command::new("kill")
            .args(["-9", &pid.to_string()])
            .status()
            .unwrap();
        assert!(status.success());
        let _ = child.wait().await;
    }

    /// Starts the node again on the same port, data dir and platform.
    pub async fn restart(&mut self) {
        assert!(self.child.is_none(), "restart of a running node");
        self.spawn().await;
    }

    /// SIGSTOP: the process is frozen (its timers, its workers, its lease renewals).
    pub fn pause(&self) {
        self.signal("-STOP");
    }

    /// SIGCONT after [`NodeProcess::pause`].
    pub fn resume(&self) {
        self.signal("-CONT");
    }

    fn signal(&self, sig: &str) {
        let pid = self.pid().expect("a running node");
        let ok = std::process::Command::new("kill")
            .args([sig, &pid.to_string()])
            .status()
            .unwrap()
            .success();
        assert!(ok, "kill {sig} {pid}");
    }

    /// SIGTERM and wait: a clean stop.
    pub async fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let pid = child.id().unwrap();
            let _ = std::process::Command::new("kill")
                .args(["-TERM", &pid.to_string()])
                .status();
            let _ = tokio::time::timeout(Duration::from_secs(30), child.wait()).await;
        }
        kill_servers_under(&self.dir);
    }
}

impl Drop for NodeProcess {
    fn drop(&mut self) {
        if let Some(child) = self.child.as_mut()
            && let Some(pid) = child.id()
        {
            let _ = std::process::Command::new("kill")
                .args(["-9", &pid.to_string()])
                .status();
        }
        kill_servers_under(&self.dir);
    }
}

/// A call to a node's REST API with the admin token: status and JSON body (`Null` if none).
pub async fn api(
    http: &reqwest::Client,
    node: &NodeProcess,
    method: reqwest::Method,
    path: &str,
    body: Option<Value>,
) -> (u16, Value) {
    let mut r = http.request(method, node.url(path)).bearer_auth(TOKEN);
    if let Some(b) = body {
        r = r.json(&b);
    }
    let resp = r.send().await.unwrap();
    let s = resp.status().as_u16();
    (s, resp.json().await.unwrap_or(Value::Null))
}

/// A counter or gauge without labels from the node's `/metrics` (0 when absent).
pub async fn metric(http: &reqwest::Client, node: &NodeProcess, name: &str) -> u64 {
    let text = http
        .get(node.url("/metrics"))
        .bearer_auth(TOKEN)
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    text.lines()
        .find_map(|l| l.strip_prefix(&format!("{name} ")))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or(0)
}
