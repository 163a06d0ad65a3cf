#!/usr/bin/env bash
# Abusive clients against handoff, NGINX and HAProxy (run by hand, not in CI): one origin,
# one worker each, the proxy alone on cpu1, loopback only, every run bounded in time.
# For each attack and proxy, in turn: a normal client (wrk, 16 keep-alive connections, the
# median of 3 runs of --dur seconds) measures its baseline, the attack starts, the normal
# client measures again. Reported:
# the normal client's req/s under attack as % of its baseline, its p99, the proxy's RSS
# per attacking connection, the upstream connections the proxy holds, and what the proxy
# did to the attackers (closed / opened, and for silent ones how long the longest stayed).
#
#   benches/load/attack.sh                       # all four attacks, about 8 minutes
#   benches/load/attack.sh --attacks stalled --proxies handoff
#
#   silent     10,000 connections that send nothing
#   reopen     the same, each reopened as soon as the proxy closes it (not in the default set)
#   slowloris  2,000 request heads, one header line every 2 s
#   slowpost   2,000 POST bodies, one byte every 5 s
#   stalled    200 GETs of a 16 MiB response, never read
set -euo pipefail
HERE=$(cd "$(dirname "$0")" && pwd)
ROOT=$(cd "$HERE/../.." && pwd)
ATTACKS=silent,slowloris,slowpost,stalled DUR=2 PROXIES=handoff,nginx,haproxy
while [ $# -gt 0 ]; do
    case "$1" in
        --attacks) ATTACKS=$2; shift 2;;
        --dur) DUR=$2; shift 2;;
        --proxies) PROXIES=$2; shift 2;;
        -h|--help) sed -n '2,16p' "$0"; exit 0;;
        *) echo "unknown arg $1" >&2; exit 2;;
    esac
done

need=()
for cmd in haproxy nginx wrk taskset ss python3; do command -v "$cmd" >/dev/null 2>&1 || need+=("$cmd"); done
# The NGINX proxy config loads the stream module, which nginx-light lacks.
if [ ${#need[@]} -gt 0 ] || [ ! -e /usr/lib/nginx/modules/ngx_stream_module.so ]; then
    echo "installing ${need[*]} libnginx-mod-stream" >&2
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq haproxy nginx libnginx-mod-stream wrk \
        util-linux iproute2 python3
fi
for svc in nginx haproxy; do systemctl stop "$svc" >/dev/null 2>&1 || service "$svc" stop >/dev/null 2>&1 || true; done
ulimit -n "$(ulimit -Hn)" 2>/dev/null || true
(cd "$ROOT" && cargo build --release)

RUN=${BENCH_DIR:-/tmp/attack-bench}
OUT=$RUN/results-$(date +%Y%m%d-%H%M%S)
mkdir -p "$RUN"/{origin-tmp,proxy-tmp,www} "$OUT"
head -c $((16 << 20)) /dev/zero > "$RUN/www/16m.bin"
render() { sed "s#@RUN@#$RUN#g" "$HERE/conf/$1.in" > "$RUN/$1"; }
render attack-origin.conf; render proxy-nginx.conf; render haproxy.cfg

STARTED=()
stop_pid() {  # only a child of this shell, by pid
    local p=$1
    [ "$(ps -o ppid= -p "$p" 2>/dev/null | tr -d ' ')" = "$$" ] || return 0
    kill -TERM "$p" 2>/dev/null
    for _ in $(seq 50); do kill -0 "$p" 2>/dev/null || { wait "$p" 2>/dev/null || true; return 0; }; sleep 0.1; done
    kill -KILL "$p" 2>/dev/null; wait "$p" 2>/dev/null || true
}
cleanup() { local p; for p in "${STARTED[@]}"; do stop_pid "$p"; done; }
trap cleanup EXIT
trap 'exit 130' INT TERM
wait_port() { for _ in $(seq 200); do ss -Hltn "sport = :$1" | grep -q . && return 0; sleep 0.05; done; echo "port $1 did not open" >&2; exit 1; }
for p in 18080 18081 18091 9091 9990; do
    ss -Hltn "sport = :$p" | grep -q . && { echo "port $p is in use" >&2; exit 1; }
done

taskset -c 0 nginx -p "$RUN" -c "$RUN/attack-origin.conf" -g 'daemon off;' & STARTED+=($!); wait_port 18080

rss_kib() { awk '/^VmRSS/{print $2}' "/proc/$1/status" 2>/dev/null || echo 0; }
# established connections from the proxy process to the origin
upstream() { ss -Htnp state established "( dport = :18080 )" 2>/dev/null | grep -c "pid=$1," || true; }

PROXY_PID="" PORT=""
start_proxy() {
    case "$1" in
        handoff) taskset -c 1 "$ROOT/target/release/handoff" run -c "$HERE/attack.yaml" --threads 1 > "$OUT/handoff.log" 2>&1 &
                 PROXY_PID=$!; PORT=9091;;
        nginx) taskset -c 1 nginx -p "$RUN" -c "$RUN/proxy-nginx.conf" -g 'daemon off;' 2>/dev/null &
               PROXY_PID=$!; PORT=18091;;
        haproxy) taskset -c 1 haproxy -db -f "$RUN/haproxy.cfg" > /dev/null 2>&1 & PROXY_PID=$!; PORT=18081;;
    esac
    STARTED+=($PROXY_PID); wait_port "$PORT"; sleep 0.5
}
# nginx serves from its worker: the master's child
worker_pid() { case "$1" in nginx) ps -o pid= --ppid "$PROXY_PID" | tr -d ' ' | head -1;; *) echo "$PROXY_PID";; esac; }

