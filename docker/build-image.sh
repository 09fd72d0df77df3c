#!/usr/bin/env bash
# Builds the raftlite image (or the example counter app's) from the host-built binary, without
# pulling any image.
#
#   docker/build-image.sh [TAG]                   (default raftlite:dev)
#   APP=counter docker/build-image.sh [TAG]       (default raftlite-counter:dev)
#
# Environment:
#   APP         raftlite (default: docker/Dockerfile) or counter (examples/counter,
#               docker/counter.Dockerfile)
#   PROFILE     cargo profile of the binary: release (default) or dev
#   BASE_IMAGE  base image (default scratch). With scratch, the shared libraries `ldd` lists
#               are copied in; with another base, only the binary (the base supplies glibc).
#   SKIP_BUILD  1: use the binary already in the target directory
#   BINARY      use this binary (implies SKIP_BUILD)
#   STRIP       1: strip the debug info from the image's copy of the binary (a dev build
#               shrinks from ~300 MB to ~40 MB)
#   CARGO_TARGET_DIR  honoured like cargo does
set -euo pipefail
cd "$(dirname "$0")/.."

case "${APP:-raftlite}" in
    raftlite) package=raftlite bin=raftlite dockerfile=docker/Dockerfile ;;
    counter) package=raftlite-counter bin=raftlite-counter dockerfile=docker/counter.Dockerfile ;;
    *) echo "error: APP must be raftlite or counter, not ${APP}" >&2; exit 1 ;;
esac
tag=${1:-$package:dev}
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
        cargo build --locked --profile "$profile" -p "$package" --bin "$bin"
    fi
    binary="$target_dir/$out/$bin"
fi
[ -x "$binary" ] || { echo "error: no binary at $binary (build it, or unset SKIP_BUILD)" >&2; exit 1; }

context=$(mktemp -d)
trap 'rm -rf "$context"' EXIT
rootfs="$context/rootfs"
mkdir -p "$rootfs/usr/local/bin" "$rootfs/etc" "$rootfs/tmp" "$context/data"
chmod 1777 "$rootfs/tmp"
cp "$binary" "$rootfs/usr/local/bin/$bin"
if [ "${STRIP:-0}" = 1 ]; then
    strip --strip-debug "$rootfs/usr/local/bin/$bin"
fi

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
    # The host's CA bundle: the S3 client (rustls with the platform's roots) refuses to start
    # without one, even for an http:// endpoint.
    for bundle in /etc/ssl/certs/ca-certificates.crt /etc/pki/tls/certs/ca-bundle.crt; do
        if [ -f "$bundle" ]; then
            mkdir -p "$rootfs$(dirname "$bundle")"
            cp -L "$bundle" "$rootfs$bundle"
            break
        fi
    done
fi

cp "$dockerfile" "$context/Dockerfile"
docker build --build-arg "BASE_IMAGE=$base" -t "$tag" "$context"
echo "built $tag (base $base, profile $profile)"
