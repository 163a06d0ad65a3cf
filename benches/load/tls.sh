#!/usr/bin/env bash
# TLS handshakes (run by hand, not in CI): full and resumed, with an ECDSA P-256 and an RSA
# 2048 certificate, through handoff, NGINX and HAProxy in one interleaved run. One worker
# each (NGINX worker_processes 1, HAProxy nbthread 1, handoff --threads 1), the proxies on
# cpu1, the origin and the client on cpu0. The client is `openssl s_time -www /` (TLS 1.3:
# `-new` for full handshakes, `-reuse` to resume by ticket). Prints per proxy and
# certificate the median handshakes a second and the proxy's CPU per handshake, user and
# system apart (from /proc/PID/stat).
# `--workers 2`: two workers or threads each, the proxies on both cores (s_time is one
# client, so this shows the cost per handshake with two workers, not more handshakes).
#
#   benches/load/tls.sh                 # 5 reps of 4 s per case
#   benches/load/tls.sh --reps 3 --dur 3 --workers 2
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
need nginx haproxy openssl taskset -- nginx-light haproxy openssl util-linux
handoff_bin
workdir tlsbench
proxy_cpus "$WORKERS"

# The same certificates for every proxy.
openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -days 30 -subj /CN=a.test \
    -addext subjectAltName=DNS:a.test -keyout "$W/ec.key" -out "$W/ec.crt" 2>/dev/null
openssl req -x509 -newkey rsa:2048 -nodes -days 30 -subj /CN=a.test \
    -addext subjectAltName=DNS:a.test -keyout "$W/rsa.key" -out "$W/rsa.crt" 2>/dev/null
# rustls reads PKCS#8 keys; HAProxy wants certificate and key in one file.
for k in ec rsa; do
    openssl pkcs8 -topk8 -nocrypt -in "$W/$k.key" -out "$W/$k.p8"
    cat "$W/$k.crt" "$W/$k.key" > "$W/$k.pem"
done

cat > "$W/origin.conf" <<EOF
$(nginx_head origin)
http { $(nginx_tmp) access_log off; server { listen 127.0.0.1:18280; location / { return 200 "ok\n"; } } }
EOF
cat > "$W/proxy.conf" <<EOF
$(nginx_head proxy | sed "s/worker_processes 1;/worker_processes $WORKERS;/")
http { $(nginx_tmp) access_log off; ssl_protocols TLSv1.2 TLSv1.3; ssl_session_cache shared:S:10m;
  upstream origin { server 127.0.0.1:18280; keepalive 16; }
  server { listen 127.0.0.1:18321 ssl; ssl_certificate $W/ec.crt; ssl_certificate_key $W/ec.key;
    location / { proxy_pass http://origin; proxy_http_version 1.1; proxy_set_header Connection ""; } }
  server { listen 127.0.0.1:18322 ssl; ssl_certificate $W/rsa.crt; ssl_certificate_key $W/rsa.key;
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
frontend ec
    bind 127.0.0.1:18311 ssl crt $W/ec.pem
    default_backend origin
frontend rsa
    bind 127.0.0.1:18312 ssl crt $W/rsa.pem
    default_backend origin
backend origin
    http-reuse always
    server o 127.0.0.1:18280
EOF
cat > "$W/handoff.yaml" <<EOF
admin: { listen: "127.0.0.1:19380" }
upgrade: { socket: "$W/handoff.sock" }
listeners:
  - name: ec
    listen: "127.0.0.1:18301"
    protocol: http
    routes: [ { pool: origin } ]
    tls: { certificates: [ { cert: "$W/ec.crt", key: "$W/ec.p8" } ] }
  - name: rsa
    listen: "127.0.0.1:18302"
    protocol: http
    routes: [ { pool: origin } ]
    tls: { certificates: [ { cert: "$W/rsa.crt", key: "$W/rsa.p8" } ] }
pools:
  - { name: origin, nodes: [ { name: o1, addr: "127.0.0.1:18280" } ], health: { interval: 1s, tcp: {} } }
EOF

taskset -c 0 nginx -p "$W" -c "$W/origin.conf" -g 'daemon off;' & PIDS+=($!)
taskset -c "$PROXY_CPUS" nginx -p "$W" -c "$W/proxy.conf" -g 'daemon off;' & PIDS+=($!); NGX_MASTER=$!
taskset -c "$PROXY_CPUS" haproxy -db -f "$W/haproxy.cfg" & PIDS+=($!); HAP=$!
taskset -c "$PROXY_CPUS" "$BIN" run -c "$W/handoff.yaml" --threads "$WORKERS" 2>"$W/handoff.err" & PIDS+=($!); HANDOFF=$!
for p in 18280 18301 18302 18311 18312 18321 18322; do wait_port "$p"; done
sleep 1.5
NGX_WORKERS=$(ps -o pid= --ppid "$NGX_MASTER" | tr -d ' ' | tr '\n' ' ')

declare -A PORT=([handoff-ec]=18301 [handoff-rsa]=18302 [haproxy-ec]=18311 [haproxy-rsa]=18312 [nginx-ec]=18321 [nginx-rsa]=18322)
declare -A PID=([handoff]=$HANDOFF [haproxy]=$HAP [nginx]="$NGX_WORKERS")
HZ=$(getconf CLK_TCK)
RAW=$W/raw.tsv
: > "$RAW"
for rep in $(seq "$REPS"); do
    for cert in ec rsa; do
        for proxy in handoff nginx haproxy; do
            for mode in new reuse; do
                read -r u0 s0 < <(ticks "${PID[$proxy]}")
                out=$(taskset -c 0 openssl s_time -connect "127.0.0.1:${PORT[$proxy-$cert]}" -"$mode" \
                    -time "$DUR" -www / 2>&1 || true)
                read -r u1 s1 < <(ticks "${PID[$proxy]}")
                n=$(echo "$out" | awk '/connections in [0-9.]+ real/ {print $1; exit}')
                echo -e "$proxy\t$cert\t$mode\t$rep\t${n:-0}\t$((u1 - u0))\t$((s1 - s0))" >> "$RAW"
                echo "rep $rep $proxy $cert $mode: ${n:-0} handshakes" >&2
            done
        done
    done
done
python3 - "$RAW" "$HZ" "$DUR" <<'EOF'
import statistics, sys
raw, hz, dur = sys.argv[1], int(sys.argv[2]), float(sys.argv[3])
rows = {}
for line in open(raw):
    proxy, cert, mode, rep, n, u, s = line.split("\t")
    n = int(n)
    if n == 0:
        continue
    rows.setdefault((proxy, cert, mode), []).append((n / dur, 1e6 * int(u) / hz / n, 1e6 * int(s) / hz / n))
print("| proxy | certificate | handshake | per second | user µs | sys µs |")
print("|---|---|---|---:|---:|---:|")
for cert in ["ec", "rsa"]:
    for mode in ["new", "reuse"]:
        for proxy in ["handoff", "nginx", "haproxy"]:
            v = rows.get((proxy, cert, mode))
            if not v:
                continue
            r, u, s = [statistics.median(c) for c in zip(*v)]
            name = {"ec": "ECDSA P-256", "rsa": "RSA 2048"}[cert]
            kind = {"new": "full", "reuse": "resumed"}[mode]
            print(f"| {proxy} | {name} | {kind} | {r:,.0f} | {u:.0f} | {s:.0f} |")
EOF
