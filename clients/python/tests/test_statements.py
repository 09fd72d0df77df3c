"""Statement routing and parameter binding (no server needed)."""

import pytest

from raftlite import DataError, ProgrammingError
from raftlite.statements import Route, bind, named_parameters, route


@pytest.mark.parametrize(
    "sql",
    [
        "SELECT 1",
        "  select * from t",
        "-- a comment\nSELECT 1",
        "/* block */ /* two */ VALUES (1), (2)",
        "EXPLAIN QUERY PLAN INSERT INTO t VALUES (1)",
        "PRAGMA table_info(t)",
        "PRAGMA user_version",
        "WITH a AS (SELECT 1) SELECT * FROM a",
        "WITH RECURSIVE c(x) AS (VALUES(1) UNION ALL SELECT x+1 FROM c WHERE x<5) SELECT x FROM c",
        "WITH a AS MATERIALIZED (DELETE FROM t RETURNING *) SELECT 1",
        "WITH \"insert\" AS (SELECT 'update') VALUES (1)",
    ],
)
def test_reads_go_to_query(sql):
    assert route(sql) is Route.QUERY


@pytest.mark.parametrize(
    "sql",
    [
        "INSERT INTO t VALUES (1)",
        "UPDATE counter SET n = n + 1 RETURNING n",
        "delete from t",
        "REPLACE INTO t VALUES (1)",
        "CREATE TABLE t (k)",
        "DROP TABLE t",
        "PRAGMA user_version = 3",
        "WITH a AS (SELECT 1) INSERT INTO t SELECT * FROM a",
        "WITH a(x) AS (SELECT 'select') UPDATE t SET v = (SELECT x FROM a)",
        "-- SELECT\nINSERT INTO t VALUES ('SELECT')",
        "ROLLBACK TO SAVEPOINT s",
        "SAVEPOINT s",
        "",
        "(SELECT 1)",
    ],
)
def test_everything_else_goes_to_execute(sql):
    assert route(sql) is Route.EXECUTE


@pytest.mark.parametrize(
    "sql, want",
    [
        ("BEGIN", Route.BEGIN),
        ("begin immediate transaction", Route.BEGIN),
        ("COMMIT", Route.COMMIT),
        ("END TRANSACTION", Route.COMMIT),
        ("ROLLBACK", Route.ROLLBACK),
    ],
)
def test_transaction_statements_map_to_the_connection(sql, want):
    assert route(sql) is want


def test_positional_parameters_in_order():
    s = bind("INSERT INTO t VALUES (?, ?, ?, ?, ?)", (1, 2.5, "x", b"\x00\xff", None))
    kinds = [v.WhichOneof("kind") for v in s.positional]
    assert kinds == ["integer", "real", "text", "blob", "null"]
    assert s.positional[3].blob == b"\x00\xff" and not s.named


def test_named_parameters_take_the_prefix_the_sql_uses():
    sql = "UPDATE t SET a = :a, b = @b, c = $c WHERE k = :a AND s = ':nope' -- :neither"
    assert named_parameters(sql) == [":a", "@b", "$c"]
    s = bind(sql, {"a": 1, "@b": "two", "c": None, "extra": 9})
    assert set(s.named) == {":a", "@b", "$c"}
    assert s.named[":a"].integer == 1 and s.named["@b"].text == "two"
    assert s.named["$c"].WhichOneof("kind") == "null"


def test_binding_mistakes_are_programming_errors():
    with pytest.raises(ProgrammingError, match="no value for the named parameter :b"):
        bind("SELECT :a, :b", {"a": 1})
    with pytest.raises(ProgrammingError, match="uses \\? placeholders"):
        bind("SELECT ?", {"a": 1})
    with pytest.raises(ProgrammingError, match="not str"):
        bind("SELECT ?", "x")
    with pytest.raises(ProgrammingError, match="parameter 2: type object is not supported"):
        bind("SELECT ?, ?", (1, object()))
    with pytest.raises(DataError, match="64-bit"):
        bind("SELECT ?", (2**63,))


def test_a_script_is_cut_at_semicolons_outside_quotes_comments_and_trigger_bodies():
    from raftlite.statements import split_script

    script = """
        CREATE TABLE t (x TEXT); -- a comment; with a semicolon
        /* block; comment */ INSERT INTO t VALUES ('a;b'), ("c;d");
        CREATE TEMP TRIGGER tr AFTER INSERT ON t BEGIN
            UPDATE t SET x = CASE WHEN x = ';' THEN 'semi' ELSE x END;
            DELETE FROM t WHERE x IS NULL;
        END;
        ;
        SELECT [odd;name] FROM t
    """
    statements = split_script(script)
    assert len(statements) == 4, statements
    assert statements[0] == "CREATE TABLE t (x TEXT)"
    # A comment before a statement stays with it; the server reads past it.
    assert statements[1].startswith("-- a comment; with a semicolon\n")
    assert statements[1].endswith("""INSERT INTO t VALUES ('a;b'), ("c;d")""")
    assert statements[3] == "SELECT [odd;name] FROM t"
    assert split_script(script)[2].endswith("END")
    assert split_script("-- only a comment;\n  ;  ") == []
