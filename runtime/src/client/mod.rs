//! The `vrsky` CLI's client commands: tenants, integrations, NATS instances, messages,
//! dead letters, the actor tree, test webhooks and shell completions, against a node's
//! REST API (`http(s)://` URLs) or its gRPC gateway (`grpc://`, [`grpc`]). Where it
//! connects: `--url`/`--token`, `VRSKY_URL` and `VRSKY_TOKEN`, or a named context
//! ([`context`]).

/// Prints a line on stdout (see [`output::emit`]: a closed pipe ends the command quietly).
macro_rules! say {
    () => { $crate::client::output::emit("\n") };
    ($($t:tt)*) => { $crate::client::output::emit(&format!("{}\n", format_args!($($t)*))) };
}

/// Prints on stdout without a newline (see [`output::emit`]).
macro_rules! say_raw {
    ($($t:tt)*) => { $crate::client::output::emit(&format!($($t)*)) };
}

pub mod api;
pub mod apply;
mod args;
pub mod context;
mod dlq;
pub mod grpc;
pub mod output;

use std::time::Duration;

use reqwest::Method;
use serde_json::{Value, json};

use api::{Api, seg};
pub use args::{ClientCommand, Conn, ContextCmd, DlqCmd, InstancesCmd, IntegrationCmd, MsgCmd, TenantCmd};
use output::{Format, chosen, print, rows};

/// A node, over REST or gRPC.
pub enum Node {
    /// `http(s)://`.
    Rest(Api),
    /// `grpc://`.
    Grpc(grpc::GrpcApi),
}

impl Node {
    /// A REST call (over gRPC: the RPC the gateway maps it to).
    pub async fn call(&self, method: Method, path: &str, body: Option<&Value>) -> anyhow::Result<Value> {
        match self {
            Node::Rest(a) => a.call(method, path, body).await,
            Node::Grpc(g) => g.call(method, path, body).await,
        }
    }

    async fn webhook(&self, path: &str, body: Vec<u8>, headers: &[(String, String)]) -> anyhow::Result<(u16, Value)> {
        match self {
            Node::Rest(a) => a.webhook(path, body, headers).await,
            Node::Grpc(g) => anyhow::bail!(
                "webhooks are HTTP: `send` needs the node's http(s):// URL, not grpc://{}",
                g.addr()
            ),
        }
    }
}

pub(crate) async fn api(conn: &Conn) -> anyhow::Result<Node> {
    let (url, token) = context::resolve(conn.url.clone(), conn.token.clone(), conn.context.as_deref())?;
    if url.starts_with("grpc://") {
        return Ok(Node::Grpc(grpc::GrpcApi::connect(&url, token).await?));
    }
    Ok(Node::Rest(Api::new(url, token)?))
}

pub(crate) fn spinner(msg: String) -> indicatif::ProgressBar {
    let pb = indicatif::ProgressBar::new_spinner();
    pb.set_message(msg);
    pb.enable_steady_tick(Duration::from_millis(120));
    pb
}

/// Runs one client command. `command` is `vrsky`'s clap command, for completions.
pub async fn run(cmd: ClientCommand, conn: Conn, command: clap::Command) -> anyhow::Result<()> {
    match cmd {
        ClientCommand::Completion { shell } => {
            let mut command = command;
            let mut script = Vec::new();
            clap_complete::generate(shell, &mut command, "vrsky", &mut script);
            output::emit(&String::from_utf8_lossy(&script));
            Ok(())
        }
        ClientCommand::Context { cmd } => contexts(cmd),
        ClientCommand::Tenant { cmd } => tenants(cmd, &conn).await,
        ClientCommand::Integration { cmd } => integrations(cmd, &conn).await,
        ClientCommand::Instances { cmd } => instances(cmd, &conn).await,
        ClientCommand::Msg { cmd } => {
            let MsgCmd::Get { tenant, id } = cmd;
            let v = api(&conn)
                .await?
                .call(
                    Method::GET,
                    &format!("/api/tenants/{}/messages/{}", seg(&tenant), seg(&id)),
                    None,
                )
                .await?;
            print(chosen(conn.output), &v, || output::fields(&v))
        }
        ClientCommand::Dlq { cmd } => dlq::run(cmd, &conn).await,
        ClientCommand::Tree { watch } => tree(watch, &conn).await,
        ClientCommand::Send {
            tenant,
            integration,
            data,
            headers,
        } => {
            let body = match data.as_str() {
                "-" => {
                    let mut b = Vec::new();
                    std::io::Read::read_to_end(&mut std::io::stdin(), &mut b)?;
                    b
                }
                d if d.starts_with('@') => {
                    std::fs::read(&d[1..]).map_err(|e| anyhow::anyhow!("reading {}: {e}", &d[1..]))?
                }
                d => d.as_bytes().to_vec(),
            };
            let mut hs = Vec::new();
            for h in headers {
                let (k, v) = h
                    .split_once(':')
                    .ok_or_else(|| anyhow::anyhow!("header {h:?} is not `name: value`"))?;
                hs.push((k.trim().to_owned(), v.trim().to_owned()));
            }
            // JSON is sent as JSON unless a content type is given.
            if !hs.iter().any(|(k, _)| k.eq_ignore_ascii_case("content-type"))
                && serde_json::from_slice::<Value>(&body).is_ok()
            {
                hs.push(("content-type".to_owned(), "application/json".to_owned()));
            }
            let api = api(&conn).await?;
            let (status, v) = api
                .webhook(&format!("/webhooks/{}/{}", seg(&tenant), seg(&integration)), body, &hs)
                .await?;
            if !(200..300).contains(&status) {
                let m = v["error"]["message"].as_str().unwrap_or("refused");
                anyhow::bail!("{m} (HTTP {status})");
            }
            let mut out = v.clone();
            out["status"] = json!(status);
            print(chosen(conn.output), &out, || output::fields(&out))
        }
    }
}

