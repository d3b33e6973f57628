//! The supervision tree in OpenTelemetry traces: each child's start and restart is a span
//! (`actor.start`, `actor.restart`) whose parent is the span of its supervisor's own
//! start, so a trace viewer draws the live tree. The span ends as soon as the child is
//! running, so it is exported within the exporter's batch delay, not when the actor
//! stops. A restart links to the span of the start it replaces. Without a tracer provider
//! installed these are the API's no-op spans.

use std::collections::HashMap;
use std::sync::{Mutex, PoisonError};

use opentelemetry::trace::{Link, Span, SpanContext, SpanKind, TraceContextExt, Tracer, TracerProvider};
use opentelemetry::{Context, KeyValue, global};
use ractor::ActorId;

/// Span attribute: the child's name in the tree (`runtime`, `tenant:acme`, ...).
pub const ACTOR_NAME: &str = "actor.name";
/// Span attribute: what the actor is, the name before its `:` (`tenant`, `integration`).
pub const ACTOR_KIND: &str = "actor.kind";
/// Span attribute: the ractor actor id of the started actor.
pub const ACTOR_ID: &str = "actor.id";
/// Span attribute: how often this child has been restarted before this start.
pub const ACTOR_RESTART_COUNT: &str = "actor.restart_count";

/// What a nested supervisor inherits from the supervisor starting it.
#[derive(Debug, Clone)]
pub struct Inherited {
    /// The span of its start, parent of its children's spans.
    pub span: SpanContext,
    /// The tree's change stream.
    pub events: Option<crate::TreeEvents>,
    /// The names from the root to the supervisor starting it.
    pub path: Vec<String>,
}

/// What children being started inherit, by the id of the supervisor starting them, so a
/// nested supervisor picks up its own start span as the parent of its children, and the
/// tree's change stream (a supervisor starts one child at a time, so one entry per
/// supervisor suffices).
static STARTING: Mutex<Option<HashMap<ActorId, Inherited>>> = Mutex::new(None);

/// What an actor is, from its tree name.
pub fn kind_of(name: &str) -> &str {
    name.split(':').next().unwrap_or(name)
}

/// Starts the span of a child's start under `parent` (a root span when `None`).
pub(crate) fn begin(
    parent: Option<&SpanContext>,
    name: &str,
    restarts: u32,
    replaces: Option<&SpanContext>,
) -> global::BoxedSpan {
    let tracer = global::tracer_provider().tracer("vrsky.supervision");
    let cx = match parent {
        Some(p) if p.is_valid() => Context::new().with_remote_span_context(p.clone()),
        _ => Context::new(),
    };
    let mut builder = tracer
        .span_builder(if replaces.is_some() {
            "actor.restart"
        } else {
            "actor.start"
        })
        .with_kind(SpanKind::Internal)
        .with_attributes([
            KeyValue::new(ACTOR_NAME, name.to_owned()),
            KeyValue::new(ACTOR_KIND, kind_of(name).to_owned()),
            KeyValue::new(ACTOR_RESTART_COUNT, i64::from(restarts)),
        ]);
    if let Some(r) = replaces.filter(|r| r.is_valid()) {
        builder = builder.with_links(vec![Link::with_context(r.clone())]);
    }
    builder.start_with_context(&tracer, &cx)
}

/// Ends a child's start span with the started actor's id (or the error).
pub(crate) fn end(mut span: global::BoxedSpan, started: Result<&ActorId, &str>) {
    match started {
        Ok(id) => span.set_attribute(KeyValue::new(ACTOR_ID, id.to_string())),
        Err(e) => span.set_status(opentelemetry::trace::Status::error(e.to_owned())),
    }
    span.end();
}

/// Runs `start` with `inherited` registered for what `supervisor` is starting.
/// (`start` is called after the registration: a start function reads it when called.)
pub(crate) async fn starting<T, F: Future<Output = T>>(
    supervisor: ActorId,
    inherited: Inherited,
    start: impl FnOnce() -> F,
) -> T {
    /// Removes the entry however the start ends (a panic or a dropped future included).
    struct Registered(ActorId);
    impl Drop for Registered {
        fn drop(&mut self) {
            with_map(|m| m.remove(&self.0));
        }
    }
    with_map(|m| m.insert(supervisor, inherited));
    let _registered = Registered(supervisor);
    start().await
}

/// What the child `supervisor` is starting now inherits (for a nested supervisor's args).
pub fn current_start(supervisor: &ActorId) -> Option<Inherited> {
    with_map(|m| m.get(supervisor).cloned())
}

fn with_map<T>(f: impl FnOnce(&mut HashMap<ActorId, Inherited>) -> T) -> T {
    let mut guard = STARTING.lock().unwrap_or_else(PoisonError::into_inner);
    f(guard.get_or_insert_with(HashMap::new))
}
