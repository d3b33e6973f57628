//! The `vrsky` CLI's client commands as a user runs them: a separate process against a
//! running node, each command's happy path and a failure, the `get -o yaml | apply -f -`
//! round trip, and `apply`'s idempotence.

use std::time::Duration;

use serde_json::{Value, json};

use crate::common::{Backend, Sink, TOKEN, TestRuntime, spec};

struct Cli {
    url: String,
    config: tempfile::TempDir,
}

struct Out {
    code: i32,
    stdout: String,
    stderr: String,
}

impl Out {
    fn json(&self) -> Value {
        serde_json::from_str(&self.stdout).unwrap_or_else(|e| panic!("not JSON ({e}): {}", self.stdout))
    }
}

impl Cli {
    fn new(t: &TestRuntime) -> Cli {
        Cli {
            url: t.rt().base_url(),
            config: tempfile::tempdir().unwrap(),
        }
    }

    /// Runs `vrsky ARGS` with `stdin`, connected by VRSKY_URL and VRSKY_TOKEN.
    async fn run_with(&self, args: &[&str], stdin: Option<&str>, env: &[(&str, &str)]) -> Out {
        use tokio::io::AsyncWriteExt as _;
        let mut cmd = tokio::process::Command::new(env!("CARGO_BIN_EXE_vrsky-test-node"));
        cmd.args(args)
            .env("VRSKY_CLIENT_CONFIG", self.config.path().join("contexts.toml"))
            .env("VRSKY_URL", &self.url)
            .env("VRSKY_TOKEN", TOKEN)
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .kill_on_drop(true);
        for (k, v) in env {
            if v.is_empty() {
                cmd.env_remove(k);
            } else {
                cmd.env(k, v);
            }
        }
        let mut child = cmd.spawn().unwrap();
        let mut input = child.stdin.take().unwrap();
        if let Some(s) = stdin {
            input.write_all(s.as_bytes()).await.unwrap();
        }
        drop(input);
        let out = tokio::time::timeout(Duration::from_secs(60), child.wait_with_output())
            .await
            .expect("the command finishes")
            .unwrap();
        Out {
            code: out.status.code().unwrap_or(-1),
            stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
            stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
        }
    }

    async fn run(&self, args: &[&str]) -> Out {
        self.run_with(args, None, &[]).await
    }

    /// Runs and expects success.
    async fn ok(&self, args: &[&str]) -> Out {
        let o = self.run(args).await;
        assert_eq!(o.code, 0, "vrsky {args:?} failed: {}{}", o.stdout, o.stderr);
        o
    }

