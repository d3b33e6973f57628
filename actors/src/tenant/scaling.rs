//! Capacity decisions for a tenant's NATS instances (issue 2 of the specification): where a
//! new integration goes, when an instance is provisioned, and when an instance nears its
//! capacity. Pure: the samples and the time come in, findings go out; the CapacityMonitor
//! gathers the samples and the TenantActor acts on the findings.
//!
//! - **Placement.** A new integration goes to the least-loaded active instance with room
//!   (`integrations_per_instance_max`), ties to the lower number; with none, one more
//!   instance is needed, unless the tenant is at `instances_per_tenant_max` (a 409).
//! - **Integration count.** An instance that reaches the maximum while no other has room
//!   makes the tenant provision one.
//! - **Sustained rate.** An instance whose message rate stays above `msg_rate_max` for
//!   `sustain` makes the tenant provision one; a spike shorter than the window does not.
//!   After a provision the window starts again, so one long burst provisions once per
//!   window, not once per sample.
//! - **Alerts** at `alert_ratio` (80%) of either threshold, once per crossing: an alert is
//!   cleared only below `clear_ratio` (70%), so a value hovering at 80% does not flap.

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

/// The thresholds (`scaling.*`).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct ScalingSettings {
    /// Integrations one instance carries at most (`scaling.integrations_per_instance_max`, 50).
    pub integrations_per_instance_max: usize,
    /// Messages per second above which an instance is full (`scaling.msg_rate_max`, 100,000).
    pub msg_rate_max: f64,
    /// How long the rate must stay above it (`scaling.sustain_s`, 300 s).
    pub sustain: Duration,
    /// Live instances a tenant may have (`nats.instances_per_tenant_max`).
    pub instances_max: usize,
}

impl Default for ScalingSettings {
    fn default() -> Self {
        ScalingSettings {
            integrations_per_instance_max: 50,
            msg_rate_max: 100_000.0,
            sustain: Duration::from_secs(300),
            instances_max: 10,
        }
    }
}

/// The share of a threshold at which an alert is raised.
pub const ALERT_RATIO: f64 = 0.8;
/// The share below which a raised alert is cleared.
pub const CLEAR_RATIO: f64 = 0.7;

/// One active instance as the CapacityMonitor found it.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct InstanceSample {
    /// Its number.
    pub number: u32,
    /// Integrations placed on it.
    pub integrations: usize,
    /// Messages per second in and out, from its monitoring endpoint.
    pub msg_rate: f64,
}

/// Which threshold an alert is about.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Threshold {
    /// `integrations_per_instance_max`.
    Integrations,
    /// `msg_rate_max`.
    MsgRate,
}

/// Why an instance is provisioned.
#[derive(Debug, Clone, PartialEq)]
pub enum ProvisionReason {
    /// Every active instance carries the maximum of integrations.
    Full,
    /// This instance's rate stayed above the maximum for the window.
    SustainedRate(u32),
}

/// What an assessment found.
#[derive(Debug, Clone, PartialEq)]
pub enum Finding {
    /// Provision one more instance.
    Provision(ProvisionReason),
    /// More is needed but the tenant is at `instances_per_tenant_max`: reported, nothing done.
    AtLimit(ProvisionReason),
    /// An instance reached the alert ratio of a threshold.
    Alert {
        /// The instance.
        instance: u32,
        /// Which threshold.
        threshold: Threshold,
        /// Its value as a share of the threshold.
        ratio: f64,
    },
    /// A raised alert fell below the clear ratio (or its instance is gone).
    Cleared {
        /// The instance.
        instance: u32,
        /// Which threshold.
        threshold: Threshold,
    },
}

/// What the assessments remember between samples: since when each instance's rate is
/// above the maximum, and which alerts are raised. Bound: two entries per instance.
#[derive(Debug, Clone, Default)]
pub struct CapacityMemory {
    above_since_ms: BTreeMap<u32, u64>,
    raised: BTreeSet<(u32, Threshold)>,
}

/// Where a new integration goes: the least-loaded instance with room, ties to the lower
/// number; `None` when every instance is full (or there is none).
pub fn place(loads: &[(u32, usize)], integrations_per_instance_max: usize) -> Option<u32> {
    loads
        .iter()
        .filter(|(_, n)| *n < integrations_per_instance_max)
        .min_by_key(|(number, n)| (*n, *number))
        .map(|(number, _)| *number)
}

