//! Message journeys in OpenTelemetry: the span names, attributes and W3C trace context
//! every step of a message uses. Only the OpenTelemetry API is used here; the runtime
//! installs the SDK and exporter (`vrsky_runtime::telemetry`) when an OTLP endpoint is
//! configured, and calls [`set_enabled`]. Until then every function here is a cheap no-op:
//! no attribute is built and no span is started.
//!
//! One trace follows a message: the webhook's server span is its root, and its W3C
//! `traceparent` is stored in the envelope record, so a retry an hour later, a re-drive
//! after a crash and a replay from the dead-letter queue all continue that trace. On the
//! tenant's NATS the `traceparent` header names the publish span, so the worker's consumer
//! span is its child.

use std::sync::atomic::{AtomicBool, Ordering};

use opentelemetry::trace::{
    SpanContext, SpanId, SpanKind, TraceContextExt, TraceFlags, TraceId, TraceState, Tracer, TracerProvider,
};
use opentelemetry::{Context, KeyValue, global};

use crate::ids::{IntegrationId, MessageId, TenantId};

static ENABLED: AtomicBool = AtomicBool::new(false);

/// Instrumentation scope of every span VRSky makes.
pub const SCOPE: &str = "vrsky";

/// Span attribute: the message id.
pub const MESSAGE_ID: &str = "vrsky.message_id";
/// Span attribute: the tenant id.
pub const TENANT_ID: &str = "vrsky.tenant_id";
/// Span attribute: the integration id.
pub const INTEGRATION_ID: &str = "vrsky.integration_id";
/// Span attribute: the delivery attempt (1 for the first).
pub const ATTEMPT: &str = "vrsky.attempt";
/// Span attribute: where a step left the message (`completed`, `retry`, `dead_letter`, ...).
pub const OUTCOME: &str = "vrsky.outcome";
/// The low-cardinality name of a tenant integration's inbox subject
/// (`messaging.destination.template`, and the publish and process span names).
pub const INBOX_TEMPLATE: &str = "vrsky.t.{tenant}.i.{integration}.in";

/// Span names that are always recorded, whatever the sampler decides for the trace's root:
/// a message that ends in the dead-letter queue, and its replay, are always in a trace.
pub const ALWAYS_SAMPLED: [&str; 2] = [span::DEAD_LETTER, span::REPLAY];

/// The names of the journey's spans.
pub mod span {
    /// A state transition written to `message_state` (ingress's `received` write).
    pub const STORE_RECEIVED: &str = "vrsky.store received";
    /// The claim `received -> processing`.
    pub const CLAIM: &str = "vrsky.claim";
    /// The filters and converters.
    pub const PIPELINE: &str = "vrsky.pipeline";
    /// `completed` (or `filtered`) written.
    pub const COMPLETE: &str = "vrsky.complete";
    /// A failed attempt scheduled for retry.
    pub const RETRY_SCHEDULE: &str = "vrsky.retry.schedule";
    /// A due retry or an overdue message published again.
    pub const REDRIVE: &str = "vrsky.redrive";
    /// Moved to the dead-letter queue.
    pub const DEAD_LETTER: &str = "vrsky.dead_letter";
    /// Replayed from the dead-letter queue.
    pub const REPLAY: &str = "vrsky.replay";
}

/// Whether spans are exported (an OTLP endpoint is configured).
#[inline]
pub fn enabled() -> bool {
    ENABLED.load(Ordering::Relaxed)
}

static TRACER: std::sync::RwLock<Option<std::sync::Arc<global::BoxedTracer>>> = std::sync::RwLock::new(None);

/// Called by the runtime once its tracer provider is installed: the tracer is taken from
/// it then (looking it up per span cost the global provider's lock and an allocation),
/// and again at each later install.
pub fn set_enabled(on: bool) {
    if on {
        let t = std::sync::Arc::new(global::tracer_provider().tracer(SCOPE));
        *TRACER.write().unwrap_or_else(std::sync::PoisonError::into_inner) = Some(t);
    }
    ENABLED.store(on, Ordering::Relaxed);
}

