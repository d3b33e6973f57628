//! The `vrsky` CLI's client commands: tenants, integrations, NATS instances, messages,
//! dead letters, the actor tree, test webhooks and shell completions, against a node's
//! REST API (`http(s)://` URLs) or its gRPC gateway (`grpc://`, [`grpc`]). Where it
//! connects: `--url`/`--token`, `VRSKY_URL` and `VRSKY_TOKEN`, or a named context
//! ([`context`]).

pub mod api;
pub mod apply;
pub mod context;
pub mod grpc;
pub mod output;

use std::time::Duration;

use clap::{Args, Subcommand};
use reqwest::Method;
use serde_json::{Value, json};

use api::{Api, seg};
use output::{Format, chosen, print, rows};

/// Where the client commands connect and how they show the answer (before or after
/// the command).
#[derive(Args, Debug, Clone, Default)]
pub struct Conn {
    /// The node: http(s)://host:port (REST) or grpc://host:port (the gRPC gateway).
    #[arg(long, global = true, env = "VRSKY_URL")]
    url: Option<String>,
    /// The bearer token: the admin token or a tenant API key.
    #[arg(long, global = true, env = "VRSKY_TOKEN", hide_env_values = true)]
    token: Option<String>,
    /// A named context instead of the current one.
    #[arg(long, global = true)]
    context: Option<String>,
    /// Output: table (default on a terminal), json (default when piped) or yaml.
    #[arg(short = 'o', long = "output", global = true, value_enum)]
    output: Option<Format>,
}

/// The client commands (flattened into `vrsky`'s own).
#[derive(Subcommand, Debug)]
#[allow(missing_docs)] // the fields' help is the variants' docs
pub enum ClientCommand {
    /// Named connections: `context add NAME --url U [--token T]`, `use NAME`, `ls`.
    Context {
        #[command(subcommand)]
        cmd: ContextCmd,
    },
    /// Tenants: create, ls, get, rm.
    Tenant {
        #[command(subcommand)]
        cmd: TenantCmd,
    },
    /// Integrations: ls, get, apply, rm.
    Integration {
        #[command(subcommand)]
        cmd: IntegrationCmd,
    },
    /// A tenant's NATS instances: ls, add, drain.
    Instances {
        #[command(subcommand)]
        cmd: InstancesCmd,
    },
    /// Messages: get.
    Msg {
        #[command(subcommand)]
        cmd: MsgCmd,
    },
    /// The dead-letter queue: ls, show, retry, rm.
    Dlq {
        #[command(subcommand)]
        cmd: DlqCmd,
    },
    /// The live actor tree, drawn as a tree.
    Tree {
        /// Follow it: over grpc:// each change as it happens; over REST, a redraw when it
        /// changed (checked every second).
        #[arg(long)]
        watch: bool,
    },
    /// Post a test webhook.
    Send {
        /// Tenant.
        tenant: String,
        /// Integration.
        integration: String,
        /// The body (JSON or text); `@FILE` reads a file, `-` stdin.
        #[arg(long, default_value = "{}")]
        data: String,
        /// Extra headers, `name: value` (repeatable).
        #[arg(long = "header", short = 'H')]
        headers: Vec<String>,
    },
    /// Shell completions: `vrsky completion bash > /etc/bash_completion.d/vrsky`.
    Completion {
        /// bash, zsh, fish, elvish or powershell.
        shell: clap_complete::Shell,
    },
}

/// `vrsky context ...`.
#[derive(Subcommand, Debug)]
#[allow(missing_docs)] // the fields' help is the variants' docs
pub enum ContextCmd {
    /// Adds (or replaces) a context and makes it current.
    Add {
        name: String,
        /// http(s)://host:port or grpc://host:port.
        #[arg(long)]
        url: String,
        #[arg(long)]
        token: Option<String>,
    },
    /// Makes a context current.
    Use { name: String },
    /// Lists the contexts.
    Ls,
}

