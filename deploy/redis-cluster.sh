#!/usr/bin/env bash
# A local Redis Cluster of three primaries and three replicas on this machine, in a temporary
# directory, for development and the tests: free ports (each node's cluster bus on its port + 10000),
# `cluster-node-timeout 2000` (a failover within a few seconds), `cluster-require-full-coverage no` (a shard
# without a primary stops only its own slots), `repl-diskless-sync-delay 0` (a replica's full sync starts at
# once instead of after Redis's 5 s wait for other replicas: each primary has one), nothing kept on disk
# after it stops.
# Waits until `cluster_state:ok` and every replica's link to its primary is up, then prints
#   REDIS_CLUSTER_URL=redis://127.0.0.1:<port>
#   REDIS_CLUSTER_NODES=<port> <port> ... (primaries first)
# and stays in the foreground; Ctrl-C (or SIGTERM) stops every node.
#
# Needs redis-server and redis-cli (Debian package redis-server).
set -euo pipefail

usage() {
  cat <<'EOF'
usage: deploy/redis-cluster.sh [--port PORT] [--dir DIR]

  --port PORT   first node's port; the other five follow (default: six free ports)
  --dir DIR     where the nodes keep their files (default: a temporary directory, removed at exit)

Environment: REDIS_SERVER (default redis-server), REDIS_CLI (default redis-cli).
EOF
}

first_port=""
dir=""
while [ $# -gt 0 ]; do
  case "$1" in
    --port) first_port="$2"; shift 2 ;;
    --dir) dir="$2"; shift 2 ;;
    -h|--help) usage; exit 0 ;;
    *) echo "redis-cluster: unknown argument $1" >&2; usage >&2; exit 2 ;;
  esac
done

name=redis-cluster
# shellcheck source=deploy/redis-local.sh
. "$(dirname "$0")/redis-local.sh"

# Six ports whose cluster bus ports (port + 10000) are free too.
if [ -n "$first_port" ]; then
  ports=()
  for i in 0 1 2 3 4 5; do ports+=($((first_port + i))); done
else
  read -r -a ports <<<"$(free_ports 6 bus)"
fi

for port in "${ports[@]}"; do
  node_dir="$dir/$port"
  mkdir -p "$node_dir"
  "$server" --port "$port" --bind 127.0.0.1 --dir "$node_dir" \
    --cluster-enabled yes --cluster-config-file nodes.conf --cluster-node-timeout 2000 --cluster-require-full-coverage no \
    --repl-diskless-sync-delay 0 --appendonly no --save '' --daemonize no --logfile "$node_dir/redis.log" &
  pids+=($!)
done

for port in "${ports[@]}"; do wait_ping "$port"; done

addresses=()
for port in "${ports[@]}"; do addresses+=("127.0.0.1:$port"); done
"$cli" --cluster create "${addresses[@]}" --cluster-replicas 1 --cluster-yes >"$dir/create.log" 2>&1 || {
  cat "$dir/create.log" >&2
  exit 1
}

# Ready: every node says the cluster is ok, and every replica's link to its primary is up.
ready() {
  for port in "${ports[@]}"; do
    "$cli" -p "$port" cluster info 2>/dev/null | grep -q '^cluster_state:ok' || return 1
    if "$cli" -p "$port" info replication 2>/dev/null | grep -q '^role:slave'; then
      "$cli" -p "$port" info replication | grep -q '^master_link_status:up' || return 1
    fi
  done
}
for _ in $(seq 200); do
  ready && break
  sleep 0.1
done
ready || { echo "redis-cluster: the cluster did not become ready" >&2; exit 1; }

primaries=()
replicas=()
for port in "${ports[@]}"; do
  if "$cli" -p "$port" info replication | grep -q '^role:master'; then primaries+=("$port"); else replicas+=("$port"); fi
done
echo "REDIS_CLUSTER_URL=redis://127.0.0.1:${primaries[0]}"
echo "REDIS_CLUSTER_NODES=${primaries[*]} ${replicas[*]}"
echo "redis-cluster: 3 primaries and 3 replicas ready in $dir; Ctrl-C stops them"
serve_forever
