//! The one generic supervisor: starts children from [`ChildSpec`]s and applies their
//! restart policy when they exit.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use futures::future::BoxFuture;
use opentelemetry::trace::{Span as _, SpanContext};
use ractor::rpc::CallResult;
use ractor::{Actor, ActorCell, ActorId, ActorProcessingErr, ActorRef, RpcReplyPort, SupervisionEvent};
use tokio::time::Instant;
use tracing::{error, info, warn};

use crate::telemetry;

use crate::events::{TreeEventKind, TreeEvents};
use crate::spec::{ChildKind, ChildSpec, ExitKind};
use crate::state::{ChildRecord, Decision};
use crate::tree::TreeNode;

/// How long a supervisor waits for a nested supervisor's subtree when listing the tree.
const TREE_CALL_TIMEOUT: Duration = Duration::from_secs(2);
/// How long a supervisor waits for its children to stop when it stops or escalates.
const STOP_CHILDREN_TIMEOUT: Duration = Duration::from_secs(10);

/// Produces the children a supervisor starts with. Called on every (re)start of the
/// supervisor, so a restarted subtree is rebuilt from the current desired state rather
/// than from a snapshot taken at first start.
pub type ChildSource = Arc<dyn Fn() -> BoxFuture<'static, Result<Vec<ChildSpec>, ChildSourceError>> + Send + Sync>;

/// Why a [`ChildSource`] could not produce the children (the desired state could not be
/// read); the supervisor fails to start and its own supervisor applies its policy.
pub type ChildSourceError = Box<dyn std::error::Error + Send + Sync>;

/// Errors a supervisor reports to callers.
#[derive(Debug, thiserror::Error)]
pub enum SupervisorError {
    /// A child with this name exists already.
    #[error("child {0} already exists")]
    DuplicateChild(String),
    /// The child's start function failed.
    #[error("child {name} failed to start: {reason}")]
    StartFailed {
        /// The child's name.
        name: String,
        /// The spawn error, as text.
        reason: String,
    },
    /// The supervisor did not answer (stopped, or timed out).
    #[error("supervisor unavailable: {0}")]
    Unavailable(String),
}

/// Messages a supervisor accepts.
#[derive(Debug)]
pub enum SupervisorMsg {
    /// Start a new child and keep it supervised.
    StartChild(ChildSpec, RpcReplyPort<Result<ActorCell, SupervisorError>>),
    /// Stop a child for good (no restart); replies whether it existed.
    StopChild(String, RpcReplyPort<bool>),
    /// The running cell of a child, if it is running now.
    GetChild(String, RpcReplyPort<Option<ActorCell>>),
    /// This supervisor's subtree.
    GetTree(RpcReplyPort<TreeNode>),
    /// A delayed restart is due (sent to itself).
    RestartDue {
        /// Child name.
        name: String,
        /// Which exit this restart answers; stale timers are ignored.
        generation: u64,
    },
}

/// Arguments of a [`Supervisor`].
#[derive(Clone)]
pub struct SupervisorArgs {
    /// Name shown in the tree (for example `runtime` or `tenant:acme`).
    pub name: String,
    /// The children started with the supervisor.
    pub children: ChildSource,
    /// The span of this supervisor's own start, parent of its children's spans (see
    /// [`crate::telemetry`]); `None` makes the supervisor start a root span for itself.
    pub span: Option<SpanContext>,
    /// Where the tree's changes go ([`TreeEvents`]); a nested supervisor inherits its
    /// parent's, whatever this says.
    pub events: Option<TreeEvents>,
    /// The names from the root to this supervisor's parent (empty for a root); a nested
    /// supervisor inherits it.
    pub path: Vec<String>,
}

impl SupervisorArgs {
    /// A supervisor that starts with no children.
    pub fn empty(name: impl Into<String>) -> Self {
        SupervisorArgs {
            name: name.into(),
            children: Arc::new(|| Box::pin(async { Ok(Vec::new()) })),
            span: None,
            events: None,
            path: Vec::new(),
        }
    }