/// The tracer of VRSky's spans: the provider's at the last [`set_enabled`], else the
/// global one.
pub fn tracer() -> std::sync::Arc<global::BoxedTracer> {
    if let Some(t) = TRACER
        .read()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
        .as_ref()
    {
        return t.clone();
    }
    std::sync::Arc::new(global::tracer_provider().tracer(SCOPE))
}

thread_local! {
    static PRESET_SPAN_ID: std::cell::Cell<Option<SpanId>> = const { std::cell::Cell::new(None) };
}

/// Runs `build` (which starts one span, on this thread) so that the span gets `id`: for a
/// span recorded after the fact whose id was already sent onward in a `traceparent`. The
/// runtime's id generator takes the id through [`take_preset_span_id`].
pub fn with_span_id<T>(id: SpanId, build: impl FnOnce() -> T) -> T {
    PRESET_SPAN_ID.with(|p| p.set(Some(id)));
    let out = build();
    PRESET_SPAN_ID.with(|p| p.set(None));
    out
}

/// The span id [`with_span_id`] set for the span being started on this thread, if any.
pub fn take_preset_span_id() -> Option<SpanId> {
    PRESET_SPAN_ID.with(std::cell::Cell::take)
}

/// Parses a W3C `traceparent` (version 00) into a remote span context.
pub fn parse_traceparent(tp: &str) -> Option<SpanContext> {
    let mut parts = tp.trim().split('-');
    let (version, trace, span, flags) = (parts.next()?, parts.next()?, parts.next()?, parts.next()?);
    if version != "00" || parts.next().is_some() || trace.len() != 32 || span.len() != 16 || flags.len() != 2 {
        return None;
    }
    let trace_id = TraceId::from_hex(trace).ok()?;
    let span_id = SpanId::from_hex(span).ok()?;
    let flags = u8::from_str_radix(flags, 16).ok()?;
    if trace_id == TraceId::INVALID || span_id == SpanId::INVALID {
        return None;
    }
    Some(SpanContext::new(
        trace_id,
        span_id,
        TraceFlags::new(flags & 1),
        true,
        TraceState::NONE,
    ))
}

/// The W3C `traceparent` of a span context.
pub fn traceparent(cx: &SpanContext) -> String {
    format!("00-{}-{}-{:02x}", cx.trace_id(), cx.span_id(), cx.trace_flags().to_u8())
}

/// A context whose parent is the remote span a `traceparent` names (the empty context if
/// it does not parse).
pub fn context_from(tp: Option<&str>) -> Context {
    match tp.and_then(parse_traceparent) {
        Some(sc) => Context::new().with_remote_span_context(sc),
        None => Context::new(),
    }
}

/// The three ids every span of a message journey carries.
pub fn journey_attributes(t: &TenantId, i: &IntegrationId, m: &MessageId) -> [KeyValue; 3] {
    [
        KeyValue::new(MESSAGE_ID, m.to_string()),
        KeyValue::new(TENANT_ID, t.to_string()),
        KeyValue::new(INTEGRATION_ID, i.to_string()),
    ]
}

/// Starts a span of a message's journey under `parent` (when telemetry is enabled) and
/// returns the context holding it; the span ends when the last clone of that context is
/// dropped or when [`end`] is called.
pub fn start(
    name: &'static str,
    kind: SpanKind,
    parent: &Context,
    ids: (&TenantId, &IntegrationId, &MessageId),
    extra: impl IntoIterator<Item = KeyValue>,
) -> Context {
    if !enabled() {
        return parent.clone();
    }
    let mut attrs: Vec<KeyValue> = journey_attributes(ids.0, ids.1, ids.2).into();
    attrs.extend(extra);
    let tracer = tracer();
    let span = tracer
        .span_builder(name)
        .with_kind(kind)
        .with_attributes(attrs)
        .start_with_context(&*tracer, parent);
    parent.with_span(span)
}

/// The parent for a step that has only the message's record at hand: the current context
/// if it holds a span (the step runs inside one), else the trace the record carries.
pub fn parent_for(record: Option<&bytes::Bytes>) -> Context {
    let current = Context::current();
    if current.has_active_span() || !enabled() {
        return current;
    }
    context_from(record.and_then(crate::message::trace_context_of).as_deref())
}

