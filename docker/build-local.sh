#!/usr/bin/env bash
# Builds the image `handoff:local` from a handoff binary built here (default:
# target/release/handoff, built if missing) on a FROM-scratch base: the binary (stripped),
# the libraries `ldd` lists for it, /etc/passwd and /etc/group with the user handoff
# (10001), and the compose demo's config. Needs a Docker engine, no registry.
#
#   docker/build-local.sh [BINARY]
set -euo pipefail
HERE=$(cd "$(dirname "$0")" && pwd)
ROOT=$(cd "$HERE/.." && pwd)
BIN=${1:-$ROOT/target/release/handoff}
if [ ! -x "$BIN" ]; then
    (cd "$ROOT" && cargo build --release)
fi
CTX=$(mktemp -d /tmp/handoff-image.XXXXXX)
trap 'rm -rf "$CTX"' EXIT
mkdir -p "$CTX/rootfs/usr/local/bin" "$CTX/rootfs/etc/handoff" "$CTX/rootfs/tmp"
cp "$BIN" "$CTX/rootfs/usr/local/bin/handoff"
strip "$CTX/rootfs/usr/local/bin/handoff" 2>/dev/null || true
# The dynamic loader and every library the binary links, at the paths it expects.
for lib in $(ldd "$BIN" | grep -o '/[^ ]*'); do
    mkdir -p "$CTX/rootfs$(dirname "$lib")"
    cp -L "$lib" "$CTX/rootfs$lib"
done
printf 'root:x:0:0::/:/nonexistent\nhandoff:x:10001:10001::/tmp:/nonexistent\n' > "$CTX/rootfs/etc/passwd"
printf 'root:x:0:\nhandoff:x:10001:\n' > "$CTX/rootfs/etc/group"
cp "$HERE/handoff.yaml" "$CTX/rootfs/etc/handoff/handoff.yaml"
chmod 1777 "$CTX/rootfs/tmp"
cp "$HERE/Dockerfile.local" "$CTX/Dockerfile"
docker build -q -t handoff:local "$CTX"
