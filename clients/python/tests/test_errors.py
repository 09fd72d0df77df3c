"""gRPC status -> PEP 249 exception (no server needed)."""

import pytest

import raftlite
from raftlite.errors import error_for_status, is_retryable


@pytest.mark.parametrize(
    "code, cls",
    [
        ("INVALID_ARGUMENT", raftlite.ProgrammingError),
        ("FAILED_PRECONDITION", raftlite.IntegrityError),
        ("PERMISSION_DENIED", raftlite.PermissionDenied),
        ("UNAUTHENTICATED", raftlite.NotAuthenticated),
        ("ABORTED", raftlite.TransactionAborted),
        ("UNAVAILABLE", raftlite.OperationalError),
        ("DEADLINE_EXCEEDED", raftlite.OperationalError),
        ("RESOURCE_EXHAUSTED", raftlite.OperationalError),
        ("UNIMPLEMENTED", raftlite.NotSupportedError),
        ("INTERNAL", raftlite.InternalError),
        ("SOMETHING_NEW", raftlite.InternalError),
    ],
)
def test_codes_map_to_pep249_classes(code, cls):
    err = error_for_status(code, "msg", "10.0.0.1:7000")
    assert type(err) is cls
    assert isinstance(err, raftlite.Error)
    assert err.code == code and err.server_message == "msg" and err.node == "10.0.0.1:7000"


def test_messages_keep_the_server_words_and_the_code():
    err = error_for_status("FAILED_PRECONDITION", "UNIQUE constraint failed: kv.k", "a:1")
    assert str(err) == "UNIQUE constraint failed: kv.k (FAILED_PRECONDITION from a:1)"
    err = error_for_status("UNAUTHENTICATED", "unknown token", "a:1")
    assert "unknown token (UNAUTHENTICATED from a:1)" in str(err)
    assert "raftlite://NAME:TOKEN@host:port" in str(err)
    err = error_for_status("ABORTED", "the leader changed")
    assert "run it again" in str(err)


def test_retryable_codes_are_those_of_the_rust_client():
    assert is_retryable("UNAVAILABLE") and is_retryable("DEADLINE_EXCEEDED")
    for code in (
        "INVALID_ARGUMENT",
        "FAILED_PRECONDITION",
        "PERMISSION_DENIED",
        "ABORTED",
        "RESOURCE_EXHAUSTED",
        "INTERNAL",
        "UNAUTHENTICATED",
    ):
        assert not is_retryable(code)
    # A statement the node interrupted at its deadline would only run as long again.
    assert not is_retryable(
        "DEADLINE_EXCEEDED",
        "the request's deadline passed while its statement ran; SQLite interrupted it",
    )
    assert is_retryable("DEADLINE_EXCEEDED", "the request did not complete within 5000 ms")
