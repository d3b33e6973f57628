//! Standard Webhooks: an integration that requires signed webhooks refuses unsigned, badly
//! signed and stale ones with 401; its deliveries are signed, with the message id as
//! `webhook-id` on every attempt, and verify with an independent HMAC implementation
//! (Python's); secrets are never shown and survive a read-modify-write update.

use std::time::Duration;

use reqwest::Method;
use serde_json::{Value, json};

use crate::common::sink::{FailFirst, Sink};
use crate::common::{Backend, TestRuntime, spec};

const INCOMING: &str = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw";
const OUTGOING: &str = "whsec_c2lnbmluZy1zZWNyZXQtZm9yLWRlbGl2ZXJpZXM=";

/// `v1,<base64>` computed by Python's standard library, not by VRSky's code.
fn python_signature(secret: &str, id: &str, timestamp: &str, body: &[u8]) -> String {
    let out = std::process::Command::new("python3")
        .args([
            "-c",
            "import base64,hashlib,hmac,sys; k=base64.b64decode(sys.argv[1].split('_',1)[1]); \
             m=(sys.argv[2]+'.'+sys.argv[3]+'.').encode()+bytes.fromhex(sys.argv[4]); \
             print('v1,'+base64.b64encode(hmac.new(k,m,hashlib.sha256).digest()).decode())",
            secret,
            id,
            timestamp,
            &body.iter().map(|b| format!("{b:02x}")).collect::<String>(),
        ])
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8(out.stdout).unwrap().trim().to_owned()
}

fn now_s() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn signed_webhooks_in_and_out() {
    let sink = Sink::start().await;
    sink.fail_first(FailFirst {
        n: 1,
        status: 503,
        ..Default::default()
    });
    let t = TestRuntime::start(Backend::Sqlite).await;
    t.create_tenant("acme").await;
    let mut hook = spec(
        "hook",
        &sink.url("/hook"),
        json!({
            "consumer": {"signature": {"scheme": "standard-webhooks", "secret": INCOMING}},
            "retry": {"max_retries": 3, "backoff_base_s": 0.05}
        }),
    );
    hook["producer"]["signing"] = json!({"secret": OUTGOING});
    hook["producer"]["headers"] = json!({"authorization": "Bearer downstream-key"});
    let created = t.create_integration("acme", hook).await;
    // Secrets and header values are never shown.
    assert_eq!(created["consumer"]["signature"]["secret"], "********", "{created}");
    assert_eq!(created["producer"]["signing"]["secret"], "********", "{created}");
    assert_eq!(created["producer"]["headers"]["authorization"], "********", "{created}");

    let post = |headers: Vec<(&'static str, String)>, body: &'static str| {
        let mut r = t.http.post(t.url("/webhooks/acme/hook")).body(body);
        for (k, v) in headers {
            r = r.header(k, v);
        }
        async move {
            let r = r.send().await.unwrap();
            let status = r.status().as_u16();
            (status, r.json::<Value>().await.unwrap_or(Value::Null))
        }
    };
    let body = r#"{"type":"order","id":1}"#;
    let ts = now_s().to_string();
    let good = python_signature(INCOMING, "evt-1", &ts, body.as_bytes());
    let signed = |id: &'static str, ts: String, sig: String| {
        vec![
            ("webhook-id", id.to_owned()),
            ("webhook-timestamp", ts),
            ("webhook-signature", sig),
        ]
    };
    // Refused: unsigned, a missing header, a bad signature, a signature of another body,
    // a stale timestamp.
    let stale = (now_s() - 600).to_string();
    for (headers, why) in [
        (vec![], "missing webhook-id"),
        (
            signed("evt-1", ts.clone(), good.clone())[..2].to_vec(),
            "missing webhook-signature",
        ),
        (
            signed("evt-1", ts.clone(), "v1,AAAA".into()),
            "no webhook-signature matches",
        ),
        (
            signed("evt-2", ts.clone(), good.clone()),
            "no webhook-signature matches",
        ),
        (
            signed(
                "evt-1",
                stale.clone(),
                python_signature(INCOMING, "evt-1", &stale, body.as_bytes()),
            ),
            "more than 5 minutes",
        ),
    ] {
        let (s, v) = post(headers, body).await;
        assert_eq!(
            (s, v["error"]["code"].as_str()),
            (401, Some("bad_signature")),
            "{why}: {v}"
        );
        assert!(v["error"]["message"].as_str().unwrap().contains(why), "{why}: {v}");
    }
    // Accepted once; the same webhook-id again is a duplicate.
    let (s, v) = post(signed("evt-1", ts.clone(), good.clone()), body).await;
    assert_eq!(s, 202, "{v}");
    let id = v["message_id"].as_str().unwrap().to_owned();
    let (s, again) = post(signed("evt-1", ts.clone(), good.clone()), body).await;
    assert_eq!((s, again["duplicate"].as_bool()), (200, Some(true)), "{again}");
    assert_eq!(again["message_id"], id.as_str());

    // Delivered on attempt 2 (the first got 503): both attempts signed, same webhook-id.
    t.wait_status("acme", &id, "completed").await;
    let attempts = sink.for_message(&id);
    assert_eq!(attempts.len(), 2);
    for r in &attempts {
        assert_eq!(r.header("webhook-id"), Some(id.as_str()));
        let ts = r.header("webhook-timestamp").unwrap();
        assert!(ts.parse::<u64>().unwrap().abs_diff(now_s()) < 60, "{ts}");
        assert_eq!(
            r.header("webhook-signature").unwrap(),
            python_signature(OUTGOING, &id, ts, &r.body),
            "the delivery does not verify"
        );
        assert_eq!(r.header("authorization"), Some("Bearer downstream-key"));
    }

    // Read, change a field, write back: the redacted secrets keep their values.
    let path = "/api/tenants/acme/integrations/hook";
    let (_, mut current) = t.api(Method::GET, path, None).await;
    let obj = current.as_object_mut().unwrap();
    for k in ["tenant_id", "webhook_path", "created_at", "stats"] {
        obj.remove(k);
    }
    current["producer"]["timeout_ms"] = json!(4000);
    let (s, v) = t.api(Method::PUT, path, Some(current)).await;
    assert_eq!(s, 200, "{v}");
    assert_eq!(v["producer"]["timeout_ms"], 4000);
    let ts = now_s().to_string();
    let sig = python_signature(INCOMING, "evt-3", &ts, body.as_bytes());
    let (s, v) = post(signed("evt-3", ts, sig), body).await;
    assert_eq!(s, 202, "the incoming secret was lost in the update: {v}");
    let id = v["message_id"].as_str().unwrap().to_owned();
    t.wait_status("acme", &id, "completed").await;
    let r = &sink.for_message(&id)[0];
    let ts = r.header("webhook-timestamp").unwrap();
    assert_eq!(
        r.header("webhook-signature").unwrap(),
        python_signature(OUTGOING, &id, ts, &r.body)
    );
    assert_eq!(r.header("authorization"), Some("Bearer downstream-key"));

    // A secret that is not one is refused at create, naming the field.
    let mut bad = spec("bad", &sink.url("/bad"), json!({}));
    bad["producer"]["signing"] = json!({"secret": "not-a-secret"});
    let (s, v) = t.api(Method::POST, "/api/tenants/acme/integrations", Some(bad)).await;
    assert_eq!(s, 400, "{v}");
    assert!(
        v["error"]["message"]
            .as_str()
            .unwrap()
            .contains("producer.signing.secret"),
        "{v}"
    );
    sink.wait_for("/hook", 3, Duration::from_secs(5)).await;
    sink.stop();
    t.shutdown().await;
}

