"""``tailrunner ops`` and the OperationsClient under it, against ``tailrunner journal serve``."""

from __future__ import annotations

import json
import signal
import subprocess
from collections.abc import Awaitable, Callable, Iterator
from datetime import UTC, datetime, timedelta
from typing import Any, TypeVar

import anyio
import grpc
import pytest
from google.longrunning import operations_proto_pb2 as lro
from google.protobuf import wrappers_pb2
from google.rpc import code_pb2, status_pb2

from tailrunner.journal.client import JournalClient
from tailrunner.operations import Operations
from tailrunner.operations.client import OperationsClient
from tailrunner.workflows.pingregistry.registry import PingRegistry
from tests.e2e.conftest import TAILRUNNER, Journal

T = TypeVar("T")


@pytest.fixture(scope="module")
def journal(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Journal]:
    journal = Journal(tmp_path_factory.mktemp("ops") / "journal.db")
    journal.start()
    yield journal
    journal.stop()


def library(journal: Journal, call: Callable[[Operations], Awaitable[T]]) -> T:
    """Run ``call`` with the library over a client of ``journal`` (a service author's side)."""

    async def main() -> T:
        async with JournalClient.connect(journal.address, timeout=10) as client:
            return await call(Operations(client))

    return anyio.run(main)


def run_ops(journal: Journal, *args: str, code: int) -> subprocess.CompletedProcess[str]:
    done = subprocess.run(
        [TAILRUNNER, "ops", *args, "--journal", journal.address],
        capture_output=True,
        text=True,
        check=False,
    )
    assert done.returncode == code, f"ops {' '.join(args)}: {done.stdout} {done.stderr}"
    return done


def ops(journal: Journal, *args: str) -> str:
    """What ``tailrunner ops ARGS`` printed; it must succeed."""
    return run_ops(journal, *args, code=0).stdout


def refused(journal: Journal, *args: str) -> str:
    """What ``tailrunner ops ARGS`` said on stderr; it must fail with status 1."""
    return run_ops(journal, *args, code=1).stderr


def test_get_shows_status_metadata_and_result(journal: Journal) -> None:
    async def make(lib: Operations) -> str:
        op = await lib.create(metadata=wrappers_pb2.StringValue(value="half way"))
        await lib.set_successful(op.name, wrappers_pb2.Int64Value(value=42))
        return str(op.name)

    name = library(journal, make)

    text = ops(journal, "get", name)
    assert f"name      {name}" in text
    assert "status    succeeded" in text
    assert "result    response google.protobuf.Int64Value" in text
    assert "metadata  google.protobuf.StringValue" in text
    shown = json.loads(ops(journal, "get", name, "--json"))
    assert shown["name"] == name and shown["done"] is True
    assert shown["response"] == {
        "@type": "type.googleapis.com/google.protobuf.Int64Value",
        "value": "42",
    }


def test_list_filters_and_prints_one_line_each(journal: Journal) -> None:
    async def make(lib: Operations) -> tuple[str, str]:
        running = await lib.create(kind="cli-test")
        failed = await lib.create(kind="cli-test")
        await lib.set_failed(failed.name, status_pb2.Status(code=code_pb2.INTERNAL, message="boom"))
        return str(running.name), str(failed.name)

    running, failed = library(journal, make)

    lines = ops(journal, "list", "--filter", "kind=cli-test AND state=FAILED").splitlines()
    assert lines == [f"{failed}\tfailed\terror 13: boom"]
    names = [
        line.split("\t")[0]
        for line in ops(journal, "list", "--filter", "kind=cli-test").splitlines()
    ]
    assert names == [failed, running], "newest first"
    assert "colour" in refused(journal, "list", "--filter", "colour=red")


