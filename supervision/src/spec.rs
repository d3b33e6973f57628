//! Restart policy as data: what a supervisor does when one of its children exits.

use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use futures::future::BoxFuture;
use ractor::{ActorCell, SpawnErr};

/// When a child that exited is started again.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Restart {
    /// Always restarted, whether it stopped normally, failed or was killed.
    Permanent,
    /// Restarted only when it failed (panic, error) or was killed; a normal stop is final.
    Transient,
    /// Never restarted.
    Temporary,
}

/// How exits are classified for [`Restart`] decisions.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum ExitKind {
    /// The child stopped itself or was stopped, with no failure.
    Normal,
    /// The child panicked, returned an error, or was killed.
    Abnormal,
}

impl Restart {
    /// Whether a child with this policy is restarted after an exit of `kind`.
    pub fn should_restart(self, kind: ExitKind) -> bool {
        match self {
            Restart::Permanent => true,
            Restart::Transient => kind == ExitKind::Abnormal,
            Restart::Temporary => false,
        }
    }
}

/// Exponential delay between restarts: `initial * 2^(restarts in the current window)`,
/// capped at `max`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Backoff {
    /// Delay before the first restart in a window.
    pub initial: Duration,
    /// Upper bound on any delay.
    pub max: Duration,
}

impl Backoff {
    /// No delay at all.
    pub const NONE: Backoff = Backoff {
        initial: Duration::ZERO,
        max: Duration::ZERO,
    };

    /// The delay before the restart that follows `recent_restarts` restarts in the window.
    pub fn delay(&self, recent_restarts: u32) -> Duration {
        let factor = 1u32.checked_shl(recent_restarts.min(31)).unwrap_or(u32::MAX);
        self.initial.saturating_mul(factor).min(self.max)
    }
}

/// Restart intensity: at most `max_restarts` restarts within `window`, then escalate.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Intensity {
    /// Restarts allowed inside one window.
    pub max_restarts: u32,
    /// Length of the sliding window.
    pub window: Duration,
}

/// What kind of actor a child is; supervisors are asked for their own subtree when the
/// tree is listed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum ChildKind {
    /// A leaf actor.
    Worker,
    /// A [`crate::Supervisor`] with children of its own.
    Supervisor,
}

/// Starts one child, linked to the given supervisor cell. Called again on every restart,
/// so it must be able to build the child's arguments afresh.
pub type StartFn = Arc<dyn Fn(ActorCell) -> BoxFuture<'static, Result<ActorCell, SpawnErr>> + Send + Sync>;

/// One child of a supervisor: its name, how to start it, and its restart policy.
#[derive(Clone)]
pub struct ChildSpec {
    /// Unique among the supervisor's children; used to stop it and in tree listings.
    pub name: String,
    /// Leaf or nested supervisor.
    pub kind: ChildKind,
    /// When the child is restarted.
    pub restart: Restart,
    /// Delay between restarts.
    pub backoff: Backoff,
    /// Restart budget; `None` restarts forever (with backoff) and never escalates.
    pub intensity: Option<Intensity>,
    /// Starts the child.
    pub start: StartFn,
}

impl fmt::Debug for ChildSpec {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ChildSpec")
            .field("name", &self.name)
            .field("kind", &self.kind)
            .field("restart", &self.restart)
            .field("backoff", &self.backoff)
            .field("intensity", &self.intensity)
            .finish_non_exhaustive()
    }
}

impl ChildSpec {
    /// A permanent worker with a 100 ms..10 s backoff and at most 10 restarts a minute.
    pub fn worker<F, Fut>(name: impl Into<String>, start: F) -> Self
    where
        F: Fn(ActorCell) -> Fut + Send + Sync + 'static,
        Fut: std::future::Future<Output = Result<ActorCell, SpawnErr>> + Send + 'static,
    {
        ChildSpec {
            name: name.into(),
            kind: ChildKind::Worker,
            restart: Restart::Permanent,
            backoff: Backoff {
                initial: Duration::from_millis(100),
                max: Duration::from_secs(10),
            },
            intensity: Some(Intensity {
                max_restarts: 10,
                window: Duration::from_secs(60),
            }),
            start: Arc::new(move |cell| Box::pin(start(cell))),
        }
    }

    /// Marks the child as a nested supervisor.
    pub fn supervisor(mut self) -> Self {
        self.kind = ChildKind::Supervisor;
        self
    }

    /// Sets the restart policy.
    pub fn restart(mut self, restart: Restart) -> Self {
        self.restart = restart;
        self
    }

    /// Sets the backoff.
    pub fn backoff(mut self, backoff: Backoff) -> Self {
        self.backoff = backoff;
        self
    }

    /// Sets the restart intensity; `None` never escalates.
    pub fn intensity(mut self, intensity: Option<Intensity>) -> Self {
        self.intensity = intensity;
        self
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn restart_policies_follow_exit_kind() {
        assert!(Restart::Permanent.should_restart(ExitKind::Normal));
        assert!(Restart::Permanent.should_restart(ExitKind::Abnormal));
        assert!(!Restart::Transient.should_restart(ExitKind::Normal));
        assert!(Restart::Transient.should_restart(ExitKind::Abnormal));
        assert!(!Restart::Temporary.should_restart(ExitKind::Normal));
        assert!(!Restart::Temporary.should_restart(ExitKind::Abnormal));
    }

    #[test]
    fn backoff_doubles_and_caps() {
        let b = Backoff {
            initial: Duration::from_millis(100),
            max: Duration::from_secs(1),
        };
        assert_eq!(b.delay(0), Duration::from_millis(100));
        assert_eq!(b.delay(1), Duration::from_millis(200));
        assert_eq!(b.delay(3), Duration::from_millis(800));
        assert_eq!(b.delay(4), Duration::from_secs(1));
        assert_eq!(b.delay(400), Duration::from_secs(1));
        assert_eq!(Backoff::NONE.delay(5), Duration::ZERO);
    }
}
