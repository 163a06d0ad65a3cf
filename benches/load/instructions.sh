#!/usr/bin/env bash
# User-space instructions per request of two handoff binaries (run by hand, not in CI),
# counted by valgrind's cachegrind: unlike CPU time, the count barely moves between runs,
# so a change of a percent shows on a shared machine whose timings drift by ten. Each
# binary serves N keep-alive HTTP/1.1 requests (ab, 16 connections) of 1 KiB from an NGINX
# origin with one worker thread; a run that serves none is subtracted (start and stop).
#
#   benches/load/instructions.sh OLD_BINARY NEW_BINARY [--requests 20000] [--conns 16]
#                                [--nginx] [--cache] [--ll BYTES] [--branches]
#
# `--nginx` adds NGINX as a reverse proxy (one worker, keep-alive to the same origin),
# counted the same way, for a row that compares handoff's count with a peer's. `--cache`
# also simulates the caches (cachegrind's `--cache-sim=yes`, slower) and adds the level-1
# instruction and data cache misses per request: where instructions are level but time is
# not, misses are what differs. It adds the last-level misses too, for a cache of `--ll`
# bytes (8-way, with level-1 caches of 32 KiB; cachegrind's default is the host's caches):
# `--ll 524288` models a Zen core's 512 KiB L2, where 1,000 connections' memory spills. `--conns` sets ab's connections (raise
# `--requests` with it: each connection's setup is counted too). `--branches` adds
# mispredicted branches per request (cachegrind's `--branch-sim=yes`: a simple predictor,
# so a hint of where an indirect jump or a data-dependent branch costs, not a measurement).
#
# Needs valgrind, ab (apache2-utils) and nginx: apt-get install valgrind apache2-utils
# nginx-light.
set -euo pipefail
HERE=$(cd "$(dirname "$0")" && pwd)
[ $# -ge 2 ] || { sed -n '2,21p' "$0"; exit 2; }
A=$(realpath "$1") B=$(realpath "$2"); shift 2
N=20000 C=16 NGINX=0 SIM=no LL=() BSIM=no
while [ $# -gt 0 ]; do
  case "$1" in
    --requests) N=$2; shift 2;;
    --nginx) NGINX=1; shift;;
    --conns) C=$2; shift 2;;
    --cache) SIM=yes; shift;;
    --ll) SIM=yes; LL=(--I1=32768,8,64 --D1=32768,8,64 --LL="$2",8,64); shift 2;;
    --branches) BSIM=yes; shift;;
    *) echo "unknown arg $1" >&2; exit 2;;
  esac
done
for cmd in valgrind ab nginx ss curl; do
  command -v "$cmd" >/dev/null || { echo "needs $cmd" >&2; exit 1; }
done
ulimit -n "$(ulimit -Hn)" 2>/dev/null || true
RUN=$(mktemp -d /tmp/handoff-instr.XXXXXX)
mkdir -p "$RUN"/{www,origin-tmp}
head -c 1024 /dev/zero | tr '\0' 'x' > "$RUN/www/1k.bin"
sed "s#@RUN@#$RUN#g" "$HERE/conf/origin-nginx.conf.in" > "$RUN/origin-nginx.conf"
PIDS=()
cleanup() { local p; for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null || true; wait "$p" 2>/dev/null || true; done; }
trap cleanup EXIT
port_busy() { ss -Hltn "sport = :$1" | grep -q .; }
for p in 18080 9091 9092 9093 9094 9990; do
  port_busy "$p" && { echo "port $p already in use" >&2; exit 1; }
done
nginx -p "$RUN" -c "$RUN/origin-nginx.conf" -g 'daemon off;' & PIDS+=($!)
for _ in $(seq 100); do port_busy 18080 && break; sleep 0.05; done

# `$1` keep-alive requests through the proxy on 9091 (none for 0), all answered.
load() {
  local n=$1 out=$2
  if [ "$n" -gt 0 ]; then
    ab -q -k -s 10 -n "$n" -c "$C" http://127.0.0.1:9091/1k.bin > "$out.ab" 2>&1 \
      || { echo "ab failed (see $out.ab)" >&2; exit 1; }
    grep -q "^Failed requests: *0" "$out.ab" || { echo "failed requests (see $out.ab)" >&2; exit 1; }
  fi
}

# Stops the proxy under valgrind with signal `$1` and reads its instruction count into
# $COUNT (and, with --cache, its L1 instruction and data cache misses into $I1 and $D1).
stopped() {
  local sig=$1 pid=$2 out=$3
  kill "-$sig" "$pid"; wait "$pid" || true
  for _ in $(seq 100); do port_busy 9091 || break; sleep 0.05; done
  COUNT=$(awk '/I *refs:/{gsub(",", "", $NF); print $NF}' "$out.log" | tail -1)
  I1=$(awk '/I1 *misses:/{gsub(",", "", $4); print $4}' "$out.log" | tail -1)
  D1=$(awk '/D1 *misses:/{gsub(",", "", $4); print $4}' "$out.log" | tail -1)
  LLM=$(awk '/LL misses:/{gsub(",", "", $4); print $4}' "$out.log" | tail -1)
  BM=$(awk '/Mispredicts:/{gsub(",", "", $3); print $3}' "$out.log" | tail -1)
}