fn contexts(cmd: ContextCmd) -> anyhow::Result<()> {
    let mut file = context::Contexts::load()?;
    match cmd {
        ContextCmd::Add { name, url, token } => {
            context::check_url(&url)?;
            file.contexts.insert(name.clone(), context::Ctx { url, token });
            file.current = Some(name.clone());
            let p = file.save()?;
            say!("context {name} added and in use ({})", p.display());
        }
        ContextCmd::Use { name } => {
            anyhow::ensure!(
                file.contexts.contains_key(&name),
                "context {name:?} does not exist (`vrsky context ls` lists them)"
            );
            file.current = Some(name.clone());
            file.save()?;
            say!("using context {name}");
        }
        ContextCmd::Ls => {
            let mut t = comfy_table::Table::new();
            t.load_preset(comfy_table::presets::UTF8_BORDERS_ONLY)
                .set_header(["", "NAME", "URL", "TOKEN"]);
            for (name, c) in &file.contexts {
                let current = if file.current.as_deref() == Some(name) { "*" } else { "" };
                let token = if c.token.is_some() { "set" } else { "" };
                t.add_row([current, name, &c.url, token]);
            }
            say!("{t}");
        }
    }
    Ok(())
}

async fn tenants(cmd: TenantCmd, conn: &Conn) -> anyhow::Result<()> {
    let api = api(conn).await?;
    let f = chosen(conn.output);
    match cmd {
        TenantCmd::Create { id, name } => {
            let body = json!({"id": id, "name": name.unwrap_or_else(|| id.clone())});
            let pb = spinner(format!("creating tenant {id} (starting its NATS)"));
            let v = api.call(Method::POST, "/api/tenants", Some(&body)).await;
            pb.finish_and_clear();
            let v = v?;
            print(f, &v, || output::fields(&v))
        }
        TenantCmd::Ls => {
            let v = api.call(Method::GET, "/api/tenants", None).await?;
            let items = v["tenants"].as_array().cloned().unwrap_or_default();
            print(f, &v, || {
                rows(&items, &["ID", "NAME", "CREATED"], &["id", "name", "created_at"])
            })
        }
        TenantCmd::Get { id } => {
            let v = api
                .call(Method::GET, &format!("/api/tenants/{}", seg(&id)), None)
                .await?;
            print(f, &v, || output::fields(&v))
        }
        TenantCmd::Rm { id } => {
            api.call(Method::DELETE, &format!("/api/tenants/{}", seg(&id)), None)
                .await?;
            say!("tenant {id} deleted");
            Ok(())
        }
    }
}