def test_wait_returns_when_another_process_finishes_it(journal: Journal) -> None:
    name = library(journal, lambda lib: _name(lib.create()))
    waiter = subprocess.Popen(
        [TAILRUNNER, "ops", "wait", name, "--journal", journal.address, "--timeout", "60"],
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        library(journal, lambda lib: lib.set_successful(name, wrappers_pb2.BoolValue(value=True)))
        out, _ = waiter.communicate(timeout=60)
    finally:
        waiter.kill()
    assert waiter.returncode == 0
    assert "status    succeeded" in out


def test_wait_timeout_prints_it_running_with_status_2(journal: Journal) -> None:
    name = library(journal, lambda lib: _name(lib.create()))

    done = run_ops(journal, "wait", name, "--timeout", "0.2", code=2)
    assert "status    running" in done.stdout


def test_cancel_then_delete(journal: Journal) -> None:
    name = library(journal, lambda lib: _name(lib.create()))

    assert ops(journal, "cancel", name).strip() == f"{name}\tcancel requested"
    assert library(journal, lambda lib: lib.cancel_requested(name))
    assert "not done" in refused(journal, "delete", name)

    library(journal, lambda lib: lib.set_cancelled(name))
    assert "status    cancelled" in ops(journal, "get", name)
    assert ops(journal, "delete", name).strip() == f"{name}\tdeleted"
    assert "no such operation" in refused(journal, "get", name)


def test_tree_shows_children_indented(journal: Journal) -> None:
    async def make(lib: Operations) -> tuple[str, str, str]:
        root = await lib.create()
        child = await lib.create(parent=root.name)
        grandchild = await lib.create(parent=child.name)
        return str(root.name), str(child.name), str(grandchild.name)

    root, child, grandchild = library(journal, make)

    lines = ops(journal, "tree", root).splitlines()
    assert [line.split("\t")[0] for line in lines] == [root, f"  {child}", f"    {grandchild}"]
    shallow = ops(journal, "tree", root, "--max-depth", "1").splitlines()
    assert len(shallow) == 2


def test_a_ping_registry_workflow_is_an_operation(journal: Journal) -> None:
    async def begin() -> str:
        async with JournalClient.connect(journal.address, timeout=10) as client:
            workflow = await PingRegistry(client).begin(
                "cli", datetime.now(UTC) + timedelta(hours=1)
            )
        return f"operations/{workflow}"

    name = anyio.run(begin)

    listed = ops(journal, "list", "--filter", "kind=ping-registry AND state=RUNNING")
    assert name in listed
    shown = ops(journal, "get", name)
    assert "metadata  tailrunner.v1.PingRegistryMetadata" in shown
    assert "workflowState: initialized" in shown
    ops(journal, "cancel", name)
    assert "status    cancelled" in ops(journal, "get", name)


def test_bad_names_and_an_unreachable_journal_say_so(journal: Journal) -> None:
    assert "name" in refused(journal, "get", "nope")
    done = subprocess.run(
        [TAILRUNNER, "ops", "get", "operations/x", "--journal", "127.0.0.1:1"],
        capture_output=True,
        text=True,
        check=False,
    )
    assert done.returncode == 1
    assert "cannot reach the journal at 127.0.0.1:1" in done.stderr


async def _name(created: Awaitable[Any]) -> str:
    return str((await created).name)


def test_the_client_wait_is_pushed_not_at_a_poll(journal: Journal) -> None:
    """The client returns the done operation from one WaitOperation call (no Get loop)."""

    async def main() -> None:
        async with (
            JournalClient.connect(journal.address, timeout=10) as client,
            OperationsClient.connect(journal.address) as ops_client,
        ):
            lib = Operations(client)
            name = (await lib.create()).name
            calls: list[str] = []
            original = ops_client._wait  # type: ignore[attr-defined]

            async def counting(request: Any, **options: Any) -> Any:
                calls.append(request.name)
                return await original(request, **options)

            ops_client._wait = counting  # type: ignore[attr-defined]
            async with anyio.create_task_group() as tg:
                result: list[Any] = []

                async def wait() -> None:
                    result.append(await ops_client.wait(name, timeout=30))

                tg.start_soon(wait)
                with anyio.fail_after(10):
                    while not calls:  # noqa: ASYNC110 (the waiter's call is made in a task)
                        await anyio.sleep(0.01)
                await lib.set_successful(name)
            assert result[0].done
            assert calls == [name]

    anyio.run(main)


def _started(*args: str) -> tuple[subprocess.Popen[str], str]:
    """A ``tailrunner`` server process and the address it printed."""
    proc = subprocess.Popen(
        [TAILRUNNER, *args], stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True
    )
    assert proc.stdout is not None
    line = proc.stdout.readline()
    assert line.startswith("listening on "), f"{args[:2]} did not start: {line!r}"
    return proc, line.removeprefix("listening on ").strip()


def test_ops_serve_runs_the_services_apart_from_the_journal() -> None:
    journal_proc, journal_at = _started(
        "journal", "serve", "--listen", "127.0.0.1:0", "--store", "memory:", "--no-operations"
    )
    ops_proc, ops_at = _started("ops", "serve", "--journal", journal_at, "--listen", "127.0.0.1:0")
    try:

        async def create() -> str:
            async with JournalClient.connect(journal_at, timeout=10) as client:
                return str((await Operations(client).create()).name)

        name = anyio.run(create)
        direct = subprocess.run(
            [TAILRUNNER, "ops", "get", name, "--journal", journal_at],
            capture_output=True,
            text=True,
            check=False,
        )
        assert direct.returncode == 1, "the journal was started without the services"
        waiter = subprocess.Popen(
            [TAILRUNNER, "ops", "wait", name, "--journal", ops_at, "--timeout", "60"],
            stdout=subprocess.PIPE,
            text=True,
        )

        async def finish() -> None:
            async with JournalClient.connect(journal_at, timeout=10) as client:
                await Operations(client).set_successful(name)

        anyio.run(finish)
        out, _ = waiter.communicate(timeout=60)
        assert waiter.returncode == 0, out
        assert "status    succeeded" in out
    finally:
        for proc in (ops_proc, journal_proc):
            proc.send_signal(signal.SIGTERM)
            proc.communicate(timeout=15)
    assert (ops_proc.returncode, journal_proc.returncode) == (0, 0)


def test_journal_serve_caps_waits_at_its_max_wait() -> None:
    journal_proc, journal_at = _started(
        "journal", "serve", "--listen", "127.0.0.1:0", "--store", "memory:", "--max-wait", "0.2"
    )
    try:

        async def wait_long() -> Any:
            async with JournalClient.connect(journal_at, timeout=10) as client:
                name = (await Operations(client).create()).name
            async with grpc.aio.insecure_channel(journal_at) as channel:
                wait = channel.unary_unary(
                    "/google.longrunning.Operations/WaitOperation",
                    request_serializer=lro.WaitOperationRequest.SerializeToString,
                    response_deserializer=lro.Operation.FromString,
                )
                request = lro.WaitOperationRequest(name=name)
                request.timeout.FromSeconds(3600)
                # Capped: it comes back (not done, status OK) long before the hour.
                with anyio.fail_after(30):
                    return await wait(request)

        assert not anyio.run(wait_long).done
    finally:
        journal_proc.send_signal(signal.SIGTERM)
        journal_proc.communicate(timeout=15)
