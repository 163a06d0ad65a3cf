#!/usr/bin/env bash
# HTTP/2 from clients (run by hand, not in CI): h2load against handoff, HAProxy and NGINX in
# one interleaved run, cleartext HTTP/2 with prior knowledge (h2c) so that TLS costs stay
# out, HTTP/1.1 keep-alive to one NGINX origin. One worker each (handoff --threads 1,
# HAProxy nbthread 1, NGINX worker_processes 1), the proxies on cpu1, origin and h2load on
# cpu0. 16 connections with 1 and with 32 streams each. Prints per proxy the median
# requests a second and the proxy's CPU per request, user and system apart.
# `--workers 2`: two workers or threads each, the proxies on both cores (and so sharing
# cpu0 with h2load and the origin: compare the proxies with each other, not with the
# one-worker table).
#
#   benches/load/h2.sh                 # 5 reps of 4 s per case
#   benches/load/h2.sh --reps 3 --dur 3 --workers 2
set -euo pipefail
HERE=$(cd "$(dirname "$0")" && pwd)
ROOT=$(cd "$HERE/../.." && pwd)
REPS=5 DUR=4 CONNS=16 WORKERS=1
while [ $# -gt 0 ]; do
    case "$1" in
        --reps) REPS=$2; shift 2;;
        --dur) DUR=$2; shift 2;;
        --conns) CONNS=$2; shift 2;;
        --workers) WORKERS=$2; shift 2;;
        -h|--help) sed -n '2,11p' "$0"; exit 0;;
        *) echo "unknown arg $1" >&2; exit 2;;
    esac
done
# shellcheck source=lib.sh
. "$HERE/lib.sh"
need nginx haproxy h2load taskset -- nginx-light haproxy nghttp2-client util-linux
handoff_bin
workdir h2bench
proxy_cpus "$WORKERS"

cat > "$W/origin.conf" <<EOF
$(nginx_head origin)
http { $(nginx_tmp) access_log off; keepalive_requests 1000000;
  server { listen 127.0.0.1:18580; location / { return 200 "ok\n"; } } }
EOF
cat > "$W/proxy.conf" <<EOF
$(nginx_head proxy | sed "s/worker_processes 1;/worker_processes $WORKERS;/")
http { $(nginx_tmp) access_log off; keepalive_requests 1000000; http2_max_requests 1000000;
  upstream origin { server 127.0.0.1:18580; keepalive 64; }
  server { listen 127.0.0.1:18521 http2;
    location / { proxy_pass http://origin; proxy_http_version 1.1; proxy_set_header Connection ""; } } }
EOF
cat > "$W/haproxy.cfg" <<EOF
global
    nbthread $WORKERS
defaults
    mode http
    timeout connect 5s
    timeout client 30s
    timeout server 30s
frontend h2c
    bind 127.0.0.1:18511 proto h2
    default_backend origin
backend origin
    http-reuse always
    server o 127.0.0.1:18580
EOF
cat > "$W/handoff.yaml" <<EOF
admin: { listen: "127.0.0.1:19580" }
upgrade: { socket: "$W/handoff.sock" }
listeners:
  - { name: h2c, listen: "127.0.0.1:18501", protocol: http, max_connections: 20000, routes: [ { pool: origin } ] }
pools:
  - { name: origin, nodes: [ { name: o1, addr: "127.0.0.1:18580" } ], health: { interval: 1s, tcp: {} } }
EOF

taskset -c 0 nginx -p "$W" -c "$W/origin.conf" -g 'daemon off;' & PIDS+=($!)
taskset -c "$PROXY_CPUS" nginx -p "$W" -c "$W/proxy.conf" -g 'daemon off;' & PIDS+=($!); NGX_MASTER=$!
taskset -c "$PROXY_CPUS" haproxy -db -f "$W/haproxy.cfg" & PIDS+=($!); HAP=$!
taskset -c "$PROXY_CPUS" "$BIN" run -c "$W/handoff.yaml" --threads "$WORKERS" 2>"$W/handoff.err" & PIDS+=($!); HANDOFF=$!
for p in 18580 18501 18511 18521; do wait_port "$p"; done
sleep 1.5
NGX_WORKERS=$(ps -o pid= --ppid "$NGX_MASTER" | tr -d ' ' | tr '\n' ' ')

declare -A PORT=([handoff]=18501 [haproxy]=18511 [nginx]=18521)
declare -A PID=([handoff]=$HANDOFF [haproxy]=$HAP [nginx]="$NGX_WORKERS")
HZ=$(getconf CLK_TCK)
RAW=$W/raw.tsv
: > "$RAW"
for proxy in handoff haproxy nginx; do  # warm-up: connections to the origin, caches
    taskset -c 0 h2load -c "$CONNS" -m 32 -D 1 "http://127.0.0.1:${PORT[$proxy]}/" >/dev/null 2>&1 || true
done
for rep in $(seq "$REPS"); do
    for streams in 1 32; do
        for proxy in handoff haproxy nginx; do
            read -r u0 s0 < <(ticks "${PID[$proxy]}")
            out=$(taskset -c 0 h2load -c "$CONNS" -m "$streams" -D "$DUR" \
                "http://127.0.0.1:${PORT[$proxy]}/" 2>&1 || true)
            read -r u1 s1 < <(ticks "${PID[$proxy]}")
            ok=$(echo "$out" | awk '/^requests:/ {for (i = 1; i <= NF; i++) if ($(i+1) == "succeeded,") print $i}')
            failed=$(echo "$out" | awk '/^requests:/ {for (i = 1; i <= NF; i++) if ($(i+1) == "failed,") print $i}')
            echo -e "$proxy\t$streams\t$rep\t${ok:-0}\t$((u1 - u0))\t$((s1 - s0))\t${failed:-?}" >> "$RAW"
            echo "rep $rep $proxy m=$streams: ${ok:-0} requests, ${failed:-?} failed" >&2
        done
    done
done
python3 - "$RAW" "$HZ" "$DUR" <<'EOF'
import statistics, sys
raw, hz, dur = sys.argv[1], int(sys.argv[2]), float(sys.argv[3])
rows = {}
for line in open(raw):
    proxy, streams, rep, n, u, s, failed = line.rstrip("\n").split("\t")
    n = int(n)
    if n == 0:
        continue
    rows.setdefault((proxy, int(streams)), []).append((n / dur, 1e6 * int(u) / hz / n, 1e6 * int(s) / hz / n))
print("| proxy | streams per connection | req/s | user µs/req | sys µs/req | user vs HAProxy |")
print("|---|---:|---:|---:|---:|---:|")
for streams in [1, 32]:
    hap = rows.get(("haproxy", streams))
    hap_u = statistics.median(c[1] for c in hap) if hap else None
    for proxy in ["handoff", "haproxy", "nginx"]:
        v = rows.get((proxy, streams))
        if v:
            r, u, s = [statistics.median(c) for c in zip(*v)]
            ratio = f"{u / hap_u:.2f}×" if hap_u else "–"
            print(f"| {proxy} | {streams} | {r:,.0f} | {u:.2f} | {s:.2f} | {ratio} |")
EOF
