//! SSRF: with `producer.allow_private_targets` off, no producer URL reaches a listener on
//! this machine, whatever form the address takes (IP literal spellings, IPv6 forms that
//! embed IPv4, names that resolve to loopback). Each target is refused when the
//! integration is created, or its delivery fails before connecting.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use vrsky_actors::components::{HttpMethod, HttpProducerSpec, ProduceErrorKind, Producer};
use vrsky_actors::{Envelope, IntegrationId, MessageId, TenantId};
use vrsky_runtime::producer::{HttpProducer, http_client};

/// Listens on every IPv4 address and on IPv6 loopback at one port, counting connections.
async fn listener() -> (u16, Arc<AtomicUsize>) {
    let v4 = tokio::net::TcpListener::bind("0.0.0.0:0").await.unwrap();
    let port = v4.local_addr().unwrap().port();
    let v6 = tokio::net::TcpListener::bind(("::1", port)).await.ok();
    let hits = Arc::new(AtomicUsize::new(0));
    for l in std::iter::once(v4).chain(v6) {
        let hits = hits.clone();
        tokio::spawn(async move {
            while let Ok((_sock, _)) = l.accept().await {
                hits.fetch_add(1, Ordering::SeqCst);
            }
        });
    }
    (port, hits)
}

fn corpus(port: u16, hostname: &str) -> Vec<String> {
    let hosts = [
        // IPv4 loopback in every spelling the URL standard accepts.
        "127.0.0.1",
        "127.1",
        "127.0.1",
        "127.127.127.127",
        "2130706433",
        "0x7f000001",
        "0x7f.0.0.1",
        "0x7f.1",
        "0177.0.0.1",
        "0177.1",
        "017700000001",
        "127.000.000.001",
        "127%2E0%2E0%2E1",
        "127\u{3002}0\u{3002}0\u{3002}1",
        "0.0.0.0",
        "0",
        "0x0",
        // Other blocked IPv4 ranges (private, shared, link-local, metadata, reserved).
        "10.0.0.1",
        "172.16.0.1",
        "192.168.0.1",
        "169.254.169.254",
        "100.64.0.1",
        "198.18.0.1",
        "192.0.0.1",
        "224.0.0.1",
        "240.0.0.1",
        "255.255.255.255",
        // IPv6 loopback and forms embedding IPv4.
        "[::1]",
        "[0:0:0:0:0:0:0:1]",
        "[0000:0000:0000:0000:0000:0000:0000:0001]",
        "[::]",
        "[::ffff:127.0.0.1]",
        "[::ffff:7f00:1]",
        "[::127.0.0.1]",
        "[::ffff:0:127.0.0.1]",
        "[64:ff9b::127.0.0.1]",
        "[2002:7f00:1::1]",
        "[2001::1]",
        "[::ffff:169.254.169.254]",
        "[fe80::1]",
        "[fec0::1]",
        "[fc00::1]",
        "[fd00:ec2::254]",
        "[ff02::1]",
        // Names that are, or resolve to, this machine.
        "localhost",
        "localhost.",
        "LOCALHOST",
        "api.localhost",
        hostname,
        &format!("{hostname}."),
        "ip6-localhost",
        "ip6-loopback",
    ];
    let mut urls: Vec<String> = hosts.iter().map(|h| format!("http://{h}:{port}/hook")).collect();
    // Other URL tricks around a loopback host.
    urls.push(format!("http://example.com@127.0.0.1:{port}/"));
    urls.push(format!("http://127.0.0.1:{port}#@example.com/"));
    urls.push(format!("https://127.0.0.1:{port}/"));
    urls.push(format!("http://127.0.0.1:{port}\\@example.com/"));
    urls
}

fn envelope() -> Envelope {
    Envelope {
        message_id: MessageId::generate(),
        tenant_id: TenantId::new("t").unwrap(),
        integration_id: IntegrationId::new("i").unwrap(),
        headers: vec![],
        content_type: None,
        payload: bytes::Bytes::from_static(b"{}"),
        payload_ref: None,
        trace_context: None,
        attempt: 1,
        received_at_ms: 0,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_producer_url_reaches_this_machine() {
    vrsky_runtime::install_crypto_provider();
    let (port, hits) = listener().await;
    let hostname = std::fs::read_to_string("/proc/sys/kernel/hostname")
        .unwrap()
        .trim()
        .to_owned();
    let urls = corpus(port, &hostname);
    assert!(urls.len() >= 50, "{} targets", urls.len());
    let client = http_client(false).unwrap();
    let (mut refused_at_create, mut refused_at_delivery) = (0, 0);
    let mut deliveries = Vec::new();
    for url in &urls {
        let spec = HttpProducerSpec {
            url: url.clone(),
            method: HttpMethod::Post,
            headers: Default::default(),
            timeout_ms: 2000,
            signing: None,
            payload_delivery: Default::default(),
        };
        match HttpProducer::new(client.clone(), &spec, false) {
            Err(e) => {
                assert_eq!(e.field, "producer.url", "{url}: {e:?}");
                refused_at_create += 1;
            }
            Ok(p) => deliveries.push((url.clone(), p)),
        }
    }
    let mut unresolved = 0;
    for (url, p) in &deliveries {
        let e = p.deliver(&envelope()).await.expect_err(url);
        if e.message.contains("dns error") {
            // Not resolvable here (`vm.` is not in /etc/hosts): nothing to connect to.
            unresolved += 1;
            continue;
        }
        // Names that resolve here fail before connecting, permanently, with a reason
        // that says nothing of the port.
        assert_eq!(e.kind, ProduceErrorKind::Permanent, "{url}: {}", e.message);
        assert!(
            e.message.contains("resolves only to addresses outside"),
            "{url}: {}",
            e.message
        );
        refused_at_delivery += 1;
    }
    eprintln!(
        "{} targets: {refused_at_create} refused at create, {refused_at_delivery} at delivery, {unresolved} unresolvable, {} connections",
        urls.len(),
        hits.load(Ordering::SeqCst)
    );
    assert_eq!(hits.load(Ordering::SeqCst), 0, "a producer reached this machine");
    // This machine's own name resolves (to loopback or its own address) wherever the
    // tests run; its delivery is the one refused by the resolver's check.
    if tokio::net::lookup_host((hostname.as_str(), 0)).await.is_ok() {
        assert!(refused_at_delivery >= 1, "{hostname} was not resolved and checked");
    }

    // The same listener is reachable when private targets are allowed (as in `vrsky dev`):
    // the corpus would have hit it.
    let spec = HttpProducerSpec {
        url: format!("http://localhost:{port}/"),
        method: HttpMethod::Post,
        headers: Default::default(),
        timeout_ms: 500,
        signing: None,
        payload_delivery: Default::default(),
    };
    let p = HttpProducer::new(http_client(true).unwrap(), &spec, true).unwrap();
    let _ = p.deliver(&envelope()).await;
    assert!(hits.load(Ordering::SeqCst) >= 1, "the listener is not reachable at all");
}
