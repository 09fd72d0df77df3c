"""What the client sends, checked against in-process fake nodes (no cluster needed): which
call a statement goes to, request ids and their reuse on retries, the leader hint, the
transaction calls, read consistency and the read-your-writes token."""

from __future__ import annotations

import time
import uuid

import grpc
import pytest
from fake_node import FakeNode

import raftlite
from raftlite.connection import new_request_id

UNAVAILABLE = grpc.StatusCode.UNAVAILABLE


@pytest.fixture
def nodes():
    started = [FakeNode() for _ in range(3)]
    yield started
    for node in started:
        node.stop()


def connect(nodes, **options):
    url = "raftlite://" + ",".join(n.addr for n in nodes)
    options.setdefault("retry_deadline", 5.0)
    return raftlite.connect(url, **options)


def all_calls(nodes, method):
    return [r for n in nodes for r in n.calls(method)]


def test_a_query_streams_rows_and_describes_columns(nodes):
    cur = connect(nodes).cursor()
    cur.execute("SELECT a, b FROM t WHERE a > ?", (0,))
    assert cur.description == (
        ("a", "INTEGER", None, None, None, None, None),
        ("b", None, None, None, None, None, None),
    )
    assert cur.rowcount == -1
    assert cur.fetchone() == (1, "x")
    assert cur.fetchall() == [(2, None)]
    assert cur.fetchone() is None
    (query,) = nodes[0].calls("Query")
    assert query.statement.positional[0].integer == 0
    assert query.consistency.WhichOneof("level") == "linearizable"
    assert not query.transaction_id


def test_autocommit_write_retries_under_the_same_request_id_towards_the_leader(nodes):
    conn = connect(nodes, autocommit=True)
    nodes[0].fail("Execute", UNAVAILABLE, "not the leader", leader=nodes[2].addr)
    nodes[2].fail("Execute", grpc.StatusCode.DEADLINE_EXCEEDED, "slow")
    cur = conn.cursor()
    cur.execute("INSERT INTO t VALUES (?)", (1,))
    assert (cur.rowcount, cur.lastrowid) == (1, 42)
    assert cur.description is None
    # The hint sent the retry to node 3; its timeout sent the next one on, to node 1.
    ids = [r.request_id for r in all_calls(nodes, "Execute")]
    assert len(ids) == 3 and len(set(ids)) == 1 and len(ids[0]) == 36
    assert (len(nodes[0].calls("Execute")), len(nodes[1].calls("Execute"))) == (2, 0)
    assert not any(r.transaction_id for r in all_calls(nodes, "Execute"))
    assert all_calls(nodes, "Begin") == []
    # The next write has a new id and goes to the node that answered.
    cur.execute("INSERT INTO t VALUES (?)", (2,))
    assert nodes[0].calls("Execute")[-1].request_id != ids[0]


def test_non_retryable_errors_are_raised_at_once(nodes):
    conn = connect(nodes, autocommit=True)
    nodes[0].fail("Execute", grpc.StatusCode.FAILED_PRECONDITION, "UNIQUE constraint failed: t.k")
    with pytest.raises(raftlite.IntegrityError, match="UNIQUE constraint failed: t.k"):
        conn.execute("INSERT INTO t VALUES (1)")
    assert len(all_calls(nodes, "Execute")) == 1


def test_retries_stop_at_the_deadline_with_the_last_error(nodes):
    conn = connect(nodes[:1], autocommit=True, retry_deadline=0.3)
    for _ in range(100):
        nodes[0].fail("Execute", UNAVAILABLE, "no quorum")
    with pytest.raises(raftlite.OperationalError, match="no quorum \\(UNAVAILABLE") as e:
        conn.execute("DELETE FROM t")
    assert "gave up after" in str(e.value) and e.value.code == "UNAVAILABLE"
    assert len({r.request_id for r in nodes[0].calls("Execute")}) == 1


def test_the_final_error_says_what_every_node_last_answered(nodes):
    # One node knows what is wrong; the other is gone. Whichever is tried last, both show.
    conn = connect([nodes[0], nodes[1]], autocommit=True, retry_deadline=0.3)
    nodes[1].stop()
    for _ in range(100):
        nodes[0].fail("Execute", UNAVAILABLE, "no leader (an election is under way)")
    with pytest.raises(raftlite.OperationalError) as e:
        conn.execute("DELETE FROM t")
    message = str(e.value)
    assert "the other nodes last answered: " in message, message
    assert "no leader (an election is under way)" in message, message
    assert "Connection refused" in message or "failed to connect" in message, message


