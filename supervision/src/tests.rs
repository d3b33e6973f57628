//! Actor tests: real ractor actors under a real supervisor, paused tokio clock.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::sync::Arc;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;

use ractor::{Actor, ActorProcessingErr, ActorRef, ActorStatus};

use crate::*;

struct Worker;

enum WorkerMsg {
    Fail,
    Stop,
}

impl Actor for Worker {
    type Msg = WorkerMsg;
    type State = ();
    type Arguments = Arc<AtomicU32>;

    async fn pre_start(&self, _myself: ActorRef<WorkerMsg>, starts: Arc<AtomicU32>) -> Result<(), ActorProcessingErr> {
        starts.fetch_add(1, Ordering::SeqCst);
        Ok(())
    }

    async fn handle(
        &self,
        myself: ActorRef<WorkerMsg>,
        msg: WorkerMsg,
        _state: &mut (),
    ) -> Result<(), ActorProcessingErr> {
        match msg {
            WorkerMsg::Fail => Err("boom".into()),
            WorkerMsg::Stop => {
                myself.stop(None);
                Ok(())
            }
        }
    }
}

fn worker_spec(name: &str, starts: Arc<AtomicU32>) -> ChildSpec {
    ChildSpec::worker(name, move |sup| {
        let starts = starts.clone();
        async move {
            let (r, _) = Actor::spawn_linked(None, Worker, starts, sup).await?;
            Ok(r.get_cell())
        }
    })
    .backoff(Backoff {
        initial: Duration::from_secs(1),
        max: Duration::from_secs(8),
    })
}

