"""The gRPC and protobuf modules, generated from `proto/proto/raftlite/v1/sql.proto` when the
package is built (see setup.py), imported in one place with an error that says how to get them.
"""

from __future__ import annotations

try:
    from .v1 import sql_pb2 as pb
    from .v1 import sql_pb2_grpc as pb_grpc
except ImportError as e:  # pragma: no cover - only in a checkout that was never built
    raise ImportError(
        "raftlite's gRPC modules are missing: they are generated from the project's proto "
        "when the package is built; install it with `pip install ./clients/python` (or "
        f"`pip install -e ./clients/python` to work on it). Cause: {e}"
    ) from e

__all__ = ["pb", "pb_grpc"]