def test_a_transaction_begins_at_the_first_write_and_carries_its_id(nodes):
    conn = connect(nodes)
    cur = conn.cursor()
    cur.execute("SELECT 1")
    assert not conn.in_transaction and all_calls(nodes, "Begin") == []
    cur.execute("UPDATE counter SET n = n + 1 RETURNING n")
    assert conn.in_transaction
    assert cur.fetchone() == (1,) and cur.description[0][0] == "n"
    cur.execute("SELECT n FROM counter")
    (execute,) = all_calls(nodes, "Execute")
    queries = all_calls(nodes, "Query")
    assert execute.transaction_id == "tx1" and len(execute.request_id) == 36
    assert [q.transaction_id for q in queries] == ["", "tx1"]
    # The commit is resent under its first request id.
    nodes[0].fail("Commit", UNAVAILABLE, "leader went away")
    conn.commit()
    commits = all_calls(nodes, "Commit")
    assert len(commits) == 2 and commits[0].request_id == commits[1].request_id
    assert commits[0].transaction_id == "tx1"
    assert not conn.in_transaction and conn.last_write_index == 1
    conn.commit()  # nothing open: nothing sent
    assert len(all_calls(nodes, "Commit")) == 2


def test_writes_inside_a_transaction_are_resent_under_their_request_id(nodes):
    conn = connect(nodes)
    conn.execute("INSERT INTO t VALUES (1)")
    nodes[0].fail("Execute", UNAVAILABLE, "connection reset")
    conn.execute("INSERT INTO t VALUES (2)")
    first, second, third = all_calls(nodes, "Execute")
    assert second.request_id == third.request_id != first.request_id
    assert {first.transaction_id, second.transaction_id, third.transaction_id} == {"tx1"}
    assert conn.in_transaction
    conn.rollback()
    assert all_calls(nodes, "Rollback")[0].transaction_id == "tx1"
    assert not conn.in_transaction


def test_an_error_inside_a_transaction_leaves_it_open(nodes):
    conn = connect(nodes)
    conn.execute("INSERT INTO t VALUES (1)")
    nodes[0].fail("Execute", grpc.StatusCode.FAILED_PRECONDITION, "UNIQUE constraint failed")
    with pytest.raises(raftlite.IntegrityError):
        conn.execute("INSERT INTO t VALUES (1)")
    assert conn.in_transaction
    conn.commit()
    assert all_calls(nodes, "Commit")[0].transaction_id == "tx1"


def test_aborted_ends_the_transaction(nodes):
    conn = connect(nodes)
    conn.execute("INSERT INTO t VALUES (1)")
    nodes[0].fail("Execute", grpc.StatusCode.ABORTED, "leader changed")
    with pytest.raises(raftlite.TransactionAborted, match="leader changed"):
        conn.execute("INSERT INTO t VALUES (2)")
    assert not conn.in_transaction
    conn.execute("INSERT INTO t VALUES (3)")  # a new transaction
    assert all_calls(nodes, "Execute")[-1].transaction_id == "tx2"


def test_rollback_of_a_transaction_the_server_already_ended_succeeds(nodes):
    conn = connect(nodes)
    conn.execute("INSERT INTO t VALUES (1)")
    nodes[0].fail("Rollback", grpc.StatusCode.ABORTED, "idle too long")
    conn.rollback()
    assert not conn.in_transaction


def test_sql_transaction_statements_use_the_transaction_calls(nodes):
    conn = connect(nodes, autocommit=True)
    conn.execute("BEGIN")
    assert conn.in_transaction
    with pytest.raises(raftlite.OperationalError, match="within a transaction"):
        conn.execute("BEGIN")
    conn.execute("INSERT INTO t VALUES (1)")
    conn.execute("COMMIT")
    conn.execute("BEGIN IMMEDIATE")
    conn.execute("ROLLBACK")
    assert len(all_calls(nodes, "Begin")) == 2
    assert len(all_calls(nodes, "Commit")) == 1 and len(all_calls(nodes, "Rollback")) == 1
    assert [e.transaction_id for e in all_calls(nodes, "Execute")] == ["tx1"]


def test_executemany_sends_one_atomic_request(nodes):
    conn = connect(nodes, autocommit=True)
    cur = conn.executemany(
        "INSERT INTO t VALUES (:k, :v)", [{"k": i, "v": str(i)} for i in range(3)]
    )
    (request,) = all_calls(nodes, "Execute")
    assert [s.named[":k"].integer for s in request.statements] == [0, 1, 2]
    assert cur.rowcount == 3 and cur.lastrowid == 44
    with pytest.raises(raftlite.ProgrammingError, match="writes only"):
        cur.executemany("SELECT ?", [(1,)])