    /// The same arguments, sending the tree's changes to `events`.
    pub fn with_events(mut self, events: TreeEvents) -> Self {
        self.events = Some(events);
        self
    }
}

/// The generic supervisor actor.
#[derive(Debug, Default, Clone, Copy)]
pub struct Supervisor;

struct Child {
    spec: ChildSpec,
    cell: Option<ActorCell>,
    record: ChildRecord,
    generation: u64,
    /// The span of its last start, linked from the next restart's.
    span: Option<SpanContext>,
}

/// State of a running supervisor.
pub struct SupervisorState {
    name: String,
    /// Children in start order. Bound: whatever callers add; each entry is a few hundred
    /// bytes and removed when the child is stopped for good.
    children: Vec<Child>,
    by_id: HashMap<ActorId, usize>,
    /// The span of this supervisor's start.
    span: SpanContext,
    /// The tree's change stream.
    events: Option<TreeEvents>,
    /// The names from the root to this supervisor, its own included.
    path: Vec<String>,
}

impl SupervisorState {
    fn index(&self, name: &str) -> Option<usize> {
        self.children.iter().position(|c| c.spec.name == name)
    }

    /// Sends a change of child `idx` to the tree's stream.
    fn emit(&self, kind: TreeEventKind, idx: usize, reason: Option<String>) {
        let Some(events) = &self.events else { return };
        let c = &self.children[idx];
        let actor_id = c.cell.as_ref().map(|cell| cell.get_id().to_string());
        events.emit(
            kind,
            &self.path,
            &c.spec.name,
            actor_id,
            c.record.restarts_total,
            reason,
        );
    }

    fn reindex(&mut self) {
        self.by_id = self
            .children
            .iter()
            .enumerate()
            .filter_map(|(i, c)| c.cell.as_ref().map(|cell| (cell.get_id(), i)))
            .collect();
    }
}

impl Supervisor {
    /// Starts a child in a span under this supervisor's (see [`crate::telemetry`]);
    /// `previous` is the span of the start a restart replaces.
    async fn start_child(
        myself: &ActorRef<SupervisorMsg>,
        state: &SupervisorState,
        spec: &ChildSpec,
        restarts: u32,
        previous: Option<&SpanContext>,
    ) -> (Result<ActorCell, SupervisorError>, SpanContext) {
        let span = telemetry::begin(Some(&state.span), &spec.name, restarts, previous);
        let span_cx = span.span_context().clone();
        let start = spec.start.clone();
        let cell = myself.get_cell();
        let inherited = telemetry::Inherited {
            span: span_cx.clone(),
            events: state.events.clone(),
            path: state.path.clone(),
        };
        let result = telemetry::starting(myself.get_id(), inherited, move || start(cell))
            .await
            .map_err(|e| SupervisorError::StartFailed {
                name: spec.name.clone(),
                reason: e.to_string(),
            });
        match &result {
            Ok(cell) => telemetry::end(span, Ok(&cell.get_id())),
            Err(e) => telemetry::end(span, Err(&e.to_string())),
        }
        (result, span_cx)
    }

