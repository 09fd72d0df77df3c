"""TLS and tokens against `raftlite dev --secure` (its banner's `url:` line carries the token
and the CA)."""

from __future__ import annotations

import time

import pytest

import raftlite
from raftlite.url import parse_url


def test_tls_and_token_from_the_url(secure_cluster, table):
    target = parse_url(secure_cluster.url)
    assert target.token and target.tls_ca
    conn = raftlite.connect(secure_cluster.url, autocommit=True)
    conn.execute(f"CREATE TABLE {table} (v)")
    conn.execute(f"INSERT INTO {table} VALUES (?)", (b"secret",))
    assert conn.execute(f"SELECT v FROM {table}").fetchall() == [(b"secret",)]
    conn.close()


def test_a_wrong_token_is_a_clear_error(secure_cluster):
    target = parse_url(secure_cluster.url)
    bad = f"raftlite://app:not-the-token@{','.join(target.nodes)}?tls_ca={target.tls_ca}"
    with pytest.raises(raftlite.NotAuthenticated) as e:
        raftlite.connect(bad).execute("SELECT 1")
    assert e.value.code == "UNAUTHENTICATED"
    assert "UNAUTHENTICATED" in str(e.value) and "NAME:TOKEN@" in str(e.value)
    assert "not-the-token" not in str(e.value)


def test_no_token_is_a_clear_error(secure_cluster):
    target = parse_url(secure_cluster.url)
    anonymous = f"raftlite://{','.join(target.nodes)}?tls_ca={target.tls_ca}"
    with pytest.raises(raftlite.NotAuthenticated, match="UNAUTHENTICATED"):
        raftlite.connect(anonymous).execute("SELECT 1")


def test_plaintext_to_a_tls_cluster_fails_as_operational(secure_cluster):
    target = parse_url(secure_cluster.url)
    plain = f"raftlite://app:{target.token}@{','.join(target.nodes)}"
    with pytest.raises(raftlite.OperationalError, match="UNAVAILABLE") as e:
        raftlite.connect(plain, retry_deadline=0.5).execute("SELECT 1")
    assert "if the nodes speak TLS, give the CA" in str(e.value)


def test_tls_to_a_plaintext_cluster_is_said_at_once(secure_cluster, cluster):
    ca = parse_url(secure_cluster.url).tls_ca
    started = time.monotonic()
    with pytest.raises(raftlite.InterfaceError, match="the node .* does not .*answered in plain"):
        raftlite.connect(f"{cluster.url}?tls_ca={ca}").execute("SELECT 1")
    assert time.monotonic() - started < 2.0, "not retried until the retry deadline (10 s)"
