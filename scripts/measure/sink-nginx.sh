#!/usr/bin/env bash
# A black-box delivery target: nginx on 127.0.0.1:$PORT (default 18090) answering 200 to
# every request and logging one line per request with its x-vrsky-message-id, in $DIR.
# Usage: scripts/measure/sink-nginx.sh DIR [PORT]   (stop with: kill $(cat DIR/nginx.pid))
set -euo pipefail
dir=$(realpath -m "$1"); port=${2:-18090}
mkdir -p "$dir"
nginx=$(command -v nginx || echo /usr/sbin/nginx)
[ -x "$nginx" ] || { echo "nginx is needed: apt-get install nginx-light" >&2; exit 1; }
cat > "$dir/nginx.conf" <<CONF
worker_processes 1;
pid $dir/nginx.pid;
error_log $dir/error.log warn;
events { worker_connections 4096; }
http {
  access_log off;
  client_body_temp_path $dir/body;
  log_format ids '\$msec \$http_x_vrsky_message_id \$http_x_vrsky_attempt';
  server {
    listen 127.0.0.1:$port reuseport backlog=4096;
    location / {
      access_log $dir/access.log ids buffer=64k flush=200ms;
      return 200 'ok';
    }
  }
}
CONF
"$nginx" -c "$dir/nginx.conf"
echo "nginx on 127.0.0.1:$port, log $dir/access.log" >&2
