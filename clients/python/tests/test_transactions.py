"""Interactive transactions against a real cluster (needs Begin/Commit/Rollback and
transaction_id on the server: issue 10, point 2). Connections default to autocommit off, as
in sqlite3: the first write opens the transaction."""

from __future__ import annotations

import gc
import subprocess
import sys
import threading
import time

import pytest

import raftlite


@pytest.fixture
def counter(conn, table):
    conn.execute(f"CREATE TABLE {table} (id INTEGER PRIMARY KEY, n INTEGER)")
    conn.execute(f"INSERT INTO {table} VALUES (1, 1)")
    return table


def count(conn, table):
    return conn.execute(f"SELECT count(*) FROM {table}").fetchone()[0]


def test_own_writes_are_visible_inside_and_commit_shows_them_to_others(cluster, counter):
    tx = raftlite.connect(cluster.url)
    other = raftlite.connect(cluster.url)
    cur = tx.cursor()
    cur.execute(f"INSERT INTO {counter} VALUES (2, 20)")
    assert tx.in_transaction
    cur.execute(f"UPDATE {counter} SET n = n + 1 WHERE id = 1")
    assert cur.execute(f"SELECT id, n FROM {counter} ORDER BY id").fetchall() == [(1, 2), (2, 20)]
    assert other.execute(f"SELECT id, n FROM {counter} ORDER BY id").fetchall() == [(1, 1)]
    tx.commit()
    assert not tx.in_transaction and tx.last_write_index > 0
    assert other.execute(f"SELECT id, n FROM {counter} ORDER BY id").fetchall() == [(1, 2), (2, 20)]
    tx.close()
    other.close()


def test_rollback_discards(cluster, counter):
    tx = raftlite.connect(cluster.url)
    tx.execute(f"INSERT INTO {counter} VALUES (2, 20)")
    assert count(tx, counter) == 2
    tx.rollback()
    assert count(tx, counter) == 1
    with pytest.raises(LookupError):
        with tx:
            tx.execute(f"INSERT INTO {counter} VALUES (3, 30)")
            raise LookupError("the block fails")
    assert count(tx, counter) == 1
    with tx:
        tx.execute(f"INSERT INTO {counter} VALUES (4, 40)")
    assert count(tx, counter) == 2
    tx.close()


def test_the_issue_example_returning_in_a_transaction(cluster, counter):
    conn = raftlite.connect(cluster.url)
    cur = conn.cursor()
    cur.execute(f"UPDATE {counter} SET n = n + 1 RETURNING n")
    assert cur.fetchone()[0] == 2
    conn.commit()
    assert conn.execute(f"SELECT n FROM {counter}").fetchone() == (2,)
    conn.close()


def test_a_second_writer_waits_until_the_first_commits(cluster, counter):
    """BEGIN IMMEDIATE semantics: the second connection's write is applied after the first
    transaction, on top of it (n = (1 + 1) * 10), never in between."""
    first = raftlite.connect(cluster.url)
    second = raftlite.connect(cluster.url, autocommit=True, timeout=20, retry_deadline=30)
    first.execute(f"UPDATE {counter} SET n = n + 1")
    done = threading.Event()
    failure: list[BaseException] = []

    def write() -> None:
        try:
            second.execute(f"UPDATE {counter} SET n = n * 10")
        except BaseException as e:  # reported by the main thread
            failure.append(e)
        done.set()

    writer = threading.Thread(target=write)
    writer.start()
    assert not done.wait(1.0), f"the second write did not wait for the transaction: {failure}"
    assert first.execute(f"SELECT n FROM {counter}").fetchone() == (2,)
    first.commit()
    writer.join(30)
    assert done.is_set() and not failure, failure
    assert first.execute(f"SELECT n FROM {counter}").fetchone() == (20,)
    first.close()
    second.close()


def test_sql_begin_and_commit_statements(cluster, counter):
    conn = raftlite.connect(cluster.url, autocommit=True)
    conn.execute("BEGIN")
    conn.execute(f"INSERT INTO {counter} VALUES (2, 2)")
    assert conn.in_transaction
    conn.execute("COMMIT")
    assert count(conn, counter) == 2
    conn.close()


