#!/usr/bin/env bash
# Load benchmark: direct app, the Weft sidecar pair (empty chain, the 4-plugin chain, access
# logs, spans at 1% and 100%, mTLS with the control plane's chains), an
# nginx pair doing the same two hops, and the floor (bench/floor: the smallest hyper + rustls
# proxy hop, Weft's own stack doing nothing else), side by side in one run on loopback.
#
# The load generator runs on core 0, proxies and backend on core 1 (taskset), so the numbers
# compare proxies rather than a fight for cores. Throughput: wrk at fixed concurrency. Latency:
# bench/loadgen, an open-loop generator sending evenly spaced requests at 1,000 and 5,000 per
# second (closed-loop tools fire in bursts and measure their own queue). Installs what it needs
# from Debian (nginx, wrk) and builds weft and the generator in release. Bounded: every load
# lasts DURATION seconds.
#
#   bash bench/run.sh                 # defaults: 10 s per load, 64 connections
#   DURATION=5 CONNS=32 bash bench/run.sh
set -euo pipefail
cd "$(dirname "$0")/.."
DURATION=${DURATION:-10}
CONNS=${CONNS:-64}
OUT=bench/results
mkdir -p "$OUT"
WORK=$(mktemp -d)
PIDS=()
cleanup() { for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null || true; done; wait 2>/dev/null || true; rm -rf "$WORK"; }
trap cleanup EXIT

need() { command -v "$1" >/dev/null 2>&1; }
busy=$(ss -ltn 2>/dev/null | awk '{print $4}' | grep -E ':(1808[0-9]|181[0-9][0-9])$' || true)
if [ -n "$busy" ]; then echo "bench ports already in use: $busy (a previous run still alive?)" >&2; exit 1; fi
if ! need nginx || ! need wrk || ! need openssl; then
  echo "installing nginx, wrk and openssl (for the nginx pair's certificates) from Debian..."
  (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq nginx wrk openssl) >/dev/null
fi
NGINX=$(command -v nginx || echo /usr/sbin/nginx)
cargo build --release --locked -q -p weft
cargo build --release --locked -q --manifest-path bench/loadgen/Cargo.toml
cargo build --release --locked -q --manifest-path bench/floor/Cargo.toml
WEFT=target/release/weft
LOADGEN=bench/loadgen/target/release/weft-loadgen
FLOOR=bench/floor/target/release/weft-floor

BACKEND=18080; NGX_A=18081; NGX_B=18082; NGX_TA=18083; NGX_TB=18084
ORD_OUT=18101; ORD_IN=18102; ORD_ADM=18103; PAY_OUT=18111; PAY_IN=18112; PAY_ADM=18113
CH_OUT=18121; CH_IN=18122; CH_ADM=18123
LO_OUT=18151; LO_IN=18152; LO_ADM=18153; LP_OUT=18161; LP_IN=18162; LP_ADM=18163
CP=18130; TO_OUT=18131; TO_IN=18132; TO_ADM=18133; TP_OUT=18141; TP_IN=18142; TP_ADM=18143
FL_A=18085; FL_B=18086; FL_TA=18087; FL_TB=18088
COLLECTOR=18089
S1_OUT=18171; S1_IN=18172; S1_ADM=18173; S1P_OUT=18174; S1P_IN=18175; S1P_ADM=18176
SA_OUT=18181; SA_IN=18182; SA_ADM=18183; SAP_OUT=18184; SAP_IN=18185; SAP_ADM=18186