    /// Applies the child's policy after it exited (or failed to restart).
    async fn after_exit(
        myself: &ActorRef<SupervisorMsg>,
        state: &mut SupervisorState,
        idx: usize,
        kind: ExitKind,
        reason: String,
    ) -> Result<(), ActorProcessingErr> {
        let sup = state.name.clone();
        let child = &mut state.children[idx];
        child.record.last_exit = Some(reason.clone());
        let decision = child.record.on_exit(&child.spec, kind, Instant::now());
        // Sent while the cell is still the one that exited, so the event names it.
        // Escalating, the supervisor stops every child and fails: not restarted either.
        let gone = matches!(decision, Decision::Remove | Decision::Escalate { .. });
        state.emit(
            if gone {
                TreeEventKind::Stopped
            } else {
                TreeEventKind::Exited
            },
            idx,
            Some(reason.clone()),
        );
        let child = &mut state.children[idx];
        child.cell = None;
        let name = child.spec.name.clone();
        match decision {
            Decision::Remove => {
                info!(supervisor = %sup, child = %name, reason = %reason, "child exited; not restarted");
                state.children.remove(idx);
                state.reindex();
            }
            Decision::RestartAfter(delay) => {
                child.generation += 1;
                let generation = child.generation;
                warn!(supervisor = %sup, child = %name, reason = %reason, delay_ms = delay.as_millis() as u64,
                    restarts = child.record.restarts_total, "child exited; restarting");
                if delay.is_zero() {
                    myself.send_message(SupervisorMsg::RestartDue { name, generation })?;
                } else {
                    myself.send_after(delay, move || SupervisorMsg::RestartDue { name, generation });
                }
            }
            Decision::Escalate { restarts, window } => {
                error!(supervisor = %sup, child = %name, restarts, window_s = window.as_secs(),
                    "restart intensity exceeded; escalating");
                myself
                    .stop_children_and_wait(Some("supervisor escalating".into()), Some(STOP_CHILDREN_TIMEOUT))
                    .await;
                return Err(format!(
                    "supervisor {sup}: child {name} exceeded its restart intensity ({restarts} restarts in {}s)",
                    window.as_secs()
                )
                .into());
            }
        }
        Ok(())
    }

    async fn tree(state: &SupervisorState, myself: &ActorRef<SupervisorMsg>) -> TreeNode {
        let mut children = Vec::with_capacity(state.children.len());
        for child in &state.children {
            let mut node = TreeNode {
                name: child.spec.name.clone(),
                actor_id: child.cell.as_ref().map(|c| c.get_id().to_string()),
                kind: child.spec.kind,
                restart: child.spec.restart,
                running: child.cell.is_some(),
                restarts: child.record.restarts_total,
                last_exit: child.record.last_exit.clone(),
                children: Vec::new(),
            };
            if let (ChildKind::Supervisor, Some(cell)) = (child.spec.kind, &child.cell) {
                let sub: ActorRef<SupervisorMsg> = cell.clone().into();
                if let Ok(CallResult::Success(subtree)) =
                    sub.call(SupervisorMsg::GetTree, Some(TREE_CALL_TIMEOUT)).await
                {
                    node.children = subtree.children;
                }
            }
            children.push(node);
        }
        TreeNode {
            name: state.name.clone(),
            actor_id: Some(myself.get_id().to_string()),
            kind: ChildKind::Supervisor,
            restart: crate::Restart::Permanent,
            running: true,
            restarts: 0,
            last_exit: None,
            children,
        }
    }
}

impl Actor for Supervisor {
    type Msg = SupervisorMsg;
    type State = SupervisorState;
    type Arguments = SupervisorArgs;

    async fn pre_start(
        &self,
        myself: ActorRef<Self::Msg>,
        args: SupervisorArgs,
    ) -> Result<Self::State, ActorProcessingErr> {
        let specs = (args.children)().await?;
        let span = match args.span {
            Some(s) => s,
            // A root: its own start is the tree's root span.
            None => {
                let root = telemetry::begin(None, &args.name, 0, None);
                let cx = root.span_context().clone();
                telemetry::end(root, Ok(&myself.get_id()));
                cx
            }
        };
        let mut path = args.path;
        path.push(args.name.clone());
        let mut state = SupervisorState {
            name: args.name,
            children: Vec::with_capacity(specs.len()),
            by_id: HashMap::new(),
            span,
            events: args.events,
            path,
        };
        for spec in specs {
            // A child that cannot start is retried under its own policy rather than
            // failing the whole supervisor.
            let (started, span) = Self::start_child(&myself, &state, &spec, 0, None).await;
            let (cell, exit) = match started {
                Ok(cell) => (Some(cell), None),
                Err(e) => (None, Some(e.to_string())),
            };
            state.children.push(Child {
                spec,
                cell,
                record: ChildRecord::new(),
                generation: 0,
                span: Some(span),
            });
            let idx = state.children.len() - 1;
            match exit {
                None => state.emit(TreeEventKind::Spawned, idx, None),
                Some(reason) => Self::after_exit(&myself, &mut state, idx, ExitKind::Abnormal, reason).await?,
            }
        }
        state.reindex();
        Ok(state)
    }

