"""Channels to the nodes, and the retry policy of the Rust client (`client/src/client.rs`).

Any node serves any call (followers forward writes and transaction calls to the leader), so
the client keeps one lazily connected channel per node and sends each call to the node that
answered last. A call that fails in a way where sending it again may succeed — UNAVAILABLE (no
leader, no quorum, node down or unreachable) or DEADLINE_EXCEEDED — is sent again, to the
leader when the server named it in the status metadata (`raftlite-leader-id`,
`raftlite-leader-addr`), else to the next node, after an exponential backoff with jitter,
until the retry deadline has passed. Every call the client makes is safe to resend (see
connection.py): writes go under the same request id, so the server applies them once.
"""

from __future__ import annotations

import random
import time
from collections.abc import Sequence
from dataclasses import dataclass, replace
from typing import Callable, TypeVar

import grpc

from .errors import Error, InterfaceError, error_for_status, is_retryable
from .wire import pb_grpc

T = TypeVar("T")

LEADER_ADDR_KEY = "raftlite-leader-addr"
# The deadline the node keeps, sent apart from gRPC's own (`grpc-timeout`): grpc-python ends
# a call locally at the deadline it sends, before the node's answer to a statement it
# interrupted at that deadline could arrive. So the call's gRPC deadline is ANSWER_GRACE
# later than the one the node gets here, as the Rust client waits past the deadline it sends.
TIMEOUT_KEY = "raftlite-timeout"
ANSWER_GRACE = 0.5
# Row batches and RETURNING results can exceed gRPC's default 4 MiB (the Rust client's limit).
MAX_RESPONSE_BYTES = 64 * 1024 * 1024
# gRPC reconnects to a failed node after a backoff that grows to minutes by default; a node
# that comes back (a restarted leader) should be usable again within seconds.
_CHANNEL_OPTIONS = [
    ("grpc.max_receive_message_length", MAX_RESPONSE_BYTES),
    ("grpc.initial_reconnect_backoff_ms", 100),
    ("grpc.min_reconnect_backoff_ms", 100),
    ("grpc.max_reconnect_backoff_ms", 2000),
    ("grpc.keepalive_time_ms", 10000),
    ("grpc.keepalive_timeout_ms", 5000),
]


# What gRPC's TLS says when a node answers its ClientHello in plaintext; and what a plaintext
# channel sees of a TLS node, which closes the connection (as a node going down does too).
_TLS_TO_PLAINTEXT = "WRONG_VERSION_NUMBER"
_PLAINTEXT_TO_TLS = "Socket closed"


@dataclass
class Failure(Exception):
    """A failed attempt: the gRPC code name, the message and what the server hinted."""

    code: str
    message: str
    node: str = ""
    leader_addr: str | None = None

    def to_error(self) -> Error:
        return error_for_status(self.code, self.message, self.node)


@dataclass(frozen=True)
class RetryPolicy:
    """How long one attempt may take, how long to keep retrying, and the backoff between."""

    timeout: float = 5.0
    retry_deadline: float = 10.0
    backoff_initial: float = 0.02
    backoff_max: float = 0.5