def test_read_decide_write_loses_no_update(cluster, counter):
    """Four connections each read n, then write n + 1, in a transaction begun before the read:
    transactions run one after another, so every increment counts."""
    errors: list[BaseException] = []

    def increment() -> None:
        conn = raftlite.connect(cluster.url, timeout=20, retry_deadline=30)
        try:
            conn.execute("BEGIN")
            (n,) = conn.execute(f"SELECT n FROM {counter} WHERE id = 1").fetchone()
            conn.execute(f"UPDATE {counter} SET n = ? WHERE id = 1", (n + 1,))
            conn.commit()
        except BaseException as e:  # reported by the main thread
            errors.append(e)
        finally:
            conn.close()

    threads = [threading.Thread(target=increment) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert not errors, errors
    check = raftlite.connect(cluster.url)
    assert check.execute(f"SELECT n FROM {counter}").fetchone() == (5,)
    check.close()


def write_time(url, table):
    """Seconds an autocommit write waits (for the write lock an open transaction holds)."""
    writer = raftlite.connect(url, autocommit=True)
    started = time.monotonic()
    writer.execute(f"UPDATE {table} SET n = n + 1 WHERE id = 1")
    took = time.monotonic() - started
    writer.close()
    return took


def test_a_connection_let_go_with_a_transaction_open_ends_it(cluster, counter):
    """As with `sqlite3`, whose lock goes with its connection: a process that exits, or a
    connection garbage collected, with a transaction open ends it at once. The writers of the
    cluster waited for the server's 5 s idle timeout before."""
    script = (
        "import raftlite, sys\n"
        "c = raftlite.connect(sys.argv[1])\n"
        f"c.execute('UPDATE {counter} SET n = n + 1 WHERE id = 1')\n"
        "assert c.in_transaction\n"
    )
    subprocess.run([sys.executable, "-c", script, cluster.url], check=True, timeout=30)
    assert write_time(cluster.url, counter) < 2.0, "a process that exited"

    forgotten = raftlite.connect(cluster.url)
    forgotten.execute(f"UPDATE {counter} SET n = n + 1 WHERE id = 1")
    assert forgotten.in_transaction
    del forgotten
    gc.collect()
    assert write_time(cluster.url, counter) < 2.0, "a connection garbage collected"
    # Neither transaction committed: only the two autocommit writes did.
    assert raftlite.connect(cluster.url).execute(
        f"SELECT n FROM {counter} WHERE id = 1"
    ).fetchone() == (3,)


def test_savepoints_nest_as_sqlalchemy_and_django_use_them(cluster, counter):
    # begin_nested() / a nested atomic(): SAVEPOINT, then RELEASE or ROLLBACK TO, one call each.
    tx = raftlite.connect(cluster.url)
    other = raftlite.connect(cluster.url, autocommit=True)

    def ids():
        return [r[0] for r in tx.execute(f"SELECT id FROM {counter} ORDER BY id").fetchall()]

    tx.execute(f"INSERT INTO {counter} VALUES (2, 20)")
    tx.execute("SAVEPOINT outer_sp")
    tx.execute(f"INSERT INTO {counter} VALUES (3, 30)")
    tx.execute("SAVEPOINT inner_sp")
    tx.execute(f"INSERT INTO {counter} VALUES (4, 40)")
    tx.execute("ROLLBACK TO SAVEPOINT inner_sp")
    tx.execute("RELEASE SAVEPOINT inner_sp")
    assert ids() == [1, 2, 3]
    with pytest.raises(raftlite.DatabaseError, match="no such savepoint"):
        tx.execute("RELEASE inner_sp")
    assert tx.in_transaction, "a failed RELEASE leaves the transaction open"
    tx.execute("ROLLBACK TO outer_sp")
    tx.execute("RELEASE outer_sp")
    assert ids() == [1, 2]
    assert other.execute(f"SELECT count(*) FROM {counter}").fetchone() == (1,)
    tx.commit()
    assert other.execute(f"SELECT id FROM {counter} ORDER BY id").fetchall() == [(1,), (2,)]
    # Outside a transaction a request is one already: the refusal says where savepoints work.
    with pytest.raises(raftlite.DatabaseError, match="inside an interactive transaction"):
        other.execute("SAVEPOINT s")
    tx.close()
    other.close()


def test_executescript_runs_a_script_as_one_write_and_rebuilds_a_referenced_table(cluster, table):
    conn = raftlite.connect(cluster.url)
    parent, child = f"{table}_p", f"{table}_c"
    conn.execute(f"CREATE TABLE {table} (id INTEGER PRIMARY KEY)")
    assert conn.in_transaction
    conn.executescript(
        f"""
        BEGIN;
        CREATE TABLE {parent} (id INTEGER PRIMARY KEY, name TEXT);
        CREATE TABLE {child} (id INTEGER PRIMARY KEY, pid INTEGER REFERENCES {parent}(id));
        CREATE TRIGGER {table}_t AFTER INSERT ON {parent} BEGIN
            INSERT INTO {child} (pid) VALUES (new.id);
        END;
        INSERT INTO {parent} VALUES (1, 'a;b'), (2, 'c');
        COMMIT;
        """
    )
    assert not conn.in_transaction, "the open transaction was committed first"
    other = raftlite.connect(cluster.url, autocommit=True)
    assert other.execute(f"SELECT count(*) FROM {table}").fetchone() == (0,)
    assert other.execute(f"SELECT count(*) FROM {child}").fetchone() == (2,)
    # All or nothing: a failing statement leaves nothing of the script.
    with pytest.raises(raftlite.IntegrityError):
        other.executescript(
            f"INSERT INTO {parent} VALUES (3, 'x'); INSERT INTO {parent} VALUES (1, 'dup');"
        )
    assert other.execute(f"SELECT count(*) FROM {parent}").fetchone() == (2,)
    with pytest.raises(raftlite.ProgrammingError, match="cannot ROLLBACK"):
        other.executescript("INSERT INTO t VALUES (1); ROLLBACK;")
    # SQLite's table rebuild of a referenced table: foreign keys off for the script alone.
    other.executescript(
        f"""
        PRAGMA foreign_keys = OFF;
        CREATE TABLE {parent}_new (id INTEGER PRIMARY KEY, name TEXT NOT NULL DEFAULT '');
        INSERT INTO {parent}_new SELECT id, coalesce(name, '') FROM {parent};
        DROP TABLE {parent};
        ALTER TABLE {parent}_new RENAME TO {parent};
        PRAGMA foreign_keys = ON;
        """
    )
    assert other.execute(f"SELECT id, name FROM {parent} ORDER BY id").fetchall() == [
        (1, "a;b"),
        (2, "c"),
    ]
    with pytest.raises(raftlite.IntegrityError, match="FOREIGN KEY"):
        other.executescript(f"PRAGMA foreign_keys = OFF; DELETE FROM {parent};")
    with pytest.raises(raftlite.IntegrityError):
        other.execute(f"DELETE FROM {parent}")
    assert other.execute(f"SELECT count(*) FROM {parent}").fetchone() == (2,)
    conn.close()
    other.close()