    async fn post_stop(&self, myself: ActorRef<Self::Msg>, _state: &mut Self::State) -> Result<(), ActorProcessingErr> {
        myself
            .stop_children_and_wait(Some("supervisor stopping".into()), Some(STOP_CHILDREN_TIMEOUT))
            .await;
        Ok(())
    }

    async fn handle(
        &self,
        myself: ActorRef<Self::Msg>,
        msg: Self::Msg,
        state: &mut Self::State,
    ) -> Result<(), ActorProcessingErr> {
        match msg {
            SupervisorMsg::StartChild(spec, reply) => {
                if state.index(&spec.name).is_some() {
                    let _ = reply.send(Err(SupervisorError::DuplicateChild(spec.name)));
                    return Ok(());
                }
                let (result, span) = Self::start_child(&myself, state, &spec, 0, None).await;
                if let Ok(cell) = &result {
                    state.by_id.insert(cell.get_id(), state.children.len());
                    state.children.push(Child {
                        spec,
                        cell: Some(cell.clone()),
                        record: ChildRecord::new(),
                        generation: 0,
                        span: Some(span),
                    });
                    state.emit(TreeEventKind::Spawned, state.children.len() - 1, None);
                }
                let _ = reply.send(result);
            }
            SupervisorMsg::StopChild(name, reply) => {
                let Some(idx) = state.index(&name) else {
                    let _ = reply.send(false);
                    return Ok(());
                };
                state.emit(TreeEventKind::Stopped, idx, Some("stopped by supervisor".into()));
                let child = state.children.remove(idx);
                state.reindex();
                if let Some(cell) = child.cell {
                    cell.unlink(myself.get_cell());
                    let _ = cell
                        .stop_and_wait(Some("stopped by supervisor".into()), Some(STOP_CHILDREN_TIMEOUT))
                        .await;
                }
                let _ = reply.send(true);
            }
            SupervisorMsg::GetChild(name, reply) => {
                let cell = state.index(&name).and_then(|i| state.children[i].cell.clone());
                let _ = reply.send(cell);
            }
            SupervisorMsg::GetTree(reply) => {
                let _ = reply.send(Self::tree(state, &myself).await);
            }
            SupervisorMsg::RestartDue { name, generation } => {
                let Some(idx) = state.index(&name) else {
                    return Ok(());
                };
                let child = &state.children[idx];
                if child.generation != generation || child.cell.is_some() {
                    return Ok(());
                }
                let (started, span) = Self::start_child(
                    &myself,
                    state,
                    &child.spec,
                    child.record.restarts_total,
                    child.span.as_ref(),
                )
                .await;
                state.children[idx].span = Some(span);
                match started {
                    Ok(cell) => {
                        state.children[idx].cell = Some(cell);
                        state.reindex();
                        state.emit(TreeEventKind::Restarted, idx, None);
                    }
                    Err(e) => {
                        Self::after_exit(&myself, state, idx, ExitKind::Abnormal, e.to_string()).await?;
                    }
                }
            }
        }
        Ok(())
    }

    async fn handle_supervisor_evt(
        &self,
        myself: ActorRef<Self::Msg>,
        event: SupervisionEvent,
        state: &mut Self::State,
    ) -> Result<(), ActorProcessingErr> {
        let (cell, kind, reason) = match event {
            SupervisionEvent::ActorTerminated(cell, _, reason) => {
                let killed = reason.as_deref() == Some("killed");
                let kind = if killed { ExitKind::Abnormal } else { ExitKind::Normal };
                (cell, kind, reason.unwrap_or_else(|| "stopped".into()))
            }
            SupervisionEvent::ActorFailed(cell, err) => (cell, ExitKind::Abnormal, format!("failed: {err}")),
            _ => return Ok(()),
        };
        let Some(idx) = state.by_id.remove(&cell.get_id()) else {
            // A child we already stopped for good, or a grandchild event; nothing to do.
            return Ok(());
        };
        Self::after_exit(&myself, state, idx, kind, reason).await?;
        state.reindex();
        Ok(())
    }
}

