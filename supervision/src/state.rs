//! The pure part of a supervisor: what to do when a child exits. No I/O, no clock reads.

use std::collections::VecDeque;
use std::time::Duration;

use tokio::time::Instant;

use crate::spec::{ChildSpec, ExitKind};

/// What the supervisor does after a child exit.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Decision {
    /// Forget the child: its policy says it is not restarted.
    Remove,
    /// Start the child again after this delay.
    RestartAfter(Duration),
    /// The child used up its restart budget: stop every child and fail the supervisor.
    Escalate {
        /// Restarts counted inside the window when the budget ran out.
        restarts: u32,
        /// The window they were counted in.
        window: Duration,
    },
}

/// Book-keeping for one child across its restarts.
#[derive(Debug)]
pub struct ChildRecord {
    /// Restart timestamps inside the current intensity window, oldest first.
    /// Bound: at most `intensity.max_restarts` entries (older ones are pruned first).
    pub recent: VecDeque<Instant>,
    /// Restarts since the child was first started.
    pub restarts_total: u32,
    /// Why it last exited, for the tree listing.
    pub last_exit: Option<String>,
}

impl ChildRecord {
    /// A child that has not restarted yet.
    pub fn new() -> Self {
        ChildRecord {
            recent: VecDeque::new(),
            restarts_total: 0,
            last_exit: None,
        }
    }

    /// Decides what follows an exit of `kind` at `now` under `spec`, and records the
    /// restart when there is one.
    pub fn on_exit(&mut self, spec: &ChildSpec, kind: ExitKind, now: Instant) -> Decision {
        if !spec.restart.should_restart(kind) {
            return Decision::Remove;
        }
        if let Some(intensity) = spec.intensity {
            while let Some(oldest) = self.recent.front() {
                if now.saturating_duration_since(*oldest) >= intensity.window {
                    self.recent.pop_front();
                } else {
                    break;
                }
            }
            if self.recent.len() as u32 >= intensity.max_restarts {
                return Decision::Escalate {
                    restarts: self.recent.len() as u32,
                    window: intensity.window,
                };
            }
        } else {
            // Unlimited restarts: keep only enough history to grow the backoff.
            while self.recent.len() > 32 {
                self.recent.pop_front();
            }
        }
        let delay = spec.backoff.delay(self.recent.len() as u32);
        self.recent.push_back(now);
        self.restarts_total = self.restarts_total.saturating_add(1);
        Decision::RestartAfter(delay)
    }
}

impl Default for ChildRecord {
    fn default() -> Self {
        Self::new()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::spec::{Backoff, Intensity, Restart};

    fn spec(restart: Restart, intensity: Option<Intensity>) -> ChildSpec {
        ChildSpec::worker("c", |_cell| async {
            Err(ractor::SpawnErr::StartupFailed("unused".into()))
        })
        .restart(restart)
        .backoff(Backoff {
            initial: Duration::from_secs(1),
            max: Duration::from_secs(4),
        })
        .intensity(intensity)
    }

    #[test]
    fn temporary_and_transient_normal_exits_are_removed() {
        let now = Instant::now();
        let mut r = ChildRecord::new();
        assert_eq!(
            r.on_exit(&spec(Restart::Temporary, None), ExitKind::Abnormal, now),
            Decision::Remove
        );
        assert_eq!(
            r.on_exit(&spec(Restart::Transient, None), ExitKind::Normal, now),
            Decision::Remove
        );
        assert_eq!(r.restarts_total, 0);
    }

    #[test]
    fn intensity_escalates_inside_window_and_forgives_after_it() {
        let s = spec(
            Restart::Permanent,
            Some(Intensity {
                max_restarts: 3,
                window: Duration::from_secs(10),
            }),
        );
        let t0 = Instant::now();
        let mut r = ChildRecord::new();
        assert_eq!(
            r.on_exit(&s, ExitKind::Abnormal, t0),
            Decision::RestartAfter(Duration::from_secs(1))
        );
        assert_eq!(
            r.on_exit(&s, ExitKind::Abnormal, t0 + Duration::from_secs(1)),
            Decision::RestartAfter(Duration::from_secs(2))
        );
        assert_eq!(
            r.on_exit(&s, ExitKind::Normal, t0 + Duration::from_secs(3)),
            Decision::RestartAfter(Duration::from_secs(4))
        );
        assert_eq!(
            r.on_exit(&s, ExitKind::Abnormal, t0 + Duration::from_secs(7)),
            Decision::Escalate {
                restarts: 3,
                window: Duration::from_secs(10)
            }
        );
        // Once the first two restarts fall out of the window, restarting is allowed again.
        assert_eq!(
            r.on_exit(&s, ExitKind::Abnormal, t0 + Duration::from_secs(12)),
            Decision::RestartAfter(Duration::from_secs(2))
        );
        assert_eq!(r.restarts_total, 4);
    }

    #[test]
    fn unlimited_intensity_never_escalates_and_caps_backoff() {
        let s = spec(Restart::Permanent, None);
        let t0 = Instant::now();
        let mut r = ChildRecord::new();
        for i in 0..100 {
            match r.on_exit(&s, ExitKind::Abnormal, t0 + Duration::from_millis(i)) {
                Decision::RestartAfter(d) => assert!(d <= Duration::from_secs(4)),
                other => panic!("unexpected {other:?}"),
            }
        }
        assert!(r.recent.len() <= 33);
    }
}
