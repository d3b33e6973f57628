//! Several `vrsky serve` processes (pods, simulated as processes on loopback) sharing one
//! platform nats-server, one PostgreSQL database and one data directory (the local
//! provisioner's tenant servers, adopted by whichever node owns the tenant): tenants are
//! spread by their leases, a kill -9 moves a node's tenants to the others, a SIGTERM hands
//! them over, a joining node takes its share, and a paused node stops its workers. Every
//! webhook answered 202 by any node ends delivered or dead-lettered.

use std::collections::{BTreeMap, HashMap};
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde_json::{Value, json};

use crate::common::node::{NodeProcess, api, kill_servers_under};
use crate::common::{PgDatabase, Sink, spec, wait_until};

/// The lease TTL of these tests (`cluster.lease_ttl_ms`), 3000 unless `TEST_LEASE_TTL_MS`
/// says otherwise (10000, the default, to measure the default's fail-over time).
fn ttl_ms() -> String {
    std::env::var("TEST_LEASE_TTL_MS").unwrap_or_else(|_| "3000".into())
}

/// Kills the tenant nats-servers under the shared data dir when the test ends, also when
/// it fails (the nodes' own `Drop` only reaps their own dirs). Declared after the temp
/// dir, so it runs before the dir is removed.
struct Reaper(std::path::PathBuf);

impl Drop for Reaper {
    fn drop(&mut self) {
        kill_servers_under(&self.0);
    }
}

/// Lines of a node's log saying it gave a tenant up without being asked to: a false
/// fail-over when the node was neither paused nor cut off.
fn lease_losses(node: &NodeProcess) -> usize {
    node.log()
        .lines()
        .filter(|l| l.contains("tenant lease lost") || l.contains("stopping the tenant's workers"))
        .count()
}

/// What each test starts from: a temp dir with the nodes' shared data dir (whose tenant
/// servers are reaped at the end), one platform nats-server, one PostgreSQL database, a
/// sink and a client. Destructured in this order, the reaper is dropped before the dir.
struct Fixture {
    dir: tempfile::TempDir,
    shared: std::path::PathBuf,
    _reaper: Reaper,
    platform: vrsky_runtime::nats::platform_server::PlatformServer,
    db: PgDatabase,
    sink: Sink,
    http: reqwest::Client,
}

impl Fixture {
    async fn start() -> Fixture {
        crate::common::init_logging();
        let dir = tempfile::tempdir().unwrap();
        let shared = dir.path().join("shared");
        let platform = crate::common::external_platform(dir.path(), "platform").await;
        Fixture {
            _reaper: Reaper(shared.clone()),
            shared,
            platform,
            db: PgDatabase::create().await,
            sink: Sink::start().await,
            http: reqwest::Client::new(),
            dir,
        }
    }
}

/// Waits until `via` sees `n` live nodes (so tenants created next are spread over them).
async fn live_nodes(http: &reqwest::Client, via: &NodeProcess, n: usize) {
    wait_until(Duration::from_secs(20), || async {
        let (_, v) = api(http, via, reqwest::Method::GET, "/api/cluster", None).await;
        v["nodes"].as_array().is_some_and(|nodes| nodes.len() == n)
    })
    .await
    .unwrap_or_else(|_| panic!("{n} live nodes"));
}

async fn start_node(
    dir: &Path,
    shared: &Path,
    id: &str,
    platform: &vrsky_runtime::nats::platform_server::PlatformServer,
    db: &PgDatabase,
) -> NodeProcess {
    start_node_with(dir, shared, id, platform, db, &[]).await
}

/// A node with `extra` settings over the defaults above.
async fn start_node_with(
    dir: &Path,
    shared: &Path,
    id: &str,
    platform: &vrsky_runtime::nats::platform_server::PlatformServer,
    db: &PgDatabase,
    extra: &[(&str, &str)],
) -> NodeProcess {
    let shared = shared.display().to_string();
    let ttl = ttl_ms();
    let mut env = vec![
        ("VRSKY_NODE_ID", id),
        ("VRSKY_DATA_DIR", shared.as_str()),
        ("VRSKY_DATABASE_URL", db.url.as_str()),
        ("VRSKY_CLUSTER__LEASE_TTL_MS", ttl.as_str()),
        ("VRSKY_CLUSTER__FORWARD_WAIT_MS", "20000"),
    ];
    env.extend_from_slice(extra);
    NodeProcess::start(dir.join(id), platform, &env).await
}