/// Spawns a top-level supervisor (no parent).
pub async fn spawn_root(
    args: SupervisorArgs,
) -> Result<(ActorRef<SupervisorMsg>, tokio::task::JoinHandle<()>), ractor::SpawnErr> {
    Actor::spawn(None, Supervisor, args).await
}

/// A [`ChildSpec`] that starts a nested [`Supervisor`] with the given arguments.
pub fn supervisor_child(args: SupervisorArgs) -> ChildSpec {
    let name = args.name.clone();
    ChildSpec::worker(name, move |parent| {
        let mut args = args.clone();
        if let Some(inherited) = telemetry::current_start(&parent.get_id()) {
            args.span = Some(inherited.span);
            args.events = inherited.events;
            args.path = inherited.path;
        }
        async move {
            let (sup, _) = Actor::spawn_linked(None, Supervisor, args, parent).await?;
            Ok(sup.get_cell())
        }
    })
    .supervisor()
}

/// Convenience calls on a supervisor reference.
pub trait SupervisorExt {
    /// Starts a child under this supervisor.
    fn start_child(
        &self,
        spec: ChildSpec,
    ) -> impl std::future::Future<Output = Result<ActorCell, SupervisorError>> + Send;
    /// Stops a child for good; returns whether it existed.
    fn stop_child(&self, name: &str) -> impl std::future::Future<Output = Result<bool, SupervisorError>> + Send;
    /// The running cell of a child.
    fn child(&self, name: &str)
    -> impl std::future::Future<Output = Result<Option<ActorCell>, SupervisorError>> + Send;
    /// The subtree rooted here.
    fn tree(&self) -> impl std::future::Future<Output = Result<TreeNode, SupervisorError>> + Send;
}

fn unwrap_call<T, M>(r: Result<CallResult<T>, ractor::MessagingErr<M>>) -> Result<T, SupervisorError> {
    match r {
        Ok(CallResult::Success(v)) => Ok(v),
        Ok(CallResult::Timeout) => Err(SupervisorError::Unavailable("timed out".into())),
        Ok(CallResult::SenderError) => Err(SupervisorError::Unavailable("no reply".into())),
        Err(e) => Err(SupervisorError::Unavailable(e.to_string())),
    }
}

/// Upper bound on control calls; starting a child may wait for a process to come up.
const CONTROL_CALL_TIMEOUT: Duration = Duration::from_secs(60);

impl SupervisorExt for ActorRef<SupervisorMsg> {
    async fn start_child(&self, spec: ChildSpec) -> Result<ActorCell, SupervisorError> {
        unwrap_call(
            self.call(|r| SupervisorMsg::StartChild(spec, r), Some(CONTROL_CALL_TIMEOUT))
                .await,
        )?
    }

    async fn stop_child(&self, name: &str) -> Result<bool, SupervisorError> {
        let name = name.to_owned();
        unwrap_call(
            self.call(|r| SupervisorMsg::StopChild(name, r), Some(CONTROL_CALL_TIMEOUT))
                .await,
        )
    }

    async fn child(&self, name: &str) -> Result<Option<ActorCell>, SupervisorError> {
        let name = name.to_owned();
        unwrap_call(
            self.call(|r| SupervisorMsg::GetChild(name, r), Some(CONTROL_CALL_TIMEOUT))
                .await,
        )
    }

    async fn tree(&self) -> Result<TreeNode, SupervisorError> {
        unwrap_call(self.call(SupervisorMsg::GetTree, Some(CONTROL_CALL_TIMEOUT)).await)
    }
}
