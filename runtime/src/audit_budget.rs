//! How many failed authentications reach the audit log: a flood of bad tokens or bad NATS
//! credentials must not become a flood of rows. Each source records at most `per_window`
//! failures per window; the rest are counted and recorded as one summary when the next
//! window opens. Pure: the caller passes the clock.

use std::sync::Mutex;
use std::time::Duration;

/// What to do with one failure.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Admit {
    /// Record it.
    Record,
    /// Record it, and before it a summary of this many suppressed in the last window.
    RecordAfterSummary(u64),
    /// Count it only.
    Suppress,
}

#[derive(Debug, Default)]
struct Window {
    start_ms: u64,
    recorded: u32,
    suppressed: u64,
}

/// The budget of one source (the API, or one NATS server).
#[derive(Debug)]
pub struct FailureBudget {
    per_window: u32,
    window: Duration,
    state: Mutex<Window>,
}

impl FailureBudget {
    /// At most `per_window` recorded failures per `window`.
    pub fn new(per_window: u32, window: Duration) -> FailureBudget {
        FailureBudget {
            per_window,
            window,
            state: Mutex::default(),
        }
    }

    /// Decides for a failure at `now_ms`.
    pub fn admit(&self, now_ms: u64) -> Admit {
        let mut w = self.state.lock().unwrap_or_else(|p| p.into_inner());
        if now_ms.saturating_sub(w.start_ms) >= self.window.as_millis() as u64 {
            let suppressed = std::mem::take(&mut w.suppressed);
            *w = Window {
                start_ms: now_ms,
                recorded: 1,
                suppressed: 0,
            };
            return if suppressed > 0 {
                Admit::RecordAfterSummary(suppressed)
            } else {
                Admit::Record
            };
        }
        if w.recorded < self.per_window {
            w.recorded += 1;
            Admit::Record
        } else {
            w.suppressed += 1;
            Admit::Suppress
        }
    }
}

impl Default for FailureBudget {
    /// 20 a minute.
    fn default() -> Self {
        FailureBudget::new(20, Duration::from_secs(60))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_flood_is_recorded_up_to_the_budget_then_summarised() {
        let b = FailureBudget::new(3, Duration::from_secs(60));
        let t0 = 1_000_000;
        let got: Vec<Admit> = (0..10).map(|i| b.admit(t0 + i)).collect();
        assert_eq!(&got[..3], &[Admit::Record; 3]);
        assert!(got[3..].iter().all(|a| *a == Admit::Suppress), "{got:?}");
        assert_eq!(
            b.admit(t0 + 60_000),
            Admit::RecordAfterSummary(7),
            "the next window says how many"
        );
        assert_eq!(b.admit(t0 + 60_001), Admit::Record);
        assert_eq!(b.admit(t0 + 200_000), Admit::Record, "a quiet window has no summary");
    }
}
