"""``OperationsClient``: tailrunner's own client of ``google.longrunning.Operations``.

Unlike google-api-core's ``OperationsClient``, which polls ``GetOperation``
(1 s, growing to 20 s), it waits with ``WaitOperation``: the server answers
as soon as the journal has the completion, so a caller learns of it within
milliseconds. A wait longer than the server's cap (60 s by default) is
several ``WaitOperation`` calls in a row.

::

    async with OperationsClient.connect("127.0.0.1:7740") as ops:
        operation = await ops.wait("operations/…", timeout=300)
"""

from __future__ import annotations

import math
from collections.abc import AsyncIterator
from types import TracebackType
from typing import Any, Self

import anyio
import grpc
from google.longrunning import operations_proto_pb2 as lro
from google.protobuf.duration_pb2 import Duration

from tailrunner.errors import (
    JournalUnavailable,
    OperationError,
    OperationNotFound,
    TailrunnerError,
)
from tailrunner.operations.state import Operation
from tailrunner.rpc_errors import ClientErrors, from_rpc_error
from tailrunner.security.channels import aio_channel, bearer, warn_cleartext_token
from tailrunner.security.tls import ClientTls

_SERVICE = "google.longrunning.Operations"
_UNAVAILABLE = frozenset({grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED})
#: Operations per ListOperations page this client asks for.
PAGE_SIZE = 100


class OperationsClient:
    """The ``google.longrunning.Operations`` service at one address (the journal's, by default)."""

    def __init__(
        self, channel: grpc.aio.Channel, *, close_channel: bool = False, token: str | None = None
    ) -> None:
        """:param token: sent as ``authorization: Bearer <token>`` with every call."""
        self._channel = channel
        self._close_channel = close_channel
        self._metadata = bearer(token) or None
        self._get = channel.unary_unary(
            f"/{_SERVICE}/GetOperation",
            request_serializer=lro.GetOperationRequest.SerializeToString,
            response_deserializer=lro.Operation.FromString,
        )
        self._list = channel.unary_unary(
            f"/{_SERVICE}/ListOperations",
            request_serializer=lro.ListOperationsRequest.SerializeToString,
            response_deserializer=lro.ListOperationsResponse.FromString,
        )
        self._wait = channel.unary_unary(
            f"/{_SERVICE}/WaitOperation",
            request_serializer=lro.WaitOperationRequest.SerializeToString,
            response_deserializer=lro.Operation.FromString,
        )
        self._cancel = channel.unary_unary(
            f"/{_SERVICE}/CancelOperation",
            request_serializer=lro.CancelOperationRequest.SerializeToString,
            response_deserializer=lambda data: None,
        )
        self._delete = channel.unary_unary(
            f"/{_SERVICE}/DeleteOperation",
            request_serializer=lro.DeleteOperationRequest.SerializeToString,
            response_deserializer=lambda data: None,
        )

    @classmethod
    def connect(
        cls, address: str, *, tls: ClientTls | None = None, token: str | None = None
    ) -> OperationsClient:
        """A client of the service at ``address`` (``HOST:PORT``); use it as a context manager.

        :param tls: TLS toward the server (``None``: plaintext).
        :param token: the bearer token the server wants, if it wants one.
        """
        warn_cleartext_token(address, tls=tls, token=token, server="operations")
        return cls(aio_channel(address, tls=tls), close_channel=True, token=token)

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        if self._close_channel:
            await self._channel.close()

    async def get(self, name: str) -> Operation:
        """The operation ``name``.

        :raises OperationNotFound: there is no such operation.
        :raises InvalidArgument: ``name`` is malformed (names the field).
        :raises JournalUnavailable: the service cannot be reached.
        """
        operation: Operation = await self._call(name, self._get, lro.GetOperationRequest(name=name))
        return operation

    async def list_operations(
        self, filter: str = "", *, page_size: int = PAGE_SIZE
    ) -> AsyncIterator[Operation]:
        """Every operation ``filter`` selects, newest first, fetched a page at a time.

        :param filter: e.g. ``state=RUNNING AND kind=ping-registry`` (see the service).
        """
        token = ""
        while True:
            request = lro.ListOperationsRequest(
                name="operations", filter=filter, page_size=page_size, page_token=token
            )
            response = await self._call("operations", self._list, request)
            for operation in response.operations:
                yield operation
            token = response.next_page_token
            if not token:
                return

    async def children(self, name: str) -> list[Operation]:
        """The operations whose parent is ``name``, newest first."""
        return [op async for op in self.list_operations(f"parent={name}")]

    # The timeout is the call's: at it the operation comes back not done, as
    # WaitOperation's contract says, rather than as an error.
    async def wait(self, name: str, timeout: float | None = None) -> Operation:  # noqa: ASYNC109
        """The operation once done, or as it is when ``timeout`` seconds have passed.

        :param timeout: ``None``: until it is done.
        :raises OperationNotFound: there is no such operation.
        """
        deadline = math.inf if timeout is None else anyio.current_time() + max(0.0, timeout)
        while True:
            left = deadline - anyio.current_time()
            request = lro.WaitOperationRequest(name=name)
            if math.isfinite(left):
                request.timeout.CopyFrom(_duration(max(0.0, left)))
            operation: Operation = await self._call(name, self._wait, request)
            if operation.done or anyio.current_time() >= deadline:
                return operation

    async def cancel(self, name: str) -> None:
        """Ask for the operation to be cancelled (best effort; a done one is left as it is)."""
        await self._call(name, self._cancel, lro.CancelOperationRequest(name=name))

    async def delete(self, name: str) -> None:
        """Delete a done operation.

        :raises OperationError: it is not done (the server's FAILED_PRECONDITION).
        """
        await self._call(name, self._delete, lro.DeleteOperationRequest(name=name))

    async def _call(self, name: str, method: Any, request: Any) -> Any:
        try:
            return await method(request, metadata=self._metadata)
        except grpc.aio.AioRpcError as exc:
            raise _error(name, exc) from exc


def _duration(seconds: float) -> Duration:
    duration = Duration()
    duration.FromNanoseconds(round(seconds * 1e9))
    return duration


def _error(name: str, exc: grpc.aio.AioRpcError) -> TailrunnerError:
    return from_rpc_error(
        exc,
        ClientErrors(
            other=lambda text: OperationError(name, text),
            unavailable=lambda _code, text: JournalUnavailable(
                f"cannot reach the Operations service: {text}"
            ),
            retryable=_UNAVAILABLE,
            by_code={
                grpc.StatusCode.NOT_FOUND: lambda _text: OperationNotFound(name),
                # The server's message says what was refused and why.
                grpc.StatusCode.FAILED_PRECONDITION: lambda text: OperationError(name, text),
            },
        ),
    )
