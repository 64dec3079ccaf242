#!/usr/bin/env bash
# Rollout benchmark: how long a new plugin takes to be in effect on every sidecar, for the
# Python header-gate (componentize-py, ~18 MB) and the JavaScript request-id (componentize-js,
# ~12 MB) built by their examples' build.sh, delivered two ways:
#   pushed  `weft plugin push` first (the control plane compiles optimized code then), then
#           `weft apply --wait` naming it by digest: the apply is timed, not the push;
#   by URL  `weft apply --wait` of a WasmPlugin whose `url` is http:// (python3 -m http.server
#           on loopback): fetched and checked during the apply with the baseline compiler,
#           optimized code compiled behind it; also timed: until every sidecar runs that;
#           beside it, its floor: the baseline compile alone (`weft plugin precompile`).
# SIDECARS sidecar processes (default 4) watch one control plane, all on loopback. "In
# effect" is the apply's --wait returning: every sidecar ACKed the snapshot, which it applies
# only once the plugin is loaded and configured. Bounded: each wait times out at 120 s.
#
#   bash bench/rollout.sh             # WEFT=target/release/weft to time a release build
set -euo pipefail
cd "$(dirname "$0")/.."
SIDECARS=${SIDECARS:-4}
WEFT=${WEFT:-target/debug/weft}
command -v curl >/dev/null || (apt-get update -qq && apt-get install -y -qq curl) >/dev/null
[ -x "$WEFT" ] || cargo build --locked -q -p weft
GUESTS=target/bench-guests
bash examples/plugins/python/build.sh "$GUESTS/python" >/dev/null
bash examples/plugins/js/build.sh "$GUESTS/js" >/dev/null
WORK=$(mktemp -d)
PIDS=()
cleanup() { for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null || true; done; wait 2>/dev/null || true; rm -rf "$WORK"; }
trap cleanup EXIT
[ -n "${KEEP:-}" ] && trap 'for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null; done; echo "kept $WORK"' EXIT
now() { date +%s.%N; }
since() { awk -v a="$1" -v b="$(now)" 'BEGIN { printf "%.2f", b - a }'; }
free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }

# Waits until FILE holds a line matching PATTERN (a process's "ready" line).
wait_for() {
  for _ in $(seq 1 600); do grep -q "$2" "$1" 2>/dev/null && return 0; sleep 0.05; done
  echo "no '$2' in $1:" >&2; cat "$1" >&2; exit 1
}

PORT=$(free_port)
D=$WORK/data
"$WEFT" control --data "$D" --listen "127.0.0.1:$PORT" >"$WORK/cp.log" 2>&1 &
PIDS+=($!)
wait_for "$WORK/cp.log" "weft control ready"
W=("--server" "127.0.0.1:$PORT" "--data" "$D")
TOKEN=$("$WEFT" token payments "${W[@]}")
ADMINS=()
for i in $(seq 1 "$SIDECARS"); do
  cat >"$WORK/b$i.json" <<EOF
{"service":"payments","outbound":"127.0.0.1:0","inbound":"127.0.0.1:0","admin":"127.0.0.1:0",
 "app":"127.0.0.1:9","labels":{"version":"v$i"},"workerThreads":1,
 "controlPlane":{"address":"127.0.0.1:$PORT","token":"$TOKEN","caFile":"$D/bundle.pem"}}
EOF
  "$WEFT" sidecar --config "$WORK/b$i.json" >"$WORK/s$i.log" 2>&1 &
  PIDS+=($!)
  wait_for "$WORK/s$i.log" "weft sidecar configured"
  ADMINS+=("$(sed -n 's/.*admin \([0-9.:]*\).*/\1/p' "$WORK/s$i.log" | head -1)")
done

