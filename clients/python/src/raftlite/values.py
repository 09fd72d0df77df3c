"""Python values to and from the wire's SQLite values, and PEP 249's type objects.

SQLite has five storage classes and raftlite sends them as they are: None, int, float, str and
bytes map one to one, both ways. A few more Python types are accepted as parameters the way
the `sqlite3` module's default adapters store them: bool as an integer, bytearray and
memoryview as a blob, and dates and times as ISO 8601 text (PEP 249's `Date`/`Timestamp`
constructors produce them). Rows come back with exactly the stored class.
"""

from __future__ import annotations

import datetime
import time
from typing import Any, Callable, Union

from .errors import DataError, InterfaceError, ProgrammingError
from .wire import pb

SQLValue = Union[None, int, float, str, bytes]

_I64_MIN, _I64_MAX = -(2**63), 2**63 - 1


def to_wire(value: Any, where: str = "parameter") -> pb.Value:
    """The wire value of a Python parameter; `where` names it in error messages."""
    if value is None:
        return pb.Value(null=pb.Null())
    if isinstance(value, int):  # bool is an int: True is 1, as in SQLite
        if not _I64_MIN <= value <= _I64_MAX:
            raise DataError(f"{where}: {value} does not fit SQLite's 64-bit integer")
        return pb.Value(integer=int(value))
    if isinstance(value, float):
        return pb.Value(real=value)
    if isinstance(value, str):
        return pb.Value(text=value)
    if isinstance(value, (bytes, bytearray, memoryview)):
        return pb.Value(blob=bytes(value))
    if isinstance(value, datetime.datetime):
        return pb.Value(text=value.isoformat(" "))
    if isinstance(value, (datetime.date, datetime.time)):
        return pb.Value(text=value.isoformat())
    raise ProgrammingError(
        f"{where}: type {type(value).__name__} is not supported "
        "(use None, int, float, str, bytes, or a date/time)"
    )


def from_wire(value: pb.Value) -> SQLValue:
    """The Python value of a wire value."""
    kind = value.WhichOneof("kind")
    if kind == "null":
        return None
    if kind == "integer":
        return value.integer
    if kind == "real":
        return value.real
    if kind == "text":
        return value.text
    if kind == "blob":
        return value.blob
    raise InterfaceError("the server sent a value without a type (a malformed message)")


def row_from_wire(row: pb.Row) -> tuple[SQLValue, ...]:
    return tuple(from_wire(v) for v in row.values)


class DBAPITypeObject:
    """A PEP 249 type object: equal to the declared column types of its kind.

    A cursor's `description` carries each column's declared type (`"INTEGER"`,
    `"VARCHAR(20)"`, ...) as its type code; it compares equal to the type object of its
    SQLite affinity, e.g. `description[0][1] == raftlite.NUMBER`.
    """

    def __init__(self, name: str, matches: Callable[[str], bool]) -> None:
        self.name = name
        self._matches = matches

    def __eq__(self, other: object) -> bool:
        if isinstance(other, str):
            return self._matches(other.upper())
        return other is self

    def __ne__(self, other: object) -> bool:
        return not self.__eq__(other)

    def __hash__(self) -> int:
        return hash(self.name)

    def __repr__(self) -> str:
        return f"raftlite.{self.name}"


def affinity(decl_type: str) -> str:
    """SQLite's column affinity of a declared type (the rules of sqlite.org/datatype3.html)."""
    t = decl_type.upper()
    if "INT" in t:
        return "INTEGER"
    if any(w in t for w in ("CHAR", "CLOB", "TEXT")):
        return "TEXT"
    if "BLOB" in t or not t:
        return "BLOB"
    if any(w in t for w in ("REAL", "FLOA", "DOUB")):
        return "REAL"
    return "NUMERIC"


STRING = DBAPITypeObject("STRING", lambda t: affinity(t) == "TEXT")
BINARY = DBAPITypeObject("BINARY", lambda t: affinity(t) == "BLOB")
NUMBER = DBAPITypeObject("NUMBER", lambda t: affinity(t) in ("INTEGER", "REAL", "NUMERIC"))
DATETIME = DBAPITypeObject("DATETIME", lambda t: "DATE" in t or "TIME" in t)
ROWID = DBAPITypeObject("ROWID", lambda t: affinity(t) == "INTEGER")

Date = datetime.date
Time = datetime.time
Timestamp = datetime.datetime
Binary = bytes


def DateFromTicks(ticks: float) -> datetime.date:  # noqa: N802 - PEP 249 names
    return Date(*time.localtime(ticks)[:3])


def TimeFromTicks(ticks: float) -> datetime.time:  # noqa: N802
    return Time(*time.localtime(ticks)[3:6])


def TimestampFromTicks(ticks: float) -> datetime.datetime:  # noqa: N802
    return Timestamp(*time.localtime(ticks)[:6])


def type_code(decl_type: str) -> str | None:
    """The `description` type code of a column: its declared type, None for an expression."""
    return decl_type or None