/// Ends the span `cx` holds, with a final attribute set.
pub fn end(cx: &Context, attrs: impl IntoIterator<Item = KeyValue>) {
    if !enabled() {
        return;
    }
    let span = cx.span();
    span.set_attributes(attrs);
    span.end();
}

/// The producer span of one publish on a tenant's NATS, under the current context; its
/// `traceparent` goes in the message's headers.
#[derive(Debug, Default)]
pub struct Hop {
    cx: Option<Context>,
    traceparent: Option<String>,
}

impl Hop {
    /// Starts the publish span of message `ids` (nothing when telemetry is off).
    pub fn publish(ids: (&TenantId, &IntegrationId, &MessageId)) -> Hop {
        if !enabled() {
            return Hop::default();
        }
        let cx = start(
            "send vrsky.t.{tenant}.i.{integration}.in",
            SpanKind::Producer,
            &Context::current(),
            ids,
            [
                KeyValue::new("messaging.system", "nats"),
                KeyValue::new("messaging.operation.type", "send"),
                KeyValue::new("messaging.operation.name", "publish"),
                KeyValue::new("messaging.destination.template", INBOX_TEMPLATE),
            ],
        );
        let traceparent = traceparent_of(&cx);
        Hop {
            cx: Some(cx),
            traceparent,
        }
    }

    /// The `traceparent` header value naming this publish.
    pub fn traceparent(&self) -> Option<&str> {
        self.traceparent.as_deref()
    }

    /// Ends the span with the publish's result.
    pub fn end(self, error: Option<&str>) {
        if let Some(cx) = self.cx {
            if let Some(e) = error {
                cx.span().set_status(opentelemetry::trace::Status::error(e.to_owned()));
            }
            end(&cx, []);
        }
    }
}

/// The `traceparent` for a hop leaving `cx`'s span (a NATS publish, an HTTP delivery).
pub fn traceparent_of(cx: &Context) -> Option<String> {
    let span = cx.span();
    let sc = span.span_context();
    sc.is_valid().then(|| traceparent(sc))
}

/// The trace and span ids for a log line: those of `cx`'s span when it is valid, else
/// those the message's stored `traceparent` names (so logs join traces even when no
/// exporter is configured). Empty strings when neither is known.
pub fn log_ids(cx: &Context, stored: Option<&str>) -> (String, String) {
    let span = cx.span();
    let sc = span.span_context();
    if sc.is_valid() {
        return (sc.trace_id().to_string(), sc.span_id().to_string());
    }
    match stored.and_then(parse_traceparent) {
        Some(sc) => (sc.trace_id().to_string(), sc.span_id().to_string()),
        None => (String::new(), String::new()),
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn traceparents_round_trip_and_bad_ones_are_refused() {
        let tp = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";
        let sc = parse_traceparent(tp).unwrap();
        assert!(sc.is_sampled() && sc.is_remote());
        assert_eq!(traceparent(&sc), tp);
        let unsampled = parse_traceparent("00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-00").unwrap();
        assert!(!unsampled.is_sampled());
        for bad in [
            "",
            "garbage",
            "01-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
            "00-00000000000000000000000000000000-00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-0000000000000000-01",
            "00-4bf92f3577b34da6a3ce929d0e0e473-00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01-extra",
        ] {
            assert!(parse_traceparent(bad).is_none(), "{bad}");
        }
    }

    #[test]
    fn without_a_provider_nothing_is_started_and_log_ids_come_from_the_stored_context() {
        let t = TenantId::new("acme").unwrap();
        let i = IntegrationId::new("orders").unwrap();
        let m = MessageId::generate();
        let cx = start(span::CLAIM, SpanKind::Internal, &Context::new(), (&t, &i, &m), []);
        assert!(!cx.has_active_span());
        let tp = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";
        assert_eq!(
            log_ids(&cx, Some(tp)),
            ("4bf92f3577b34da6a3ce929d0e0e4736".into(), "00f067aa0ba902b7".into())
        );
        assert_eq!(log_ids(&cx, None), (String::new(), String::new()));
    }
}
