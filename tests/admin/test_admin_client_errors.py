"""AdminClient maps a runner's gRPC statuses to tailrunner errors, details first."""

from __future__ import annotations

from collections.abc import Iterator

import grpc
import pytest
from google.protobuf import any_pb2
from google.protobuf.message import Message
from google.rpc import error_details_pb2, status_pb2
from grpc.aio import AioRpcError, Metadata

from tailrunner.admin.client import AdminClient
from tailrunner.errors import (
    AdminError,
    AdminUnavailable,
    ControlNotStored,
    InvalidArgument,
    NotAuthenticated,
    TaskNotControllable,
    TaskNotFound,
)
from tailrunner.rpc_errors import CONTROL_NOT_STORED, ERROR_DOMAIN


@pytest.fixture
def admin() -> Iterator[AdminClient]:
    """A client whose channel never connects: only its error mapping is used."""
    with AdminClient.connect("127.0.0.1:1", timeout=1) as client:
        yield client


def _error(code: grpc.StatusCode, details: str, *detail: Message) -> AioRpcError:
    """A failed call; ``detail`` travels in its ``google.rpc.Status``."""
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


def test_the_field_comes_from_the_bad_request_detail(admin: AdminClient) -> None:
    violation = error_details_pb2.BadRequest.FieldViolation(
        field="from_tail", description="is not a ULID"
    )
    error = admin._map_error(
        _error(
            grpc.StatusCode.INVALID_ARGUMENT,
            "the request was refused",
            error_details_pb2.BadRequest(field_violations=[violation]),
        )
    )
    assert isinstance(error, InvalidArgument)
    assert (error.field, error.reason) == ("from_tail", "is not a ULID")


def test_the_control_not_stored_detail_names_the_error(admin: AdminClient) -> None:
    info = error_details_pb2.ErrorInfo(reason=CONTROL_NOT_STORED, domain=ERROR_DOMAIN)
    error = admin._map_error(_error(grpc.StatusCode.UNAVAILABLE, "stop not stored", info))
    assert type(error) is ControlNotStored
    assert str(error) == "stop not stored"


@pytest.mark.parametrize(
    ("code", "kind"),
    [
        (grpc.StatusCode.NOT_FOUND, TaskNotFound),
        (grpc.StatusCode.FAILED_PRECONDITION, TaskNotControllable),
        (grpc.StatusCode.UNAUTHENTICATED, NotAuthenticated),
        (grpc.StatusCode.UNAVAILABLE, AdminUnavailable),
        (grpc.StatusCode.DEADLINE_EXCEEDED, AdminUnavailable),
        (grpc.StatusCode.INTERNAL, AdminError),
    ],
)
def test_status_codes_map_to_tailrunner_errors(
    admin: AdminClient, code: grpc.StatusCode, kind: type[Exception]
) -> None:
    error = admin._map_error(_error(code, "details"))
    assert type(error) is kind


def test_unavailable_names_the_address(admin: AdminClient) -> None:
    error = admin._map_error(_error(grpc.StatusCode.UNAVAILABLE, "connection refused"))
    assert str(error) == (
        "cannot reach the runner's admin service at 127.0.0.1:1: connection refused"
    )
