"""PEP 249 behaviour against a real 3-node cluster, with autocommit connections (each write
is one Execute), so these need no interactive transactions on the server."""

from __future__ import annotations

import time

import pytest

import raftlite


def test_description_rowcount_and_lastrowid(conn, table):
    cur = conn.cursor()
    cur.execute(f"CREATE TABLE {table} (id INTEGER PRIMARY KEY, name TEXT, score REAL, data BLOB)")
    assert cur.description is None
    cur.execute(f"INSERT INTO {table} (name, score) VALUES (?, ?)", ("ann", 1.5))
    assert (cur.rowcount, cur.lastrowid) == (1, 1)
    cur.execute(f"INSERT INTO {table} (id, name) VALUES (?, ?)", (40, "bob"))
    assert (cur.rowcount, cur.lastrowid) == (1, 40)
    cur.execute(f"UPDATE {table} SET score = 2 WHERE id > 0")
    assert cur.rowcount == 2
    cur.execute(f"SELECT id, name, score, data, score * 2 AS doubled FROM {table} ORDER BY id")
    assert cur.rowcount == -1
    assert [d[0] for d in cur.description] == ["id", "name", "score", "data", "doubled"]
    assert all(len(d) == 7 for d in cur.description)
    types = [d[1] for d in cur.description]
    assert types == ["INTEGER", "TEXT", "REAL", "BLOB", None]
    assert types[0] == raftlite.NUMBER and types[1] == raftlite.STRING
    assert types[3] == raftlite.BINARY
    assert cur.fetchall() == [(1, "ann", 2.0, None, 4.0), (40, "bob", 2.0, None, 4.0)]


def test_fetch_methods_executemany_and_iteration(conn, table):
    conn.execute(f"CREATE TABLE {table} (k INTEGER PRIMARY KEY, v TEXT)")
    cur = conn.executemany(f"INSERT INTO {table} VALUES (?, ?)", [(i, f"v{i}") for i in range(10)])
    assert cur.rowcount == 10
    cur.execute(f"SELECT k, v FROM {table} ORDER BY k")
    assert cur.fetchone() == (0, "v0")
    assert cur.fetchmany(2) == [(1, "v1"), (2, "v2")]
    cur.arraysize = 3
    assert cur.fetchmany() == [(3, "v3"), (4, "v4"), (5, "v5")]
    assert list(cur) == [(k, f"v{k}") for k in range(6, 10)]
    assert cur.fetchone() is None and cur.fetchall() == []
    assert cur.execute(f"SELECT count(*) FROM {table}").fetchone() == (10,)


def test_executemany_is_all_or_nothing(conn, table):
    conn.execute(f"CREATE TABLE {table} (k INTEGER PRIMARY KEY)")
    with pytest.raises(raftlite.IntegrityError):
        conn.executemany(f"INSERT INTO {table} VALUES (?)", [(1,), (2,), (1,)])
    assert conn.execute(f"SELECT count(*) FROM {table}").fetchone() == (0,)


def test_qmark_and_named_parameters(conn, table):
    conn.execute(f"CREATE TABLE {table} (k TEXT PRIMARY KEY, v INTEGER)")
    conn.execute(f"INSERT INTO {table} VALUES (?, ?)", ["a", 1])
    conn.execute(f"INSERT INTO {table} VALUES (:k, :v)", {"k": "b", "v": 2})
    conn.execute(f"INSERT INTO {table} VALUES (@k, $v)", {"k": "c", "v": 3})
    conn.execute(
        f"UPDATE {table} SET v = v * :factor WHERE k <> :skip", {"factor": 10, "skip": "c"}
    )
    rows = conn.execute(f"SELECT k, v FROM {table} WHERE v >= ? ORDER BY k", (3,)).fetchall()
    assert rows == [("a", 10), ("b", 20), ("c", 3)]
    row = conn.execute(f"SELECT v FROM {table} WHERE k = :k", {"k": "b"}).fetchone()
    assert row == (20,)


def test_values_round_trip_including_blobs_and_null(conn, table):
    conn.execute(f"CREATE TABLE {table} (v)")
    values = [None, 0, -(2**63), 2**63 - 1, 3.25, -0.0, "", "héllo ✓", b"", b"\x00\xffbin\x00"]
    conn.executemany(f"INSERT INTO {table} VALUES (?)", [(v,) for v in values])
    rows = conn.execute(f"SELECT v, typeof(v) FROM {table} ORDER BY rowid").fetchall()
    assert [r[0] for r in rows] == values
    assert [type(r[0]) for r in rows] == [type(v) for v in values]
    assert [r[1] for r in rows] == [
        "null",
        "integer",
        "integer",
        "integer",
        "real",
        "real",
        "text",
        "text",
        "blob",
        "blob",
    ]


def test_a_unique_violation_is_an_integrity_error(conn, table):
    conn.execute(f"CREATE TABLE {table} (k TEXT PRIMARY KEY)")
    conn.execute(f"INSERT INTO {table} VALUES ('a')")
    with pytest.raises(raftlite.IntegrityError) as e:
        conn.execute(f"INSERT INTO {table} VALUES ('a')")
    assert "UNIQUE constraint failed" in str(e.value)
    assert e.value.code == "FAILED_PRECONDITION"


