//! NATS isolation on real servers: every server VRSky starts refuses anonymous clients;
//! one tenant's users get nowhere on another tenant's servers or on the platform server,
//! and nowhere outside their own inbox subjects on their own; a rotation under load
//! loses no message, delivers none twice and closes the old users' connections within
//! 5 s; deleting a tenant revokes its users at once. Refused connections are audited.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use futures::StreamExt;
use reqwest::Method;
use serde_json::Value;

use crate::common::sink::Sink;
use crate::common::{Backend, TestRuntime, spec, wait_until};
use vrsky_actors::TenantId;
use vrsky_runtime::nats::jwt::{UserCreds, UserPermissions};
use vrsky_runtime::nats::trust::Role;

/// The instance URLs of a tenant.
async fn instance_urls(t: &TestRuntime, tenant: &str) -> Vec<String> {
    t.nats_instances(tenant)
        .await
        .iter()
        .map(|i| i["url"].as_str().unwrap().to_owned())
        .collect()
}

/// Options that record when the connection first drops.
fn watch_disconnect(o: async_nats::ConnectOptions) -> (async_nats::ConnectOptions, Arc<Mutex<Option<Instant>>>) {
    let at = Arc::new(Mutex::new(None::<Instant>));
    let seen = at.clone();
    let o = o.event_callback(move |e| {
        let seen = seen.clone();
        async move {
            if matches!(e, async_nats::Event::Disconnected) {
                seen.lock().unwrap().get_or_insert(Instant::now());
            }
        }
    });
    (o, at)
}

fn tls(t: &TestRuntime, o: async_nats::ConnectOptions) -> async_nats::ConnectOptions {
    o.add_root_certificates(t.rt().trust.ca_file().to_path_buf())
        .require_tls(true)
}

/// Connects as `creds` with TLS; no retries.
async fn connect_as(
    t: &TestRuntime,
    creds: &UserCreds,
    url: &str,
) -> Result<async_nats::Client, async_nats::ConnectError> {
    tls(t, creds.connect_options()).connect(url).await
}

async fn account(t: &TestRuntime, tenant: &str) -> Arc<vrsky_runtime::nats::trust::TenantAccount> {
    t.rt().trust.tenant(&TenantId::new(tenant).unwrap()).await.unwrap()
}

