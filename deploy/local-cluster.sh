#!/usr/bin/env bash
# A production-shaped paytrack on this machine: redis-server, several instances sharing it, and
# nginx in front with deploy/nginx.conf (sticky long-polling, websocket upgrades), all on local
# ports, all in a temporary directory. Prints the URL, its mode, provider and storage; Ctrl-C (or
# SIGTERM) stops everything and keeps the logs (the script says where).
#
# Needs redis-server and nginx (Debian packages redis-server, nginx) and the Quickstart's .venv.
# No root, no system service: nginx runs with a generated config (`nginx -p <tmp> -c ...`).
#
# Always development, never a live provider by accident: the instances run in a folder of their own,
# so no `.env` (the repository's, filled in for production as the docs say, or the caller's) is
# read; settings come from the environment only (e.g. PAYMENT_PROVIDER=campay with the fake CamPay).
# APP_ENV other than development, or PAYMENT_PROVIDER=campay with a CAMPAY_API_URL that is neither
# CamPay's demo nor on this machine, is refused before anything starts. The script sets what makes
# the instances a cluster: Redis, ports, instance ids, forwarded addresses.
set -euo pipefail

usage() {
  cat <<'EOF'
usage: deploy/local-cluster.sh [--instances N] [--port PORT] [--instance-port PORT | --instance-ports P1,P2,...]
                               [--redis-port PORT] [--redis-cluster]

  --instances N         paytrack instances to start (default 2, at least 2)
  --port PORT           nginx listens on 127.0.0.1:PORT (default 8080); the URL to use
  --instance-port PORT  first instance's port; the others follow (default 5001)
  --instance-ports P1,P2,...
                        each instance's port, one per instance, in any order (e.g. free ports a test
                        picked one by one); sets the number of instances
  --redis-port PORT     the cluster's own redis-server (default 6390)
  --redis-cluster       a Redis Cluster of three primaries and three replicas instead (deploy/redis-cluster.sh,
                        on free ports), with REDIS_CLUSTER=true and REDIS_WAIT_REPLICAS=1

Environment: PYTHON (default .venv/bin/python), NGINX (default nginx), REDIS_SERVER
(default redis-server); any paytrack setting is passed to every instance (no .env is read).
Runs in development only; refuses a live CamPay URL. Stops everything on Ctrl-C or SIGTERM and
keeps the logs.
EOF
}

instances=2
port=8080
instance_port=5001
instance_ports=""
redis_port=6390
redis_cluster=false
while [ $# -gt 0 ]; do
  case "$1" in
    --instances) instances="$2"; shift 2 ;;
    --port) port="$2"; shift 2 ;;
    --instance-port) instance_port="$2"; shift 2 ;;
    --instance-ports) instance_ports="$2"; shift 2 ;;
    --redis-port) redis_port="$2"; shift 2 ;;
    --redis-cluster) redis_cluster=true; shift ;;
    -h|--help) usage; exit 0 ;;
    *) echo "local-cluster: unknown argument $1" >&2; usage >&2; exit 2 ;;
  esac
