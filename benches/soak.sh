#!/usr/bin/env bash
# Soak (run by hand, not in CI): `handoff demo` under steady wrk load for MINUTES (default 10),
# with a full rollout of the pair every minute; samples the process's RSS and open fds every
# 10 s and prints them with the load's totals. Loopback only; everything stops by itself.
#
#   benches/soak.sh [MINUTES]
set -euo pipefail
MINUTES=${1:-10}
ROOT=$(cd "$(dirname "$0")/.." && pwd)
OUT=${SOAK_DIR:-/tmp/handoff-soak}
mkdir -p "$OUT"
command -v wrk >/dev/null || { apt-get update -qq && apt-get install -y -qq wrk; }
(cd "$ROOT" && cargo build --release)
BIN=$ROOT/target/release/handoff
PROXY=127.0.0.1:18480 ADMIN=http://127.0.0.1:18490

"$BIN" demo --listen "$PROXY" --admin "${ADMIN#http://}" > "$OUT/demo.log" 2>&1 &
PID=$!
trap 'kill "$PID" 2>/dev/null; wait "$PID" 2>/dev/null' EXIT
for _ in $(seq 100); do grep -q "Press Ctrl-C" "$OUT/demo.log" && break; sleep 0.1; done
grep -q "Press Ctrl-C" "$OUT/demo.log" || { echo "demo did not start" >&2; exit 1; }

sample() { echo "$(date +%s) $(awk '/^VmRSS/{print $2}' /proc/$PID/status) $(ls /proc/$PID/fd | wc -l)"; }
echo "time rss_kib fds" > "$OUT/samples.txt"
sample >> "$OUT/samples.txt"
wrk -t1 -c32 -d"$((MINUTES * 60))s" "http://$PROXY/" > "$OUT/wrk.txt" 2>&1 &
WRK=$!
for minute in $(seq 1 "$MINUTES"); do
    "$BIN" ctl --admin "$ADMIN" rollout start web --version "1.0.$minute" >> "$OUT/rollouts.txt"
    for _ in 1 2 3 4 5 6; do sleep 10; sample >> "$OUT/samples.txt"; done
done
wait "$WRK"

echo "== load"; grep -E "requests in|Non-2xx|Socket errors|Requests/sec" "$OUT/wrk.txt" || true
echo "== rollouts"
for id in $(seq 1 "$MINUTES"); do
    "$BIN" ctl --admin "$ADMIN" --json rollout status "web-$id" | python3 -c \
        'import json,sys; r=json.load(sys.stdin); print(r["id"], r["version"], r["state"])'
done
echo "== RSS (KiB) and open fds, first / max / last"
awk 'NR>1 { if (!f) {fr=$2; ff=$3; f=1}; if ($2>mr) mr=$2; if ($3>mf) mf=$3; lr=$2; lf=$3 }
     END { printf "rss %d / %d / %d\nfds %d / %d / %d\n", fr, mr, lr, ff, mf, lf }' "$OUT/samples.txt"