/// `GET /api/cluster` from `node`: tenant -> owner.
async fn owners(http: &reqwest::Client, node: &NodeProcess) -> BTreeMap<String, String> {
    let (_, v) = api(http, node, reqwest::Method::GET, "/api/cluster", None).await;
    let mut out = BTreeMap::new();
    for n in v["nodes"].as_array().cloned().unwrap_or_default() {
        for t in n["tenants"].as_array().cloned().unwrap_or_default() {
            out.insert(
                t["tenant_id"].as_str().unwrap_or("").to_owned(),
                n["node_id"].as_str().unwrap_or("").to_owned(),
            );
        }
    }
    out
}

async fn create_tenant(http: &reqwest::Client, via: &NodeProcess, t: &str, sink: &Sink) {
    let (s, v) = api(
        http,
        via,
        reqwest::Method::POST,
        "/api/tenants",
        Some(json!({"id": t, "name": t})),
    )
    .await;
    assert_eq!(s, 201, "{v}");
    let body = spec(
        "hook",
        &sink.url(&format!("/{t}")),
        json!({"retry": {"max_retries": 5, "backoff_base_s": 0.1}}),
    );
    let (s, v) = api(
        http,
        via,
        reqwest::Method::POST,
        &format!("/api/tenants/{t}/integrations"),
        Some(body),
    )
    .await;
    assert_eq!(s, 201, "{v}");
}

/// What the senders saw: per node index, the ids answered 202 (with their tenant) and the
/// other answers.
#[derive(Default)]
struct Ledger {
    accepted: Vec<(String, String)>,
    refused: HashMap<usize, Vec<String>>,
}

/// Senders posting to every node in `urls` (one sender per node and tenant) until `stop`.
fn load(
    urls: Vec<String>,
    tenants: Vec<String>,
    stop: Arc<AtomicBool>,
    ledger: Arc<Mutex<Ledger>>,
) -> Vec<tokio::task::JoinHandle<()>> {
    let mut senders = Vec::new();
    for (k, base) in urls.into_iter().enumerate() {
        for t in &tenants {
            let (stop, ledger, t, url) = (
                stop.clone(),
                ledger.clone(),
                t.clone(),
                format!("{base}/webhooks/{t}/hook"),
            );
            senders.push(tokio::spawn(async move {
                // Long enough for a request that waits out a fail-over at the node.
                let http = reqwest::Client::builder()
                    .timeout(Duration::from_secs(30))
                    .build()
                    .unwrap();
                let mut n = 0u64;
                while !stop.load(Ordering::Relaxed) {
                    n += 1;
                    match http.post(&url).body(format!("{t}-{k}-{n}")).send().await {
                        Ok(r) if r.status() == 202 => {
                            let v: Value = r.json().await.unwrap_or(Value::Null);
                            if let Some(id) = v["message_id"].as_str() {
                                ledger.lock().unwrap().accepted.push((t.clone(), id.to_owned()));
                            }
                        }
                        Ok(r) => {
                            let status = r.status().as_u16();
                            let body = r.text().await.unwrap_or_default();
                            ledger
                                .lock()
                                .unwrap()
                                .refused
                                .entry(k)
                                .or_default()
                                .push(format!("{status} {body}"));
                        }
                        Err(e) => {
                            ledger
                                .lock()
                                .unwrap()
                                .refused
                                .entry(k)
                                .or_default()
                                .push(format!("error: {e}"));
                            tokio::time::sleep(Duration::from_millis(100)).await;
                        }
                    }
                    tokio::time::sleep(Duration::from_millis(20)).await;
                }
            }));
        }
    }
    senders
}

