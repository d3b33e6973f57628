//! `WatchActorTree`'s stream: the snapshot, then each change numbered after it, in order.
//! A watcher that falls too far behind gets `DATA_LOSS` with the count it missed, and
//! watches again; the stream never skips a change silently.

use futures::Stream;
use tokio::sync::broadcast::{Receiver, error::RecvError};
use tonic::Status;
use vrsky_supervision::TreeEvent;

use super::pb;

fn event(e: TreeEvent) -> pb::WatchActorTreeResponse {
    pb::WatchActorTreeResponse {
        update: Some(pb::watch_actor_tree_response::Update::Event(pb::ActorTreeEvent {
            seq: e.seq,
            kind: e.kind.as_str().to_owned(),
            supervisor_path: e.supervisor_path,
            name: e.name,
            actor_id: e.actor_id,
            restarts: e.restarts,
            reason: e.reason,
        })),
    }
}

enum Step {
    First(pb::WatchActorTreeResponse),
    Next,
    Done,
}

/// `first`, then the changes of `rx` numbered above `after_seq`, until the node stops
/// (`stopping` turns true): then the stream ends, so a shutdown does not wait on it.
pub(crate) fn changes(
    first: pb::WatchActorTreeResponse,
    after_seq: u64,
    rx: Receiver<TreeEvent>,
    stopping: tokio::sync::watch::Receiver<bool>,
) -> impl Stream<Item = Result<pb::WatchActorTreeResponse, Status>> + Send {
    futures::stream::unfold(
        (Step::First(first), rx, stopping),
        move |(step, mut rx, mut stopping)| async move {
            match step {
                Step::Done => None,
                Step::First(first) => Some((Ok(first), (Step::Next, rx, stopping))),
                Step::Next => loop {
                    if *stopping.borrow() {
                        return None;
                    }
                    let next = tokio::select! {
                        r = rx.recv() => r,
                        _ = stopping.changed() => return None,
                    };
                    match next {
                        Ok(e) if e.seq <= after_seq => continue,
                        Ok(e) => return Some((Ok(event(e)), (Step::Next, rx, stopping))),
                        Err(RecvError::Lagged(n)) => {
                            let s = Status::data_loss(format!(
                                "this watch fell {n} changes behind the tree and stopped; watch again for a new snapshot"
                            ));
                            return Some((Err(s), (Step::Done, rx, stopping)));
                        }
                        // The node is shutting down.
                        Err(RecvError::Closed) => return None,
                    }
                },
            }
        },
    )
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use futures::StreamExt as _;
    use vrsky_supervision::TreeEvents;

    fn seq(r: &pb::WatchActorTreeResponse) -> u64 {
        match &r.update {
            Some(pb::watch_actor_tree_response::Update::Event(e)) => e.seq,
            _ => 0,
        }
    }

    #[tokio::test]
    async fn the_snapshot_then_the_later_changes_then_data_loss_when_behind() {
        let events = TreeEvents::new(4);
        let rx = events.subscribe();
        let path = vec!["runtime".to_owned()];
        let emit = |name: &str| events.emit(vrsky_supervision::TreeEventKind::Spawned, &path, name, None, 0, None);
        // Two changes the snapshot already shows, then two after it.
        emit("a");
        emit("b");
        let after = events.last_seq();
        emit("c");
        emit("d");
        let snapshot = pb::WatchActorTreeResponse::default();
        let (stop, stopping) = tokio::sync::watch::channel(false);
        let mut s = Box::pin(changes(snapshot.clone(), after, rx, stopping.clone()));
        assert_eq!(s.next().await.unwrap().unwrap(), snapshot);
        assert_eq!(seq(&s.next().await.unwrap().unwrap()), 3);
        assert_eq!(seq(&s.next().await.unwrap().unwrap()), 4);
        for n in 0..6 {
            emit(&format!("e{n}"));
        }
        let lost = s.next().await.unwrap().unwrap_err();
        assert_eq!(lost.code(), tonic::Code::DataLoss);
        assert!(lost.message().contains("fell 2 changes behind"), "{}", lost.message());
        assert!(s.next().await.is_none(), "the stream ends after the loss");
        // A stopping node ends a watch that has nothing to send.
        let mut s = Box::pin(changes(
            snapshot.clone(),
            events.last_seq(),
            events.subscribe(),
            stopping,
        ));
        assert!(s.next().await.is_some());
        stop.send(true).unwrap();
        assert!(s.next().await.is_none(), "the watch ends when the node stops");
    }
}
