"""JournalClient maps gRPC status codes to tailrunner errors, once, at its boundary."""

from __future__ import annotations

import grpc
import pytest
from grpc.aio import AioRpcError, Metadata

from tailrunner.errors import (
    AggregateTypeMismatch,
    InvalidArgument,
    JournalError,
    JournalUnavailable,
    StreamCancelled,
    TailMismatch,
)
from tailrunner.journal.client import _map_error


def _error(code: grpc.StatusCode, details: str) -> AioRpcError:
    return AioRpcError(code, Metadata(), Metadata(), details=details)


def test_invalid_argument_names_the_field_from_the_message() -> None:
    error = _map_error(
        _error(grpc.StatusCode.INVALID_ARGUMENT, "events[2].type: must not be empty")
    )
    assert isinstance(error, InvalidArgument)
    assert (error.field, error.reason) == ("events[2].type", "must not be empty")


@pytest.mark.parametrize(
    ("code", "kind"),
    [
        (grpc.StatusCode.CANCELLED, StreamCancelled),
        (grpc.StatusCode.UNAVAILABLE, JournalUnavailable),
        (grpc.StatusCode.DEADLINE_EXCEEDED, JournalUnavailable),
        (grpc.StatusCode.RESOURCE_EXHAUSTED, JournalUnavailable),
        (grpc.StatusCode.FAILED_PRECONDITION, AggregateTypeMismatch),
        (grpc.StatusCode.PERMISSION_DENIED, JournalError),
        (grpc.StatusCode.UNIMPLEMENTED, JournalError),
    ],
)
def test_status_codes_map_to_tailrunner_errors(
    code: grpc.StatusCode, kind: type[Exception]
) -> None:
    error = _map_error(_error(code, "details"))
    assert type(error) is kind


def test_failed_precondition_without_details_is_not_a_tail_mismatch() -> None:
    error = _map_error(_error(grpc.StatusCode.FAILED_PRECONDITION, "aggregate has type 'a'"))
    assert not isinstance(error, TailMismatch)