class Transport:
    """One channel per node, the node to try first, and the retry loop."""

    def __init__(
        self,
        nodes: Sequence[str],
        *,
        token: str | None,
        tls_ca_pem: bytes | None,
        policy: RetryPolicy,
    ) -> None:
        self.nodes = list(nodes)
        self.policy = policy
        self._credentials = (
            grpc.ssl_channel_credentials(root_certificates=tls_ca_pem)
            if tls_ca_pem is not None
            else None
        )
        self._metadata: tuple[tuple[str, str], ...] = ()
        if token is not None:
            header = f"Bearer {token.strip()}"
            if not header.isascii() or any(c in header for c in "\r\n"):
                raise InterfaceError("the token holds characters that cannot be sent in a header")
            self._metadata = (("authorization", header),)
        self._channels: dict[int, grpc.Channel] = {}
        self._preferred = 0

    @property
    def metadata(self) -> tuple[tuple[str, str], ...]:
        """The token and the node's deadline for a call (see TIMEOUT_KEY)."""
        millis = max(1, round(self.policy.timeout * 1000))
        return (*self._metadata, (TIMEOUT_KEY, f"{millis}m"))

    @property
    def preferred(self) -> int:
        """The node tried first: the one that last answered."""
        return self._preferred

    @property
    def call_timeout(self) -> float:
        """The gRPC deadline of a call: the node's, and the grace for its answer."""
        return self.policy.timeout + ANSWER_GRACE

    def stub(self, node: int) -> pb_grpc.SqlStub:
        channel = self._channels.get(node)
        if channel is None:
            target = self.nodes[node]
            channel = (
                grpc.secure_channel(target, self._credentials, options=_CHANNEL_OPTIONS)
                if self._credentials is not None
                else grpc.insecure_channel(target, options=_CHANNEL_OPTIONS)
            )
            self._channels[node] = channel
        return pb_grpc.SqlStub(channel)  # type: ignore[no-untyped-call] # generated, untyped

    def call(self, method: str, attempt: Callable[[pb_grpc.SqlStub], T]) -> T:
        """Runs `attempt` (a call of Sql.`method`) on the preferred node; a retryable failure
        runs it again on the next node (or the hinted leader) with backoff until the retry
        deadline. Raises the PEP 249 error of the last failure."""
        started = time.monotonic()
        delay = self.policy.backoff_initial
        node = self._preferred
        attempts = 0
        # Each node's last failure, for the final error: the last one alone depends on which
        # node happened to be tried last (a dead one, when another knew what was wrong).
        last: dict[str, str] = {}
        while True:
            attempts += 1
            try:
                result = attempt(self.stub(node))
            except grpc.RpcError as e:
                failure = _failure(e, self.nodes[node], method)
            except Failure as e:  # raised by `attempt` itself, e.g. a stream cut short
                failure = replace(e, node=self.nodes[node])
            else:
                self._preferred = node
                return result
            elapsed = time.monotonic() - started
            if self._credentials is not None and _TLS_TO_PLAINTEXT in failure.message:
                raise InterfaceError(
                    f"this connection speaks TLS and the node {failure.node} does not (it "
                    "answered in plaintext): connect without tls_ca, or start the node with "
                    "--tls-cert and --tls-key"
                )
            if not is_retryable(failure.code, failure.message):
                raise failure.to_error()
            last[self.nodes[node]] = f"{failure.message} ({failure.code})"
            if elapsed >= self.policy.retry_deadline:
                error = failure.to_error()
                hint = ""
                if self._credentials is None and _PLAINTEXT_TO_TLS in failure.message:
                    hint = (
                        "; if the nodes speak TLS, give the CA that signed their certificates "
                        "(tls_ca=FILE in the URL)"
                    )
                others = "; ".join(
                    f"{addr}: {why}" for addr, why in last.items() if addr != self.nodes[node]
                )
                error.args = (
                    f"{error.args[0]}; gave up after {attempts} attempts in {elapsed:.1f} s "
                    f"on {', '.join(self.nodes)}{hint}"
                    + (f"; the other nodes last answered: {others}" if others else ""),
                )
                raise error
            node = self._next_node(node, failure)
            self._preferred = node
            pause = random.uniform(delay / 2, delay)
            time.sleep(min(pause, self.policy.retry_deadline - elapsed))
            delay = min(delay * 2, self.policy.backoff_max)

    def _next_node(self, current: int, failure: Failure) -> int:
        """The hinted leader if it is one of our nodes, else the next node in turn."""
        if failure.leader_addr:
            hinted = _host_port(failure.leader_addr)
            for i, node in enumerate(self.nodes):
                if node == hinted:
                    return i
        return (current + 1) % len(self.nodes)

    def close(self) -> None:
        for channel in self._channels.values():
            channel.close()
        self._channels.clear()


def _failure(e: grpc.RpcError, node: str, method: str) -> Failure:
    """Reads code, message and leader hint from a failed call (`grpc.RpcError` is also a
    `grpc.Call` for every failure of a call)."""
    code = e.code() if isinstance(e, grpc.Call) else grpc.StatusCode.UNKNOWN
    message = e.details() if isinstance(e, grpc.Call) else str(e)
    leader = None
    if isinstance(e, grpc.Call):
        for key, value in [*(e.trailing_metadata() or ()), *(e.initial_metadata() or ())]:
            if key == LEADER_ADDR_KEY and isinstance(value, str) and value:
                leader = value
    if not message:
        message = (
            f"the node does not implement Sql.{method}"
            if code == grpc.StatusCode.UNIMPLEMENTED
            else f"Sql.{method} failed without a message"
        )
    return Failure(code.name, message, node, leader)


def _host_port(addr: str) -> str:
    """`host:port` of an address as the server reports it (maybe with a scheme)."""
    addr = addr.strip().rstrip("/")
    return addr.split("://", 1)[1] if "://" in addr else addr
