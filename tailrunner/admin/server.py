"""``AdminServer``: the runner's admin address, serving ``tailrunner.v1.Runner``.

Beside the runner service it carries the gRPC health service (``SERVING`` for
``""`` and ``tailrunner.v1.Runner``) and server reflection, so that
``grpcurl`` and health probes work against it. When a token is set, every
call but health and reflection must carry ``authorization: Bearer <token>``
metadata, or it is refused with ``UNAUTHENTICATED``.
"""

from __future__ import annotations

import hmac
from collections.abc import Awaitable, Callable
from types import TracebackType
from typing import Any, Self

import anyio
import grpc
import structlog
from grpc_health.v1 import health

from tailrunner.admin.service import (
    DEFAULT_CONTROL_TIMEOUT,
    DEFAULT_LAG_TIMEOUT,
    RunnerService,
)
from tailrunner.engines.scheduler import Scheduler
from tailrunner.errors import InvalidArgument
from tailrunner.grpcserve import start_grpc_server
from tailrunner.journal.api import JournalApi
from tailrunner.proto.v1 import runner_pb2, runner_pb2_grpc
from tailrunner.tails.store import TailStore

log = structlog.get_logger(__name__)

DEFAULT_ADMIN_LISTEN = "127.0.0.1:7741"
SERVICE_NAME: str = runner_pb2.DESCRIPTOR.services_by_name["Runner"].full_name
#: Seconds in-flight calls get to finish when the server stops.
DEFAULT_GRACE = 5.0
#: Services anyone may call: probes and tools must work without the token.
_OPEN_PREFIXES = (
    "/grpc.health.v1.Health/",
    "/grpc.reflection.v1alpha.ServerReflection/",
    "/grpc.reflection.v1.ServerReflection/",
)
_BEARER = "bearer "


class BearerTokenInterceptor(grpc.aio.ServerInterceptor):  # type: ignore[misc]  # grpc is untyped
    """Refuses calls without ``authorization: Bearer <token>`` (``UNAUTHENTICATED``).

    Health and reflection calls pass without a token.
    """

    def __init__(self, token: str) -> None:
        if not token:
            raise InvalidArgument("token", "must not be empty (leave it unset for no auth)")
        self._token = token.encode()

    async def intercept_service(
        self,
        continuation: Callable[[grpc.HandlerCallDetails], Awaitable[grpc.RpcMethodHandler]],
        handler_call_details: grpc.HandlerCallDetails,
    ) -> grpc.RpcMethodHandler:
        method: str = handler_call_details.method
        if method.startswith(_OPEN_PREFIXES):
            return await continuation(handler_call_details)
        reason = self._refusal(handler_call_details.invocation_metadata or ())
        if reason is None:
            return await continuation(handler_call_details)
        log.warning("refused", method=method, reason=reason)
        handler = await continuation(handler_call_details)
        return _refusing(handler, reason)

    def _refusal(self, metadata: Any) -> str | None:
        """Why the call is refused, or ``None`` when its token is right."""
        values = [value for key, value in metadata if key == "authorization"]
        if not values:
            return "no authorization metadata"
        value = values[0]
        text = value.decode("latin-1") if isinstance(value, bytes) else str(value)
        if not text.lower().startswith(_BEARER):
            return "authorization is not a bearer token"
        given = text[len(_BEARER) :].strip().encode()
        # Constant time: the comparison must not tell how much of a guess was right.
        if not hmac.compare_digest(given, self._token):
            return "wrong token"
        return None


def _refusing(handler: grpc.RpcMethodHandler | None, reason: str) -> grpc.RpcMethodHandler:
    """A handler of the same shape as ``handler`` that fails with ``UNAUTHENTICATED``."""
    details = f"admin calls need metadata 'authorization: Bearer <token>': {reason}"

    async def refuse(request: Any, context: grpc.aio.ServicerContext) -> Any:
        await context.abort(grpc.StatusCode.UNAUTHENTICATED, details)

    async def refuse_stream(request: Any, context: grpc.aio.ServicerContext) -> Any:
        await context.abort(grpc.StatusCode.UNAUTHENTICATED, details)
        yield  # pragma: no cover  # makes it an async generator, as a stream handler is

    if handler is None or not (handler.request_streaming or handler.response_streaming):
        return grpc.unary_unary_rpc_method_handler(refuse)
    if handler.request_streaming and handler.response_streaming:
        return grpc.stream_stream_rpc_method_handler(refuse_stream)
    if handler.request_streaming:
        return grpc.stream_unary_rpc_method_handler(refuse)
    return grpc.unary_stream_rpc_method_handler(refuse_stream)


