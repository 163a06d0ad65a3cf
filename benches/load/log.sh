#!/usr/bin/env bash
# What an access log costs (run by hand, not in CI): handoff and NGINX, each with its access
# log off and on, in one interleaved run against one origin. NGINX logs JSON (escape=json)
# through a 64 KiB buffer flushed every second, its cheapest file log; handoff logs its own
# JSON line (more fields: node, version, attempts, timings). Request IDs are on in both
# handoffs, so the two differ by the log alone.
#
# One worker each: NGINX worker_processes 1, handoff --threads 1 (its log writer is a thread
# of its own: its CPU is counted with the process). Origin and wrk on cpu0, the proxies on
# cpu1. Prints per target the median requests/s and proxy CPU per request, user and system
# apart (from /proc/PID/stat), and what the log adds to each.
#
#   benches/load/log.sh                  # 5 reps of 5 s per target
#   benches/load/log.sh --reps 3 --dur 3 --conns 64
set -euo pipefail
HERE=$(cd "$(dirname "$0")" && pwd)
ROOT=$(cd "$HERE/../.." && pwd)
REPS=5 DUR=5 CONNS=64
while [ $# -gt 0 ]; do
    case "$1" in
        --reps) REPS=$2; shift 2;;
        --dur) DUR=$2; shift 2;;
        --conns) CONNS=$2; shift 2;;
        -h|--help) sed -n '2,15p' "$0"; exit 0;;
        *) echo "unknown arg $1" >&2; exit 2;;
    esac
done
# shellcheck source=lib.sh
. "$HERE/lib.sh"
need nginx wrk taskset -- nginx-light wrk util-linux
handoff_bin
workdir logbench

cat > "$W/origin.conf" <<EOF
$(nginx_head origin)
http { $(nginx_tmp) access_log off; keepalive_requests 1000000;
  server { listen 127.0.0.1:18180; location / { return 200 "ok\n"; } } }
