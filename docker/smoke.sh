#!/usr/bin/env bash
# Starts the compose mirror of the chart for real and checks it: a leader is elected, writes
# go through every pod, a fourth pod joins by itself (scale-up), `cluster retain 3` removes it
# (scale-down), a stopped pod comes back with its volume; TLS and tokens on, as in the chart:
# the peer port refuses a client without a certificate, a request with an unknown token is
# refused. Tears everything down at the end.
#
#   docker/smoke.sh            # uses image raftlite:dev (build it with docker/build-image.sh)
#   RAFTLITE_IMAGE=raftlite:0.1.0 docker/smoke.sh
set -euo pipefail
cd "$(dirname "$0")"
export RAFTLITE_IMAGE=${RAFTLITE_IMAGE:-raftlite:dev}
# Free host ports: a smoke run must not collide with a compose cluster already running.
for i in 0 1 2; do export "RAFTLITE_GRPC_PORT_$i=" "RAFTLITE_METRICS_PORT_$i="; done
project=raftlite-smoke-$$
# Certificates and tokens of its own (docker/secrets, if any, is left alone).
RAFTLITE_SECRETS=$(mktemp -d)
export RAFTLITE_SECRETS
compose() { docker-compose -f compose.yaml -p "$project" --profile scale --profile tools "$@"; }
# The ctl service has the CA and the admin token (RAFTLITE_TLS_CA, RAFTLITE_TOKEN_FILE).
ctl() { compose run --rm -T ctl "$@" 2>/dev/null; }
pod() { echo "https://raftlite-$1.raftlite-headless.default.svc.cluster.local:7000"; }
trap 'compose down -v --remove-orphans >/dev/null 2>&1 || true; rm -rf "$RAFTLITE_SECRETS"' EXIT
./gen-secrets.sh "$RAFTLITE_SECRETS" >/dev/null

wait_for() { # what, seconds, command...
    local what=$1 seconds=$2; shift 2
    for _ in $(seq "$seconds"); do
        if "$@" >/dev/null 2>&1; then echo "ok: $what"; return 0; fi
        sleep 1
    done
    echo "FAIL: $what (after ${seconds}s)" >&2
    compose logs --tail 30 >&2 || true
    return 1
}
voters() { ctl status --json | grep -o '"voter":true' | wc -l; }
has_voters() { [ "$(voters)" = "$1" ] && ctl status --json | grep -vq '"leader":0,'; }

docker image inspect "$RAFTLITE_IMAGE" >/dev/null
compose up -d raftlite-0 raftlite-1 raftlite-2 >/dev/null 2>&1
wait_for "3 voters and a leader" 60 has_voters 3
# The peers elected that leader on the peer port 7001, which speaks mutual TLS: a client with
# the CA but without a certificate of its own is refused during the handshake. (With TLS 1.3
# the server's alert may arrive after the client saw the connection close, its first write
# fail on the closed socket, or HTTP/2 find its stream gone: each is a transport error on a
# connection that was made, so a refusal. A gRPC answer, even UNIMPLEMENTED, would mean the
# handshake succeeded; a refused or unresolved connection would mean nothing listened.)
if out=$(compose run --rm -T ctl health --service raftlite.v1.Admin \
    --addr "https://raftlite-0.raftlite-headless.default.svc.cluster.local:7001" 2>&1); then
    echo "FAIL: the peer port answered a client without a certificate" >&2
    exit 1
fi
grep -q 'transport error' <<<"$out" &&
    ! grep -Eqi 'connection refused|dns error|timed out|UNIMPLEMENTED' <<<"$out" ||
    { echo "FAIL: peer port: expected a refused handshake, got: $out" >&2; exit 1; }
echo "ok: the peer port 7001 requires a client certificate (mutual TLS)"
ctl sql --addr "$(pod 1)" "CREATE TABLE kv (k TEXT PRIMARY KEY, v)"
for i in 0 1 2; do
    ctl sql --addr "$(pod "$i")" "INSERT INTO kv VALUES ('from-$i', $i)"
done
echo "ok: a write through every pod"
# A token that is not in auth.yaml: refused by the server (gRPC code UNAUTHENTICATED).
openssl rand -hex 24 | tr -d '\n' >"$RAFTLITE_SECRETS/wrong-token"
chmod a+r "$RAFTLITE_SECRETS/wrong-token"
if out=$(compose run --rm -T -v "$RAFTLITE_SECRETS/wrong-token:/etc/raftlite/tokens/wrong:ro" \
    -e RAFTLITE_TOKEN_FILE=/etc/raftlite/tokens/wrong ctl sql "SELECT 1" 2>&1); then
    echo "FAIL: a request with an unknown token was served" >&2
    exit 1
fi
grep -qi unauthenticated <<<"$out" || { echo "FAIL: unknown token: expected UNAUTHENTICATED, got: $out" >&2; exit 1; }
echo "ok: a request with an unknown token is refused"

compose up -d raftlite-3 >/dev/null 2>&1
wait_for "raftlite-3 joined as the 4th voter" 60 has_voters 4
ctl cluster retain 3
compose rm -sf raftlite-3 >/dev/null 2>&1
wait_for "back to 3 voters" 30 has_voters 3

compose stop raftlite-0 >/dev/null 2>&1
ctl sql "INSERT INTO kv VALUES ('while-0-down', 9)"
compose start raftlite-0 >/dev/null 2>&1
count() { [ "$(ctl sql --addr "$(pod 0)" --consistency stale "SELECT count(*) FROM kv")" = 4 ]; }
wait_for "raftlite-0 is back with its volume and caught up (4 rows)" 60 count
wait_for "every pod healthy" 60 bash -c "[ \$(docker-compose -f compose.yaml -p $project ps | grep -c '(healthy)') = 3 ]"
echo "smoke test passed"
