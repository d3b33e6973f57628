#!/usr/bin/env bash
# Black-box burst: `vrsky dev` (platform sync 1s by default), one integration delivering to
# nginx, wrk at full rate for $SECS seconds, then how long until every accepted webhook is
# delivered, and the slow-consumer count. Needs wrk and nginx (apt-get install wrk nginx-light)
# and a release build (cargo build --release -p vrsky-runtime --bin vrsky).
# Usage: scripts/measure/burst.sh [SECS] [CONNECTIONS]   (defaults 10 and 256)
set -euo pipefail
cd "$(dirname "$0")/../.."
source scripts/env.sh
ensure_nats_server
secs=${1:-10}; conns=${2:-256}
work=$(mktemp -d); port=$((18100 + RANDOM % 500)); sinkport=$((port + 1000))
export VRSKY_ADMIN_TOKEN=burst-token-0123456789
export VRSKY_STATE__PLATFORM_SYNC_INTERVAL=${VRSKY_STATE__PLATFORM_SYNC_INTERVAL:-1s}
AUTH="Authorization: Bearer $VRSKY_ADMIN_TOKEN"; API=http://127.0.0.1:$port
cleanup() { kill "$vrsky" 2>/dev/null || true; wait "$vrsky" 2>/dev/null || true
            kill "$(cat "$work/sink/nginx.pid")" 2>/dev/null || true; rm -rf "$work"; }
trap cleanup EXIT
scripts/measure/sink-nginx.sh "$work/sink" "$sinkport"
RUST_LOG=warn ./target/release/vrsky dev --http-addr 127.0.0.1:$port --data-dir "$work/data" >"$work/vrsky.log" 2>&1 &
vrsky=$!
for _ in $(seq 1 120); do curl -sf $API/healthz >/dev/null && break; sleep 0.5; done
curl -sf -X POST $API/api/tenants -H "$AUTH" -d '{"id":"burst","name":"Burst"}' >/dev/null
curl -sf -X POST $API/api/tenants/burst/integrations -H "$AUTH" -d "{\"id\":\"hook\",
  \"producer\":{\"type\":\"http\",\"url\":\"http://127.0.0.1:$sinkport/in\",\"method\":\"POST\"}}" >/dev/null
cat > "$work/post.lua" <<'LUA'
wrk.method = "POST"; wrk.body = '{"type":"order","id":42}'
wrk.headers["Content-Type"] = "application/json"
local threads = {}
function setup(t) table.insert(threads, t) end
function init() codes = {} end
function response(status) codes[status] = (codes[status] or 0) + 1 end
function done()
  local all = {}
  for _, t in ipairs(threads) do
    for k, v in pairs(t:get("codes")) do all[k] = (all[k] or 0) + v end
  end
  for k, v in pairs(all) do io.write(string.format("status %d: %d\n", k, v)) end
end
LUA
echo "== wrk -t2 -c$conns -d${secs}s (platform sync $VRSKY_STATE__PLATFORM_SYNC_INTERVAL)"
wrk -t2 -c"$conns" -d"${secs}s" -s "$work/post.lua" $API/webhooks/burst/hook | tee "$work/wrk.txt"
ended=$(date +%s.%N)
accepted=$(awk '/^status 202:/ {print $3}' "$work/wrk.txt"); accepted=${accepted:-0}
refused=$(awk '/^status 429:/ {print $3}' "$work/wrk.txt"); refused=${refused:-0}
delivered() { curl -sf $API/api/tenants/burst/integrations/hook -H "$AUTH" |
              python3 -c 'import json,sys; print(json.load(sys.stdin)["stats"]["delivered"])'; }
for _ in $(seq 1 1200); do
  d=$(delivered); [ "$d" -ge "$accepted" ] && break; sleep 0.1
done
drained=$(python3 -c "import time; print(f'{time.time()-$ended:.1f}')")
sleep 1
lines=$(wc -l < "$work/sink/access.log")
distinct=$(awk '{print $2}' "$work/sink/access.log" | sort -u | wc -l)
slow=$(curl -sf $API/readyz | python3 -c 'import json,sys; r=json.load(sys.stdin); print(sum(i.get("slow_consumers",0) for t in r["tenants"] for i in t["instances"]))')
echo "accepted (202): $accepted; refused (429): $refused; accepted share: $(python3 -c "print(f'{$accepted/max(1,$accepted+$refused):.1%}')")"
echo "delivered (stats): $(delivered); sink requests: $lines; distinct message ids: $distinct"
echo "all accepted delivered ${drained} s after the burst ended; slow-consumer events: $slow"