def test_bad_sql_is_a_programming_error(conn, table):
    with pytest.raises(raftlite.ProgrammingError, match="syntax error.*INVALID_ARGUMENT"):
        conn.execute("SELEC 1")
    with pytest.raises(raftlite.ProgrammingError, match=f"no such table: {table}"):
        conn.execute(f"SELECT * FROM {table}")
    with pytest.raises(raftlite.ProgrammingError, match=f"no such table: {table}"):
        conn.execute(f"INSERT INTO {table} VALUES (1)")


ENDLESS = "WITH RECURSIVE c(x) AS (SELECT 1 UNION ALL SELECT x + 1 FROM c) SELECT x FROM c"


def test_a_statement_that_runs_out_of_time_runs_once_and_says_so(cluster, table):
    """With the client's timeout shorter than the node's statement timeout, the node stops the
    statement at the client's deadline and says so; the client neither ends the call first
    (then the caller heard "Deadline Exceeded" and the statement was sent again, running as
    long again while every other write waited) nor resends the interrupted statement."""
    conn = raftlite.connect(cluster.url, autocommit=True, timeout=1.0, retry_deadline=10.0)
    conn.execute(f"CREATE TABLE {table} (x INTEGER)")
    for sql in (
        f"INSERT INTO {table} SELECT x FROM ({ENDLESS}) WHERE x < 0",
        f"{ENDLESS} LIMIT -1 OFFSET 1000000000000",
    ):
        started = time.monotonic()
        with pytest.raises(raftlite.OperationalError) as e:
            conn.execute(sql).fetchall()
        took = time.monotonic() - started
        assert e.value.code == "DEADLINE_EXCEEDED", e.value
        assert "interrupted" in e.value.server_message, e.value
        assert took < 1.9, f"ran once, not again: {took:.2f} s ({sql})"
    conn.execute(f"INSERT INTO {table} VALUES (1)")
    assert conn.execute(f"SELECT count(*) FROM {table}").fetchone() == (1,)
    conn.close()


def test_read_consistency_levels(cluster, table):
    writer = raftlite.connect(cluster.url, autocommit=True, consistency="read_your_writes")
    writer.execute(f"CREATE TABLE {table} (k)")
    writer.execute(f"INSERT INTO {table} VALUES (1)")
    assert writer.last_write_index > 0
    assert writer.execute(f"SELECT count(*) FROM {table}").fetchone() == (1,)
    # Any node that has applied the write answers; each level reads on the nodes.
    for level in ("linearizable", f"at_index:{writer.last_write_index}", "bounded:1000"):
        for node in cluster.addrs:
            reader = raftlite.connect(f"raftlite://{node}", consistency=level)
            assert reader.execute(f"SELECT count(*) FROM {table}").fetchone() == (1,), level
            reader.close()
    stale = raftlite.connect(cluster.url, consistency="stale")
    assert stale.execute("SELECT 1").fetchone() == (1,)
    writer.close()
    stale.close()


def test_returning_rows_come_back_from_writes(conn, table):
    """Needs the server's RETURNING support (issue 10, point 1)."""
    conn.execute(f"CREATE TABLE {table} (id INTEGER PRIMARY KEY, name TEXT, n INTEGER)")
    cur = conn.execute(
        f"INSERT INTO {table} (name, n) VALUES ('a', 1), ('b', 2) RETURNING id, name"
    )
    assert [d[0] for d in cur.description] == ["id", "name"]
    assert cur.fetchall() == [(1, "a"), (2, "b")]
    assert (cur.rowcount, cur.lastrowid) == (2, 2)
    cur.execute(f"UPDATE {table} SET n = n + 1 RETURNING n")
    assert sorted(cur.fetchall()) == [(2,), (3,)]
    assert cur.rowcount == 2
    cur.execute(f"DELETE FROM {table} WHERE name = ? RETURNING *", ("a",))
    assert cur.fetchone() == (1, "a", 2) and cur.fetchone() is None


def test_lastrowid_is_the_statements_own(conn, table):
    """Needs the server's fix for last_insert_rowid (issue 10, point 1): an UPDATE inserts
    nothing, so it reports 0, not a row of the server's request-id table."""
    conn.execute(f"CREATE TABLE {table} (k TEXT PRIMARY KEY, v INTEGER)")
    conn.execute(f"INSERT INTO {table} VALUES ('hello', 1), ('x', 2)")
    for _ in range(3):
        cur = conn.execute(f"UPDATE {table} SET v = v + 1 WHERE k = 'hello'")
        assert (cur.rowcount, cur.lastrowid) == (1, 0)


def test_statements_reach_the_right_call(conn, table):
    """Reads (SELECT, VALUES, EXPLAIN, PRAGMA, WITH ... SELECT) go to Query, the rest to
    Execute; each kind runs on the real server."""
    conn.execute(f"CREATE TABLE {table} (k INTEGER PRIMARY KEY, v TEXT)")
    cur = conn.execute(f"WITH n(x) AS (VALUES (1), (2)) INSERT INTO {table} (k) SELECT x FROM n")
    assert cur.rowcount == 2 and cur.description is None
    cur.execute(f"WITH n AS (SELECT k FROM {table}) SELECT count(*) AS c FROM n")
    assert cur.fetchall() == [(2,)] and cur.description[0][0] == "c" and cur.rowcount == -1
    assert cur.execute("VALUES (1, 'a')").fetchall() == [(1, "a")]
    assert [r[1] for r in cur.execute(f"PRAGMA table_info({table})")] == ["k", "v"]
    assert cur.execute(f"EXPLAIN QUERY PLAN SELECT * FROM {table}").fetchall()
    assert cur.execute("/* leading comment */ -- and another\n SELECT 7").fetchone() == (7,)
