#!/usr/bin/env bash
# HTTP/1.1 keep-alive, plain and over TLS (run by hand, not in CI): wrk against handoff,
# HAProxy and NGINX in one interleaved run, to one NGINX origin over HTTP/1.1 keep-alive,
# at 64 and at 1,000 client connections. TLS is TLS 1.3 with an ECDSA P-256 certificate,
# sessions kept open (the handshakes are tls.sh's). One worker each (handoff --threads 1,
# HAProxy nbthread 1, NGINX worker_processes 1), the proxies on cpu1, origin and wrk on
# cpu0. Prints per proxy the median requests a second and the proxy's CPU per request,
# user and system apart (from /proc/PID/stat).
# `--workers 2`: two workers or threads each, the proxies on both cores (and so sharing
# cpu0 with wrk and the origin: compare the proxies with each other, not with the
# one-worker table).
#
#   benches/load/http.sh                 # 5 reps of 4 s per case
#   benches/load/http.sh --reps 3 --dur 3 --workers 2
set -euo pipefail
HERE=$(cd "$(dirname "$0")" && pwd)
ROOT=$(cd "$HERE/../.." && pwd)
REPS=5 DUR=4 WORKERS=1
while [ $# -gt 0 ]; do
    case "$1" in
        --reps) REPS=$2; shift 2;;
        --dur) DUR=$2; shift 2;;
        --workers) WORKERS=$2; shift 2;;
        -h|--help) sed -n '2,14p' "$0"; exit 0;;
        *) echo "unknown arg $1" >&2; exit 2;;
    esac
done
# shellcheck source=lib.sh
. "$HERE/lib.sh"
need nginx haproxy wrk openssl taskset -- nginx-light haproxy wrk openssl util-linux
handoff_bin
workdir httpbench
proxy_cpus "$WORKERS"
ulimit -n "$(ulimit -Hn)" 2>/dev/null || true

openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -days 30 -subj /CN=a.test \
    -addext subjectAltName=DNS:a.test -keyout "$W/ec.key" -out "$W/ec.crt" 2>/dev/null
openssl pkcs8 -topk8 -nocrypt -in "$W/ec.key" -out "$W/ec.p8"
cat "$W/ec.crt" "$W/ec.key" > "$W/ec.pem"

cat > "$W/origin.conf" <<EOF
$(nginx_head origin)
http { $(nginx_tmp) access_log off; keepalive_requests 1000000;
  server { listen 127.0.0.1:18680 backlog=4096; location / { return 200 "ok\n"; } } }
