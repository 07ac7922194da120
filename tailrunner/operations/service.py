"""``OperationsService``: ``google.longrunning.Operations`` over the operations of every source.

The servicer of googleapis-common-protos' ``OperationsServicer`` (grpc.aio),
so Google's own clients (google-api-core's ``OperationsClient`` and its
``Operation`` future, ``grpcurl``) drive it without knowing of journals. An
operation is an aggregate of one of its :class:`~tailrunner.operations.
sources.OperationSource` objects: its name gives the aggregate id
(:func:`~tailrunner.operations.names.parse_name`), the aggregate's type
(its first event's) the source.

==================  =========================================================
call                contract
==================  =========================================================
``GetOperation``    the operation; a malformed name ``INVALID_ARGUMENT``
                    (naming ``name``), an unknown or deleted one ``NOT_FOUND``
``ListOperations``  newest first, AIP-158 pages, a filter:
                    :mod:`~tailrunner.operations.listing`
``WaitOperation``   at once when done; else woken by the journal's push of
                    the operation's next events, never by a timer; at the
                    timeout the not-done operation with status OK
``CancelOperation`` best effort: a done operation is left as it is (OK);
                    otherwise the source records the request
``DeleteOperation`` only a done one (``FAILED_PRECONDITION`` otherwise); it
                    is ``NOT_FOUND`` afterwards
==================  =========================================================

**Waiting.** ``WaitOperation`` views the operation, and unless it is done
reads the aggregate's events after the view's version with ``watch=True``,
viewing it again after each batch. The journal serves every event after
that version, those appended between the view and the subscription
included, so a completion can never fall between the check and the wait.
The timeout is the request's, capped at ``max_wait`` (60 s by default; no
timeout means ``max_wait``), and shortened to end a little before the
call's own deadline, so that the caller gets the operation rather than
``DEADLINE_EXCEEDED``.

**Errors** are tailrunner's, ended with :func:`~tailrunner.rpc_errors.abort`:
``InvalidArgument`` (``InvalidOperationName`` …) ``INVALID_ARGUMENT`` with a
``BadRequest`` naming the field, ``OperationNotFound`` ``NOT_FOUND``,
``OperationNotDone``/``OperationFinished`` ``FAILED_PRECONDITION``,
``JournalUnavailable`` ``UNAVAILABLE``. Input echoed in a message is cut to
:data:`~tailrunner.operations.listing.ECHO_LIMIT` characters (a 3 MiB name
is not sent back).

:func:`operations_service` makes it a service of the journal server.
"""

from __future__ import annotations

import math
from collections import OrderedDict
from collections.abc import Callable, Sequence
from contextlib import aclosing
from dataclasses import dataclass
from typing import Any
from uuid import UUID

import anyio
import grpc
from google.longrunning import operations_pb2_grpc
from google.longrunning import operations_proto_pb2 as lro
from google.protobuf import empty_pb2

from tailrunner.errors import (
    InvalidArgument,
    InvalidOperationName,
    JournalUnavailable,
    OperationNotDone,
    OperationNotFound,
    TailrunnerError,
)
from tailrunner.journal.api import JournalApi
from tailrunner.journal.server import HostedService, ServiceFactory
from tailrunner.operations.listing import (
    DEFAULT_TOKEN_KEY,
    ECHO_LIMIT,
    check_collection,
    echo,
    list_operations,
)
from tailrunner.operations.names import parse_name
from tailrunner.operations.pingregistry import PingRegistrySource
from tailrunner.operations.sources import LibrarySource, OperationSource, OperationView
from tailrunner.operations.state import Operation
from tailrunner.rpc_errors import abort

#: The full name of the service.
SERVICE_NAME: str = lro.DESCRIPTOR.services_by_name["Operations"].full_name
#: The longest ``WaitOperation`` in seconds; a longer (or no) timeout is capped to it.
DEFAULT_MAX_WAIT = 60.0
#: Seconds a wait ends before the call's deadline, so the operation gets back in time.
DEADLINE_MARGIN = 0.05
#: How many aggregates' types are remembered (a type never changes).
_TYPE_CACHE_SIZE = 4096

