//! A real S3 server for the claim-check tests: `s3s-fs` (installed by `scripts/env.sh`,
//! `S3S_FS_BIN`) on a free port and a temporary directory. It checks SigV4
//! signatures, so a tampered or expired presigned URL gets 403 as from S3 itself.

#![allow(dead_code, clippy::unwrap_used, clippy::expect_used)]

use std::path::PathBuf;
use std::time::Duration;

use vrsky_runtime::config::Config;
use vrsky_runtime::objects::StoreKind;

pub const ACCESS_KEY: &str = "vrsky-test-access";
pub const SECRET_KEY: &str = "vrsky-test-secret-0123456789";
pub const BUCKET: &str = "vrsky-payloads";

/// The server; killed when dropped.
pub struct S3Server {
    child: Option<std::process::Child>,
    pub port: u16,
    pub dir: tempfile::TempDir,
}

fn binary() -> PathBuf {
    std::env::var_os("S3S_FS_BIN")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("s3s-fs"))
}

impl S3Server {
    pub async fn start() -> S3Server {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(dir.path().join(BUCKET)).unwrap();
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let mut s = S3Server { child: None, port, dir };
        s.spawn().await;
        s
    }

    async fn spawn(&mut self) {
        let child = std::process::Command::new(binary())
            .args(["--host", "127.0.0.1", "--port", &self.port.to_string()])
            .args(["--access-key", ACCESS_KEY, "--secret-key", SECRET_KEY])
            .arg(self.dir.path())
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .expect("s3s-fs (scripts/test installs it: cargo install s3s-fs --version 0.14.1 --features binary)");
        self.child = Some(child);
        for _ in 0..500 {
            if std::net::TcpStream::connect(("127.0.0.1", self.port)).is_ok() {
                return;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        panic!("s3s-fs did not listen on {}", self.port);
    }

    pub fn endpoint(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    /// Points a configuration's object store at this server.
    pub fn configure(&self, cfg: &mut Config) {
        let o = &mut cfg.object_store;
        o.kind = StoreKind::S3;
        o.endpoint = Some(self.endpoint());
        o.region = Some("us-east-1".into());
        o.bucket = Some(BUCKET.into());
        o.path_style = true;
        o.access_key_id = Some(ACCESS_KEY.into());
        o.secret_access_key = Some(SECRET_KEY.into());
    }

    /// The same settings as `VRSKY_OBJECT_STORE__*` variables, for a node process.
    pub fn env(&self) -> Vec<(String, String)> {
        [
            ("VRSKY_OBJECT_STORE__KIND", "s3".to_owned()),
            ("VRSKY_OBJECT_STORE__ENDPOINT", self.endpoint()),
            ("VRSKY_OBJECT_STORE__REGION", "us-east-1".into()),
            ("VRSKY_OBJECT_STORE__BUCKET", BUCKET.into()),
            ("VRSKY_OBJECT_STORE__ACCESS_KEY_ID", ACCESS_KEY.into()),
            ("VRSKY_OBJECT_STORE__SECRET_ACCESS_KEY", SECRET_KEY.into()),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_owned(), v))
        .collect()
    }

    /// Files in the bucket (its objects), recursively.
    pub fn objects(&self) -> Vec<PathBuf> {
        super::payloads::files_under(&self.dir.path().join(BUCKET))
    }

    /// kill -9.
    pub fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// Starts again on the same port and directory.
    pub async fn restart(&mut self) {
        assert!(self.child.is_none());
        self.spawn().await;
    }
}

impl Drop for S3Server {
    fn drop(&mut self) {
        self.kill();
    }
}
