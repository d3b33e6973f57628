//! Group commit of the bucket's writes (issue 17). With `sync_interval: always` a single
//! nats-server fsyncs every stored message and acknowledges each on its own, so the
//! writes of concurrent messages cost one round trip and one acknowledgement each. Here
//! every state write (ingress' create-only write and each revision-checked transition)
//! goes through one committer task:
//!
//! - while fewer than `in_flight_max` commit units are in flight, a write goes out at
//!   once, alone: an idle node adds no latency;
//! - otherwise writes queue, and as soon as a unit completes the queue (up to
//!   `batch_max`) goes out as one JetStream atomic batch (nats-server 2.12+, the stream's
//!   `allow_atomic`), each write keeping its own `Nats-Expected-Last-Subject-Sequence`
//!   and `Nats-TTL`;
//! - one failed check fails the whole batch (error 10071, which does not say which write
//!   failed), and so do the other refusals made before anything is stored
//!   ([`REFUSED_WHOLE`]): its writes are sent again one by one and only the stale one
//!   fails. A batch never holds one subject twice (the server refuses that, 10164): a
//!   second write to it waits for the next unit;
//! - a commit whose answer is lost, or any other error (a store failure can come after the
//!   batch's first writes were stored), is ambiguous: every write of it fails as a single
//!   write whose acknowledgement is lost does (the caller's error path, and the re-driver).
//!
//! An atomic batch is stored contiguously, so its writes' revisions are the commit's
//! sequence counted back. The decision of what to send next is [`next_unit`], pure.

use std::collections::VecDeque;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use async_nats::HeaderMap;
use async_nats::jetstream;
use bytes::Bytes;
use futures::StreamExt;
use futures::stream::FuturesUnordered;
use tokio::sync::{mpsc, oneshot};

/// The bounds of group commit (`state.commit_batch_max`, `state.commit_in_flight_max`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CommitLimits {
    /// Writes per atomic batch at most; 0 or 1 turns group commit off (every write alone,
    /// pipelined, as before).
    pub batch_max: usize,
    /// Commit units (single writes or batches) in flight at once before writes queue.
    pub in_flight_max: usize,
}

impl CommitLimits {
    /// Group commit off.
    pub const OFF: CommitLimits = CommitLimits {
        batch_max: 1,
        in_flight_max: 1,
    };

    /// Whether writes are grouped at all.
    pub fn enabled(&self) -> bool {
        self.batch_max > 1
    }
}

impl Default for CommitLimits {
    fn default() -> Self {
        CommitLimits {
            batch_max: 1000,
            in_flight_max: 1,
        }
    }
}

/// How many queued writes go out as the next commit unit (0: none now). A write is sent
/// alone when there is room in flight and nothing waits beside it; under load the queue
/// grows while the units in flight complete, and goes out whole, up to `batch_max`.
pub(super) fn next_unit(in_flight: usize, queued: usize, limits: CommitLimits) -> usize {
    if in_flight >= limits.in_flight_max.max(1) {
        return 0;
    }
    queued.min(limits.batch_max.max(1))
}

/// What became of one write.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Outcome {
    /// Stored at this revision.
    Stored(u64),
    /// Its revision check failed: someone wrote first.
    WrongLastSequence,
}

/// A write that failed (or whose outcome is unknown).
#[derive(Debug, Clone)]
pub(super) struct CommitError(String);

impl std::fmt::Display for CommitError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for CommitError {}

/// Commit units and writes so far, for `/metrics`.
#[derive(Debug, Default)]
pub(super) struct CommitStats {
    singles: AtomicU64,
    batches: AtomicU64,
    batched_writes: AtomicU64,
    fallbacks: AtomicU64,
}

/// This node's group-commit counters at one moment.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct CommitFigures {
    /// Writes sent alone.
    pub singles: u64,
    /// Atomic batches committed.
    pub batches: u64,
    /// Writes committed in those batches.
    pub batched_writes: u64,
    /// Batches refused and sent again one by one.
    pub fallbacks: u64,
}

impl CommitStats {
    /// The figures now.
    pub(super) fn figures(&self) -> CommitFigures {
        CommitFigures {
            singles: self.singles.load(Ordering::Relaxed),
            batches: self.batches.load(Ordering::Relaxed),
            batched_writes: self.batched_writes.load(Ordering::Relaxed),
            fallbacks: self.fallbacks.load(Ordering::Relaxed),
        }
    }
}

struct Write {
    subject: String,
    headers: HeaderMap,
    payload: Bytes,
}

struct Job {
    write: Write,
    done: oneshot::Sender<Result<Outcome, CommitError>>,
}