SourcesFactory = Callable[[JournalApi], Sequence[OperationSource]]
"""Makes the sources of a service on its journal."""


def default_sources(journal: JournalApi) -> list[OperationSource]:
    """The library's operations and the ping-registry workflows."""
    return [LibrarySource(journal), PingRegistrySource(journal)]


class OperationsService(operations_pb2_grpc.OperationsServicer):
    """``google.longrunning.Operations`` over ``sources`` (see the module docstring)."""

    def __init__(
        self,
        journal: JournalApi,
        sources: Sequence[OperationSource],
        *,
        max_wait: float = DEFAULT_MAX_WAIT,
        token_key: bytes = DEFAULT_TOKEN_KEY,
    ) -> None:
        """:param journal: where the sources' aggregates are (waits watch it).
        :param sources: one per aggregate type.
        :param max_wait: the cap of ``WaitOperation`` timeouts, in seconds.
        :param token_key: the key of the list page tokens' MAC; servers that
            share a journal behind one address must share it.
        :raises InvalidArgument: two sources of one type (``sources``), or a
            ``max_wait`` that is not a positive number of seconds.
        """
        if not (max_wait > 0 and math.isfinite(max_wait)):
            raise InvalidArgument(
                "max_wait", f"must be a positive number of seconds, not {max_wait}"
            )
        self._journal = journal
        self._sources = tuple(sources)
        self._by_type: dict[str, OperationSource] = {}
        for source in self._sources:
            if source.aggregate_type in self._by_type:
                raise InvalidArgument(
                    "sources", f"two sources show aggregate type {source.aggregate_type!r}"
                )
            self._by_type[source.aggregate_type] = source
        self._max_wait = max_wait
        self._token_key = token_key
        self._types: OrderedDict[UUID, str] = OrderedDict()

    @property
    def max_wait(self) -> float:
        return self._max_wait

    # -- the calls ------------------------------------------------------------

    async def GetOperation(
        self, request: lro.GetOperationRequest, context: grpc.aio.ServicerContext[Any, Any]
    ) -> Operation:
        try:
            _, _, view = await self._view(request.name)
        except TailrunnerError as exc:
            await abort(context, exc, rpc="GetOperation")
        return view.operation

    async def ListOperations(
        self, request: lro.ListOperationsRequest, context: grpc.aio.ServicerContext[Any, Any]
    ) -> lro.ListOperationsResponse:
        try:
            check_collection(request.name)
            operations, token = await list_operations(
                self._journal,
                self._sources,
                filter=request.filter,
                page_size=request.page_size,
                page_token=request.page_token,
                token_key=self._token_key,
            )
        except TailrunnerError as exc:
            await abort(context, exc, rpc="ListOperations")
        return lro.ListOperationsResponse(operations=operations, next_page_token=token)

    async def WaitOperation(
        self, request: lro.WaitOperationRequest, context: grpc.aio.ServicerContext[Any, Any]
    ) -> Operation:
        try:
            timeout = self._timeout(request, context)
            operation = await self._wait(request.name, timeout)
        except TailrunnerError as exc:
            await abort(context, exc, rpc="WaitOperation")
        return operation

    async def CancelOperation(
        self, request: lro.CancelOperationRequest, context: grpc.aio.ServicerContext[Any, Any]
    ) -> empty_pb2.Empty:
        try:
            aggregate, source, view = await self._view(request.name)
            if not view.done:
                # Done in the meantime: the source leaves it as it is.
                await source.cancel(aggregate)
        except TailrunnerError as exc:
            await abort(context, exc, rpc="CancelOperation")
        return empty_pb2.Empty()

    async def DeleteOperation(
        self, request: lro.DeleteOperationRequest, context: grpc.aio.ServicerContext[Any, Any]
    ) -> empty_pb2.Empty:
        try:
            aggregate, source, view = await self._view(request.name)
            if not view.done:
                raise OperationNotDone(request.name, view.state.value, "delete")
            await source.delete(aggregate)
        except TailrunnerError as exc:
            await abort(context, exc, rpc="DeleteOperation")
        return empty_pb2.Empty()

    # -- internals ------------------------------------------------------------

    async def _wait(self, name: str, timeout: float) -> Operation:  # noqa: ASYNC109
        aggregate, source, view = await self._view(name)
        if view.done or timeout <= 0:
            return view.operation
        with anyio.move_on_after(timeout):
            # Every event after the viewed version, those appended before the
            # watch began included, then each new one as the journal has it.
            stream = self._journal.events(aggregate, after=view.version, watch=True)
            async with aclosing(stream) as batches:
                async for batch in batches:
                    if not batch.events:
                        continue
                    seen = await source.view(aggregate)
                    if seen is None:
                        raise OperationNotFound(name)
                    view = seen
                    if view.done:
                        return view.operation
            raise JournalUnavailable(f"{name}: the journal ended the watch (it is stopping)")
        return view.operation

    def _timeout(
        self, request: lro.WaitOperationRequest, context: grpc.aio.ServicerContext[Any, Any]
    ) -> float:
        timeout = self._max_wait
        if request.HasField("timeout"):
            requested = request.timeout.seconds + request.timeout.nanos / 1e9
            if requested < 0:
                raise InvalidArgument("timeout", f"must not be negative, got {requested:g}s")
            timeout = min(requested, self._max_wait)
        remaining = context.time_remaining()
        if remaining is not None:
            timeout = min(timeout, max(0.0, remaining - DEADLINE_MARGIN))
        return timeout

    async def _view(self, name: str) -> tuple[UUID, OperationSource, OperationView]:
        """The operation ``name``: its aggregate id, its source and its view.

        :raises InvalidOperationName: ``name`` is malformed.
        :raises OperationNotFound: no source shows it (no events, another
            type, deleted).
        """
        aggregate = _parse(name)
        source = self._by_type.get(await self._type_of(aggregate, name))
        view = None if source is None else await source.view(aggregate)
        if source is None or view is None:
            raise OperationNotFound(name)
        return aggregate, source, view

    async def _type_of(self, aggregate: UUID, name: str) -> str:
        known = self._types.get(aggregate)
        if known is not None:
            self._types.move_to_end(aggregate)
            return known
        async with aclosing(self._journal.events(aggregate, max_batch=1)) as batches:
            async for batch in batches:
                if batch.events:
                    known = batch.events[0].aggregate_type
                    break
        if known is None:
            raise OperationNotFound(name)
        self._types[aggregate] = known
        while len(self._types) > _TYPE_CACHE_SIZE:
            self._types.popitem(last=False)
        return known