/// `vrsky tenant ...`.
#[derive(Subcommand, Debug)]
#[allow(missing_docs)] // the fields' help is the variants' docs
pub enum TenantCmd {
    /// Creates a tenant (and starts its NATS).
    Create {
        id: String,
        /// Its display name (the id when absent).
        #[arg(long)]
        name: Option<String>,
    },
    /// Lists tenants.
    Ls,
    /// Shows a tenant.
    Get { id: String },
    /// Deletes a tenant, its NATS and its messages.
    Rm { id: String },
}

/// `vrsky integration ...`.
#[derive(Subcommand, Debug)]
#[allow(missing_docs)] // the fields' help is the variants' docs
pub enum IntegrationCmd {
    /// Lists a tenant's integrations.
    Ls { tenant: String },
    /// Shows an integration; `-o yaml` prints what `apply -f` takes.
    Get { tenant: String, integration: String },
    /// Creates or updates from a YAML or JSON file (`-` for stdin); idempotent.
    Apply {
        /// The file.
        #[arg(short = 'f', long = "file")]
        file: String,
        /// The tenant, when the file has no tenant_id.
        #[arg(long)]
        tenant: Option<String>,
        /// Print what would change, change nothing.
        #[arg(long)]
        dry_run: bool,
        /// Update even when nothing shown differs (a changed secret value is not shown).
        #[arg(long)]
        force: bool,
    },
    /// Deletes an integration.
    Rm { tenant: String, integration: String },
}

/// `vrsky instances ...`.
#[derive(Subcommand, Debug)]
#[allow(missing_docs)] // the fields' help is the variants' docs
pub enum InstancesCmd {
    /// Lists a tenant's usable NATS instances.
    Ls { tenant: String },
    /// Starts one more instance.
    Add { tenant: String },
    /// Drains an instance (it takes no new messages).
    Drain { tenant: String, number: u32 },
}

/// `vrsky msg ...`.
#[derive(Subcommand, Debug)]
#[allow(missing_docs)] // the fields' help is the variants' docs
pub enum MsgCmd {
    /// Where a message is.
    Get { tenant: String, id: String },
}

/// `vrsky dlq ...`.
#[derive(Subcommand, Debug)]
#[allow(missing_docs)] // the fields' help is the variants' docs
pub enum DlqCmd {
    /// Lists dead letters, newest first.
    Ls {
        tenant: String,
        /// At most this many (1 to 500).
        #[arg(long, default_value_t = 50)]
        limit: u32,
    },
    /// Shows a dead letter with its payload and attempts.
    Show { tenant: String, id: String },
    /// Replays one dead letter (ID), or those matching --integration/--since/--until.
    Retry {
        tenant: String,
        id: Option<String>,
        /// Only this integration's.
        #[arg(long)]
        integration: Option<String>,
        /// Dead-lettered since: RFC 3339 (2026-12-01T00:00:00Z) or an age (30m, 2h, 7d).
        #[arg(long)]
        since: Option<String>,
        /// Dead-lettered before: RFC 3339 or an age.
        #[arg(long)]
        until: Option<String>,
        /// Count the matches, replay nothing.
        #[arg(long)]
        dry_run: bool,
    },
    /// Deletes a dead letter.
    Rm { tenant: String, id: String },
}

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

async fn api(conn: &Conn) -> anyhow::Result<Node> {
    let (url, token) = context::resolve(conn.url.clone(), conn.token.clone(), conn.context.as_deref())?;
    if url.starts_with("grpc://") {
        return Ok(Node::Grpc(grpc::GrpcApi::connect(&url, token).await?));
    }
    Ok(Node::Rest(Api::new(url, token)?))
}

/// A moment from RFC 3339 or an age before now (`30m`, `2h`, `7d`), in ms since the epoch.
pub fn moment(s: &str, now_ms: u64) -> anyhow::Result<u64> {
    if let Ok(t) = time::OffsetDateTime::parse(s, &time::format_description::well_known::Rfc3339) {
        return Ok(u64::try_from(t.unix_timestamp_nanos() / 1_000_000).unwrap_or(0));
    }
    let (n, unit) = s.split_at(s.find(|c: char| !c.is_ascii_digit()).unwrap_or(s.len()));
    let n: u64 = n
        .parse()
        .map_err(|_| anyhow::anyhow!("{s:?} is neither RFC 3339 (2026-12-01T00:00:00Z) nor an age (30m, 2h, 7d)"))?;
    let ms = match unit {
        "s" => 1_000,
        "m" => 60_000,
        "h" => 3_600_000,
        "d" => 86_400_000,
        _ => anyhow::bail!(
            "{s:?} is neither RFC 3339 (2026-12-01T00:00:00Z) nor an age: its unit is s, m, h or d (30m, 2h, 7d)"
        ),
    };
    Ok(now_ms.saturating_sub(n.saturating_mul(ms)))
}