/// Where the bucket's writes go: straight to JetStream, or through the committer task.
#[derive(Clone)]
pub(super) struct GroupCommit {
    js: jetstream::Context,
    queue: Option<mpsc::Sender<Job>>,
    stats: Arc<CommitStats>,
}

impl GroupCommit {
    /// Starts the committer task when `limits` groups writes (the stream must allow atomic
    /// batches); it ends when the last handle is dropped.
    pub(super) fn start(js: jetstream::Context, limits: CommitLimits) -> GroupCommit {
        let stats = Arc::<CommitStats>::default();
        let queue = limits.enabled().then(|| {
            let (tx, rx) = mpsc::channel(limits.batch_max * limits.in_flight_max.max(1));
            tokio::spawn(run(js.clone(), limits, rx, stats.clone()));
            tx
        });
        GroupCommit { js, queue, stats }
    }

    /// Units and writes so far.
    pub(super) fn stats(&self) -> CommitFigures {
        self.stats.figures()
    }

    /// Writes `payload` to `subject` with `headers` (its checks and TTL).
    pub(super) async fn write(
        &self,
        subject: String,
        headers: HeaderMap,
        payload: Bytes,
    ) -> Result<Outcome, CommitError> {
        let write = Write {
            subject,
            headers,
            payload,
        };
        let Some(queue) = &self.queue else {
            self.stats.singles.fetch_add(1, Ordering::Relaxed);
            return single(&self.js, write).await;
        };
        let (done, answer) = oneshot::channel();
        if let Err(mpsc::error::SendError(job)) = queue.send(Job { write, done }).await {
            // The committer task is gone (it cannot end while a handle lives, so only a
            // panic ends it): the write goes alone rather than every later write failing.
            tracing::error!("the group committer has stopped; state writes go one by one");
            self.stats.singles.fetch_add(1, Ordering::Relaxed);
            return single(&self.js, job.write).await;
        }
        answer
            .await
            .map_err(|_| CommitError("the group committer dropped a write".into()))?
    }
}

fn unavailable(what: &str, e: impl std::fmt::Display) -> CommitError {
    CommitError(format!("{what}: {e}"))
}

/// One write on its own.
async fn single(js: &jetstream::Context, w: Write) -> Result<Outcome, CommitError> {
    let ack = js
        .publish_with_headers(w.subject, w.headers, w.payload)
        .await
        .map_err(|e| unavailable("publishing a state write", e))?;
    settle(ack.await)
}

fn settle(
    ack: Result<jetstream::publish::PublishAck, jetstream::context::PublishError>,
) -> Result<Outcome, CommitError> {
    match ack {
        Ok(a) => Ok(Outcome::Stored(a.sequence)),
        Err(e) if e.kind() == jetstream::context::PublishErrorKind::WrongLastSequence => Ok(Outcome::WrongLastSequence),
        Err(e) => Err(unavailable("a state write", e)),
    }
}

/// The committer: takes writes, and sends them as [`next_unit`] decides.
async fn run(js: jetstream::Context, limits: CommitLimits, mut rx: mpsc::Receiver<Job>, stats: Arc<CommitStats>) {
    let prefix = uuid::Uuid::new_v4().simple().to_string();
    let mut serial = 0u64;
    let mut queue: VecDeque<Job> = VecDeque::new();
    let mut in_flight = FuturesUnordered::new();
    let mut open = true;
    while open || !queue.is_empty() || !in_flight.is_empty() {
        tokio::select! {
            job = rx.recv(), if open => match job {
                Some(job) => queue.push_back(job),
                None => open = false,
            },
            Some(()) = in_flight.next(), if !in_flight.is_empty() => {}
            else => break,
        }
        // Everything waiting joins the queue before the next unit is decided.
        while let Ok(job) = rx.try_recv() {
            queue.push_back(job);
        }
        loop {
            let n = next_unit(in_flight.len(), queue.len(), limits);
            if n == 0 {
                break;
            }
            let unit = take_unit(&mut queue, n);
            if unit.is_empty() {
                continue;
            }
            serial += 1;
            let (js, stats) = (js.clone(), stats.clone());
            let id = format!("{prefix}-{serial}");
            in_flight.push(async move { commit_unit(&js, &id, unit, &stats).await });
        }
    }
}

/// Sends one unit and answers each of its writes.
async fn commit_unit(js: &jetstream::Context, id: &str, unit: Vec<Job>, stats: &CommitStats) {
    let (mut writes, answers): (Vec<Write>, Vec<_>) = unit.into_iter().map(|j| (j.write, j.done)).unzip();
    let outcomes = match writes.len() {
        1 => {
            stats.singles.fetch_add(1, Ordering::Relaxed);
            let Some(w) = writes.pop() else { return };
            vec![single(js, w).await]
        }
        _ => batch(js, id, writes, stats).await,
    };
    for (answer, outcome) in answers.into_iter().zip(outcomes) {
        // A caller that gave up (its request was cancelled) needs no answer.
        let _ = answer.send(outcome);
    }
}

