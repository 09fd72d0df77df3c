"""Fixtures: real `raftlite dev` clusters (see cluster.py), started only by the tests that
need one. The unit tests (URL, routing, values, errors, protocol against fake nodes) need no
server binary."""

from __future__ import annotations

import uuid
from collections.abc import Iterator

import pytest
from cluster import DevCluster, raftlite_binary

import raftlite


def _run(tmp_path_factory: pytest.TempPathFactory, name: str, secure: bool) -> Iterator[DevCluster]:
    cluster = DevCluster(raftlite_binary(), tmp_path_factory.mktemp(name), secure=secure)
    cluster.start()
    try:
        yield cluster
    finally:
        cluster.stop()


@pytest.fixture(scope="session")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[DevCluster]:
    """A plaintext 3-node cluster shared by the tests that do not break it."""
    yield from _run(tmp_path_factory, "cluster", secure=False)


@pytest.fixture(scope="session")
def secure_cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[DevCluster]:
    """A 3-node cluster with TLS and a token (`raftlite dev --secure`)."""
    yield from _run(tmp_path_factory, "secure", secure=True)


@pytest.fixture
def own_cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[DevCluster]:
    """A cluster of the test's own, for tests that kill nodes."""
    yield from _run(tmp_path_factory, "own", secure=False)


@pytest.fixture
def table() -> str:
    """A table name no other test uses (the shared cluster keeps every test's tables)."""
    return f"t_{uuid.uuid4().hex[:12]}"


@pytest.fixture
def conn(cluster: DevCluster) -> Iterator[raftlite.Connection]:
    """An autocommit connection: each write commits by itself (no interactive transaction)."""
    connection = raftlite.connect(cluster.url, autocommit=True)
    yield connection
    connection.close()
