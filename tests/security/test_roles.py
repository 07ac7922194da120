"""Tokens and roles on every method of every service: the journal's, the hosted
Operations and Workflows, and the runner's admin service.

The expectations come from one rule: a method that only reads takes a
``read`` or ``write`` token, every other one a ``write`` token; no token, or
an unknown one, is ``UNAUTHENTICATED``; health needs none. The methods are
read off the services' descriptors, so a method added later is covered (and
closed, until it is listed as a read).
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import dataclass

import anyio
import grpc
import pytest
import structlog
from google.longrunning import operations_proto_pb2
from grpc_health.v1 import health_pb2, health_pb2_grpc
from ulid import ULID

from tailrunner import EOF, ActivityContext, EventStream, Outcome, activity
from tailrunner.admin.server import AdminServer
from tailrunner.engines.options import EngineOptions
from tailrunner.journal.memory import MemoryJournalStore
from tailrunner.journal.server import JournalServer
from tailrunner.operations.pingregistry import workflows_service
from tailrunner.operations.service import operations_service
from tailrunner.proto.v1 import journal_pb2, runner_pb2, workflows_pb2
from tailrunner.runner import Runner
from tailrunner.security import Role, ServerSecurity, Tokens
from tailrunner.security.auth import READ_METHODS, REFUSAL_LOG_INTERVAL, RefusalLog, needed_role
from tailrunner.tails.memory import MemoryTailStore
from tailrunner.testing import loopback_journal

from .conftest import READ_TOKEN, UNKNOWN_TOKEN, WRITE_TOKEN

TOKENS = Tokens({READ_TOKEN: Role.READ, WRITE_TOKEN: Role.WRITE})
REFUSALS = {grpc.StatusCode.UNAUTHENTICATED, grpc.StatusCode.PERMISSION_DENIED}


def _methods(*files: object) -> list[tuple[str, bool]]:
    """``(/package.Service/Method, response_streaming)`` of every service in ``files``."""
    methods = []
    for file in files:
        for service in file.DESCRIPTOR.services_by_name.values():  # type: ignore[attr-defined]
            for method in service.methods:
                methods.append((f"/{service.full_name}/{method.name}", method.server_streaming))
    return methods


JOURNAL_METHODS = _methods(journal_pb2, operations_proto_pb2, workflows_pb2)
ADMIN_METHODS = _methods(runner_pb2)
REFLECTION = [("/grpc.reflection.v1alpha.ServerReflection/ServerReflectionInfo", True)]


async def _call(
    channel: grpc.aio.Channel, method: str, streaming: bool, token: str | None
) -> grpc.StatusCode:
    """Call ``method`` with an empty request; its status (OK once a stream gave a message)."""
    metadata = None if token is None else (("authorization", f"Bearer {token}"),)
    if method.endswith("/ServerReflectionInfo"):
        # grpc.aio's client reports INTERNAL, not the server's status, when its
        # request write lands after the server refused the call (grpc/grpc#36066,
        # a race in the client): such a call is made again; a server's own
        # INTERNAL would come every time.
        for _ in range(3):
            code = await _call_bidi(channel, method, metadata)
            if code is not grpc.StatusCode.INTERNAL:
                break
        return code
    try:
        with anyio.fail_after(10):
            if streaming:
                stream = channel.unary_stream(method)(b"", metadata=metadata)
                await stream.read()
                stream.cancel()
            else:
                await channel.unary_unary(method)(b"", metadata=metadata, timeout=5)
    except grpc.aio.AioRpcError as exc:
        return exc.code()
    return grpc.StatusCode.OK


async def _call_bidi(
    channel: grpc.aio.Channel, method: str, metadata: tuple[tuple[str, str], ...] | None
) -> grpc.StatusCode:
    try:
        with anyio.fail_after(10):
            call = channel.stream_stream(method)(iter([b""]), metadata=metadata)
            await call.read()
            call.cancel()
    except grpc.aio.AioRpcError as exc:
        return exc.code()
    return grpc.StatusCode.OK


def _expected(method: str, token: str | None) -> set[grpc.StatusCode] | None:
    """The refusal the call must get, or ``None`` when it must get past the check."""
    needed = needed_role(method)
    if needed is None:
        return None
    if token is None or token == UNKNOWN_TOKEN:
        return {grpc.StatusCode.UNAUTHENTICATED}
    if token == READ_TOKEN and needed is Role.WRITE:
        return {grpc.StatusCode.PERMISSION_DENIED}
    return None


@activity(name="idle", aggregate_types=["t"])
async def _idle(ctx: ActivityContext, tail: ULID | None, stream: EventStream) -> Outcome:
    return EOF(tail)


@dataclass
class Served:
    address: str
    methods: list[tuple[str, bool]]


@pytest.fixture(params=["journal", "admin"])
async def served(request: pytest.FixtureRequest) -> AsyncIterator[Served]:
    security = ServerSecurity(tokens=TOKENS)
    if request.param == "journal":
        async with JournalServer(
            MemoryJournalStore(),
            listen="127.0.0.1:0",
            services=[operations_service(), workflows_service()],
            security=security,
        ) as server:
            yield Served(server.address, JOURNAL_METHODS)
        return
    async with loopback_journal() as journal:
        runner = Runner(
            journal=journal.client,
            tails=MemoryTailStore(),
            activities=[_idle],
            options=EngineOptions(),
        )
        async with AdminServer(
            engine=runner.engine,
            tails=MemoryTailStore(),
            journal=journal.client,
            listen="127.0.0.1:0",
            security=security,
        ) as admin:
            yield Served(admin.address, ADMIN_METHODS)


def test_every_method_has_a_role_and_the_reads_are_real_methods() -> None:
    every = {m for m, _ in (*JOURNAL_METHODS, *ADMIN_METHODS, *REFLECTION)}
    assert READ_METHODS - every <= {"/grpc.reflection.v1.ServerReflection/ServerReflectionInfo"}, (
        "READ_METHODS lists a method no service has"
    )
    writes = sorted(m for m in every if needed_role(m) is Role.WRITE)
    assert writes == sorted(
        [
            "/google.longrunning.Operations/CancelOperation",
            "/google.longrunning.Operations/DeleteOperation",
            "/tailrunner.v1.Journal/Append",
            "/tailrunner.v1.Journal/AppendBatch",
            "/tailrunner.v1.Runner/RestartTask",
            "/tailrunner.v1.Runner/ResumeTask",
            "/tailrunner.v1.Runner/StopTask",
            "/tailrunner.v1.Runner/SuspendTask",
            "/tailrunner.v1.Workflows/BeginPingRegistry",
        ]
    )


@pytest.mark.parametrize(
    "token",
    [None, UNKNOWN_TOKEN, READ_TOKEN, WRITE_TOKEN],
    ids=["none", "unknown", "read", "write"],
)
async def test_each_method_lets_in_exactly_the_roles_it_should(
    served: Served, token: str | None
) -> None:
    wrong: list[str] = []
    with structlog.testing.capture_logs() as logs:
        async with grpc.aio.insecure_channel(served.address) as channel:
            for method, streaming in (*served.methods, *REFLECTION):
                code = await _call(channel, method, streaming, token)
                expected = _expected(method, token)
                if expected is None and code in REFUSALS:
                    wrong.append(f"{method}: refused with {code.name}")
                elif expected is not None and code not in expected:
                    wrong.append(f"{method}: {code.name}, expected {[c.name for c in expected]}")

    assert wrong == []
    # A refusal is logged by method, never with a token.
    text = repr(logs)
    for secret in (READ_TOKEN, WRITE_TOKEN, UNKNOWN_TOKEN):
        assert secret not in text
    if token in (None, UNKNOWN_TOKEN):
        assert any(entry.get("event") == "refused" for entry in logs)


async def test_a_refusal_says_what_is_needed_and_never_quotes_the_token(served: Served) -> None:
    method = next(m for m, streaming in served.methods if needed_role(m) is Role.WRITE)
    async with grpc.aio.insecure_channel(served.address) as channel:
        for token, code in (
            (None, grpc.StatusCode.UNAUTHENTICATED),
            (UNKNOWN_TOKEN, grpc.StatusCode.UNAUTHENTICATED),
            (READ_TOKEN, grpc.StatusCode.PERMISSION_DENIED),
        ):
            metadata = None if token is None else (("authorization", f"Bearer {token}"),)
            with pytest.raises(grpc.aio.AioRpcError) as refused:
                await channel.unary_unary(method)(b"", metadata=metadata, timeout=5)
            assert refused.value.code() == code
            details = refused.value.details() or ""
            assert "Bearer <token>" in details or "needs a write token" in details
            assert (token or "\0") not in details


@pytest.mark.parametrize(
    "header",
    [
        "Basic cmVhZDp0b2tlbg==",
        "Bearer",
        "Bearer    ",
        f"bearer{READ_TOKEN}",
        "Bearer "
        + "x" * 4000,  # well under gRPC's 8 KiB metadata limit (rejected at random above it)
    ],
)
async def test_malformed_authorization_is_unauthenticated(served: Served, header: str) -> None:
    method = next(m for m, streaming in served.methods if not streaming)
    async with grpc.aio.insecure_channel(served.address) as channel:
        with pytest.raises(grpc.aio.AioRpcError) as refused:
            await channel.unary_unary(method)(b"", metadata=(("authorization", header),), timeout=5)
    assert refused.value.code() == grpc.StatusCode.UNAUTHENTICATED


async def test_health_needs_no_token(served: Served) -> None:
    async with grpc.aio.insecure_channel(served.address) as channel:
        response = await health_pb2_grpc.HealthStub(channel).Check(
            health_pb2.HealthCheckRequest(service=""), timeout=5
        )
    assert response.status == health_pb2.HealthCheckResponse.SERVING


def test_refusals_are_logged_at_most_once_per_interval_and_counted() -> None:
    now = [100.0]
    refusals = RefusalLog("journal", clock=lambda: now[0])
    with structlog.testing.capture_logs() as logs:
        logged = [
            refusals.refused("/m", grpc.StatusCode.UNAUTHENTICATED, "ipv4:1.2.3.4:5")
            for _ in range(50)
        ]
        now[0] += REFUSAL_LOG_INTERVAL
        logged.append(refusals.refused("/m", grpc.StatusCode.PERMISSION_DENIED, "ipv4:1.2.3.4:6"))

    assert logged == [True] + [False] * 49 + [True]
    assert [(e["refusals"], e["code"], e["peer"]) for e in logs] == [
        (1, "UNAUTHENTICATED", "ipv4:1.2.3.4:5"),
        (50, "PERMISSION_DENIED", "ipv4:1.2.3.4:6"),
    ]


async def test_health_list_answers_without_a_token(served: Served) -> None:
    async with grpc.aio.insecure_channel(served.address) as channel:
        listed = await channel.unary_unary(
            "/grpc.health.v1.Health/List",
            request_serializer=health_pb2.HealthListRequest.SerializeToString,
            response_deserializer=health_pb2.HealthListResponse.FromString,
        )(health_pb2.HealthListRequest(), timeout=5)
    statuses = {name: s.status for name, s in listed.statuses.items()}
    assert statuses[""] == health_pb2.HealthCheckResponse.SERVING
    assert len(statuses) >= 2