WEB=$(free_port)
mkdir -p "$WORK/site"
cp "$GUESTS/python/header_gate.wasm" "$GUESTS/js/request_id.wasm" "$WORK/site/"
python3 -m http.server "$WEB" --bind 127.0.0.1 --directory "$WORK/site" >"$WORK/web.log" 2>&1 &
PIDS+=($!)
for _ in $(seq 1 600); do curl -sf -o /dev/null "http://127.0.0.1:$WEB/" && break; sleep 0.05; done

plugin() { # NAME URL CONFIG
  cat <<EOF
apiVersion: extensions.istio.io/v1alpha1
kind: WasmPlugin
metadata:
  name: $1
  annotations: { weft.io/plugin-memory: 128Mi }
spec:
  url: $2
  targetRefs: [{ kind: Service, name: payments }]
  pluginConfig: $3
EOF
}

# Sum over the sidecars of weft_plugin_compiled_code_imported_total{tier=TIER}.
imported() {
  local n=0
  for a in "${ADMINS[@]}"; do
    v=$(curl -s "http://$a/metrics" | sed -n "s/^weft_plugin_compiled_code_imported_total{tier=\"$1\"} //p")
    n=$((n + ${v:-0}))
  done
  echo "$n"
}

apply_timed() { # LABEL FILE
  local t0; t0=$(now)
  [ -n "${KEEP:-}" ] && echo "   apply starts at $(date -u +%T.%N)"
  "$WEFT" apply -f "$2" --wait --timeout 120s "${W[@]}" >"$WORK/apply.out" 2>&1 ||
    { cat "$WORK/apply.out" >&2; exit 1; }
  echo "$1: in effect on $SIDECARS sidecars $(since "$t0") s after the apply"
  T0=$t0
}

echo "weft: $WEFT; $SIDECARS sidecars; $(nproc) cores"
for g in "python header_gate.wasm header-gate {header: x-tenant, allow: [acme]}" \
  "js request_id.wasm request-id {header: x-correlation-id, prefix: orders-}"; do
  read -r lang file name config <<<"$g"
  size=$(stat -c %s "$WORK/site/$file")
  echo "== $lang $file ($((size / 1000)) KB)"
  # The floor of the by-URL path: the baseline compile alone, as the control plane's child
  # runs it, with nothing fetched, judged or sent.
  t0=$(now)
  "$WEFT" plugin precompile --instances 0 --max-memory-bytes 268435456 --baseline \
    <"$WORK/site/$file" >/dev/null
  echo "floor: the baseline compile alone took $(since "$t0") s"
  # By URL: fetched and checked at apply, baseline code first.
  before=$(imported optimized)
  plugin "$name" "http://127.0.0.1:$WEB/$file" "$config" >"$WORK/url.yaml"
  apply_timed "by URL ($(imported baseline) baseline imports before)" "$WORK/url.yaml"
  echo "   baseline imports now: $(imported baseline)"
  for _ in $(seq 1 1200); do
    [ "$(imported optimized)" -ge $((before + SIDECARS)) ] && break
    sleep 0.1
  done
  echo "by URL: optimized code on every sidecar $(since "$T0") s after the apply"
  "$WEFT" delete WasmPlugin "$name" "${W[@]}" >/dev/null
  # Pushed: a rebuilt artifact (new digest) as a new version would be; the push compiles it.
  # A custom section appended (id 0, 3 bytes: name "v", payload "2") keeps it valid.
  cp "$WORK/site/$file" "$WORK/v2.wasm"
  printf '\x00\x03\x01v2' >>"$WORK/v2.wasm"
  t0=$(now)
  digest=$("$WEFT" plugin push "$WORK/v2.wasm" "${W[@]}" | tail -1)
  echo "pushed: weft plugin push took $(since "$t0") s ($digest)"
  plugin "$name-pushed" "$digest" "$config" >"$WORK/pushed.yaml"
  apply_timed "pushed" "$WORK/pushed.yaml"
  "$WEFT" delete WasmPlugin "$name-pushed" "${W[@]}" >/dev/null
done
