#!/usr/bin/env bash
# The compose demo's rollout, for real: brings up handoff and two backend containers
# (docker/compose.yml, image handoff:local from docker/build-local.sh), keeps a load
# generator running against the balancer, and rolls the pool to 2.0.0 by replacing each
# backend container with one running version 2.0.0 once handoff has drained it. Prints the
# requests sent and failed; exit 0 only if the rollout succeeded with 0 failed requests.
#
#   docker/build-local.sh && docker/rollout.sh
#
# HANDOFF_DEMO_PORT / HANDOFF_DEMO_ADMIN pick the published ports (default 18080 / 19901);
# KEEP=1 leaves the containers up afterwards.
set -euo pipefail
HERE=$(cd "$(dirname "$0")" && pwd)
cd "$HERE"
export COMPOSE_PROJECT_NAME=${COMPOSE_PROJECT_NAME:-handoffdemo}
export HANDOFF_DEMO_PORT=${HANDOFF_DEMO_PORT:-18080}
export HANDOFF_DEMO_ADMIN=${HANDOFF_DEMO_ADMIN:-19901}
export A_VERSION=1.0.0 B_VERSION=1.0.0
WORK=$(mktemp -d /tmp/handoff-compose.XXXXXX)
LOAD_PID=""
cleanup() {
    [ -n "$LOAD_PID" ] && kill "$LOAD_PID" 2>/dev/null || true
    [ "${KEEP:-0}" = 1 ] || docker-compose down -v --remove-orphans >/dev/null 2>&1 || true
    rm -rf "$WORK"
}
trap cleanup EXIT
ctl() { docker-compose exec -T lb /usr/local/bin/handoff ctl --admin http://127.0.0.1:9901 "$@"; }
say() { echo "[$(date +%T)] $*"; }

docker-compose up -d >/dev/null
say "waiting for handoff and both backends"
for _ in $(seq 60); do
    if ctl wait web/a --state up --timeout 1s >/dev/null 2>&1 && ctl wait web/b --state up --timeout 1s >/dev/null 2>&1; then
        break
    fi
    sleep 0.5
done
ctl status

# Load: one request after another through the balancer, for at most 3 minutes.
(
    end=$((SECONDS + 180))
    while [ $SECONDS -lt $end ] && [ ! -e "$WORK/stop" ]; do
        code=$(curl -s -o /dev/null --max-time 5 -w '%{http_code}' "http://127.0.0.1:$HANDOFF_DEMO_PORT/" || true)
        echo "$code" >> "$WORK/codes"
    done
) &
LOAD_PID=$!

id=$(ctl --json rollout start web --version 2.0.0 --order a,b | sed -n 's/.*"id": *"\([^"]*\)".*/\1/p' | head -1)
say "rollout $id started"
for node in a b; do
    ctl wait "web/$node" --state drained --timeout 60s >/dev/null
    say "web/$node drained: replacing its container with version 2.0.0"
    if [ "$node" = a ]; then export A_VERSION=2.0.0; else export B_VERSION=2.0.0; fi
    docker-compose up -d --no-deps "$node" >/dev/null 2>&1
done
state=running
for _ in $(seq 240); do
    state=$(ctl --json rollout status "$id" | sed -n 's/.*"state": *"\([^"]*\)".*/\1/p' | head -1)
    [ "$state" != running ] && break
    sleep 0.5
done
touch "$WORK/stop"
wait "$LOAD_PID" 2>/dev/null || true
LOAD_PID=""
total=$(wc -l < "$WORK/codes")
failed=$(grep -vc '^200$' "$WORK/codes" || true)
ctl status
echo "rollout $id $state: replaced both backend containers under load: $total requests, $failed failed"
[ "$state" = succeeded ] && [ "$failed" -eq 0 ]