class AdminServer:
    """The runner's admin service over gRPC, on one address.

    ::

        async with AdminServer(engine=runner.engine, tails=tails, journal=journal,
                               listen="127.0.0.1:0", token=token) as admin:
            print(admin.address)  # the bound port, not 0

    Start it on the event loop that runs the engine: the service reads and
    controls the engine's tasks directly.
    """

    def __init__(
        self,
        *,
        engine: Scheduler,
        tails: TailStore,
        journal: JournalApi,
        listen: str = DEFAULT_ADMIN_LISTEN,
        token: str | None = None,
        lag_timeout: float = DEFAULT_LAG_TIMEOUT,
        control_timeout: float = DEFAULT_CONTROL_TIMEOUT,
    ) -> None:
        """:param engine: the runner's engine (``runner.engine``).
        :param tails: the tail store the engine writes to.
        :param journal: the journal the engine reads (for heads and lag).
        :param listen: ``HOST:PORT`` to bind; port 0 picks a free port (see :attr:`port`).
        :param token: when set, calls need ``authorization: Bearer <token>``;
            ``None`` lets every call in (bind to a loopback address then).
        :param lag_timeout: seconds a reply waits for lag before it leaves it out.
        :param control_timeout: seconds a control waits for a running task to stop.
        :raises InvalidArgument: ``listen`` is not ``HOST:PORT`` (field
            ``listen``), or ``token`` is empty (field ``token``).
        """
        self._host, _ = split_listen(listen, field="listen")
        self._listen = listen
        self._interceptors = [] if token is None else [BearerTokenInterceptor(token)]
        self._service = RunnerService(
            engine=engine,
            tails=tails,
            journal=journal,
            lag_timeout=lag_timeout,
            control_timeout=control_timeout,
        )
        self._server: grpc.aio.Server | None = None
        self._health: health.aio.HealthServicer | None = None
        self._port: int | None = None
        self._stopped = False

    @property
    def port(self) -> int:
        """The bound port (the real one when ``listen`` asked for port 0).

        :raises RuntimeError: before :meth:`start`.
        """
        if self._port is None:
            raise RuntimeError("the admin server is not started")
        return self._port

    @property
    def address(self) -> str:
        """``HOST:PORT`` as bound, for clients to connect to."""
        host = f"[{self._host}]" if ":" in self._host else self._host
        return f"{host}:{self.port}"

    async def start(self) -> None:
        """Bind and start serving.

        :raises InvalidArgument: naming ``listen`` when the address cannot be bound.
        """
        if self._server is not None:
            raise RuntimeError("the admin server was already started")
        server, health_servicer, port = await start_grpc_server(
            listen=self._listen,
            service_name=SERVICE_NAME,
            add_servicer=lambda s: runner_pb2_grpc.add_RunnerServicer_to_server(self._service, s),
            interceptors=self._interceptors,
        )
        self._server, self._health, self._port = server, health_servicer, port
        log.info("listening", service="admin", address=self.address, auth=bool(self._interceptors))

    async def stop(self, grace: float | None = DEFAULT_GRACE) -> None:
        """Stop serving; in-flight calls get ``grace`` seconds (``None``: cancelled at once).

        Runs to completion even when the caller is being cancelled.
        """
        if self._stopped:
            return
        self._stopped = True
        with anyio.CancelScope(shield=True):
            if self._health is not None:
                await self._health.enter_graceful_shutdown()
            if self._server is not None:
                await self._server.stop(grace)
        if self._port is not None:
            log.info("stopped", service="admin", address=self.address)

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


def split_listen(listen: str, *, field: str) -> tuple[str, int]:
    """Split ``HOST:PORT`` (``[::1]:0`` too).

    :raises InvalidArgument: naming ``field`` when ``listen`` is not ``HOST:PORT``.
    """
    host, sep, port_text = listen.rpartition(":")
    if not sep or not host or not port_text.isdigit() or int(port_text) > 65535:
        raise InvalidArgument(
            field, f"{listen!r} is not HOST:PORT (e.g. 127.0.0.1:7741, [::1]:0, 0.0.0.0:7741)"
        )
    return host.removeprefix("[").removesuffix("]"), int(port_text)
