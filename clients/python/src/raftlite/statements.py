"""Which RPC a statement goes to, and its parameters on the wire.

raftlite runs reads and writes through different calls: `Query` streams rows from any node at
the connection's read consistency; `Execute` goes through the leader and the Raft log. The
client must choose before sending, from the SQL text alone, so it looks at the first keyword
after comments: SELECT, VALUES, EXPLAIN and PRAGMA (without `=`) read, and so does a WITH
whose main statement (the first keyword outside the common table expressions' parentheses)
is a SELECT or VALUES. Everything else writes. The transaction statements BEGIN, COMMIT/END
and ROLLBACK are not sent at all: they map to the connection's own transaction calls, as the
server runs transactions through `Begin`/`Commit`/`Rollback`.

The scanner below knows just enough SQLite lexing for that (comments, string literals, quoted
identifiers, parentheses) and to find the named parameters of a statement.
"""

from __future__ import annotations

import enum
import re
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from typing import Any

from .errors import ProgrammingError
from .values import to_wire
from .wire import pb


class Route(enum.Enum):
    QUERY = "query"
    EXECUTE = "execute"
    BEGIN = "begin"
    COMMIT = "commit"
    ROLLBACK = "rollback"


_READ_KEYWORDS = {"SELECT", "VALUES", "EXPLAIN"}
_MAIN_KEYWORDS = {"SELECT", "VALUES", "INSERT", "UPDATE", "DELETE", "REPLACE"}


@dataclass(frozen=True)
class _Token:
    kind: str  # "word", "param", "quoted", "punct"
    text: str
    depth: int
    at: int = 0  # offset of its first character


_WORD = re.compile(r"[A-Za-z_][A-Za-z0-9_$]*")
_PARAM = re.compile(r"[:@$][A-Za-z0-9_]+|\?[0-9]*")
_CLOSING = {"'": "'", '"': '"', "`": "`", "[": "]"}


def _tokens(sql: str) -> Iterator[_Token]:
    """The statement's tokens outside comments, with their parenthesis depth."""
    i, depth, n = 0, 0, len(sql)
    while i < n:
        c = sql[i]
        if c.isspace():
            i += 1
        elif sql.startswith("--", i):
            end = sql.find("\n", i)
            i = n if end < 0 else end + 1
        elif sql.startswith("/*", i):
            end = sql.find("*/", i + 2)
            i = n if end < 0 else end + 2
        elif c in _CLOSING:
            # A string literal or quoted identifier; a doubled quote is an escaped one.
            close, j = _CLOSING[c], i + 1
            while j < n:
                if sql[j] == close:
                    if close != "]" and sql.startswith(close * 2, j):
                        j += 2
                        continue
                    break
                j += 1
            yield _Token("quoted", sql[i : j + 1], depth, i)
            i = j + 1
        elif (m := _PARAM.match(sql, i)) is not None:
            yield _Token("param", m.group(), depth, i)
            i = m.end()
        elif (m := _WORD.match(sql, i)) is not None:
            yield _Token("word", m.group().upper(), depth, i)
            i = m.end()
        else:
            if c == "(":
                depth += 1
            elif c == ")":
                depth = max(0, depth - 1)
            yield _Token("punct", c, depth, i)
            i += 1