/// Assesses the tenant's active instances at `now_ms`. `live` counts its live instances
/// (a draining one included: it still counts against the limit); `provisioning` is true
/// while an instance is being added, so nothing more is asked for meanwhile.
pub fn assess(
    s: &ScalingSettings,
    samples: &[InstanceSample],
    live: usize,
    provisioning: bool,
    memory: &mut CapacityMemory,
    now_ms: u64,
) -> Vec<Finding> {
    let mut out = Vec::new();
    let sustain_ms = s.sustain.as_millis() as u64;
    let present: BTreeSet<u32> = samples.iter().map(|x| x.number).collect();
    memory.above_since_ms.retain(|n, _| present.contains(n));
    let gone: Vec<(u32, Threshold)> = memory
        .raised
        .iter()
        .filter(|(n, _)| !present.contains(n))
        .copied()
        .collect();
    for (instance, threshold) in gone {
        memory.raised.remove(&(instance, threshold));
        out.push(Finding::Cleared { instance, threshold });
    }
    let mut wanted = None;
    for x in samples {
        for (threshold, ratio) in [
            (
                Threshold::Integrations,
                x.integrations as f64 / s.integrations_per_instance_max.max(1) as f64,
            ),
            (Threshold::MsgRate, x.msg_rate / s.msg_rate_max.max(f64::MIN_POSITIVE)),
        ] {
            let key = (x.number, threshold);
            if ratio >= ALERT_RATIO && !memory.raised.contains(&key) {
                memory.raised.insert(key);
                out.push(Finding::Alert {
                    instance: x.number,
                    threshold,
                    ratio,
                });
            } else if ratio < CLEAR_RATIO && memory.raised.remove(&key) {
                out.push(Finding::Cleared {
                    instance: x.number,
                    threshold,
                });
            }
        }
        if x.msg_rate > s.msg_rate_max {
            let since = *memory.above_since_ms.entry(x.number).or_insert(now_ms);
            if now_ms.saturating_sub(since) >= sustain_ms && wanted.is_none() {
                wanted = Some(ProvisionReason::SustainedRate(x.number));
            }
        } else {
            memory.above_since_ms.remove(&x.number);
        }
    }
    let loads: Vec<(u32, usize)> = samples.iter().map(|x| (x.number, x.integrations)).collect();
    if wanted.is_none() && !samples.is_empty() && place(&loads, s.integrations_per_instance_max).is_none() {
        wanted = Some(ProvisionReason::Full);
    }
    if let Some(reason) = wanted {
        if live >= s.instances_max {
            out.push(Finding::AtLimit(reason));
        } else if !provisioning {
            // The window starts again: one long burst provisions once per window.
            if let ProvisionReason::SustainedRate(n) = reason {
                memory.above_since_ms.insert(n, now_ms);
            }
            out.push(Finding::Provision(reason));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn settings() -> ScalingSettings {
        ScalingSettings {
            integrations_per_instance_max: 3,
            msg_rate_max: 1_000.0,
            sustain: Duration::from_secs(300),
            instances_max: 3,
        }
    }

    fn sample(number: u32, integrations: usize, msg_rate: f64) -> InstanceSample {
        InstanceSample {
            number,
            integrations,
            msg_rate,
        }
    }

    fn provisions(f: &[Finding]) -> usize {
        f.iter().filter(|x| matches!(x, Finding::Provision(_))).count()
    }

    #[test]
    fn new_integrations_go_to_the_least_loaded_instance_with_room() {
        assert_eq!(place(&[(1, 2), (2, 1), (3, 1)], 3), Some(2));
        assert_eq!(place(&[(1, 3), (2, 3)], 3), None);
        assert_eq!(place(&[], 3), None);
    }

    /// Seven integrations with at most three per instance: placing them one by one, and
    /// provisioning whenever the assessment asks, gives three instances of at most three.
    #[test]
    fn seven_integrations_at_three_per_instance_need_three_instances() {
        let s = settings();
        let mut memory = CapacityMemory::default();
        let mut loads: Vec<(u32, usize)> = vec![(1, 0)];
        for _ in 0..7 {
            if place(&loads, s.integrations_per_instance_max).is_none() {
                let samples: Vec<InstanceSample> = loads.iter().map(|(n, k)| sample(*n, *k, 0.0)).collect();
                let f = assess(&s, &samples, loads.len(), false, &mut memory, 0);
                assert_eq!(f.last(), Some(&Finding::Provision(ProvisionReason::Full)), "{f:?}");
                loads.push((loads.len() as u32 + 1, 0));
            }
            let n = place(&loads, s.integrations_per_instance_max).unwrap_or_default();
            if let Some(l) = loads.iter_mut().find(|(k, _)| *k == n) {
                l.1 += 1;
            }
        }
        assert_eq!(loads, vec![(1, 3), (2, 3), (3, 1)]);
    }

    #[test]
    fn a_spike_shorter_than_the_window_does_not_scale_and_a_sustained_rate_does_once() {
        let s = settings();
        let mut m = CapacityMemory::default();
        let at = |secs: u64| secs * 1_000;
        // 299 s above, then a dip: nothing.
        for t in (0..300).step_by(30) {
            assert_eq!(
                provisions(&assess(&s, &[sample(1, 1, 5_000.0)], 1, false, &mut m, at(t))),
                0
            );
        }
        assess(&s, &[sample(1, 1, 10.0)], 1, false, &mut m, at(300));
        // Above again from 330 s: the window restarts there.
        let mut fired = Vec::new();
        for t in (330..=1_000).step_by(30) {
            if provisions(&assess(&s, &[sample(1, 1, 5_000.0)], 1, false, &mut m, at(t))) > 0 {
                fired.push(t);
            }
        }
        // At 630 s (300 s after 330), then once per further window while it lasts.
        assert_eq!(fired, vec![630, 930]);
    }

    #[test]
    fn nothing_more_is_asked_while_provisioning_and_the_limit_is_reported() {
        let s = settings();
        let mut m = CapacityMemory::default();
        let full = [sample(1, 3, 0.0), sample(2, 3, 0.0)];
        assert_eq!(provisions(&assess(&s, &full, 2, true, &mut m, 0)), 0);
        let all = [sample(1, 3, 0.0), sample(2, 3, 0.0), sample(3, 3, 0.0)];
        let f = assess(&s, &all, 3, false, &mut m, 0);
        assert!(f.contains(&Finding::AtLimit(ProvisionReason::Full)), "{f:?}");
        assert_eq!(provisions(&f), 0);
    }

    #[test]
    fn alerts_at_eighty_percent_once_per_crossing_without_flapping() {
        let s = ScalingSettings {
            integrations_per_instance_max: 10,
            ..settings()
        };
        let mut m = CapacityMemory::default();
        let alerts = |f: &[Finding]| {
            f.iter()
                .filter(|x| {
                    matches!(
                        x,
                        Finding::Alert {
                            threshold: Threshold::Integrations,
                            ..
                        }
                    )
                })
                .count()
        };
        let cleared = |f: &[Finding]| f.iter().filter(|x| matches!(x, Finding::Cleared { .. })).count();
        assert_eq!(alerts(&assess(&s, &[sample(1, 8, 0.0)], 1, false, &mut m, 0)), 1);
        // Hovering between 70% and 80%: neither raised again nor cleared.
        for k in [7, 8, 7, 8] {
            let f = assess(&s, &[sample(1, k, 0.0)], 1, false, &mut m, 0);
            assert_eq!((alerts(&f), cleared(&f)), (0, 0), "{k}: {f:?}");
        }
        assert_eq!(cleared(&assess(&s, &[sample(1, 6, 0.0)], 1, false, &mut m, 0)), 1);
        // An instance that is gone clears its alerts.
        assess(&s, &[sample(2, 9, 0.0)], 1, false, &mut m, 0);
        let f = assess(&s, &[sample(3, 0, 0.0)], 1, false, &mut m, 0);
        assert!(
            f.contains(&Finding::Cleared {
                instance: 2,
                threshold: Threshold::Integrations
            }),
            "{f:?}"
        );
    }
}
