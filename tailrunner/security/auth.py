"""``BearerAuth``: a server interceptor that lets a call in by its token's role.

Every call but health's must carry ``authorization: Bearer <token>``
metadata with a token of :class:`~tailrunner.security.tokens.Tokens`:

- no token, or one the server does not know: ``UNAUTHENTICATED``;
- a ``read`` token on a call that changes something: ``PERMISSION_DENIED``.

Which calls read is one table, :data:`READ_METHODS`; every other method
needs ``write``, so that a method added later is closed until it is listed.
Health stays open (probes carry no token); reflection is a read. A refusal
is logged with the method, the code and the caller's address, never with the
token, and at most once per 10 seconds (the line counts the others).
"""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable
from typing import Any

import grpc
import structlog

from tailrunner.security.tokens import Role, Tokens

log = structlog.get_logger(__name__)

#: Services anyone may call: health probes carry no token.
OPEN_PREFIXES = ("/grpc.health.v1.Health/",)

#: The methods a ``read`` token may call; every other one needs ``write``.
READ_METHODS: frozenset[str] = frozenset(
    {
        "/tailrunner.v1.Journal/Events",
        "/tailrunner.v1.Journal/ReadAggregates",
        "/tailrunner.v1.Journal/AggregateSignals",
        "/tailrunner.v1.Journal/ListAggregates",
        "/tailrunner.v1.Runner/ListTasks",
        "/tailrunner.v1.Runner/GetTask",
        "/tailrunner.v1.Runner/ListRuns",
        "/tailrunner.v1.Runner/GetCluster",
        "/google.longrunning.Operations/GetOperation",
        "/google.longrunning.Operations/ListOperations",
        "/google.longrunning.Operations/WaitOperation",
        "/grpc.reflection.v1alpha.ServerReflection/ServerReflectionInfo",
        "/grpc.reflection.v1.ServerReflection/ServerReflectionInfo",
    }
)

_BEARER = "bearer "
#: Seconds between two log lines of refused calls (those between are counted).
REFUSAL_LOG_INTERVAL = 10.0
_HOW = "calls need metadata 'authorization: Bearer <token>'"


def needed_role(method: str) -> Role | None:
    """The role a call of ``method`` (``/package.Service/Method``) needs; ``None``: open."""
    if method.startswith(OPEN_PREFIXES):
        return None
    return Role.READ if method in READ_METHODS else Role.WRITE


def bearer_token(metadata: Any) -> str | None:
    """The token of ``authorization: Bearer <token>`` in ``metadata``, if there is one."""
    for key, value in metadata or ():
        if key != "authorization":
            continue
        text = value.decode("latin-1") if isinstance(value, bytes) else str(value)
        if text[: len(_BEARER)].lower() != _BEARER:
            return None
        return text[len(_BEARER) :].strip() or None
    return None


def refusal(tokens: Tokens, method: str, token: str | None) -> tuple[grpc.StatusCode, str] | None:
    """Why a call of ``method`` with ``token`` is refused (its code and words), or ``None``."""
    needed = needed_role(method)
    if needed is None:
        return None
    if token is None:
        return grpc.StatusCode.UNAUTHENTICATED, f"{_HOW}: no bearer token"
    role = tokens.role_of(token)
    if role is None:
        return grpc.StatusCode.UNAUTHENTICATED, f"{_HOW}: the token is not known here"
    if not role.allows(needed):
        return (
            grpc.StatusCode.PERMISSION_DENIED,
            f"{method.rsplit('/', 1)[-1] or method} needs a {needed.value} token; this one"
            f" may only {role.value}",
        )
    return None


class RefusalLog:
    """Logs refused calls, at most one line per :data:`REFUSAL_LOG_INTERVAL` seconds.

    Refusals need no credentials: a flood of them must not flood the log.
    A line counts the refusals it stood for since the last one.
    """

    def __init__(self, server: str, *, clock: Callable[[], float] = time.monotonic) -> None:
        self._server = server
        self._clock = clock
        self._next = 0.0
        self._unlogged = 0

    def refused(self, method: str, code: grpc.StatusCode, peer: str) -> bool:
        """Note one refusal; returns whether it was logged."""
        self._unlogged += 1
        now = self._clock()
        if now < self._next:
            return False
        log.warning(
            "refused",
            service=self._server,
            method=method[:200],
            code=code.name,
            peer=peer[:100],
            refusals=self._unlogged,
        )
        self._next, self._unlogged = now + REFUSAL_LOG_INTERVAL, 0
        return True


class BearerAuth(grpc.aio.ServerInterceptor):
    """Refuses calls whose token is missing, unknown or of too small a role."""

    def __init__(self, tokens: Tokens, *, server: str) -> None:
        """:param server: what the server is (``journal``, ``admin`` …), for the log."""
        self._tokens = tokens
        self._log = RefusalLog(server)

    async def intercept_service(
        self,
        continuation: Callable[
            [grpc.HandlerCallDetails], Awaitable[grpc.RpcMethodHandler[Any, Any] | None]
        ],
        handler_call_details: grpc.HandlerCallDetails,
    ) -> grpc.RpcMethodHandler[Any, Any] | None:
        method: str = handler_call_details.method
        token = bearer_token(handler_call_details.invocation_metadata)
        refused = refusal(self._tokens, method, token)
        handler = await continuation(handler_call_details)
        if refused is None:
            return handler
        code, details = refused
        return refusing(
            handler, code, details, noted=lambda peer: self._log.refused(method, code, peer)
        )


def refusing(
    handler: grpc.RpcMethodHandler[Any, Any] | None,
    code: grpc.StatusCode,
    details: str,
    *,
    noted: Callable[[str], object] = lambda peer: None,
) -> grpc.RpcMethodHandler[Any, Any]:
    """A handler of the same shape as ``handler`` that fails with ``code`` at once.

    It takes the request as raw bytes: a refused call's request is never parsed.

    :param noted: told the caller's address (``context.peer()``) first.
    """

    async def refuse(request: Any, context: grpc.aio.ServicerContext[Any, Any]) -> Any:
        noted(context.peer())
        await context.abort(code, details)

    async def refuse_stream(request: Any, context: grpc.aio.ServicerContext[Any, Any]) -> Any:
        noted(context.peer())
        await context.abort(code, details)
        yield  # pragma: no cover  # makes it an async generator, as a stream handler is

    if handler is None or not (handler.request_streaming or handler.response_streaming):
        return grpc.unary_unary_rpc_method_handler(refuse)
    if handler.request_streaming and handler.response_streaming:
        return grpc.stream_stream_rpc_method_handler(refuse_stream)
    if handler.request_streaming:
        return grpc.stream_unary_rpc_method_handler(refuse)
    return grpc.unary_stream_rpc_method_handler(refuse_stream)
