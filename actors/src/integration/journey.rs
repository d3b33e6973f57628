//! The worker's spans of a message journey: the consumer span (a child of the publish
//! span the NATS `traceparent` header names), the filters and converters, and each
//! delivery attempt as an HTTP client span. The attempt span is made after the outcome is
//! known, with its start time and a span id chosen before the request (so the
//! destination's `traceparent` names it): a tail decision, so the sampler sees
//! `vrsky.outcome` and always records an attempt that dead-lettered its message.

use std::time::SystemTime;

use opentelemetry::trace::{SpanId, SpanKind, TraceContextExt, Tracer};
use opentelemetry::{Context, KeyValue};

use crate::message::MessageState;
use crate::telemetry::{self, ATTEMPT, INBOX_TEMPLATE, OUTCOME};
use crate::wire::Claimable;

/// The consumer span of one claim attempt, under the publish that carried it (or the
/// stored trace when the header is missing). The empty context when telemetry is off.
pub(super) fn consumer(msg: &async_nats::Message, claim: &Claimable) -> Context {
    if !telemetry::enabled() {
        return Context::new();
    }
    let header = msg
        .headers
        .as_ref()
        .and_then(|h| h.get(crate::wire::H_TRACEPARENT))
        .map(|v| v.as_str().to_owned());
    let parent = telemetry::context_from(header.as_deref().or(claim.envelope.trace_context.as_deref()));
    let s = &claim.state;
    telemetry::start(
        "process vrsky.t.{tenant}.i.{integration}.in",
        SpanKind::Consumer,
        &parent,
        (&s.tenant_id, &s.integration_id, &s.message_id),
        [
            KeyValue::new("messaging.system", "nats"),
            KeyValue::new("messaging.operation.type", "process"),
            KeyValue::new("messaging.operation.name", "process"),
            KeyValue::new("messaging.destination.template", INBOX_TEMPLATE),
            KeyValue::new(
                "messaging.consumer.group.name",
                crate::subjects::integration_queue_group(&s.integration_id),
            ),
            KeyValue::new("messaging.message.body.size", claim.envelope.payload_len() as i64),
            KeyValue::new(ATTEMPT, i64::from(s.next_attempt())),
        ],
    )
}

/// Runs the filters and converters in their own span (none when there are none).
pub(super) fn pipeline<T>(
    empty: bool,
    cx: &Context,
    s: &MessageState,
    run: impl FnOnce() -> T,
    outcome: impl Fn(&T) -> &'static str,
) -> T {
    if empty || !telemetry::enabled() {
        return run();
    }
    let span_cx = telemetry::start(
        telemetry::span::PIPELINE,
        SpanKind::Internal,
        cx,
        (&s.tenant_id, &s.integration_id, &s.message_id),
        [],
    );
    let out = run();
    telemetry::end(&span_cx, [KeyValue::new(OUTCOME, outcome(&out))]);
    out
}

/// A delivery attempt whose span is recorded once its outcome is known.
pub(super) struct Attempt {
    span_id: SpanId,
    start: SystemTime,
    end: SystemTime,
    /// The `traceparent` the destination gets: this attempt's span.
    pub(super) traceparent: String,
}

impl Attempt {
    /// Chooses the attempt's span id under `cx`'s span (`None` when telemetry is off or no
    /// span is active).
    pub(super) fn begin(cx: &Context) -> Option<Attempt> {
        if !telemetry::enabled() {
            return None;
        }
        let span = cx.span();
        let sc = span.span_context();
        if !sc.is_valid() {
            return None;
        }
        let span_id = SpanId::from_bytes(uuid::Uuid::new_v4().as_u64_pair().0.max(1).to_be_bytes());
        let traceparent = format!("00-{}-{span_id}-{:02x}", sc.trace_id(), sc.trace_flags().to_u8());
        let now = SystemTime::now();
        Some(Attempt {
            span_id,
            start: now,
            end: now,
            traceparent,
        })
    }

    /// Marks the end of the HTTP exchange.
    pub(super) fn ended(&mut self) {
        self.end = SystemTime::now();
    }

    /// Records the span: `status` the destination's answer, `error` the failure's kind,
    /// `outcome` where the commit left the message.
    pub(super) fn finish(
        self,
        cx: &Context,
        s: &MessageState,
        status: Option<u16>,
        error: Option<&'static str>,
        outcome: &'static str,
    ) {
        let mut attrs: Vec<KeyValue> =
            telemetry::journey_attributes(&s.tenant_id, &s.integration_id, &s.message_id).into();
        attrs.push(KeyValue::new(ATTEMPT, i64::from(s.next_attempt())));
        attrs.push(KeyValue::new(OUTCOME, outcome));
        if let Some(code) = status {
            attrs.push(KeyValue::new("http.response.status_code", i64::from(code)));
        }
        if let Some(kind) = error {
            attrs.push(KeyValue::new("error.type", kind));
        }
        let tracer = telemetry::tracer();
        let mut span = telemetry::with_span_id(self.span_id, || {
            tracer
                .span_builder("vrsky.deliver")
                .with_kind(SpanKind::Client)
                .with_start_time(self.start)
                .with_attributes(attrs)
                .start_with_context(&*tracer, cx)
        });
        opentelemetry::trace::Span::end_with_timestamp(&mut span, self.end);
    }
}
