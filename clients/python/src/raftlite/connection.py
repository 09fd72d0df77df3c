"""A PEP 249 connection: the cluster's nodes, the open transaction, the read consistency and
the read-your-writes token.

Transactions behave as in Python's `sqlite3` module: unless `autocommit` is on, the first
write (any statement sent to `Execute`) opens an interactive transaction (`Begin`, which the
server runs like SQLite's `BEGIN IMMEDIATE` on the leader); every later statement, reads
included, runs inside it and sees its writes; `commit()` and `rollback()` end it. Outside a
transaction each write is one `Execute` of its own.

Every call that fails where sending it again may succeed is sent again (see transport.py),
and that is safe for each of them: a write (`Execute`, also inside a transaction) and a
`Commit` carry a request id under which the server answers a repeat with the first result;
reads and `Rollback` change nothing; a `Begin` whose answer was lost leaves a transaction that
the server rolls back after its idle timeout. The transaction itself lives on the leader, and
any node forwards its calls there; when the leader changes the transaction is aborted, and
the next call says so (`TransactionAborted`): the application runs it again from the start.

The connection remembers the highest Raft log index of its acknowledged writes and commits,
so `consistency="read_your_writes"` reads, on whatever node answers, data that includes them.
"""

from __future__ import annotations

import atexit
import os
import sys
import time
import uuid
import weakref
from collections.abc import Sequence
from pathlib import Path
from types import TracebackType
from typing import Any, Callable, TypeVar

from .cursor import Cursor
from .errors import Error, InterfaceError, OperationalError, TransactionAborted
from .transport import Failure, RetryPolicy, Transport
from .url import Target, parse_url
from .values import SQLValue, row_from_wire
from .wire import pb, pb_grpc

T = TypeVar("T")
Metadata = tuple[tuple[str, str], ...]

# How long a connection that goes away with a transaction open (garbage collected, or the
# interpreter exiting) waits for its rollback: it ends the transaction at once instead of
# after the server's idle timeout, during which every writer of the cluster waits.
ABANDON_TIMEOUT = 1.0

# Connections not closed yet, rolled back when the interpreter exits.
_OPEN: weakref.WeakSet[Connection] = weakref.WeakSet()


@atexit.register
def _abandon_open_connections() -> None:
    for conn in list(_OPEN):
        conn._abandon()