/// Waits until every accepted id was delivered (or dead-lettered); returns the ids that
/// were not, and how many were delivered more than once.
async fn settle(
    http: &reqwest::Client,
    via: &NodeProcess,
    sink: &Sink,
    accepted: &[(String, String)],
) -> (Vec<String>, usize) {
    let missing = || {
        let mut by_tenant: HashMap<&str, HashMap<String, usize>> = HashMap::new();
        accepted
            .iter()
            .filter(|(t, id)| {
                !by_tenant
                    .entry(t.as_str())
                    .or_insert_with(|| sink.ids(&format!("/{t}")))
                    .contains_key(id)
            })
            .map(|(t, id)| (t.clone(), id.clone()))
            .collect::<Vec<_>>()
    };
    let _ = wait_until(Duration::from_secs(90), || async { missing().is_empty() }).await;
    let mut lost = Vec::new();
    for (t, id) in missing() {
        let (_, v) = api(
            http,
            via,
            reqwest::Method::GET,
            &format!("/api/tenants/{t}/messages/{id}"),
            None,
        )
        .await;
        if v["status"] != "dead_letter" {
            lost.push(format!("{t}/{id}: {v}"));
        }
    }
    let mut duplicates = 0;
    let tenants: std::collections::BTreeSet<&String> = accepted.iter().map(|(t, _)| t).collect();
    for t in tenants {
        duplicates += sink.ids(&format!("/{t}")).values().filter(|&&n| n > 1).count();
    }
    (lost, duplicates)
}

