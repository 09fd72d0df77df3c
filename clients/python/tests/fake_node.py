"""An in-process stand-in for a raftlite node's Sql service, for tests of the client's
protocol (which call, which request id, which transaction, which retries) without a cluster.

Each node records the requests it got; `fail` queues statuses it answers instead, in order.
"""

from __future__ import annotations

from concurrent import futures
from typing import Any

import grpc

from raftlite.wire import pb, pb_grpc


class FakeNode(pb_grpc.SqlServicer):
    def __init__(self) -> None:
        self.requests: list[tuple[str, Any]] = []
        self.failures: dict[str, list[tuple[grpc.StatusCode, str, str | None]]] = {}
        self.log_index = 0
        self.server = grpc.server(futures.ThreadPoolExecutor(max_workers=4))
        pb_grpc.add_SqlServicer_to_server(self, self.server)
        self.addr = f"127.0.0.1:{self.server.add_insecure_port('127.0.0.1:0')}"
        self.server.start()

    def fail(
        self, method: str, code: grpc.StatusCode, message: str = "no", leader: str | None = None
    ) -> None:
        """The next `method` call answers `code`, naming `leader` in the metadata."""
        self.failures.setdefault(method, []).append((code, message, leader))

    def calls(self, method: str) -> list[Any]:
        return [r for m, r in self.requests if m == method]

    def _answer(self, method: str, request: Any, context: grpc.ServicerContext) -> None:
        self.requests.append((method, request))
        queued = self.failures.get(method)
        if queued:
            code, message, leader = queued.pop(0)
            if leader:
                context.set_trailing_metadata(
                    (("raftlite-leader-id", "2"), ("raftlite-leader-addr", leader))
                )
            context.abort(code, message)

    def Execute(self, request, context):
        self._answer("Execute", request, context)
        self.log_index += 1
        returning = "RETURNING" in request.statements[0].sql.upper()
        return pb.ExecuteResponse(
            results=[
                pb.StatementResult(
                    rows_affected=1,
                    last_insert_rowid=41 + i,
                    columns=[pb.Column(name="n", decl_type="INTEGER")] if returning else [],
                    rows=[pb.Row(values=[pb.Value(integer=i)])] if returning else [],
                )
                for i, _ in enumerate(request.statements, start=1)
            ],
            log_index=0 if request.transaction_id else self.log_index,
        )

    def Query(self, request, context):
        self._answer("Query", request, context)
        yield pb.QueryResponse(
            columns=[pb.Column(name="a", decl_type="INTEGER"), pb.Column(name="b")],
            rows=[pb.Row(values=[pb.Value(integer=1), pb.Value(text="x")])],
        )
        yield pb.QueryResponse(
            rows=[pb.Row(values=[pb.Value(integer=2), pb.Value(null=pb.Null())])], done=True
        )

    def Begin(self, request, context):
        self._answer("Begin", request, context)
        return pb.BeginResponse(transaction_id=f"tx{len(self.calls('Begin'))}")

    def Commit(self, request, context):
        self._answer("Commit", request, context)
        self.log_index += 1
        return pb.CommitResponse(log_index=self.log_index)

    def Rollback(self, request, context):
        self._answer("Rollback", request, context)
        return pb.RollbackResponse()

    def stop(self) -> None:
        self.server.stop(grace=None)
