# Shared by deploy/redis-cluster.sh and deploy/redis-sentinel.sh (sourced, not run): the tools, free ports,
# the working directory, and stopping every server started here when the script ends.
# The sourcing script sets `name` (for messages) and `dir` (empty: a temporary directory) first.

server="${REDIS_SERVER:-redis-server}"
cli="${REDIS_CLI:-redis-cli}"
for tool in "$server" "$cli"; do
  command -v "$tool" >/dev/null 2>&1 || { echo "$name: $tool not found (Debian package redis-server)" >&2; exit 1; }
done

# free_ports N [bus]: N free loopback ports, space-separated; with `bus`, ports whose port + 10000 is free too
# (a cluster node's bus).
free_ports() {
  python3 - "$@" <<'PY'
import socket
import sys

count, bus = int(sys.argv[1]), len(sys.argv) > 2 and sys.argv[2] == "bus"


def free(port):
    with socket.socket() as s:
        try:
            s.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


found = []
while len(found) < count:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    if port not in found and (not bus or (port + 10000 < 65536 and free(port + 10000))):
        found.append(port)
print(" ".join(map(str, found)))
PY
}

own_dir=0
if [ -z "$dir" ]; then
  dir="$(mktemp -d -t "paytrack-$name.XXXXXX")"
  own_dir=1
fi
mkdir -p "$dir"

pids=()
stop() {
  trap - EXIT INT TERM
  for pid in "${pids[@]}"; do kill "$pid" 2>/dev/null || true; done
  for pid in "${pids[@]}"; do wait "$pid" 2>/dev/null || true; done
  if [ "$own_dir" = 1 ]; then rm -rf "$dir"; fi
}
trap stop EXIT
trap 'exit 0' INT TERM

# wait_ping PORT: until the server on PORT answers (5 s at most).
wait_ping() {
  for _ in $(seq 100); do
    "$cli" -p "$1" ping >/dev/null 2>&1 && return 0
    sleep 0.05
  done
  echo "$name: nothing answers on port $1 (see $dir)" >&2
  exit 1
}

# Stay in the foreground until stopped; a server that exits (a test's kill -9) leaves the others running.
serve_forever() {
  while true; do sleep 1 & wait $!; done  # `wait` lets a signal's trap run at once, `sleep` would not
}