/// Three nodes: tenants spread over them; under load sent to all three, kill -9 one (its
/// tenants are owned elsewhere within 15 s, and webhooks sent to the survivors meanwhile
/// still get 202), then SIGTERM another (its tenants are handed over and no webhook sent
/// to the last node fails). 0 lost.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_nodes_spread_fail_over_and_hand_over_losing_nothing() {
    let Fixture {
        dir,
        shared,
        _reaper,
        platform,
        db,
        sink,
        http,
    } = Fixture::start().await;
    let mut nodes = Vec::new();
    for id in ["n1", "n2", "n3"] {
        nodes.push(start_node(dir.path(), &shared, id, &platform, &db).await);
    }
    // Every node sees the other two before tenants are created, so they are spread.
    live_nodes(&http, &nodes[0], 3).await;
    let tenants: Vec<String> = (1..=6).map(|k| format!("t{k}")).collect();
    for t in &tenants {
        create_tenant(&http, &nodes[0], t, &sink).await;
    }
    let placed = owners(&http, &nodes[0]).await;
    let mut per_node: BTreeMap<&str, usize> = BTreeMap::new();
    for o in placed.values() {
        *per_node.entry(o.as_str()).or_default() += 1;
    }
    assert_eq!(placed.len(), 6, "{placed:?}");
    assert_eq!(
        per_node.values().copied().collect::<Vec<_>>(),
        vec![2, 2, 2],
        "spread: {placed:?}"
    );
    // Each node names the owner, whichever node is asked.
    for (t, o) in &placed {
        for n in &nodes {
            let (s, v) = api(&http, n, reqwest::Method::GET, &format!("/api/tenants/{t}"), None).await;
            assert_eq!(s, 200, "{v}");
            assert_eq!(v["owner"], o.as_str(), "{v}");
        }
    }

    let stop = Arc::new(AtomicBool::new(false));
    let ledger = Arc::new(Mutex::new(Ledger::default()));
    let urls: Vec<String> = nodes.iter().map(|n| n.url("")).collect();
    let senders = load(urls, tenants.clone(), stop.clone(), ledger.clone());
    tokio::time::sleep(Duration::from_secs(3)).await;

    // kill -9 n3: its tenants move to n1 and n2.
    let victims: Vec<String> = placed
        .iter()
        .filter(|(_, o)| *o == "n3")
        .map(|(t, _)| t.clone())
        .collect();
    let killed_at = Instant::now();
    let killed_tokio = tokio::time::Instant::now();
    nodes[2].kill9().await;
    let within = Duration::from_secs(15);
    wait_until(within, || async {
        let now = owners(&http, &nodes[0]).await;
        victims.iter().all(|t| now.get(t).is_some_and(|o| o != "n3"))
    })
    .await
    .unwrap_or_else(|_| {
        panic!(
            "n3's tenants not re-owned within 15 s; n1 log:\n{}",
            nodes[0].logs_tail(60)
        )
    });
    let failover = killed_at.elapsed();
    eprintln!(
        "fail-over (lease TTL {} ms): n3's tenants {victims:?} owned elsewhere {} ms after kill -9",
        ttl_ms(),
        failover.as_millis()
    );
    // Busy as they were, the survivors never lost a lease they held.
    let false_failovers = lease_losses(&nodes[0]) + lease_losses(&nodes[1]);
    eprintln!("false fail-overs under load: {false_failovers}");
    assert_eq!(false_failovers, 0, "n1 log:\n{}", nodes[0].logs_tail(40));
    tokio::time::sleep(Duration::from_secs(3)).await;

    // SIGTERM n2: it hands its tenants over; webhooks sent to n1 keep getting 202.
    let before_term = ledger.lock().unwrap().refused.get(&0).map_or(0, Vec::len);
    let term_at = Instant::now();
    let term_tokio = tokio::time::Instant::now();
    nodes[1].stop().await;
    eprintln!(
        "hand-over: n2 stopped {} ms after SIGTERM",
        term_at.elapsed().as_millis()
    );
    let now = owners(&http, &nodes[0]).await;
    assert!(now.values().all(|o| o == "n1"), "every tenant on n1 now: {now:?}");
    tokio::time::sleep(Duration::from_secs(3)).await;
    stop.store(true, Ordering::Relaxed);
    for s in senders {
        s.await.unwrap();
    }

    let (accepted, refused_n1) = {
        let l = ledger.lock().unwrap();
        (l.accepted.clone(), l.refused.get(&0).cloned().unwrap_or_default())
    };
    // A survivor stores every webhook itself, whoever owns the tenant: none fails, through
    // the kill -9 (n3's tenants have no owner for a while) or the hand-over.
    eprintln!("webhooks to n1 refused during the kill -9: {before_term}");
    assert!(
        refused_n1.is_empty(),
        "webhooks sent to n1 failed ({before_term} before the SIGTERM): {:?}",
        &refused_n1[..refused_n1.len().min(10)]
    );
    let (lost, duplicates) = settle(&http, &nodes[0], &sink, &accepted).await;
    eprintln!(
        "{} accepted by the three nodes, {} lost, {duplicates} delivered more than once (in flight at the kill -9)",
        accepted.len(),
        lost.len()
    );
    assert!(
        lost.is_empty(),
        "{} lost: {:?}\nn1 log:\n{}",
        lost.len(),
        &lost[..lost.len().min(10)],
        nodes[0].logs_tail(80)
    );
    // Each duplicate's deliveries, in ms from the kill -9 and from the SIGTERM.
    let mut by_id: HashMap<String, Vec<tokio::time::Instant>> = HashMap::new();
    for r in sink.received() {
        if let Some(id) = r.header("x-vrsky-message-id") {
            by_id.entry(id.to_owned()).or_default().push(r.at);
        }
    }
    let offset = |at: tokio::time::Instant, from: tokio::time::Instant| {
        if at >= from {
            (at - from).as_millis() as i64
        } else {
            -((from - at).as_millis() as i64)
        }
    };
    for (id, ats) in by_id.iter().filter(|(_, a)| a.len() > 1) {
        let ms: Vec<(i64, i64)> = ats
            .iter()
            .map(|a| (offset(*a, killed_tokio), offset(*a, term_tokio)))
            .collect();
        eprintln!("duplicate {id}: deliveries at (ms from kill -9, ms from SIGTERM) {ms:?}");
    }
    drop(nodes);
    db.drop_db().await;
}

