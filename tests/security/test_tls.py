"""TLS on every server (journal, admin, operations, metrics) and in every client.

Certificates are made per session (:mod:`.certs`); clients check the
server's name (``127.0.0.1`` is in its certificate) against the test CA.
"""

from __future__ import annotations

import ssl
import urllib.error
import urllib.request
import uuid
from collections.abc import AsyncIterator
from pathlib import Path

import anyio
import anyio.to_thread
import grpc
import pytest
from ulid import ULID

from tailrunner import EOF, ActivityContext, EventStream, Outcome, activity
from tailrunner.admin.client import AdminClient
from tailrunner.admin.metrics import Metrics, serve_metrics
from tailrunner.admin.server import AdminServer
from tailrunner.engines.options import EngineOptions
from tailrunner.errors import InvalidArgument, JournalUnavailable
from tailrunner.journal.client import JournalClient
from tailrunner.journal.memory import MemoryJournalStore
from tailrunner.journal.server import JournalServer
from tailrunner.model import AggregateRef, NewEvent
from tailrunner.operations.client import OperationsClient
from tailrunner.operations.server import OperationsServer
from tailrunner.reconnect import ReconnectPolicy
from tailrunner.runner import Runner
from tailrunner.security import ClientTls, Role, ServerSecurity, ServerTls, Tokens
from tailrunner.tails.memory import MemoryTailStore

from .certs import Certs
from .conftest import READ_TOKEN, WRITE_TOKEN

TOKENS = Tokens({READ_TOKEN: Role.READ, WRITE_TOKEN: Role.WRITE})
#: One quick try: a refused handshake must show as an error, not as a long wait.
QUICK = ReconnectPolicy(initial=0.05, max_delay=0.1)


def server_tls(certs: Certs, *, mutual: bool = False) -> ServerTls:
    return ServerTls(
        cert=certs.server_cert, key=certs.server_key, client_ca=certs.ca if mutual else None
    )


def client_tls(certs: Certs, *, with_cert: bool = False, ca: Path | None = None) -> ClientTls:
    return ClientTls(
        ca=ca or certs.ca,
        cert=certs.client_cert if with_cert else None,
        key=certs.client_key if with_cert else None,
    )


@pytest.fixture
async def tls_journal(certs: Certs) -> AsyncIterator[JournalServer]:
    async with JournalServer(
        MemoryJournalStore(),
        listen="127.0.0.1:0",
        security=ServerSecurity(tls=server_tls(certs), tokens=TOKENS),
    ) as server:
        yield server


async def _round_trip(client: JournalClient) -> ULID:
    aggregate = AggregateRef(type="t", id=uuid.uuid4())
    result = await client.append(aggregate, [NewEvent(type="e", data=b"{}")])
    events = [e async for batch in client.events(aggregate.id) for e in batch.events]
    assert [e.id for e in events] == [result.tail]
    return result.tail


async def test_the_journal_over_tls_with_a_token(tls_journal: JournalServer, certs: Certs) -> None:
    async with JournalClient.connect(
        tls_journal.address, tls=client_tls(certs), token=WRITE_TOKEN, timeout=5
    ) as client:
        await _round_trip(client)


async def test_a_read_token_reads_but_cannot_append_over_tls(
    tls_journal: JournalServer, certs: Certs
) -> None:
    async with JournalClient.connect(
        tls_journal.address, tls=client_tls(certs), token=READ_TOKEN, timeout=5
    ) as client:
        aggregate = AggregateRef(type="t", id=uuid.uuid4())
        with pytest.raises(Exception) as refused:
            await client.append(aggregate, [NewEvent(type="e", data=b"{}")])
        assert "write token" in str(refused.value)
        assert [b async for b in client.events(aggregate.id)] == []


@pytest.mark.parametrize("how", ["plaintext", "other-ca"])
async def test_a_client_that_does_not_trust_the_server_gets_nowhere(
    tls_journal: JournalServer, certs: Certs, how: str
) -> None:
    tls = None if how == "plaintext" else client_tls(certs, ca=certs.other_ca)
    async with JournalClient.connect(
        tls_journal.address, tls=tls, token=WRITE_TOKEN, timeout=2, reconnect=QUICK
    ) as client:
        with pytest.raises(JournalUnavailable):
            await client.append(
                AggregateRef(type="t", id=uuid.uuid4()), [NewEvent(type="e", data=b"")]
            )


async def test_mutual_tls_wants_a_client_certificate(certs: Certs) -> None:
    async with JournalServer(
        MemoryJournalStore(),
        listen="127.0.0.1:0",
        security=ServerSecurity(tls=server_tls(certs, mutual=True)),
    ) as server:
        async with JournalClient.connect(
            server.address, tls=client_tls(certs), timeout=2, reconnect=QUICK
        ) as without:
            with pytest.raises(JournalUnavailable):
                await without.append(AggregateRef(type="t", id=uuid.uuid4()), [NewEvent(type="e")])
        async with JournalClient.connect(
            server.address, tls=client_tls(certs, with_cert=True), timeout=5
        ) as client:
            await _round_trip(client)


