//! `vrsky dev` as a user runs it: a separate process that prints URLs and a curl, serves
//! the demo webhook, and stops every child process on Ctrl-C.

use std::path::Path;
use std::process::Stdio;
use std::time::Duration;

use tokio::io::{AsyncBufReadExt, BufReader};

use crate::common::wait_until;

/// Whether a process exists and is not a zombie.
fn alive(pid: i32) -> bool {
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        Ok(stat) => !stat.rsplit(')').next().unwrap_or("").trim_start().starts_with('Z'),
        Err(_) => false,
    }
}

fn pid_in(dir: &Path) -> i32 {
    std::fs::read_to_string(dir.join("nats-server.pid"))
        .unwrap()
        .trim()
        .parse()
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dev_prints_a_working_curl_and_stops_children_on_ctrl_c() {
    crate::common::init_logging();
    let dir = tempfile::tempdir().unwrap();
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    // If the test fails, the node is SIGKILLed (kill_on_drop) and cannot stop its
    // nats-servers: the guard does.
    struct ReapOnDrop(std::path::PathBuf);
    impl Drop for ReapOnDrop {
        fn drop(&mut self) {
            crate::common::node::kill_servers_under(&self.0);
        }
    }
    let _reap = ReapOnDrop(dir.path().join("data"));
    let (mut child, banner) = start_dev(dir.path(), port).await;
    let log_text = || std::fs::read_to_string(dir.path().join("dev.log")).unwrap_or_default();
    let base = format!("http://127.0.0.1:{port}");
    assert!(banner.contains(&format!("{base}/webhooks/demo/echo")), "{banner}");
    let token = banner
        .split("Bearer ")
        .nth(1)
        .and_then(|s| s.split(|c: char| c.is_whitespace() || c == ')' || c == '\'').next())
        .unwrap()
        .to_owned();
    // A line to paste that sets the same token, and where it is kept.
    assert!(
        banner
            .lines()
            .any(|l| l.trim() == format!("export VRSKY_ADMIN_TOKEN={token}")),
        "{banner}"
    );
    let kept = std::fs::read_to_string(dir.path().join("data/dev-admin-token")).unwrap();
    assert_eq!(kept.trim(), token);

    // The printed gRPC address answers, with the same token.
    let grpc = banner
        .lines()
        .find_map(|l| l.trim().strip_prefix("gRPC:"))
        .and_then(|l| l.trim().strip_prefix("grpc://"))
        .and_then(|l| l.split_whitespace().next())
        .unwrap_or_else(|| panic!("no gRPC line: {banner}"))
        .to_owned();
    let channel = tonic::transport::Channel::from_shared(format!("http://{grpc}"))
        .unwrap()
        .connect()
        .await
        .unwrap();
    let mut req = tonic::Request::new(vrsky_runtime::grpc::pb::GetTenantRequest {
        tenant_id: "demo".into(),
    });
    req.metadata_mut()
        .insert("authorization", format!("Bearer {token}").parse().unwrap());
    let demo = vrsky_runtime::grpc::pb::tenant_service_client::TenantServiceClient::new(channel)
        .get_tenant(req)
        .await
        .unwrap()
        .into_inner();
    assert_eq!(demo.id, "demo");

    // The printed curl works: 202, and the echo sink logs the message.
    let curl = banner
        .lines()
        .find(|l| l.trim_start().starts_with("curl -i -X POST"))
        .unwrap();
    assert!(curl.contains("x-request-id: hello-1"), "{curl}");
    let http = reqwest::Client::new();
    let r = http
        .post(format!("{base}/webhooks/demo/echo"))
        .header("content-type", "application/json")
        .body(r#"{"hello":"world"}"#)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 202);
    let id = r.json::<serde_json::Value>().await.unwrap()["message_id"]
        .as_str()
        .unwrap()
        .to_owned();
    wait_until(Duration::from_secs(30), || async {
        log_text().contains(&id) && log_text().contains("echo sink received")
    })
    .await
    .unwrap_or_else(|_| panic!("echo sink did not log {id}; log: {}", log_text()));
    // The echo sink shows what it received, headers included.
    let echoed: serde_json::Value = http
        .get(format!("{base}/dev/echo"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let last = &echoed["requests"][0];
    assert_eq!(last["message_id"], id.as_str(), "{echoed}");
    assert_eq!(last["body"], r#"{"hello":"world"}"#, "{echoed}");
    let headers = last["headers"].as_array().unwrap();
    assert!(
        headers.iter().any(|h| h[0] == "x-vrsky-attempt" && h[1] == "1"),
        "{echoed}"
    );
    let r = http
        .get(format!("{base}/api/tenants/demo/nats-instances"))
        .bearer_auth(&token)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);

    let data = dir.path().join("data");
    let pids = [
        pid_in(&data.join("platform-nats")),
        pid_in(&data.join("tenants/demo/1")),
    ];
    assert!(pids.iter().all(|p| alive(*p)));

    // Ctrl-C.
    ctrl_c(&mut child, &log_text()).await;
    for pid in pids {
        assert!(!alive(pid), "nats-server {pid} survived Ctrl-C");
    }
    // Shutting down is not reported as an error.
    assert!(!log_text().contains("IO error"), "{}", log_text());

    // Started again on the same data dir, it keeps the token an exported one still works.
    let (mut child, banner) = start_dev(dir.path(), port).await;
    assert!(
        banner.contains(&format!("export VRSKY_ADMIN_TOKEN={token}")),
        "{banner}"
    );
    let r = http
        .get(format!("{base}/api/tenants/demo"))
        .bearer_auth(&token)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    ctrl_c(&mut child, &log_text()).await;
}

/// Sends Ctrl-C (SIGINT) and expects a clean exit within 30 s.
async fn ctrl_c(child: &mut tokio::process::Child, log: &str) {
    let status = std::process::Command::new("kill")
        .args(["-INT", &child.id().unwrap().to_string()])
        .status()
        .unwrap();
    assert!(status.success());
    let exit = tokio::time::timeout(Duration::from_secs(30), child.wait())
        .await
        .unwrap()
        .unwrap();
    assert!(exit.success(), "vrsky dev exited with {exit}; log: {log}");
}

/// Starts `vrsky dev` on `dir/data`, logging to `dir/dev.log`, and returns it with its
/// banner (stdout up to "Ctrl-C stops everything").
async fn start_dev(dir: &Path, port: u16) -> (tokio::process::Child, String) {
    let log = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(dir.join("dev.log"))
        .unwrap();
    let mut child = tokio::process::Command::new(env!("CARGO_BIN_EXE_vrsky-test-node"))
        .args([
            "dev",
            "--http-addr",
            &format!("127.0.0.1:{port}"),
            "--grpc-addr",
            "127.0.0.1:0",
            "--data-dir",
        ])
        .arg(dir.join("data"))
        .env_remove("VRSKY_ADMIN_TOKEN")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::from(log))
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
    let mut banner = Vec::new();
    let read = tokio::time::timeout(Duration::from_secs(60), async {
        while let Some(line) = lines.next_line().await.unwrap() {
            let done = line.contains("Ctrl-C stops everything");
            banner.push(line);
            if done {
                break;
            }
        }
    })
    .await;
    let log_text = std::fs::read_to_string(dir.join("dev.log")).unwrap_or_default();
    assert!(read.is_ok(), "no banner; stdout: {banner:?}; log: {log_text}");
    // Keep reading, so what it prints later (on Ctrl-C) does not meet a closed pipe.
    tokio::spawn(async move { while let Ok(Some(_)) = lines.next_line().await {} });
    (child, banner.join("\n"))
}