/// Split brain: a node paused (SIGSTOP) past its lease loses its tenant to the other node;
/// resumed, it stops the tenant's workers instead of running them beside the new owner.
/// Nothing is lost, and no message is delivered twice except one whose delivery was under
/// way at the instant of the pause (as at a crash).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_paused_node_stops_its_workers_and_nothing_is_delivered_twice() {
    let Fixture {
        dir,
        shared,
        _reaper,
        platform,
        db,
        sink,
        http,
    } = Fixture::start().await;
    let n1 = start_node(dir.path(), &shared, "n1", &platform, &db).await;
    let n2 = start_node(dir.path(), &shared, "n2", &platform, &db).await;
    live_nodes(&http, &n1, 2).await;
    // One tenant each; "b" falls to n2.
    for t in ["a", "b"] {
        create_tenant(&http, &n1, t, &sink).await;
    }
    let placed = owners(&http, &n1).await;
    assert_eq!(placed.get("b").map(String::as_str), Some("n2"), "{placed:?}");

    // Load on b, sent to n1 (which stores it and publishes it on b's NATS).
    let stop = Arc::new(AtomicBool::new(false));
    let ledger = Arc::new(Mutex::new(Ledger::default()));
    let senders = load(vec![n1.url("")], vec!["b".into()], stop.clone(), ledger.clone());
    tokio::time::sleep(Duration::from_secs(2)).await;
    let paused_at = tokio::time::Instant::now();
    n2.pause();
    // n1 takes b over once n2's lease expires.
    wait_until(Duration::from_secs(15), || async {
        owners(&http, &n1).await.get("b").is_some_and(|o| o == "n1")
    })
    .await
    .expect("b re-owned by n1");
    tokio::time::sleep(Duration::from_secs(2)).await;
    n2.resume();
    // Resumed, n2 finds its lease gone and stops b there.
    wait_until(Duration::from_secs(10), || async {
        n2.log().contains("tenant lease lost") || n2.log().contains("stopping the tenant's workers")
    })
    .await
    .unwrap_or_else(|_| panic!("n2 did not stop b; log:\n{}", n2.logs_tail(60)));
    tokio::time::sleep(Duration::from_secs(2)).await;
    stop.store(true, Ordering::Relaxed);
    for s in senders {
        s.await.unwrap();
    }
    let accepted = ledger.lock().unwrap().accepted.clone();
    let (lost, _) = settle(&http, &n1, &sink, &accepted).await;
    assert!(
        lost.is_empty(),
        "{} lost: {:?}",
        lost.len(),
        &lost[..lost.len().min(10)]
    );
    // A duplicate is only one whose first delivery had begun before the pause.
    let received = sink.received();
    let mut first: HashMap<String, tokio::time::Instant> = HashMap::new();
    let mut count: HashMap<String, usize> = HashMap::new();
    for r in received.iter().filter(|r| r.path == "/b") {
        let id = r.header("x-vrsky-message-id").unwrap_or("").to_owned();
        first.entry(id.clone()).or_insert(r.at);
        *count.entry(id).or_default() += 1;
    }
    let twice: Vec<&String> = count.iter().filter(|(_, n)| **n > 1).map(|(id, _)| id).collect();
    let after_pause: Vec<&&String> = twice.iter().filter(|id| first[**id] > paused_at).collect();
    // Resumed, n2's workers found messages n1 had published to their queue group while n2
    // was paused: the claim fence refused them (n1, the owner now, delivers them).
    let fenced = n2.log().matches("lease is not current").count();
    eprintln!(
        "split brain: {} accepted, {} delivered twice ({} first delivered after the pause); \
         {fenced} claims refused at n2 after its resume",
        accepted.len(),
        twice.len(),
        after_pause.len()
    );
    assert!(after_pause.is_empty(), "delivered twice by two owners: {after_pause:?}");
    drop((n1, n2));
    db.drop_db().await;
}

/// The directory under `root` whose path ends with `tail` (a tenant's server dirs).
fn find_dir(root: &Path, tail: &str) -> Option<std::path::PathBuf> {
    if root.ends_with(tail) {
        return Some(root.to_owned());
    }
    std::fs::read_dir(root)
        .ok()?
        .flatten()
        .filter(|e| e.path().is_dir())
        .find_map(|e| find_dir(&e.path(), tail))
}

