//! Head sampling from `OTEL_TRACES_SAMPLER(_ARG)`, with the spans VRSky always records.
//!
//! The configured sampler decides each trace at its root (the webhook, or the tree's root
//! span). On top of it, whatever the trace's decision, these are always sampled:
//! - the supervision tree's spans (`actor.name` set), so the tree is always whole;
//! - every attempt after the first (`vrsky.attempt` >= 2), a dead-lettering and a replay,
//!   and a delivery attempt whose outcome is `dead_letter` (a tail decision: that span is
//!   made once the outcome is known), so a message that ends in the DLQ is always in a
//!   trace.

use opentelemetry::trace::{Link, SpanKind, TraceContextExt, TraceId};
use opentelemetry::{Context, KeyValue, Value};
use opentelemetry_sdk::trace::{Sampler, SamplingDecision, SamplingResult, ShouldSample};
use vrsky_actors::telemetry::{ALWAYS_SAMPLED, ATTEMPT, OUTCOME};
use vrsky_supervision::telemetry::ACTOR_NAME;

/// The configured sampler plus VRSky's always-recorded spans.
#[derive(Debug, Clone)]
pub struct VrskySampler {
    inner: Sampler,
}

/// A sampler name or argument that is not one the specification defines.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct SamplerError(String);

impl VrskySampler {
    /// From the standard variables' values (`None`: unset). Unset is
    /// `parentbased_always_on`, the specification's default.
    pub fn from_env_values(name: Option<&str>, arg: Option<&str>) -> Result<Self, SamplerError> {
        let ratio = || -> Result<f64, SamplerError> {
            match arg {
                None => Ok(1.0),
                Some(a) => a
                    .trim()
                    .parse::<f64>()
                    .ok()
                    .filter(|r| (0.0..=1.0).contains(r))
                    .ok_or_else(|| {
                        SamplerError(format!(
                            "OTEL_TRACES_SAMPLER_ARG must be a ratio from 0 to 1, not {a:?}"
                        ))
                    }),
            }
        };
        let inner = match name.map(str::trim).unwrap_or("parentbased_always_on") {
            "always_on" => Sampler::AlwaysOn,
            "always_off" => Sampler::AlwaysOff,
            "traceidratio" => Sampler::TraceIdRatioBased(ratio()?),
            "parentbased_always_on" => Sampler::ParentBased(Box::new(Sampler::AlwaysOn)),
            "parentbased_always_off" => Sampler::ParentBased(Box::new(Sampler::AlwaysOff)),
            "parentbased_traceidratio" => Sampler::ParentBased(Box::new(Sampler::TraceIdRatioBased(ratio()?))),
            other => {
                return Err(SamplerError(format!(
                    "OTEL_TRACES_SAMPLER {other:?} is not supported; use always_on, always_off, traceidratio, \
                     parentbased_always_on, parentbased_always_off or parentbased_traceidratio"
                )));
            }
        };
        Ok(VrskySampler { inner })
    }
}

/// Whether a span is one VRSky always records.
pub fn always_recorded(name: &str, attributes: &[KeyValue]) -> bool {
    ALWAYS_SAMPLED.contains(&name)
        || attributes.iter().any(|kv| match kv.key.as_str() {
            k if k == ACTOR_NAME => true,
            k if k == ATTEMPT => matches!(kv.value, Value::I64(n) if n >= 2),
            k if k == OUTCOME => matches!(&kv.value, Value::String(s) if s.as_str() == "dead_letter"),
            _ => false,
        })
}

impl ShouldSample for VrskySampler {
    fn should_sample(
        &self,
        parent_context: Option<&Context>,
        trace_id: TraceId,
        name: &str,
        span_kind: &SpanKind,
        attributes: &[KeyValue],
        links: &[Link],
    ) -> SamplingResult {
        if always_recorded(name, attributes) {
            let trace_state = parent_context
                .filter(|cx| cx.has_active_span())
                .map(|cx| cx.span().span_context().trace_state().clone())
                .unwrap_or_default();
            return SamplingResult {
                decision: SamplingDecision::RecordAndSample,
                attributes: Vec::new(),
                trace_state,
            };
        }
        self.inner
            .should_sample(parent_context, trace_id, name, span_kind, attributes, links)
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use opentelemetry::trace::{SpanContext, SpanId, TraceFlags, TraceState};

    use super::*;

    fn unsampled_parent() -> Context {
        Context::new().with_remote_span_context(SpanContext::new(
            TraceId::from(7u128),
            SpanId::from(9u64),
            TraceFlags::default(),
            true,
            TraceState::default(),
        ))
    }

    fn decide(s: &VrskySampler, name: &str, attrs: &[KeyValue]) -> SamplingDecision {
        s.should_sample(
            Some(&unsampled_parent()),
            TraceId::from(7u128),
            name,
            &SpanKind::Internal,
            attrs,
            &[],
        )
        .decision
    }

    #[test]
    fn an_unsampled_trace_still_records_dead_letters_retries_and_the_actor_tree() {
        let s = VrskySampler::from_env_values(Some("parentbased_traceidratio"), Some("0")).unwrap();
        assert_eq!(
            decide(&s, "vrsky.claim", &[KeyValue::new(ATTEMPT, 1i64)]),
            SamplingDecision::Drop
        );
        assert_eq!(decide(&s, "vrsky.dead_letter", &[]), SamplingDecision::RecordAndSample);
        assert_eq!(decide(&s, "vrsky.replay", &[]), SamplingDecision::RecordAndSample);
        assert_eq!(
            decide(&s, "vrsky.claim", &[KeyValue::new(ATTEMPT, 2i64)]),
            SamplingDecision::RecordAndSample
        );
        assert_eq!(
            decide(&s, "vrsky.deliver", &[KeyValue::new(OUTCOME, "dead_letter")]),
            SamplingDecision::RecordAndSample
        );
        assert_eq!(
            decide(&s, "vrsky.deliver", &[KeyValue::new(OUTCOME, "completed")]),
            SamplingDecision::Drop
        );
        assert_eq!(
            decide(&s, "actor.start", &[KeyValue::new(ACTOR_NAME, "runtime")]),
            SamplingDecision::RecordAndSample
        );
    }

    #[test]
    fn names_and_ratios_are_checked() {
        assert!(VrskySampler::from_env_values(None, None).is_ok());
        assert!(VrskySampler::from_env_values(Some("traceidratio"), Some("0.25")).is_ok());
        assert!(VrskySampler::from_env_values(Some("traceidratio"), Some("2")).is_err());
        assert!(VrskySampler::from_env_values(Some("jaeger_remote"), None).is_err());
        let off = VrskySampler::from_env_values(Some("always_off"), None).unwrap();
        assert_eq!(
            off.should_sample(None, TraceId::from(1u128), "x", &SpanKind::Server, &[], &[])
                .decision,
            SamplingDecision::Drop
        );
    }
}
