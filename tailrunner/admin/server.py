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
from typing import TYPE_CHECKING, Any

import grpc
import structlog

from tailrunner.admin.service import (
    DEFAULT_CONTROL_TIMEOUT,
    DEFAULT_LAG_TIMEOUT,
    RunnerService,
)
from tailrunner.engines.base import Engine
from tailrunner.errors import InvalidArgument
from tailrunner.grpcserve import GrpcServer
from tailrunner.journal.api import JournalApi
from tailrunner.proto.v1 import runner_pb2, runner_pb2_grpc
from tailrunner.tails.store import TailStore

if TYPE_CHECKING:
    from tailrunner.scaleout.membership import Membership

log = structlog.get_logger(__name__)

DEFAULT_ADMIN_LISTEN = "127.0.0.1:7741"
SERVICE_NAME: str = runner_pb2.DESCRIPTOR.services_by_name["Runner"].full_name
#: Services anyone may call: probes and tools must work without the token.
_OPEN_PREFIXES = (
    "/grpc.health.v1.Health/",
    "/grpc.reflection.v1alpha.ServerReflection/",
    "/grpc.reflection.v1.ServerReflection/",
)
_BEARER = "bearer "


class BearerTokenInterceptor(grpc.aio.ServerInterceptor):
    """Refuses calls without ``authorization: Bearer <token>`` (``UNAUTHENTICATED``).

    Health and reflection calls pass without a token.
    """

    def __init__(self, token: str) -> None:
        if not token:
            raise InvalidArgument("token", "must not be empty (leave it unset for no auth)")
        self._token = token.encode()

    async def intercept_service(
        self,
        continuation: Callable[
            [grpc.HandlerCallDetails], Awaitable[grpc.RpcMethodHandler[Any, Any] | None]
        ],
        handler_call_details: grpc.HandlerCallDetails,
    ) -> grpc.RpcMethodHandler[Any, Any] | None:
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


def _refusing(
    handler: grpc.RpcMethodHandler[Any, Any] | None, reason: str
) -> grpc.RpcMethodHandler[Any, Any]:
    """A handler of the same shape as ``handler`` that fails with ``UNAUTHENTICATED``."""
    details = f"admin calls need metadata 'authorization: Bearer <token>': {reason}"

    async def refuse(request: Any, context: grpc.aio.ServicerContext[Any, Any]) -> Any:
        await context.abort(grpc.StatusCode.UNAUTHENTICATED, details)

    async def refuse_stream(request: Any, context: grpc.aio.ServicerContext[Any, Any]) -> Any:
        await context.abort(grpc.StatusCode.UNAUTHENTICATED, details)
        yield  # pragma: no cover  # makes it an async generator, as a stream handler is

    if handler is None or not (handler.request_streaming or handler.response_streaming):
        return grpc.unary_unary_rpc_method_handler(refuse)
    if handler.request_streaming and handler.response_streaming:
        return grpc.stream_stream_rpc_method_handler(refuse_stream)
    if handler.request_streaming:
        return grpc.stream_unary_rpc_method_handler(refuse)
    return grpc.unary_stream_rpc_method_handler(refuse_stream)


class AdminServer(GrpcServer):
    """The runner's admin service over gRPC, on one address.

    ::

        async with AdminServer(engine=runner.engine, tails=tails, journal=journal,
                               listen="127.0.0.1:0", token=token) as admin:
            print(admin.address)  # the bound port, not 0

    Start it on the event loop that runs the engine: the service reads and
    controls the engine's tasks directly.
    """

    kind = "admin"
    service_name = SERVICE_NAME

    def __init__(
        self,
        *,
        engine: Engine,
        tails: TailStore,
        journal: JournalApi,
        listen: str = DEFAULT_ADMIN_LISTEN,
        token: str | None = None,
        lag_timeout: float = DEFAULT_LAG_TIMEOUT,
        control_timeout: float = DEFAULT_CONTROL_TIMEOUT,
        membership: Membership | None = None,
    ) -> None:
        """:param engine: the runner's engine (``runner.engine``).
        :param tails: the tail store the engine writes to.
        :param journal: the journal the engine reads (for heads and lag).
        :param listen: ``HOST:PORT`` to bind; port 0 picks a free port (see :attr:`port`).
        :param token: when set, calls need ``authorization: Bearer <token>``;
            ``None`` lets every call in (bind to a loopback address then).
        :param lag_timeout: seconds a reply waits for lag before it leaves it out.
        :param control_timeout: seconds a control waits for a running task to stop.
        :param membership: the runner's part in a cluster, for ``GetCluster``;
            ``None`` when it does not share work (``scaleout.enabled`` false).
        :raises InvalidArgument: ``listen`` is not ``HOST:PORT`` (field
            ``listen``), or ``token`` is empty (field ``token``).
        """
        interceptors = [] if token is None else [BearerTokenInterceptor(token)]
        super().__init__(
            listen=listen, interceptors=interceptors, log_details={"auth": token is not None}
        )
        self._service = RunnerService(
            engine=engine,
            tails=tails,
            journal=journal,
            lag_timeout=lag_timeout,
            control_timeout=control_timeout,
            membership=membership,
        )

    def _add_services(self, server: grpc.aio.Server) -> None:
        runner_pb2_grpc.add_RunnerServicer_to_server(self._service, server)
