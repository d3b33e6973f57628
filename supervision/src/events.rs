//! The live tree's changes as a stream: every supervisor of one tree sends each child
//! spawn, restart, exit and stop to the tree's [`TreeEvents`], numbered in the order they
//! were sent, so a watcher can take a snapshot ([`crate::SupervisorMsg::GetTree`]) and
//! then follow the changes after it.

use std::sync::{Arc, Mutex, PoisonError};

use tokio::sync::broadcast;

/// What happened to a child.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum TreeEventKind {
    /// It was started for the first time.
    Spawned,
    /// It exited and its supervisor will restart it.
    Exited,
    /// It was started again after an exit.
    Restarted,
    /// It is gone for good: stopped by its supervisor, or exited and not restarted.
    Stopped,
}

impl TreeEventKind {
    /// The name used in APIs (`spawned`, `exited`, `restarted`, `stopped`).
    pub fn as_str(self) -> &'static str {
        match self {
            TreeEventKind::Spawned => "spawned",
            TreeEventKind::Exited => "exited",
            TreeEventKind::Restarted => "restarted",
            TreeEventKind::Stopped => "stopped",
        }
    }
}

/// One change of the tree.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct TreeEvent {
    /// Its number: 1 for the tree's first event, one more for each after it.
    pub seq: u64,
    /// What happened.
    pub kind: TreeEventKind,
    /// The names from the root to the child's supervisor (`["runtime", "tenant:acme"]`).
    pub supervisor_path: Vec<String>,
    /// The child's name (`integration:orders`).
    pub name: String,
    /// The actor id of the child now running (spawned, restarted), or of the one that
    /// exited.
    pub actor_id: Option<String>,
    /// Restarts since it was first started.
    pub restarts: u32,
    /// Why it exited (exited, stopped).
    pub reason: Option<String>,
}

/// A tree's change stream; cheap to clone (every supervisor of the tree holds one).
#[derive(Debug, Clone)]
pub struct TreeEvents(Arc<Inner>);

#[derive(Debug)]
struct Inner {
    tx: broadcast::Sender<TreeEvent>,
    /// The last number given; numbering and sending happen under this lock, so the
    /// channel's order is the numbers' order.
    seq: Mutex<u64>,
}

impl TreeEvents {
    /// A stream whose watchers may fall up to `capacity` events behind before they lose
    /// some (they learn it: [`broadcast::error::RecvError::Lagged`]).
    pub fn new(capacity: usize) -> Self {
        let (tx, _) = broadcast::channel(capacity.max(1));
        TreeEvents(Arc::new(Inner { tx, seq: Mutex::new(0) }))
    }

    /// Follows the events sent from now on.
    pub fn subscribe(&self) -> broadcast::Receiver<TreeEvent> {
        self.0.tx.subscribe()
    }

    /// The number of the last event sent (0 before the first).
    pub fn last_seq(&self) -> u64 {
        *self.0.seq.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Numbers and sends one event. Supervisors call it; it is public so that what
    /// consumes a stream can be tested with one of its own.
    pub fn emit(
        &self,
        kind: TreeEventKind,
        supervisor_path: &[String],
        name: &str,
        actor_id: Option<String>,
        restarts: u32,
        reason: Option<String>,
    ) {
        let mut seq = self.0.seq.lock().unwrap_or_else(PoisonError::into_inner);
        *seq += 1;
        // No watcher is not an error: the event is simply not kept.
        let _ = self.0.tx.send(TreeEvent {
            seq: *seq,
            kind,
            supervisor_path: supervisor_path.to_vec(),
            name: name.to_owned(),
            actor_id,
            restarts,
            reason,
        });
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[tokio::test]
    async fn numbered_in_sending_order_and_a_slow_watcher_learns_it_lagged() {
        let events = TreeEvents::new(2);
        let mut rx = events.subscribe();
        let path = vec!["runtime".to_owned()];
        for name in ["a", "b", "c"] {
            events.emit(TreeEventKind::Spawned, &path, name, None, 0, None);
        }
        assert_eq!(events.last_seq(), 3);
        assert!(matches!(rx.recv().await, Err(broadcast::error::RecvError::Lagged(1))));
        let b = rx.recv().await.unwrap();
        assert_eq!((b.seq, b.name.as_str()), (2, "b"));
        assert_eq!(rx.recv().await.unwrap().seq, 3);
    }
}
