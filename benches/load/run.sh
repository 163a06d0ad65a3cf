#!/usr/bin/env bash
# Load benchmark (run by hand, not in CI): handoff against HAProxy and NGINX on one machine,
# loopback only, one worker thread each, interleaved runs through each proxy and direct to
# the origin (and Pingora, where its peer in benches/load/pingora builds). Prints requests/s,
# p50/p99 and proxy CPU per request (user and system apart,
# from /proc) at 64 and at 1,000 keep-alive connections, L4 bulk throughput (iperf3), redis
# through L4, and idle memory per proxied connection.
#
#   benches/load/run.sh            # full run, about 10 minutes
#   benches/load/run.sh --reps 1 --dur 5 --phases http   # a quick look
#
# peers.sh, conf/ and pb.py are the reference peer harness, kept here so a fresh checkout has
# everything.
set -euo pipefail
HERE=$(cd "$(dirname "$0")" && pwd)
ROOT=$(cd "$HERE/../.." && pwd)

need=()
for cmd in haproxy nginx wrk iperf3 redis-server redis-benchmark taskset ss cmake; do
    command -v "$cmd" >/dev/null 2>&1 || need+=("$cmd")
done
if [ ${#need[@]} -gt 0 ] || [ ! -e /usr/lib/nginx/modules/ngx_stream_module.so ]; then
    echo "installing the peers and load tools (missing: ${need[*]:-nginx stream module})" >&2
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq haproxy nginx libnginx-mod-stream wrk \
        iperf3 redis-server redis-tools util-linux iproute2 python3 cmake pkg-config
fi
# The Debian services would hold the ports; the harness starts its own instances.
for svc in nginx haproxy redis-server; do
    systemctl stop "$svc" >/dev/null 2>&1 || service "$svc" stop >/dev/null 2>&1 || true
done

# wrk -c1000 and the idle-memory test hold thousands of sockets in this shell's children.
ulimit -n "$(ulimit -Hn)" 2>/dev/null || true
(cd "$ROOT" && cargo build --release)
# The Pingora peer, where it builds (its own workspace; a few minutes the first time).
pingora=()
if (cd "$HERE/pingora" && cargo build --release); then
    pingora=(--pingora "$HERE/pingora/target/release/pingora-peer")
else
    echo "the Pingora peer did not build: comparing without it" >&2
fi
exec "$HERE/peers.sh" "${pingora[@]}" \
    --ours 127.0.0.1:9091 --target ours-l4=127.0.0.1:9092 \
    --ours-iperf 127.0.0.1:9093 --ours-redis 127.0.0.1:9094 \
    --ours-cmd "$ROOT/target/release/handoff run -c $HERE/handoff.yaml --threads 1" \
    "$@"
