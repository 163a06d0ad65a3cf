# Shared by the one-shot comparisons (log.sh, tls.sh, h2.sh): sourced, not run.
#
#   need CMD... -- PACKAGE...   installs the Debian packages when a command is missing
#   workdir NAME                a temporary directory in $W, removed at exit with every
#                               process started into $PIDS (stopped by pid)
#   wait_port PORT              until something listens on 127.0.0.1:PORT (bounded)
#   jiffies PID                 "user system" CPU ticks of a process, from /proc
#   ticks "PID..."              the same, summed over processes (NGINX: its workers)
#   proxy_cpus WORKERS          PROXY_CPUS for 1 worker (cpu1, the clients on cpu0) or 2
#                               (both cores)
#   nginx_head NAME             the top of an NGINX config: one worker, files in $W
#   nginx_tmp                   NGINX's temporary paths, in $W

need() {
    local cmds=() pkgs=() seen=0 c
    for c in "$@"; do
        if [ "$c" = -- ]; then seen=1; elif [ $seen = 0 ]; then cmds+=("$c"); else pkgs+=("$c"); fi
    done
    for c in "${cmds[@]}"; do
        if ! command -v "$c" >/dev/null 2>&1; then
            apt-get update -qq
            DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${pkgs[@]}"
            break
        fi
    done
    # The Debian services would hold ports; the comparisons start their own instances.
    for c in nginx haproxy; do
        systemctl stop "$c" >/dev/null 2>&1 || service "$c" stop >/dev/null 2>&1 || true
    done
}

PIDS=()
workdir() {
    W=$(mktemp -d "/tmp/handoff-$1.XXXXXX")
    mkdir -p "$W/tmp"
    trap cleanup EXIT
    trap 'exit 130' INT TERM
}
cleanup() {
    local p
    for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null || true; done
    for p in "${PIDS[@]}"; do wait "$p" 2>/dev/null || true; done
    rm -rf "$W"
}

wait_port() {
    for _ in $(seq 100); do
        (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null && return 0
        sleep 0.05
    done
    echo "port $1 did not open" >&2
    exit 1
}

jiffies() { local s; s=$(cat "/proc/$1/stat"); s=${s##*) }; set -- $s; echo "${12} ${13}"; }
ticks() { local u=0 s=0 a b p; for p in $1; do read -r a b < <(jiffies "$p"); u=$((u + a)); s=$((s + b)); done; echo "$u $s"; }

nginx_head() {
    echo "pid $W/$1.pid; error_log $W/$1.err; worker_processes 1; events { worker_connections 4096; }"
}
nginx_tmp() {
    echo "client_body_temp_path $W/tmp; proxy_temp_path $W/tmp; fastcgi_temp_path $W/tmp; uwsgi_temp_path $W/tmp; scgi_temp_path $W/tmp;"
}

# BIN: the handoff binary to measure. HANDOFF_BIN=PATH measures that build instead of
# building this checkout (to compare two builds: one run with each).
handoff_bin() {
    if [ -n "${HANDOFF_BIN:-}" ]; then
        BIN=$HANDOFF_BIN
    else
        (cd "$ROOT" && cargo build --release)
        BIN=$ROOT/target/release/handoff
    fi
}

proxy_cpus() {
    case "$1" in
        1) PROXY_CPUS=1;;
        2) PROXY_CPUS=0,1;;
        *) echo "--workers is 1 or 2" >&2; exit 2;;
    esac
}