def new_request_id() -> str:
    """A fresh request id: a UUIDv7 (48 bits of Unix milliseconds, then random bits), as the
    Rust client makes them. Ids made at nearly the same time sort together, so the writes of
    one group commit share pages of the server's request-id index instead of each changing a
    page of its own (random ids), which every node would write."""
    value = (time.time_ns() // 1_000_000) << 80 | int.from_bytes(os.urandom(10), "big")
    value = (value & ~(0xF << 76)) | 0x7 << 76  # version 7
    value = (value & ~(0x3 << 62)) | 0x2 << 62  # RFC 4122 variant
    return str(uuid.UUID(int=value))


CONSISTENCY_LEVELS = "linearizable, stale, bounded:N, at_index:N, read_your_writes"


def parse_consistency(level: str) -> str:
    """Checks a read consistency level and returns it normalized (lower case, no spaces)."""
    text = str(level).strip().lower().replace("-", "_")
    name, colon, number = text.partition(":")
    if not colon and name in ("linearizable", "stale", "read_your_writes"):
        return name
    if colon and name in ("bounded", "at_index") and number.strip().isdigit():
        return f"{name}:{int(number)}"
    raise InterfaceError(f"unknown read consistency {level!r} (use one of {CONSISTENCY_LEVELS})")


class QueryResult:
    """The columns and rows a statement returned."""

    def __init__(self, columns: Sequence[pb.Column], rows: list[tuple[SQLValue, ...]]) -> None:
        self.columns = list(columns)
        self.rows = rows


class Connection:
    """A connection to a raftlite cluster through any of its nodes (see `raftlite.connect`).

    Not safe to share between threads (PEP 249 threadsafety 1): open one per thread.
    """

    def __init__(
        self,
        url: str,
        *,
        timeout: float = 5.0,
        retry_deadline: float = 10.0,
        consistency: str = "linearizable",
        autocommit: bool = False,
    ) -> None:
        self.target: Target = parse_url(url)
        if timeout <= 0 or retry_deadline < 0:
            raise InterfaceError("timeout must be positive and retry_deadline not negative")
        ca_pem = None
        if self.target.tls_ca is not None:
            try:
                ca_pem = Path(self.target.tls_ca).read_bytes()
            except OSError as e:
                raise InterfaceError(
                    f"cannot read the tls_ca file {self.target.tls_ca}: {e}"
                ) from e
            if b"-----BEGIN CERTIFICATE-----" not in ca_pem:
                raise InterfaceError(
                    f"the tls_ca file {self.target.tls_ca} holds no PEM certificate (it should "
                    "be the CA certificate that signed the nodes' certificates, ca.crt)"
                )
        self._transport = Transport(
            self.target.nodes,
            token=self.target.token,
            tls_ca_pem=ca_pem,
            policy=RetryPolicy(timeout=timeout, retry_deadline=retry_deadline),
        )
        self._consistency = parse_consistency(consistency)
        self._autocommit = bool(autocommit)
        self._transaction_id: str | None = None
        self._last_write_index = 0
        self._closed = False
        _OPEN.add(self)

    # --- PEP 249 -------------------------------------------------------------------------

    def cursor(self) -> Cursor:
        self._check_open()
        return Cursor(self)

    def commit(self) -> None:
        """Commits the open transaction, if any. A commit whose answer is lost is resent under
        the same request id, on any node, and answers with the first result."""
        self._check_open()
        if self._transaction_id is None:
            return
        request = pb.CommitRequest(transaction_id=self._transaction_id, request_id=new_request_id())
        try:
            response = self._unary("Commit", request)
        finally:
            # Committed, aborted, or left to the server's idle timeout: over for this client.
            self._transaction_id = None
        self._note_write(response.log_index)

    def rollback(self) -> None:
        """Rolls the open transaction back, if any. A transaction the server already ended
        (aborted, timed out) counts as rolled back: nothing of it was applied either way."""
        self._check_open()
        if self._transaction_id is None:
            return
        request = pb.RollbackRequest(transaction_id=self._transaction_id)
        self._transaction_id = None
        try:
            self._unary("Rollback", request)
        except TransactionAborted:
            pass
        except OperationalError as e:
            if e.code != "NOT_FOUND":
                raise

    def close(self) -> None:
        """Rolls back an open transaction (as PEP 249 asks) and closes the channels."""
        if self._closed:
            return
        try:
            self.rollback()
        except Error:
            pass  # the server rolls it back after its idle timeout
        finally:
            self._closed = True
            self._transport.close()
            _OPEN.discard(self)

    def __enter__(self) -> Connection:
        return self

    def __del__(self) -> None:
        if not sys.is_finalizing():
            self._abandon()

    def _abandon(self) -> None:
        """Closes a connection the application let go of without `close()`: one Rollback of
        an open transaction, on the node that last answered, bounded by ABANDON_TIMEOUT and
        never retried (the server's idle timeout ends it anyway); errors are ignored."""
        if getattr(self, "_closed", True):
            return
        transaction, self._transaction_id = self._transaction_id, None
        self._closed = True
        try:
            if transaction is not None:
                transport = self._transport
                transport.stub(transport.preferred).Rollback(
                    pb.RollbackRequest(transaction_id=transaction),
                    timeout=ABANDON_TIMEOUT,
                    metadata=transport.metadata,
                )
        except Exception:  # noqa: BLE001 - best effort: the idle timeout ends it
            pass
        finally:
            self._transport.close()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        """As in `sqlite3`: commits if the block succeeded, else rolls back; does not close."""
        if exc_type is None:
            self.commit()
        elif not self._closed:
            self.rollback()

    # --- extensions ----------------------------------------------------------------------

    def execute(self, sql: str, parameters: Any = None) -> Cursor:
        """A new cursor that has run `sql` (a shortcut, as in `sqlite3`)."""
        return self.cursor().execute(sql, parameters)

    def executemany(self, sql: str, seq_of_parameters: Any) -> Cursor:
        return self.cursor().executemany(sql, seq_of_parameters)

    def executescript(self, sql_script: str) -> Cursor:
        """See `Cursor.executescript`: the script's statements as one atomic `Execute`."""
        return self.cursor().executescript(sql_script)

    @property
    def autocommit(self) -> bool:
        """Off (the default): writes open a transaction that `commit()` ends. On: each write
        commits by itself. Turning it on commits the open transaction (as `sqlite3` does)."""
        return self._autocommit

    @autocommit.setter
    def autocommit(self, value: bool) -> None:
        if value and not self._autocommit:
            self.commit()
        self._autocommit = bool(value)

    @property
    def consistency(self) -> str:
        """Read consistency of queries outside a transaction: linearizable (default), stale,
        bounded:N (at most N log entries behind), at_index:N, or read_your_writes."""
        return self._consistency

    @consistency.setter
    def consistency(self, level: str) -> None:
        self._consistency = parse_consistency(level)

    @property
    def in_transaction(self) -> bool:
        return self._transaction_id is not None

    @property
    def last_write_index(self) -> int:
        """The read-your-writes token: the highest log index of this connection's
        acknowledged writes and commits; 0 before the first."""
        return self._last_write_index

    @property
    def closed(self) -> bool:
        return self._closed

    # --- used by Cursor ------------------------------------------------------------------

    def _query(self, statement: pb.Statement) -> QueryResult:
        """Runs a read, inside the open transaction if there is one, else at the connection's
        consistency. Reads change nothing, so a failed one is simply sent again."""
        request = pb.QueryRequest(statement=statement)
        if self._transaction_id is not None:
            request.transaction_id = self._transaction_id
        else:
            request.consistency.CopyFrom(self._read_consistency())

        def attempt(stub: pb_grpc.SqlStub, timeout: float, metadata: Metadata) -> QueryResult:
            columns: list[pb.Column] = []
            rows: list[tuple[SQLValue, ...]] = []
            done = False
            for message in stub.Query(request, timeout=timeout, metadata=metadata):
                if not columns:
                    columns = list(message.columns)
                rows.extend(row_from_wire(r) for r in message.rows)
                done = done or message.done
            if not done:
                raise Failure("UNAVAILABLE", "the query stream ended before its last message")
            return QueryResult(columns, rows)

        return self._call("Query", attempt, in_transaction=self._transaction_id is not None)

    def _execute(
        self, statements: list[pb.Statement], *, one_shot: bool = False
    ) -> pb.ExecuteResponse:
        """Runs writes atomically, under a fresh request id: in the open transaction (opened
        now unless autocommit or `one_shot`), or as one transaction of their own."""
        if self._transaction_id is None and not self._autocommit and not one_shot:
            self._begin()
        in_transaction = self._transaction_id is not None
        request = pb.ExecuteRequest(
            request_id=new_request_id(),
            statements=statements,
            transaction_id=self._transaction_id or "",
        )
        response: pb.ExecuteResponse = self._unary(
            "Execute", request, in_transaction=in_transaction
        )
        self._note_write(response.log_index)  # 0 inside a transaction: its Commit counts
        return response

    def _begin(self) -> None:
        """Opens a transaction (resent on failure: a lost answer leaves an orphan transaction,
        holding the write lock until the server's idle timeout rolls it back)."""
        if self._transaction_id is not None:
            raise OperationalError("cannot start a transaction within a transaction")
        response = self._unary("Begin", pb.BeginRequest())
        self._transaction_id = response.transaction_id

    # --- internals -----------------------------------------------------------------------

    def _unary(self, method: str, request: Any, *, in_transaction: bool = False) -> Any:
        """Calls the unary method `method` (Execute, Begin, Commit, Rollback) with `request`."""
        return self._call(
            method,
            lambda stub, t, md: getattr(stub, method)(request, timeout=t, metadata=md),
            in_transaction=in_transaction,
        )

    def _call(
        self,
        method: str,
        attempt: Callable[[pb_grpc.SqlStub, float, Metadata], T],
        *,
        in_transaction: bool = False,
    ) -> T:
        """Runs one call through the transport, with the timeout and the token; an ABORTED
        answer inside a transaction means the server has ended it."""
        self._check_open()
        timeout = self._transport.call_timeout
        metadata = self._transport.metadata
        try:
            return self._transport.call(method, lambda stub: attempt(stub, timeout, metadata))
        except TransactionAborted:
            if in_transaction:
                self._transaction_id = None  # the server has ended it
            raise

    def _read_consistency(self) -> pb.ReadConsistency:
        name, _, number = self._consistency.partition(":")
        if name == "read_your_writes":
            if self._last_write_index == 0:
                return pb.ReadConsistency(linearizable=pb.Linearizable())
            return pb.ReadConsistency(at_index=pb.AtIndex(index=self._last_write_index))
        if name == "stale":
            return pb.ReadConsistency(stale=pb.Stale())
        if name == "bounded":
            return pb.ReadConsistency(bounded=pb.Bounded(max_lag=int(number)))
        if name == "at_index":
            return pb.ReadConsistency(at_index=pb.AtIndex(index=int(number)))
        return pb.ReadConsistency(linearizable=pb.Linearizable())

    def _note_write(self, log_index: int) -> None:
        self._last_write_index = max(self._last_write_index, log_index)

    def _check_open(self) -> None:
        if self._closed:
            raise InterfaceError("the connection is closed")

    def __repr__(self) -> str:
        state = "closed" if self._closed else ("in transaction" if self.in_transaction else "open")
        return f"<raftlite.Connection {','.join(self.target.nodes)} {state}>"
