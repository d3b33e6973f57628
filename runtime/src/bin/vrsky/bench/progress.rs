//! The bench's progress bars.

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use super::Arrivals;

/// A progress bar of a phase's deliveries on stderr (drawn only on a terminal), read from
/// the sink's count ten times a second, so it costs the phase nothing measurable.
pub(super) struct Progress {
    bar: indicatif::ProgressBar,
    poll: tokio::task::JoinHandle<()>,
}

impl Progress {
    pub(super) fn start(arrivals: Arc<Arrivals>, offset: usize, n: usize) -> Progress {
        let bar = indicatif::ProgressBar::new(n as u64);
        bar.set_style(
            indicatif::ProgressStyle::with_template("  {bar:40} {pos}/{len} delivered, {per_sec}")
                .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar()),
        );
        let b = bar.clone();
        let poll = tokio::spawn(async move {
            loop {
                let done = arrivals.count.load(Ordering::Relaxed).saturating_sub(offset);
                b.set_position(done as u64);
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        });
        Progress { bar, poll }
    }
}

impl Drop for Progress {
    fn drop(&mut self) {
        self.poll.abort();
        self.bar.finish_and_clear();
    }
}