def test_read_your_writes_reads_at_the_last_write_index(nodes):
    conn = connect(nodes, autocommit=True, consistency="read_your_writes")
    conn.execute("SELECT 1")
    conn.execute("INSERT INTO t VALUES (1)")
    conn.execute("INSERT INTO t VALUES (2)")
    conn.execute("SELECT 1")
    first, second = all_calls(nodes, "Query")
    assert first.consistency.WhichOneof("level") == "linearizable"
    assert second.consistency.at_index.index == conn.last_write_index == 2
    conn.consistency = "bounded:5"
    conn.execute("SELECT 1")
    assert all_calls(nodes, "Query")[-1].consistency.bounded.max_lag == 5
    conn.consistency = "stale"
    conn.execute("SELECT 1")
    assert all_calls(nodes, "Query")[-1].consistency.WhichOneof("level") == "stale"
    with pytest.raises(raftlite.InterfaceError, match="unknown read consistency"):
        conn.consistency = "eventual"


def test_turning_autocommit_on_commits(nodes):
    conn = connect(nodes)
    conn.execute("INSERT INTO t VALUES (1)")
    conn.autocommit = True
    assert not conn.in_transaction and len(all_calls(nodes, "Commit")) == 1


def test_context_manager_commits_or_rolls_back_and_close_rolls_back(nodes):
    conn = connect(nodes)
    with conn:
        conn.execute("INSERT INTO t VALUES (1)")
    assert len(all_calls(nodes, "Commit")) == 1
    with pytest.raises(LookupError):
        with conn:
            conn.execute("INSERT INTO t VALUES (1)")
            raise LookupError("the block fails")
    assert len(all_calls(nodes, "Rollback")) == 1
    conn.execute("INSERT INTO t VALUES (1)")
    cur = conn.cursor()
    conn.close()
    assert len(all_calls(nodes, "Rollback")) == 2
    with pytest.raises(raftlite.InterfaceError, match="closed"):
        cur.execute("SELECT 1")
    with pytest.raises(raftlite.InterfaceError, match="closed"):
        conn.cursor()


def test_token_goes_in_the_authorization_header():
    seen = []

    class Recorder(FakeNode):
        def Query(self, request, context):
            seen.append(dict(context.invocation_metadata()).get("authorization"))
            yield from super().Query(request, context)

    node = Recorder()
    try:
        raftlite.connect(f"raftlite://app:t0ken@{node.addr}").execute("SELECT 1")
        raftlite.connect(f"raftlite://{node.addr}").execute("SELECT 1")
    finally:
        node.stop()
    assert seen == ["Bearer t0ken", None]


def test_cursor_iteration_and_fetchmany(nodes):
    cur = connect(nodes).cursor()
    assert list(cur.execute("SELECT a, b FROM t")) == [(1, "x"), (2, None)]
    cur.execute("SELECT a, b FROM t")
    cur.arraysize = 5
    assert cur.fetchmany(1) == [(1, "x")]
    assert cur.fetchmany() == [(2, None)]
    assert cur.fetchmany() == []


def test_a_node_without_the_call_says_which_call(nodes):
    nodes[0].fail("Begin", grpc.StatusCode.UNIMPLEMENTED, "")
    with pytest.raises(raftlite.NotSupportedError) as e:
        connect(nodes).execute("INSERT INTO t VALUES (1)")
    assert str(e.value).startswith(
        f"the node does not implement Sql.Begin (UNIMPLEMENTED from {nodes[0].addr})"
    )


def test_the_tls_ca_file_must_hold_a_certificate(tmp_path):
    with pytest.raises(raftlite.InterfaceError, match="cannot read the tls_ca file"):
        raftlite.connect(f"raftlite://a:1?tls_ca={tmp_path}/missing.crt")
    key = tmp_path / "ca.key"
    key.write_text("-----BEGIN PRIVATE KEY-----\n...\n")
    with pytest.raises(raftlite.InterfaceError, match="holds no PEM certificate"):
        raftlite.connect(f"raftlite://a:1?tls_ca={key}")


def test_unknown_options_are_refused():
    with pytest.raises(
        raftlite.InterfaceError, match="unknown connect\\(\\) options: isolation_level"
    ):
        raftlite.connect("raftlite://a:1", isolation_level=None)


def test_request_ids_are_unique_uuid7_in_time_order() -> None:
    """Writes of one group commit should share pages of the server's request-id index: ids
    made later sort later (UUIDv7), and they stay unique."""
    first = [new_request_id() for _ in range(1000)]
    time.sleep(0.002)
    later = new_request_id()
    assert len(set(first)) == 1000
    assert all(uuid.UUID(i).version == 7 for i in first)
    assert all(i < later for i in first)
