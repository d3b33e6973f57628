//! The client commands' arguments (clap): what `vrsky --help` and each command's
//! `--help` show.

use clap::{Args, Subcommand};

use super::output::Format;

/// Where the client commands connect and how they show the answer (before or after
/// the command).
#[derive(Args, Debug, Clone, Default)]
pub struct Conn {
    /// The node: http(s)://host:port (REST) or grpc://host:port (the gRPC gateway).
    #[arg(long, global = true, env = "VRSKY_URL")]
    pub(crate) url: Option<String>,
    /// The bearer token: the admin token or a tenant API key.
    #[arg(long, global = true, env = "VRSKY_TOKEN", hide_env_values = true)]
    pub(crate) token: Option<String>,
    /// A named context instead of the current one.
    #[arg(long, global = true)]
    pub(crate) context: Option<String>,
    /// Output: table (default on a terminal), json (default when piped) or yaml.
    #[arg(short = 'o', long = "output", global = true, value_enum)]
    pub(crate) output: Option<Format>,
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
