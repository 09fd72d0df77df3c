# raftlite tasks. `just verify` is exactly what CI runs (.ci/run).

set shell := ["bash", "-euo", "pipefail", "-c"]

default:
    @just --list

# Build everything (debug).
build:
    cargo build --workspace --all-targets

# Start a local 3-node cluster on loopback with temporary data (Ctrl-C stops it).
dev nodes="3":
    cargo run --release -p raftlite -- dev --nodes {{nodes}}

# Run one node from a config file.
run config:
    cargo run --release -p raftlite -- serve --config {{config}}

# Unit tests, openraft's storage suite, the cluster scenarios with real node processes, and the
# Python client's tests against real clusters.
test:
    cargo build -p raftlite -p raftlite-counter
    cargo test --workspace --exclude cluster-tests
    cargo test -p cluster-tests -- --test-threads=1
    just test-python

# The Python client (clients/python): installed from source (its gRPC code generated from
# proto/ at build time), then pytest against `raftlite dev` clusters of target/debug/raftlite.
test-python:
    python3 -m pip install --quiet ./clients/python
    cd clients/python && python3 -m pytest -q

# Archive benchmark: commit-to-archive lag and restore throughput against moto_server.
bench-archive:
    cargo build -p raftlite
    cargo test -p cluster-tests -- --test-threads=1 --nocapture t50_archive_restore::s3 t50_archive_restore::large

# Chaos soak in Docker: hundreds of random faults (kill, delete, wipe, partition, restart, pause,
# whole-cluster kill) under load, then the full audit; prints the fault counts (`just test`
# runs a 4-fault version). RAFTLITE_SOAK_FAULTS (200 here), RAFTLITE_SOAK_MINUTES (60) and
# RAFTLITE_SOAK_SEED change it.
soak faults="200":
    cargo build -p raftlite -p raftlite-counter
    RAFTLITE_SOAK_FAULTS={{faults}} cargo test -p cluster-tests -- --test-threads=1 --nocapture t80_chaos::soak

# Formatting and lints.
lint:
    cargo fmt --all -- --check
    cargo clippy --workspace --all-targets -- -D warnings

fmt:
    cargo fmt --all

# The Helm chart: lint it with the Helm library (default values and variants), and check that
# docker/compose.yaml mirrors it (ports, env, probes, config). Needs `pip install
# --ignore-requires-python helm-sdkpy pyyaml jsonschema`; fails loudly without it.
chart:
    python3 helm/lint.py
    python3 helm/check_compose.py

# Build the container image from the host-built binary (FROM scratch, nothing pulled).
image tag="raftlite:dev":
    docker/build-image.sh {{tag}}

# Benchmark on a local 3-node cluster, with the floor measured in the same run (see
# BENCHMARKS.md). Production configuration by default; the plain run:
# `just bench 5 --insecure --archive none`.
bench seconds="5" *flags="":
    cargo run --release -p raftlite -- bench --seconds {{seconds}} {{flags}}

# What CI runs: lints, then every test.
verify: lint chart test