/// Takes up to `n` writes off the front of the queue for one unit. A write whose caller
/// has gone (its request was cancelled) is dropped unsent, as a single write would never
/// have been sent; a second write to a subject already in the unit waits for the next one,
/// since the server refuses a batch whose checks touch one subject twice (10164).
fn take_unit(queue: &mut VecDeque<Job>, n: usize) -> Vec<Job> {
    let mut unit = Vec::with_capacity(n);
    let mut subjects = std::collections::HashSet::with_capacity(n);
    let mut later = VecDeque::new();
    while unit.len() < n
        && let Some(job) = queue.pop_front()
    {
        if job.done.is_closed() {
            continue;
        }
        if subjects.insert(job.write.subject.clone()) {
            unit.push(job);
        } else {
            later.push_back(job);
        }
    }
    while let Some(job) = later.pop_back() {
        queue.push_front(job);
    }
    unit
}

/// How the server answered a batch's commit.
#[derive(Debug, PartialEq, Eq)]
enum Answer {
    /// Committed; its last write's sequence.
    Committed(u64),
    /// Refused before anything was stored: its writes can go again one by one.
    Refused(String),
    /// Anything else: some or all of it may be stored.
    Unknown(String),
}

/// Error codes with which a server refuses an atomic batch before storing any of it: a
/// failed check (10071, 10164), atomic publish off (10174), a malformed, incomplete,
/// oversized or unsupported batch (10175-10177, 10179, 10199-10201), too many batches in
/// flight (10210). Any other error (a store failure, 10077, may come after the batch's
/// first writes were stored) leaves the outcome unknown.
const REFUSED_WHOLE: [u64; 11] = [
    10071, 10164, 10174, 10175, 10176, 10177, 10179, 10199, 10200, 10201, 10210,
];

/// The writes as one atomic batch; when the server refuses it, one by one.
async fn batch(
    js: &jetstream::Context,
    id: &str,
    writes: Vec<Write>,
    stats: &CommitStats,
) -> Vec<Result<Outcome, CommitError>> {
    let n = writes.len();
    match atomic(&js.client(), id, &writes).await {
        Answer::Committed(last) => {
            stats.batches.fetch_add(1, Ordering::Relaxed);
            stats.batched_writes.fetch_add(n as u64, Ordering::Relaxed);
            // Stored contiguously: the i-th write is at `last - (n - 1 - i)`.
            (0..n).map(|i| Ok(Outcome::Stored(last - (n - 1 - i) as u64))).collect()
        }
        Answer::Refused(answer) => {
            stats.fallbacks.fetch_add(1, Ordering::Relaxed);
            if answer.contains("10174") {
                // Someone updated the stream without `allow_atomic` (a typed update drops
                // it): every batch now falls back until a node restarts and sets it again.
                tracing::warn!(batch = id, %answer, "atomic batches are disabled on the state bucket; writes go one by one");
            } else {
                tracing::debug!(batch = id, writes = n, %answer, "atomic batch refused; its writes go one by one");
            }
            one_by_one(js, writes).await
        }
        Answer::Unknown(why) => {
            let e = CommitError(format!("the commit of an atomic batch (its outcome is unknown): {why}"));
            (0..n).map(|_| Err(e.clone())).collect()
        }
    }
}

/// Publishes the writes as one atomic batch.
async fn atomic(client: &async_nats::Client, id: &str, writes: &[Write]) -> Answer {
    let last = writes.len() - 1;
    for (i, w) in writes.iter().enumerate() {
        let mut h = w.headers.clone();
        h.insert("Nats-Batch-Id", id);
        h.insert("Nats-Batch-Sequence", (i + 1).to_string().as_str());
        if i < last {
            // Nothing is stored before the commit is sent: a failure here leaves nothing
            // behind (the server drops the partial batch after its timeout).
            if let Err(e) = client
                .publish_with_headers(w.subject.clone(), h, w.payload.clone())
                .await
            {
                return Answer::Refused(format!("publishing the batch: {e}"));
            }
            continue;
        }
        h.insert("Nats-Batch-Commit", "1");
        return match client
            .request_with_headers(w.subject.clone(), h, w.payload.clone())
            .await
        {
            Ok(reply) => commit_answer(&reply.payload, writes.len()),
            Err(e) => Answer::Unknown(e.to_string()),
        };
    }
    Answer::Refused("empty batch".into())
}

