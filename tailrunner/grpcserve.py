"""``GrpcServer``: the lifecycle every tailrunner gRPC server shares.

A server binds one ``HOST:PORT`` (an error names the address when it cannot),
serves its service beside the gRPC health service (``SERVING`` for ``""`` and
the service's name) and server reflection, so that ``grpcurl`` and health
probes work against it, and stops gracefully: health reports ``NOT_SERVING``
first, then in-flight calls get a grace period. The journal and the admin
servers are subclasses; a new service is one more.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from types import TracebackType
from typing import Any, ClassVar, Self

import anyio
import grpc
import structlog
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection

from tailrunner.address import HostPort, format_host_port, parse_host_port
from tailrunner.errors import InvalidArgument
from tailrunner.parse_guard import ParseGuard
from tailrunner.security import OPEN, ServerSecurity

log = structlog.get_logger(__name__)

#: Seconds in-flight calls get to finish when a server stops.
DEFAULT_GRACE = 5.0

#: Clients ping to notice a silent partition (the journal client every 10 s
#: by default): let them, as often as every half second and between calls,
#: instead of answering with GOAWAY "too many pings". The server pings too,
#: so that it lets go of a client that went silent.
_KEEPALIVE: tuple[tuple[str, int], ...] = (
    ("grpc.keepalive_permit_without_calls", 1),
    ("grpc.http2.min_ping_interval_without_data_ms", 500),
    ("grpc.http2.min_recv_ping_interval_without_data_ms", 500),
    ("grpc.http2.max_ping_strikes", 0),
    ("grpc.keepalive_time_ms", 30_000),
    ("grpc.keepalive_timeout_ms", 20_000),
)


class _Health(health.aio.HealthServicer):
    """gRPC health, with ``List`` (grpcio-health-checking leaves it unimplemented:
    every call would be ``UNKNOWN`` and a traceback in the log, from anyone)."""

    def __init__(self) -> None:
        super().__init__()
        self._statuses: dict[str, int] = {"": health_pb2.HealthCheckResponse.SERVING}

    async def set(self, service: str, status: int) -> None:
        self._statuses[service] = status
        await super().set(service, status)

    async def enter_graceful_shutdown(self) -> None:
        for service in self._statuses:
            self._statuses[service] = health_pb2.HealthCheckResponse.NOT_SERVING
        await super().enter_graceful_shutdown()

    async def List(self, request: Any, context: grpc.aio.ServicerContext[Any, Any]) -> Any:
        # The stubs of grpcio-health-checking do not know List's messages yet.
        messages: Any = health_pb2
        return messages.HealthListResponse(
            statuses={
                name: health_pb2.HealthCheckResponse(status=status)
                for name, status in self._statuses.items()
            }
        )


class GrpcServer:
    """One gRPC service on one address, with health and reflection.

    ::

        async with SomeServer(..., listen="127.0.0.1:0") as server:
            print(server.address)  # the bound port, not 0

    A subclass sets :attr:`kind` and :attr:`service_name`, adds its servicer
    in :meth:`_add_services` (and names any further ones in
    :meth:`_service_names`), and may end its own work in :meth:`_stopping`
    (before in-flight calls are waited for) and :meth:`_stopped_serving`
    (after).
    """

    #: What the server is, in logs and errors: ``"journal"``, ``"admin"`` …
    kind: ClassVar[str]
    #: The full name of the served service, for health and reflection.
    service_name: ClassVar[str]

    def __init__(
        self,
        *,
        listen: str,
        options: Sequence[tuple[str, Any]] = (),
        interceptors: Sequence[grpc.aio.ServerInterceptor] = (),
        log_details: Mapping[str, object] | None = None,
        security: ServerSecurity = OPEN,
    ) -> None:
        """:param listen: ``HOST:PORT`` to bind; port 0 picks a free port (see :attr:`port`).
        :param options: gRPC channel options (``("grpc.so_reuseport", 0)`` is always set,
            so that two servers never share a port).
        :param interceptors: server interceptors, outermost first.
        :param log_details: more fields for the ``listening`` log line.
        :param security: TLS and tokens; a non-loopback ``listen`` needs both
            unless ``security.insecure``.
        :raises InvalidArgument: ``listen`` is not ``HOST:PORT`` (field ``listen``),
            or it is open to other machines without TLS and tokens (field ``insecure``).
        """
        self._listen: HostPort = parse_host_port(listen, field="listen")
        security.check_bind(self._listen, kind=self.kind)
        self._security = security
        self._options = [("grpc.so_reuseport", 0), *_KEEPALIVE, *options]
        self._interceptors = list(interceptors)
        self._log_details = {
            **(log_details or {}),
            "tls": security.tls is not None,
            "auth": security.tokens is not None,
        }
        self._server: grpc.aio.Server | None = None
        self._health: _Health | None = None
        self._port: int | None = None
        self._stopped = False

    def _add_services(self, server: grpc.aio.Server) -> None:
        """Add the service to ``server`` (the generated ``add_…Servicer_to_server``)."""
        raise NotImplementedError

    def _service_names(self) -> tuple[str, ...]:
        """The services that health and reflection report: :attr:`service_name`, and
        those a subclass serves beside it."""
        return (self.service_name,)

    async def _stopping(self) -> None:
        """End what would keep calls running (streams that never end on their own)."""

    async def _stopped_serving(self) -> None:
        """Release what the service used, once no call runs any more."""

    @property
    def port(self) -> int:
        """The bound port (the real one when ``listen`` asked for port 0).

        :raises RuntimeError: before :meth:`start`.
        """
        if self._port is None:
            raise RuntimeError(f"the {self.kind} server is not started")
        return self._port

    @property
    def address(self) -> str:
        """``HOST:PORT`` as bound (an IPv6 host in brackets), for clients to connect to."""
        return format_host_port(self._listen.host, self.port)

    async def start(self) -> None:
        """Bind and start serving; health reports ``SERVING`` once started.

        :raises InvalidArgument: naming ``listen`` when the address cannot be bound.
        """
        if self._server is not None:
            raise RuntimeError(f"the {self.kind} server was already started")
        # The parse guard outermost: every handler, the others' included,
        # gets its request parsed by it. The token check next: a refused
        # call's request is never parsed.
        interceptors = [
            ParseGuard(),
            *self._security.interceptors(kind=self.kind),
            *self._interceptors,
        ]
        credentials = self._security.credentials()
        server = grpc.aio.server(interceptors=interceptors, options=self._options)
        self._add_services(server)
        health_servicer = _Health()
        self._health = health_servicer
        health_pb2_grpc.add_HealthServicer_to_server(health_servicer, server)
        names = self._service_names()
        reflection.enable_server_reflection(
            (*names, health.SERVICE_NAME, reflection.SERVICE_NAME), server
        )
        try:
            address = str(self._listen)
            port = (
                server.add_insecure_port(address)
                if credentials is None
                else server.add_secure_port(address, credentials)
            )
        except RuntimeError as exc:
            raise InvalidArgument(
                "listen", f"cannot listen on {self._listen}: the address is in use or not local"
            ) from exc
        await server.start()
        self._server, self._port = server, port
        for service in ("", *names):
            await health_servicer.set(service, health_pb2.HealthCheckResponse.SERVING)
        log.info("listening", service=self.kind, address=self.address, **self._log_details)

    async def set_serving(self, serving: bool) -> None:
        """Report every service ``SERVING`` or ``NOT_SERVING`` in health (a failing store).

        Does nothing before :meth:`start` or once stopping (health then stays
        ``NOT_SERVING``).
        """
        if self._health is None or self._stopped:
            return
        status = (
            health_pb2.HealthCheckResponse.SERVING
            if serving
            else health_pb2.HealthCheckResponse.NOT_SERVING
        )
        for service in ("", *self._service_names()):
            await self._health.set(service, status)
        (log.info if serving else log.warning)("health", service=self.kind, serving=serving)

    async def stop(self, grace: float | None = DEFAULT_GRACE) -> None:
        """Stop serving: health first, then in-flight calls get ``grace`` seconds.

        Runs to completion even when the caller is being cancelled; a second
        call does nothing.

        :param grace: seconds in-flight calls get before they are cancelled
            (``None``: cancel them at once).
        """
        if self._stopped:
            return
        self._stopped = True
        with anyio.CancelScope(shield=True):
            if self._health is not None:
                await self._health.enter_graceful_shutdown()
            await self._stopping()
            if self._server is not None:
                await self._server.stop(grace)
            await self._stopped_serving()
        if self._port is not None:
            log.info("stopped", service=self.kind, address=self.address)

    async def __aenter__(self) -> Self:
        try:
            await self.start()
        except BaseException:
            await self.stop(None)
            raise
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.stop()
