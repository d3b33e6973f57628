#!/usr/bin/env python3
"""Black-box crash recovery: `vrsky dev` under webhook load is killed with kill -9 and
started again on the same data dir; reports how long after the restart every webhook
answered 202 was delivered (or dead-lettered), and how many were delivered twice.

Needs a release build and nginx (scripts/measure/sink-nginx.sh). Usage:
  scripts/measure/kill9.py [--load-s 4] [--kill-at-s 2] [--threads 32]
"""
import argparse, http.client, json, os, shutil, signal, subprocess, sys, tempfile, threading, time

ROOT = os.path.abspath(os.path.join(os.path.dirname(__file__), "..", ".."))
TOKEN = "kill9-token-0123456789"


def request(port, method, path, body=None, auth=True, timeout=5):
    c = http.client.HTTPConnection("127.0.0.1", port, timeout=timeout)
    h = {"content-type": "application/json"}
    if auth:
        h["authorization"] = f"Bearer {TOKEN}"
    c.request(method, path, body=body, headers=h)
    r = c.getresponse()
    data = r.read()
    c.close()
    return r.status, data


def start(port, data, log, sync):
    env = dict(os.environ, VRSKY_ADMIN_TOKEN=TOKEN, RUST_LOG="warn",
               VRSKY_STATE__PLATFORM_SYNC_INTERVAL=sync)
    return subprocess.Popen([os.path.join(ROOT, "target/release/vrsky"), "dev", "--http-addr",
                             f"127.0.0.1:{port}", "--data-dir", data],
                            stdout=log, stderr=log, env=env, start_new_session=True)


def wait_healthy(port, limit=120):
    end = time.time() + limit
    while time.time() < end:
        try:
            if request(port, "GET", "/healthz", auth=False, timeout=1)[0] == 200:
                return True
        except OSError:
            pass
        time.sleep(0.05)
    return False


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--load-s", type=float, default=4)
    ap.add_argument("--kill-at-s", type=float, default=2)
    ap.add_argument("--threads", type=int, default=32)
    ap.add_argument("--platform-sync", default="1s")
    a = ap.parse_args()
    work = tempfile.mkdtemp(prefix="vrsky-kill9-")
    port, sink = 18700 + os.getpid() % 200, 19700 + os.getpid() % 200
    subprocess.run([os.path.join(ROOT, "scripts/measure/sink-nginx.sh"), f"{work}/sink", str(sink)], check=True)
    log = open(f"{work}/vrsky.log", "ab")
    proc = start(port, f"{work}/data", log, a.platform_sync)
    try:
        assert wait_healthy(port), "vrsky dev did not start"
        request(port, "POST", "/api/tenants", json.dumps({"id": "crash", "name": "Crash"}))
        spec = {"id": "hook", "producer": {"type": "http", "url": f"http://127.0.0.1:{sink}/in", "method": "POST"}}
        s, b = request(port, "POST", "/api/tenants/crash/integrations", json.dumps(spec))
        assert s == 201, b
        accepted, lock, stop = [], threading.Lock(), time.time() + a.load_s

        def load(k):
            n = 0
            while time.time() < stop:
                n += 1
                try:
                    s, b = request(port, "POST", "/webhooks/crash/hook", json.dumps({"k": k, "n": n}), auth=False, timeout=2)
                    if s == 202:
                        with lock:
                            accepted.append(json.loads(b)["message_id"])
                except OSError:
                    time.sleep(0.01)
        threads = [threading.Thread(target=load, args=(k,)) for k in range(a.threads)]
        for t in threads:
            t.start()
        time.sleep(a.kill_at_s)
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait()
        killed = time.time()
        with lock:
            at_kill = len(accepted)
        for t in threads:
            t.join()
        time.sleep(0.3)  # nginx flushes its log every 200 ms
        delivered_before = {l.split()[1] for l in open(f"{work}/sink/access.log") if len(l.split()) > 1}
        in_flight = [i for i in accepted if i not in delivered_before]
        restarted = time.time()
        proc = start(port, f"{work}/data", log, a.platform_sync)
        assert wait_healthy(port), "vrsky dev did not restart"
        healthy = time.time() - restarted
        done_at, left = None, in_flight
        while time.time() - restarted < 120:
            seen = {l.split()[1] for l in open(f"{work}/sink/access.log") if len(l.split()) > 1}
            left = [i for i in in_flight if i not in seen]
            if left:
                # a dead-lettered message is finished too
                left = [i for i in left if json.loads(request(port, "GET", f"/api/tenants/crash/messages/{i}")[1]).get("status") not in ("completed", "dead_letter")]
            if not left:
                done_at = time.time() - restarted
                break
            time.sleep(0.1)
        time.sleep(0.3)
        counts = {}
        for l in open(f"{work}/sink/access.log"):
            p = l.split()
            if len(p) > 1:
                counts[p[1]] = counts.get(p[1], 0) + 1
        lost = [i for i in accepted if i not in counts]
        twice = sum(1 for i in accepted if counts.get(i, 0) > 1)
        print(f"accepted (202): {len(accepted)}, {at_kill} of them before the kill -9; "
              f"in flight at the kill (accepted, not yet delivered): {len(in_flight)}")
        print(f"restart healthy after {healthy:.2f} s; everything in flight delivered or "
              f"dead-lettered {'after %.2f s' % done_at if done_at is not None else 'NOT within 120 s (%d left)' % len(left)} from the restart")
        print(f"never delivered: {len(lost)}; delivered more than once: {twice} (at-least-once: a delivery the kill cut before its completed write)")
        print(f"restarted {restarted - killed:.2f} s after the kill (once the load stopped)")
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()
        try:
            os.kill(int(open(f"{work}/sink/nginx.pid").read()), signal.SIGTERM)
        except OSError:
            pass
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
