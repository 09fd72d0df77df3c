"""The PEP 249 exception hierarchy, and how a gRPC status becomes one of its classes.

The server reports every failure as a gRPC status whose code says what kind of failure it is
(`server/src/grpc/convert.rs` maps SQLite's result codes to them): that code picks the class,
so callers can branch on `except raftlite.IntegrityError` as they would with `sqlite3`. The
message keeps the server's own words (SQLite's message for SQL errors) and the code's name.
"""

from __future__ import annotations


class Warning(Exception):  # noqa: A001 - the name PEP 249 prescribes
    """Important warnings (PEP 249). raftlite raises none today."""


class Error(Exception):
    """Base class of every error this package raises (PEP 249).

    `code` is the gRPC status code name (`"FAILED_PRECONDITION"`, `"UNAVAILABLE"`, ...) when
    the error came from a server or the gRPC stack, else None; `server_message` is the
    status message as the server wrote it; `node` is the address that answered.
    """

    def __init__(
        self,
        message: str,
        *,
        code: str | None = None,
        server_message: str | None = None,
        node: str | None = None,
    ) -> None:
        super().__init__(message)
        self.code = code
        self.server_message = server_message
        self.node = node


class InterfaceError(Error):
    """Misuse of this package rather than a database failure: a bad URL or option, a closed
    connection or cursor, a malformed message from the server."""


class DatabaseError(Error):
    """Errors related to the database."""


class DataError(DatabaseError):
    """A value the database cannot take (e.g. an integer outside SQLite's 64-bit range)."""


class OperationalError(DatabaseError):
    """The cluster could not do the work now: no node reachable, no leader or quorum, a
    timeout, overload. Retrying later (or elsewhere) may succeed."""


class IntegrityError(DatabaseError):
    """A constraint (UNIQUE, NOT NULL, CHECK, FOREIGN KEY) rejected the write."""


class InternalError(DatabaseError):
    """The node failed internally (I/O error, corrupt page delta, unexpected state)."""


class ProgrammingError(DatabaseError):
    """The SQL or its parameters are wrong: syntax error, no such table, wrong number of
    parameters, or a statement raftlite refuses."""


class NotSupportedError(DatabaseError):
    """The server does not implement the call (e.g. a node older than this client)."""


class TransactionAborted(OperationalError):
    """The interactive transaction ended before it committed (the leader changed, or it was
    idle too long): nothing of it was applied. Run the whole transaction again."""


class NotAuthenticated(OperationalError):
    """The nodes refused the connection's credentials (UNAUTHENTICATED): the URL has no token,
    or a token the cluster does not know."""


class PermissionDenied(ProgrammingError):
    """The token lacks the role the call needs (a read token cannot write), or the statement is
    one raftlite never runs (ATTACH, ...) (PERMISSION_DENIED)."""


# gRPC code name -> the class raised for it. Codes missing here are internal errors.
_CLASS_BY_CODE: dict[str, type[Error]] = {
    # SQLite: syntax error, no such table, wrong parameter count, datatype mismatch.
    "INVALID_ARGUMENT": ProgrammingError,
    # SQLite: a constraint failed.
    "FAILED_PRECONDITION": IntegrityError,
    "ALREADY_EXISTS": IntegrityError,
    "PERMISSION_DENIED": PermissionDenied,
    "UNAUTHENTICATED": NotAuthenticated,
    "ABORTED": TransactionAborted,
    # No leader, no quorum, node unreachable or going down.
    "UNAVAILABLE": OperationalError,
    "DEADLINE_EXCEEDED": OperationalError,
    "CANCELLED": OperationalError,
    # Too large, or the node is saturated.
    "RESOURCE_EXHAUSTED": OperationalError,
    "NOT_FOUND": OperationalError,
    "OUT_OF_RANGE": DataError,
    "UNIMPLEMENTED": NotSupportedError,
    "INTERNAL": InternalError,
    "DATA_LOSS": InternalError,
    "UNKNOWN": InternalError,
}

# What a person can do about it, added to the message.
_HINT_BY_CODE: dict[str, str] = {
    "UNAUTHENTICATED": "the nodes require a valid token: give it in the URL as "
    "raftlite://NAME:TOKEN@host:port",
    "PERMISSION_DENIED": "the token's role does not allow this call, or raftlite never runs "
    "this statement",
    "ABORTED": "nothing of the transaction was applied; run it again from the start",
    "UNIMPLEMENTED": "the node is older than this client",
}


def error_for_status(code: str, message: str, node: str | None = None) -> Error:
    """The exception for a gRPC status `code` (its name) with the server's `message`.

    >>> str(error_for_status("FAILED_PRECONDITION", "UNIQUE constraint failed: t.k"))
    'UNIQUE constraint failed: t.k (FAILED_PRECONDITION)'
    """
    cls = _CLASS_BY_CODE.get(code, InternalError)
    text = f"{message or 'no message'} ({code}"
    if node:
        text += f" from {node}"
    text += ")"
    hint = _HINT_BY_CODE.get(code)
    if hint and not (code == "ABORTED" and "again" in message):  # the server said it already
        text += f": {hint}"
    return cls(text, code=code, server_message=message, node=node)


# What a node's DEADLINE_EXCEEDED says when it interrupted the request's statement at its
# deadline (`raftlite_client::STATEMENT_INTERRUPTED` on the server).
STATEMENT_INTERRUPTED = "SQLite interrupted it"


def is_retryable(code: str, message: str = "") -> bool:
    """Whether sending the same request again may succeed (as the Rust client decides): the
    node was unreachable, had no leader or quorum, or did not answer in time. A write is only
    resent under its first request id, so the server applies it once. A statement the node
    interrupted at its deadline is not resent: it would run as long again, holding every
    other write back."""
    if code == "DEADLINE_EXCEEDED" and STATEMENT_INTERRUPTED in message:
        return False
    return code in ("UNAVAILABLE", "DEADLINE_EXCEEDED")