# --- backend, and the nginx pair as a separate process ----------------------------------------
nginx_conf() { # $1 name, $2 http block body
  cat > "$WORK/$1.conf" <<NGX
worker_processes 1;
master_process off;
daemon off;
pid $WORK/$1.pid;
error_log $WORK/$1-error.log warn;
events { worker_connections 4096; }
http {
  access_log off;
  $2
}
NGX
}
nginx_conf backend "server { listen 127.0.0.1:$BACKEND; location / { return 200 \"ok\\n\"; } }"
# A trace collector that takes every OTLP export and keeps nothing: what the sidecars pay to
# send spans, not what a collector pays to store them.
nginx_conf collector "server { listen 127.0.0.1:$COLLECTOR; location /v1/traces { return 200; } }"
# Two nginx processes, one per hop, as two sidecars are two processes.
nginx_conf hop_b "
  upstream backend { server 127.0.0.1:$BACKEND; keepalive 128; }
  server { listen 127.0.0.1:$NGX_B;
    location / { proxy_pass http://backend; proxy_http_version 1.1; proxy_set_header Connection \"\"; } }"
nginx_conf hop_a "
  upstream hop_b { server 127.0.0.1:$NGX_B; keepalive 128; }
  server { listen 127.0.0.1:$NGX_A;
    location / { proxy_pass http://hop_b; proxy_http_version 1.1; proxy_set_header Connection \"\"; } }"
taskset -c 1 "$NGINX" -c "$WORK/backend.conf" -p "$WORK" -e "$WORK/backend-error.log" &
PIDS+=($!)
taskset -c 1 "$NGINX" -c "$WORK/collector.conf" -p "$WORK" -e "$WORK/collector-error.log" &
PIDS+=($!)
taskset -c 1 "$NGINX" -c "$WORK/hop_b.conf" -p "$WORK" -e "$WORK/hop_b-error.log" &
PIDS+=($!); NGX_B_PID=$!
taskset -c 1 "$NGINX" -c "$WORK/hop_a.conf" -p "$WORK" -e "$WORK/hop_a-error.log" &
PIDS+=($!); NGX_A_PID=$!

# The nginx pair with mutual TLS 1.3 between the hops (ECDSA P-256, a CA of its own), as the
# Weft mTLS pair below: hop B requires a client certificate, hop A presents one and verifies B.
tls() { openssl "$@" >/dev/null 2>&1; }
tls ecparam -name prime256v1 -genkey -noout -out "$WORK/ca.key"
tls req -x509 -new -key "$WORK/ca.key" -subj "/CN=bench-ca" -days 2 -out "$WORK/ca.pem"
for who in hop_b hop_a; do
  tls ecparam -name prime256v1 -genkey -noout -out "$WORK/$who.key"
  tls req -new -key "$WORK/$who.key" -subj "/CN=$who" -out "$WORK/$who.csr"
  printf 'subjectAltName=DNS:%s\n' "$who" > "$WORK/$who.ext"
  tls x509 -req -in "$WORK/$who.csr" -CA "$WORK/ca.pem" -CAkey "$WORK/ca.key" -CAcreateserial \
    -days 2 -extfile "$WORK/$who.ext" -out "$WORK/$who.pem"
done
nginx_conf tls_b "
  upstream backend { server 127.0.0.1:$BACKEND; keepalive 128; }
  server { listen 127.0.0.1:$NGX_TB ssl;
    ssl_protocols TLSv1.3; ssl_certificate $WORK/hop_b.pem; ssl_certificate_key $WORK/hop_b.key;
    ssl_verify_client on; ssl_client_certificate $WORK/ca.pem;
    location / { proxy_pass http://backend; proxy_http_version 1.1; proxy_set_header Connection \"\"; } }"
nginx_conf tls_a "
  upstream tls_b { server 127.0.0.1:$NGX_TB; keepalive 128; }
  server { listen 127.0.0.1:$NGX_TA;
    location / { proxy_pass https://tls_b; proxy_http_version 1.1; proxy_set_header Connection \"\";
      proxy_ssl_protocols TLSv1.3; proxy_ssl_session_reuse on;
      proxy_ssl_certificate $WORK/hop_a.pem; proxy_ssl_certificate_key $WORK/hop_a.key;
      proxy_ssl_trusted_certificate $WORK/ca.pem; proxy_ssl_verify on; proxy_ssl_name hop_b; } }"
taskset -c 1 "$NGINX" -c "$WORK/tls_b.conf" -p "$WORK" -e "$WORK/tls_b-error.log" &
PIDS+=($!); NGX_TB_PID=$!
taskset -c 1 "$NGINX" -c "$WORK/tls_a.conf" -p "$WORK" -e "$WORK/tls_a-error.log" &
PIDS+=($!); NGX_TA_PID=$!

# --- the floor: two weft-floor hops, in the clear and with mutual TLS 1.3 (the nginx pair's
# certificates), HTTP/1.1 keep-alive between them ------------------------------------------------
taskset -c 1 "$FLOOR" "127.0.0.1:$FL_B" "127.0.0.1:$BACKEND" & PIDS+=($!); FL_B_PID=$!
taskset -c 1 "$FLOOR" "127.0.0.1:$FL_A" "127.0.0.1:$FL_B" & PIDS+=($!); FL_A_PID=$!
taskset -c 1 "$FLOOR" "127.0.0.1:$FL_TB" "127.0.0.1:$BACKEND" \
  --tls-in "$WORK/hop_b.pem" "$WORK/hop_b.key" "$WORK/ca.pem" & PIDS+=($!); FL_TB_PID=$!
taskset -c 1 "$FLOOR" "127.0.0.1:$FL_TA" "127.0.0.1:$FL_TB" \
  --tls-out "$WORK/hop_a.pem" "$WORK/hop_a.key" "$WORK/ca.pem" hop_b & PIDS+=($!); FL_TA_PID=$!

# --- the weft pairs ---------------------------------------------------------------------------
snapshot() { # $1 = file, $2 = inbound port of payments, $3 = plugins json
  cat > "$1" <<JSON
{"version":"bench","services":{"payments":{"timeout":"6s",
  "subsets":{"v1":{"version":"v1"},"v2":{"version":"v2"}},
  "endpoints":[{"address":"127.0.0.1:$2","labels":{"version":"v1"}}],
  "plugins":$3}}}
JSON
}
bootstrap() { # $1 file, $2 service, $3 out, $4 in, $5 admin, $6 app port, $7 snapshot
  cat > "$1" <<JSON
{"service":"$2","outbound":"127.0.0.1:$3","inbound":"127.0.0.1:$4","admin":"127.0.0.1:$5",
 "app":"127.0.0.1:$6","snapshot":"$7"}
JSON
}
CHAIN='[{"name":"canary","builtin":"canary","config":{"host":"payments","route":[
  {"destination":{"host":"payments","subset":"v1"},"weight":100},
  {"destination":{"host":"payments","subset":"v2"},"weight":0}]}},
 {"name":"retry","builtin":"retry","config":{"attempts":3,"perTryTimeout":"2s","retryOn":"5xx,reset"}},
 {"name":"outlier","builtin":"outlier","config":{"consecutive5xxErrors":5,"baseEjectionTime":"30s"}},
 {"name":"telemetry","builtin":"telemetry"}]'
snapshot "$WORK/empty.json" "$PAY_IN" '[]'
# The empty-chain pair with access logs on both sides of both sidecars (Envoy's text format,
# to a file), as a mesh-wide Telemetry with the `envoy` provider would set them.
snapshot "$WORK/logged.json" "$LP_IN" '[]'
sed -i 's/}}}$/}},"accessLog":{"client":[{"encoding":"TEXT"}],"server":[{"encoding":"TEXT"}]}}/' "$WORK/logged.json"
snapshot "$WORK/chain.json" "$PAY_IN" "$CHAIN"
# The empty-chain pair with traces on both sides of both sidecars, new traces sampled at 1%
# and at 100%, exported over OTLP/HTTP to the collector above.
traced() { # $1 file, $2 inbound port of payments, $3 sampling percentage
  snapshot "$1" "$2" '[]'
  local side="{\"endpoint\":\"http://127.0.0.1:$COLLECTOR/v1/traces\",\"sampling\":$3,\"report\":true}"
  sed -i "s|}}}\$|}},\"tracing\":{\"client\":$side,\"server\":$side}}|" "$1"
}
traced "$WORK/spans1.json" "$S1P_IN" 1
traced "$WORK/spans100.json" "$SAP_IN" 100
snapshot "$WORK/payments.json" "$PAY_IN" '[]'
bootstrap "$WORK/orders.json" orders $ORD_OUT $ORD_IN $ORD_ADM 9 empty.json
bootstrap "$WORK/orders-chain.json" orders $CH_OUT $CH_IN $CH_ADM 9 chain.json
bootstrap "$WORK/payments-sc.json" payments $PAY_OUT $PAY_IN $PAY_ADM $BACKEND payments.json
bootstrap "$WORK/orders-logged.json" orders $LO_OUT $LO_IN $LO_ADM 9 logged.json
bootstrap "$WORK/payments-logged.json" payments $LP_OUT $LP_IN $LP_ADM $BACKEND logged.json
bootstrap "$WORK/orders-s1.json" orders $S1_OUT $S1_IN $S1_ADM 9 spans1.json
bootstrap "$WORK/payments-s1.json" payments $S1P_OUT $S1P_IN $S1P_ADM $BACKEND spans1.json
bootstrap "$WORK/orders-sa.json" orders $SA_OUT $SA_IN $SA_ADM 9 spans100.json
bootstrap "$WORK/payments-sa.json" payments $SAP_OUT $SAP_IN $SAP_ADM $BACKEND spans100.json
# Started in this shell (not in a $(...) subshell) so the trap knows every PID and stops them.
start() { taskset -c 1 "$WEFT" sidecar --config "$1" >"$WORK/$(basename "$1").log" 2>&1 & PIDS+=($!); }
start "$WORK/payments-sc.json"; PAY_PID=$!
start "$WORK/orders.json"; ORD_PID=$!
start "$WORK/orders-chain.json"; CH_PID=$!
start "$WORK/payments-s1.json"; S1P_PID=$!
start "$WORK/orders-s1.json"; S1_PID=$!
start "$WORK/payments-sa.json"; SAP_PID=$!
start "$WORK/orders-sa.json"; SA_PID=$!
# Their stdout (the access log) goes to a file of its own.
taskset -c 1 "$WEFT" sidecar --config "$WORK/payments-logged.json" >"$WORK/payments-access.log" 2>"$WORK/payments-logged.log" &
PIDS+=($!); LP_PID=$!
taskset -c 1 "$WEFT" sidecar --config "$WORK/orders-logged.json" >"$WORK/orders-access.log" 2>"$WORK/orders-logged.log" &
PIDS+=($!); LO_PID=$!
# The Weft pair with mTLS: certificates from weft control (the mesh CA), STRICT inbound. The
# control plane compiles the chains: with no VirtualService, Istio's default retry plus
# telemetry on the caller's side, and telemetry (reporting as the destination) in the
# destination's server-side chain.
taskset -c 1 "$WEFT" control --data "$WORK/cp" --listen "127.0.0.1:$CP" >"$WORK/control.log" 2>&1 &
PIDS+=($!); CP_PID=$!
for _ in $(seq 100); do [ -s "$WORK/cp/bundle.pem" ] && break; sleep 0.1; done
sleep 0.3
# The API is TLS with the control plane's own certificate from the mesh CA; the CLI verifies
# it against the bundle the control plane publishes in its data directory.
token_of() { "$WEFT" token "$1" --server "127.0.0.1:$CP" --data "$WORK/cp"; }
mtls_bootstrap() { # $1 file, $2 service, $3 out, $4 in, $5 admin, $6 app port, $7 token
  cat > "$1" <<JSON
{"service":"$2","outbound":"127.0.0.1:$3","inbound":"127.0.0.1:$4","admin":"127.0.0.1:$5",
 "app":"127.0.0.1:$6","labels":{"version":"v1"},"mtls":"STRICT",
 "controlPlane":{"address":"127.0.0.1:$CP","token":"$7","caFile":"$WORK/cp/bundle.pem"}}
JSON
}
mtls_bootstrap "$WORK/tpay.json" payments $TP_OUT $TP_IN $TP_ADM $BACKEND "$(token_of payments)"
mtls_bootstrap "$WORK/tord.json" orders $TO_OUT $TO_IN $TO_ADM 9 "$(token_of orders)"
start "$WORK/tpay.json"; TP_PID=$!
start "$WORK/tord.json"; TO_PID=$!
for pid in $PAY_PID $ORD_PID $CH_PID $TP_PID $TO_PID $LP_PID $LO_PID $S1_PID $S1P_PID $SA_PID $SAP_PID; do
  sleep 0.5; kill -0 "$pid" 2>/dev/null || { echo "a sidecar failed to start:" >&2; cat "$WORK"/*.log >&2; exit 1; }
done
for port in $BACKEND $NGX_A $NGX_TA $FL_A $FL_TA $ORD_ADM $CH_ADM $PAY_ADM $TP_ADM $TO_ADM $LO_ADM $LP_ADM $S1_ADM $S1P_ADM $SA_ADM $SAP_ADM; do
  for _ in $(seq 100); do curl -fs "http://127.0.0.1:$port/ready" >/dev/null 2>&1 && break
    (echo > "/dev/tcp/127.0.0.1/$port") 2>/dev/null && break; sleep 0.1; done
done
sleep 1

cpu_ticks() { awk '{print $14+$15}' "/proc/$1/stat"; }
rss_kib() { awk '/VmRSS/ {print $2}' "/proc/$1/status"; }
TCK=$(getconf CLK_TCK)

# $1 name, $2 port, $3 "pids of the proxies" (space separated; empty for direct)
measure() {
  local name=$1 port=$2 pids=$3 before=0 after=0 reqs rps rss=0
  local url="http://127.0.0.1:$port/"
  for p in $pids; do before=$((before + $(cpu_ticks "$p"))); done
  local wrk_out; wrk_out=$(taskset -c 0 wrk -t1 -c"$CONNS" -d"${DURATION}s" -H "Host: payments" "$url")
  reqs=$(echo "$wrk_out" | awk '/requests in/ {print $1}')
  rps=$(echo "$wrk_out" | awk '/Requests\/sec/ {printf "%.0f", $2}')
  for p in $pids; do after=$((after + $(cpu_ticks "$p"))); r=$(rss_kib "$p"); rss=$((rss > r ? rss : r)); done
  local cpu_per_10k; cpu_per_10k=$(awk -v t=$((after - before)) -v hz="$TCK" -v n="$reqs" 'BEGIN { if (n > 0) printf "%.3f", t / hz / n * 10000; else print "-" }')
  local lat=""
  for rate in 1000 5000; do
    # sent ok errors late p50 p90 p99 max
    local r; r=$(taskset -c 0 "$LOADGEN" "127.0.0.1:$port" "$rate" "$DURATION" 50 payments)
    read -r sent ok errors late p50 p90 p99 _ <<<"$r"
    local flag=""; [ "$errors" != 0 ] || [ "$late" -gt $((sent / 100)) ] && flag=" ($errors err, $late late)"
    lat="$lat | $p50 / $p90 / $p99$flag"
  done
  printf "| %-28s | %8s %s | %8s | %6s |\n" "$name" "$rps" "$lat" "$cpu_per_10k" "$((rss / 1024))"
}

{
  echo "Weft load benchmark — $(date -u +%FT%TZ), ${DURATION}s per load, $CONNS connections (wrk); latency open-loop at fixed rates over 50 connections (bench/loadgen)"
  echo
  echo "| path                         | req/s    | p50/p90/p99 µs @1k rps | p50/p90/p99 µs @5k rps | CPU s/10k | RSS MiB |"
  echo "|------------------------------|----------|------------------------|------------------------|-----------|---------|"
  measure "direct app"                "$BACKEND" ""
  measure "floor pair"                "$FL_A"    "$FL_A_PID $FL_B_PID"
  measure "nginx pair"                "$NGX_A"   "$NGX_A_PID $NGX_B_PID"
  measure "weft pair, empty chain"    "$ORD_OUT" "$ORD_PID $PAY_PID"
  measure "weft pair, 4-plugin chain" "$CH_OUT"  "$CH_PID $PAY_PID"
  measure "weft pair, empty, access logs" "$LO_OUT" "$LO_PID $LP_PID"
  measure "weft pair, empty, spans 1%" "$S1_OUT" "$S1_PID $S1P_PID"
  measure "weft pair, empty, spans 100%" "$SA_OUT" "$SA_PID $SAP_PID"
  measure "floor pair, mTLS 1.3"      "$FL_TA"   "$FL_TA_PID $FL_TB_PID"
  measure "nginx pair, mTLS 1.3"      "$NGX_TA"  "$NGX_TA_PID $NGX_TB_PID"
  measure "weft pair, mTLS (cp chains)" "$TO_OUT" "$TO_PID $TP_PID"
  echo
  echo "CPU is summed and RSS is the largest over each path's proxy processes (the backend is a"
  echo "separate nginx process, not counted). The nginx pair is two nginx processes"
  echo "(master_process off, one worker each), one per hop, as the weft pair is two sidecars."
  echo "The floor pair is two bench/floor processes (hyper + rustls, one current-thread runtime"
  echo "each, HTTP/1.1 keep-alive between the hops): what Weft's stack costs before Weft does"
  echo "anything of its own."
} | tee "$OUT/latest.md"