/// The durable write does not depend on the owner: with the owner paused (and its lease
/// still held), webhooks sent to the other node are stored and answered 202 at once. With
/// the tenant's NATS down as well they cannot be published; the storing node is then
/// killed (-9), so nobody tracks them, and the owner, resumed, finds them when it sees
/// that node leave. Every one is delivered, once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn any_node_stores_a_webhook_while_its_owner_is_paused_and_the_owner_finds_what_a_dead_node_stored() {
    let Fixture {
        dir,
        shared,
        _reaper,
        platform,
        db,
        sink,
        http,
    } = Fixture::start().await;
    // A TTL long enough that the pause below costs no lease (fencing begins at half).
    let extra = [
        ("VRSKY_CLUSTER__LEASE_TTL_MS", "20000"),
        ("VRSKY_LOG__FILTER", "warn,vrsky_runtime::cluster=info"),
    ];
    let mut n1 = start_node_with(dir.path(), &shared, "n1", &platform, &db, &extra).await;
    let n2 = start_node_with(dir.path(), &shared, "n2", &platform, &db, &extra).await;
    live_nodes(&http, &n1, 2).await;
    for t in ["a", "b"] {
        create_tenant(&http, &n1, t, &sink).await;
    }
    let placed = owners(&http, &n1).await;
    assert_eq!(placed.get("b").map(String::as_str), Some("n2"), "{placed:?}");
    let client = reqwest::Client::builder()
        .timeout(Duration::from_secs(5))
        .build()
        .unwrap();
    let mut accepted = Vec::new();
    let mut send = async |body: String| {
        let r = client
            .post(n1.url("/webhooks/b/hook"))
            .body(body.clone())
            .send()
            .await
            .unwrap_or_else(|e| panic!("webhook {body} to n1: {e}"));
        assert_eq!(r.status(), 202, "webhook {body} to n1");
        let v: Value = r.json().await.unwrap();
        accepted.push(("b".to_owned(), v["message_id"].as_str().unwrap().to_owned()));
    };
    send("before".into()).await;

    n2.pause();
    let b_servers = find_dir(&shared, "tenants/b").expect("tenant b's server dir");
    kill_servers_under(&b_servers);
    for k in 0..20 {
        send(format!("paused-{k}")).await;
    }
    // Stored by n1, published nowhere (b's NATS is down); n1 dies with them in its index.
    n1.kill9().await;
    n2.resume();
    let (lost, duplicates) = settle(&http, &n2, &sink, &accepted).await;
    eprintln!(
        "owner paused: {} webhooks stored by n1, which then died; {} lost, {duplicates} delivered twice",
        accepted.len(),
        lost.len()
    );
    assert!(
        lost.is_empty(),
        "{} lost: {:?}\nn2 log:\n{}",
        lost.len(),
        &lost[..lost.len().min(10)],
        n2.logs_tail(60)
    );
    assert!(
        n2.log().contains("a node left; scanning"),
        "n2 never scanned for what n1 stored:\n{}",
        n2.logs_tail(60)
    );
    assert_eq!(duplicates, 0);
    drop(n2);
    db.drop_db().await;
}

/// A node that joins takes tenants over gradually (one per tick from the busiest node),
/// make-before-break for the senders: webhooks sent to the first node meanwhile all get
/// 202, and every one is delivered.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_joining_node_takes_its_share_and_nothing_is_lost() {
    let Fixture {
        dir,
        shared,
        _reaper,
        platform,
        db,
        sink,
        http,
    } = Fixture::start().await;
    let n1 = start_node(dir.path(), &shared, "n1", &platform, &db).await;
    let tenants: Vec<String> = (1..=4).map(|k| format!("j{k}")).collect();
    for t in &tenants {
        create_tenant(&http, &n1, t, &sink).await;
    }
    assert!(owners(&http, &n1).await.values().all(|o| o == "n1"));
    let stop = Arc::new(AtomicBool::new(false));
    let ledger = Arc::new(Mutex::new(Ledger::default()));
    let senders = load(vec![n1.url("")], tenants.clone(), stop.clone(), ledger.clone());
    tokio::time::sleep(Duration::from_secs(1)).await;
    let n2 = start_node(dir.path(), &shared, "n2", &platform, &db).await;
    wait_until(Duration::from_secs(30), || async {
        let o = owners(&http, &n1).await;
        o.len() == 4 && o.values().filter(|x| *x == "n2").count() == 2
    })
    .await
    .unwrap_or_else(|_| panic!("no 2/2 split; n1 log:\n{}", n1.logs_tail(40)));
    tokio::time::sleep(Duration::from_secs(2)).await;
    // Settled: nothing moves any more (a gap of one or none is left alone).
    let settled = owners(&http, &n1).await;
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert_eq!(owners(&http, &n1).await, settled, "the placement flapped");
    stop.store(true, Ordering::Relaxed);
    for s in senders {
        s.await.unwrap();
    }
    let (accepted, refused) = {
        let l = ledger.lock().unwrap();
        (l.accepted.clone(), l.refused.get(&0).cloned().unwrap_or_default())
    };
    assert!(
        refused.is_empty(),
        "webhooks to n1 failed: {:?}\nn1 log:\n{}",
        &refused[..refused.len().min(10)],
        n1.logs_tail(80)
    );
    let (lost, duplicates) = settle(&http, &n1, &sink, &accepted).await;
    eprintln!(
        "join: {} accepted while two tenants moved to n2, {} lost, {duplicates} delivered more than once",
        accepted.len(),
        lost.len()
    );
    assert!(
        lost.is_empty(),
        "{} lost: {:?}",
        lost.len(),
        &lost[..lost.len().min(10)]
    );
    drop((n1, n2));
    db.drop_db().await;
}

