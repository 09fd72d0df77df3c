#!/usr/bin/env bash
# Writes the certificates and tokens of the compose mirror (docker/compose.yaml): what the Helm
# chart generates into its Secrets, as files, with openssl.
#
#   docker/gen-secrets.sh DIR        (compose reads docker/secrets, or $RAFTLITE_SECRETS)
#
# DIR/tls/ca.crt                 the CA            -> /etc/raftlite/tls in every pod
# DIR/tls/raftlite-<i>.crt/.key  pod i (0..PODS-1) -> /etc/raftlite/tls
# DIR/auth/auth.yaml             the tokens' SHA-256 hashes, roles admin / write
#                                                  -> /etc/raftlite/auth/auth.yaml
# DIR/tokens/admin               role admin        -> /etc/raftlite/tokens/admin (CLI in the pods)
# DIR/tokens/app                 role write, for applications (the counter app)
# DIR/ca.key                     the CA's key (not mounted)
#
# Pod i's certificate has the chart's SANs for release "raftlite" in namespace "default":
# raftlite-node-<i+1>, raftlite-<i>.raftlite-headless[.default[.svc[.cluster.local]]],
# raftlite[.default[.svc[.cluster.local]]], localhost and IP 127.0.0.1 (the ports compose
# publishes on the host's loopback).
#
# Environment (both optional; compose needs neither):
#   PODS            how many pod certificates (default 4: the three pods and the scale-up one)
#   EXTRA_SANS_<i>  more SANs for pod i, in openssl's syntax ("IP:10.128.5.10,DNS:foo"): for a
#                   harness that reaches pod i at another address (cluster-tests' Docker
#                   scenarios connect from the host to the pods' IPs)
#
# Existing files are kept, as the chart keeps its Secrets on upgrade: a second run only adds
# what is missing (auth.yaml is rewritten from the tokens). Delete DIR to start over.
# For local development only: the files are readable by every user (the containers run as uid
# 10001, which does not own them).
set -euo pipefail

[ $# -eq 1 ] || { echo "usage: $0 DIR" >&2; exit 2; }
command -v openssl >/dev/null || { echo "error: openssl is needed" >&2; exit 1; }
dir=$1
pods=${PODS:-4} release=raftlite namespace=default domain=cluster.local days=3650
umask 022
mkdir -p "$dir/tls" "$dir/auth" "$dir/tokens"
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT

if [ ! -s "$dir/ca.key" ] || [ ! -s "$dir/tls/ca.crt" ]; then
    # A new CA: the certificates it did not sign go too.
    rm -f "$dir"/tls/"$release"-*.crt "$dir"/tls/"$release"-*.key
    (umask 077 && openssl genrsa -out "$dir/ca.key" 2048 2>/dev/null)
    openssl req -x509 -new -key "$dir/ca.key" -out "$dir/tls/ca.crt" -days "$days" -sha256 \
        -subj "/CN=$release-ca" \
        -addext "basicConstraints=critical,CA:TRUE" \
        -addext "keyUsage=critical,keyCertSign,cRLSign,digitalSignature"
    echo "made $dir/tls/ca.crt"
fi

for i in $(seq 0 $((pods - 1))); do
    pod=$release-$i
    [ -s "$dir/tls/$pod.crt" ] && [ -s "$dir/tls/$pod.key" ] && continue
    headless=$pod.$release-headless
    sans="DNS:raftlite-node-$((i + 1))"
    for name in "$headless" "$release"; do
        sans="$sans,DNS:$name,DNS:$name.$namespace,DNS:$name.$namespace.svc,DNS:$name.$namespace.svc.$domain"
    done
    sans="$sans,DNS:localhost,IP:127.0.0.1"
    extra=EXTRA_SANS_$i
    [ -z "${!extra:-}" ] || sans="$sans,${!extra}"
    cat >"$work/ext" <<EOF
basicConstraints=critical,CA:FALSE
keyUsage=critical,digitalSignature,keyEncipherment
extendedKeyUsage=serverAuth,clientAuth
subjectAltName=$sans
EOF
    openssl genrsa -out "$dir/tls/$pod.key" 2048 2>/dev/null
    openssl req -new -key "$dir/tls/$pod.key" -subj "/CN=$pod" -out "$work/csr"
    openssl x509 -req -in "$work/csr" -CA "$dir/tls/ca.crt" -CAkey "$dir/ca.key" \
        -set_serial "0x$(openssl rand -hex 16)" -days "$days" -sha256 -extfile "$work/ext" \
        -out "$dir/tls/$pod.crt" 2>/dev/null
    echo "made $dir/tls/$pod.crt"
done

for name in admin app; do
    if [ ! -s "$dir/tokens/$name" ]; then
        printf '%s' "$(openssl rand -hex 24)" >"$dir/tokens/$name"
        echo "made $dir/tokens/$name"
    fi
done
sha256() { openssl dgst -sha256 -r "$1" | cut -d' ' -f1; }
cat >"$dir/auth/auth.yaml" <<EOF
# raftlite tokens (SHA-256 of each), made by docker/gen-secrets.sh.
tokens:
  - name: admin
    sha256: $(sha256 "$dir/tokens/admin")
    role: admin
  - name: app
    sha256: $(sha256 "$dir/tokens/app")
    role: write
EOF
chmod -R a+rX "$dir/tls" "$dir/auth" "$dir/tokens"
echo "wrote $dir/auth/auth.yaml; the admin token is $dir/tokens/admin, the app token $dir/tokens/app"
