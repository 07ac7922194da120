"""``JournalServer``: the journal's grpc.aio server (its store: :mod:`tailrunner.journal.open`).

The server carries the journal service, the gRPC health service (``SERVING``
for ``""`` and ``tailrunner.v1.Journal``) and server reflection, so that
``grpcurl`` and health probes work against it.

It also carries the services it is given (:class:`HostedService`), built on
its in-process journal (:class:`~tailrunner.journal.local.LocalJournal`)
when the server is made; health and reflection list them too. The
``google.longrunning.Operations`` service is one
(:func:`tailrunner.operations.service.operations_service`; ``tailrunner
journal serve`` adds it unless ``--no-operations``). The journal layer does
not know the services above it: they come in as factories.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Protocol

import grpc

from tailrunner.errors import InvalidArgument
from tailrunner.grpcserve import GrpcServer
from tailrunner.journal.api import JournalApi
from tailrunner.journal.hub import DEFAULT_MAX_PENDING, Hub
from tailrunner.journal.local import LocalJournal
from tailrunner.journal.service import (
    DEFAULT_MAX_EVENT_SIZE,
    DEFAULT_MAX_EVENTS_PER_APPEND,
    SERVICE,
    JournalService,
    MiB,
    add_to_server,
)
from tailrunner.journal.store import JournalStore
from tailrunner.security import OPEN, ServerSecurity
from tailrunner.store_health import HealthWatch, ProbedStore

DEFAULT_LISTEN = "127.0.0.1:7740"
SERVICE_NAME: str = SERVICE


def default_max_request_size(max_event_size: int) -> int:
    """Four times ``max_event_size`` plus 1 MiB, at least 4 MiB (5 MiB by default).

    Room for appends of several maximal events, and for one event over the
    limit to reach the service and be refused by name, not by gRPC.
    """
    return max(4 * MiB, 4 * max_event_size + MiB)


def check_max_request_size(max_request_size: int | None, max_event_size: int) -> int:
    """The request limit to serve with: ``max_request_size``, or its default.

    :raises InvalidArgument: naming ``max_request_size``, when it is below
        ``max_event_size`` (an event the journal allows could not be sent).
    """
    if max_request_size is None:
        return default_max_request_size(max_event_size)
    if max_request_size < max_event_size:
        raise InvalidArgument(
            "max_request_size",
            f"{max_request_size} bytes is below max_event_size ({max_event_size} bytes):"
            " an event within the event limit could not be sent",
        )
    return max_request_size


class HostedService(Protocol):
    """One or more gRPC services the journal server carries beside the journal."""

    @property
    def service_names(self) -> tuple[str, ...]:
        """The full names of the services it adds, for health and reflection."""
        ...

    def add_to_server(self, server: grpc.aio.Server) -> None:
        """Add its servicers to ``server`` (before it starts)."""
        ...


#: Makes a hosted service on the server's in-process journal.
ServiceFactory = Callable[[JournalApi], HostedService]


class JournalServer(GrpcServer):
    """The journal served over gRPC, on one address.

    ::

        async with JournalServer(store, listen="127.0.0.1:0") as server:
            print(server.address)  # the bound port, not 0

    Stopping ends in-flight ``Events`` watches and signal streams cleanly (the
    client sees the normal end of the stream), then waits up to ``grace``
    seconds for the other calls.
    """

    kind = "journal"
    service_name = SERVICE_NAME

    def __init__(
        self,
        store: JournalStore,
        *,
        listen: str = DEFAULT_LISTEN,
        max_event_size: int = DEFAULT_MAX_EVENT_SIZE,
        max_events_per_append: int = DEFAULT_MAX_EVENTS_PER_APPEND,
        max_request_size: int | None = None,
        max_pending_signals: int = DEFAULT_MAX_PENDING,
        close_store: bool = False,
        services: Sequence[ServiceFactory] = (),
        security: ServerSecurity = OPEN,
    ) -> None:
        """:param store: where the events are kept.
        :param listen: ``HOST:PORT`` to bind; port 0 picks a free port (see :attr:`port`).
        :param max_event_size: bytes of type, data and metadata allowed per event.
        :param max_events_per_append: events allowed in one append.
        :param max_request_size: bytes allowed per request message, any
            service's (gRPC refuses a bigger one: ``RESOURCE_EXHAUSTED``); at
            least ``max_event_size``. Default :func:`default_max_request_size`.
        :param max_pending_signals: aggregates a slow signal reader may have
            pending before it gets a resync instead.
        :param close_store: close ``store`` when the server stops.
        :param services: the services to carry beside the journal, each made
            here on the server's in-process journal (:attr:`local_journal`).
        :param security: TLS and tokens for every service it carries (health stays open).
        :raises InvalidArgument: ``listen`` is not ``HOST:PORT`` (field ``listen``),
            or it is open to other machines without TLS and tokens (field ``insecure``).
        """
        max_request = check_max_request_size(max_request_size, max_event_size)
        super().__init__(
            listen=listen,
            options=[
                ("grpc.max_receive_message_length", max_request),
                ("grpc.max_send_message_length", -1),
            ],
            security=security,
        )
        self._store = store
        self._hub = Hub(max_pending=max_pending_signals)
        self._service = JournalService(
            store,
            self._hub,
            max_event_size=max_event_size,
            max_events_per_append=max_events_per_append,
        )
        store.add_listener(self._hub.notify, self._hub.resync)
        self._close_store = close_store
        self._local = LocalJournal(store, self._hub, limits=self._service.limits)
        self._hosted = [factory(self._local) for factory in services]
        # A store that tells its health takes the server's along: NOT_SERVING while it fails.
        self._health_watch = (
            HealthWatch(store, self.set_serving) if isinstance(store, ProbedStore) else None
        )

    @property
    def store(self) -> JournalStore:
        """The store the journal serves."""
        return self._store

    @property
    def hub(self) -> Hub:
        """The in-process fan-out of appends (watchers, signal subscribers)."""
        return self._hub

    @property
    def local_journal(self) -> LocalJournal:
        """The journal in this process, as the hosted services use it."""
        return self._local

    def _add_services(self, server: grpc.aio.Server) -> None:
        add_to_server(self._service, server)
        for hosted in self._hosted:
            hosted.add_to_server(server)

    def _service_names(self) -> tuple[str, ...]:
        return (self.service_name, *(n for hosted in self._hosted for n in hosted.service_names))

    async def _stopping(self) -> None:
        if self._health_watch is not None:
            self._health_watch.close()
        # Watches and signal streams return on their own: a clean end of stream.
        self._hub.close()

    async def _stopped_serving(self) -> None:
        if self._close_store:
            await self._store.aclose()