fn spinner(msg: String) -> indicatif::ProgressBar {
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
            clap_complete::generate(shell, &mut command, "vrsky", &mut std::io::stdout());
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
        ClientCommand::Dlq { cmd } => dead_letters(cmd, &conn).await,
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
            println!("context {name} added and in use ({})", p.display());
        }
        ContextCmd::Use { name } => {
            anyhow::ensure!(
                file.contexts.contains_key(&name),
                "context {name:?} does not exist (`vrsky context ls` lists them)"
            );
            file.current = Some(name.clone());
            file.save()?;
            println!("using context {name}");
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
            println!("{t}");
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
            println!("tenant {id} deleted");
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
                apply::Plan::Unchanged => println!("integration {tenant}/{id} unchanged"),
                apply::Plan::Create if dry_run => {
                    println!("integration {tenant}/{id} would be created (dry run):");
                    print!("{}", apply::diff(&Value::Null, &want.canonical));
                }
                apply::Plan::Update(d) if dry_run => {
                    println!("integration {tenant}/{id} would be updated (dry run):");
                    print!("{d}");
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
                    println!("integration {tenant}/{id} created");
                }
                apply::Plan::Update(d) => {
                    api.call(Method::PUT, &path, Some(&want.spec)).await?;
                    print!("{d}");
                    println!("integration {tenant}/{id} updated");
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
            println!("integration {tenant}/{integration} deleted");
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
        println!("instance {} {w}", output::cell(&v["instance_number"]));
    }
    print(f, &v, || table(&v))
}

