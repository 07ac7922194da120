"""``ParseGuard``: a request that does not parse ends in ``INVALID_ARGUMENT``, quietly.

grpc.aio deserializes a request before the servicer sees it, and a
``DecodeError`` there ends the call with ``UNKNOWN`` (the Python exception's
class in the message) and an ERROR log with a frame dump: a hostile or
broken client could fill the log. This interceptor takes the parsing over:
each method's handler gets the raw bytes and parses them itself, and a
request that does not parse is refused with ``INVALID_ARGUMENT`` naming the
method, logged once at debug level.
"""

from __future__ import annotations

import inspect
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import TYPE_CHECKING, Any

import grpc
import structlog

if TYPE_CHECKING:
    Handler = grpc.RpcMethodHandler[Any, Any]
    Context = grpc.aio.ServicerContext[Any, Any]

log = structlog.get_logger(__name__)


class ParseGuard(grpc.aio.ServerInterceptor):
    """Parse every request in the handler, refusing one that does not parse.

    The guarded handler is built once per method, not per call (it cost a
    one-event ``Append`` about 20 µs): a service's handlers are the same
    objects call after call, so the cache holds one entry per served method,
    and a method nobody serves (no handler) is never cached.
    """

    def __init__(self) -> None:
        self._guarded: dict[str, tuple[Handler, Handler]] = {}

    async def intercept_service(
        self,
        continuation: Callable[[grpc.HandlerCallDetails], Awaitable[Handler | None]],
        handler_call_details: grpc.HandlerCallDetails,
    ) -> Handler | None:
        handler = await continuation(handler_call_details)
        if handler is None or handler.request_deserializer is None:
            return handler
        method = handler_call_details.method
        cached = self._guarded.get(method)
        if cached is not None and cached[0] is handler:
            return cached[1]
        guarded = _guarded(handler, method)
        self._guarded[method] = (handler, guarded)
        return guarded


def _guarded(handler: Handler, method: str) -> Handler:
    # The behaviours are typed for sync servers in grpc's stubs: Any here.
    original: Any = handler
    parse = original.request_deserializer
    assert parse is not None
    serialize = original.response_serializer

    async def refuse(context: Context, exc: Exception) -> None:
        log.debug("undecodable request", method=method, error=f"{type(exc).__name__}")
        await context.abort(
            grpc.StatusCode.INVALID_ARGUMENT,
            f"the request does not parse as the message {method} takes",
        )

    async def request_of(raw: bytes, context: Context) -> Any:
        try:
            return parse(raw)
        except Exception as exc:
            await refuse(context, exc)

    async def requests_of(raw: AsyncIterator[bytes], context: Context) -> AsyncIterator[Any]:
        async for item in raw:
            yield await request_of(item, context)

    if not original.request_streaming and not original.response_streaming:
        behaviour = original.unary_unary

        async def unary_unary(raw: bytes, context: Context) -> Any:
            return await behaviour(await request_of(raw, context), context)

        return grpc.unary_unary_rpc_method_handler(unary_unary, response_serializer=serialize)
    if not original.request_streaming:
        streaming = original.unary_stream

        async def unary_stream(raw: bytes, context: Context) -> AsyncIterator[Any]:
            result = streaming(await request_of(raw, context), context)
            if inspect.isasyncgen(result):
                async for response in result:
                    yield response
            else:  # a coroutine that writes through the context
                await result

        return grpc.unary_stream_rpc_method_handler(unary_stream, response_serializer=serialize)
    if not original.response_streaming:
        collecting = original.stream_unary

        async def stream_unary(raw: AsyncIterator[bytes], context: Context) -> Any:
            return await collecting(requests_of(raw, context), context)

        return grpc.stream_unary_rpc_method_handler(stream_unary, response_serializer=serialize)
    both = original.stream_stream

    async def stream_stream(raw: AsyncIterator[bytes], context: Context) -> AsyncIterator[Any]:
        result = both(requests_of(raw, context), context)
        if inspect.isasyncgen(result):
            async for response in result:
                yield response
        else:
            await result

    return grpc.stream_stream_rpc_method_handler(stream_stream, response_serializer=serialize)