/// Audit entries of `action` for `tenant`.
async fn audited(t: &TestRuntime, tenant: &str, action: &str) -> Vec<Value> {
    let (_, v) = t
        .api(Method::GET, &format!("/api/audit?tenant={tenant}&limit=500"), None)
        .await;
    v["entries"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|e| e["action"] == action)
        .cloned()
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn anonymous_connections_are_refused_by_every_server() {
    let t = TestRuntime::start(Backend::Sqlite).await;
    t.create_tenant("a").await;
    let (s, v) = t.api(Method::POST, "/api/tenants/a/nats-instances", None).await;
    assert_eq!(s, 201, "{v}");
    let mut servers = instance_urls(&t, "a").await;
    assert_eq!(servers.len(), 2);
    servers.push(t.rt().platform_url.clone());
    for url in &servers {
        // Without TLS: the server requires it.
        let plain = async_nats::ConnectOptions::new().connect(url.as_str()).await;
        assert!(plain.is_err(), "{url} accepted a plain-text anonymous client");
        // With TLS and no credentials: refused by authentication.
        let e = tls(&t, async_nats::ConnectOptions::new())
            .connect(url.as_str())
            .await
            .err()
            .unwrap_or_else(|| panic!("{url} accepted an anonymous TLS client"));
        assert_eq!(
            e.kind(),
            async_nats::ConnectErrorKind::AuthorizationViolation,
            "{url}: {e}"
        );
        // A token or a user/password is no better.
        let e = tls(
            &t,
            async_nats::ConnectOptions::with_user_and_password("vrsky".into(), "vrsky".into()),
        )
        .connect(url.as_str())
        .await
        .err()
        .unwrap_or_else(|| panic!("{url} accepted a user/password"));
        assert_eq!(
            e.kind(),
            async_nats::ConnectErrorKind::AuthorizationViolation,
            "{url}: {e}"
        );
    }
    // The tenant servers' refusals are in the audit log.
    let ok = wait_until(Duration::from_secs(10), || async {
        audited(&t, "a", "nats.auth_failed").await.len() >= 4
    })
    .await;
    assert!(ok.is_ok(), "{:?}", audited(&t, "a", "nats.auth_failed").await);
    let e = &audited(&t, "a", "nats.auth_failed").await[0];
    assert!(e["detail"].as_str().unwrap().contains("127.0.0.1"), "{e}");
    t.shutdown().await;
}

/// Subjects an attacker tries: both tenants' inboxes and outboxes for real and made-up
/// integrations, wildcards, and the server's own namespaces.
fn subjects() -> Vec<String> {
    let mut s = Vec::new();
    for tenant in ["a", "b", "c", "*"] {
        for integration in ["hook", "other", "x-1", "*", ">"] {
            s.push(format!("vrsky.t.{tenant}.i.{integration}.in"));
            s.push(format!("vrsky.t.{tenant}.i.{integration}.out"));
        }
    }
    s.extend(
        [
            ">",
            "*",
            "vrsky.>",
            "vrsky.t.>",
            "vrsky.t.b.>",
            "vrsky.t.a.>",
            "vrsky.t.a.i.hook",
            "vrsky.t.a.i.hook.in.x",
            "vrsky.retry.a.hook",
            "vrsky.dlq.a.>",
            "$SYS.>",
            "$SYS.REQ.ACCOUNT.*.CLAIMS.UPDATE",
            "$SYS.SERVER.*.CLIENT.AUTH.ERR",
            "$SYS.REQ.SERVER.PING",
            "$JS.API.>",
            "$JS.API.INFO",
            "$JS.API.STREAM.LIST",
            "$KV.message_state.>",
            "$KV.message_state.a.hook.x",
            "_INBOX.>",
            "_INBOX.abc",
            "_INBOX.abc.def",
            "$G.>",
            "a.>",
        ]
        .map(str::to_owned),
    );
    s
}

fn concrete(subject: &str) -> bool {
    !subject.split('.').any(|t| t == "*" || t == ">")
}

/// A concrete subject that `pattern` matches.
fn instance_of(pattern: &str) -> String {
    pattern
        .split('.')
        .map(|t| match t {
            "*" => "z",
            ">" => "z.z",
            other => other,
        })
        .collect::<Vec<_>>()
        .join(".")
}

/// Whether the runtime's own users of `tenant` may use `subject`: the tenant's inboxes
/// (`vrsky.t.{tenant}.i.*.in`) and subsets of them.
fn allowed(tenant: &str, subject: &str) -> bool {
    let p: Vec<&str> = subject.split('.').collect();
    matches!(p.as_slice(), ["vrsky", "t", t, "i", i, "in"] if *t == tenant && *i != ">")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cross_tenant_matrix_on_real_servers() {
    let sink = Sink::start().await;
    let t = TestRuntime::start(Backend::Sqlite).await;
    t.create_tenant("a").await;
    t.create_tenant("b").await;
    t.create_integration("a", spec("hook", &sink.url("/a"), Value::Null))
        .await;
    t.create_integration("b", spec("hook", &sink.url("/b"), Value::Null))
        .await;
    let a_url = instance_urls(&t, "a").await.remove(0);
    let b_url = instance_urls(&t, "b").await.remove(0);
    let platform = t.rt().platform_url.clone();
    let (acc_a, acc_b) = (account(&t, "a").await, account(&t, "b").await);
    let subjects = subjects();
    let mut attempts = 0usize;
    let mut succeeded = Vec::new();

    // 1. One tenant's users against the other's server and against the platform server:
    //    every connection is refused, so no publish or subscribe happens.
    for (creds_of, acc, target) in [
        ("a", &acc_a, &b_url),
        ("b", &acc_b, &a_url),
        ("a", &acc_a, &platform),
        ("b", &acc_b, &platform),
    ] {
        for role in [Role::Ingress, Role::Worker] {
            let creds = acc.creds(role);
            for subject in &subjects {
                for op in ["pub", "sub"] {
                    attempts += 1;
                    match connect_as(&t, &creds, target).await {
                        Err(e) => assert_eq!(
                            e.kind(),
                            async_nats::ConnectErrorKind::AuthorizationViolation,
                            "{creds_of}/{role:?} on {target}: {e}"
                        ),
                        Ok(c) => {
                            succeeded.push(format!("{creds_of}/{role:?} connected to {target} ({op} {subject})"));
                            drop(c);
                        }
                    }
                }
            }
        }
    }

    // 2. Tenant a's own users on a's server, outside their permissions. An observer with
    //    every permission in a's account sees what gets through.
    let observer = acc_a
        .mint_user(
            "test-observer",
            &UserPermissions {
                publish: vec![">".into()],
                subscribe: vec![">".into()],
            },
        )
        .unwrap();
    let observer = connect_as(&t, &observer, &a_url).await.unwrap();
    let mut seen = observer.subscribe(">").await.unwrap();
    observer.flush().await.unwrap();
    let ingress = connect_as(&t, &acc_a.creds(Role::Ingress), &a_url).await.unwrap();
    let worker = connect_as(&t, &acc_a.creds(Role::Worker), &a_url).await.unwrap();

    // Denied publishes: the ingress user outside a's inboxes, the worker anywhere.
    let mut denied_pubs = 0usize;
    for subject in subjects.iter().filter(|s| concrete(s)) {
        if !allowed("a", subject) {
            ingress.publish(subject.clone(), "forged".into()).await.unwrap();
            denied_pubs += 1;
        }
        worker.publish(subject.clone(), "forged".into()).await.unwrap();
        denied_pubs += 1;
    }
    // A positive control: an allowed publish arrives, so the observer does see traffic.
    ingress.publish("vrsky.t.a.i.zzz.in", "allowed".into()).await.unwrap();
    ingress.flush().await.unwrap();
    worker.flush().await.unwrap();
    attempts += denied_pubs;
    let mut got_through = Vec::new();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(2);
    let mut control_seen = false;
    while let Ok(Some(m)) = tokio::time::timeout_at(deadline, seen.next()).await {
        if m.payload.as_ref() == b"allowed" {
            control_seen = true;
        } else if m.payload.as_ref() == b"forged" {
            got_through.push(m.subject.to_string());
        }
    }
    assert!(control_seen, "the observer saw nothing: the test would prove nothing");
    succeeded.extend(got_through.into_iter().map(|s| format!("a published on {s}")));

    // Denied subscriptions: the ingress user anywhere, the worker outside a's inboxes.
    let received = Arc::new(Mutex::new(Vec::<String>::new()));
    let mut readers = Vec::new();
    let mut denied_subs = 0usize;
    for subject in &subjects {
        let mut subs = vec![("ingress", ingress.subscribe(subject.clone()).await.unwrap())];
        if !allowed("a", subject) {
            subs.push(("worker", worker.subscribe(subject.clone()).await.unwrap()));
        }
        for (who, mut sub) in subs {
            denied_subs += 1;
            let (received, subject) = (received.clone(), subject.clone());
            readers.push(tokio::spawn(async move {
                while let Some(m) = sub.next().await {
                    received
                        .lock()
                        .unwrap()
                        .push(format!("{who} subscribed to {subject} got {}", m.subject));
                }
            }));
        }
    }
    let mut control = worker.subscribe("vrsky.t.a.i.zzz.in").await.unwrap();
    ingress.flush().await.unwrap();
    worker.flush().await.unwrap();
    for subject in &subjects {
        observer.publish(instance_of(subject), "bait".into()).await.unwrap();
    }
    // The positive control is published until it arrives (core NATS does not keep a
    // message for a subscription a busy client is still making): the worker's
    // connection does receive, so the silence of the denied subscriptions means something.
    let control_arrived = tokio::time::timeout(Duration::from_secs(15), async {
        loop {
            observer.publish("vrsky.t.a.i.zzz.in", "control".into()).await.unwrap();
            observer.flush().await.unwrap();
            if let Ok(Some(_)) = tokio::time::timeout(Duration::from_millis(500), control.next()).await {
                return;
            }
        }
    })
    .await;
    assert!(
        control_arrived.is_ok(),
        "the worker's own inbox subscription got nothing: worker {:?} {:?}, observer {:?}",
        worker.connection_state(),
        worker.statistics(),
        observer.connection_state()
    );
    // And the baits once more, now that the worker's connection is known to receive.
    for subject in &subjects {
        observer.publish(instance_of(subject), "bait".into()).await.unwrap();
    }
    observer.flush().await.unwrap();
    tokio::time::sleep(Duration::from_millis(500)).await;
    attempts += denied_subs;
    succeeded.extend(received.lock().unwrap().iter().cloned());
    for r in readers {
        r.abort();
    }

    assert!(attempts >= 1000, "only {attempts} attempts");
    assert!(
        succeeded.is_empty(),
        "{} of {attempts} attempts succeeded: {succeeded:#?}",
        succeeded.len()
    );
    // b's server refused a's users, and audited it (within its budget).
    let ok = wait_until(Duration::from_secs(10), || async {
        !audited(&t, "b", "nats.auth_failed").await.is_empty()
    })
    .await;
    assert!(ok.is_ok(), "no nats.auth_failed entry for b");
    eprintln!("cross-tenant NATS matrix: {attempts} attempts, 0 succeeded");
    for c in [observer, ingress, worker] {
        let _ = c.drain().await;
    }
    sink.stop();
    t.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rotation_under_load_loses_nothing_and_revocation_closes_connections() {
    let sink = Sink::start().await;
    let t = TestRuntime::start(Backend::Sqlite).await;
    t.create_tenant("acme").await;
    t.create_integration("acme", spec("hook", &sink.url("/hook"), Value::Null))
        .await;
    let url = instance_urls(&t, "acme").await.remove(0);
    let acc = account(&t, "acme").await;

    // Someone holding the current worker credentials, connected.
    let old = acc.creds(Role::Worker);
    let (options, closed_at) = watch_disconnect(tls(&t, old.connect_options()));
    let outsider = options.connect(url.as_str()).await.unwrap();
    let _outsider_sub = outsider.subscribe("vrsky.t.acme.i.hook.in").await.unwrap();
    outsider.flush().await.unwrap();

    // Load: webhooks from 8 senders while the credentials rotate twice.
    const N: usize = 600;
    let next = Arc::new(AtomicUsize::new(0));
    let accepted = Arc::new(Mutex::new(Vec::<String>::new()));
    let senders: Vec<_> = (0..8)
        .map(|_| {
            let (next, accepted, http, url) = (
                next.clone(),
                accepted.clone(),
                t.http.clone(),
                t.url("/webhooks/acme/hook"),
            );
            tokio::spawn(async move {
                loop {
                    let i = next.fetch_add(1, Ordering::Relaxed);
                    if i >= N {
                        break;
                    }
                    let r = http.post(&url).body(format!("{{\"n\":{i}}}")).send().await.unwrap();
                    assert_eq!(r.status().as_u16(), 202, "webhook {i}");
                    let v: Value = r.json().await.unwrap();
                    accepted
                        .lock()
                        .unwrap()
                        .push(v["message_id"].as_str().unwrap().to_owned());
                }
            })
        })
        .collect();
    wait_until(Duration::from_secs(30), || async {
        next.load(Ordering::Relaxed) >= N / 4
    })
    .await
    .unwrap();
    let rotated = Instant::now();
    let (s, r) = t.api(Method::POST, "/api/tenants/acme/credentials/rotate", None).await;
    assert_eq!(s, 200, "{r}");
    assert_eq!(r["servers_updated"], 1, "{r}");
    assert!(r["rotated_at"].as_str().unwrap().ends_with('Z'), "{r}");
    // The old user's connection is closed by its server within 5 s.
    wait_until(Duration::from_secs(5), || async { closed_at.lock().unwrap().is_some() })
        .await
        .expect("the revoked user's connection stayed open");
    let took = closed_at.lock().unwrap().unwrap() - rotated;
    assert!(took < Duration::from_secs(5), "closed after {took:?}");
    // A second rotation while the load goes on.
    wait_until(Duration::from_secs(30), || async {
        next.load(Ordering::Relaxed) >= N / 2
    })
    .await
    .unwrap();
    let (s, r) = t.api(Method::POST, "/api/tenants/acme/credentials/rotate", None).await;
    assert_eq!(s, 200, "{r}");
    for s in senders {
        s.await.unwrap();
    }

    // Every accepted webhook is delivered exactly once.
    let accepted = accepted.lock().unwrap().clone();
    assert_eq!(accepted.len(), N);
    sink.wait_for("/hook", N, Duration::from_secs(60)).await;
    let ids = sink.ids("/hook");
    let missing: Vec<_> = accepted.iter().filter(|id| !ids.contains_key(*id)).collect();
    assert!(
        missing.is_empty(),
        "{} accepted webhooks never delivered",
        missing.len()
    );
    let twice: Vec<_> = ids.iter().filter(|(_, n)| **n > 1).collect();
    assert!(twice.is_empty(), "delivered more than once: {twice:?}");
    for id in accepted.iter().take(20) {
        t.wait_status("acme", id, "completed").await;
    }

    // The old user is refused from now on; the current one connects.
    let e = connect_as(&t, &old, &url)
        .await
        .expect_err("a revoked user connected again");
    assert_eq!(e.kind(), async_nats::ConnectErrorKind::AuthorizationViolation, "{e}");
    let current = connect_as(&t, &acc.creds(Role::Worker), &url).await.unwrap();
    assert_eq!(audited(&t, "acme", "credentials.rotate").await.len(), 2);

    // Deleting the tenant revokes its users: a live connection closes within 5 s.
    let (options, closed) = watch_disconnect(tls(&t, acc.creds(Role::Ingress).connect_options()));
    let live = options.connect(url.as_str()).await.unwrap();
    let deleting = Instant::now();
    let (s, v) = t.api(Method::DELETE, "/api/tenants/acme", None).await;
    assert_eq!(s, 204, "{v}");
    wait_until(Duration::from_secs(5), || async { closed.lock().unwrap().is_some() })
        .await
        .expect("a deleted tenant's connection stayed open");
    assert!(closed.lock().unwrap().unwrap() - deleting < Duration::from_secs(5));
    let revoked = audited(&t, "acme", "credentials.revoke").await;
    assert_eq!(revoked.len(), 1, "{revoked:?}");
    assert_eq!(revoked[0]["outcome"], "ok", "{revoked:?}");
    drop((live, current, outsider));
    sink.stop();
    t.shutdown().await;
}

/// Automatic rotation: with a period of two seconds the TenantActor's timer rotates by
/// itself (audited as automatic), the user it replaced is refused, and webhooks are
/// still delivered.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn credentials_rotate_by_themselves_when_due() {
    let sink = Sink::start().await;
    let t = TestRuntime::start_with(Backend::Sqlite, |c| {
        c.security.credential_rotation_days = 2.0 / 86_400.0;
    })
    .await;
    t.create_tenant("acme").await;
    t.create_integration("acme", spec("hook", &sink.url("/hook"), Value::Null))
        .await;
    let url = instance_urls(&t, "acme").await.remove(0);
    let acc = account(&t, "acme").await;
    let automatic = || async {
        audited(&t, "acme", "credentials.rotate")
            .await
            .iter()
            .filter(|e| e["actor"] == "runtime" && e["detail"].as_str().unwrap_or("").starts_with("automatic"))
            .count()
    };
    let before = automatic().await;
    let old = acc.creds(Role::Worker);
    wait_until(Duration::from_secs(20), || async { automatic().await > before })
        .await
        .expect("no automatic rotation within 20 s of a 2 s period");
    let e = connect_as(&t, &old, &url)
        .await
        .expect_err("a rotated-out user connected");
    assert_eq!(e.kind(), async_nats::ConnectErrorKind::AuthorizationViolation, "{e}");
    let (s, v) = t.webhook_json("acme", "hook", b"{}".to_vec(), &[]).await;
    assert_eq!(s, 202, "{v}");
    t.wait_status("acme", v["message_id"].as_str().unwrap(), "completed")
        .await;
    sink.stop();
    t.shutdown().await;
}
