#!/usr/bin/env bash
# The edge comparison in one run (run by hand, not in CI): handoff against NGINX and HAProxy
# for HTTP/1.1 keep-alive plain and over TLS at 64 and 1,000 connections (http.sh), full
# and resumed TLS handshakes with ECDSA and RSA certificates (tls.sh), and HTTP/2 from
# clients at 1 and 32 streams per connection (h2.sh), each with one worker and then with
# two. Every script interleaves the proxies within itself; this one runs them back to back
# and writes every table, with the versions and the machine, to one Markdown file: the
# README's tables are copied from it.
#
#   benches/load/edge.sh                       # 5 reps of 4 s per case, about 25 minutes
#   benches/load/edge.sh --reps 3 --dur 3      # about 12 minutes
#   benches/load/edge.sh --out /tmp/edge.md --workers 1
set -euo pipefail
HERE=$(cd "$(dirname "$0")" && pwd)
ROOT=$(cd "$HERE/../.." && pwd)
REPS=5 DUR=4 WORKERS="1 2" OUT=""
while [ $# -gt 0 ]; do
    case "$1" in
        --reps) REPS=$2; shift 2;;
        --dur) DUR=$2; shift 2;;
        --workers) WORKERS=$2; shift 2;;
        --out) OUT=$2; shift 2;;
        -h|--help) sed -n '2,12p' "$0"; exit 0;;
        *) echo "unknown arg $1" >&2; exit 2;;
    esac
done
# shellcheck source=lib.sh
. "$HERE/lib.sh"
need nginx haproxy wrk h2load openssl taskset -- nginx-light haproxy wrk nghttp2-client openssl util-linux
handoff_bin
export HANDOFF_BIN=$BIN  # built once, measured by every script
OUT=${OUT:-$ROOT/target/edge-$(date -u +%Y%m%d-%H%M).md}

{
    echo "# handoff at the edge, $(date -u '+%Y-%m-%d %H:%M') UTC"
    echo
    echo "- handoff $(git -C "$ROOT" describe --always --dirty 2>/dev/null || echo '?'),"\
        "$(nginx -v 2>&1 | sed 's/.*: //'), HAProxy $(haproxy -v | awk 'NR==1 {print $3}'),"\
        "$(openssl version | awk '{print $1, $2}'), $(wrk -v 2>&1 | awk 'NR==1 {print $1, $2}'),"\
        "h2load $(h2load --version | awk '{print $2}')"
    echo "- $(nproc) cores: $(awk -F': ' '/model name/ {print $2; exit}' /proc/cpuinfo)"
    echo "- medians of $REPS runs of $DUR s per case; CPU per request or handshake from"\
        "/proc/PID/stat, user and system apart"
} > "$OUT"
section() {
    local title=$1; shift
    echo "== $title" >&2
    local table
    table=$("$@" --reps "$REPS" --dur "$DUR" | grep '^|')
    printf '\n## %s\n\n%s\n' "$title" "$table" >> "$OUT"
}
for w in $WORKERS; do
    what="one worker each, the proxies on cpu1, clients and origin on cpu0"
    [ "$w" = 2 ] && what="two workers each, the proxies on both cores"
    section "HTTP/1.1 keep-alive ($what)" "$HERE/http.sh" --workers "$w"
    section "TLS handshakes ($what)" "$HERE/tls.sh" --workers "$w"
    section "HTTP/2 from clients, h2c, 16 connections ($what)" "$HERE/h2.sh" --workers "$w"
done
cat "$OUT"
echo "written to $OUT" >&2
