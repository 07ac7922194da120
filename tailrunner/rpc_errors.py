"""Tailrunner's errors over gRPC, both ways, in one place.

A servicer ends a failed call with :func:`abort` (the status of
:func:`to_status`); a client turns the failed call back into the error with
:func:`from_rpc_error`. What an error carries beyond its kind travels in the
``google.rpc.Status`` details, never in the message, which is for people:

=============================  =======================  =========================
error                          code                     detail
=============================  =======================  =========================
``InvalidArgument``            ``INVALID_ARGUMENT``     ``google.rpc.BadRequest``
``TailMismatch``               ``FAILED_PRECONDITION``  ``v1.TailMismatch``
``AggregateTypeMismatch``      ``FAILED_PRECONDITION``
``TaskNotFound``               ``NOT_FOUND``
``TaskNotControllable``        ``FAILED_PRECONDITION``
``NotAuthenticated``           ``UNAUTHENTICATED``
``PermissionDenied``           ``PERMISSION_DENIED``
``ControlNotStored``           ``UNAVAILABLE``          ``google.rpc.ErrorInfo``
``LeaseLost``                  ``ABORTED``
``StoreError``                 ``UNAVAILABLE``
``JournalUnavailable``         ``UNAVAILABLE``
``EngineStopped``              ``UNAVAILABLE``
anything else                  ``INTERNAL``
=============================  =======================  =========================

The message is the error's text (an :class:`InvalidArgument` reads
``"field: reason"``); a client reads the field from the ``BadRequest`` field
violation. Codes whose meaning depends on the service (``FAILED_PRECONDITION``
is an aggregate type mismatch from the journal, a task in the wrong state from
a runner) are mapped back by the table the client passes
(:class:`ClientErrors`).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, NoReturn, cast

import grpc
import structlog
from google.protobuf import any_pb2
from google.protobuf.message import Message
from google.rpc import code_pb2, error_details_pb2, status_pb2
from grpc_status import rpc_status

from tailrunner.errors import (
    AggregateTypeMismatch,
    CommandRefused,
    ControlNotStored,
    EngineStopped,
    InvalidArgument,
    JournalUnavailable,
    LeaseLost,
    NotAuthenticated,
    NotFound,
    OperationAlreadyExists,
    OperationFinished,
    OperationNotDone,
    OperationNotFound,
    PermissionDenied,
    RetryLimit,
    StoreError,
    TailMismatch,
    TailrunnerError,
    TaskNotControllable,
    TaskNotFound,
    VersionConflict,
    WaitDeadlineExceeded,
)
from tailrunner.ids import ulid_from_bytes, ulid_to_bytes
from tailrunner.proto.v1 import journal_pb2

log = structlog.get_logger(__name__)

#: The ``google.rpc.ErrorInfo`` domain of tailrunner's own reasons.
ERROR_DOMAIN = "tailrunner"
#: The ``ErrorInfo`` reason of a control applied in memory whose state could not be stored.
CONTROL_NOT_STORED = "CONTROL_NOT_STORED"
#: The field an ``INVALID_ARGUMENT`` without a ``BadRequest`` detail is about.
_UNNAMED_FIELD = "request"

#: Error kinds and their codes, the first match wins (``google.rpc.Code`` numbers).
_CODES: tuple[tuple[type[TailrunnerError], int], ...] = (
    (InvalidArgument, code_pb2.INVALID_ARGUMENT),
    (TailMismatch, code_pb2.FAILED_PRECONDITION),
    (AggregateTypeMismatch, code_pb2.FAILED_PRECONDITION),
    (TaskNotFound, code_pb2.NOT_FOUND),
    # workflows and operations
    (NotFound, code_pb2.NOT_FOUND),
    (OperationNotFound, code_pb2.NOT_FOUND),
    (OperationAlreadyExists, code_pb2.ALREADY_EXISTS),
    (OperationFinished, code_pb2.FAILED_PRECONDITION),
    (OperationNotDone, code_pb2.FAILED_PRECONDITION),
    (WaitDeadlineExceeded, code_pb2.DEADLINE_EXCEEDED),
    (CommandRefused, code_pb2.FAILED_PRECONDITION),
    (RetryLimit, code_pb2.ABORTED),
    (VersionConflict, code_pb2.ABORTED),
    (TaskNotControllable, code_pb2.FAILED_PRECONDITION),
    (NotAuthenticated, code_pb2.UNAUTHENTICATED),
    (PermissionDenied, code_pb2.PERMISSION_DENIED),
    (ControlNotStored, code_pb2.UNAVAILABLE),
    # Before StoreError, its base: the task moved to another runner, which
    # is not an outage of this one.
    (LeaseLost, code_pb2.ABORTED),
    (StoreError, code_pb2.UNAVAILABLE),
    (JournalUnavailable, code_pb2.UNAVAILABLE),
    (EngineStopped, code_pb2.UNAVAILABLE),
)
#: The refusals of tailrunner.security.auth, the same from every server.
_ACCESS: dict[grpc.StatusCode, Callable[[str], TailrunnerError]] = {
    grpc.StatusCode.UNAUTHENTICATED: NotAuthenticated,
    grpc.StatusCode.PERMISSION_DENIED: PermissionDenied,
}
#: Codes that say the server failed (not the request): logged where they are sent.
_LOGGED = frozenset({code_pb2.UNAVAILABLE, code_pb2.INTERNAL})
#: gRPC's status codes by number (``google.rpc.Status.code``).
_STATUS_CODES = {code.value[0]: code for code in grpc.StatusCode}


# -- server side: error → status ---------------------------------------------


#: At most this many characters of an error's text go into a status (or a log
#: line): the message travels in a trailer, which gRPC limits to a few KiB
#: (percent-encoded), and errors may quote what the caller sent.
MAX_MESSAGE = 500


def bounded(text: str, limit: int = MAX_MESSAGE) -> str:
    """``text``, cut to ``limit`` characters with a note of how much was cut."""
    if len(text) <= limit:
        return text
    cut = len(text) - limit
    return f"{text[:limit]}… ({cut} more characters)"


def status_of(exc: TailrunnerError) -> status_pb2.Status:
    """The ``google.rpc.Status`` of ``exc``: code, message and details.

    An error this table does not know is ``INTERNAL``, its text the message.
    """
    code = next((code for kind, code in _CODES if isinstance(exc, kind)), code_pb2.INTERNAL)
    details = []
    for message in _details(exc):
        detail = any_pb2.Any()
        detail.Pack(message)
        details.append(detail)
    return status_pb2.Status(code=code, message=bounded(str(exc)), details=details)


def to_status(exc: TailrunnerError) -> grpc.Status:
    """The status to end a call with for ``exc`` (:func:`status_of` as gRPC sends it)."""
    return rpc_status.to_status(status_of(exc))


def failure_status(exc: TailrunnerError, *, rpc: str) -> status_pb2.Status:
    """:func:`status_of` ``exc``, logged when it says the server failed (as :func:`abort` does).

    For a call that reports failures inside its response (``AppendBatch``).
    """
    status = status_of(exc)
    if status.code in _LOGGED:
        log.error(
            "call failed", rpc=rpc, code=code_pb2.Code.Name(status.code), error=bounded(str(exc))
        )
    return status


async def abort(
    context: grpc.aio.ServicerContext[Any, Any], exc: TailrunnerError, *, rpc: str
) -> NoReturn:
    """End the call with :func:`to_status` of ``exc``; ``context.abort_with_status`` raises.

    :param rpc: the method's name, for the log line of a server-side failure.
    """
    await context.abort_with_status(rpc_status.to_status(failure_status(exc, rpc=rpc)))
    raise AssertionError("context.abort_with_status returned")  # pragma: no cover


def _details(exc: TailrunnerError) -> list[Message]:
    if isinstance(exc, InvalidArgument):
        violation = error_details_pb2.BadRequest.FieldViolation(
            field=bounded(exc.field, 100), description=bounded(exc.reason)
        )
        return [error_details_pb2.BadRequest(field_violations=[violation])]
    if isinstance(exc, TailMismatch):
        return [
            journal_pb2.TailMismatch(
                expected_tail=ulid_to_bytes(exc.expected), actual_tail=ulid_to_bytes(exc.actual)
            )
        ]
    if isinstance(exc, ControlNotStored):
        return [error_details_pb2.ErrorInfo(reason=CONTROL_NOT_STORED, domain=ERROR_DOMAIN)]
    return []


# -- client side: status → error ---------------------------------------------


@dataclass(frozen=True, kw_only=True)
class ClientErrors:
    """What one service's codes mean to its client, where no detail says more.

    :ivar other: the error of any code not named here, given ``"CODE: message"``.
    :ivar unavailable: the error of a code in ``retryable``, given the code and the message.
    :ivar retryable: the codes that say the server cannot be reached now.
    :ivar by_code: the errors of codes whose meaning is this service's, given the message.
    """

    other: Callable[[str], TailrunnerError]
    unavailable: Callable[[grpc.StatusCode, str], TailrunnerError]
    retryable: frozenset[grpc.StatusCode]
    by_code: Mapping[grpc.StatusCode, Callable[[str], TailrunnerError]] = field(
        default_factory=dict
    )


def from_rpc_error(exc: grpc.RpcError, errors: ClientErrors) -> TailrunnerError:
    """The tailrunner error of a failed call (raise it ``from exc``).

    The status details come first (a field violation, a tail mismatch, a
    control not stored), then ``errors`` maps the code.
    """
    return _error(exc.code(), exc.details() or "", _status_details(exc), errors)


def from_status(status: status_pb2.Status, errors: ClientErrors) -> TailrunnerError:
    """The tailrunner error of a ``google.rpc.Status`` sent inside a response.

    The same error :func:`from_rpc_error` gives for a call that failed with
    ``status`` (``AppendBatch`` reports each append's failure so).
    """
    code = _STATUS_CODES.get(status.code, grpc.StatusCode.UNKNOWN)
    return _error(code, status.message, list(status.details), errors)


def _error(
    code: grpc.StatusCode, message: str, details: list[any_pb2.Any], errors: ClientErrors
) -> TailrunnerError:
    if code == grpc.StatusCode.INVALID_ARGUMENT:
        request = error_details_pb2.BadRequest()
        for detail in details:
            if detail.Unpack(request) and request.field_violations:
                violation = request.field_violations[0]
                return InvalidArgument(violation.field, violation.description)
        return InvalidArgument(_UNNAMED_FIELD, message)
    if code == grpc.StatusCode.FAILED_PRECONDITION:
        mismatch = journal_pb2.TailMismatch()
        for detail in details:
            if detail.Unpack(mismatch):
                return TailMismatch(
                    ulid_from_bytes(mismatch.expected_tail, field="expected_tail"),
                    ulid_from_bytes(mismatch.actual_tail, field="actual_tail"),
                )
    if code == grpc.StatusCode.UNAVAILABLE:
        info = error_details_pb2.ErrorInfo()
        for detail in details:
            if (
                detail.Unpack(info)
                and info.domain == ERROR_DOMAIN
                and info.reason == CONTROL_NOT_STORED
            ):
                return ControlNotStored(message)
    if code in errors.by_code:
        return errors.by_code[code](message)
    if code in _ACCESS:
        # Every server refuses alike (tailrunner.security.auth).
        return _ACCESS[code](message)
    if code in errors.retryable:
        return errors.unavailable(code, message)
    return errors.other(f"{code.name}: {message}")


def _status_details(exc: grpc.RpcError) -> list[any_pb2.Any]:
    """The details of the call's ``google.rpc.Status``; none when it sent none (or a bad one)."""
    try:
        # An AioRpcError is the call as far as from_call reads it (code, details, trailers).
        status = rpc_status.from_call(cast(grpc.Call, exc))
    except ValueError:  # a status that contradicts the call's code or message: not ours
        return []
    return [] if status is None else list(status.details)