/// The commit's answer.
fn commit_answer(payload: &[u8], writes: usize) -> Answer {
    let v: serde_json::Value = match serde_json::from_slice(payload) {
        Ok(v) => v,
        Err(e) => return Answer::Unknown(format!("{e}: {}", String::from_utf8_lossy(payload))),
    };
    if let Some(error) = v.get("error") {
        return match error["err_code"].as_u64() {
            Some(code) if REFUSED_WHOLE.contains(&code) => Answer::Refused(v.to_string()),
            _ => Answer::Unknown(v.to_string()),
        };
    }
    match (v["seq"].as_u64(), v["count"].as_u64()) {
        (Some(seq), Some(count)) if count == writes as u64 && seq >= count => Answer::Committed(seq),
        _ => Answer::Unknown(format!("unexpected commit answer: {v}")),
    }
}

/// The writes pipelined, each on its own.
async fn one_by_one(js: &jetstream::Context, writes: Vec<Write>) -> Vec<Result<Outcome, CommitError>> {
    let mut acks = Vec::with_capacity(writes.len());
    for w in writes {
        acks.push(
            js.publish_with_headers(w.subject, w.headers, w.payload)
                .await
                .map_err(|e| unavailable("publishing a state write", e)),
        );
    }
    let mut out = Vec::with_capacity(acks.len());
    for ack in acks {
        out.push(match ack {
            Ok(ack) => settle(ack.await),
            Err(e) => Err(e),
        });
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    const L: CommitLimits = CommitLimits {
        batch_max: 64,
        in_flight_max: 8,
    };

    #[test]
    fn an_idle_committer_sends_each_write_alone_at_once() {
        assert_eq!(next_unit(0, 1, L), 1);
        assert_eq!(next_unit(7, 1, L), 1);
        assert_eq!(next_unit(0, 0, L), 0);
    }

    #[test]
    fn a_full_pipeline_queues_and_the_queue_goes_whole_up_to_the_bound() {
        assert_eq!(next_unit(8, 40, L), 0);
        assert_eq!(next_unit(7, 40, L), 40);
        assert_eq!(next_unit(7, 200, L), 64);
    }

    #[test]
    fn zero_bounds_still_make_progress() {
        let zero = CommitLimits {
            batch_max: 0,
            in_flight_max: 0,
        };
        assert_eq!(next_unit(0, 5, zero), 1);
        assert_eq!(next_unit(1, 5, zero), 0);
        assert!(!zero.enabled() && !CommitLimits::OFF.enabled() && L.enabled());
    }

    #[test]
    fn a_commit_answer_gives_the_last_sequence_or_the_refusal() {
        assert_eq!(
            commit_answer(br#"{"stream":"KV_message_state","seq":40,"batch":"b-1","count":4}"#, 4),
            Answer::Committed(40)
        );
        let stale = br#"{"error":{"code":400,"err_code":10071,"description":"wrong last sequence: 0"}}"#;
        assert!(matches!(commit_answer(stale, 4), Answer::Refused(e) if e.contains("10071")));
        let repeated = br#"{"error":{"code":400,"err_code":10164,"description":"wrong last sequence"}}"#;
        assert!(matches!(commit_answer(repeated, 4), Answer::Refused(_)));
        // A store failure can come after the batch's first writes were stored.
        let store = br#"{"error":{"code":503,"err_code":10077,"description":"maximum bytes exceeded"}}"#;
        assert!(matches!(commit_answer(store, 4), Answer::Unknown(_)));
        // A count that is not the batch's cannot be counted back.
        assert!(matches!(
            commit_answer(br#"{"seq":40,"count":3}"#, 4),
            Answer::Unknown(_)
        ));
        assert!(matches!(commit_answer(b"not json", 4), Answer::Unknown(_)));
    }

    fn job(subject: &str) -> (Job, oneshot::Receiver<Result<Outcome, CommitError>>) {
        let (done, rx) = oneshot::channel();
        let write = Write {
            subject: subject.into(),
            headers: HeaderMap::new(),
            payload: Bytes::new(),
        };
        (Job { write, done }, rx)
    }

    #[test]
    fn a_unit_holds_each_subject_once_and_drops_writes_whose_caller_has_gone() {
        let (a, _ra) = job("a");
        let (a2, _ra2) = job("a");
        let (gone, rg) = job("b");
        drop(rg);
        let (c, _rc) = job("c");
        let (d, _rd) = job("d");
        let mut queue: VecDeque<Job> = [a, a2, gone, c, d].into_iter().collect();
        let unit = take_unit(&mut queue, 3);
        let subjects: Vec<&str> = unit.iter().map(|j| j.write.subject.as_str()).collect();
        assert_eq!(subjects, ["a", "c", "d"]);
        // The second write to `a` waits at the front for the next unit.
        let left: Vec<&str> = queue.iter().map(|j| j.write.subject.as_str()).collect();
        assert_eq!(left, ["a"]);
    }
}
