"""``_AppendCoalescer``: one client's concurrent appends share one call.

A gRPC call costs far more CPU (client and server) than one append's work in
the store, so concurrent writers of one client are bound by calls, not by
the store. The coalescer keeps at most one append call of its client in
flight: an append made while none is goes out at once as a plain ``Append``
(a lone writer pays nothing extra, and fails exactly as before); appends
made while one is in flight queue, and when it returns everything queued
goes out as one ``AppendBatch`` (a lone queued append as a plain
``Append``), and so on: after the callers of a returned call have run a
step, so that those who append again join the next call. The journal runs a
batch's appends concurrently, so its group commit shares transactions among
them.

Each caller gets its own result or its own error, the error that a plain
``Append`` failing with that status raises. A caller cancelled while its
append is queued takes it out (it is never sent); once sent it cannot be
recalled, as with a plain call (a ``request_id`` makes a retry safe). A
journal without ``AppendBatch`` (``UNIMPLEMENTED``) gets one ``Append`` per
append from then on; a batch over the journal's message limit
(``RESOURCE_EXHAUSTED``) is sent again one ``Append`` per append.
"""

from __future__ import annotations

import asyncio
from collections import deque

import grpc

from tailrunner.errors import TailrunnerError
from tailrunner.proto.v1 import journal_pb2, journal_pb2_grpc
from tailrunner.rpc_errors import ClientErrors, from_rpc_error, from_status
from tailrunner.security.channels import Metadata

#: The most appends in one ``AppendBatch`` (the journal's limit).
MAX_BATCH_APPENDS = 1000
#: Serialized bytes of appends in one batch, well below the 4 MiB a gRPC
#: server receives by default; a bigger append goes out alone.
MAX_BATCH_BYTES = 2 * 1024 * 1024

#: A batch refused with these reached no append: its appends go out one by one.
_SEND_ALONE = frozenset({grpc.StatusCode.UNIMPLEMENTED, grpc.StatusCode.RESOURCE_EXHAUSTED})

_Queued = tuple[journal_pb2.AppendRequest, "asyncio.Future[journal_pb2.AppendResponse]"]


class _AppendCoalescer:
    """Sends one client's appends, those made while one is in flight together."""

    def __init__(
        self,
        stub: journal_pb2_grpc.JournalAsyncStub,
        errors: ClientErrors,
        *,
        timeout: float | None,
        metadata: Metadata | None,
    ) -> None:
        self._stub = stub
        self._errors = errors
        self._timeout = timeout
        self._metadata = metadata
        self._busy = False  # a call of ours is in flight
        self._queue: deque[_Queued] = deque()
        self._batches = True  # False once the journal said UNIMPLEMENTED to AppendBatch
        self._sending: asyncio.Task[None] | None = None  # keeps the batch task alive

    async def append(self, request: journal_pb2.AppendRequest) -> journal_pb2.AppendResponse:
        """The journal's response to ``request``.

        :raises TailrunnerError: what a plain ``Append`` with this request raises.
        """
        if not self._batches:
            return await self._append_one(request)
        if not self._busy:
            self._busy = True
            try:
                return await self._append_one(request)
            finally:
                self._send_queued()
        future: asyncio.Future[journal_pb2.AppendResponse] = (
            asyncio.get_running_loop().create_future()
        )
        self._queue.append((request, future))
        # Cancelled while queued: the future is cancelled with the caller, and
        # _send_queued skips it.
        return await future

    async def _append_one(self, request: journal_pb2.AppendRequest) -> journal_pb2.AppendResponse:
        try:
            response: journal_pb2.AppendResponse = await self._stub.Append(
                request, timeout=self._timeout, metadata=self._metadata
            )
        except grpc.aio.AioRpcError as exc:
            raise from_rpc_error(exc, self._errors) from exc
        return response

    def _send_queued(self) -> None:
        """Send what is queued as the next call, or mark that none is in flight."""
        batch: list[_Queued] = []
        size = 0
        while self._queue and len(batch) < MAX_BATCH_APPENDS:
            request, future = self._queue[0]
            if future.done():  # its caller was cancelled
                self._queue.popleft()
                continue
            request_size = request.ByteSize()
            if batch and size + request_size > MAX_BATCH_BYTES:
                break
            batch.append(self._queue.popleft())
            size += request_size
        if not batch:
            self._busy = False
            return
        self._sending = asyncio.get_running_loop().create_task(self._send(batch))

    async def _send(self, batch: list[_Queued]) -> None:
        try:
            if len(batch) == 1 or not self._batches:
                await asyncio.gather(
                    *(self._resolve_one(request, future) for request, future in batch)
                )
            else:
                await self._send_batch(batch)
        except Exception as exc:  # a bug, not the journal's answer: no caller may hang on it
            for _, future in batch:
                if not future.done():
                    future.set_exception(exc)
        finally:
            for _, future in batch:
                future.cancel()  # only those still unresolved: this task was cancelled
            # After its callers have run a step: those that append again join
            # the next batch instead of one of them going out alone (an fsync
            # for one event) while the others queue behind it.
            asyncio.get_running_loop().call_soon(self._send_queued)

    async def _resolve_one(
        self, request: journal_pb2.AppendRequest, future: asyncio.Future[journal_pb2.AppendResponse]
    ) -> None:
        try:
            response = await self._append_one(request)
        except TailrunnerError as exc:
            if not future.done():
                future.set_exception(exc)
            return
        if not future.done():
            future.set_result(response)

    async def _send_batch(self, batch: list[_Queued]) -> None:
        request = journal_pb2.AppendBatchRequest(appends=[request for request, _ in batch])
        try:
            response: journal_pb2.AppendBatchResponse = await self._stub.AppendBatch(
                request, timeout=self._timeout, metadata=self._metadata
            )
        except grpc.aio.AioRpcError as exc:
            code = exc.code()
            if code in _SEND_ALONE:
                # Refused before any append ran, so plain calls are safe: an
                # older journal (remembered), or a batch over the journal's
                # message limit whose appends each fit.
                self._batches = self._batches and code != grpc.StatusCode.UNIMPLEMENTED
                await asyncio.gather(
                    *(self._resolve_one(request, future) for request, future in batch)
                )
                return
            for _, future in batch:
                if not future.done():
                    error = from_rpc_error(exc, self._errors)
                    error.__cause__ = exc
                    future.set_exception(error)
            return
        results = response.results
        if len(results) != len(batch):
            for _, future in batch:
                if not future.done():
                    future.set_exception(
                        self._errors.other(
                            f"AppendBatch: {len(results)} results for {len(batch)} appends"
                        )
                    )
            return
        for result, (_, future) in zip(results, batch, strict=True):
            if future.done():
                continue
            if result.HasField("response"):
                future.set_result(result.response)
                continue
            try:
                error = from_status(result.error, self._errors)
            except TailrunnerError as exc:  # a malformed detail, as from_rpc_error raises it
                error = exc
            future.set_exception(error)
