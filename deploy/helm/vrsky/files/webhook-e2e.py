"""`helm test` of the vrsky chart: one webhook end to end through a running node.

Creates a tenant (or uses TEST_TENANT) and an integration whose producer posts to a
small HTTP server in this pod (or to TEST_TARGET_URL), sends one webhook (202), polls the
message until it is `completed` (delivered), checks what the server received, and
deletes what it created. Standard library only (runs on python:3-alpine). Every step
prints what it did; any failure exits 1 with the reason.
"""

import http.server
import json
import os
import sys
import threading
import time
import urllib.error
import urllib.request
import uuid

API = os.environ["VRSKY_URL"].rstrip("/")
TOKEN = os.environ["VRSKY_ADMIN_TOKEN"]
TENANT = os.environ.get("TEST_TENANT") or "helm-test-" + uuid.uuid4().hex[:8]
OWN_TENANT = not os.environ.get("TEST_TENANT")
INTEGRATION = "helm-test-" + uuid.uuid4().hex[:8]
TARGET = os.environ.get("TEST_TARGET_URL", "")
SINK_PORT = int(os.environ.get("TEST_SINK_PORT", "8080"))
POD_IP = os.environ.get("POD_IP", "")
ALLOW_PRIVATE = os.environ.get("ALLOW_PRIVATE_TARGETS", "false") == "true"
DEADLINE = time.monotonic() + float(os.environ.get("TEST_TIMEOUT_S", "300"))

received = []


class Sink(http.server.BaseHTTPRequestHandler):
    """The producer's target: records each POST and answers 200."""

    def do_POST(self):  # noqa: N802 (http.server's naming)
        body = self.rfile.read(int(self.headers.get("content-length") or 0))
        received.append((self.headers.get("x-vrsky-message-id"), body))
        self.send_response(200)
        self.send_header("content-length", "0")
        self.end_headers()

    def log_message(self, fmt, *args):
        print("sink:", fmt % args, flush=True)


def fail(why):
    print("FAIL:", why, flush=True)
    raise SystemExit(1)


def call(method, path, body=None, auth=True, headers=None):
    """One HTTP call: (status, parsed JSON or raw text, headers)."""
    data = None if body is None else (body if isinstance(body, bytes) else json.dumps(body).encode())
    req = urllib.request.Request(API + path, data=data, method=method)
    req.add_header("content-type", "application/json")
    if auth:
        req.add_header("authorization", "Bearer " + TOKEN)
    for k, v in (headers or {}).items():
        req.add_header(k, v)
    try:
        with urllib.request.urlopen(req, timeout=30) as r:
            status, raw, hdrs = r.status, r.read(), r.headers
    except urllib.error.HTTPError as e:
        status, raw, hdrs = e.code, e.read(), e.headers
    except (urllib.error.URLError, OSError) as e:
        return 0, str(e), {}
    try:
        return status, json.loads(raw or b"null"), hdrs
    except ValueError:
        return status, raw.decode(errors="replace"), hdrs


def until(what, attempt, pause=1.0):
    """Runs attempt() until it returns a value other than None, or the deadline."""
    last = None
    while time.monotonic() < DEADLINE:
        result, last = attempt()
        if result is not None:
            return result
        time.sleep(pause)
    fail(f"{what}: gave up at the deadline; last answer: {last}")


def main():
    global TARGET
    print(f"vrsky at {API}; tenant {TENANT}, integration {INTEGRATION}", flush=True)
    if not TARGET:
        if not ALLOW_PRIVATE:
            fail(
                "the producer would post to this pod's own address, a private one, which the runtime "
                "refuses unless config.producer.allow_private_targets is true: set it, or set "
                "tests.targetUrl to a URL the runtime may reach that answers POST with 2xx"
            )
        server = http.server.ThreadingHTTPServer(("", SINK_PORT), Sink)
        threading.Thread(target=server.serve_forever, daemon=True).start()
        host = f"[{POD_IP}]" if ":" in POD_IP else POD_IP
        TARGET = f"http://{host}:{SINK_PORT}/sink"
    print(f"producer target {TARGET}", flush=True)

    def ready():
        status, body, _ = call("GET", "/readyz")
        return (True if status == 200 else None), (status, body)

    until("GET /readyz", ready, 2)
    print("node ready", flush=True)

    created_tenant = False
    created_integration = False
    try:
        status, body, _ = call("POST", "/api/tenants", {"id": TENANT, "name": "helm test"})
        if status == 201:
            created_tenant = OWN_TENANT
        elif not (status == 409 and not OWN_TENANT):
            fail(f"POST /api/tenants: {status} {body}")
        print(f"tenant {TENANT}: {status}", flush=True)

        spec = {
            "id": INTEGRATION,
            "producer": {"type": "http", "url": TARGET, "method": "POST", "timeout_ms": 10000},
        }

        def create():
            status, body, _ = call("POST", f"/api/tenants/{TENANT}/integrations", spec)
            if status == 503:  # the tenant is starting
                return None, (status, body)
            if status != 201:
                fail(f"POST /api/tenants/{TENANT}/integrations: {status} {body}")
            return body, (status, body)

        integration = until("creating the integration", create)
        created_integration = True
        path = integration.get("webhook_path") or f"/webhooks/{TENANT}/{INTEGRATION}"
        print(f"integration {INTEGRATION}: webhook {path}", flush=True)

        payload = json.dumps({"helm": "test", "nonce": uuid.uuid4().hex}).encode()

        def send():
            status, body, hdrs = call("POST", path, payload, auth=False)
            if status == 503:  # starting, or the platform cannot store it yet
                return None, (status, body, hdrs.get("retry-after") if hdrs else None)
            if status != 202:
                fail(f"POST {path}: expected 202, got {status} {body}")
            return body["message_id"], (status, body)

        message_id = until("sending the webhook", send)
        print(f"webhook accepted (202): message {message_id}", flush=True)

        def delivered():
            status, body, _ = call("GET", f"/api/tenants/{TENANT}/messages/{message_id}")
            if status != 200:
                return None, (status, body)
            if body.get("status") in ("dead_letter", "filtered"):
                fail(f"message {message_id} ended {body.get('status')}: {body}")
            return (body if body.get("status") == "completed" else None), body

        state = until(f"message {message_id} completed", delivered)
        print(f"message {message_id} completed after {state.get('attempts')} attempt(s)", flush=True)

        if not os.environ.get("TEST_TARGET_URL"):
            got = [b for (mid, b) in received if mid == message_id]
            if not got:
                fail(f"the sink received no request with x-vrsky-message-id {message_id}: {received}")
            if got[0] != payload:
                fail(f"the sink received {got[0]!r}, not the webhook's body {payload!r}")
            print("the sink received the webhook's body", flush=True)
    finally:
        if created_integration:
            status, _, _ = call("DELETE", f"/api/tenants/{TENANT}/integrations/{INTEGRATION}")
            print(f"deleted integration {INTEGRATION}: {status}", flush=True)
        if created_tenant:
            status, _, _ = call("DELETE", f"/api/tenants/{TENANT}")
            print(f"deleted tenant {TENANT}: {status}", flush=True)
    print("PASS: one webhook accepted (202) and delivered (completed)", flush=True)


if __name__ == "__main__":
    main()
    sys.exit(0)
