#!/usr/bin/env bash
# A/B benchmark of two handoff binaries (run by hand, not in CI): the same HTTP keep-alive
# load through each in turn, interleaved, so machine drift hits both alike. One worker
# thread each, pinned to cpu1; the NGINX origin and wrk on cpu0. Prints requests/s and the
# proxy's user and system CPU per request (from /proc/PID/stat), median of the repetitions.
#
#   benches/load/ab.sh OLD_BINARY NEW_BINARY [--reps 5] [--dur 6] [--conns 64,1000]
#
# To compare a change with its parent: build the parent, copy target/release/handoff away,
# build the change, and pass both.
set -euo pipefail
HERE=$(cd "$(dirname "$0")" && pwd)
[ $# -ge 2 ] || { sed -n '2,10p' "$0"; exit 2; }
A=$(realpath "$1") B=$(realpath "$2"); shift 2
REPS=5 DUR=6 CONNS=64,1000
while [ $# -gt 0 ]; do
  case "$1" in
    --reps) REPS=$2; shift 2;;
    --dur) DUR=$2; shift 2;;
    --conns) CONNS=$2; shift 2;;
    *) echo "unknown arg $1" >&2; exit 2;;
  esac
done
for cmd in nginx wrk taskset ss python3; do
  command -v "$cmd" >/dev/null || { echo "needs $cmd (benches/load/run.sh installs the tools)" >&2; exit 1; }
done
ulimit -n "$(ulimit -Hn)" 2>/dev/null || true
RUN=$(mktemp -d /tmp/handoff-ab.XXXXXX)
mkdir -p "$RUN"/{www,origin-tmp}
head -c 1024 /dev/zero | tr '\0' 'x' > "$RUN/www/1k.bin"
sed "s#@RUN@#$RUN#g" "$HERE/conf/origin-nginx.conf.in" > "$RUN/origin-nginx.conf"
PIDS=()
cleanup() { local p; for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null || true; wait "$p" 2>/dev/null || true; done; }
trap cleanup EXIT
port_busy() { ss -Hltn "sport = :$1" | grep -q .; }
wait_port() { for _ in $(seq 100); do port_busy "$1" && return 0; sleep 0.05; done; echo "port $1 did not open" >&2; exit 1; }
for p in 18080 9091 9092 9093 9094 9990; do
  port_busy "$p" && { echo "port $p already in use" >&2; exit 1; }
done
taskset -c 0 nginx -p "$RUN" -c "$RUN/origin-nginx.conf" -g 'daemon off;' & PIDS+=($!)
wait_port 18080
# "user system" jiffies of one pid.
uticks() { local s; s=$(cat "/proc/$1/stat"); s=${s##*) }; set -- $s; echo "${12} ${13}"; }
HZ=$(getconf CLK_TCK)
echo -e "bin\tconns\trep\trps\tuser_us\tsys_us" > "$RUN/raw.tsv"
for rep in $(seq "$REPS"); do
  for conns in ${CONNS//,/ }; do
    for side in A B; do
      bin=$A; [ "$side" = B ] && bin=$B
      taskset -c 1 "$bin" run -c "$HERE/handoff.yaml" --threads 1 > "$RUN/$side.log" 2>&1 & pid=$!
      wait_port 9091; sleep 0.5
      taskset -c 0 wrk -t1 -c"$conns" -d1s http://127.0.0.1:9091/1k.bin > /dev/null  # warm
      read -r u0 k0 < <(uticks "$pid")
      out=$(taskset -c 0 wrk -t1 -c"$conns" -d"${DUR}s" http://127.0.0.1:9091/1k.bin)
      read -r u1 k1 < <(uticks "$pid")
      kill "$pid"; wait "$pid" 2>/dev/null || true
      for _ in $(seq 100); do port_busy 9091 || break; sleep 0.05; done
      reqs=$(echo "$out" | awk '/requests in/{print $1}')
      rps=$(echo "$out" | awk '/Requests\/sec/{print $2}')
      python3 -c "import sys; r=$reqs; print('\t'.join(['$side','$conns','$rep','%.0f' % $rps, '%.2f' % (($u1-$u0)*1e6/$HZ/r), '%.2f' % (($k1-$k0)*1e6/$HZ/r)]))" >> "$RUN/raw.tsv"
      tail -1 "$RUN/raw.tsv" >&2
    done
  done
done
python3 - "$RUN/raw.tsv" "$A" "$B" <<'EOF'
import csv, statistics, sys
rows = list(csv.DictReader(open(sys.argv[1]), delimiter="\t"))
print(f"A = {sys.argv[2]}\nB = {sys.argv[3]}\n")
print("| conns | binary | req/s | user µs/req | system µs/req |")
print("|---|---|---|---|---|")
for conns in sorted({r["conns"] for r in rows}, key=int):
    med = {}
    for side in "AB":
        rs = [r for r in rows if r["conns"] == conns and r["bin"] == side]
        med[side] = [statistics.median(float(r[k]) for r in rs) for k in ("rps", "user_us", "sys_us")]
        print(f"| {conns} | {side} | {med[side][0]:,.0f} | {med[side][1]:.2f} | {med[side][2]:.2f} |")
    print(f"| {conns} | B/A | {med['B'][0]/med['A'][0]:.3f} | {med['B'][1]/med['A'][1]:.3f} | {med['B'][2]/med['A'][2]:.3f} |")
EOF
echo "raw: $RUN/raw.tsv" >&2