EOF
cat > "$W/proxy.conf" <<EOF
$(nginx_head proxy)
http { $(nginx_tmp) keepalive_requests 1000000;
  log_format handoffish escape=json '{"time":"\$time_iso8601","request_id":"\$request_id",'
    '"client":"\$remote_addr:\$remote_port","proto":"\$server_protocol","method":"\$request_method",'
    '"host":"\$host","path":"\$request_uri","user_agent":"\$http_user_agent",'
    '"node_addr":"\$upstream_addr","status":\$status,"bytes_in":\$request_length,'
    '"bytes_out":\$bytes_sent,"duration":\$request_time,"connect":"\$upstream_connect_time",'
    '"header":"\$upstream_header_time"}';
  upstream origin { server 127.0.0.1:18180; keepalive 64; }
  server { listen 127.0.0.1:18191; access_log off;
    location / { proxy_pass http://origin; proxy_http_version 1.1; proxy_set_header Connection ""; } }
  server { listen 127.0.0.1:18192; access_log $W/nginx-access.log handoffish buffer=64k flush=1s;
    location / { proxy_pass http://origin; proxy_http_version 1.1; proxy_set_header Connection ""; } } }
EOF
handoff_conf() {  # NAME ADMIN_PORT PORT LOG_LINE
    cat > "$W/$1.yaml" <<EOF
admin: { listen: "127.0.0.1:$2" }
upgrade: { socket: "$W/$1.sock" }
request_id: { header: X-Request-Id }
$4
listeners:
  - { name: http, listen: "127.0.0.1:$3", protocol: http, max_connections: 20000, routes: [ { pool: origin } ] }
pools:
  - { name: origin, nodes: [ { name: o1, addr: "127.0.0.1:18180" } ], health: { interval: 1s, tcp: {} } }
EOF
}
handoff_conf handoff-off 19191 18193 ""
handoff_conf handoff-on 19192 18194 "access_log: { path: \"$W/handoff-access.log\", format: json }"

taskset -c 0 nginx -p "$W" -c "$W/origin.conf" -g 'daemon off;' & PIDS+=($!)
taskset -c 1 nginx -p "$W" -c "$W/proxy.conf" -g 'daemon off;' & PIDS+=($!); NGX_MASTER=$!
taskset -c 1 "$BIN" run -c "$W/handoff-off.yaml" --threads 1 2>"$W/handoff-off.err" & PIDS+=($!); H_OFF=$!
taskset -c 1 "$BIN" run -c "$W/handoff-on.yaml" --threads 1 2>"$W/handoff-on.err" & PIDS+=($!); H_ON=$!
for p in 18180 18191 18192 18193 18194; do wait_port "$p"; done
sleep 1.5  # the pools' first health checks
NGX_WORKER=$(ps -o pid= --ppid "$NGX_MASTER" | tr -d ' ' | head -1)

declare -A PORT=([nginx-off]=18191 [nginx-on]=18192 [handoff-off]=18193 [handoff-on]=18194)
declare -A PID=([nginx-off]=$NGX_WORKER [nginx-on]=$NGX_WORKER [handoff-off]=$H_OFF [handoff-on]=$H_ON)
TARGETS=(nginx-off nginx-on handoff-off handoff-on)
HZ=$(getconf CLK_TCK)
RAW=$W/raw.tsv
: > "$RAW"
for t in "${TARGETS[@]}"; do  # warm-up
    taskset -c 0 wrk -t1 -c"$CONNS" -d1s "http://127.0.0.1:${PORT[$t]}/" >/dev/null
done
for rep in $(seq "$REPS"); do
    for t in "${TARGETS[@]}"; do
        read -r u0 s0 < <(jiffies "${PID[$t]}")
        out=$(taskset -c 0 wrk -t1 -c"$CONNS" -d"${DUR}s" "http://127.0.0.1:${PORT[$t]}/")
        read -r u1 s1 < <(jiffies "${PID[$t]}")
        reqs=$(echo "$out" | awk '/requests in/ {print $1}')
        errs=$(echo "$out" | awk '/Non-2xx|Socket errors/ {print}' | tr '\n' ' ')
        echo -e "$t\t$rep\t$reqs\t$((u1 - u0))\t$((s1 - s0))\t$errs" >> "$RAW"
        echo "rep $rep $t: $reqs requests ${errs}" >&2
    done
done
python3 - "$RAW" "$HZ" "$DUR" "$W" <<'EOF'
import statistics, sys, os
raw, hz, dur, w = sys.argv[1], int(sys.argv[2]), float(sys.argv[3]), sys.argv[4]
rows = {}
for line in open(raw):
    t, rep, reqs, u, s = line.rstrip("\n").split("\t")[:5]
    reqs = int(reqs)
    rows.setdefault(t, []).append((reqs / dur, 1e6 * int(u) / hz / reqs, 1e6 * int(s) / hz / reqs))
med = {t: [statistics.median(c) for c in zip(*v)] for t, v in rows.items()}
print("| target | req/s | user µs/req | sys µs/req |")
print("|---|---:|---:|---:|")
for t in ["nginx-off", "nginx-on", "handoff-off", "handoff-on"]:
    r, u, s = med[t]
    print(f"| {t} | {r:,.0f} | {u:.2f} | {s:.2f} |")
add_n = med["nginx-on"][1] - med["nginx-off"][1]
add_h = med["handoff-on"][1] - med["handoff-off"][1]
print()
print(f"user CPU the log adds per request: NGINX {add_n:+.2f} µs, handoff {add_h:+.2f} µs")
print(f"handoff with its log / NGINX with its log, user CPU per request: {med['handoff-on'][1] / med['nginx-on'][1]:.2f}x")
for name in ["nginx-access.log", "handoff-access.log"]:
    path = os.path.join(w, name)
    if os.path.exists(path):
        with open(path, "rb") as f:
            n = sum(1 for _ in f)
        print(f"{name}: {n:,} lines, {os.path.getsize(path) / max(1, n):.0f} bytes a line")
EOF