async fn dead_letters(cmd: DlqCmd, conn: &Conn) -> anyhow::Result<()> {
    let api = api(conn).await?;
    let f = chosen(conn.output);
    match cmd {
        DlqCmd::Ls { tenant, limit } => {
            let v = api
                .call(
                    Method::GET,
                    &format!("/api/tenants/{}/dead-letters?limit={limit}", seg(&tenant)),
                    None,
                )
                .await?;
            let items = v["dead_letters"].as_array().cloned().unwrap_or_default();
            print(f, &v, || {
                rows(
                    &items,
                    &["MESSAGE", "INTEGRATION", "DEAD AT", "LAST ERROR"],
                    &["message_id", "integration_id", "dead_at", "last_error"],
                )
            })
        }
        DlqCmd::Show { tenant, id } => {
            let v = api
                .call(
                    Method::GET,
                    &format!("/api/tenants/{}/dead-letters/{}", seg(&tenant), seg(&id)),
                    None,
                )
                .await?;
            print(f, &v, || output::fields(&v))
        }
        DlqCmd::Rm { tenant, id } => {
            api.call(
                Method::DELETE,
                &format!("/api/tenants/{}/dead-letters/{}", seg(&tenant), seg(&id)),
                None,
            )
            .await?;
            println!("dead letter {id} deleted");
            Ok(())
        }
        DlqCmd::Retry {
            tenant,
            id: Some(id),
            integration,
            since,
            until,
            dry_run,
        } => {
            anyhow::ensure!(
                integration.is_none() && since.is_none() && until.is_none(),
                "give a message id or a filter (--integration, --since, --until), not both"
            );
            if dry_run {
                api.call(
                    Method::GET,
                    &format!("/api/tenants/{}/dead-letters/{}", seg(&tenant), seg(&id)),
                    None,
                )
                .await?;
                println!("dead letter {id} would be replayed (dry run)");
                return Ok(());
            }
            api.call(
                Method::POST,
                &format!("/api/tenants/{}/dead-letters/{}/retry", seg(&tenant), seg(&id)),
                None,
            )
            .await?;
            println!("dead letter {id} replayed");
            Ok(())
        }
        DlqCmd::Retry {
            tenant,
            id: None,
            integration,
            since,
            until,
            dry_run,
        } => {
            let now = vrsky_actors::now_ms();
            let mut filter = json!({"dry_run": true});
            if let Some(i) = integration {
                filter["integration_id"] = json!(i);
            }
            if let Some(s) = since {
                filter["since_ms"] = json!(moment(&s, now)?);
            }
            if let Some(u) = until {
                filter["until_ms"] = json!(moment(&u, now)?);
            }
            let path = format!("/api/tenants/{}/dead-letters/retry", seg(&tenant));
            let counted = api.call(Method::POST, &path, Some(&filter)).await?;
            let matched = counted["matched"].as_u64().unwrap_or(0);
            // Every call uses the bound the count was made with (the node's clock): what
            // fails again during the run is dead-lettered after it, and not replayed twice.
            if let Some(u) = counted["until_ms"].as_u64() {
                filter["until_ms"] = json!(u);
            }
            if dry_run {
                let v = json!({"matched": matched, "replayed": 0, "dry_run": true});
                return print(f, &v, || output::fields(&v));
            }
            filter["dry_run"] = json!(false);
            let pb = indicatif::ProgressBar::new(matched);
            pb.set_style(
                indicatif::ProgressStyle::with_template("replaying {pos}/{len} dead letters {bar:30} {eta}")
                    .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar()),
            );
            let (mut replayed, mut failed) = (0u64, std::collections::BTreeMap::<String, Value>::new());
            loop {
                let r = api.call(Method::POST, &path, Some(&filter)).await?;
                let n = r["replayed"].as_u64().unwrap_or(0);
                replayed += n;
                pb.inc(n);
                // A letter that fails stays in the queue and matches again: once per id.
                for f in r["failed"].as_array().cloned().unwrap_or_default() {
                    failed.insert(output::cell(&f[0]), f[1].clone());
                }
                // More than one call replays: go on while each call moves some.
                if r["truncated"] != Value::Bool(true) || n == 0 {
                    break;
                }
            }
            pb.finish_and_clear();
            let not_tried = matched.saturating_sub(replayed + failed.len() as u64);
            let v = json!({"matched": matched, "replayed": replayed, "failed": failed, "not_attempted": not_tried});
            print(f, &v, || output::fields(&v))?;
            anyhow::ensure!(
                failed.is_empty() && not_tried == 0,
                "{} dead letters could not be replayed and {not_tried} were not attempted (see above; run it again for the rest)",
                failed.len()
            );
            Ok(())
        }
    }
}

async fn tree(watch: bool, conn: &Conn) -> anyhow::Result<()> {
    let api = api(conn).await?;
    let f = chosen(conn.output);
    if let (true, Node::Grpc(g)) = (watch, &api) {
        // The live stream: the tree, then each change as it happens.
        return g
            .watch_tree(|update| match (f, update.get("snapshot"), update.get("event")) {
                (Format::Table, Some(s), _) => print!("{}", output::tree(&s["root"])),
                (Format::Table, _, Some(e)) => println!(
                    "{} {} {}{}",
                    output::cell(&e["seq"]),
                    output::cell(&e["kind"]),
                    output::cell(&e["name"]),
                    e["reason"].as_str().map(|r| format!(" ({r})")).unwrap_or_default()
                ),
                _ => println!("{update}"),
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
                        println!("--- {}", crate::http::views::rfc3339(vrsky_actors::now_ms()));
                    }
                    print!("{}", output::tree(&v));
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

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn moments_are_rfc3339_or_ages() {
        let now = 1_800_000_000_000;
        assert_eq!(moment("2h", now).unwrap(), now - 7_200_000);
        assert_eq!(moment("30m", now).unwrap(), now - 1_800_000);
        assert_eq!(moment("2026-12-01T00:00:00Z", now).unwrap(), 1_796_083_200_000);
        assert!(
            moment("2 weeks", now)
                .unwrap_err()
                .to_string()
                .contains("neither RFC 3339")
        );
        assert!(
            moment("3w", now)
                .unwrap_err()
                .to_string()
                .contains("unit is s, m, h or d")
        );
    }
}