done
# The instances' ports: the ones given, or `instances` ports from --instance-port on.
if [ -n "$instance_ports" ]; then
  IFS=, read -r -a ports <<<"$instance_ports"
  instances=${#ports[@]}
else
  ports=()
  for i in $(seq 0 $((instances - 1))); do ports+=($((instance_port + i))); done
fi
if [ "$instances" -lt 2 ]; then
  echo "local-cluster: at least 2 instances (--instances, or ports in --instance-ports)" >&2
  exit 2
fi
for p in "${ports[@]}"; do
  if ! [[ "$p" =~ ^[0-9]+$ ]]; then
    echo "local-cluster: $p is not a port" >&2
    exit 2
  fi
done

root="$(cd "$(dirname "$0")/.." && pwd)"
python="${PYTHON:-$root/.venv/bin/python}"
nginx_bin="${NGINX:-$(command -v nginx || echo /usr/sbin/nginx)}"
redis_bin="${REDIS_SERVER:-$(command -v redis-server || echo /usr/bin/redis-server)}"
for tool in "$python" "$nginx_bin" "$redis_bin"; do
  if [ ! -x "$tool" ]; then
    echo "local-cluster: $tool not found (see README: Production)" >&2
    exit 1
  fi
done

# The instances' settings, checked before anything starts.
if [ -n "${APP_ENV:-}" ] && [ "$APP_ENV" != development ]; then
  echo "local-cluster: refusing APP_ENV=$APP_ENV: a local cluster runs in development only (unset APP_ENV)" >&2
  exit 2
fi
export APP_ENV=development STORAGE_BACKEND=redis TRUST_FORWARDED_FOR=true
for env_file in "$root/.env" "$PWD/.env"; do
  if [ -f "$env_file" ]; then
    echo "local-cluster: not reading $env_file (a local cluster takes its settings from the environment only)" >&2
    break
  fi
done

work="$(mktemp -d "${TMPDIR:-/tmp}/paytrack-cluster.XXXXXX")"
chmod 755 "$work"  # nginx workers may run as another user when started by root
logs="$work/logs"  # kept when the cluster stops
run="$work/run"    # the instances' working folder (no .env), nginx's and Redis's files: removed
mkdir -p "$logs" "$run"

# What the instances will run with, as the server itself reads it (`--check`, in their own folder).
if [ "$redis_cluster" = true ]; then export REDIS_CLUSTER=true; fi
if ! effective="$(cd "$run" && REDIS_URL="redis://127.0.0.1:$redis_port/0" "$python" "$root/server.py" --check)"; then
  echo "local-cluster: the instances' settings do not pass server.py --check:" >&2
  echo "$effective" >&2
  rm -rf "$work"
  exit 2
fi
setting() { sed -n "s/^$1=//p" <<<"$effective"; }
mode="$(setting APP_ENV)" provider="$(setting PAYMENT_PROVIDER)" storage="$(setting STORAGE_BACKEND)"
campay_url="$(setting CAMPAY_API_URL)"
if [ "$provider" = campay ] \
  && ! [[ "$campay_url" =~ ^https://demo\.campay\.net(/|$) ]] \
  && ! [[ "$campay_url" =~ ^https?://(localhost|127\.[0-9.]+|\[::1\])(:[0-9]+)?(/|$) ]]; then
  echo "local-cluster: refusing CAMPAY_API_URL=$campay_url: a local cluster never calls a live provider" \
    "(use CamPay's demo, https://demo.campay.net/api, or a fake on this machine)" >&2
  rm -rf "$work"
  exit 2
fi

pids=()

stop_all() {
  trap - INT TERM EXIT
  echo "local-cluster: stopping" >&2
  # Instances first (graceful: sockets closed, requests finished), then nginx, then Redis.
  for pid in "${pids[@]}"; do kill -TERM "$pid" 2>/dev/null || true; done
  for pid in "${pids[@]}"; do wait "$pid" 2>/dev/null || true; done
  if [ -f "$run/nginx.pid" ]; then kill -QUIT "$(cat "$run/nginx.pid")" 2>/dev/null || true; fi
  if [ -n "${nginx_pid:-}" ]; then wait "$nginx_pid" 2>/dev/null || true; fi
  if [ -n "${redis_pid:-}" ]; then kill -TERM "$redis_pid" 2>/dev/null || true; wait "$redis_pid" 2>/dev/null || true; fi
  rm -rf "$run"
  echo "local-cluster: stopped; logs kept in $logs" >&2
}
trap 'stop_all; exit 130' INT
trap 'stop_all; exit 143' TERM
trap 'stop_all' EXIT

wait_for_port() {  # wait_for_port PORT PID NAME: until something accepts on 127.0.0.1:PORT
  for _ in $(seq 1 200); do
    if ! kill -0 "$2" 2>/dev/null; then
      echo "local-cluster: $3 exited; its log: $logs/$3.log" >&2
      tail -n 20 "$logs/$3.log" >&2 || true
      exit 1
    fi
    if (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; then return 0; fi
    sleep 0.05
  done
  echo "local-cluster: $3 did not listen on port $1" >&2
  exit 1
}

if [ "$redis_cluster" = true ]; then
  # The script prints its URL once the cluster is ok, and stops its nodes when it is stopped.
  REDIS_SERVER="$redis_bin" "$root/deploy/redis-cluster.sh" >"$logs/redis.log" 2>&1 &
  redis_pid=$!
  redis_url=""
  for _ in $(seq 1 600); do
    redis_url="$(sed -n 's/^REDIS_CLUSTER_URL=//p' "$logs/redis.log")"
    if [ -n "$redis_url" ]; then break; fi
    if ! kill -0 "$redis_pid" 2>/dev/null; then
      echo "local-cluster: deploy/redis-cluster.sh exited; its log: $logs/redis.log" >&2
      tail -n 20 "$logs/redis.log" >&2 || true
      exit 1
    fi
    sleep 0.1
  done
  if [ -z "$redis_url" ]; then
    echo "local-cluster: the Redis Cluster was not ready in 60 s; its log: $logs/redis.log" >&2
    exit 1
  fi
  export REDIS_WAIT_REPLICAS="${REDIS_WAIT_REPLICAS:-1}"
  redis_where="a Redis Cluster at $redis_url"
else
  "$redis_bin" --port "$redis_port" --bind 127.0.0.1 --save "" --appendonly no --dir "$run" \
    >"$logs/redis.log" 2>&1 &
  redis_pid=$!
  wait_for_port "$redis_port" "$redis_pid" redis
  redis_url="redis://127.0.0.1:$redis_port/0"
  redis_where="redis on $redis_port"
fi

upstream=""
for p in "${ports[@]}"; do
  (
    cd "$run"  # no .env here
    export REDIS_URL="$redis_url" INSTANCE_ID="${INSTANCE_ID_PREFIX:-local}-$p"
    exec "$python" "$root/server.py" --host 127.0.0.1 --port "$p"
  ) >"$logs/instance-$p.log" 2>&1 &
  pids+=($!)
  upstream+="    server 127.0.0.1:$p max_fails=1 fail_timeout=5s;\n"
done
for i in "${!ports[@]}"; do
  wait_for_port "${ports[$i]}" "${pids[$i]}" "instance-${ports[$i]}"
done

# deploy/nginx.conf as production runs it, minus TLS, with these instances and this port.
awk -v servers="$upstream" -v listen="    listen 127.0.0.1:$port;" '
  /# tls *$/ { next }
  /# instance *$/ { if (!done[block]++) printf "%s", servers; next }
  /^upstream / { block = $2 }
  /^ *server_name / { print listen; print "    server_name localhost;"; next }
  { print }
' "$root/deploy/nginx.conf" >"$run/paytrack-site.conf"
cat >"$run/nginx.conf" <<EOF
worker_processes 1;
pid $run/nginx.pid;
error_log $logs/nginx-error.log warn;
events { worker_connections 1024; }
http {
    access_log $logs/nginx-access.log;
    client_body_temp_path $run/body;
    proxy_temp_path $run/proxy;
    fastcgi_temp_path $run/fastcgi;
    uwsgi_temp_path $run/uwsgi;
    scgi_temp_path $run/scgi;
    include $run/paytrack-site.conf;
}
EOF
"$nginx_bin" -p "$run" -c "$run/nginx.conf" -e "$logs/nginx-error.log" -g "daemon off;" \
  >"$logs/nginx.log" 2>&1 &
nginx_pid=$!
wait_for_port "$port" "$nginx_pid" nginx

echo "paytrack cluster: http://127.0.0.1:$port  ($mode, provider $provider, storage $storage: $redis_where;" \
  "$instances instances on ports ${ports[*]}; logs in $logs)"
echo "Ctrl-C stops everything."
# Until Ctrl-C, or until any part exits on its own (then everything stops).
wait -n "${pids[@]}" "$nginx_pid" "$redis_pid" || true
all_running=true
for pid in "${pids[@]}" "$nginx_pid" "$redis_pid"; do kill -0 "$pid" 2>/dev/null || all_running=false; done
if [ "$all_running" = true ]; then exit 130; fi  # the wait was cut by Ctrl-C or SIGTERM: their trap stops all
echo "local-cluster: a process exited on its own; the end of each log:" >&2
for log in "$logs"/*.log; do echo "== $log" >&2; tail -n 5 "$log" >&2; done
exit 1