def _parse(name: str) -> UUID:
    """The aggregate id of ``name``; a long one is refused without being repeated whole."""
    if len(name) > ECHO_LIMIT:
        raise InvalidOperationName(
            echo(name, 40),
            f"the name is {len(name)} characters long: expected operations/{{id}}, "
            "the id a UUID or 1 to 63 of a-z, 0-9 and '-'",
        )
    return parse_name(name)


@dataclass(frozen=True, slots=True)
class HostedOperations:
    """The service as a :class:`~tailrunner.journal.server.HostedService` of the journal server."""

    service: OperationsService

    @property
    def service_names(self) -> tuple[str, ...]:
        return (SERVICE_NAME,)

    def add_to_server(self, server: grpc.aio.Server) -> None:
        operations_pb2_grpc.add_OperationsServicer_to_server(  # type: ignore[no-untyped-call]
            self.service, server
        )


def operations_service(
    sources: SourcesFactory = default_sources, *, max_wait: float = DEFAULT_MAX_WAIT
) -> ServiceFactory:
    """The factory that makes the journal server carry ``google.longrunning.Operations``.

    ::

        JournalServer(store, services=[operations_service()])

    :param sources: makes the sources on the server's journal (by default
        the library's operations and the ping-registry workflows).
    :param max_wait: the cap of ``WaitOperation`` timeouts, in seconds.
    """

    def make(journal: JournalApi) -> HostedService:
        return HostedOperations(OperationsService(journal, sources(journal), max_wait=max_wait))

    return make


__all__ = [
    "DEFAULT_MAX_WAIT",
    "SERVICE_NAME",
    "HostedOperations",
    "OperationsService",
    "default_sources",
    "operations_service",
]