async fn running_child(sup: &ActorRef<SupervisorMsg>, name: &str) -> ActorRef<WorkerMsg> {
    for _ in 0..200 {
        if let Some(cell) = sup.child(name).await.unwrap() {
            return cell.into();
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("child {name} never came back");
}

/// Lets spawned tasks and mailboxes run without moving the paused clock much.
async fn settle() {
    for _ in 0..20 {
        tokio::task::yield_now().await;
    }
}

#[tokio::test(start_paused = true)]
async fn permanent_child_is_restarted_after_backoff() {
    let starts = Arc::new(AtomicU32::new(0));
    let (sup, _) = spawn_root(SupervisorArgs::empty("root")).await.unwrap();
    sup.start_child(worker_spec("w", starts.clone())).await.unwrap();
    assert_eq!(starts.load(Ordering::SeqCst), 1);

    running_child(&sup, "w").await.send_message(WorkerMsg::Fail).unwrap();
    settle().await;
    // Backoff is 1 s: not restarted yet.
    assert!(sup.child("w").await.unwrap().is_none());
    assert_eq!(starts.load(Ordering::SeqCst), 1);
    tokio::time::sleep(Duration::from_millis(1100)).await;
    running_child(&sup, "w").await;
    assert_eq!(starts.load(Ordering::SeqCst), 2);

    let tree = sup.tree().await.unwrap();
    let node = tree.find("w").unwrap();
    assert_eq!(node.restarts, 1);
    assert!(node.last_exit.as_deref().unwrap().contains("boom"));
    sup.stop_and_wait(None, None).await.unwrap();
}

/// Each start is a span under the supervisor's; a restart is `actor.restart`, linked to
/// the start it replaces.
#[tokio::test(start_paused = true)]
async fn starts_and_restarts_are_spans_under_the_supervisor_linked_to_what_they_replace() {
    let exporter = opentelemetry_sdk::trace::InMemorySpanExporter::default();
    let provider = opentelemetry_sdk::trace::SdkTracerProvider::builder()
        .with_simple_exporter(exporter.clone())
        .build();
    opentelemetry::global::set_tracer_provider(provider);
    let starts = Arc::new(AtomicU32::new(0));
    let (sup, _) = spawn_root(SupervisorArgs::empty("traced-root")).await.unwrap();
    sup.start_child(worker_spec("traced-w", starts.clone())).await.unwrap();
    running_child(&sup, "traced-w")
        .await
        .send_message(WorkerMsg::Fail)
        .unwrap();
    settle().await;
    tokio::time::sleep(Duration::from_millis(1100)).await;
    running_child(&sup, "traced-w").await;
    let spans = exporter.get_finished_spans().unwrap();
    let named = |n: &str| -> Vec<_> {
        spans
            .iter()
            .filter(|s| {
                s.attributes
                    .iter()
                    .any(|kv| kv.key.as_str() == telemetry::ACTOR_NAME && kv.value.as_str() == n)
            })
            .cloned()
            .collect()
    };
    let root = named("traced-root");
    let w = named("traced-w");
    assert_eq!(root.len(), 1);
    assert_eq!(w.len(), 2, "a start and a restart");
    assert_eq!(
        (w[0].name.as_ref(), w[1].name.as_ref()),
        ("actor.start", "actor.restart")
    );
    for s in &w {
        assert_eq!(
            s.parent_span_id,
            root[0].span_context.span_id(),
            "under the supervisor's span"
        );
        assert_eq!(s.span_context.trace_id(), root[0].span_context.trace_id());
    }
    assert_eq!(w[1].links.links.len(), 1);
    assert_eq!(
        w[1].links.links[0].span_context.span_id(),
        w[0].span_context.span_id(),
        "the restart links to the start it replaces"
    );
    let count = |s: &opentelemetry_sdk::trace::SpanData| {
        s.attributes
            .iter()
            .find(|kv| kv.key.as_str() == telemetry::ACTOR_RESTART_COUNT)
            .map(|kv| kv.value.clone())
    };
    assert_eq!(count(&w[1]), Some(opentelemetry::Value::I64(1)));
    sup.stop_and_wait(None, None).await.unwrap();
}

#[tokio::test(start_paused = true)]
async fn transient_child_stopping_normally_is_not_restarted() {
    let starts = Arc::new(AtomicU32::new(0));
    let (sup, _) = spawn_root(SupervisorArgs::empty("root")).await.unwrap();
    sup.start_child(worker_spec("t", starts.clone()).restart(Restart::Transient))
        .await
        .unwrap();
    running_child(&sup, "t").await.send_message(WorkerMsg::Stop).unwrap();
    settle().await;
    tokio::time::sleep(Duration::from_secs(30)).await;
    assert_eq!(starts.load(Ordering::SeqCst), 1);
    assert!(sup.tree().await.unwrap().find("t").is_none());
    sup.stop_and_wait(None, None).await.unwrap();
}

#[tokio::test(start_paused = true)]
async fn killed_transient_child_is_restarted() {
    let starts = Arc::new(AtomicU32::new(0));
    let (sup, _) = spawn_root(SupervisorArgs::empty("root")).await.unwrap();
    sup.start_child(worker_spec("k", starts.clone()).restart(Restart::Transient))
        .await
        .unwrap();
    running_child(&sup, "k").await.kill();
    tokio::time::sleep(Duration::from_secs(2)).await;
    running_child(&sup, "k").await;
    assert_eq!(starts.load(Ordering::SeqCst), 2);
    sup.stop_and_wait(None, None).await.unwrap();
}

#[tokio::test(start_paused = true)]
async fn exceeding_intensity_escalates_but_only_to_the_nested_supervisor() {
    let starts = Arc::new(AtomicU32::new(0));
    let events = TreeEvents::new(64);
    let mut rx = events.subscribe();
    let (root, _) = spawn_root(SupervisorArgs::empty("root").with_events(events))
        .await
        .unwrap();
    // The nested supervisor itself restarts forever (never escalates past it).
    let tenant = supervisor_child(SupervisorArgs::empty("tenant")).intensity(None);
    root.start_child(tenant).await.unwrap();
    let tenant_ref: ActorRef<SupervisorMsg> = root.child("tenant").await.unwrap().unwrap().into();
    let spec = worker_spec("w", starts.clone()).intensity(Some(Intensity {
        max_restarts: 2,
        window: Duration::from_secs(60),
    }));
    tenant_ref.start_child(spec).await.unwrap();

    for _ in 0..2 {
        running_child(&tenant_ref, "w")
            .await
            .send_message(WorkerMsg::Fail)
            .unwrap();
        tokio::time::sleep(Duration::from_secs(5)).await;
    }
    assert_eq!(starts.load(Ordering::SeqCst), 3);
    // Third failure inside the window: the tenant supervisor stops its children and fails.
    let w = running_child(&tenant_ref, "w").await;
    w.send_message(WorkerMsg::Fail).unwrap();
    tokio::time::sleep(Duration::from_millis(100)).await;
    assert_eq!(tenant_ref.get_status(), ActorStatus::Stopped);
    assert_eq!(w.get_status(), ActorStatus::Stopped);
    // The root survives and restarts the tenant supervisor.
    assert_eq!(root.get_status(), ActorStatus::Running);
    tokio::time::sleep(Duration::from_secs(2)).await;
    let tree = root.tree().await.unwrap();
    let t = tree.find("tenant").unwrap();
    assert!(t.running);
    assert_eq!(t.restarts, 1);
    assert!(t.last_exit.as_deref().unwrap().contains("restart intensity"));
    // The worker's last exit escalated: it is stopped, not about to be restarted.
    let mut w_events = Vec::new();
    while let Ok(e) = rx.try_recv() {
        if e.name == "w" {
            w_events.push(e.kind);
        }
    }
    use TreeEventKind::*;
    assert_eq!(w_events, [Spawned, Exited, Restarted, Exited, Restarted, Stopped]);
    root.stop_and_wait(None, None).await.unwrap();
}

#[tokio::test(start_paused = true)]
async fn stop_child_is_final_and_duplicates_are_refused() {
    let starts = Arc::new(AtomicU32::new(0));
    let (sup, _) = spawn_root(SupervisorArgs::empty("root")).await.unwrap();
    sup.start_child(worker_spec("a", starts.clone())).await.unwrap();
    let dup = sup.start_child(worker_spec("a", starts.clone())).await;
    assert!(matches!(dup, Err(SupervisorError::DuplicateChild(n)) if n == "a"));
    let a = running_child(&sup, "a").await;
    assert!(sup.stop_child("a").await.unwrap());
    assert_eq!(a.get_status(), ActorStatus::Stopped);
    tokio::time::sleep(Duration::from_secs(30)).await;
    assert_eq!(starts.load(Ordering::SeqCst), 1);
    assert!(!sup.stop_child("a").await.unwrap());
    sup.stop_and_wait(None, None).await.unwrap();
}

#[tokio::test(start_paused = true)]
async fn child_source_rebuilds_children_on_supervisor_restart() {
    let starts = Arc::new(AtomicU32::new(0));
    let s2 = starts.clone();
    let args = SupervisorArgs {
        name: "tenant".into(),
        children: Arc::new(move || {
            let s = s2.clone();
            Box::pin(async move { Ok(vec![worker_spec("from-source", s)]) })
        }),
        span: None,
        events: None,
        path: Vec::new(),
    };
    let (root, _) = spawn_root(SupervisorArgs::empty("root")).await.unwrap();
    root.start_child(supervisor_child(args)).await.unwrap();
    assert_eq!(starts.load(Ordering::SeqCst), 1);
    root.child("tenant").await.unwrap().unwrap().kill();
    tokio::time::sleep(Duration::from_secs(2)).await;
    let tree = root.tree().await.unwrap();
    assert!(tree.find("from-source").unwrap().running);
    assert_eq!(starts.load(Ordering::SeqCst), 2);
    assert_eq!(tree.len(), 3);
    root.stop_and_wait(None, None).await.unwrap();
}

/// Every supervisor of a tree sends its children's changes to the tree's stream, in
/// order, each naming its supervisor's path: a nested supervisor inherits the stream.
#[tokio::test(start_paused = true)]
async fn the_tree_changes_arrive_in_order_with_their_paths() {
    let events = TreeEvents::new(64);
    let mut rx = events.subscribe();
    let (root, _) = spawn_root(SupervisorArgs::empty("runtime").with_events(events.clone()))
        .await
        .unwrap();
    let starts = Arc::new(AtomicU32::new(0));
    let s2 = starts.clone();
    let tenant = SupervisorArgs {
        children: Arc::new(move || {
            let s = s2.clone();
            Box::pin(async move { Ok(vec![worker_spec("integration:orders", s)]) })
        }),
        ..SupervisorArgs::empty("tenant:acme")
    };
    root.start_child(supervisor_child(tenant)).await.unwrap();
    let tenant: ActorRef<SupervisorMsg> = root.child("tenant:acme").await.unwrap().unwrap().into();
    let first = running_child(&tenant, "integration:orders").await;
    let first_id = first.get_id().to_string();
    first.send_message(WorkerMsg::Fail).unwrap();
    tokio::time::sleep(Duration::from_millis(1100)).await;
    let second = running_child(&tenant, "integration:orders").await.get_id().to_string();
    assert!(tenant.stop_child("integration:orders").await.unwrap());

    let mut got = Vec::new();
    while let Ok(e) = rx.try_recv() {
        got.push(e);
    }
    let seen: Vec<_> = got
        .iter()
        .map(|e| (e.seq, e.kind, e.supervisor_path.join("/"), e.name.as_str()))
        .collect();
    assert_eq!(
        seen,
        [
            (
                1,
                TreeEventKind::Spawned,
                "runtime/tenant:acme".into(),
                "integration:orders"
            ),
            (2, TreeEventKind::Spawned, "runtime".into(), "tenant:acme"),
            (
                3,
                TreeEventKind::Exited,
                "runtime/tenant:acme".into(),
                "integration:orders"
            ),
            (
                4,
                TreeEventKind::Restarted,
                "runtime/tenant:acme".into(),
                "integration:orders"
            ),
            (
                5,
                TreeEventKind::Stopped,
                "runtime/tenant:acme".into(),
                "integration:orders"
            ),
        ]
    );
    assert_eq!(
        got[2].actor_id.as_deref(),
        Some(first_id.as_str()),
        "the exit names the actor that exited"
    );
    assert!(got[2].reason.as_deref().unwrap().contains("boom"));
    assert_eq!(
        (got[3].actor_id.as_deref(), got[3].restarts),
        (Some(second.as_str()), 1)
    );
    assert_eq!(events.last_seq(), 5);
    root.stop_and_wait(None, None).await.unwrap();
}
