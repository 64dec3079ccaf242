#!/usr/bin/env bash
# What transparent capture costs: one `weft sidecar` in a network namespace with `weft capture`
# rules, loaded from inside the namespace two ways in the same run:
#   explicit  wrk -> 127.0.0.1:15001 with `Host: payments` (loopback: not captured)
#   captured  wrk -> the backend's own address with `Host: payments`, redirected by the nat
#             rules to the same listener, which reads SO_ORIGINAL_DST per connection
# Both go on to the same nginx backend outside the namespace; the sidecar's CPU per request is
# compared. Needs root (namespace, veth, iptables); installs nginx, wrk and iptables from Debian
# when missing. Bounded: each load lasts DURATION seconds; everything made is removed on exit.
#
#   DURATION=5 CONNS=32 bash bench/capture.sh
set -euo pipefail
cd "$(dirname "$0")/.."
DURATION=${DURATION:-5}
CONNS=${CONNS:-32}
NS=weft-bench-capture
LINK=wbcap0
HOST_IP=198.19.254.1
POD_IP=198.19.254.2
BACKEND_PORT=18290
WORK=$(mktemp -d)
PIDS=()
cleanup() {
  for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null || true; done
  wait 2>/dev/null || true
  ip link del "$LINK" 2>/dev/null || true
  ip netns del "$NS" 2>/dev/null || true
  rm -rf "$WORK"
}
trap cleanup EXIT

need() { command -v "$1" >/dev/null 2>&1; }
if ! need nginx || ! need wrk || ! need iptables-restore; then
  (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq nginx wrk iptables) >/dev/null
fi
cargo build --release --locked -q -p weft
WEFT=$PWD/target/release/weft

ip netns add "$NS"
ip -n "$NS" link set lo up
ip link add "$LINK" type veth peer name eth0 netns "$NS"
ip addr add "$HOST_IP/30" dev "$LINK"
ip link set "$LINK" up
ip -n "$NS" addr add "$POD_IP/30" dev eth0
ip -n "$NS" link set eth0 up
ip -n "$NS" route add default via "$HOST_IP"

cat > "$WORK/backend.conf" <<NGX
worker_processes 1;
master_process off;
daemon off;
pid $WORK/backend.pid;
error_log $WORK/backend-error.log warn;
events { worker_connections 4096; }
http { access_log off; server { listen $HOST_IP:$BACKEND_PORT; location / { return 200 "ok\n"; } } }
NGX
taskset -c 1 nginx -c "$WORK/backend.conf" -p "$WORK" -e "$WORK/backend-error.log" &
PIDS+=($!)

cat > "$WORK/snapshot.json" <<JSON
{"version":"bench","services":{"payments":{"endpoints":[{"address":"$HOST_IP:$BACKEND_PORT"}],"plugins":[]}}}
JSON
cat > "$WORK/bootstrap.json" <<JSON
{"service":"orders","outbound":"127.0.0.1:15001","inbound":"0.0.0.0:15006",
 "admin":"127.0.0.1:15000","app":"127.0.0.1:9","snapshot":"snapshot.json",
 "proxyMark":1337,"workerThreads":1}
JSON
ip netns exec "$NS" "$WEFT" capture >/dev/null 2>&1
ip netns exec "$NS" taskset -c 1 "$WEFT" sidecar --config "$WORK/bootstrap.json" >"$WORK/sidecar.log" 2>&1 &
SIDECAR=$!
PIDS+=($SIDECAR)
for _ in $(seq 100); do
  ip netns exec "$NS" curl -fs http://127.0.0.1:15000/ready >/dev/null 2>&1 && break
  sleep 0.1
done

cpu_ticks() { awk '{print $14+$15}' "/proc/$1/stat"; }
TCK=$(getconf CLK_TCK)
measure() { # $1 name, $2 url
  local before after out reqs rps
  before=$(cpu_ticks "$SIDECAR")
  out=$(ip netns exec "$NS" taskset -c 0 wrk -t1 -c"$CONNS" -d"${DURATION}s" -H "Host: payments" "$2")
  after=$(cpu_ticks "$SIDECAR")
  reqs=$(echo "$out" | awk '/requests in/ {print $1}')
  rps=$(echo "$out" | awk '/Requests\/sec/ {printf "%.0f", $2}')
  awk -v n="$1" -v r="$rps" -v t=$((after - before)) -v hz="$TCK" -v q="$reqs" \
    'BEGIN { printf "| %-9s | %8s | %.3f |\n", n, r, t / hz / q * 10000 }'
}
{
  echo "Capture cost — $(date -u +%FT%TZ), ${DURATION}s per load, $CONNS connections, one sidecar"
  echo
  echo "| path      | req/s    | sidecar CPU s / 10k req |"
  echo "|-----------|----------|-------------------------|"
  for round in 1 2; do
    measure explicit "http://127.0.0.1:15001/"
    measure captured "http://$HOST_IP:$BACKEND_PORT/"
  done
} | tee bench/results/capture.md
