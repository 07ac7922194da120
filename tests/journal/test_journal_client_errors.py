"""JournalClient maps gRPC statuses to tailrunner errors, once, at its boundary."""

from __future__ import annotations

import grpc
import pytest
from google.protobuf import any_pb2
from google.protobuf.message import Message
from google.rpc import code_pb2, error_details_pb2, status_pb2
from grpc.aio import AioRpcError, Metadata
from ulid import ULID

from tailrunner.errors import (
    AggregateTypeMismatch,
    InvalidArgument,
    JournalError,
    JournalUnavailable,
    NotAuthenticated,
    PermissionDenied,
    StreamCancelled,
    TailMismatch,
    TailrunnerError,
)
from tailrunner.ids import ulid_to_bytes
from tailrunner.journal.client import JOURNAL_ERRORS
from tailrunner.proto.v1 import journal_pb2
from tailrunner.rpc_errors import from_rpc_error, to_status


def _error(code: grpc.StatusCode, details: str, *detail: Message) -> AioRpcError:
    """A failed call as grpc.aio raises it; ``detail`` travels in its ``google.rpc.Status``."""
    trailing = Metadata()
    if detail:
        packed = []
        for message in detail:
            any_ = any_pb2.Any()
            any_.Pack(message)
            packed.append(any_)
        status = status_pb2.Status(code=code.value[0], message=details, details=packed)
        trailing = Metadata(("grpc-status-details-bin", status.SerializeToString()))
    return AioRpcError(code, Metadata(), trailing, details=details)


def _map_error(error: AioRpcError) -> Exception:
    return from_rpc_error(error, JOURNAL_ERRORS)


def _bad_request(field: str, description: str) -> error_details_pb2.BadRequest:
    violation = error_details_pb2.BadRequest.FieldViolation(field=field, description=description)
    return error_details_pb2.BadRequest(field_violations=[violation])


def test_invalid_argument_names_the_field_from_the_bad_request_detail() -> None:
    error = _map_error(
        _error(
            grpc.StatusCode.INVALID_ARGUMENT,
            "events[2].type: must not be empty",
            _bad_request("events[2].type", "must not be empty"),
        )
    )
    assert isinstance(error, InvalidArgument)
    assert (error.field, error.reason) == ("events[2].type", "must not be empty")


def test_the_field_comes_from_the_detail_not_from_the_message() -> None:
    # The message is for people: a "field:" prefix in it means nothing to the client.
    error = _map_error(
        _error(
            grpc.StatusCode.INVALID_ARGUMENT,
            "other: the request was refused",
            _bad_request("page_size", "must be at most 1000"),
        )
    )
    assert isinstance(error, InvalidArgument)
    assert (error.field, error.reason) == ("page_size", "must be at most 1000")


def test_invalid_argument_without_a_detail_names_the_request_not_the_text() -> None:
    error = _map_error(_error(grpc.StatusCode.INVALID_ARGUMENT, "events[2].type: must not be"))
    assert isinstance(error, InvalidArgument)
    assert (error.field, error.reason) == ("request", "events[2].type: must not be")


def test_a_tail_mismatch_detail_gives_both_tails() -> None:
    expected, actual = ULID(), ULID()
    detail = journal_pb2.TailMismatch(
        expected_tail=ulid_to_bytes(expected), actual_tail=ulid_to_bytes(actual)
    )
    error = _map_error(_error(grpc.StatusCode.FAILED_PRECONDITION, "expected tail …", detail))
    assert isinstance(error, TailMismatch)
    assert (error.expected, error.actual) == (expected, actual)


def test_a_status_detail_that_contradicts_the_call_is_ignored() -> None:
    status = status_pb2.Status(
        code=code_pb2.NOT_FOUND, message="x", details=[any_pb2.Any()]
    ).SerializeToString()
    error = _map_error(
        AioRpcError(
            grpc.StatusCode.INVALID_ARGUMENT,
            Metadata(),
            Metadata(("grpc-status-details-bin", status)),
            details="page_size: too big",
        )
    )
    assert isinstance(error, InvalidArgument)
    assert error.field == "request"


@pytest.mark.parametrize(
    ("code", "kind"),
    [
        (grpc.StatusCode.CANCELLED, StreamCancelled),
        (grpc.StatusCode.UNAVAILABLE, JournalUnavailable),
        (grpc.StatusCode.DEADLINE_EXCEEDED, JournalUnavailable),
        (grpc.StatusCode.RESOURCE_EXHAUSTED, JournalUnavailable),
        (grpc.StatusCode.FAILED_PRECONDITION, AggregateTypeMismatch),
        (grpc.StatusCode.PERMISSION_DENIED, PermissionDenied),
        (grpc.StatusCode.UNAUTHENTICATED, NotAuthenticated),
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


def _sent(exc: TailrunnerError) -> AioRpcError:
    """``exc`` as a client receives it from a servicer that aborted with it."""
    status = to_status(exc)
    return AioRpcError(
        status.code, Metadata(), Metadata(*status.trailing_metadata), details=status.details
    )


def test_a_field_error_goes_and_comes_back_with_its_field_and_reason() -> None:
    sent = _sent(InvalidArgument("events[0].data", "is 2 MiB, more than 1 MiB"))
    assert sent.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert sent.details() == "events[0].data: is 2 MiB, more than 1 MiB"
    error = _map_error(sent)
    assert isinstance(error, InvalidArgument)
    assert (error.field, error.reason) == ("events[0].data", "is 2 MiB, more than 1 MiB")


def test_a_tail_mismatch_goes_and_comes_back_with_both_tails() -> None:
    expected, actual = ULID(), ULID()
    error = _map_error(_sent(TailMismatch(expected, actual)))
    assert isinstance(error, TailMismatch)
    assert (error.expected, error.actual) == (expected, actual)


def test_an_error_the_mapping_does_not_know_is_internal_with_its_text() -> None:
    status = to_status(TailrunnerError("the hub lost its subscriber"))
    assert status.code == grpc.StatusCode.INTERNAL
    assert status.details == "the hub lost its subscriber"
