#!/usr/bin/env bash
# Builds the raftlite image from the host-built binary, without pulling any image.
#
#   docker/build-image.sh [TAG]          (default raftlite:dev)
#
# Environment:
#   PROFILE     cargo profile of the binary: release (default) or dev
#   BASE_IMAGE  base image (default scratch). With scratch, the shared libraries `ldd` lists
#               are copied in; with another base, only the binary (the base supplies glibc).
#   SKIP_BUILD  1: use the binary already in the target directory
#   BINARY      use this binary (implies SKIP_BUILD)
#   CARGO_TARGET_DIR  honoured like cargo does
set -euo pipefail
cd "$(dirname "$0")/.."

tag=${1:-raftlite:dev}
profile=${PROFILE:-release}
base=${BASE_IMAGE:-scratch}
target_dir=${CARGO_TARGET_DIR:-target}
case "$profile" in
    dev | debug) profile=dev; out=debug ;;
    *) out=$profile ;;
esac

if [ -n "${BINARY:-}" ]; then
    binary=$BINARY
else
    if [ "${SKIP_BUILD:-0}" != 1 ]; then
        cargo build --locked --profile "$profile" -p raftlite --bin raftlite
    fi
    binary="$target_dir/$out/raftlite"
fi
[ -x "$binary" ] || { echo "error: no binary at $binary (build it, or unset SKIP_BUILD)" >&2; exit 1; }

context=$(mktemp -d)
trap 'rm -rf "$context"' EXIT
rootfs="$context/rootfs"
mkdir -p "$rootfs/usr/local/bin" "$rootfs/etc" "$rootfs/tmp" "$context/data"
chmod 1777 "$rootfs/tmp"
cp "$binary" "$rootfs/usr/local/bin/raftlite"

if [ "$base" = scratch ]; then
    # Exactly the libraries the dynamic loader will look for, at the same paths.
    ldd "$binary" | awk '$2 == "=>" && $3 ~ /^\// {print $3} $1 ~ /^\// {print $1}' | while read -r lib; do
        mkdir -p "$rootfs$(dirname "$lib")"
        cp -L "$lib" "$rootfs$lib"
    done
    printf 'root:x:0:0:root:/:/sbin/nologin\nraftlite:x:10001:10001:raftlite:/var/lib/raftlite:/sbin/nologin\n' >"$rootfs/etc/passwd"
    printf 'root:x:0:\nraftlite:x:10001:\n' >"$rootfs/etc/group"
    # glibc's resolver: /etc/hosts first, then DNS (Kubernetes and Docker provide resolv.conf).
    printf 'hosts: files dns\n' >"$rootfs/etc/nsswitch.conf"
fi

cp docker/Dockerfile "$context/Dockerfile"
docker build --build-arg "BASE_IMAGE=$base" -t "$tag" "$context"
echo "built $tag (base $base, profile $profile)"