def route(sql: str) -> Route:
    """Where a statement goes.

    >>> route("/* hi */ SELECT 1"), route("WITH x AS (SELECT 1) DELETE FROM t"), route("begin")
    (<Route.QUERY: 'query'>, <Route.EXECUTE: 'execute'>, <Route.BEGIN: 'begin'>)
    """
    tokens = list(_tokens(sql))
    words = [t for t in tokens if t.kind == "word"]
    if not words or tokens[0] is not words[0]:
        return Route.EXECUTE  # let the server explain what is wrong with it
    first = words[0].text
    if first in _READ_KEYWORDS:
        return Route.QUERY
    if first == "PRAGMA":
        # `PRAGMA name = value` sets something; `PRAGMA name` and `PRAGMA name(arg)` read.
        return Route.EXECUTE if any(t.text == "=" for t in tokens) else Route.QUERY
    if first == "WITH":
        main = next((t.text for t in words[1:] if t.depth == 0 and t.text in _MAIN_KEYWORDS), None)
        return Route.QUERY if main in ("SELECT", "VALUES") else Route.EXECUTE
    if first == "BEGIN":
        return Route.BEGIN
    if first in ("COMMIT", "END"):
        return Route.COMMIT
    if first == "ROLLBACK" and not any(t.text == "TO" for t in words[1:]):
        return Route.ROLLBACK  # ROLLBACK TO [SAVEPOINT] x is a statement of the transaction
    return Route.EXECUTE


def split_script(script: str) -> list[str]:
    """The statements of a script, cut at each `;` outside string literals, quoted names,
    comments and trigger bodies (`CREATE TRIGGER ... BEGIN ...; ...; END`), as `sqlite3`
    reads one. Each is trimmed and without its `;`; empty ones are dropped.

    >>> split_script("CREATE TABLE t(x); -- c\nINSERT INTO t VALUES (';');;")
    ['CREATE TABLE t(x)', "INSERT INTO t VALUES (';')"]
    """
    statements: list[str] = []
    first: list[str] = []
    start, depth, content = 0, 0, False

    def cut(end: int) -> None:
        if content:
            statements.append(script[start:end].strip())

    for t in _tokens(script):
        if t.kind == "punct" and t.text == ";" and depth == 0:
            cut(t.at)
            start, first, content = t.at + 1, [], False
            continue
        content = True
        if t.kind != "word":
            continue
        if len(first) < 3:
            first.append(t.text)
        words = first + [""] * (3 - len(first))
        trigger = words[0] == "CREATE" and (
            words[1] == "TRIGGER" or (words[1] in ("TEMP", "TEMPORARY") and words[2] == "TRIGGER")
        )
        if trigger and t.text in ("BEGIN", "CASE"):
            depth += 1
        elif trigger and t.text == "END":
            depth = max(0, depth - 1)
    cut(len(script))
    return statements


def named_parameters(sql: str) -> list[str]:
    """The named parameters of a statement, with their prefix, in order of first use."""
    seen: dict[str, None] = {}
    for t in _tokens(sql):
        if t.kind == "param" and t.text[0] != "?":
            seen.setdefault(t.text)
    return list(seen)


def bind(sql: str, parameters: Any = None) -> pb.Statement:
    """The wire statement for `sql` with `parameters`: a sequence for `?` placeholders, or a
    mapping for named ones (`:name`, `@name`, `$name`; the keys may omit the prefix)."""
    statement = pb.Statement(sql=sql)
    if parameters is None:
        return statement
    if isinstance(parameters, Mapping):
        if any(t.kind == "param" and t.text[0] == "?" for t in _tokens(sql)):
            raise ProgrammingError(
                "the statement uses ? placeholders, but the parameters are a mapping: "
                "pass a sequence, or use :name placeholders"
            )
        for name in named_parameters(sql):
            value = _lookup(parameters, name)
            statement.named[name].CopyFrom(to_wire(value, f"parameter {name}"))
        return statement
    if isinstance(parameters, (str, bytes, bytearray)) or not hasattr(parameters, "__iter__"):
        raise ProgrammingError(
            f"parameters must be a sequence (for ?) or a mapping (for :name), "
            f"not {type(parameters).__name__}"
        )
    statement.positional.extend(
        to_wire(value, f"parameter {i}") for i, value in enumerate(parameters, start=1)
    )
    return statement


def _lookup(parameters: Mapping[str, Any], name: str) -> Any:
    for key in (name[1:], name):
        if key in parameters:
            return parameters[key]
    raise ProgrammingError(f"no value for the named parameter {name} in the parameters given")