@activity(name="idle", aggregate_types=["t"])
async def _idle(ctx: ActivityContext, tail: ULID | None, stream: EventStream) -> Outcome:
    return EOF(tail)


async def test_the_admin_server_and_client_over_tls(
    tls_journal: JournalServer, certs: Certs
) -> None:
    async with JournalClient.connect(
        tls_journal.address, tls=client_tls(certs), token=WRITE_TOKEN
    ) as journal:
        runner = Runner(
            journal=journal, tails=MemoryTailStore(), activities=[_idle], options=EngineOptions()
        )
        async with AdminServer(
            engine=runner.engine,
            tails=MemoryTailStore(),
            journal=journal,
            listen="127.0.0.1:0",
            security=ServerSecurity(tls=server_tls(certs), tokens=TOKENS),
        ) as admin:

            def list_tasks(tls: ClientTls | None, token: str) -> object:
                with AdminClient.connect(admin.address, token=token, tls=tls, timeout=5) as c:
                    return c.list_tasks()

            tasks, _ = await anyio.to_thread.run_sync(list_tasks, client_tls(certs), READ_TOKEN)  # type: ignore[misc]
            assert tasks == []
            with pytest.raises(Exception, match=r"(?i)unavailable|reach"):
                await anyio.to_thread.run_sync(list_tasks, None, READ_TOKEN)


async def test_the_operations_server_over_tls(tls_journal: JournalServer, certs: Certs) -> None:
    async with (
        JournalClient.connect(
            tls_journal.address, tls=client_tls(certs), token=WRITE_TOKEN
        ) as journal,
        OperationsServer(
            journal,
            listen="127.0.0.1:0",
            security=ServerSecurity(tls=server_tls(certs), tokens=TOKENS),
        ) as server,
        OperationsClient.connect(server.address, tls=client_tls(certs), token=READ_TOKEN) as ops,
    ):
        listed = [op async for op in ops.list_operations()]
    assert listed == []


async def test_metrics_over_https_want_a_token(certs: Certs) -> None:
    async with (
        JournalServer(MemoryJournalStore(), listen="127.0.0.1:0") as server,
        JournalClient.connect(server.address) as journal,
    ):
        runner = Runner(
            journal=journal,
            tails=MemoryTailStore(),
            activities=[_idle],
            options=EngineOptions(),
        )
        metrics = Metrics(engine=runner.engine, journal=journal, lag_interval=0)
        security = ServerSecurity(tls=server_tls(certs), tokens=TOKENS)
        async with anyio.create_task_group() as tg:
            port = await tg.start(
                lambda task_status: serve_metrics(
                    metrics, "127.0.0.1:0", security=security, task_status=task_status
                )
            )
            url = f"https://127.0.0.1:{port}/metrics"
            context = ssl.create_default_context(cafile=str(certs.ca))

            def get(token: str | None, *, verify: bool = True) -> int:
                request = urllib.request.Request(url)
                if token is not None:
                    request.add_header("Authorization", f"Bearer {token}")
                ctx = context if verify else ssl.create_default_context()
                try:
                    with urllib.request.urlopen(request, context=ctx, timeout=10) as reply:
                        assert b"tailrunner_" in reply.read()
                        return int(reply.status)
                except urllib.error.HTTPError as exc:
                    exc.close()
                    return exc.code

            assert await anyio.to_thread.run_sync(get, READ_TOKEN) == 200
            assert await anyio.to_thread.run_sync(get, None) == 401
            assert await anyio.to_thread.run_sync(get, "not-a-known-token-at-all") == 401
            with pytest.raises(urllib.error.URLError):
                # The system's roots do not know the test CA.
                await anyio.to_thread.run_sync(lambda: get(READ_TOKEN, verify=False))
            tg.cancel_scope.cancel()


def test_bad_tls_files_are_named(tmp_path: Path, certs: Certs) -> None:
    not_pem = tmp_path / "cert.txt"
    not_pem.write_text("hello")
    with pytest.raises(InvalidArgument) as missing:
        ServerTls(cert=tmp_path / "nope.pem", key=certs.server_key).credentials()
    assert missing.value.field == "tls_cert" and "nope.pem" in str(missing.value)
    with pytest.raises(InvalidArgument) as garbage:
        ServerTls(cert=not_pem, key=certs.server_key).credentials()
    assert "cert.txt is not PEM" in str(garbage.value)
    with pytest.raises(InvalidArgument) as mismatched:
        ServerTls(cert=certs.server_cert, key=certs.client_key).credentials()
    assert mismatched.value.field == "tls_key"
    with pytest.raises(InvalidArgument) as half:
        ClientTls(ca=certs.ca, cert=certs.client_cert)
    assert half.value.field == "tls_key"


async def test_a_plaintext_client_of_a_tls_server_is_refused(
    tls_journal: JournalServer,
) -> None:
    async with grpc.aio.insecure_channel(tls_journal.address) as channel:
        with pytest.raises(grpc.aio.AioRpcError) as refused:
            await channel.unary_unary("/tailrunner.v1.Journal/ListAggregates")(b"", timeout=3)
    assert refused.value.code() == grpc.StatusCode.UNAVAILABLE
