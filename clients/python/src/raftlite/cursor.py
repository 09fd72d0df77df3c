"""A PEP 249 cursor: runs one statement at a time and holds its result.

A query's rows are collected when it runs (the server streams them in batches), so the
fetch methods never go back to the network and a cursor's result stays valid whatever the
connection does next. Writes report `rowcount` (rows changed) and `lastrowid`, and the rows of
`INSERT/UPDATE/DELETE ... RETURNING`, which the server sends with the write's result.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Sequence
from types import TracebackType
from typing import TYPE_CHECKING, Any, Optional

from .errors import InterfaceError, ProgrammingError
from .statements import Route, bind, route, split_script
from .values import SQLValue, row_from_wire, type_code
from .wire import pb

if TYPE_CHECKING:
    from .connection import Connection

Row = tuple[SQLValue, ...]
# name, type_code, display_size, internal_size, precision, scale, null_ok
Description = tuple[str, Optional[str], None, None, None, None, None]


class Cursor:
    """Runs statements on its connection; see the module docstring."""

    def __init__(self, connection: Connection) -> None:
        self.connection = connection
        #: Rows `fetchmany()` returns by default.
        self.arraysize = 1
        self._closed = False
        self._lastrowid: int | None = None
        self._reset()

    def _reset(self) -> None:
        self.description: tuple[Description, ...] | None = None
        #: Rows the last write changed; -1 after a query (PEP 249).
        self.rowcount = -1
        self._rows: list[Row] = []
        self._next = 0

    @property
    def lastrowid(self) -> int | None:
        """The rowid of the last row the last write inserted, as SQLite's
        `last_insert_rowid()` answers for it; None before any write."""
        return self._lastrowid

    def execute(self, operation: str, parameters: Any = None) -> Cursor:
        """Runs one statement with `?` parameters (a sequence) or named ones (a mapping)."""
        self._check_open()
        self._reset()
        kind = route(operation)
        conn = self.connection
        if kind is Route.QUERY:
            result = conn._query(bind(operation, parameters))
            self._set_rows(result.columns, result.rows)
        elif kind is Route.EXECUTE:
            response = conn._execute([bind(operation, parameters)])
            self._set_write(response.results)
        elif kind is Route.BEGIN:
            conn._begin()
        elif kind is Route.COMMIT:
            conn.commit()
        else:
            conn.rollback()
        return self

    def executemany(self, operation: str, seq_of_parameters: Iterable[Any]) -> Cursor:
        """Runs a write once per parameter set, all in one `Execute`: atomically (all or
        nothing) and in one round trip. `rowcount` is the total."""
        self._check_open()
        self._reset()
        if route(operation) is not Route.EXECUTE:
            raise ProgrammingError("executemany() runs writes only; use execute() for queries")
        statements = [bind(operation, p) for p in seq_of_parameters]
        if not statements:
            self.rowcount = 0
            return self
        self._set_write(self.connection._execute(statements).results)
        return self

    def executescript(self, sql_script: str) -> Cursor:
        """Runs the statements of a script (separated by `;`) as ONE atomic `Execute`: all
        or nothing, in one round trip. An open transaction is committed first, as `sqlite3`
        does. `BEGIN` and `COMMIT` statements in it are dropped (the script already is one
        transaction); `ROLLBACK` is refused. A script that starts with
        `PRAGMA foreign_keys = OFF` runs alone without foreign keys (a table rebuild)."""
        self._check_open()
        self._reset()
        statements = []
        for sql in split_script(sql_script):
            kind = route(sql)
            if kind is Route.ROLLBACK:
                raise ProgrammingError(
                    "a script runs as one transaction, all or nothing: it cannot ROLLBACK"
                )
            if kind in (Route.QUERY, Route.EXECUTE):
                statements.append(bind(sql))
        conn = self.connection
        if conn.in_transaction:
            conn.commit()
        if statements:
            self._set_write(conn._execute(statements, one_shot=True).results)
        return self

    def fetchone(self) -> Row | None:
        self._check_open()
        if self._next >= len(self._rows):
            return None
        row = self._rows[self._next]
        self._next += 1
        return row

    def fetchmany(self, size: int | None = None) -> list[Row]:
        self._check_open()
        count = self.arraysize if size is None else size
        rows = self._rows[self._next : self._next + max(count, 0)]
        self._next += len(rows)
        return rows

    def fetchall(self) -> list[Row]:
        self._check_open()
        rows = self._rows[self._next :]
        self._next = len(self._rows)
        return rows

    def close(self) -> None:
        self._closed = True
        self._rows = []

    def setinputsizes(self, sizes: Any) -> None:
        """Does nothing (PEP 249 allows it): values are sent with their own types."""

    def setoutputsize(self, size: Any, column: int | None = None) -> None:
        """Does nothing (PEP 249 allows it)."""

    def __iter__(self) -> Iterator[Row]:
        return self

    def __next__(self) -> Row:
        row = self.fetchone()
        if row is None:
            raise StopIteration
        return row

    def __enter__(self) -> Cursor:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    def _set_rows(self, columns: Sequence[pb.Column], rows: list[Row]) -> None:
        self.description = tuple(
            (c.name, type_code(c.decl_type), None, None, None, None, None) for c in columns
        )
        self._rows = rows

    def _set_write(self, results: Sequence[pb.StatementResult]) -> None:
        self.rowcount = sum(r.rows_affected for r in results)
        if results:
            self._lastrowid = results[-1].last_insert_rowid
        returning = [r for r in results if r.columns]
        if returning:
            rows = [row_from_wire(row) for r in returning for row in r.rows]
            self._set_rows(returning[0].columns, rows)

    def _check_open(self) -> None:
        if self._closed:
            raise InterfaceError("the cursor is closed")
        if self.connection.closed:
            raise InterfaceError("the cursor's connection is closed")