# wrk OUTFILE: the normal client, 3 runs of DUR seconds; prints the median "req/s p99_ms"
# (the attack's window before header_read closes silent connections holds all three)
normal() {
    : > "$1"
    for _ in 1 2 3; do
        taskset -c 0 wrk -t1 -c16 -d"${DUR}s" --latency "http://127.0.0.1:$PORT/" >> "$1" 2>&1 || true
    done
    python3 - "$1" <<'EOF'
import re, statistics, sys
t = open(sys.argv[1]).read()
rps = [float(x) for x in re.findall(r"Requests/sec:\s+([\d.]+)", t)] or [0.0]
unit = {"us": 0.001, "ms": 1, "s": 1000}
p99 = [float(v) * unit[u] for v, u in re.findall(r"99%\s+([\d.]+)(us|ms|s)\b", t)] or [float("nan")]
print(f"{statistics.median(rps):.0f} {statistics.median(p99):.2f}")
EOF
}

declare -A N=([silent]=10000 [reopen]=10000 [slowloris]=2000 [slowpost]=2000 [stalled]=200)
echo -e "attack\tproxy\tbaseline_rps\tattack_rps\tpct\tp99_base_ms\tp99_attack_ms\trss_before_kib\trss_attack_kib\trss_per_conn_kib\trss_after_kib\tupstream_held\tclosed/opened\tlongest_open_s" > "$OUT/attack.tsv"
IFS=, read -r -a attacks <<< "$ATTACKS"
IFS=, read -r -a proxies <<< "$PROXIES"
for attack in "${attacks[@]}"; do
    for proxy in "${proxies[@]}"; do
        start_proxy "$proxy"
        wp=$(worker_pid "$proxy")
        read -r base_rps base_p99 < <(normal "$OUT/$attack-$proxy-base.txt")
        rss0=$(rss_kib "$wp")
        # The attack lasts the normal client's runs plus time to open and a header_read cycle.
        secs=$((3 * DUR + 25))
        taskset -c 0 python3 "$HERE/attack.py" "$attack" 127.0.0.1 "$PORT" "${N[$attack]}" "$secs" /16m > "$OUT/$attack-$proxy-attack.txt" 2>&1 &
        apid=$!
        for _ in $(seq 300); do grep -q ready "$OUT/$attack-$proxy-attack.txt" && break; sleep 0.1; done
        sleep 0.5
        read -r att_rps att_p99 < <(normal "$OUT/$attack-$proxy-under.txt")
        rss1=$(rss_kib "$wp"); held=$(upstream "$wp")
        wait "$apid" || true
        sleep 5
        rss2=$(rss_kib "$wp")
        read -r closed longest < <(python3 -c "
import json,sys
for l in open('$OUT/$attack-$proxy-attack.txt'):
    if l.startswith('{'): d=json.loads(l); print(f\"{d['closed_by_server']}/{d['opened']} {d['longest_open_s']}\"); break
else: print('? ?')")
        pct=$(python3 -c "print(round(100*$att_rps/max(1,$base_rps)))")
        per=$(python3 -c "print(round(($rss1-$rss0)/${N[$attack]},1))")
        echo -e "$attack\t$proxy\t$base_rps\t$att_rps\t$pct\t$base_p99\t$att_p99\t$rss0\t$rss1\t$per\t$rss2\t$held\t$closed\t$longest" | tee -a "$OUT/attack.tsv"
        stop_pid "$PROXY_PID"
    done
done
echo
echo "results: $OUT/attack.tsv"
column -t -s$'\t' "$OUT/attack.tsv"
