//! A tenant's NATS instances as this node sees them: one client per instance, its health,
//! and the round-robin choice of where the next publish goes. Written only by the
//! tenant's TenantActor; read by the webhook path and the scheduler through the routing
//! snapshot.

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, RwLock};

use vrsky_actors::nats_instance::InstanceHealth;

/// One instance: its number, URL, connections and health.
#[derive(Debug)]
pub struct InstanceLink {
    /// 1-based instance number.
    pub number: u32,
    /// Client URL.
    pub url: String,
    /// This node's publishing connection (the tenant's `ingress` user).
    pub publisher: async_nats::Client,
    /// This node's subscribing connection (the tenant's `worker` user).
    pub subscriber: async_nats::Client,
    /// Written by its NatsInstanceActor.
    pub health: Arc<InstanceHealth>,
    /// In the publish rotation. A new instance joins only once every integration
    /// subscribes on it, so nothing is published where nobody listens.
    pub accepting: AtomicBool,
    /// Slow-consumer events of this node's connection: times its client dropped messages
    /// because a subscription's buffer was full (each makes the tenant's `received`
    /// messages due for re-drive at once).
    pub slow_consumers: Arc<std::sync::atomic::AtomicU64>,
    /// The watch of the instance's refused clients (`nats/auth_events.rs`), stopped with
    /// the link.
    pub auth_events: Option<vrsky_actors::integration::AbortOnDrop>,
}

impl InstanceLink {
    /// Healthy by its probe and connected from this node.
    pub fn usable(&self) -> bool {
        self.health.is_healthy() && self.connected()
    }

    /// Both connections are up.
    pub fn connected(&self) -> bool {
        use async_nats::connection::State::Connected;
        self.publisher.connection_state() == Connected && self.subscriber.connection_state() == Connected
    }

    /// Flushes what was published and closes both connections.
    pub async fn drain(&self) {
        let _ = self.publisher.drain().await;
        let _ = self.subscriber.drain().await;
    }
}

/// The instances of one tenant. Bound: at most `nats.instances_per_tenant_max` links.
#[derive(Debug, Default)]
pub struct InstanceSet {
    links: RwLock<Vec<Arc<InstanceLink>>>,
    next: AtomicUsize,
}

impl InstanceSet {
    /// Every link, by instance number.
    pub fn links(&self) -> Vec<Arc<InstanceLink>> {
        self.links.read().unwrap_or_else(|p| p.into_inner()).clone()
    }

    /// Adds (or replaces) an instance.
    pub fn insert(&self, link: Arc<InstanceLink>) {
        let mut links = self.links.write().unwrap_or_else(|p| p.into_inner());
        links.retain(|l| l.number != link.number);
        links.push(link);
        links.sort_by_key(|l| l.number);
    }

    /// Removes an instance.
    pub fn remove(&self, number: u32) -> Option<Arc<InstanceLink>> {
        let mut links = self.links.write().unwrap_or_else(|p| p.into_inner());
        let i = links.iter().position(|l| l.number == number)?;
        Some(links.remove(i))
    }

    /// The health handle of an instance (it lives with the link, so it survives restarts
    /// of the instance's actor).
    pub fn health(&self, number: u32) -> Option<Arc<InstanceHealth>> {
        self.links()
            .into_iter()
            .find(|l| l.number == number)
            .map(|l| l.health.clone())
    }

    /// Subscribing connections to every instance.
    pub fn clients(&self) -> Vec<async_nats::Client> {
        self.links().iter().map(|l| l.subscriber.clone()).collect()
    }

    /// Whether any instance is usable (healthy, connected and in the rotation).
    pub fn any_usable(&self) -> bool {
        let links = self.links.read().unwrap_or_else(|p| p.into_inner());
        links.iter().any(|l| l.accepting.load(Ordering::Relaxed) && l.usable())
    }

    /// The next usable instance (healthy, connected and in the rotation) in round-robin
    /// order; `None` when none is. Publishing to an instance that is down would only fill
    /// its client's buffer: such a message is left for the re-driver instead.
    pub fn pick_usable(&self) -> Option<Arc<InstanceLink>> {
        let links = self.links.read().unwrap_or_else(|p| p.into_inner());
        if links.is_empty() {
            return None;
        }
        let start = self.next.fetch_add(1, Ordering::Relaxed);
        (0..links.len())
            .map(|k| &links[(start + k) % links.len()])
            .find(|l| l.accepting.load(Ordering::Relaxed) && l.usable())
            .cloned()
    }
}
