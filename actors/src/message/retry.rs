//! Retry policy: how often and how far apart failed deliveries are tried again.

use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::components::SpecError;

/// Per-integration retry policy. Defaults are the specification's: at most 3 retries,
/// `2^retry_count` seconds apart, no cap below 5 minutes, no jitter.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RetryPolicy {
    /// Retries after the first attempt; 0 dead-letters on the first failure.
    pub max_retries: u32,
    /// Delay before retry `n` (1-based) is `backoff_base_s * 2^n`, capped at `backoff_max_s`.
    pub backoff_base_s: f64,
    /// Upper bound on one delay (before jitter).
    pub backoff_max_s: f64,
    /// Fraction (0 to 1) of each delay added at random, to spread retries out.
    pub jitter: f64,
}

impl Default for RetryPolicy {
    fn default() -> Self {
        RetryPolicy {
            max_retries: 3,
            backoff_base_s: 1.0,
            backoff_max_s: 300.0,
            jitter: 0.0,
        }
    }
}

/// Upper bound on `max_retries`.
pub const MAX_RETRIES_LIMIT: u32 = 20;

fn err(field: &str, message: impl Into<String>) -> SpecError {
    SpecError {
        field: format!("retry.{field}"),
        message: message.into(),
    }
}

impl RetryPolicy {
    /// The delay before retry number `retry` (1-based), given a jitter sample in [0, 1)
    /// and the destination's `Retry-After`, which is honoured up to `backoff_max_s`.
    pub fn delay(&self, retry: u32, jitter_sample: f64, retry_after: Option<Duration>) -> Duration {
        let exp = self.backoff_base_s * 2f64.powi(retry.min(62) as i32);
        let mut secs = exp.min(self.backoff_max_s);
        if let Some(ra) = retry_after {
            secs = secs.max(ra.as_secs_f64().min(self.backoff_max_s));
        }
        secs += secs * self.jitter * jitter_sample.clamp(0.0, 1.0);
        Duration::from_secs_f64(secs.max(0.0))
    }

    /// The longest a message can spend waiting for retries.
    pub fn worst_case_total(&self) -> Duration {
        (1..=self.max_retries).map(|n| self.delay(n, 1.0, None)).sum()
    }

    /// Checks ranges, and that every retry can happen before `retention` (the shortest of
    /// the message state TTL and the retry queue's max age) forgets the message.
    pub fn validate(&self, retention: Duration) -> Result<(), SpecError> {
        if self.max_retries > MAX_RETRIES_LIMIT {
            return Err(err("max_retries", format!("must be at most {MAX_RETRIES_LIMIT}")));
        }
        if !(self.backoff_base_s.is_finite() && self.backoff_base_s > 0.0) {
            return Err(err("backoff_base_s", "must be a positive number of seconds"));
        }
        if !(self.backoff_max_s.is_finite() && self.backoff_max_s >= self.backoff_base_s) {
            return Err(err(
                "backoff_max_s",
                "must be a number of seconds no smaller than backoff_base_s",
            ));
        }
        if !(0.0..=1.0).contains(&self.jitter) {
            return Err(err("jitter", "must be between 0 and 1"));
        }
        let total = self.worst_case_total();
        if total > retention {
            return Err(err(
                "max_retries",
                format!(
                    "retries can take up to {:.0} s in total, longer than the {} s the platform keeps a scheduled retry",
                    total.as_secs_f64(),
                    retention.as_secs()
                ),
            ));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn defaults_are_the_spec() {
        let p = RetryPolicy::default();
        let d: Vec<u64> = (1..=3).map(|n| p.delay(n, 0.0, None).as_secs()).collect();
        assert_eq!(d, vec![2, 4, 8]);
        assert_eq!(p.worst_case_total(), Duration::from_secs(14));
        p.validate(Duration::from_secs(900)).unwrap();
    }

    #[test]
    fn cap_jitter_and_retry_after() {
        let p = RetryPolicy {
            max_retries: 10,
            backoff_base_s: 1.0,
            backoff_max_s: 10.0,
            jitter: 0.5,
        };
        assert_eq!(p.delay(8, 0.0, None), Duration::from_secs(10));
        assert_eq!(p.delay(1, 1.0, None), Duration::from_secs(3));
        // Retry-After wins when longer, up to the cap.
        assert_eq!(p.delay(1, 0.0, Some(Duration::from_secs(7))), Duration::from_secs(7));
        assert_eq!(p.delay(1, 0.0, Some(Duration::from_secs(700))), Duration::from_secs(10));
    }

    #[test]
    fn policies_longer_than_retention_are_refused() {
        let p = RetryPolicy {
            max_retries: 10,
            backoff_base_s: 60.0,
            backoff_max_s: 3600.0,
            jitter: 0.0,
        };
        let e = p.validate(Duration::from_secs(900)).unwrap_err();
        assert_eq!(e.field, "retry.max_retries");
        assert!(e.message.contains("900 s"), "{e}");
        let bad = RetryPolicy {
            jitter: 2.0,
            ..RetryPolicy::default()
        };
        assert_eq!(
            bad.validate(Duration::from_secs(900)).unwrap_err().field,
            "retry.jitter"
        );
        let bad = RetryPolicy {
            backoff_base_s: f64::NAN,
            ..RetryPolicy::default()
        };
        assert!(bad.validate(Duration::from_secs(900)).is_err());
    }
}
