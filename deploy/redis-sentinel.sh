#!/usr/bin/env bash
# A local Redis with Sentinel on this machine, in a temporary directory, for development and the tests:
# one primary, one replica and three sentinels on free ports, the service named `mymaster`, a primary
# judged down after 2 s (`down-after-milliseconds 2000`, quorum 2), append-only files on, and
# `repl-diskless-sync-delay 0` (a replica's full sync starts at once, not after Redis's 5 s wait for others).
# Waits until the replica's link is up and every sentinel knows the primary, the replica and the other
# sentinels, then prints
#   REDIS_URL=redis+sentinel://127.0.0.1:<s1>,127.0.0.1:<s2>,127.0.0.1:<s3>/0/mymaster
#   REDIS_SENTINEL_NODES=<primary port> <replica port>
#   REDIS_SENTINELS=<s1> <s2> <s3>
# and stays in the foreground; Ctrl-C (or SIGTERM) stops everything.
#
# Needs redis-server and redis-cli (Debian package redis-server; a sentinel is `redis-server --sentinel`).
set -euo pipefail

usage() {
  cat <<'EOF'
usage: deploy/redis-sentinel.sh [--dir DIR]

  --dir DIR   where the servers keep their files (default: a temporary directory, removed at exit)

Environment: REDIS_SERVER (default redis-server), REDIS_CLI (default redis-cli).
EOF
}

dir=""
while [ $# -gt 0 ]; do
  case "$1" in
    --dir) dir="$2"; shift 2 ;;
    -h|--help) usage; exit 0 ;;
    *) echo "redis-sentinel: unknown argument $1" >&2; usage >&2; exit 2 ;;
  esac
done

name=redis-sentinel
# shellcheck source=deploy/redis-local.sh
. "$(dirname "$0")/redis-local.sh"

read -r -a ports <<<"$(free_ports 5)"
primary=${ports[0]}
replica=${ports[1]}
sentinels=("${ports[@]:2:3}")

for port in "$primary" "$replica"; do
  mkdir -p "$dir/$port"
  extra=()
  [ "$port" = "$replica" ] && extra=(--replicaof 127.0.0.1 "$primary")
  "$server" --port "$port" --bind 127.0.0.1 --dir "$dir/$port" --appendonly yes --save '' --repl-diskless-sync-delay 0 \
    --daemonize no --logfile "$dir/$port/redis.log" "${extra[@]}" &
  pids+=($!)
  wait_ping "$port"
done

for port in "${sentinels[@]}"; do
  mkdir -p "$dir/$port"
  cat >"$dir/$port/sentinel.conf" <<EOF
port $port
bind 127.0.0.1
dir $dir/$port
sentinel monitor mymaster 127.0.0.1 $primary 2
sentinel down-after-milliseconds mymaster 2000
sentinel failover-timeout mymaster 10000
sentinel parallel-syncs mymaster 1
EOF
  "$server" "$dir/$port/sentinel.conf" --sentinel --daemonize no --logfile "$dir/$port/sentinel.log" &
  pids+=($!)
  wait_ping "$port"
done

# Ready: the replica's link is up, and every sentinel sees the replica and the two other sentinels.
ready() {
  "$cli" -p "$replica" info replication | grep -q '^master_link_status:up' || return 1
  for port in "${sentinels[@]}"; do
    local info
    info="$("$cli" -p "$port" sentinel master mymaster 2>/dev/null | paste -sd' ')" || return 1
    echo "$info" | grep -q 'num-slaves 1' || return 1
    echo "$info" | grep -q 'num-other-sentinels 2' || return 1
  done
}
for _ in $(seq 300); do
  ready && break
  sleep 0.1
done
ready || { echo "redis-sentinel: the sentinels did not find each other and the replica" >&2; exit 1; }

sentinel_hosts=""
for port in "${sentinels[@]}"; do sentinel_hosts+="${sentinel_hosts:+,}127.0.0.1:$port"; done
echo "REDIS_URL=redis+sentinel://$sentinel_hosts/0/mymaster"
echo "REDIS_SENTINEL_NODES=$primary $replica"
echo "REDIS_SENTINELS=${sentinels[*]}"
echo "redis-sentinel: primary $primary, replica $replica, sentinels ${sentinels[*]} ready in $dir; Ctrl-C stops them"
serve_forever