    /// Runs and expects exit 1 with `says` on stderr.
    async fn fails(&self, args: &[&str], says: &str) {
        let o = self.run(args).await;
        assert_eq!(o.code, 1, "vrsky {args:?}: {}{}", o.stdout, o.stderr);
        assert!(
            o.stderr.contains(says),
            "vrsky {args:?} does not say {says:?}: {}",
            o.stderr
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tenants_integrations_and_apply_round_trip() {
    let sink = Sink::start().await;
    let t = TestRuntime::start(Backend::Sqlite).await;
    let cli = Cli::new(&t);

    // Tenants.
    let made = cli
        .ok(&["tenant", "create", "acme", "--name", "Acme", "-o", "json"])
        .await
        .json();
    assert_eq!(made["name"], "Acme");
    cli.fails(&["tenant", "create", "acme"], "tenant acme already exists")
        .await;
    let ls = cli.ok(&["tenant", "ls"]).await.json();
    assert_eq!(ls["tenants"][0]["id"], "acme", "piped output is JSON");
    let table = cli.ok(&["tenant", "ls", "-o", "table"]).await.stdout;
    assert!(table.contains("ID") && table.contains("Acme"), "{table}");
    let yaml = cli.ok(&["tenant", "get", "acme", "-o", "yaml"]).await.stdout;
    assert!(yaml.contains("name: Acme"), "{yaml}");
    cli.fails(&["tenant", "get", "nope"], "tenant nope not found").await;
    cli.run_with(&["tenant", "ls"], None, &[("VRSKY_TOKEN", "")])
        .await
        .stderr
        .contains("missing Authorization header")
        .then_some(())
        .expect("no token says so");

    // apply: create, then unchanged, then get -o yaml | apply -f - unchanged too.
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("orders.yaml");
    let doc = format!(
        "tenant_id: acme\nid: orders\nproducer:\n  type: http\n  url: {}\n  headers:\n    authorization: Bearer secret\n",
        sink.url("/orders")
    );
    std::fs::write(&file, &doc).unwrap();
    let f = file.to_str().unwrap();
    assert!(
        cli.ok(&["integration", "apply", "-f", f])
            .await
            .stdout
            .contains("integration acme/orders created")
    );
    assert!(
        cli.ok(&["integration", "apply", "-f", f])
            .await
            .stdout
            .contains("integration acme/orders unchanged")
    );
    let shown = cli
        .ok(&["integration", "get", "acme", "orders", "-o", "yaml"])
        .await
        .stdout;
    assert!(shown.contains("********"), "secrets are never shown: {shown}");
    let again = cli
        .run_with(&["integration", "apply", "-f", "-"], Some(&shown), &[])
        .await;
    assert_eq!(again.code, 0, "{}", again.stderr);
    assert!(again.stdout.contains("unchanged"), "{}", again.stdout);
    // The stored secret survived the round trip: deliveries still carry it.
    let sent = cli.ok(&["send", "acme", "orders", "--data", "{\"n\":1}"]).await.json();
    assert_eq!(sent["status"], 202);
    sink.wait_for("/orders", 1, Duration::from_secs(30)).await;
    assert_eq!(sink.received()[0].header("authorization"), Some("Bearer secret"));

    // A change: --dry-run prints the diff and changes nothing; then it is applied.
    std::fs::write(&file, doc.replace("/orders", "/orders-v2")).unwrap();
    let dry = cli.ok(&["integration", "apply", "-f", f, "--dry-run"]).await.stdout;
    assert!(
        dry.contains("would be updated") && dry.contains("+  url:") && dry.contains("orders-v2"),
        "{dry}"
    );
    let still = cli
        .ok(&["integration", "get", "acme", "orders", "-o", "json"])
        .await
        .json();
    assert!(!still["producer"]["url"].as_str().unwrap().contains("v2"));
    assert!(
        cli.ok(&["integration", "apply", "-f", f])
            .await
            .stdout
            .contains("updated")
    );
    let now = cli.ok(&["integration", "get", "acme", "orders"]).await.json();
    assert!(now["producer"]["url"].as_str().unwrap().ends_with("/orders-v2"));

    // Bad input is refused before any call, with what is wrong.
    std::fs::write(&file, "tenant_id: acme\nid: bad\n").unwrap();
    cli.fails(&["integration", "apply", "-f", f], "not a valid integration")
        .await;
    cli.fails(
        &["integration", "apply", "-f", "/nonexistent.yaml"],
        "reading /nonexistent.yaml",
    )
    .await;

    let ls = cli.ok(&["integration", "ls", "acme"]).await.json();
    assert_eq!(ls["integrations"].as_array().unwrap().len(), 1);
    // What `get` shows cannot create an integration elsewhere: its secrets are masks.
    let copy = shown.replace("id: orders", "id: copy");
    let refused = cli
        .run_with(&["integration", "apply", "-f", "-"], Some(&copy), &[])
        .await;
    assert!(
        refused.code == 1 && refused.stderr.contains("put the real values"),
        "{}",
        refused.stderr
    );
    cli.ok(&["integration", "rm", "acme", "orders"]).await;
    cli.fails(&["integration", "get", "acme", "orders"], "not found").await;
    cli.ok(&["tenant", "rm", "acme"]).await;
    cli.fails(&["tenant", "get", "acme"], "tenant acme not found").await;
    t.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn messages_dead_letters_instances_tree_and_contexts() {
    let sink = Sink::start().await;
    let t = TestRuntime::start(Backend::Sqlite).await;
    let cli = Cli::new(&t);
    t.create_tenant("acme").await;
    t.create_integration("acme", spec("hook", &sink.url("/hook"), json!({})))
        .await;

    // send and msg get.
    let sent = cli
        .ok(&["send", "acme", "hook", "--data", "hello", "-H", "x-request-id: r-1"])
        .await
        .json();
    let id = sent["message_id"].as_str().unwrap().to_owned();
    t.wait_status("acme", &id, "completed").await;
    let m = cli.ok(&["msg", "get", "acme", &id]).await.json();
    assert_eq!(m["status"], "completed");
    cli.fails(&["msg", "get", "acme", "0123456789abcdef0123456789abcdef"], "not found")
        .await;
    cli.fails(&["send", "acme", "nope", "--data", "x"], "HTTP 404").await;

    // Dead letters: the destination refuses with 400.
    sink.set_status(400);
    let mut dead = Vec::new();
    for n in 0..3 {
        let v = cli
            .ok(&["send", "acme", "hook", "--data", &format!("dead {n}")])
            .await
            .json();
        let id = v["message_id"].as_str().unwrap().to_owned();
        t.wait_status("acme", &id, "dead_letter").await;
        dead.push(id);
    }
    let ls = cli.ok(&["dlq", "ls", "acme"]).await.json();
    assert_eq!(ls["dead_letters"].as_array().unwrap().len(), 3);
    let shown = cli.ok(&["dlq", "show", "acme", &dead[0]]).await.json();
    assert_eq!(shown["payload"], "dead 0");
    cli.fails(
        &["dlq", "show", "acme", "0123456789abcdef0123456789abcdef"],
        "not found",
    )
    .await;
    sink.set_status(200);
    let dry = cli.ok(&["dlq", "retry", "acme", &dead[0], "--dry-run"]).await.stdout;
    assert!(dry.contains("would be replayed"), "{dry}");
    assert_eq!(
        cli.ok(&["msg", "get", "acme", &dead[0]]).await.json()["status"],
        "dead_letter"
    );
    cli.fails(&["dlq", "retry", "acme", "."], "cannot be `.` or `..`").await;
    cli.ok(&["dlq", "retry", "acme", &dead[0]]).await;
    t.wait_status("acme", &dead[0], "completed").await;
    let dry = cli
        .ok(&[
            "dlq",
            "retry",
            "acme",
            "--integration",
            "hook",
            "--since",
            "1h",
            "--dry-run",
        ])
        .await
        .json();
    assert_eq!((dry["matched"].as_u64(), dry["replayed"].as_u64()), (Some(2), Some(0)));
    cli.fails(&["dlq", "retry", "acme", "--since", "yesterday"], "neither RFC 3339")
        .await;
    cli.ok(&["dlq", "rm", "acme", &dead[1]]).await;
    let bulk = cli.ok(&["dlq", "retry", "acme", "--integration", "hook"]).await.json();
    assert_eq!(
        (bulk["matched"].as_u64(), bulk["replayed"].as_u64()),
        (Some(1), Some(1))
    );
    t.wait_status("acme", &dead[2], "completed").await;

    // Instances: add, drain; the last active one cannot be drained.
    let added = cli.ok(&["instances", "add", "acme"]).await.json();
    assert_eq!(added["instance_number"], 2);
    let ls = cli.ok(&["instances", "ls", "acme"]).await.json();
    assert_eq!(ls["nats_instances"].as_array().unwrap().len(), 2);
    let drained = cli.ok(&["instances", "drain", "acme", "2"]).await.json();
    assert_eq!(drained["status"], "draining");
    cli.fails(&["instances", "drain", "acme", "1"], "").await;

    // The tree, drawn.
    let tree = cli.ok(&["tree", "-o", "table"]).await.stdout;
    assert!(
        tree.starts_with("runtime") && tree.contains("─ tenant:acme") && tree.contains("integration:hook"),
        "{tree}"
    );
    assert_eq!(cli.ok(&["tree"]).await.json()["name"], "runtime");

    // Contexts: add, ls, use; a context's URL and token are used without the variables.
    let no_env = [("VRSKY_URL", ""), ("VRSKY_TOKEN", "")];
    let added = cli
        .run_with(
            &["context", "add", "local", "--url", &cli.url, "--token", TOKEN],
            None,
            &no_env,
        )
        .await;
    assert_eq!(added.code, 0, "{}", added.stderr);
    cli.run_with(
        &["context", "add", "other", "--url", "http://127.0.0.1:9"],
        None,
        &no_env,
    )
    .await;
    let ls = cli.run_with(&["context", "ls"], None, &no_env).await.stdout;
    assert!(ls.contains("local") && ls.contains("other"), "{ls}");
    let unreachable = cli.run_with(&["tenant", "ls"], None, &no_env).await;
    assert_eq!(unreachable.code, 1);
    assert!(
        unreachable.stderr.contains("cannot reach http://127.0.0.1:9"),
        "{}",
        unreachable.stderr
    );
    cli.run_with(&["context", "use", "local"], None, &no_env).await;
    let via = cli.run_with(&["tenant", "get", "acme"], None, &no_env).await;
    assert_eq!(via.code, 0, "{}", via.stderr);
    let missing = cli.run_with(&["context", "use", "nope"], None, &no_env).await;
    assert!(
        missing.code == 1 && missing.stderr.contains("does not exist"),
        "{}",
        missing.stderr
    );
    let bad = cli
        .run_with(&["tenant", "ls", "--url", "127.0.0.1:8080"], None, &no_env)
        .await;
    assert!(
        bad.code == 1 && bad.stderr.contains("is not a node URL"),
        "{}",
        bad.stderr
    );

    // A reader that has gone (`vrsky ... | head -1`) ends the command quietly, not in a panic.
    for args in [&["completion", "bash"][..], &["tree", "-o", "json"][..]] {
        let mut child = tokio::process::Command::new(env!("CARGO_BIN_EXE_vrsky-test-node"))
            .args(args)
            .env("VRSKY_CLIENT_CONFIG", cli.config.path().join("contexts.toml"))
            .env("VRSKY_URL", &cli.url)
            .env("VRSKY_TOKEN", TOKEN)
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .kill_on_drop(true)
            .spawn()
            .unwrap();
        drop(child.stdout.take());
        let out = child.wait_with_output().await.unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(
            out.status.success() && !stderr.contains("panicked"),
            "{args:?}: {:?} {stderr}",
            out.status
        );
    }
    let completion = cli.ok(&["completion", "bash"]).await.stdout;
    assert!(
        completion.contains("vrsky") && completion.contains("integration"),
        "{}",
        &completion[..200.min(completion.len())]
    );
    t.shutdown().await;
}

/// The same commands over the gRPC gateway (`grpc://`): the answers have REST's shape, so
/// `get -o yaml | apply -f -` round-trips there too.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_same_commands_over_grpc() {
    let sink = Sink::start().await;
    let t = TestRuntime::start_with(Backend::Sqlite, |c| c.grpc_addr = Some("127.0.0.1:0".parse().unwrap())).await;
    let mut cli = Cli::new(&t);
    cli.url = format!("grpc://{}", t.rt().grpc_addr.unwrap());
    cli.ok(&["tenant", "create", "acme"]).await;
    assert_eq!(cli.ok(&["tenant", "get", "acme"]).await.json()["id"], "acme");
    cli.fails(&["tenant", "get", "nope"], "tenant nope not found").await;
    let doc = format!(
        "tenant_id: acme\nid: orders\nproducer:\n  type: http\n  url: {}\n  timeout_ms: 5000\n",
        sink.url("/o")
    );
    let created = cli
        .run_with(&["integration", "apply", "-f", "-"], Some(&doc), &[])
        .await;
    assert!(
        created.stdout.contains("created"),
        "{}{}",
        created.stdout,
        created.stderr
    );
    let shown = cli
        .ok(&["integration", "get", "acme", "orders", "-o", "yaml"])
        .await
        .stdout;
    let again = cli
        .run_with(&["integration", "apply", "-f", "-"], Some(&shown), &[])
        .await;
    assert!(
        again.stdout.contains("unchanged"),
        "{shown}\n{}{}",
        again.stdout,
        again.stderr
    );
    let ls = cli.ok(&["integration", "ls", "acme"]).await.json();
    assert_eq!(ls["integrations"][0]["id"], "orders");
    cli.fails(&["send", "acme", "orders"], "webhooks are HTTP").await;
    // A dead letter, shown with its payload as text, over gRPC.
    sink.set_status(400);
    let id = t.webhook_json("acme", "orders", b"over grpc".to_vec(), &[]).await.1["message_id"]
        .as_str()
        .unwrap()
        .to_owned();
    t.wait_status("acme", &id, "dead_letter").await;
    let shown = cli.ok(&["dlq", "show", "acme", &id]).await.json();
    assert_eq!(
        (shown["payload"].as_str(), shown["status"].as_str()),
        (Some("over grpc"), Some("dead_letter"))
    );
    let tree = cli.ok(&["tree", "-o", "table"]).await.stdout;
    assert!(tree.contains("integration:orders"), "{tree}");

    // `tree --watch` follows WatchActorTree: the tree, then each change as it happens.
    use tokio::io::AsyncBufReadExt as _;
    let mut watch = tokio::process::Command::new(env!("CARGO_BIN_EXE_vrsky-test-node"))
        .args(["tree", "--watch", "-o", "table"])
        .env("VRSKY_CLIENT_CONFIG", cli.config.path().join("contexts.toml"))
        .env("VRSKY_URL", &cli.url)
        .env("VRSKY_TOKEN", crate::common::TOKEN)
        .stdout(std::process::Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    let mut lines = tokio::io::BufReader::new(watch.stdout.take().unwrap()).lines();
    let mut seen = String::new();
    let upto = |want: &'static str| move |seen: &String| seen.contains(want);
    async fn read_until(
        lines: &mut tokio::io::Lines<tokio::io::BufReader<tokio::process::ChildStdout>>,
        seen: &mut String,
        done: impl Fn(&String) -> bool,
    ) {
        tokio::time::timeout(Duration::from_secs(20), async {
            while !done(seen) {
                let l = lines.next_line().await.unwrap().expect("the watch goes on");
                seen.push_str(&l);
                seen.push('\n');
            }
        })
        .await
        .unwrap_or_else(|_| panic!("the watch did not show it: {seen}"));
    }
    read_until(&mut lines, &mut seen, upto("integration:orders")).await;
    t.create_integration("acme", spec("second", &sink.url("/s"), json!({})))
        .await;
    read_until(&mut lines, &mut seen, upto("spawned integration:second")).await;
    watch.kill().await.unwrap();
    t.shutdown().await;
}
