"""raftlite: a Python DB-API 2.0 (PEP 249) client for raftlite, highly available SQLite over
Raft.

    import raftlite
    conn = raftlite.connect("raftlite://app:TOKEN@raftlite:7000?tls_ca=/etc/raftlite/ca.crt")
    cur = conn.cursor()
    cur.execute("UPDATE counter SET n = n + 1 RETURNING n")
    print(cur.fetchone()[0]); conn.commit()

See README.md for the URL, transactions, read consistency and errors.
"""

from __future__ import annotations

from typing import Any

from .connection import Connection
from .cursor import Cursor
from .errors import (
    DatabaseError,
    DataError,
    Error,
    IntegrityError,
    InterfaceError,
    InternalError,
    NotAuthenticated,
    NotSupportedError,
    OperationalError,
    PermissionDenied,
    ProgrammingError,
    TransactionAborted,
    Warning,
)
from .values import (
    BINARY,
    DATETIME,
    NUMBER,
    ROWID,
    STRING,
    Binary,
    Date,
    DateFromTicks,
    Time,
    TimeFromTicks,
    Timestamp,
    TimestampFromTicks,
)

apilevel = "2.0"
# Threads may share the module, not connections (a connection holds one transaction).
threadsafety = 1
# `?` placeholders; a mapping of parameters binds `:name` (also `@name`, `$name`) instead.
paramstyle = "qmark"


def connect(
    url: str,
    *,
    timeout: float = 5.0,
    retry_deadline: float = 10.0,
    consistency: str = "linearizable",
    autocommit: bool = False,
    **unknown: Any,
) -> Connection:
    """Opens a connection to the cluster at `url`.

    url: `raftlite://[NAME:TOKEN@]host:port[,host:port...][?tls_ca=PATH]`.
    timeout: seconds one call may take (a whole query, or one write attempt).
    retry_deadline: seconds to keep retrying a call that failed in a retryable way.
    consistency: how fresh reads must be: "linearizable", "stale", "bounded:N",
        "at_index:N" or "read_your_writes".
    autocommit: False (as in sqlite3): writes open a transaction that `commit()` ends.

    Nothing is dialed yet: nodes are connected on first use.
    """
    if unknown:
        raise InterfaceError(f"unknown connect() options: {', '.join(sorted(unknown))}")
    return Connection(
        url,
        timeout=timeout,
        retry_deadline=retry_deadline,
        consistency=consistency,
        autocommit=autocommit,
    )


__all__ = [
    "BINARY",
    "DATETIME",
    "NUMBER",
    "ROWID",
    "STRING",
    "Binary",
    "Connection",
    "Cursor",
    "DataError",
    "DatabaseError",
    "Date",
    "DateFromTicks",
    "Error",
    "IntegrityError",
    "InterfaceError",
    "InternalError",
    "NotAuthenticated",
    "NotSupportedError",
    "OperationalError",
    "PermissionDenied",
    "ProgrammingError",
    "Time",
    "TimeFromTicks",
    "Timestamp",
    "TimestampFromTicks",
    "TransactionAborted",
    "Warning",
    "apilevel",
    "connect",
    "paramstyle",
    "threadsafety",
]