/// Two live nodes cannot share an id (they would take each other's leases in turn): the
/// second refuses to start and names the first; once the first has stopped, the id is
/// free again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_second_node_with_a_live_nodes_id_refuses_to_start() {
    let Fixture { dir, platform, db, .. } = Fixture::start().await;
    let config = |sub: &str| {
        let mut cfg = crate::common::test_config(&dir.path().join(sub), Some(db.url.clone()));
        crate::common::use_platform(&mut cfg, &platform);
        cfg.cluster.node_id = Some("twin".into());
        cfg
    };
    let first = vrsky_runtime::app::Runtime::start(config("a"), Default::default())
        .await
        .unwrap();
    let err = match vrsky_runtime::app::Runtime::start(config("b"), Default::default()).await {
        Ok(_) => panic!("a second node with a live node's id started"),
        Err(e) => format!("{e:#}"),
    };
    assert!(
        err.contains("cluster.node_id") && err.contains(&first.base_url()),
        "{err}"
    );
    first.shutdown().await;
    let again = vrsky_runtime::app::Runtime::start(config("b"), Default::default())
        .await
        .unwrap();
    again.shutdown().await;
    db.drop_db().await;
}

/// The claim fence: a node's write that makes a message `processing` (a claim) is refused
/// for a tenant whose lease it does not hold, and allowed for one it holds. A paused owner
/// resumed past half its lease is in the first case for its tenants.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_claims_no_message_of_a_tenant_whose_lease_it_does_not_hold() {
    use vrsky_actors::message::{Event, MessageStore, RetryPolicy, decode_stored, encode_stored};
    use vrsky_actors::{MessageId, TenantId, now_ms};
    let t = crate::common::TestRuntime::start(crate::common::Backend::Sqlite).await;
    t.create_tenant("acme").await;
    let platform = t.rt().control.platform().clone();
    let claim = async |tenant: &str| {
        let mut envelope = crate::common::acme_hook_envelope(&MessageId::generate(), b"fenced");
        envelope.tenant_id = TenantId::new(tenant).unwrap();
        let vrsky_runtime::platform::Accepted::New {
            state,
            revision,
            stored,
        } = platform.accept(&envelope, 0, now_ms()).await.unwrap()
        else {
            panic!("duplicate")
        };
        let claimed = state.apply(&Event::Claim, &RetryPolicy::default(), now_ms()).unwrap();
        let record = decode_stored(&stored).unwrap().1.unwrap();
        platform
            .write(&claimed, encode_stored(&claimed, Some(&record)).unwrap(), revision)
            .await
    };
    let held = claim("acme").await;
    assert!(matches!(held, Ok(Some(_))), "the held tenant's claim: {held:?}");
    let ghost = claim("ghost").await;
    let refused = ghost.expect_err("a claim for a tenant this node does not hold was written");
    assert!(refused.to_string().contains("lease is not current"), "{refused}");
    t.shutdown().await;
}
