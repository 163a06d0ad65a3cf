#!/usr/bin/env bash
# The compose demo's replace rollout: brings up handoff and the backend containers
# (docker/compose.yml, image handoff:local from docker/build-local.sh), keeps a load
# generator running against pool api (/api), and rolls it to 2.0.0 by replacement: for each
# node, when the rollout asks for its replacement, a new container running 2.0.0 starts at a
# new address and is added with "replaces"; once handoff has drained and removed the old
# node, its container is removed. Prints the requests sent and failed; exit 0 only if the
# rollout succeeded with 0 failed requests.
#
#   docker/build-local.sh && docker/replace.sh
#
# HANDOFF_DEMO_PORT / HANDOFF_DEMO_ADMIN pick the published ports (default 18080 / 19901);
# KEEP=1 leaves the containers up afterwards.
set -euo pipefail
HERE=$(cd "$(dirname "$0")" && pwd)
cd "$HERE"
export COMPOSE_PROJECT_NAME=${COMPOSE_PROJECT_NAME:-handoffdemo}
export HANDOFF_DEMO_PORT=${HANDOFF_DEMO_PORT:-18080}
export HANDOFF_DEMO_ADMIN=${HANDOFF_DEMO_ADMIN:-19901}
WORK=$(mktemp -d /tmp/handoff-compose.XXXXXX)
LOAD_PID=""
NEW=()
cleanup() {
    [ -n "$LOAD_PID" ] && kill "$LOAD_PID" 2>/dev/null || true
    if [ "${KEEP:-0}" != 1 ]; then
        for c in "${NEW[@]}"; do docker rm -f "$c" >/dev/null 2>&1 || true; done
        docker-compose down -v --remove-orphans >/dev/null 2>&1 || true
    fi
    rm -rf "$WORK"
}
trap cleanup EXIT
ctl() { docker-compose exec -T lb /usr/local/bin/handoff ctl --admin http://127.0.0.1:9901 "$@"; }
field() { sed -n "s/.*\"$1\": *\"\([^\"]*\)\".*/\1/p" | head -1; }
say() { echo "[$(date +%T)] $*"; }

docker-compose up -d >/dev/null
say "waiting for handoff and both api backends"
for _ in $(seq 60); do
    if ctl wait api/c --state up --timeout 1s >/dev/null 2>&1 && ctl wait api/d --state up --timeout 1s >/dev/null 2>&1; then
        break
    fi
    sleep 0.5
done
ctl status

(
    end=$((SECONDS + 180))
    while [ $SECONDS -lt $end ] && [ ! -e "$WORK/stop" ]; do
        code=$(curl -s -o /dev/null --max-time 5 -w '%{http_code}' "http://127.0.0.1:$HANDOFF_DEMO_PORT/api/" || true)
        echo "$code" >> "$WORK/codes"
    done
) &
LOAD_PID=$!

id=$(ctl --json rollout start api --version 2.0.0 --order c,d | field id)
say "rollout $id started"
network="${COMPOSE_PROJECT_NAME}_demo"
ip=21
for node in c d; do
    # The rollout asks for this node's replacement.
    for _ in $(seq 120); do
        r=$(ctl --json rollout status "$id")
        [ "$(echo "$r" | field phase)" = provisioning ] && [ "$(echo "$r" | field current_node)" = "$node" ] && break
        sleep 0.5
    done
    name="${COMPOSE_PROJECT_NAME}_${node}2"
    docker run -d --name "$name" --network "$network" --ip "172.29.0.$ip" handoff:local \
        demo-backend --name "$node-2" --version 2.0.0 >/dev/null
    NEW+=("$name")
    ctl node add "api/$node-2" "172.29.0.$ip:8000" --replaces "$node" >/dev/null
    say "api/$node-2 (172.29.0.$ip, a new container) replaces api/$node"
    # Once the old node is retired (removed from the pool), its container goes.
    for _ in $(seq 240); do
        r=$(ctl --json rollout status "$id")
        [ "$(echo "$r" | field current_node)" != "$node" ] || [ "$(echo "$r" | field state)" != running ] && break
        sleep 0.5
    done
    docker-compose rm -sf "$node" >/dev/null 2>&1
    say "api/$node retired: its container removed"
    ip=$((ip + 1))
done
state=running
for _ in $(seq 240); do
    state=$(ctl --json rollout status "$id" | field state)
    [ "$state" != running ] && break
    sleep 0.5
done
touch "$WORK/stop"
wait "$LOAD_PID" 2>/dev/null || true
LOAD_PID=""
total=$(wc -l < "$WORK/codes")
failed=$(grep -vc '^200$' "$WORK/codes" || true)
ctl status
echo "rollout $id $state: replaced both api backend containers with new ones at new addresses under load: $total requests, $failed failed"
[ "$state" = succeeded ] && [ "$failed" -eq 0 ]
