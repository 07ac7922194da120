"""What callers hand to an operation, as the messages it stores: ``Any`` and ``Status``."""

from __future__ import annotations

import grpc
from google.protobuf import any_pb2, empty_pb2
from google.protobuf.message import Message
from google.rpc import code_pb2, status_pb2

from tailrunner.errors import TailrunnerError
from tailrunner.rpc_errors import to_status

#: The longest error message an exception gives a failed operation (longer ones are cut).
MAX_ERROR_MESSAGE = 2048
#: Each gRPC status code's number (the first of its ``value`` pair).
_NUMBERS: dict[grpc.StatusCode, int] = {code: code.value[0] for code in grpc.StatusCode}


def pack(message: Message) -> any_pb2.Any:
    """``message`` in an ``Any`` (a copy of it when it is one already).

    Packed deterministically, so that the same message packs to the same
    bytes and a repeated finish is recognised as a repeat.
    """
    packed = any_pb2.Any()
    if isinstance(message, any_pb2.Any):
        packed.CopyFrom(message)
    else:
        packed.Pack(message, deterministic=True)
    return packed


def pack_optional(message: Message | None) -> any_pb2.Any | None:
    """:func:`pack`, with ``None`` for none."""
    return None if message is None else pack(message)


def pack_response(message: Message | None) -> any_pb2.Any:
    """:func:`pack`, with a ``google.protobuf.Empty`` for no response.

    A done operation must carry a response or an error, or google-api-core's
    clients raise.
    """
    return pack(empty_pb2.Empty() if message is None else message)


def status_of(error: status_pb2.Status | BaseException) -> status_pb2.Status:
    """The ``google.rpc.Status`` a failed operation records for ``error``.

    A status is copied. An exception's code is its gRPC code when it carries
    one (a ``grpc.RpcError``, a google-api-core error with
    ``grpc_status_code``, a tailrunner error by :func:`tailrunner.rpc_errors.
    to_status`), else ``UNKNOWN``; its message is ``str(exc)`` (the details
    of an ``RpcError``), at most :data:`MAX_ERROR_MESSAGE` characters, or the
    exception's class name when empty.
    """
    if isinstance(error, status_pb2.Status):
        copy = status_pb2.Status()
        copy.CopyFrom(error)
        return copy
    code = _code_of(error)
    if code == code_pb2.OK:
        code = code_pb2.UNKNOWN
    message = _message_of(error) or type(error).__name__
    if len(message) > MAX_ERROR_MESSAGE:
        message = message[: MAX_ERROR_MESSAGE - 1] + "…"
    return status_pb2.Status(code=code, message=message)


def _code_of(exc: BaseException) -> int:
    status_code: object = None
    if isinstance(exc, grpc.RpcError) and callable(getattr(exc, "code", None)):
        status_code = exc.code()
    elif isinstance(exc, TailrunnerError):
        status_code = to_status(exc).code
    else:
        status_code = getattr(exc, "grpc_status_code", None)
    if isinstance(status_code, grpc.StatusCode):
        return _NUMBERS[status_code]
    return _NUMBERS[grpc.StatusCode.UNKNOWN]


def _message_of(exc: BaseException) -> str:
    if isinstance(exc, grpc.RpcError) and callable(getattr(exc, "details", None)):
        details = exc.details()
        if isinstance(details, str) and details:
            return details
    return str(exc)