/// Producer header values and signing secrets are not in the metadata store in plain
/// text, and a restarted node opens them again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn secrets_are_encrypted_at_rest_and_survive_a_restart() {
    let sink = Sink::start().await;
    let mut t = TestRuntime::start(Backend::Sqlite).await;
    t.create_tenant("acme").await;
    let mut hook = spec("hook", &sink.url("/hook"), json!({}));
    hook["producer"]["signing"] = json!({"secret": OUTGOING});
    hook["producer"]["headers"] = json!({"authorization": "Bearer downstream-key-0123"});
    t.create_integration("acme", hook).await;
    let stored: Vec<u8> = ["vrsky.db", "vrsky.db-wal"]
        .iter()
        .filter_map(|f| std::fs::read(t.dir.path().join(f)).ok())
        .flatten()
        .collect();
    let text = String::from_utf8_lossy(&stored);
    assert!(
        text.contains("\"id\":\"hook\""),
        "the spec is not where it was looked for"
    );
    assert!(
        !text.contains("downstream-key-0123"),
        "a header value is stored in plain text"
    );
    assert!(
        !text.contains(&OUTGOING[6..]),
        "the signing secret is stored in plain text"
    );
    assert!(text.contains("enc:v1:"), "no sealed value found");

    t.restart().await;
    let (s, v) = t.webhook_json("acme", "hook", b"after".to_vec(), &[]).await;
    assert_eq!(s, 202, "{v}");
    let id = v["message_id"].as_str().unwrap().to_owned();
    t.wait_status("acme", &id, "completed").await;
    let r = &sink.for_message(&id)[0];
    assert_eq!(r.header("authorization"), Some("Bearer downstream-key-0123"));
    let ts = r.header("webhook-timestamp").unwrap();
    assert_eq!(
        r.header("webhook-signature").unwrap(),
        python_signature(OUTGOING, &id, ts, &r.body)
    );
    sink.stop();
    t.shutdown().await;
}
