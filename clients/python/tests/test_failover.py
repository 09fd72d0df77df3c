"""Failover against a real cluster of the test's own: the leader's process is killed
(SIGKILL, found by its PID) while a connection is in use."""

from __future__ import annotations

import pytest

import raftlite


def test_a_write_after_the_leader_dies_succeeds_once(own_cluster, table):
    conn = raftlite.connect(own_cluster.url, autocommit=True, retry_deadline=30)
    conn.execute(f"CREATE TABLE {table} (k INTEGER PRIMARY KEY)")
    conn.execute(f"INSERT INTO {table} VALUES (1)")
    own_cluster.kill_node(own_cluster.leader())
    conn.execute(f"INSERT INTO {table} VALUES (2)")  # retried under one request id
    assert conn.execute(f"SELECT k FROM {table} ORDER BY k").fetchall() == [(1,), (2,)]
    conn.close()


def test_a_transaction_cut_by_a_leader_change_is_aborted_whole(own_cluster, table):
    """Needs interactive transactions on the server (issue 10, point 2)."""
    setup = raftlite.connect(own_cluster.url, autocommit=True, retry_deadline=30)
    setup.execute(f"CREATE TABLE {table} (k INTEGER PRIMARY KEY)")
    conn = raftlite.connect(own_cluster.url, retry_deadline=30)
    conn.execute(f"INSERT INTO {table} VALUES (1)")
    conn.execute(f"INSERT INTO {table} VALUES (2)")
    own_cluster.kill_node(own_cluster.leader())
    with pytest.raises(raftlite.TransactionAborted):
        conn.execute(f"INSERT INTO {table} VALUES (3)")
        conn.commit()
    assert not conn.in_transaction
    assert setup.execute(f"SELECT count(*) FROM {table}").fetchone() == (0,)
    # Run again whole, it commits on the new leader.
    for k in (1, 2, 3):
        conn.execute(f"INSERT INTO {table} VALUES (?)", (k,))
    conn.commit()
    assert setup.execute(f"SELECT count(*) FROM {table}").fetchone() == (3,)
    conn.close()
    setup.close()
