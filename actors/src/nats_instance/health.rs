//! Instance health: a flag the NatsInstanceActor writes and discovery and publishing
//! read, and the probe that sets it (a NATS connection that must answer with its INFO).

use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::net::TcpStream;

/// Whether an instance answers, and if not, why.
#[derive(Debug, Default)]
pub struct InstanceHealth {
    healthy: AtomicBool,
    reason: Mutex<Option<String>>,
    /// The running server's monitoring endpoint (sampled by `/metrics`).
    monitor_url: Mutex<Option<String>>,
}

impl InstanceHealth {
    /// Not yet known: unhealthy until the first successful start.
    pub fn new() -> Self {
        Self::default()
    }

    /// Records the outcome of a start, probe or exit.
    pub fn set(&self, healthy: bool, reason: Option<String>) {
        self.healthy.store(healthy, Ordering::Relaxed);
        *self.reason.lock().unwrap_or_else(|p| p.into_inner()) = reason;
    }

    /// Healthy now.
    pub fn is_healthy(&self) -> bool {
        self.healthy.load(Ordering::Relaxed)
    }

    /// Records where the running server's monitoring endpoint is.
    pub fn set_monitor_url(&self, url: Option<String>) {
        *self.monitor_url.lock().unwrap_or_else(|p| p.into_inner()) = url;
    }

    /// The running server's monitoring endpoint, if known.
    pub fn monitor_url(&self) -> Option<String> {
        self.monitor_url.lock().unwrap_or_else(|p| p.into_inner()).clone()
    }

    /// Why it is unhealthy.
    pub fn reason(&self) -> Option<String> {
        self.reason.lock().unwrap_or_else(|p| p.into_inner()).clone()
    }
}

/// Connects to `nats://host:port` and waits for the server's INFO line.
pub async fn probe(url: &str, timeout: Duration) -> Result<(), String> {
    let addr = url.strip_prefix("nats://").unwrap_or(url).to_owned();
    let attempt = async {
        let stream = TcpStream::connect(&addr)
            .await
            .map_err(|e| format!("connect {addr}: {e}"))?;
        let mut line = String::new();
        BufReader::new(stream)
            .read_line(&mut line)
            .await
            .map_err(|e| format!("read {addr}: {e}"))?;
        if line.starts_with("INFO ") {
            Ok(())
        } else {
            Err(format!(
                "{addr} answered {:?}",
                line.chars().take(40).collect::<String>()
            ))
        }
    };
    tokio::time::timeout(timeout, attempt)
        .await
        .map_err(|_| format!("{addr} did not answer within {} ms", timeout.as_millis()))?
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use tokio::io::AsyncWriteExt;

    #[tokio::test]
    async fn probe_needs_an_info_line() {
        let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = l.local_addr().unwrap();
        tokio::spawn(async move {
            let (mut s, _) = l.accept().await.unwrap();
            s.write_all(b"INFO {}\r\n").await.unwrap();
            let (mut s, _) = l.accept().await.unwrap();
            s.write_all(b"HTTP/1.1 400\r\n").await.unwrap();
        });
        probe(&format!("nats://{addr}"), Duration::from_secs(2)).await.unwrap();
        assert!(
            probe(&format!("nats://{addr}"), Duration::from_secs(2))
                .await
                .unwrap_err()
                .contains("answered")
        );
        let free = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap();
        assert!(probe(&format!("nats://{free}"), Duration::from_secs(2)).await.is_err());
    }

    #[test]
    fn health_flag() {
        let h = InstanceHealth::new();
        assert!(!h.is_healthy());
        h.set(true, None);
        assert!(h.is_healthy());
        h.set(false, Some("down".into()));
        assert_eq!((h.is_healthy(), h.reason().as_deref()), (false, Some("down")));
    }
}
