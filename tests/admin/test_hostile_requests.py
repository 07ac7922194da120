"""Hostile input to the runner's admin service ends in INVALID_ARGUMENT or NOT_FOUND, never UNKNOWN.

Issue 15, defects 4 and 5: timestamps outside the datetime range, crafted
page tokens (the right filter fingerprint around a wrong cursor, deep JSON,
huge tokens), and names so long that echoing them would break the trailer.
"""

from __future__ import annotations

import base64
import json
import uuid

import grpc
import pytest
from google.protobuf.timestamp_pb2 import Timestamp

from tailrunner.admin.service import _TaskQuery
from tailrunner.proto.v1 import runner_pb2
from tailrunner.rpc_errors import MAX_MESSAGE
from tailrunner.testing import LoopbackJournal

from .conftest import Behaviour, serve_runner


def token(body: object) -> str:
    raw = json.dumps(body, separators=(",", ":")).encode()
    return base64.urlsafe_b64encode(raw).rstrip(b"=").decode("ascii")


FINGERPRINT = _TaskQuery(
    activity=None,
    aggregate_type=None,
    states=frozenset(),
    updated_after=None,
    updated_before=None,
    page_size=100,
).fingerprint()

HOSTILE_TOKENS = {
    "huge time": token({"v": 1, "f": FINGERPRINT, "s": [10**30, "a", uuid.uuid4().hex]}),
    "id not text": token({"v": 1, "f": FINGERPRINT, "s": [0, "a", 5]}),
    "cursor not a list": token({"v": 1, "f": FINGERPRINT, "s": 7}),
    "live id not hex": token({"v": 1, "f": FINGERPRINT, "l": ["a", "zz"]}),
    "live id a number": token({"v": 1, "f": FINGERPRINT, "l": ["a", 3]}),
    "deep json": base64.urlsafe_b64encode(b"[" * 100_000 + b"]" * 100_000).decode(),
    "very long": "A" * 1_000_000,
    "not base64": "%%%",
}


@pytest.mark.parametrize("name", sorted(HOSTILE_TOKENS))
async def test_a_crafted_page_token_is_invalid_argument(
    name: str, journal: LoopbackJournal
) -> None:
    async with serve_runner(journal, [Behaviour().activity()]) as served:
        with pytest.raises(grpc.aio.AioRpcError) as refused:
            await served.stub.ListTasks(
                runner_pb2.ListTasksRequest(page_token=HOSTILE_TOKENS[name])
            )
        # Still serving afterwards.
        await served.stub.ListTasks(runner_pb2.ListTasksRequest())
    assert refused.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "page_token" in (refused.value.details() or "")


@pytest.mark.parametrize("field", ["updated_after", "updated_before"])
@pytest.mark.parametrize("seconds", [-(2**62), 2**62, 253_402_300_800])
async def test_a_time_outside_the_datetime_range_is_invalid_argument(
    field: str, seconds: int, journal: LoopbackJournal
) -> None:
    request = runner_pb2.ListTasksRequest(**{field: Timestamp(seconds=seconds)})
    async with serve_runner(journal, [Behaviour().activity()]) as served:
        with pytest.raises(grpc.aio.AioRpcError) as refused:
            await served.stub.ListTasks(request)
    assert refused.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert field in (refused.value.details() or "")


async def test_a_huge_name_is_not_echoed_whole(journal: LoopbackJournal) -> None:
    name = "x" * 3 * 1024 * 1024
    async with serve_runner(journal, [Behaviour().activity()]) as served:
        with pytest.raises(grpc.aio.AioRpcError) as refused:
            await served.stub.StopTask(
                runner_pb2.StopTaskRequest(activity=name, aggregate_id=str(uuid.uuid4())),
                timeout=30,
            )
    assert refused.value.code() == grpc.StatusCode.NOT_FOUND
    details = refused.value.details() or ""
    assert len(details) < MAX_MESSAGE + 100
    assert "more characters)" in details