async fn integrations(cmd: IntegrationCmd, conn: &Conn) -> anyhow::Result<()> {
    let api = api(conn).await?;
    let f = chosen(conn.output);
    match cmd {
        IntegrationCmd::Ls { tenant } => {
            let v = api
                .call(
                    Method::GET,
                    &format!("/api/tenants/{}/integrations", seg(&tenant)),
                    None,
                )
                .await?;
            let items = v["integrations"].as_array().cloned().unwrap_or_default();
            print(f, &v, || {
                rows(
                    &items,
                    &["ID", "PRODUCER", "WEBHOOK", "DELIVERED", "DEAD", "UNFINISHED"],
                    &[
                        "id",
                        "/producer/url",
                        "webhook_path",
                        "/stats/delivered",
                        "/stats/dead_lettered",
                        "/stats/unfinished",
                    ],
                )
            })
        }
        IntegrationCmd::Get { tenant, integration } => {
            let v = api
                .call(
                    Method::GET,
                    &format!("/api/tenants/{}/integrations/{}", seg(&tenant), seg(&integration)),
                    None,
                )
                .await?;
            print(f, &v, || output::fields(&v))
        }
        IntegrationCmd::Apply {
            file,
            tenant,
            dry_run,
            force,
        } => {
            let text = if file == "-" {
                std::io::read_to_string(std::io::stdin())?
            } else {
                std::fs::read_to_string(&file).map_err(|e| anyhow::anyhow!("reading {file}: {e}"))?
            };
            let want = apply::desired(&text, tenant.as_deref())?;
            let id = want.spec["id"].as_str().unwrap_or_default().to_owned();
            let path = format!("/api/tenants/{}/integrations/{}", seg(&want.tenant), seg(&id));
            let current = match api.call(Method::GET, &path, None).await {
                Ok(v) => Some(v),
                Err(e)
                    if e.to_string().contains(&format!("integration {id} not found"))
                        || e.to_string().contains(&format!("integration {id:?} not found")) =>
                {
                    None
                }
                Err(e) => return Err(e),
            };
            let tenant = &want.tenant;
            match apply::plan(current.as_ref(), &want, force) {
                apply::Plan::Unchanged => say!("integration {tenant}/{id} unchanged"),
                apply::Plan::Create if dry_run => {
                    say!("integration {tenant}/{id} would be created (dry run):");
                    say_raw!("{}", apply::diff(&Value::Null, &want.canonical));
                }
                apply::Plan::Update(d) if dry_run => {
                    say!("integration {tenant}/{id} would be updated (dry run):");
                    say_raw!("{d}");
                }
                apply::Plan::Create if apply::has_redacted(&want.spec) => anyhow::bail!(
                    "integration {tenant}/{id} does not exist, and the file holds `********` where a secret goes (as `get` shows it): put the real values in the file to create it"
                ),
                apply::Plan::Create => {
                    api.call(
                        Method::POST,
                        &format!("/api/tenants/{}/integrations", seg(tenant)),
                        Some(&want.spec),
                    )
                    .await?;
                    say!("integration {tenant}/{id} created");
                }
                apply::Plan::Update(d) => {
                    api.call(Method::PUT, &path, Some(&want.spec)).await?;
                    say_raw!("{d}");
                    say!("integration {tenant}/{id} updated");
                }
            }
            Ok(())
        }
        IntegrationCmd::Rm { tenant, integration } => {
            api.call(
                Method::DELETE,
                &format!("/api/tenants/{}/integrations/{}", seg(&tenant), seg(&integration)),
                None,
            )
            .await?;
            say!("integration {tenant}/{integration} deleted");
            Ok(())
        }
    }
}

async fn instances(cmd: InstancesCmd, conn: &Conn) -> anyhow::Result<()> {
    let api = api(conn).await?;
    let f = chosen(conn.output);
    let table = |v: &Value| {
        let items = v["nats_instances"]
            .as_array()
            .cloned()
            .unwrap_or_else(|| vec![v.clone()]);
        rows(
            &items,
            &["NUMBER", "STATUS", "URL", "INTEGRATIONS"],
            &["instance_number", "status", "url", "integration_count"],
        )
    };
    let (v, what) = match cmd {
        InstancesCmd::Ls { tenant } => (
            api.call(
                Method::GET,
                &format!("/api/tenants/{}/nats-instances", seg(&tenant)),
                None,
            )
            .await?,
            None,
        ),
        InstancesCmd::Add { tenant } => {
            let pb = spinner(format!("starting a NATS instance for {tenant}"));
            let v = api
                .call(
                    Method::POST,
                    &format!("/api/tenants/{}/nats-instances", seg(&tenant)),
                    None,
                )
                .await;
            pb.finish_and_clear();
            (v?, Some("added"))
        }
        InstancesCmd::Drain { tenant, number } => {
            let pb = spinner(format!("draining instance {number} of {tenant}"));
            let v = api
                .call(
                    Method::POST,
                    &format!("/api/tenants/{}/nats-instances/{number}/drain", seg(&tenant)),
                    None,
                )
                .await;
            pb.finish_and_clear();
            (v?, Some("draining"))
        }
    };
    if let (Some(w), Format::Table) = (what, f) {
        say!("instance {} {w}", output::cell(&v["instance_number"]));
    }
    print(f, &v, || table(&v))
}

async fn tree(watch: bool, conn: &Conn) -> anyhow::Result<()> {
    let api = api(conn).await?;
    let f = chosen(conn.output);
    if let (true, Node::Grpc(g)) = (watch, &api) {
        // The live stream: the tree, then each change as it happens.
        return g
            .watch_tree(|update| match (f, update.get("snapshot"), update.get("event")) {
                (Format::Table, Some(s), _) => say_raw!("{}", output::tree(&s["root"])),
                (Format::Table, _, Some(e)) => say!(
                    "{} {} {}{}",
                    output::cell(&e["seq"]),
                    output::cell(&e["kind"]),
                    output::cell(&e["name"]),
                    e["reason"].as_str().map(|r| format!(" ({r})")).unwrap_or_default()
                ),
                _ => say!("{update}"),
            })
            .await;
    }
    let mut last = None;
    loop {
        let v = api.call(Method::GET, "/api/tree", None).await?;
        if last.as_ref() != Some(&v) {
            match f {
                Format::Table => {
                    if watch && last.is_some() {
                        say!("--- {}", crate::http::views::rfc3339(vrsky_actors::now_ms()));
                    }
                    say_raw!("{}", output::tree(&v));
                }
                other => print(other, &v, comfy_table::Table::new)?,
            }
            last = Some(v);
        }
        if !watch {
            return Ok(());
        }
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
}