EOF
cat > "$W/proxy.conf" <<EOF
$(nginx_head proxy | sed "s/worker_processes 1;/worker_processes $WORKERS;/")
http { $(nginx_tmp) access_log off; keepalive_requests 1000000; ssl_protocols TLSv1.2 TLSv1.3;
  upstream origin { server 127.0.0.1:18680; keepalive 1024; keepalive_requests 1000000; }
  server { listen 127.0.0.1:18621 backlog=4096; listen 127.0.0.1:18622 ssl backlog=4096;
    ssl_certificate $W/ec.crt; ssl_certificate_key $W/ec.key;
    location / { proxy_pass http://origin; proxy_http_version 1.1; proxy_set_header Connection ""; } } }
EOF
cat > "$W/haproxy.cfg" <<EOF
global
    nbthread $WORKERS
    maxconn 8000
defaults
    mode http
    maxconn 8000
    timeout connect 5s
    timeout client 30s
    timeout server 30s
frontend plain
    bind 127.0.0.1:18611
    bind 127.0.0.1:18612 ssl crt $W/ec.pem
    default_backend origin
backend origin
    http-reuse always
    server o 127.0.0.1:18680
EOF
cat > "$W/handoff.yaml" <<EOF
admin: { listen: "127.0.0.1:19680" }
upgrade: { socket: "$W/handoff.sock" }
listeners:
  - { name: plain, listen: "127.0.0.1:18601", protocol: http, max_connections: 20000, routes: [ { pool: origin } ] }
  - name: tls
    listen: "127.0.0.1:18602"
    protocol: http
    max_connections: 20000
    routes: [ { pool: origin } ]
    tls: { certificates: [ { cert: "$W/ec.crt", key: "$W/ec.p8" } ] }
pools:
  - { name: origin, nodes: [ { name: o1, addr: "127.0.0.1:18680" } ], health: { interval: 1s, tcp: {} } }
EOF

taskset -c 0 nginx -p "$W" -c "$W/origin.conf" -g 'daemon off;' & PIDS+=($!)
taskset -c "$PROXY_CPUS" nginx -p "$W" -c "$W/proxy.conf" -g 'daemon off;' & PIDS+=($!); NGX_MASTER=$!
taskset -c "$PROXY_CPUS" haproxy -db -f "$W/haproxy.cfg" & PIDS+=($!); HAP=$!
taskset -c "$PROXY_CPUS" "$BIN" run -c "$W/handoff.yaml" --threads "$WORKERS" 2>"$W/handoff.err" & PIDS+=($!); HANDOFF=$!
for p in 18680 18601 18602 18611 18612 18621 18622; do wait_port "$p"; done
sleep 1.5
NGX_WORKERS=$(ps -o pid= --ppid "$NGX_MASTER" | tr -d ' ' | tr '\n' ' ')

declare -A PORT=([handoff]=18601 [haproxy]=18611 [nginx]=18621)
declare -A PID=([handoff]=$HANDOFF [haproxy]=$HAP [nginx]="$NGX_WORKERS")
url() { if [ "$1" = tls ]; then echo "https://127.0.0.1:$(($2 + 1))/"; else echo "http://127.0.0.1:$2/"; fi; }
HZ=$(getconf CLK_TCK)
RAW=$W/raw.tsv
: > "$RAW"
for proxy in handoff haproxy nginx; do  # warm-up: connections to the origin, caches
    for kind in plain tls; do
        taskset -c 0 wrk -t 1 -c 1000 -d 1 "$(url $kind "${PORT[$proxy]}")" >/dev/null 2>&1 || true
    done
done
for rep in $(seq "$REPS"); do
    for kind in plain tls; do
        for conns in 64 1000; do
            for proxy in handoff haproxy nginx; do
                read -r u0 s0 < <(ticks "${PID[$proxy]}")
                out=$(taskset -c 0 wrk -t 1 -c "$conns" -d "$DUR" "$(url $kind "${PORT[$proxy]}")" 2>&1 || true)
                read -r u1 s1 < <(ticks "${PID[$proxy]}")
                n=$(echo "$out" | awk '/requests in/ {print $1; exit}')
                errors=$(echo "$out" | awk '/Non-2xx|Socket errors/ {print; exit}')
                echo -e "$proxy\t$kind\t$conns\t$rep\t${n:-0}\t$((u1 - u0))\t$((s1 - s0))" >> "$RAW"
                echo "rep $rep $proxy $kind c=$conns: ${n:-0} requests ${errors}" >&2
            done
        done
    done
done
python3 - "$RAW" "$HZ" "$DUR" <<'EOF'
import statistics, sys
raw, hz, dur = sys.argv[1], int(sys.argv[2]), float(sys.argv[3])
rows = {}
for line in open(raw):
    proxy, kind, conns, rep, n, u, s = line.rstrip("\n").split("\t")
    n = int(n)
    if n == 0:
        continue
    rows.setdefault((proxy, kind, int(conns)), []).append((n / dur, 1e6 * int(u) / hz / n, 1e6 * int(s) / hz / n))
print("| proxy | client side | connections | req/s | user µs/req | sys µs/req | user vs NGINX |")
print("|---|---|---:|---:|---:|---:|---:|")
for kind in ["plain", "tls"]:
    for conns in [64, 1000]:
        ngx = rows.get(("nginx", kind, conns))
        ngx_u = statistics.median(c[1] for c in ngx) if ngx else None
        for proxy in ["handoff", "haproxy", "nginx"]:
            v = rows.get((proxy, kind, conns))
            if v:
                r, u, s = [statistics.median(c) for c in zip(*v)]
                ratio = f"{u / ngx_u:.2f}×" if ngx_u else "–"
                side = {"plain": "HTTP/1.1", "tls": "HTTP/1.1 over TLS 1.3"}[kind]
                print(f"| {proxy} | {side} | {conns:,} | {r:,.0f} | {u:.2f} | {s:.2f} | {ratio} |")
EOF