# Total instructions of one run of `$1` serving `$2` requests, into $COUNT.
COUNT=0
count() {
  local bin=$1 n=$2 out="$RUN/cg.$RANDOM" pid
  valgrind --tool=cachegrind --cache-sim="$SIM" --branch-sim="$BSIM" "${LL[@]}" --cachegrind-out-file="$out" \
    "$bin" run -c "$HERE/handoff.yaml" --threads 1 > "$out.log" 2>&1 & pid=$!
  PIDS+=("$pid")
  # Serving once the origin node is up (a request before that gets handoff's own 503).
  for _ in $(seq 600); do
    curl -s http://127.0.0.1:9990/v1/pools/origin 2>/dev/null | grep -q '"health": *"up"' && break
    sleep 0.1
  done
  curl -s http://127.0.0.1:9990/v1/pools/origin | grep -q '"health": *"up"' \
    || { echo "$bin: the origin node never came up (see $out.log)" >&2; exit 1; }
  load "$n" "$out"
  stopped TERM "$pid" "$out"
}

# The same for NGINX as the proxy on 9091: one process (no master), as `worker_processes 1`.
count_nginx() {
  local n=$1 out="$RUN/cg-nginx.$RANDOM" pid
  cat > "$RUN/proxy-nginx.conf" <<CONF
daemon off; master_process off; pid $RUN/proxy.pid; error_log $RUN/proxy.err;
events { worker_connections 4096; }
http { access_log off; client_body_temp_path $RUN/origin-tmp; proxy_temp_path $RUN/origin-tmp;
  fastcgi_temp_path $RUN/origin-tmp; uwsgi_temp_path $RUN/origin-tmp; scgi_temp_path $RUN/origin-tmp;
  keepalive_requests 100000000;
  upstream origin { server 127.0.0.1:18080; keepalive 1024; }
  server { listen 127.0.0.1:9091;
    location / { proxy_pass http://origin; proxy_http_version 1.1; proxy_set_header Connection ""; } } }
CONF
  valgrind --tool=cachegrind --cache-sim="$SIM" --branch-sim="$BSIM" "${LL[@]}" --cachegrind-out-file="$out" \
    nginx -p "$RUN" -c "$RUN/proxy-nginx.conf" > "$out.log" 2>&1 & pid=$!
  PIDS+=("$pid")
  for _ in $(seq 600); do port_busy 9091 && break; sleep 0.1; done
  load "$n" "$out"
  stopped TERM "$pid" "$out"
}

declare -A per i1 d1 ll bm
# Per request: busy run minus idle run, over N ($1 $2: the two counts; empty without --cache).
per_req() { if [ -n "$1" ] && [ -n "$2" ]; then echo $(( ($1 - $2) / N )); else echo -; fi; }
for side in A B; do
  bin=$A; [ "$side" = B ] && bin=$B
  count "$bin" 0; idle=$COUNT idle_i1=$I1 idle_d1=$D1 idle_ll=$LLM idle_bm=$BM
  count "$bin" "$N"; busy=$COUNT
  per[$side]=$(( (busy - idle) / N ))
  i1[$side]=$(per_req "$I1" "$idle_i1"); d1[$side]=$(per_req "$D1" "$idle_d1")
  ll[$side]=$(per_req "$LLM" "$idle_ll"); bm[$side]=$(per_req "$BM" "$idle_bm")
  echo "$side: $busy instructions with $N requests, $idle with none: ${per[$side]} per request" >&2
done
echo "A = $A"
echo "B = $B"
echo
echo "| binary | user instructions per request | L1i misses | L1d misses | LL misses | mispredicts |"
echo "|---|---|---|---|---|---|"
echo "| A | ${per[A]} | ${i1[A]} | ${d1[A]} | ${ll[A]} | ${bm[A]} |"
echo "| B | ${per[B]} | ${i1[B]} | ${d1[B]} | ${ll[B]} | ${bm[B]} |"
python3 -c "print('| B/A | %.3f | | | | |' % (${per[B]} / ${per[A]}))"

if [ "$NGINX" = 1 ]; then
  count_nginx 0; idle=$COUNT idle_i1=$I1 idle_d1=$D1 idle_ll=$LLM idle_bm=$BM
  count_nginx "$N"; busy=$COUNT
  ngx=$(( (busy - idle) / N ))
  echo "NGINX: $busy instructions with $N requests, $idle with none: $ngx per request" >&2
  echo "| NGINX | $ngx | $(per_req "$I1" "$idle_i1") | $(per_req "$D1" "$idle_d1") | $(per_req "$LLM" "$idle_ll") | $(per_req "$BM" "$idle_bm") |"
  python3 -c "print('| B/NGINX | %.3f | | | | |' % (${per[B]} / $ngx))"
fi
