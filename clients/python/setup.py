"""Build hook: generate the gRPC and protobuf modules from the project's proto.

The wire schema lives once, in `proto/proto/raftlite/v1/` at the repository root; the Rust
crates compile it with prost, and this package compiles it with grpcio-tools while it is built
(`pip install ./clients/python`), so the Python client can never drift from the server's
schema and nothing generated is committed. The modules land in `raftlite/v1/` (the proto
package `raftlite.v1`), which is where the generated imports expect them.

The generated code refuses to import under a grpcio or protobuf runtime older than the
generator, so the package's dependencies are read from the build environment here.
"""

from __future__ import annotations

import os
import re
from importlib.metadata import version
from pathlib import Path

from setuptools import setup

HERE = Path(__file__).resolve().parent
# The proto root: RAFTLITE_PROTO_DIR, else the repository's `proto/proto`.
PROTO_ROOT = Path(os.environ.get("RAFTLITE_PROTO_DIR", HERE / ".." / ".." / "proto" / "proto"))
# Only the public SQL API; it imports nothing.
PROTOS = ["raftlite/v1/sql.proto"]
OUT = HERE / "src"


def generate() -> str:
    """Runs protoc on PROTOS into src/raftlite/v1/; returns the protobuf gencode version."""
    from grpc_tools import protoc  # a build requirement (pyproject.toml)

    package = OUT / "raftlite" / "v1"
    missing = [p for p in PROTOS if not (PROTO_ROOT / p).is_file()]
    if missing and (package / "sql_pb2.py").is_file():
        # An unpacked sdist: it carries the modules generated when it was made.
        return gencode_version(package)
    if missing:
        raise SystemExit(
            f"raftlite: cannot find {', '.join(missing)} under {PROTO_ROOT.resolve()}: build "
            "from a checkout of the raftlite repository, or set RAFTLITE_PROTO_DIR to its "
            "proto/proto directory"
        )
    include = Path(protoc.__file__).resolve().parent / "_proto"  # google/protobuf/*.proto
    args = [
        "grpc_tools.protoc",
        f"-I{PROTO_ROOT}",
        f"-I{include}",
        f"--python_out={OUT}",
        f"--pyi_out={OUT}",
        f"--grpc_python_out={OUT}",
        *PROTOS,
    ]
    if protoc.main(args) != 0:
        raise SystemExit(f"raftlite: protoc failed on {PROTOS} (arguments: {args})")
    (package / "__init__.py").write_text(
        '"""Generated from proto/proto/raftlite/v1/sql.proto at build time; do not edit."""\n'
    )
    return gencode_version(package)


def gencode_version(package: Path) -> str:
    """The protobuf version the generated code was made for (its header says)."""
    header = (package / "sql_pb2.py").read_text()
    found = re.search(r"^# Protobuf Python Version: (\d+)\.(\d+)\.(\d+)", header, re.M)
    if not found:
        raise SystemExit("raftlite: the generated sql_pb2.py names no protobuf version")
    return ".".join(found.groups())


def dependencies(gencode: str) -> list[str]:
    """grpcio and protobuf runtimes that accept the code just generated."""
    major = int(gencode.split(".")[0])
    return [
        f"grpcio>={version('grpcio-tools')}",
        f"protobuf>={gencode},<{major + 1}",
    ]


# Generated before `setup()` runs: setuptools finds the `raftlite.v1` package (and its files)
# only if it exists, and the dependencies depend on the generator. Every build (wheel,
# editable, sdist) runs this file, with grpcio-tools installed from pyproject.toml.
setup(install_requires=dependencies(generate()))
