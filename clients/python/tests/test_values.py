"""Value conversions and PEP 249 type objects (no server needed)."""

import datetime

import pytest

import raftlite
from raftlite import InterfaceError
from raftlite.values import from_wire, to_wire
from raftlite.wire import pb


@pytest.mark.parametrize(
    "value", [None, 0, -(2**63), 2**63 - 1, 1.5, float("inf"), "", "héllo", b"", b"\x00\x01"]
)
def test_values_round_trip(value):
    assert from_wire(to_wire(value)) == value
    assert type(from_wire(to_wire(value))) is type(value)


def test_other_python_types_are_stored_as_sqlite3_stores_them():
    assert from_wire(to_wire(True)) == 1
    assert from_wire(to_wire(bytearray(b"ab"))) == b"ab"
    assert from_wire(to_wire(memoryview(b"ab"))) == b"ab"
    assert from_wire(to_wire(raftlite.Date(2024, 2, 29))) == "2024-02-29"
    stamp = raftlite.Timestamp(2024, 2, 29, 13, 5, 0)
    assert from_wire(to_wire(stamp)) == "2024-02-29 13:05:00"
    assert from_wire(to_wire(datetime.time(1, 2, 3))) == "01:02:03"


def test_a_value_without_a_type_is_an_interface_error():
    with pytest.raises(InterfaceError, match="without a type"):
        from_wire(pb.Value())


def test_type_objects_compare_equal_to_declared_types():
    assert "INTEGER" == raftlite.NUMBER and "INTEGER" == raftlite.ROWID
    assert "DOUBLE PRECISION" == raftlite.NUMBER and "DECIMAL(10,2)" == raftlite.NUMBER
    assert "VARCHAR(20)" == raftlite.STRING and "TEXT" != raftlite.NUMBER
    assert "BLOB" == raftlite.BINARY
    assert "DATETIME" == raftlite.DATETIME and "TEXT" != raftlite.DATETIME


def test_module_globals():
    assert raftlite.apilevel == "2.0"
    assert raftlite.threadsafety == 1
    assert raftlite.paramstyle == "qmark"
    for name in (
        "Warning",
        "Error",
        "InterfaceError",
        "DatabaseError",
        "DataError",
        "OperationalError",
        "IntegrityError",
        "InternalError",
        "ProgrammingError",
        "NotSupportedError",
    ):
        assert issubclass(getattr(raftlite, name), Exception)
    assert issubclass(raftlite.TransactionAborted, raftlite.OperationalError)
    assert issubclass(raftlite.IntegrityError, raftlite.DatabaseError)
    assert issubclass(raftlite.DatabaseError, raftlite.Error)
